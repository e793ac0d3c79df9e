//! The `htcondor` plugin: one HTCondor job per worker, driven through the command-line tools.
//!
//! - **Submit**: the queue's template (one `queue` statement) is rendered per worker, kept as
//!   `<work_dir>/submit.sub`, and all of a cycle's workers go to ONE `condor_submit -` call (the
//!   descriptions joined on stdin); batch IDs `cluster.proc` are read from its
//!   "N job(s) submitted to cluster C." lines, in order. A failed call fails every worker in it:
//!   temporarily, unless the description is at fault.
//! - **Monitor**: one `condor_q -json` call per cycle for the clusters of all live workers, then
//!   one `condor_history -json` call for the jobs that left the queue. JobStatus 1–7 are mapped
//!   in `parse::map_ad`; a job held for `held_timeout` is removed with `condor_rm` (one call) and
//!   its worker cancelled with the hold reason as diagnostic.
//! - **Kill**: one `condor_rm` call; "not found" counts as removed.
//! - **Clean**: removes the worker's directory and its log directory.
//!
//! No HTCondor runs on the machines this is developed on: the tests drive it against a fake
//! command set (`tests/support/fake_condor.rs`) that prints the documented formats.

pub mod parse;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use panda_types::WorkerStatus;
use serde::{Deserialize, Serialize};
use tracing::{debug, instrument, warn};

use super::batch::{self, TemplateSource, Unseen};
use super::command::{CommandLine, CommandRunner};
use super::template::Template;
use super::{BatchState, CheckResult, Monitor, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec};
use parse::{JobAd, Verdict};

/// The submit description used when a queue sets no template (a vanilla-universe job on a pool
/// that shares the worker directories with this host).
pub const DEFAULT_TEMPLATE: &str = "universe = vanilla
executable = {pilot_executable}
arguments = {pilot_arguments}
initialdir = {work_dir}
output = {log_dir}/condor.out
error = {log_dir}/condor.err
log = {log_dir}/condor.log
request_cpus = {cores}
request_memory = {memory_mb}
+harvesterWorkerID = \"{worker_id}\"
+pandaQueue = \"{queue}\"
queue 1
";

/// Placeholders of HTCondor templates: the common ones, and the pilot split into
/// `pilot_executable` and `pilot_arguments` (quoted for the `arguments` command).
pub fn placeholders() -> Vec<&'static str> {
    let mut known = batch::COMMON_PLACEHOLDERS.to_vec();
    known.extend(["pilot_executable", "pilot_arguments"]);
    known
}

/// `plugin: { type: htcondor, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HtcondorConfig {
    /// Submit description template (inline); default [`DEFAULT_TEMPLATE`].
    pub template: Option<String>,
    /// Submit description template file, relative to the queue file.
    pub template_file: Option<PathBuf>,
    /// The text of `template_file`, read when the queue file is loaded.
    #[serde(skip)]
    pub template_text: Option<String>,
    /// Pilot program and leading arguments (default: the pilot of this installation).
    pub pilot_command: Option<Vec<String>>,
    /// Base of the per-worker log directories `<log_dir>/<queue>/<worker_id>` (default: the
    /// worker's directory).
    pub log_dir: Option<PathBuf>,
    /// `-name` of every command: the schedd (default: the local one).
    pub schedd: Option<String>,
    /// `-pool` of every command: the central manager (default: the local one).
    pub pool: Option<String>,
    /// The `condor_submit` command.
    pub condor_submit: CommandLine,
    /// The `condor_q` command.
    pub condor_q: CommandLine,
    /// The `condor_history` command.
    pub condor_history: CommandLine,
    /// The `condor_rm` command.
    pub condor_rm: CommandLine,
    /// A job held this long is removed and its worker cancelled (0s: at once).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub held_timeout: Duration,
    /// Deadline of every command.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub command_timeout: Duration,
    /// How long a job may be unknown to condor_q and condor_history before its worker is cancelled.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lost_after: Duration,
}

impl Default for HtcondorConfig {
    fn default() -> Self {
        Self {
            template: None,
            template_file: None,
            template_text: None,
            pilot_command: None,
            log_dir: None,
            schedd: None,
            pool: None,
            condor_submit: CommandLine::program("condor_submit"),
            condor_q: CommandLine::program("condor_q"),
            condor_history: CommandLine::program("condor_history"),
            condor_rm: CommandLine::program("condor_rm"),
            held_timeout: Duration::from_secs(3600),
            command_timeout: Duration::from_secs(120),
            lost_after: Duration::from_secs(600),
        }
    }
}

