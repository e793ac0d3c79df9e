//! The `slurm` plugin: one batch job per worker.
//!
//! - **Submit**: the queue's template is rendered into `<work_dir>/submit.sh` and submitted with
//!   `sbatch --parsable --chdir=<work_dir>` (several at once, `submit_parallelism`); a failure is
//!   temporary when the controller is busy or unreachable, permanent otherwise.
//! - **Monitor**: one `squeue` call per cycle for all live workers of the queue; jobs that left it
//!   (after `MinJobAge`) are looked up with one `sacct` call (plain with slurmdbd, `--completion`
//!   with `jobcomp/filetxt`; `accounting: auto` finds out which). A job known to neither is
//!   "could not tell" for `lost_after`, then cancelled.
//! - **Kill**: one `scancel` call for all; a job already gone counts as killed.
//! - **Clean**: removes the worker's directory (script, pilot files) and its log directory.
//!
//! Parsing and the state mapping are pure functions in `parse`.

pub mod parse;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use panda_types::WorkerStatus;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, instrument};

use super::batch::{self, TemplateSource, Unseen};
use super::command::{CommandLine, CommandRunner};
use super::template::Template;
use super::{BatchState, CheckResult, Monitor, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec};
use parse::JobRecord;

/// The batch script used when a queue sets no template.
pub const DEFAULT_TEMPLATE: &str = "#!/bin/sh
#SBATCH --job-name=panda-{queue}-{worker_id}
#SBATCH --output={log_dir}/slurm.out
#SBATCH --error={log_dir}/slurm.err
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={cores}
#SBATCH --mem={memory_mb}M
#SBATCH --time={walltime_minutes}
exec {pilot_command}
";

/// Placeholders of Slurm templates: the common ones and `partition`, `account`.
pub fn placeholders() -> Vec<&'static str> {
    let mut known = batch::COMMON_PLACEHOLDERS.to_vec();
    known.extend(["partition", "account"]);
    known
}

/// Where `squeue` sends jobs that left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Accounting {
    /// Plain `sacct`; if it says accounting storage is disabled, `sacct --completion`.
    #[default]
    Auto,
    /// Plain `sacct` (slurmdbd).
    Slurmdbd,
    /// `sacct --completion` (`JobCompType=jobcomp/filetxt`, no slurmdbd).
    Jobcomp,
    /// No `sacct`: a job that left `squeue` is lost after `lost_after`.
    None,
}

/// `plugin: { type: slurm, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// Batch script template (inline); default [`DEFAULT_TEMPLATE`].
    pub template: Option<String>,
    /// Batch script template file, relative to the queue file.
    pub template_file: Option<PathBuf>,
    /// The text of `template_file`, read when the queue file is loaded.
    #[serde(skip)]
    pub template_text: Option<String>,
    /// Pilot program and leading arguments (default: the pilot of this installation; it must
    /// exist at that path on the batch nodes).
    pub pilot_command: Option<Vec<String>>,
    /// `sbatch --partition` and `{partition}`.
    pub partition: Option<String>,
    /// `sbatch --account` and `{account}`.
    pub account: Option<String>,
    /// Base of the per-worker log directories `<log_dir>/<queue>/<worker_id>` (default: the
    /// worker's directory). Must be visible to the batch nodes.
    pub log_dir: Option<PathBuf>,
    /// Where to look for jobs that left `squeue`.
    pub accounting: Accounting,
    /// The `sbatch` command.
    pub sbatch: CommandLine,
    /// The `squeue` command.
    pub squeue: CommandLine,
    /// The `sacct` command.
    pub sacct: CommandLine,
    /// The `scancel` command.
    pub scancel: CommandLine,
    /// Deadline of every command.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub command_timeout: Duration,
    /// `sbatch` calls running at once.
    pub submit_parallelism: u32,
    /// How long a job may be unknown to squeue and sacct before its worker is cancelled.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lost_after: Duration,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            template: None,
            template_file: None,
            template_text: None,
            pilot_command: None,
            partition: None,
            account: None,
            log_dir: None,
            accounting: Accounting::Auto,
            sbatch: CommandLine::program("sbatch"),
            squeue: CommandLine::program("squeue"),
            sacct: CommandLine::program("sacct"),
            scancel: CommandLine::program("scancel"),
            command_timeout: Duration::from_secs(60),
            submit_parallelism: 8,
            lost_after: Duration::from_secs(600),
        }
    }
}

