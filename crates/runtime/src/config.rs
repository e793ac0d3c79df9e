//! Layered configuration: defaults, then a TOML file (`--config` or `PANDA_CONFIG`), then
//! `PANDA_*` environment variables with `__` between levels (`PANDA_SERVER__LISTEN_ADDR`).
//!
//! One file shape serves every mode: top-level `data_dir`, `[telemetry]`, `[bus]`, and one
//! section per service (`[server]`, `[jedi]`, `[harvester]`, `[idds]`, `[pilot]`). Each service
//! extracts its own section; every section struct denies unknown keys, so a typo stops startup
//! with a message naming the key and the layer (file or variable) that set it.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Top-level keys and sections a panda config file may have.
pub const KNOWN_KEYS: &[&str] = &["data_dir", "telemetry", "bus", "server", "jedi", "harvester", "idds", "pilot"];

/// A configuration problem, with every message at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or a variable could not be read or does not fit the expected shape.
    #[error("configuration error: {}", .0.join("; "))]
    Load(Vec<String>),
    /// Values parsed but break a rule (a range, a cross-field rule).
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        ConfigError::Load(error.into_iter().map(|e| e.to_string()).collect())
    }
}

/// The file and environment layers, from which each service extracts its section.
#[derive(Debug, Clone)]
pub struct Loader {
    layers: Figment,
}

impl Loader {
    /// Layers `path` (which must exist when given) and the `PANDA_*` environment.
    ///
    /// Only variables with `__` (nested keys) or naming a top-level key are config; others, such
    /// as `PANDA_SERVER_URL` for the CLI or `PANDA_TEST_*`, are left alone.
    pub fn new(path: Option<&Path>) -> Self {
        let mut layers = Figment::new();
        if let Some(path) = path {
            layers = layers.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed("PANDA_")
            .filter(|key| {
                let key = key.as_str();
                !key.starts_with("test_") && (key.contains("__") || key == "data_dir")
            })
            .split("__");
        Self { layers: layers.merge(env) }
    }

    /// Layers only the given TOML text (for tests and `panda up` overrides).
    pub fn from_toml(text: &str) -> Self {
        Self { layers: Figment::from(Toml::string(text)) }
    }

    /// Adds a value at a dotted key on top of everything else (command-line flags).
    #[must_use]
    pub fn with_override<T: Serialize>(self, key: &str, value: T) -> Self {
        Self { layers: self.layers.merge(Serialized::default(key, value)) }
    }

    /// Extracts one section (or top-level key) over its defaults.
    ///
    /// # Errors
    /// [`ConfigError::Load`] naming the key, the problem and where the value came from.
    pub fn section<T: DeserializeOwned + Serialize + Default>(&self, key: &str) -> Result<T, ConfigError> {
        Figment::from(Serialized::default(key, T::default()))
            .merge(self.layers.clone())
            .extract_inner(key)
            .map_err(|error| ConfigError::Load(error.into_iter().map(|e| describe(key, &e)).collect()))
    }

    /// The data directory (top-level `data_dir`, default `./panda-data`).
    ///
    /// # Errors
    /// When `data_dir` is set to something that is not a path.
    pub fn data_dir(&self) -> Result<PathBuf, ConfigError> {
        let figment =
            Figment::from(Serialized::default("data_dir", PathBuf::from("./panda-data"))).merge(self.layers.clone());
        Ok(figment.extract_inner("data_dir")?)
    }

    /// Rejects top-level keys that are not in [`KNOWN_KEYS`] (a misspelt section would otherwise
    /// be ignored silently).
    ///
    /// # Errors
    /// [`ConfigError::Load`] naming each unknown key.
    pub fn check_top_level(&self) -> Result<(), ConfigError> {
        let dict = self.layers.data()?;
        let mut errors = Vec::new();
        for profile in dict.values() {
            for key in profile.keys() {
                if !KNOWN_KEYS.contains(&key.as_str()) {
                    errors.push(format!("unknown top-level key `{key}`; expected one of {}", KNOWN_KEYS.join(", ")));
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigError::Load(errors)) }
    }
}

/// What a service binary does first: layers its config file and the environment, rejects unknown
/// top-level keys, and starts telemetry from `[telemetry]`.
///
/// # Errors
/// A bad file, key or value, or telemetry that cannot start.
pub fn boot(
    service: &'static str,
    path: Option<&Path>,
) -> Result<(Loader, crate::telemetry::TelemetryGuard), Box<dyn std::error::Error + Send + Sync>> {
    let loader = Loader::new(path);
    loader.check_top_level()?;
    let telemetry: crate::telemetry::TelemetryConfig = loader.section("telemetry")?;
    let guard = crate::telemetry::init(service, &telemetry)?;
    Ok((loader, guard))
}

/// One figment error as `section.key: problem (in source)`. figment reports the path of a nested
/// extraction in its own order, with the profile and in the case of the environment upper-cased;
/// rebuilding it from the section we asked for gives a key people can search their file for.
fn describe(section: &str, error: &figment::Error) -> String {
    let mut path: Vec<String> = error
        .path
        .iter()
        .map(|p| p.to_lowercase())
        .filter(|p| p != "default" && p != "global" && p != section)
        .collect();
    path.insert(0, section.to_owned());
    let source = match &error.metadata {
        Some(m) => match &m.source {
            Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
            _ => format!(" (in {})", m.name),
        },
        None => String::new(),
    };
    let env_hint = match &error.metadata {
        Some(m) if m.name.contains("environment") => format!(", set by PANDA_{}", path.join("__").to_uppercase()),
        _ => String::new(),
    };
    format!("{}: {}{source}{env_hint}", path.join("."), error.kind)
}

/// Collects rule violations so that `validate()` reports all of them at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records a problem when `ok` is false.
    pub fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    /// Records a problem when `value` of `key` is not an http:// or https:// URL.
    pub fn check_url(&mut self, key: &str, value: &str) {
        self.check(value.starts_with("http://") || value.starts_with("https://"), || {
            format!("{key} = {value:?}: must be an http:// or https:// URL")
        });
    }

    /// Records a problem.
    pub fn push(&mut self, message: String) {
        self.0.push(message);
    }

    /// `Ok` when nothing was recorded.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every recorded problem.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.0.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(self.0)) }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Section {
        port: u16,
        name: String,
    }
    impl Default for Section {
        fn default() -> Self {
            Self { port: 1, name: "x".into() }
        }
    }