impl HtcondorConfig {
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
        let source = self.template_source();
        let template = source.parse(&placeholders())?;
        parse::check_queue_statement(source.text()).map_err(|problem| {
            let key = source.key();
            match source.file {
                Some(file) => vec![format!("{key}: {} {problem}", file.display())],
                None => vec![format!("{key}: {problem}")],
            }
        })?;
        Ok(template)
    }

    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = self.parse_template().err().unwrap_or_default();
        if let Some(command) = &self.pilot_command
            && command.first().is_none_or(|p| p.is_empty())
        {
            problems.push("pilot_command: must name a program".to_owned());
        }
        for (key, command) in [
            ("condor_submit", &self.condor_submit),
            ("condor_q", &self.condor_q),
            ("condor_history", &self.condor_history),
            ("condor_rm", &self.condor_rm),
        ] {
            if let Some(problem) = command.problem() {
                problems.push(format!("{key}: {problem}"));
            }
        }
        if self.command_timeout < Duration::from_secs(1) {
            problems.push(format!("command_timeout: must be at least 1s (got {:?})", self.command_timeout));
        }
        problems
    }

    /// `-name <schedd> -pool <pool>`, as configured.
    fn location(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(schedd) = &self.schedd {
            args.extend(["-name".to_owned(), schedd.clone()]);
        }
        if let Some(pool) = &self.pool {
            args.extend(["-pool".to_owned(), pool.clone()]);
        }
        args
    }
}