impl SlurmConfig {
    fn template_source(&self) -> TemplateSource<'_> {
        TemplateSource {
            inline: self.template.as_deref(),
            file: self.template_file.as_deref(),
            loaded: self.template_text.as_deref(),
            default: DEFAULT_TEMPLATE,
        }
    }

    /// Reads `template_file` (relative to `base_dir`, made absolute).
    pub(crate) fn load_files(&mut self, base_dir: &Path) -> Vec<String> {
        let Some(file) = &self.template_file else { return Vec::new() };
        match batch::read_template_file(base_dir, file) {
            Ok((path, text)) => {
                self.template_file = Some(path);
                self.template_text = Some(text);
                Vec::new()
            }
            Err(problem) => vec![problem],
        }
    }

    fn parse_template(&self) -> Result<Template, Vec<String>> {
        self.template_source().parse(&placeholders())
    }

    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.parse_template() {
            Ok(template) => {
                let key = self.template_source().key();
                for (name, value) in [("partition", &self.partition), ("account", &self.account)] {
                    if template.uses(name) && value.is_none() {
                        problems.push(format!("{key}: uses {{{name}}} but {name} is not set"));
                    }
                }
            }
            Err(found) => problems.extend(found),
        }
        if let Some(command) = &self.pilot_command
            && command.first().is_none_or(|p| p.is_empty())
        {
            problems.push("pilot_command: must name a program".to_owned());
        }
        for (key, command) in
            [("sbatch", &self.sbatch), ("squeue", &self.squeue), ("sacct", &self.sacct), ("scancel", &self.scancel)]
        {
            if let Some(problem) = command.problem() {
                problems.push(format!("{key}: {problem}"));
            }
        }
        for (key, value) in [("partition", &self.partition), ("account", &self.account)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty() || v.contains(char::is_whitespace)) {
                problems.push(format!("{key}: must be a Slurm name without spaces"));
            }
        }
        if self.command_timeout < Duration::from_secs(1) {
            problems.push(format!("command_timeout: must be at least 1s (got {:?})", self.command_timeout));
        }
        if self.submit_parallelism == 0 {
            problems.push("submit_parallelism: must be at least 1 (got 0)".to_owned());
        }
        problems
    }
}

/// Workers as Slurm batch jobs.
pub struct SlurmPlugin {
    queue: String,
    config: SlurmConfig,
    /// Checked when the queue file was loaded; an error here fails every submission permanently.
    template: Result<Template, String>,
    pilot: Vec<String>,
    runner: Arc<dyn CommandRunner>,
    unseen: Unseen,
    /// `accounting: auto` found no slurmdbd: use `sacct --completion` from now on.
    completion_only: AtomicBool,
}

impl SlurmPlugin {
    /// A plugin for `queue`, running commands with `runner`.
    pub fn new(queue: &str, config: SlurmConfig, default_pilot: Vec<String>, runner: Arc<dyn CommandRunner>) -> Self {
        let template = config.parse_template().map_err(|problems| problems.join("; "));
        let pilot = config.pilot_command.clone().unwrap_or(default_pilot);
        let completion_only = AtomicBool::new(config.accounting == Accounting::Jobcomp);
        Self { queue: queue.to_owned(), config, template, pilot, runner, unseen: Unseen::default(), completion_only }
    }

    fn log_dir(&self, worker_id: &str, work_dir: &Path) -> PathBuf {
        batch::worker_log_dir(self.config.log_dir.as_deref(), &self.queue, worker_id, work_dir)
    }

    async fn submit_one(&self, template: &Template, worker: &WorkerSpec) -> SubmitOutcome {
        let log_dir = self.log_dir(&worker.worker_id, &worker.work_dir);
        if let Err(diag) = batch::create_dirs(&[&worker.work_dir, &log_dir]).await {
            return SubmitOutcome::Temporary(diag);
        }
        let values = template_values(&self.config, &self.queue, worker, &self.pilot);
        let script = worker.work_dir.join("submit.sh");
        if let Err(e) = tokio::fs::write(&script, template.render(&values)).await {
            return SubmitOutcome::Temporary(format!("cannot write {}: {e}", script.display()));
        }
        let mut args = vec!["--parsable".to_owned(), format!("--chdir={}", worker.work_dir.display())];
        if let Some(partition) = &self.config.partition {
            args.push(format!("--partition={partition}"));
        }
        if let Some(account) = &self.config.account {
            args.push(format!("--account={account}"));
        }
        args.push(script.display().to_string());
        let argv = self.config.sbatch.with_args(args);
        match self.runner.run(&argv, None, self.config.command_timeout).await {
            Err(error) if error.is_transient() => SubmitOutcome::Temporary(format!("sbatch: {error}")),
            Err(error) => SubmitOutcome::Permanent(format!("sbatch: {error}")),
            Ok(out) if !out.success() => {
                let diag = format!("sbatch {}", out.failure());
                if parse::sbatch_failure_is_transient(&out.text()) {
                    SubmitOutcome::Temporary(diag)
                } else {
                    SubmitOutcome::Permanent(diag)
                }
            }
            Ok(out) => match parse::parse_sbatch(&out.stdout) {
                Ok(batch_id) => SubmitOutcome::Submitted { batch_id },
                Err(diag) => SubmitOutcome::Permanent(diag),
            },
        }
    }

