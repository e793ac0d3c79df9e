//! `[server]` configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use panda_db::DatabaseConfig;
use panda_runtime::config::{ConfigError, Problems};
use serde::{Deserialize, Serialize};

/// The server's settings. Defaults serve the embedded mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC address.
    pub listen_addr: SocketAddr,
    /// `/metrics` and `/healthz` address.
    pub admin_addr: SocketAddr,
    /// Database (default: SQLite `server.db` in the data directory).
    pub database: DatabaseConfig,
    /// The local storage element: where pilots put outputs and find inputs (default:
    /// `<data_dir>/storage`).
    pub storage_dir: Option<PathBuf>,
    /// Heartbeat interval asked of pilots.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: ([127, 0, 0, 1], 50051).into(),
            admin_addr: ([127, 0, 0, 1], 9151).into(),
            database: DatabaseConfig::default(),
            storage_dir: None,
            heartbeat_interval: Duration::from_secs(30),
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
        problems.check(self.heartbeat_interval >= Duration::from_secs(1), || {
            format!("server.heartbeat_interval = {:?}: must be at least 1s", self.heartbeat_interval)
        });
        problems.finish()
    }
}
