//! Settings as text for an operator: the embedded default (a commented
//! starting point) and the settings in force, with secrets redacted.

use super::Settings;

/// `config/switchyard.toml`: the embedded default, with its comments.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/switchyard.toml");

/// What stands in for a redacted secret.
const REDACTED: &str = "<redacted>";

/// The settings could not be written as TOML.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the settings as TOML: {0}")]
pub struct ShowError(String);

/// `settings` as TOML, every secret replaced by `<redacted>`: passwords in
/// URLs and values under keys that name a password, secret or token (not
/// `*_env` keys, which only name a variable).
pub fn effective_toml(settings: &Settings) -> Result<String, ShowError> {
    let mut value = toml::Value::try_from(settings).map_err(|e| ShowError(e.to_string()))?;
    redact(&mut value, "");
    toml::to_string_pretty(&value).map_err(|e| ShowError(e.to_string()))
}

fn redact(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::String(s) => {
            let secret_key = ["password", "secret", "token"]
                .iter()
                .any(|w| key.contains(w))
                && !key.ends_with("_env");
            if secret_key {
                *s = REDACTED.into();
            } else if let Some(without) = without_url_password(s) {
                *s = without;
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, key)),
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                redact(v, &k.to_lowercase());
            }
        }
        _ => {}
    }
}

/// `scheme://user:password@host...` with the password redacted; `None`
/// when the text carries no password.
fn without_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    let (user, _) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:{REDACTED}@{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_and_secret_keys_are_redacted() {
        let settings = Settings::from_toml(
            "[store]\nkind = \"redis\"\nurl = \"redis://app:hunter2@db:6379\"\npassword_env = \"REDIS_PASSWORD\"\n\
             [transports.kafka]\nbrokers = \"k:9092\"\n[transports.kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\
             [routing]\nsame_region = \"kafka\"\ncross_region = \"kafka\"\n",
        )
        .unwrap();
        let text = effective_toml(&settings).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://app:<redacted>@db:6379"), "{text}");
        assert!(text.contains("REDIS_PASSWORD"), "{text}");
        // The output is a config that loads again.
        Settings::from_toml(&text).unwrap();
    }
}