/// Workers as HTCondor jobs.
pub struct HtcondorPlugin {
    queue: String,
    config: HtcondorConfig,
    /// Checked when the queue file was loaded; an error here fails every submission permanently.
    template: Result<Template, String>,
    pilot: Vec<String>,
    runner: Arc<dyn CommandRunner>,
    unseen: Unseen,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl HtcondorPlugin {
    /// A plugin for `queue`, running commands with `runner`.
    pub fn new(
        queue: &str,
        config: HtcondorConfig,
        default_pilot: Vec<String>,
        runner: Arc<dyn CommandRunner>,
    ) -> Self {
        let template = config.parse_template().map_err(|problems| problems.join("; "));
        let pilot = config.pilot_command.clone().unwrap_or(default_pilot);
        Self { queue: queue.to_owned(), config, template, pilot, runner, unseen: Unseen::default() }
    }

    fn log_dir(&self, worker_id: &str, work_dir: &Path) -> PathBuf {
        batch::worker_log_dir(self.config.log_dir.as_deref(), &self.queue, worker_id, work_dir)
    }

    /// Renders a worker's description and keeps a copy in its directory.
    async fn describe(&self, template: &Template, worker: &WorkerSpec) -> Result<String, String> {
        let log_dir = self.log_dir(&worker.worker_id, &worker.work_dir);
        batch::create_dirs(&[&worker.work_dir, &log_dir]).await?;
        let args = batch::pilot_args(&self.pilot, worker);
        let mut values = batch::common_values(worker, &log_dir, &self.pilot);
        let (executable, arguments) = args.split_first().map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
        values.insert("pilot_executable", executable.to_owned());
        values.insert("pilot_arguments", parse::condor_arguments(arguments));
        let mut text = template.render(&values);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let file = worker.work_dir.join("submit.sub");
        tokio::fs::write(&file, &text).await.map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        Ok(text)
    }

    /// Jobs of these clusters in the queue (`condor_q`) or, with `history`, in the history.
    async fn query(&self, history: bool, clusters: &BTreeSet<i64>, limit: usize) -> Result<Vec<JobAd>, String> {
        let (name, command) =
            if history { ("condor_history", &self.config.condor_history) } else { ("condor_q", &self.config.condor_q) };
        let mut args = self.config.location();
        args.extend(["-json".to_owned(), "-attributes".to_owned(), parse::ATTRIBUTES.to_owned()]);
        let list = clusters.iter().map(i64::to_string).collect::<Vec<_>>();
        if history {
            // History files can be long: stop once as many jobs as asked for are found.
            args.extend([
                "-constraint".to_owned(),
                format!("member(ClusterId, {{{}}})", list.join(", ")),
                "-limit".to_owned(),
                limit.to_string(),
            ]);
        } else {
            args.extend(list);
        }
        let argv = command.with_args(args);
        let out =
            self.runner.run(&argv, None, self.config.command_timeout).await.map_err(|e| format!("{name}: {e}"))?;
        if !out.success() {
            return Err(format!("{name} {}", out.failure()));
        }
        parse::parse_ads(name, &out.stdout)
    }

    /// Removes jobs with one `condor_rm` call; a result per ID.
    async fn remove(&self, ids: &[String]) -> HashMap<String, Result<(), String>> {
        if ids.is_empty() {
            return HashMap::new();
        }
        let mut args = self.config.location();
        args.extend(ids.iter().cloned());
        let argv = self.config.condor_rm.with_args(args);
        match self.runner.run(&argv, None, self.config.command_timeout).await {
            Err(error) => ids.iter().map(|id| (id.clone(), Err(format!("condor_rm: {error}")))).collect(),
            Ok(out) => {
                let mut said = parse::parse_rm(&format!("{}\n{}", out.stdout, out.stderr));
                ids.iter()
                    .map(|id| {
                        let result = said.remove(id).unwrap_or_else(|| {
                            if out.success() { Ok(()) } else { Err(format!("condor_rm {}", out.failure())) }
                        });
                        (id.clone(), result)
                    })
                    .collect()
            }
        }
    }
}

#[async_trait]
impl Submitter for HtcondorPlugin {
    #[instrument(skip_all, fields(queue = %self.queue, plugin = "htcondor", workers = workers.len()))]
    async fn submit(&self, workers: &[WorkerSpec]) -> Vec<SubmitOutcome> {
        let template = match &self.template {
            Ok(template) => template,
            Err(problem) => {
                return workers.iter().map(|_| SubmitOutcome::Permanent(format!("bad template: {problem}"))).collect();
            }
        };
        // Describe every worker; those that fail here are left out of the call.
        let mut outcomes: Vec<Option<SubmitOutcome>> = Vec::with_capacity(workers.len());
        let mut description = String::new();
        let mut included = Vec::new();
        for (i, worker) in workers.iter().enumerate() {
            match self.describe(template, worker).await {
                Ok(text) => {
                    description.push_str(&text);
                    included.push(i);
                    outcomes.push(None);
                }
                Err(diag) => outcomes.push(Some(SubmitOutcome::Temporary(diag))),
            }
        }
        if !included.is_empty() {
            let mut args = self.config.location();
            args.push("-".to_owned());
            let argv = self.config.condor_submit.with_args(args);
            let result = match self.runner.run(&argv, Some(&description), self.config.command_timeout).await {
                Err(error) if error.is_transient() => Err(SubmitOutcome::Temporary(format!("condor_submit: {error}"))),
                Err(error) => Err(SubmitOutcome::Permanent(format!("condor_submit: {error}"))),
                Ok(out) if !out.success() => {
                    let diag = format!("condor_submit {}", out.failure());
                    Err(if parse::submit_failure_is_permanent(&out.text()) {
                        SubmitOutcome::Permanent(diag)
                    } else {
                        SubmitOutcome::Temporary(diag)
                    })
                }
                Ok(out) => match parse::parse_submit(&out.stdout) {
                    Ok(clusters) => {
                        let ids = parse::batch_ids(&clusters);
                        if ids.len() == included.len() {
                            Ok(ids)
                        } else {
                            // Which job is which worker is unknown: take them all back.
                            let diag = format!(
                                "condor_submit queued {} jobs for {} workers; removed them again",
                                ids.len(),
                                included.len()
                            );
                            warn!(queue = %self.queue, %diag);
                            let _ = self.remove(&ids).await;
                            Err(SubmitOutcome::Temporary(diag))
                        }
                    }
                    Err(diag) => Err(SubmitOutcome::Permanent(diag)),
                },
            };
            match result {
                Ok(ids) => {
                    for (i, batch_id) in included.iter().zip(ids) {
                        outcomes[*i] = Some(SubmitOutcome::Submitted { batch_id });
                    }
                }
                Err(outcome) => {
                    for i in &included {
                        outcomes[*i] = Some(outcome.clone());
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| SubmitOutcome::Temporary("not submitted".to_owned())))
            .collect()
    }
}

#[async_trait]
impl Monitor for HtcondorPlugin {
    #[instrument(skip_all, fields(queue = %self.queue, plugin = "htcondor", workers = workers.len()))]
    async fn check(&self, workers: &[WorkerRef]) -> Vec<CheckResult> {
        let clusters: BTreeSet<i64> =
            workers.iter().filter_map(|w| parse::split_id(&w.batch_id)).map(|(c, _)| c).collect();
        let mut ads: HashMap<String, JobAd> = HashMap::new();
        let mut history_problem = None;
        if !clusters.is_empty() {
            match self.query(false, &clusters, 0).await {
                Ok(found) => ads.extend(found.into_iter().map(|ad| (ad.id(), ad))),
                Err(diag) => return workers.iter().map(|_| Err(diag.clone())).collect(),
            }
            let left: Vec<(i64, i64)> = workers
                .iter()
                .filter_map(|w| parse::split_id(&w.batch_id))
                .filter(|(c, p)| !ads.contains_key(&format!("{c}.{p}")))
                .collect();
            debug!(in_queue = ads.len(), left = left.len(), "condor_q");
            if !left.is_empty() {
                let left_clusters = left.iter().map(|(c, _)| *c).collect();
                match self.query(true, &left_clusters, left.len()).await {
                    Ok(found) => {
                        for ad in found {
                            ads.entry(ad.id()).or_insert(ad);
                        }
                    }
                    Err(diag) => history_problem = Some(diag),
                }
            }
        }
        let now = now_unix();
        let verdicts: Vec<Result<Verdict, String>> = workers
            .iter()
            .map(|worker| {
                let id = worker.batch_id.as_str();
                if parse::split_id(id).is_none() {
                    return Err(format!("batch id {id:?} is not an HTCondor job id (cluster.proc)"));
                }
                if let Some(ad) = ads.get(id) {
                    self.unseen.seen(id);
                    return Ok(parse::map_ad(ad, now, self.config.held_timeout));
                }
                if let Some(diag) = &history_problem {
                    return Err(format!("job {id} left the queue and {diag}"));
                }
                if self.unseen.lost(id, self.config.lost_after) {
                    Ok(Verdict::State(BatchState {
                        status: WorkerStatus::Cancelled,
                        exit_code: None,
                        diag: format!("HTCondor job {id} is known to neither condor_q nor condor_history (lost)"),
                    }))
                } else {
                    Err(format!("HTCondor job {id} is in neither condor_q nor condor_history (yet)"))
                }
            })
            .collect();
        let held: Vec<String> = workers
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| matches!(v, Ok(Verdict::RemoveHeld { .. })))
            .map(|(w, _)| w.batch_id.clone())
            .collect();
        let mut removed = self.remove(&held).await;
        workers
            .iter()
            .zip(verdicts)
            .map(|(worker, verdict)| match verdict? {
                Verdict::State(state) => Ok(state),
                Verdict::Unknown(diag) => Err(diag),
                Verdict::RemoveHeld { reason, mut meanwhile } => match removed.remove(&worker.batch_id) {
                    Some(Ok(())) => Ok(BatchState { status: WorkerStatus::Cancelled, exit_code: None, diag: reason }),
                    other => {
                        let diag = other.and_then(Result::err).unwrap_or_else(|| "condor_rm said nothing".to_owned());
                        meanwhile.diag.push_str(&format!("; removal failed, retried next cycle: {diag}"));
                        Ok(meanwhile)
                    }
                },
            })
            .collect()
    }
}

#[async_trait]
impl Sweeper for HtcondorPlugin {
    #[instrument(skip_all, fields(queue = %self.queue, plugin = "htcondor", workers = workers.len()))]
    async fn kill(&self, workers: &[WorkerRef]) -> Vec<Result<(), String>> {
        let ids: Vec<String> =
            workers.iter().map(|w| w.batch_id.clone()).filter(|id| parse::split_id(id).is_some()).collect();
        let mut results = self.remove(&ids).await;
        workers
            .iter()
            .map(|worker| {
                let id = worker.batch_id.as_str();
                if parse::split_id(id).is_none() {
                    return Err(format!("batch id {id:?} is not an HTCondor job id (cluster.proc)"));
                }
                results.remove(id).unwrap_or(Ok(()))
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
