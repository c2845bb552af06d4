//! Loading settings for a command, and `check-config`.

use std::path::Path;
use std::process::ExitCode;

use switchyard::cause::Report;
use switchyard::config::Problem;
use switchyard::sidecar::SidecarError;
use switchyard::Settings;

use crate::args::Format;

fn config_name(file: Option<&Path>) -> String {
    file.map_or_else(
        || "the embedded default".into(),
        |f| f.display().to_string(),
    )
}

pub(crate) fn load_settings(file: Option<&Path>) -> anyhow::Result<Settings> {
    switchyard::config::load_checked(file).map_err(|problems| match &problems[..] {
        // The file itself (not found, not TOML): the reason names it.
        [only] if only.key.is_empty() => anyhow::anyhow!("{}", only.reason),
        _ => {
            let lines: Vec<String> = problems.iter().map(|p| format!("  {}", line(p))).collect();
            anyhow::anyhow!("config {}:\n{}", config_name(file), lines.join("\n"))
        }
    })
}

/// `key: reason`, or the reason alone when it concerns no key (the file).
/// A secret or TLS file start-up could not read, as a problem of its key.
fn secret_problem(err: SidecarError) -> Problem {
    match err {
        SidecarError::Secret { key, from, reason } => Problem {
            key,
            reason: format!("cannot read the secret from {from}: {}", Report(&reason)),
        },
        SidecarError::Tls { key, path, reason } => Problem {
            key,
            reason: format!("{}: {}", path.display(), Report(&reason)),
        },
        other => Problem {
            key: "sidecar".into(),
            reason: Report(&other).to_string(),
        },
    }
}

fn line(problem: &Problem) -> String {
    if problem.key.is_empty() {
        problem.reason.clone()
    } else {
        problem.to_string()
    }
}

/// `check-config`: `FILE: ok` on stdout, or every problem on stderr (one
/// line each); `--format json`: one object on stdout either way.
pub(crate) fn check_config(file: &Path, format: Format, skip_secrets: bool) -> ExitCode {
    let problems = match switchyard::config::load_checked(Some(file)) {
        Err(problems) => problems,
        Ok(_) if skip_secrets => Vec::new(),
        Ok(settings) => match switchyard::sidecar::preflight(&settings) {
            Ok(()) => Vec::new(),
            Err(err) => vec![secret_problem(err)],
        },
    };
    match format {
        Format::Json => {
            let report = serde_json::json!({
                "file": file.display().to_string(),
                "ok": problems.is_empty(),
                "problems": problems
                    .iter()
                    .map(|p| serde_json::json!({"key": p.key, "reason": p.reason}))
                    .collect::<Vec<_>>(),
            });
            println!("{report}");
        }
        Format::Text if problems.is_empty() => println!("{}: ok", file.display()),
        Format::Text => {
            for problem in &problems {
                eprintln!("{}: {}", file.display(), line(problem));
            }
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
