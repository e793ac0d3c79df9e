//! `[idds]` configuration.

use std::net::SocketAddr;
use std::time::Duration;

use panda_db::DatabaseConfig;
use panda_runtime::config::{ConfigError, Problems};
use serde::{Deserialize, Serialize};

/// The default driver lease of driven workflows (`idds.driver_lease`).
pub const DEFAULT_DRIVER_LEASE: Duration = Duration::from_secs(60);

/// idds's settings. Defaults serve the embedded mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC address.
    pub listen_addr: SocketAddr,
    /// `/metrics` and `/healthz` address.
    pub admin_addr: SocketAddr,
    /// The server.
    pub server_url: String,
    /// Database (default: SQLite `idds.db` in the data directory).
    pub database: DatabaseConfig,
    /// How soon a submission the server could not take is tried again.
    #[serde(with = "humantime_serde")]
    pub submit_retry_interval: Duration,
    /// A driven workflow's driver lease: a driver that neither renews it (RenewDriver) nor adds
    /// a work for this long is taken for dead, and its workflow is failed (tasks killed).
    #[serde(with = "humantime_serde")]
    pub driver_lease: Duration,
    /// HPO studies.
    pub hpo: HpoConfig,
}

/// `[idds.hpo]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HpoConfig {
    /// Optimizer plug-ins by name, used by studies as `optimizer: {plugin: <name>}`:
    /// `[idds.hpo.plugins.bayes_opt] command = ["python3", "examples/hpo/bayes_opt_plugin.py"]`,
    /// `timeout = "60s"` (docs/hpo.md).
    pub plugins: std::collections::BTreeMap<String, crate::hpo::plugin::PluginConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: ([127, 0, 0, 1], 50054).into(),
            admin_addr: ([127, 0, 0, 1], 9154).into(),
            server_url: "http://127.0.0.1:50051".to_owned(),
            database: DatabaseConfig::default(),
            submit_retry_interval: Duration::from_secs(2),
            driver_lease: DEFAULT_DRIVER_LEASE,
            hpo: HpoConfig::default(),
        }
    }
}

impl Config {
    /// Checks ranges.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        problems.check(self.submit_retry_interval >= Duration::from_millis(100), || {
            format!("idds.submit_retry_interval = {:?}: must be at least 100ms", self.submit_retry_interval)
        });
        problems.check((Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.driver_lease), || {
            format!("idds.driver_lease = {:?}: must be from 1s to 24h", self.driver_lease)
        });
        problems.check_url("idds.server_url", &self.server_url);
        for (name, plugin) in &self.hpo.plugins {
            problems
                .check(!plugin.command.is_empty(), || format!("idds.hpo.plugins.{name}.command: must not be empty"));
            problems.check(!plugin.timeout.is_zero(), || format!("idds.hpo.plugins.{name}.timeout: must be positive"));
        }
        problems.finish()
    }
}
