//! `[jedi]` configuration.

use std::net::SocketAddr;
use std::time::Duration;

use panda_runtime::config::{ConfigError, Problems};
use serde::{Deserialize, Serialize};

/// JEDI's settings. Defaults serve the embedded mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC address.
    pub listen_addr: SocketAddr,
    /// `/metrics` and `/healthz` address.
    pub admin_addr: SocketAddr,
    /// The server.
    pub server_url: String,
    /// How often registered and pending tasks are re-examined (a safety net for lost events and
    /// the retry of pending tasks).
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// A queue whose harvester has not reported for this long is not brokered to.
    #[serde(with = "humantime_serde")]
    pub queue_stale_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: ([127, 0, 0, 1], 50052).into(),
            admin_addr: ([127, 0, 0, 1], 9152).into(),
            server_url: "http://127.0.0.1:50051".to_owned(),
            sweep_interval: Duration::from_secs(10),
            queue_stale_after: Duration::from_secs(300),
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
        problems.check(self.sweep_interval >= Duration::from_millis(100), || {
            format!("jedi.sweep_interval = {:?}: must be at least 100ms", self.sweep_interval)
        });
        problems.check_url("jedi.server_url", &self.server_url);
        problems.finish()
    }
}
