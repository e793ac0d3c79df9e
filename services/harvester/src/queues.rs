//! The site admin's queue configuration file (YAML): which queues this harvester serves, each
//! with its limits, the resources a worker offers, and its plugin. Unknown keys and plugins are
//! refused with the file, the key and what is allowed.
//!
//! ```yaml
//! queues:
//!   local:
//!     status: online              # online | offline
//!     max_workers: 4              # workers queued + running, at most
//!     max_queued_workers: 4       # workers submitted but not running yet, at most
//!     max_new_workers_per_cycle: 4
//!     resources: { cores: 1, memory_mb: 2000 }   # what one worker offers a job
//!     pilot_max_jobs: 0           # jobs per pilot; 0 = until the queue has none
//!     plugin:
//!       type: local               # local (slurm, htcondor, kubernetes: later)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use panda_types::{QueueName, Resources};
use serde::{Deserialize, Serialize};

use crate::plugins::PluginConfig;

/// Whether a queue takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    /// Brokerage sends jobs; workers are submitted.
    #[default]
    Online,
    /// No new jobs, no new workers.
    Offline,
}

impl QueueStatus {
    /// The name the server uses.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueStatus::Online => "online",
            QueueStatus::Offline => "offline",
        }
    }
}

/// Resources one worker offers (zero: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerResources {
    /// Cores.
    pub cores: u32,
    /// Memory in MB.
    pub memory_mb: u64,
    /// Scratch disk in MB.
    pub disk_mb: u64,
    /// Wall time in seconds.
    pub walltime_seconds: u64,
}

impl From<WorkerResources> for Resources {
    fn from(r: WorkerResources) -> Self {
        Resources { cores: r.cores, memory_mb: r.memory_mb, disk_mb: r.disk_mb, walltime_seconds: r.walltime_seconds }
    }
}

/// One queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Online or offline.
    #[serde(default)]
    pub status: QueueStatus,
    /// Cap on workers queued + running.
    pub max_workers: u32,
    /// Cap on workers submitted but not running (default: max_workers).
    #[serde(default)]
    pub max_queued_workers: Option<u32>,
    /// Cap on workers submitted per cycle (default: no extra cap).
    #[serde(default)]
    pub max_new_workers_per_cycle: Option<u32>,
    /// What a worker offers.
    #[serde(default)]
    pub resources: WorkerResources,
    /// Jobs per pilot; 0 = until the queue has none.
    #[serde(default)]
    pub pilot_max_jobs: u32,
    /// How workers are provisioned.
    pub plugin: PluginConfig,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Queues by name.
    pub queues: BTreeMap<String, QueueConfig>,
}

/// A queue config problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum QueueConfigError {
    /// The file cannot be read.
    #[error("cannot read the queue config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or has unknown keys or plugins.
    #[error("queue config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message with the key path and line.
        message: String,
    },
    /// Values break a rule.
    #[error("queue config {path}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        problems: Vec<String>,
    },
}

impl QueueFile {
    /// The built-in configuration when no file is given: one `local` queue of `workers` pilots.
    pub fn embedded_default(workers: u32) -> Self {
        let queue = QueueConfig {
            status: QueueStatus::Online,
            max_workers: workers,
            max_queued_workers: None,
            max_new_workers_per_cycle: None,
            resources: WorkerResources { cores: 1, ..Default::default() },
            pilot_max_jobs: 0,
            plugin: PluginConfig::Local(Default::default()),
        };
        Self { queues: BTreeMap::from([("local".to_owned(), queue)]) }
    }