    /// Jobs `squeue` still knows, from one call.
    async fn squeue(&self, ids: &[&str]) -> Result<Vec<JobRecord>, String> {
        let argv = self.config.squeue.with_args([
            "--noheader".to_owned(),
            "--states=all".to_owned(),
            format!("--jobs={}", ids.join(",")),
            format!("--Format={}", parse::SQUEUE_FORMAT),
        ]);
        let out =
            self.runner.run(&argv, None, self.config.command_timeout).await.map_err(|e| format!("squeue: {e}"))?;
        if !out.success() {
            // squeue refuses the whole call when none of the jobs is known any more.
            return if parse::squeue_knows_none(&out.stderr) {
                Ok(Vec::new())
            } else {
                Err(format!("squeue {}", out.failure()))
            };
        }
        parse::parse_squeue(&out.stdout).map_err(|e| e.to_string())
    }

    /// Jobs the accounting knows, from one call (two when `auto` discovers there is no slurmdbd).
    async fn sacct(&self, ids: &[&str]) -> Result<Vec<JobRecord>, String> {
        loop {
            let completion = self.completion_only.load(Ordering::Relaxed);
            let mut args = vec![
                "--noheader".to_owned(),
                "--parsable2".to_owned(),
                "--allocations".to_owned(),
                format!("--jobs={}", ids.join(",")),
                format!("--format={}", parse::SACCT_FORMAT),
            ];
            if completion {
                args.insert(0, "--completion".to_owned());
            }
            let argv = self.config.sacct.with_args(args);
            let out =
                self.runner.run(&argv, None, self.config.command_timeout).await.map_err(|e| format!("sacct: {e}"))?;
            if out.success() {
                return parse::parse_sacct(&out.stdout).map_err(|e| e.to_string());
            }
            if !completion && self.config.accounting == Accounting::Auto && parse::sacct_has_no_accounting(&out.text())
            {
                info!(queue = %self.queue, "no slurmdbd: reading finished jobs with sacct --completion");
                self.completion_only.store(true, Ordering::Relaxed);
                continue;
            }
            return Err(format!("sacct {}", out.failure()));
        }
    }
}

#[async_trait]
impl Submitter for SlurmPlugin {
    #[instrument(skip_all, fields(queue = %self.queue, plugin = "slurm", workers = workers.len()))]
    async fn submit(&self, workers: &[WorkerSpec]) -> Vec<SubmitOutcome> {
        let template = match &self.template {
            Ok(template) => template,
            Err(problem) => {
                return workers.iter().map(|_| SubmitOutcome::Permanent(format!("bad template: {problem}"))).collect();
            }
        };
        let parallelism = usize::try_from(self.config.submit_parallelism.max(1)).unwrap_or(1);
        // `buffered` keeps the workers' order while several sbatch calls run. (The futures are made
        // up front: a closure inside the stream would not be `Send` for every lifetime.)
        let calls: Vec<_> = workers.iter().map(|worker| self.submit_one(template, worker)).collect();
        futures::stream::iter(calls).buffered(parallelism).collect().await
    }
}

