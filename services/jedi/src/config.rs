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
    /// Brokerage throttles a queue whose queued jobs exceed this many per slot (and
    /// `min_queue_limit`).
    pub queued_per_slot: u32,
    /// See `queued_per_slot`.
    pub min_queue_limit: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: ([127, 0, 0, 1], 50052).into(),
            admin_addr: ([127, 0, 0, 1], 9152).into(),
            server_url: "http://127.0.0.1:50051".to_owned(),
            sweep_interval: Duration::from_secs(10),
            queue_stale_after: Duration::from_secs(300),
            queued_per_slot: 2,
            min_queue_limit: 100_000,
        }
    }
}

impl Config {
    /// The brokerage thresholds these settings give.
    pub fn brokerage_settings(&self) -> crate::brokerage::Settings {
        crate::brokerage::Settings {
            stale_after_seconds: self.queue_stale_after.as_secs(),
            queued_per_slot: self.queued_per_slot,
            min_queue_limit: self.min_queue_limit,
        }
    }

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
