//! How workers reach a resource. Small role traits (submit, monitor, kill/clean) with bulk calls
//! that answer per worker, a tagged config enum, and one factory holding the only `match` on it.
//! A new plugin is a module, a `PluginConfig` variant and a factory arm.
//!
//! Modules: `local` (pilots as processes), `slurm` and `htcondor` (batch systems through their
//! commands), `kubernetes` (one Job per worker through the API server), `batch` (what those two share), `command` (running commands: the only place that
//! spawns them), `template` (`{placeholder}` templates).

pub mod batch;
pub mod command;
pub mod htcondor;
pub mod kubernetes;
pub mod local;
pub mod slurm;
pub mod template;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use panda_types::{Resources, WorkerStatus};
use serde::{Deserialize, Serialize};

/// What a worker is asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// Harvester worker ID.
    pub worker_id: String,
    /// Queue.
    pub queue: String,
    /// Its own directory (logs, exit code).
    pub work_dir: PathBuf,
    /// What the worker offers a job.
    pub resources: Resources,
    /// Jobs per pilot (0: until none).
    pub max_jobs: u32,
    /// The server the pilot talks to.
    pub server_url: String,
    /// Push mode: the job file in the worker's directory (the pilot gets `--job-file PATH`).
    pub job_file: Option<PathBuf>,
    /// Container runtimes the queue declares, in its order (the pilot gets
    /// `--container-runtimes a,b` and prefers them when it looks for one).
    pub container_runtimes: Vec<String>,
}

/// A worker already at the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRef {
    /// Harvester worker ID.
    pub worker_id: String,
    /// The resource's ID for it (pid, Slurm job ID, ...).
    pub batch_id: String,
    /// Its directory.
    pub work_dir: PathBuf,
}

/// The outcome of submitting one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Accepted; the resource's ID for it.
    Submitted {
        /// Batch ID.
        batch_id: String,
    },
    /// Failed for now; a later cycle submits a new worker.
    Temporary(String),
    /// Failed for good (bad configuration).
    Permanent(String),
}

/// What the resource says about a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchState {
    /// Mapped worker state.
    pub status: WorkerStatus,
    /// Exit code when it ended.
    pub exit_code: Option<i32>,
    /// Diagnostic.
    pub diag: String,
}

/// Submits workers.
#[async_trait]
pub trait Submitter: Send + Sync {
    /// One outcome per worker, in order.
    async fn submit(&self, workers: &[WorkerSpec]) -> Vec<SubmitOutcome>;

    /// Keeps the credentials workers need fresh where they run (the credential manager's call,
    /// once per cycle): `Ok(Some(what))` when something was renewed. Default: nothing to do.
    async fn refresh_credentials(&self) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// A worker's state, or why the resource could not tell (the worker then keeps its state, and the
/// reason becomes its diagnostic).
pub type CheckResult = Result<BatchState, String>;

/// Reports worker states.
#[async_trait]
pub trait Monitor: Send + Sync {
    /// One result per worker, in order. A batch plugin asks its batch system once per call, not
    /// once per worker.
    async fn check(&self, workers: &[WorkerRef]) -> Vec<CheckResult>;
}

/// A worker's log, as the resource keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLog {
    /// File or pod/container name.
    pub name: String,
    /// The text (its tail).
    pub text: String,
    /// Only the tail is here.
    pub truncated: bool,
}

/// The last `tail` bytes of the files of `dirs` whose names end in `.log`, `.out` or `.err`.
///
/// # Errors
/// A message naming a directory that cannot be read.
pub async fn tail_log_files(dirs: &[&Path], tail: u64) -> Result<Vec<WorkerLog>, String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut logs = Vec::new();
    for dir in dirs {
        let mut entries = match tokio::fs::read_dir(dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        let mut files = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if [".log", ".out", ".err"].iter().any(|s| name.ends_with(s)) {
                files.push((name, entry.path()));
            }
        }
        files.sort();
        for (name, path) in files {
            let Ok(mut file) = tokio::fs::File::open(&path).await else { continue };
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            let start = len.saturating_sub(tail);
            if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
                continue;
            }
            let mut bytes = Vec::new();
            if file.read_to_end(&mut bytes).await.is_err() {
                continue;
            }
            logs.push(WorkerLog { name, text: String::from_utf8_lossy(&bytes).into_owned(), truncated: start > 0 });
        }
    }
    Ok(logs)
}

