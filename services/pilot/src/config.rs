//! The `[pilot]` config section: where the server is, what the slot offers, and the pilot's
//! time limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::container::{ContainerConfig, Runtime as ContainerRuntime};
use crate::error::{Error, Result};

/// Heartbeat interval when neither the job nor the config names one (the reference pilot's 30 min).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1800);

/// How the pilot finds its server and queue, what it offers, and how long it may work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PilotService endpoint.
    pub server_url: String,
    /// The queue (the reference's PanDA queue) whose jobs this pilot takes.
    pub queue: String,
    /// Node name reported to the server; the host name when unset.
    pub node: Option<String>,
    /// Harvester worker running this pilot (empty outside Harvester).
    pub worker_id: String,
    /// Root of the job directories; each job runs in `PanDA_Pilot-<job_id>` below it.
    pub work_dir: PathBuf,
    /// Cores offered to GetJob (0: no limit).
    pub cores: u32,
    /// Memory offered to GetJob, in MB (0: no limit).
    pub memory_mb: u64,
    /// Stop after this many jobs (0: keep taking jobs until the server has none). Jobs from
    /// `job_file` count.
    pub max_jobs: u32,
    /// Push mode: a job file harvester wrote (`panda_types::job_file`); the pilot runs its jobs
    /// first, without GetJob, then goes on asking the server until `max_jobs` (set `max_jobs` to
    /// the file's job count to run only those).
    pub job_file: Option<PathBuf>,
    /// Take no new job after this much time since start (the reference's lifetime/timefloor).
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// Gap between SIGTERM and SIGKILL when the payload's process group is killed.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Give up (kill the payload, stop the pilot with an error) after this long without a
    /// successful server update.
    #[serde(with = "humantime_serde")]
    pub server_deadline: Duration,
    /// Overrides the heartbeat interval the server sends with each job.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// How often the payload's new output is sent to the server (sooner when 64 KiB wait).
    #[serde(with = "humantime_serde")]
    pub log_interval: Duration,
    /// How often the payload's memory (resident set of its process group) is compared with the
    /// job's `memory_mb`.
    #[serde(with = "humantime_serde")]
    pub memory_check_interval: Duration,
    /// Tries per input download (http(s)://) before stage-in fails.
    pub stage_in_attempts: u32,
    /// Wait before the first retry of a download; doubles with each retry.
    #[serde(with = "humantime_serde")]
    pub stage_in_backoff: Duration,
    /// One download try's limit.
    #[serde(with = "humantime_serde")]
    pub stage_in_timeout: Duration,
    /// How long to wait for a job when the queue is empty before stopping (0s: stop at once, as
    /// a batch slot should). The pilot long-polls the server meanwhile, so a job activated while
    /// it waits starts at once (embedded pilots wait, so that the next work finds them warm).
    #[serde(with = "humantime_serde")]
    pub idle_wait: Duration,
    /// Jobs asked for at once for a warm runtime (the jobs of one work, run one after the other
    /// in one interpreter; see the `warm` module). 1 to 100.
    pub warm_batch: u32,
    /// How jobs with a container image run (`[pilot.container]`).
    pub container: ContainerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_url: "http://127.0.0.1:50051".to_owned(),
            queue: "local".to_owned(),
            node: None,
            worker_id: String::new(),
            work_dir: PathBuf::from("./panda-data/pilot"),
            cores: 0,
            memory_mb: 0,
            max_jobs: 0,
            job_file: None,
            lifetime: Duration::from_secs(24 * 3600),
            kill_grace: Duration::from_secs(10),
            server_deadline: Duration::from_secs(3 * 3600),
            heartbeat_interval: None,
            log_interval: Duration::from_secs(5),
            memory_check_interval: Duration::from_secs(10),
            stage_in_attempts: 3,
            stage_in_backoff: Duration::from_secs(2),
            stage_in_timeout: Duration::from_secs(1800),
            idle_wait: Duration::ZERO,
            warm_batch: 50,
            container: ContainerConfig::default(),
        }
    }
}

impl Config {
    /// Checks the values that parse but cannot work, reporting every problem at once.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] listing each problem.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.server_url.trim().is_empty() {
            problems.push("pilot.server_url must not be empty".to_owned());
        }
        if self.queue.trim().is_empty() {
            problems.push("pilot.queue must not be empty".to_owned());
        }
        if self.node.as_deref().is_some_and(|node| node.trim().is_empty()) {
            problems.push("pilot.node must not be empty when set (leave it unset for the host name)".to_owned());
        }
        if self.work_dir.as_os_str().is_empty() {
            problems.push("pilot.work_dir must not be empty".to_owned());
        }
        if self.server_deadline.is_zero() {
            problems.push("pilot.server_deadline = 0s: must be positive".to_owned());
        }
        if self.heartbeat_interval.is_some_and(|interval| interval.is_zero()) {
            problems
                .push("pilot.heartbeat_interval = 0s: must be positive (leave it unset for the server's)".to_owned());
        }
        if self.memory_check_interval.is_zero() {
            problems.push("pilot.memory_check_interval = 0s: must be positive".to_owned());
        }
        if self.log_interval.is_zero() {
            problems.push("pilot.log_interval = 0s: must be positive".to_owned());
        }
        if self.job_file.as_ref().is_some_and(|path| path.as_os_str().is_empty()) {
            problems.push("pilot.job_file must not be empty when set".to_owned());
        }
        if self.stage_in_attempts == 0 {
            problems.push("pilot.stage_in_attempts = 0: must be at least 1".to_owned());
        }
        if self.stage_in_timeout.is_zero() {
            problems.push("pilot.stage_in_timeout = 0s: must be positive".to_owned());
        }
        if !(1..=100).contains(&self.warm_batch) {
            problems.push(format!("pilot.warm_batch = {}: must be 1 to 100 (jobs per GetJob)", self.warm_batch));
        }
        problems.extend(self.container.problems());
        if problems.is_empty() { Ok(()) } else { Err(Error::InvalidConfig(problems)) }
    }

    /// How input downloads are tried.
    pub(crate) fn stage_in_policy(&self) -> crate::stage::StageInPolicy {
        crate::stage::StageInPolicy {
            attempts: self.stage_in_attempts,
            backoff: self.stage_in_backoff,
            timeout: self.stage_in_timeout,
        }
    }

    /// The heartbeat interval for a job whose dispatch asked for `job_seconds` (0: unspecified).
    pub(crate) fn heartbeat_interval_for(&self, job_seconds: u32) -> Duration {
        match (self.heartbeat_interval, job_seconds) {
            (Some(interval), _) => interval,
            (None, 0) => DEFAULT_HEARTBEAT_INTERVAL,
            (None, seconds) => Duration::from_secs(u64::from(seconds)),
        }
    }
}

#[cfg(test)]
mod tests;
