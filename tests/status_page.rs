//! The `/status` page in a real browser: headless Chromium (Debian package
//! `chromium`; scripts/test.sh installs it) loads it from a running sidecar,
//! and the figures it shows match Admin `State` and the traffic sent. Alone
//! in its test binary, apart from `tests/it`: the page shows the
//! process-wide metrics recorder's counts, exact only with no other test in
//! the process.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-tools")]

use std::process::Command;
use std::time::Duration;

use sidecars::*;
use switchyard::policy::canary::CanaryConfig;
use switchyard::proto;
use testkit::sidecars;

/// Chromium's headless run with `args` and the page URL; its stdout.
fn chromium(args: &[&str], url: &str) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (apt-get install chromium)");
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text of the `<table id="ID">` of `dom`, one string per row, cells
/// joined by `|`.
fn table(dom: &str, id: &str) -> Vec<String> {
    let start = dom
        .find(&format!("<table id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no table {id} in:\n{dom}"));
    let body = &dom[start..];
    let body = &body[..body.find("</table>").unwrap()];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("</t")
                .filter_map(|cell| cell.rsplit_once('>').map(|(_, text)| text.trim()))
                .filter(|text| !text.is_empty())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_admin_state_says() {
    // A long window and a low demotion rate: the pair stays hot between the
    // State call and the page load.
    let mut settings = with_direct_links(0.02, 0.001, Duration::from_secs(60));
    settings.transports.memory = Some(Default::default());
    let canary: CanaryConfig =
        toml::from_str("from = \"memory\"\nto = \"grpc\"\nshare = 30\n").unwrap();
    settings.canary = Some(canary);
    let AliceAndBob {
        sidecars,
        mut a,
        a_stream: _a_stream,
        mut b_stream,
        ..
    } = alice_and_bob(&settings).await;
    send_counting(&mut a, 3).await;
    for _ in 0..3 {
        next(&mut b_stream).await;
    }
    let state = admin(sidecars[0].grpc_addr())
        .await
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!state.hot_pairs.is_empty(), "gw-a -> gw-b is hot");
    let url = format!("http://{}/status", sidecars[0].telemetry_addr());
    let dom = chromium(&["--dump-dom"], &url);

    let gateways = table(&dom, "gateways");
    assert_eq!(gateways.len() - 1, state.gateways.len(), "{gateways:?}");
    for g in &state.gateways {
        let row = format!("{}|{}|{}|attached", g.gateway_id, g.region, g.address);
        assert!(
            g.streaming && gateways.contains(&row),
            "{row} not in {gateways:?}"
        );
    }
    let transports = table(&dom, "transports");
    assert_eq!(
        transports.len() - 1,
        state.transports.len(),
        "{transports:?}"
    );
    for t in &state.transports {
        assert!(
            transports.iter().any(|row| row.starts_with(&format!(
                "{}|{}|",
                t.kind,
                if t.up { "up" } else { "DOWN" }
            ))),
            "{} not in {transports:?}",
            t.kind
        );
    }
    let canary = state.canary.as_ref().expect("a canary");
    let shown = table(&dom, "canary");
    assert!(
        shown.contains(&format!("share|{}%", canary.share)),
        "{shown:?}"
    );
    assert!(
        shown.contains(&format!("from → to|{} → {}", canary.from, canary.to)),
        "{shown:?}"
    );
    let hot = table(&dom, "hot-pairs");
    assert_eq!(hot.len() - 1, state.hot_pairs.len(), "{hot:?}");
    for p in &state.hot_pairs {
        assert!(
            hot.iter()
                .any(|row| row.starts_with(&format!("{}|{}|", p.from_gateway, p.to_gateway))),
            "{hot:?}"
        );
    }
    // The three messages alice sent bob, by route, transport and outcome:
    // the sums over the page's rows match what the sends reported.
    let routes = table(&dom, "routes");
    let sent: u64 = routes
        .iter()
        .skip(1)
        .filter(|row| row.starts_with("same_region|") && row.contains("|sent|"))
        .map(|row| row.split('|').nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(sent, 3, "{routes:?}");

    // A screenshot renders. docs/status-page.png is this one:
    // SWITCHYARD_STATUS_SCREENSHOT=$PWD/docs/status-page.png cargo test -p switchyard --features it-tools --test status_page
    let dir = tempfile::tempdir().unwrap();
    let png = std::env::var_os("SWITCHYARD_STATUS_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("status.png"));
    chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1000,1100",
        ],
        &url,
    );
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
}