#[async_trait]
impl Monitor for SlurmPlugin {
    #[instrument(skip_all, fields(queue = %self.queue, plugin = "slurm", workers = workers.len()))]
    async fn check(&self, workers: &[WorkerRef]) -> Vec<CheckResult> {
        let ids: Vec<&str> = {
            let mut seen = HashSet::new();
            workers
                .iter()
                .map(|w| w.batch_id.as_str())
                .filter(|id| parse::valid_job_id(id) && seen.insert(*id))
                .collect()
        };
        let mut states: HashMap<String, CheckResult> = HashMap::new();
        let mut accounting_problem = None;
        if !ids.is_empty() {
            match self.squeue(&ids).await {
                Ok(records) => {
                    for record in records {
                        states.insert(record.job_id.clone(), parse::map_record(&record));
                    }
                }
                Err(diag) => return workers.iter().map(|_| Err(diag.clone())).collect(),
            }
            let left: Vec<&str> = ids.iter().copied().filter(|id| !states.contains_key(*id)).collect();
            debug!(in_squeue = ids.len() - left.len(), left = left.len(), "squeue");
            if !left.is_empty() && self.config.accounting != Accounting::None {
                match self.sacct(&left).await {
                    Ok(records) => {
                        for record in records.into_iter().filter(|r| left.contains(&r.job_id.as_str())) {
                            states.insert(record.job_id.clone(), parse::map_record(&record));
                        }
                    }
                    Err(diag) => accounting_problem = Some(diag),
                }
            }
        }
        workers
            .iter()
            .map(|worker| {
                let id = worker.batch_id.as_str();
                if !parse::valid_job_id(id) {
                    return Err(format!("batch id {id:?} is not a Slurm job id"));
                }
                if let Some(state) = states.get(id) {
                    self.unseen.seen(id);
                    return state.clone();
                }
                if let Some(diag) = &accounting_problem {
                    return Err(format!("job {id} left squeue and {diag}"));
                }
                if self.unseen.lost(id, self.config.lost_after) {
                    Ok(BatchState {
                        status: WorkerStatus::Cancelled,
                        exit_code: None,
                        diag: format!("Slurm job {id} is known to neither squeue nor sacct (lost)"),
                    })
                } else {
                    Err(format!("Slurm job {id} is in neither squeue nor sacct (yet)"))
                }
            })
            .collect()
    }
}

#[async_trait]
impl Sweeper for SlurmPlugin {
    #[instrument(skip_all, fields(queue = %self.queue, plugin = "slurm", workers = workers.len()))]
    async fn kill(&self, workers: &[WorkerRef]) -> Vec<Result<(), String>> {
        let ids: Vec<String> =
            workers.iter().map(|w| w.batch_id.clone()).filter(|id| parse::valid_job_id(id)).collect();
        let outcome = if ids.is_empty() {
            Ok(HashMap::new())
        } else {
            let argv = self.config.scancel.with_args(ids);
            match self.runner.run(&argv, None, self.config.command_timeout).await {
                Err(error) => Err(format!("scancel: {error}")),
                Ok(out) if out.success() => Ok(HashMap::new()),
                Ok(out) => {
                    let errors = parse::parse_scancel_errors(&out.stderr);
                    if errors.is_empty() { Err(format!("scancel {}", out.failure())) } else { Ok(errors) }
                }
            }
        };
        workers
            .iter()
            .map(|worker| {
                let id = worker.batch_id.as_str();
                if !parse::valid_job_id(id) {
                    return Err(format!("batch id {id:?} is not a Slurm job id"));
                }
                match &outcome {
                    Err(diag) => Err(diag.clone()),
                    Ok(errors) => match errors.get(id) {
                        Some(reason) if !parse::scancel_error_means_gone(reason) => {
                            Err(format!("scancel of job {id}: {reason}"))
                        }
                        _ => Ok(()),
                    },
                }
            })
            .collect()
    }

    async fn clean(&self, worker: &WorkerRef) -> Result<(), String> {
        let log_dir = self.log_dir(&worker.worker_id, &worker.work_dir);
        batch::remove_dirs(&[&worker.work_dir, &log_dir]).await
    }

    async fn logs(&self, worker: &WorkerRef, tail: u64) -> Result<Vec<super::WorkerLog>, String> {
        let log_dir = self.log_dir(&worker.worker_id, &worker.work_dir);
        let dirs: Vec<&Path> =
            if log_dir == worker.work_dir { vec![&worker.work_dir] } else { vec![&worker.work_dir, &log_dir] };
        super::tail_log_files(&dirs, tail).await
    }
}

/// The values a template gets for `worker`.
pub fn template_values(
    config: &SlurmConfig,
    queue: &str,
    worker: &WorkerSpec,
    pilot: &[String],
) -> BTreeMap<&'static str, String> {
    let log_dir = batch::worker_log_dir(config.log_dir.as_deref(), queue, &worker.worker_id, &worker.work_dir);
    let mut values = batch::common_values(worker, &log_dir, pilot);
    values.insert("partition", config.partition.clone().unwrap_or_default());
    values.insert("account", config.account.clone().unwrap_or_default());
    values
}
