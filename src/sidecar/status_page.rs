//! `/status` on the telemetry port: a read-only HTML page for operators,
//! refreshed by the browser every few seconds (no script). It shows what
//! Admin `State` answers (gateways and their attach state, transports up or
//! down, canary share and watchdog, hot pairs) and, from this process's
//! metrics, messages per route, transport and outcome (totals, and per
//! second since the page was last loaded), offline depth and dead letters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, UNIX_EPOCH};

use humantime_serde::re::humantime::{format_duration, format_rfc3339_seconds};
use parking_lot::Mutex;

use crate::proto;
use crate::telemetry;

/// How often the page reloads itself.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// The message counters seen at the previous load, for per-second rates.
#[derive(Default)]
pub(crate) struct Rates(Mutex<Option<(Instant, BTreeMap<String, f64>)>>);

impl Rates {
    /// Per second since the previous call, by series; `None` on the first.
    fn per_second(&self, now: &BTreeMap<String, f64>) -> Option<BTreeMap<String, f64>> {
        let mut last = self.0.lock();
        let rates = last.as_ref().map(|(at, before)| {
            let seconds = at.elapsed().as_secs_f64().max(1e-3);
            now.iter()
                .map(|(k, v)| (k.clone(), (v - before.get(k).unwrap_or(&0.0)) / seconds))
                .collect()
        });
        *last = Some((Instant::now(), now.clone()));
        rates
    }
}

/// The value of every series of `metric` in a Prometheus text scrape, by
/// its label set (`{route="same_region",...}`; empty without labels).
fn series(scrape: &str, metric: &str) -> BTreeMap<String, f64> {
    scrape
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None; // a longer name with this prefix
            }
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` in a label set such as `{route="x",via="y"}`.
fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split_once(&format!("{name}=\""))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("", |(value, _)| value)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page for `state` and a metrics `scrape`.
pub(crate) fn render(state: &proto::StateResponse, scrape: &str, rates: &Rates) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{}\"><title>switchyard status</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin-bottom:1.2em}}\
         td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}th{{background:#eee}}\
         .up{{color:#080}}.down{{color:#b00;font-weight:bold}}td.n{{text-align:right}}</style></head><body>\
         <h1>switchyard status</h1><p>config: <span id=\"config\">{}</span> &middot; refreshed every {}</p>",
        REFRESH.as_secs(),
        escape(if state.config_path.is_empty() {
            "the embedded default"
        } else {
            &state.config_path
        }),
        format_duration(REFRESH),
    );

    html += "<h2>Gateways</h2><table id=\"gateways\"><tr><th>gateway</th><th>region</th><th>address</th><th>attach</th></tr>";
    for g in &state.gateways {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&g.gateway_id),
            escape(&g.region),
            escape(&g.address),
            if g.streaming {
                "attached"
            } else {
                "not streaming"
            }
        );
    }
    html += "</table>";

    html += "<h2>Transports</h2><table id=\"transports\"><tr><th>transport</th><th>state</th><th>failed publishes/s</th></tr>";
    let messages = series(scrape, telemetry::MESSAGES);
    let per_second = rates.per_second(&messages);
    for t in &state.transports {
        let failed: Option<f64> = per_second.as_ref().map(|rates| {
            rates
                .iter()
                .filter(|(k, _)| label(k, "via") == t.kind && label(k, "outcome") == "failed")
                .fold(0.0, |sum, (_, v)| sum + v)
        });
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&t.kind),
            if t.up { "up" } else { "down" },
            if t.up {
                "up".to_owned()
            } else {
                format!("DOWN: {}", escape(&t.reason))
            },
            failed.map_or_else(|| "-".into(), |f| format!("{f:.1}"))
        );
    }
    html += "</table>";

    html += "<h2>Canary</h2><table id=\"canary\">";
    match &state.canary {
        None => html += "<tr><td>no canary configured</td></tr>",
        Some(c) => {
            let watchdog = c.rollback.as_ref().map_or("off".to_owned(), |r| {
                if r.enabled {
                    format!(
                        "on (window {}, max error rate {:.2}%, max p99 {:.1} ms)",
                        format_duration(Duration::from_millis(r.window_ms)),
                        r.max_error_rate * 100.0,
                        r.max_p99_ms
                    )
                } else {
                    "off".to_owned()
                }
            });
            let last = c.last_rollback.as_ref().map_or("none".to_owned(), |r| {
                format!(
                    "from {}% at {}: {}",
                    r.from_share,
                    format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(r.at_unix_secs)),
                    escape(&r.reason)
                )
            });
            let _ = write!(
                html,
                "<tr><th>from &rarr; to</th><td>{} &rarr; {}</td></tr>\
                 <tr><th>share</th><td id=\"canary-share\">{}%</td></tr>\
                 <tr><th>mode</th><td>{}</td></tr><tr><th>watchdog</th><td>{}</td></tr>\
                 <tr><th>last rollback</th><td>{}</td></tr>",
                escape(&c.from),
                escape(&c.to),
                c.share,
                escape(&c.mode),
                watchdog,
                last
            );
        }
    }
    html += "</table>";

    html +=
        "<h2>Hot pairs</h2><table id=\"hot-pairs\"><tr><th>from</th><th>to</th><th>msg/s</th></tr>";
    for p in &state.hot_pairs {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{:.2}</td></tr>",
            escape(&p.from_gateway),
            escape(&p.to_gateway),
            p.per_second
        );
    }
    html += "</table>";

    html += "<h2>Offline store</h2><table id=\"offline\">";
    for (name, metric) in [
        ("waiting (in-memory store)", telemetry::OFFLINE_MESSAGES),
        ("stored", telemetry::OFFLINE_STORED),
        ("dead-lettered", telemetry::OFFLINE_DEAD_LETTERED),
    ] {
        // A fold from +0.0: an empty f64 `sum` is -0.0.
        let total = series(scrape, metric).values().fold(0.0, |sum, v| sum + v);
        let _ = write!(
            html,
            "<tr><th>{name}</th><td class=\"n\">{total:.0}</td></tr>"
        );
    }
    html += "</table>";

    html += "<h2>Messages by route</h2><table id=\"routes\"><tr><th>route</th><th>via</th><th>outcome</th><th>total</th><th>per second</th></tr>";
    for (labels, total) in &messages {
        let rate = per_second
            .as_ref()
            .and_then(|r| r.get(labels))
            .map_or_else(|| "-".into(), |r| format!("{r:.1}"));
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{total:.0}</td><td class=\"n\">{rate}</td></tr>",
            escape(label(labels, "route")),
            escape(label(labels, "via")),
            escape(label(labels, "outcome")),
        );
    }
    html += "</table></body></html>\n";
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_by_exact_name() {
        let scrape =
            "switchyard_messages_total{route=\"same_region\",via=\"redis\",outcome=\"sent\"} 7\n\
                      switchyard_messages_total_other 3\nswitchyard_offline_messages 2\n";
        let messages = series(scrape, telemetry::MESSAGES);
        assert_eq!(messages.len(), 1);
        let (labels, value) = messages.iter().next().unwrap();
        assert_eq!((label(labels, "via"), *value), ("redis", 7.0));
        assert_eq!(series(scrape, telemetry::OFFLINE_MESSAGES)[""], 2.0);
    }
}