    #[test]
    fn defaults_then_file() {
        let loader = Loader::from_toml("[server]\nport = 7\n");
        let section: Section = loader.section("server").unwrap();
        assert_eq!(section, Section { port: 7, name: "x".into() });
        let other: Section = loader.section("jedi").unwrap();
        assert_eq!(other, Section::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let loader = Loader::from_toml("[server]\nprot = 7\n");
        let error = loader.section::<Section>("server").unwrap_err().to_string();
        assert!(error.contains("server.prot: unknown field: found `prot`"), "{error}");
    }

    #[test]
    fn bad_value_names_key_and_source() {
        let error = Loader::from_toml("[server]\nport = \"x\"\n").section::<Section>("server").unwrap_err().to_string();
        assert!(error.contains("server.port: invalid type"), "{error}");
        assert!(error.contains("TOML"), "{error}");
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let error = Loader::from_toml("[sever]\nport = 7\n").check_top_level().unwrap_err().to_string();
        assert!(error.contains("`sever`"), "{error}");
        Loader::from_toml("[server]\nport = 7\n").check_top_level().unwrap();
    }

    #[test]
    fn override_wins() {
        let loader = Loader::from_toml("[server]\nport = 7\n").with_override("server.port", 9);
        assert_eq!(loader.section::<Section>("server").unwrap().port, 9);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn environment_layer() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PANDA_SERVER__PORT", "42");
            jail.set_env("PANDA_SERVER_URL", "http://ignored");
            let loader = Loader::new(None);
            assert_eq!(loader.section::<Section>("server").unwrap().port, 42);
            loader.check_top_level().unwrap();
            jail.set_env("PANDA_SERVER__PROT", "42");
            let error = Loader::new(None).section::<Section>("server").unwrap_err().to_string();
            assert!(error.contains("server.prot: unknown field"), "{error}");
            assert!(error.contains("set by PANDA_SERVER__PROT"), "{error}");
            Ok(())
        });
    }
}
