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
//!       type: local               # local | slurm | htcondor
//!       pilot_command: [/usr/bin/panda-pilot]    # optional; default: the pilot next to the harvester
//!   hpc:
//!     max_workers: 50
//!     resources: { cores: 8, memory_mb: 16000, walltime_seconds: 86400 }  # required for batch plugins
//!     plugin:
//!       type: slurm
//!       template_file: slurm.sh   # or `template: |` inline; relative to this file; default built in
//!       partition: debug          # optional: sbatch --partition, {partition}
//!       account: atlas            # optional: sbatch --account, {account}
//!       log_dir: /var/log/panda   # optional: <log_dir>/<queue>/<worker_id>; default the worker dir
//!       accounting: auto          # auto | slurmdbd | jobcomp | none (sacct after squeue)
//!       sbatch: sbatch            # also squeue, sacct, scancel: a path or [program, args...]
//!       pilot_command: [...]      # as for local
//!       command_timeout: 60s
//!       submit_parallelism: 8     # sbatch calls at once
//!       lost_after: 10m           # unknown to squeue and sacct this long: cancelled
//!   grid:
//!     max_workers: 200
//!     resources: { cores: 1, memory_mb: 2000 }
//!     plugin:
//!       type: htcondor
//!       template_file: grid.sub   # exactly one `queue` statement, last
//!       schedd: schedd01          # optional: -name; pool: -pool
//!       condor_submit: condor_submit   # also condor_q, condor_history, condor_rm
//!       held_timeout: 1h          # held this long: condor_rm, cancelled with the hold reason
//!       log_dir, pilot_command, command_timeout (2m), lost_after (10m) as for slurm
//! ```
//!
//! Templates use `{placeholder}`s (`plugins::batch::COMMON_PLACEHOLDERS`, plus `partition` and
//! `account` for Slurm, `pilot_executable` and `pilot_arguments` for HTCondor) and `{{`/`}}` for
//! literal braces; an unknown placeholder is an error naming the file, queue, key and line.

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
    fn example_files_are_valid() {
        for name in ["queues.yaml", "queues-batch.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
            let file = QueueFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            for queue in file.queues.values() {
                if let PluginConfig::Slurm(config) = &queue.plugin {
                    assert!(config.template_text.as_deref().is_some_and(|t| t.contains("{pilot_command}")));
                }
            }
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const BATCH_RESOURCES: &str = "    resources: { cores: 1, memory_mb: 1000 }\n";

    #[test]
    fn slurm_and_htcondor_queues_load_their_templates_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        write(dir.path(), "t/job.sh", "#!/bin/sh\n#SBATCH -p {partition}\n{pilot_command}\n");
        write(dir.path(), "t/job.sub", "executable = {pilot_executable}\narguments = {pilot_arguments}\nqueue\n");
        let path = write(
            dir.path(),
            "queues.yaml",
            &format!(
                "queues:\n  hpc:\n    max_workers: 2\n{BATCH_RESOURCES}    plugin:\n      type: slurm\n      template_file: t/job.sh\n      partition: debug\n      squeue: [ssh, login1, squeue]\n      lost_after: 5m\n  grid:\n    max_workers: 2\n{BATCH_RESOURCES}    plugin: {{ type: htcondor, template_file: t/job.sub, held_timeout: 30m }}\n"
            ),
        );
        let file = QueueFile::load(&path).unwrap();
        let PluginConfig::Slurm(slurm) = &file.queues["hpc"].plugin else { panic!() };
        assert_eq!(slurm.template_file.as_deref(), Some(dir.path().join("t/job.sh").as_path()));
        assert!(slurm.template_text.as_deref().unwrap().contains("#SBATCH -p {partition}"));
        assert_eq!(slurm.squeue.0, ["ssh", "login1", "squeue"]);
        assert_eq!(slurm.lost_after, std::time::Duration::from_secs(300));
        let PluginConfig::Htcondor(condor) = &file.queues["grid"].plugin else { panic!() };
        assert_eq!(condor.held_timeout, std::time::Duration::from_secs(1800));
        // The effective configuration prints (check-queues) and names the file, not its text.
        let printed = serde_yaml_ng::to_string(&file).unwrap();
        assert!(printed.contains("template_file:") && !printed.contains("#SBATCH"), "{printed}");
    }

    #[test]
    fn batch_plugin_errors_name_file_queue_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bad.sh", "#!/bin/sh\necho ${HOME}\n{pilot_command}\n");
        let path = write(
            dir.path(),
            "queues.yaml",
            "queues:\n  hpc:\n    max_workers: 2\n    plugin: { type: slurm, template_file: bad.sh }\n  grid:\n    max_workers: 2\n    resources: { cores: 1, memory_mb: 1 }\n    plugin: { type: htcondor, template_file: missing.sub }\n",
        );
        let error = QueueFile::load(&path).unwrap_err().to_string();
        assert!(error.starts_with(&format!("queue config {}: ", path.display())), "{error}");
        assert!(
            error.contains(&format!(
                "queues.hpc.plugin.template_file: {} line 2: unknown placeholder {{HOME}}",
                dir.path().join("bad.sh").display()
            )),
            "{error}"
        );
        assert!(error.contains("queues.hpc.resources.cores: must be set for a slurm queue"), "{error}");
        assert!(error.contains("queues.hpc.resources.memory_mb: must be set for a slurm queue"), "{error}");
        assert!(error.contains("queues.grid.plugin.template_file: cannot read"), "{error}");
        assert!(error.contains("missing.sub"), "{error}");
        assert!(!error.contains("was not read"), "{error}");

        let error = parse(&format!(
            "queues:\n  hpc:\n    max_workers: 1\n{BATCH_RESOURCES}    plugin: {{ type: slurm, partiton: debug }}\n"
        ))
        .unwrap_err();
        assert!(error.contains("queues.yaml") && error.contains("partiton") && error.contains("partition"), "{error}");
        let error = parse(&format!(
            "queues:\n  hpc:\n    max_workers: 1\n{BATCH_RESOURCES}    plugin: {{ type: htcondor, template: \"queue 2\" }}\n"
        ))
        .unwrap_err();
        assert!(error.contains("queues.hpc.plugin.template: `queue 2` must queue exactly one job"), "{error}");
        let error = parse(&format!(
            "queues:\n  hpc:\n    max_workers: 1\n{BATCH_RESOURCES}    plugin: {{ type: slurm, accounting: slurmdb }}\n"
        ))
        .unwrap_err();
        assert!(error.contains("slurmdb") && error.contains("jobcomp"), "{error}");
    }
}
