//! Loading settings for a person to read the problems: every section of the
//! file and the environment is parsed on its own, so one wrong key does not
//! hide the others, and each problem names its key (and, for an override,
//! the environment variable that set it).

use std::path::Path;

use super::{Problem, Settings};

/// Where the environment overrides come from (`SWITCHYARD__SECTION__KEY`).
const ENV_PREFIX: &str = "SWITCHYARD";

/// Loads defaults, `file` and the environment as [`Settings::load`] does;
/// on failure, every problem found: each section that does not parse, or,
/// when all parse, every validation problem.
pub fn load_checked(file: Option<&Path>) -> Result<Settings, Vec<Problem>> {
    match Settings::load(file) {
        Ok(settings) => Ok(settings),
        Err(super::ConfigError::Invalid(problems)) => Err(problems),
        Err(super::ConfigError::Load(first)) => Err(section_problems(file, first)),
    }
}

/// The parse problems of each section; `first` (the error of the whole
/// load) when the sources cannot even be read.
fn section_problems(file: Option<&Path>, first: config::ConfigError) -> Vec<Problem> {
    let sources = match super::sources(file).build() {
        Ok(sources) => sources,
        Err(err) => return vec![problem("", &err)],
    };
    let sections: config::Map<String, config::Value> = match sources.try_deserialize() {
        Ok(sections) => sections,
        Err(err) => return vec![problem("", &err)],
    };
    let mut keys: Vec<&String> = sections.keys().collect();
    keys.sort();
    let mut problems = Vec::new();
    for key in keys {
        let alone = config::Config::builder()
            .set_override(key.as_str(), sections[key].clone())
            .and_then(|b| b.build())
            .and_then(|c| c.try_deserialize::<Settings>());
        if let Err(err) = alone {
            problems.push(problem(key, &err));
        }
    }
    if problems.is_empty() {
        // Sections parse alone but not together: say what the load said.
        problems.push(problem("", &first));
    }
    problems
}

/// A problem from a config error: keyed by the key it names (else
/// `section`), with the environment variable when one overrides that key.
fn problem(section: &str, err: &config::ConfigError) -> Problem {
    let text = err.to_string();
    let key = text
        .split_once("for key `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key.to_owned());
    let reason = match (&key, text.split_once(" for key `")) {
        (Some(key), Some((reason, _))) => match std::env::var_os(env_var(key)) {
            Some(_) => format!("{reason} (set by {})", env_var(key)),
            None => reason.to_owned(),
        },
        _ => text.clone(),
    };
    Problem {
        key: key.unwrap_or_else(|| section.to_owned()),
        reason,
    }
}

/// The variable that overrides `key`: `routing.cross_region` ->
/// `SWITCHYARD__ROUTING__CROSS_REGION`.
pub fn env_var(key: &str) -> String {
    let path: Vec<String> = key.split('.').map(str::to_uppercase).collect();
    format!("{ENV_PREFIX}__{}", path.join("__"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_names_its_variable() {
        assert_eq!(
            env_var("limits.inbox_queue"),
            "SWITCHYARD__LIMITS__INBOX_QUEUE"
        );
    }
}
