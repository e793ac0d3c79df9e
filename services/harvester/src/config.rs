//! `[harvester]` configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use panda_db::DatabaseConfig;
use panda_runtime::config::{ConfigError, Problems};
use serde::{Deserialize, Serialize};

/// The harvester's settings. Defaults serve the embedded mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC address.
    pub listen_addr: SocketAddr,
    /// `/metrics` and `/healthz` address.
    pub admin_addr: SocketAddr,
    /// The server.
    pub server_url: String,
    /// This instance's name (default `harvester-<hostname>`).
    pub harvester_id: Option<String>,
    /// Database (default: SQLite `harvester.db` in the data directory).
    pub database: DatabaseConfig,
    /// The queue file (YAML); unset: one `local` queue with `local_workers` pilots.
    pub queue_config: Option<PathBuf>,
    /// Pilots of the built-in `local` queue.
    pub local_workers: u32,
    /// Where worker directories go (default `<data_dir>/workers`).
    pub worker_dir: Option<PathBuf>,
    /// One provisioning cycle (report queues, monitor, submit, clean) per interval.
    #[serde(with = "humantime_serde")]
    pub cycle_interval: Duration,
    /// The propagator reports the workers of every queue to the server (brokerage counts the
    /// running ones as pilots; the answer names workers whose job the server killed) once per
    /// interval.
    #[serde(with = "humantime_serde")]
    pub propagate_interval: Duration,
    /// A pilot has this long to stop a job the server killed; then the harvester kills its worker
    /// through the plugin (scancel, condor_rm, Job deletion, a signal).
    #[serde(with = "humantime_serde")]
    pub server_kill_grace: Duration,
    /// Worker directories are removed this long after the worker ended.
    #[serde(with = "humantime_serde")]
    pub keep_finished: Duration,
    /// Kill this harvester's local pilots when it stops (the embedded mode's behaviour).
    pub kill_local_workers_on_exit: bool,
    /// How often the queue file is checked for changes (it is reloaded when it changed, and on
    /// SIGHUP).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: ([127, 0, 0, 1], 50053).into(),
            admin_addr: ([127, 0, 0, 1], 9153).into(),
            server_url: "http://127.0.0.1:50051".to_owned(),
            harvester_id: None,
            database: DatabaseConfig::default(),
            queue_config: None,
            local_workers: 4,
            worker_dir: None,
            cycle_interval: Duration::from_secs(1),
            propagate_interval: Duration::from_secs(10),
            server_kill_grace: Duration::from_secs(60),
            keep_finished: Duration::from_secs(3600),
            kill_local_workers_on_exit: true,
            reload_interval: Duration::from_secs(10),
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
        problems.check(self.cycle_interval >= Duration::from_millis(100), || {
            format!("harvester.cycle_interval = {:?}: must be at least 100ms", self.cycle_interval)
        });
        problems.check(self.propagate_interval >= Duration::from_millis(100), || {
            format!("harvester.propagate_interval = {:?}: must be at least 100ms", self.propagate_interval)
        });
        problems.check(self.reload_interval >= Duration::from_millis(100), || {
            format!("harvester.reload_interval = {:?}: must be at least 100ms", self.reload_interval)
        });
        problems.check(self.local_workers >= 1, || "harvester.local_workers = 0: must be at least 1".to_owned());
        problems.check_url("harvester.server_url", &self.server_url);
        problems.finish()
    }
}
