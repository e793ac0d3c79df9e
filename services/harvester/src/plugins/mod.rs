//! How workers reach a resource. Small role traits (submit, monitor, kill/clean) with bulk calls
//! that answer per worker, a tagged config enum, and one factory holding the only `match` on it.
//! A new plugin is a module, a `PluginConfig` variant and a factory arm.

pub mod local;

use std::path::PathBuf;
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
}

/// Reports worker states.
#[async_trait]
pub trait Monitor: Send + Sync {
    /// One state per worker, in order; `None` when the resource could not tell.
    async fn check(&self, workers: &[WorkerRef]) -> Vec<Option<BatchState>>;
}

/// Kills workers and cleans up after them.
#[async_trait]
pub trait Sweeper: Send + Sync {
    /// Kills workers (idempotent); one result per worker.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PluginConfig {
    /// Pilots as local processes.
    Local(local::LocalConfig),
}

impl PluginConfig {
    /// The plugin's name.
    pub fn name(&self) -> &'static str {
        match self {
            PluginConfig::Local(_) => "local",
        }
    }

    /// Rule violations, as `key: problem`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            PluginConfig::Local(config) => config.problems(),
        }
    }
}

/// What plugins get from the harvester.
#[derive(Debug, Clone)]
pub struct PluginDeps {
    /// Default pilot command (program and leading arguments).
    pub pilot_program: Vec<String>,
}

/// Builds a queue's plugins.
pub fn build(config: &PluginConfig, deps: &PluginDeps) -> Plugins {
    match config {
        PluginConfig::Local(config) => {
            let plugin = Arc::new(local::LocalPlugin::new(config.clone(), deps.pilot_program.clone()));
            Plugins { submitter: plugin.clone(), monitor: plugin.clone(), sweeper: plugin }
        }
    }
}
