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
    /// A job whose pilot sent nothing for this long is taken back (sent: requeued; starting or
    /// running: failed with "lost heartbeat").
    #[serde(with = "humantime_serde")]
    pub lost_heartbeat_after: Duration,
    /// How often the watchdog looks for such jobs.
    #[serde(with = "humantime_serde")]
    pub watchdog_interval: Duration,
    /// A harvester's worker report (ReportWorkers) counts for brokerage this long; after that its
    /// harvester is taken to have stopped reporting and its workers no longer count as pilots.
    #[serde(with = "humantime_serde")]
    pub worker_report_stale_after: Duration,
    /// Group commit of pilots' GetJob and UpdateJob calls.
    pub group_commit: GroupCommitConfig,
    /// `[server.cache]`: users' code archives.
    pub cache: crate::cache::Config,
    /// `[server.logs]`: jobs' stdout and stderr.
    pub logs: crate::logs::Config,
    /// `[server.shares]`: the global-share tree dispatch follows (default: one share, `default`).
    pub shares: crate::shares::Config,
}

/// `[server.group_commit]`: pilots' calls that arrive while a transaction commits share the next
/// one. There is no timer: a lone call runs at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupCommitConfig {
    /// Batches in flight at once per kind (dispatch, report); 0 = automatic: 1 on SQLite (one
    /// writer), 4 on PostgreSQL.
    pub workers: usize,
    /// Most calls in one batch.
    pub max_batch: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self { workers: 0, max_batch: 256 }
    }
}

impl GroupCommitConfig {
    /// Workers for a database backend.
    pub fn workers_for(&self, postgres: bool) -> usize {
        match self.workers {
            0 if postgres => 4,
            0 => 1,
            n => n,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: ([127, 0, 0, 1], 50051).into(),
            admin_addr: ([127, 0, 0, 1], 9151).into(),
            database: DatabaseConfig::default(),
            storage_dir: None,
            heartbeat_interval: Duration::from_secs(30),
            lost_heartbeat_after: Duration::from_secs(600),
            watchdog_interval: Duration::from_secs(30),
            worker_report_stale_after: Duration::from_secs(300),
            group_commit: GroupCommitConfig::default(),
            cache: crate::cache::Config::default(),
            logs: crate::logs::Config::default(),
            shares: crate::shares::Config::default(),
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
        problems.check(self.lost_heartbeat_after >= self.heartbeat_interval * 3, || {
            format!(
                "server.lost_heartbeat_after = {:?}: must be at least 3 heartbeat intervals ({:?}), or live jobs get failed",
                self.lost_heartbeat_after,
                self.heartbeat_interval * 3
            )
        });
        problems.check(self.watchdog_interval >= Duration::from_millis(100), || {
            format!("server.watchdog_interval = {:?}: must be at least 100ms", self.watchdog_interval)
        });
        problems.check(self.group_commit.workers <= 64, || {
            format!("server.group_commit.workers = {}: must be at most 64 (0 = automatic)", self.group_commit.workers)
        });
        problems.check((1..=10_000).contains(&self.group_commit.max_batch), || {
            format!("server.group_commit.max_batch = {}: must be between 1 and 10000", self.group_commit.max_batch)
        });
        problems.check(self.cache.max_archive_bytes > 0, || {
            "server.cache.max_archive_bytes = 0: must be at least 1".to_owned()
        });
        problems.check(self.logs.max_bytes_per_job > 0, || {
            "server.logs.max_bytes_per_job = 0: must be at least 1".to_owned()
        });
        if let Err(problem) = self.shares.build() {
            problems.check(false, || problem);
        }
        problems.check(self.shares.refresh_interval >= Duration::from_millis(100), || {
            format!("server.shares.refresh_interval = {:?}: must be at least 100ms", self.shares.refresh_interval)
        });
        problems.finish()
    }
}