/// Kills workers and cleans up after them.
#[async_trait]
pub trait Sweeper: Send + Sync {
    /// The worker's logs, the last `tail` bytes of each (default: the `.log`, `.out` and `.err`
    /// files of its directory).
    async fn logs(&self, worker: &WorkerRef, tail: u64) -> Result<Vec<WorkerLog>, String> {
        tail_log_files(&[&worker.work_dir], tail).await
    }
    /// Kills workers (idempotent: a worker already gone counts as killed); one result per
    /// worker, an error meaning "try again later".
    async fn kill(&self, workers: &[WorkerRef]) -> Vec<Result<(), String>>;
    /// Removes what a finished worker left behind.
    async fn clean(&self, worker: &WorkerRef) -> Result<(), String>;
}

/// A queue's plugin, by role.
#[derive(Clone)]
pub struct Plugins {
    /// Submits.
    pub submitter: Arc<dyn Submitter>,
    /// Monitors.
    pub monitor: Arc<dyn Monitor>,
    /// Kills and cleans.
    pub sweeper: Arc<dyn Sweeper>,
}

/// `plugin:` of a queue, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PluginConfig {
    /// Pilots as local processes.
    Local(local::LocalConfig),
    /// Workers as Slurm batch jobs.
    Slurm(Box<slurm::SlurmConfig>),
    /// Workers as HTCondor jobs.
    Htcondor(Box<htcondor::HtcondorConfig>),
    /// Workers as Kubernetes Jobs.
    Kubernetes(Box<kubernetes::KubernetesConfig>),
}

impl PluginConfig {
    /// The plugin's name.
    pub fn name(&self) -> &'static str {
        match self {
            PluginConfig::Local(_) => "local",
            PluginConfig::Slurm(_) => "slurm",
            PluginConfig::Htcondor(_) => "htcondor",
            PluginConfig::Kubernetes(_) => "kubernetes",
        }
    }

    /// Reads the files the config names (templates), relative to `base_dir` (the queue file's
    /// directory). Problems as `key: problem`.
    pub fn load_files(&mut self, base_dir: &Path) -> Vec<String> {
        match self {
            PluginConfig::Local(_) | PluginConfig::Kubernetes(_) => Vec::new(),
            PluginConfig::Slurm(config) => config.load_files(base_dir),
            PluginConfig::Htcondor(config) => config.load_files(base_dir),
        }
    }

    /// Rule violations, as `key: problem`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            PluginConfig::Local(config) => config.problems(),
            PluginConfig::Slurm(config) => config.problems(),
            PluginConfig::Htcondor(config) => config.problems(),
            PluginConfig::Kubernetes(config) => config.problems(),
        }
    }

    /// Whether workers run on a batch system (which needs a resource request per worker).
    pub fn is_batch(&self) -> bool {
        !matches!(self, PluginConfig::Local(_))
    }
}

/// What plugins get from the harvester.
#[derive(Debug, Clone)]
pub struct PluginDeps {
    /// Default pilot command (program and leading arguments).
    pub pilot_program: Vec<String>,
}

/// Builds the plugins of queue `queue`.
pub fn build(queue: &str, config: &PluginConfig, deps: &PluginDeps) -> Plugins {
    fn roles<P: Submitter + Monitor + Sweeper + 'static>(plugin: P) -> Plugins {
        let plugin = Arc::new(plugin);
        Plugins { submitter: plugin.clone(), monitor: plugin.clone(), sweeper: plugin }
    }
    let runner: Arc<dyn command::CommandRunner> = Arc::new(command::ProcessRunner);
    match config {
        PluginConfig::Local(config) => roles(local::LocalPlugin::new(config.clone(), deps.pilot_program.clone())),
        PluginConfig::Slurm(config) => {
            roles(slurm::SlurmPlugin::new(queue, (**config).clone(), deps.pilot_program.clone(), runner))
        }
        PluginConfig::Htcondor(config) => {
            roles(htcondor::HtcondorPlugin::new(queue, (**config).clone(), deps.pilot_program.clone(), runner))
        }
        PluginConfig::Kubernetes(config) => roles(kubernetes::KubernetesPlugin::new(queue, (**config).clone())),
    }
}