    /// Reads and validates a file.
    ///
    /// # Errors
    /// [`QueueConfigError`] naming the file, the key and what is allowed.
    pub fn load(path: &Path) -> Result<Self, QueueConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| QueueConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text (`path` is for messages).
    ///
    /// # Errors
    /// [`QueueConfigError::Parse`] or [`QueueConfigError::Invalid`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, QueueConfigError> {
        let mut file: QueueFile = serde_yaml_ng::from_str(text)
            .map_err(|e| QueueConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        // Template files are named relative to the queue file.
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let mut problems = Vec::new();
        for (name, queue) in &mut file.queues {
            problems.extend(queue.plugin.load_files(base_dir).into_iter().map(|p| format!("queues.{name}.plugin.{p}")));
        }
        problems.extend(file.problems());
        if problems.is_empty() { Ok(file) } else { Err(QueueConfigError::Invalid { path: path.to_owned(), problems }) }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.queues.is_empty() {
            problems.push("queues: at least one queue is needed".to_owned());
        }
        for (name, queue) in &self.queues {
            if let Err(e) = QueueName::new(name.clone()) {
                problems.push(format!("queues.{name}: the name {e}"));
            }
            if queue.max_workers == 0 {
                problems.push(format!(
                    "queues.{name}.max_workers: must be at least 1 (got 0); set status: offline to stop a queue"
                ));
            }
            if let Some(0) = queue.max_queued_workers {
                problems.push(format!("queues.{name}.max_queued_workers: must be at least 1 (got 0)"));
            }
            if let Some(0) = queue.max_new_workers_per_cycle {
                problems.push(format!("queues.{name}.max_new_workers_per_cycle: must be at least 1 (got 0)"));
            }
            if queue.plugin.is_batch() {
                // A batch job asks for what it needs; "unlimited" is not a request.
                let plugin = queue.plugin.name();
                if queue.resources.cores == 0 {
                    problems.push(format!("queues.{name}.resources.cores: must be set for a {plugin} queue (got 0)"));
                }
                if queue.resources.memory_mb == 0 {
                    problems
                        .push(format!("queues.{name}.resources.memory_mb: must be set for a {plugin} queue (got 0)"));
                }
            }
            // A template file that could not be read was reported when loading it.
            let unread = |p: &String| p.ends_with(" was not read");
            problems.extend(
                queue.plugin.problems().into_iter().filter(|p| !unread(p)).map(|p| format!("queues.{name}.plugin.{p}")),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<QueueFile, String> {
        QueueFile::parse(text, Path::new("queues.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn full_queue_parses() {
        let file = parse(
            "queues:\n  site_a:\n    status: offline\n    max_workers: 8\n    max_queued_workers: 2\n    max_new_workers_per_cycle: 3\n    resources: { cores: 4, memory_mb: 8000 }\n    pilot_max_jobs: 5\n    plugin:\n      type: local\n      pilot_command: [/bin/true]\n",
        )
        .unwrap();
        let queue = &file.queues["site_a"];
        assert_eq!(queue.status, QueueStatus::Offline);
        assert_eq!(queue.max_queued_workers, Some(2));
        assert_eq!(queue.resources.cores, 4);
    }

    #[test]
    fn unknown_plugin_names_file_key_and_allowed() {
        let error = parse("queues:\n  q:\n    max_workers: 1\n    plugin:\n      type: slurmm\n").unwrap_err();
        assert!(error.contains("queues.yaml"), "{error}");
        assert!(error.contains("slurmm") && error.contains("local"), "{error}");
    }

    #[test]
    fn unknown_key_is_named() {
        let error = parse("queues:\n  q:\n    max_wrokers: 1\n    plugin: { type: local }\n").unwrap_err();
        assert!(error.contains("max_wrokers"), "{error}");
        assert!(error.contains("queues.yaml"), "{error}");
    }

    #[test]
    fn rules_are_all_reported() {
        let error = parse("queues:\n  'bad name':\n    max_workers: 0\n    plugin: { type: local }\n").unwrap_err();
        assert!(error.contains("queues.bad name: the name"), "{error}");
        assert!(error.contains("max_workers: must be at least 1"), "{error}");
    }

    #[test]
    fn missing_file_is_named() {
        let error = QueueFile::load(Path::new("/nonexistent/queues.yaml")).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/queues.yaml"), "{error}");
    }

    #[test]
    fn example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/queues.yaml");
        QueueFile::load(&path).unwrap();
    }
}
