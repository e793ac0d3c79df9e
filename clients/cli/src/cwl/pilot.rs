//! The pilot executor: the run is a driven idds workflow and each CommandLineTool invocation a
//! work of it (AddWork, keyed by step path and scatter index, parents = the invocations whose
//! outputs feed it), whose task has one job run by a pilot of the system (embedded or
//! `--server URL` with its idds). idds stores, submits, shows (`panda workflow show/watch`),
//! aborts, suspends and reconciles the works; the CWL engine still decides what runs (scatter,
//! `when`, valueFrom need run-time values), builds the command line and prepares the work dir on
//! this host (staging, InitialWorkDir); the job's command changes to that directory and runs the
//! tool there, so the pilot must share this file system (the embedded pilots run on this host).
//! The executor adds the work, follows the workflow with `WatchWorkflow` until the work has its
//! task, then the task with `WatchTask` (streams, no polling), reads the job's exit code, and
//! kills the task if anything goes wrong on this side, so no job outlives the run. At the end
//! the run closes its workflow (finished or failed); an interrupted run aborts it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::OnceCell;

use panda_all::{AllConfig, Cluster};
use panda_client::{DrivenWorkflowServiceClient, ServerClient, WorkflowServiceClient};
use panda_cwl::exec::{
    Executor, JobDirs, JobOutcome, JobSpec, LocalExecutor, prepare_redirections, shell_line, stage_one,
};
use panda_cwl::{CwlError, Result};
use panda_proto::common::v1 as common;
use panda_proto::idds::v1 as idds;
use panda_proto::server::v1 as server;
use tonic::transport::Channel;

/// The pilot's code for a payload killed at its wall-time limit (REACHEDMAXTIME).
const WALLTIME_EXCEEDED: u32 = 1213;
/// The pilot's code for a payload that exited non-zero (its exit code is the tool's).
const PAYLOAD_FAILED: u32 = 1305;
/// The longest command a task may carry; longer lines go to a script in the job's directory.
const MAX_INLINE_COMMAND: usize = 60 * 1024;
/// Beside the work dir: the tool's exit code when the job exits 0 for one of its successCodes.
const EXIT_CODE_FILE: &str = "exit-code";
/// Invocations running at once without `--parallel` (jobs run on pilots, not on this host).
pub const DEFAULT_PARALLEL: usize = 32;
/// How often a broken WatchWorkflow stream is reopened (idds restarting) before giving up.
const WATCH_RECONNECTS: u32 = 30;

/// Where the jobs go.
pub enum Target {
    /// A running deployment's server and idds.
    Server {
        /// Server URL.
        server: String,
        /// idds URL.
        idds: String,
    },
    /// An embedded system, started when the first tool runs (a document that fails to load or
    /// runs only expressions starts nothing) and stopped by [`PilotExecutor::shutdown`].
    Embedded {
        /// Its configuration.
        config: Box<AllConfig>,
        /// The pilot program and its leading arguments.
        pilot_program: Vec<String>,
    },
}

/// The services a run talks to.
struct System {
    server: ServerClient,
    workflows: WorkflowServiceClient<Channel>,
    driven: DrivenWorkflowServiceClient<Channel>,
}

/// Runs jobs as works of a driven idds workflow.
pub struct PilotExecutor {
    target: Mutex<Option<Target>>,
    system: OnceCell<System>,
    /// The run's idds workflow, created when the first tool runs.
    workflow: OnceCell<u64>,
    /// Its name (after the document).
    name: String,
    cluster: Mutex<Option<Cluster>>,
    runtime: tokio::runtime::Handle,
    /// Allocates work dirs exactly as the local executor does (same host or shared file system).
    dirs: LocalExecutor,
    user: String,
    /// A task that goes `pending` (no queue can take it) fails at once when true (embedded);
    /// with a deployment it may wait for a queue to come back.
    fail_when_pending: bool,
    live: Mutex<BTreeSet<u64>>,
    /// Renews the driver lease of the run's workflow while the run lives (stopped at close).
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set by [`Executor::cancel`] (another invocation failed): no new work, live tasks killed.
    cancelled: AtomicBool,
    counter: AtomicU64,
    quiet: bool,
}

impl PilotExecutor {
    /// An executor submitting to `target`, with work dirs under `root`; its workflow is called
    /// `name` (made valid: `[A-Za-z0-9._-]`, at most 100 characters).
    pub fn new(
        target: Target,
        runtime: tokio::runtime::Handle,
        root: &std::path::Path,
        user: String,
        name: &str,
    ) -> Self {
        Self {
            fail_when_pending: matches!(target, Target::Embedded { .. }),
            target: Mutex::new(Some(target)),
            system: OnceCell::new(),
            workflow: OnceCell::new(),
            name: workflow_name(name),
            cluster: Mutex::new(None),
            runtime,
            dirs: LocalExecutor::new(root),
            user,
            live: Mutex::new(BTreeSet::new()),
            renewer: Mutex::new(None),
            cancelled: AtomicBool::new(false),
            counter: AtomicU64::new(0),
            quiet: false,
        }
    }

    /// The server and idds, starting the embedded system on first use.
    async fn system(&self) -> Result<&System> {
        self.system
            .get_or_try_init(|| async {
                let target = self.target.lock().ok().and_then(|mut t| t.take());
                let (server_url, idds_url) = match target {
                    Some(Target::Server { server, idds }) => (server, idds),
                    Some(Target::Embedded { config, pilot_program }) => {
                        let cluster = Cluster::start(*config, pilot_program)
                            .await
                            .map_err(|e| CwlError::Failed(format!("starting the embedded system: {e:#}")))?;
                        let urls = (cluster.server_url.clone(), cluster.idds_url.clone());
                        if let Ok(mut slot) = self.cluster.lock() {
                            *slot = Some(cluster);
                        }
                        urls
                    }
                    None => return Err(CwlError::Failed("the system could not be reached before".into())),
                };
                let server = ServerClient::new(&server_url)
                    .map_err(|e| CwlError::Failed(format!("server {server_url}: {e}")))?;
                let channel =
                    panda_client::channel(&idds_url).map_err(|e| CwlError::Failed(format!("idds {idds_url}: {e}")))?;
                Ok(System {
                    server,
                    workflows: WorkflowServiceClient::new(channel.clone()),
                    driven: DrivenWorkflowServiceClient::new(channel),
                })
            })
            .await
    }

    /// The run's workflow, created on first use.
    async fn workflow(&self, system: &System) -> Result<u64> {
        self.workflow
            .get_or_try_init(|| async {
                let request = idds::CreateDrivenWorkflowRequest { name: self.name.clone(), user: self.user.clone() };
                // Not idempotent (a repeat makes a second, empty workflow): one attempt only
                // unless the call never reached idds (UNAVAILABLE).
                let id = panda_client::retry(5, false, || {
                    let mut driven = system.driven.clone();
                    let request = request.clone();
                    async move { driven.create_driven_workflow(request).await }
                })
                .await
                .map_err(|s| CwlError::Failed(format!("creating the run's idds workflow: {}", s.message())))?
                .into_inner();
                let (id, lease) = (id.workflow_id, id.lease_seconds);
                // An idds without driver leases answers 0: nothing to renew.
                if lease > 0 {
                    self.renew_every(system.driven.clone(), id, std::time::Duration::from_secs(lease.into()) / 3);
                }
                if !self.quiet() {
                    eprintln!("cwl-runner: idds workflow {id} ({}); panda workflow watch {id}", self.name);
                }
                Ok(id)
            })
            .await
            .copied()
    }

    /// Renews the run's driver lease every `every` (a third of the lease) until the run ends;
    /// idds fails the workflow (and kills its tasks) if renewals stop, e.g. this process died.
    fn renew_every(&self, driven: DrivenWorkflowServiceClient<Channel>, workflow_id: u64, every: std::time::Duration) {
        let quiet = self.quiet();
        let handle = self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match driven.clone().renew_driver(idds::RenewDriverRequest { workflow_id }).await {
                    Ok(_) => {}
                    // Ended (aborted, or the lease lapsed while idds was unreachable): the
                    // tasks are stopped, and the run learns it from its watch streams.
                    Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound) => {
                        if !quiet {
                            eprintln!("cwl-runner: idds workflow {workflow_id}: {}", status.message());
                        }
                        return;
                    }
                    // Transient (idds restarting): try again next time, well within the lease.
                    Err(status) => tracing::warn!(workflow_id, %status, "renewing the driver lease failed"),
                }
            }
        });
        if let Ok(mut slot) = self.renewer.lock() {
            *slot = Some(handle);
        }
    }

    fn stop_renewing(&self) {
        if let Some(handle) = self.renewer.lock().ok().and_then(|mut r| r.take()) {
            handle.abort();
        }
    }

    fn quiet(&self) -> bool {
        self.quiet
    }

    /// Whether to keep quiet about the workflow made for the run (`--quiet`).
    #[must_use]
    pub fn with_quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Ends the run's workflow: `finished` once idds shows every work ended (it learns a task's
    /// end from the bus, a moment after this side), else `failed` with `reason`. Nothing when no
    /// tool ran.
    pub async fn close(&self, ok: bool, reason: &str) {
        let (Some(system), Some(workflow_id)) = (self.system.get(), self.workflow.get().copied()) else { return };
        if ok && let Err(error) = self.settled(system, workflow_id).await {
            eprintln!("cwl-runner: idds workflow {workflow_id}: {error}");
        }
        let status = if ok { idds::WorkflowStatus::Finished } else { idds::WorkflowStatus::Failed };
        let request = idds::CloseWorkflowRequest {
            workflow_id,
            status: status as i32,
            reason: reason.chars().take(1000).collect(),
        };
        let closed = panda_client::retry(5, true, || {
            let mut driven = system.driven.clone();
            let request = request.clone();
            async move { driven.close_workflow(request).await }
        })
        .await;
        self.stop_renewing();
        if let Err(status) = closed {
            // An aborted workflow has ended already: nothing to close.
            if status.code() != tonic::Code::FailedPrecondition || ok {
                eprintln!("cwl-runner: closing idds workflow {workflow_id}: {}", status.message());
            }
        }
    }

    /// Waits (following the workflow) until every work has ended in idds.
    async fn settled(&self, system: &System, workflow_id: u64) -> std::result::Result<(), String> {
        self.follow(system, workflow_id, |workflow| {
            let open = workflow.works.iter().filter(|w| !work_ended(w.status)).count();
            (open == 0).then_some(())
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// Follows the workflow with WatchWorkflow until `done` answers something (reopening the
    /// stream if it breaks, e.g. idds restarting). The stream ends with the workflow.
    async fn follow<T>(
        &self,
        system: &System,
        workflow_id: u64,
        mut done: impl FnMut(&idds::Workflow) -> Option<T>,
    ) -> Result<T> {
        let mut reconnects = 0;
        let mut last: Option<idds::Workflow> = None;
        loop {
            let opened = system.workflows.clone().watch_workflow(idds::WatchWorkflowRequest { workflow_id }).await;
            let broken = match opened {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(update)) => {
                                let Some(workflow) = update.workflow else { continue };
                                if let Some(value) = done(&workflow) {
                                    return Ok(value);
                                }
                                last = Some(workflow);
                            }
                            Ok(None) => break None,
                            Err(status) => break Some(status),
                        }
                    }
                }
                Err(status) => Some(status),
            };
            match broken {
                // The stream ended with the workflow, and what we wait for never came.
                None => {
                    let status = last.as_ref().map_or(0, |w| w.status);
                    let state = idds::WorkflowStatus::try_from(status)
                        .map_or("unknown", |s| s.as_str_name())
                        .trim_start_matches("WORKFLOW_STATUS_")
                        .to_lowercase();
                    let hint = if status == idds::WorkflowStatus::Cancelled as i32 { " (aborted)" } else { "" };
                    return Err(CwlError::Failed(format!("idds workflow {workflow_id} ended {state}{hint}")));
                }
                Some(status) if reconnects < WATCH_RECONNECTS && panda_client::is_transient(&status, true) => {
                    reconnects += 1;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Some(status) => {
                    return Err(CwlError::Failed(format!(
                        "following idds workflow {workflow_id}: {}",
                        status.message()
                    )));
                }
            }
        }
    }

    /// Aborts the run's workflow and kills the tasks still running (Ctrl-C), then stops the
    /// embedded system if one started.
    pub async fn shutdown(&self, kill_live: bool) {
        self.stop_renewing();
        if kill_live && let Some(system) = self.system.get() {
            if let Some(workflow_id) = self.workflow.get().copied() {
                eprintln!("cwl-runner: interrupted; aborting idds workflow {workflow_id}");
                if let Err(status) =
                    system.workflows.clone().abort_workflow(idds::AbortWorkflowRequest { workflow_id }).await
                {
                    eprintln!("cwl-runner: could not abort workflow {workflow_id}: {}", status.message());
                }
            }
            // Whatever idds did, no task of the run may outlive it.
            let live: Vec<u64> = self.live.lock().map(|l| l.iter().copied().collect()).unwrap_or_default();
            if !live.is_empty() {
                eprintln!("cwl-runner: killing task(s) {live:?}");
            }
            Self::kill(&system.server, &live).await;
        }
        let cluster = self.cluster.lock().ok().and_then(|mut c| c.take());
        if let Some(cluster) = cluster
            && let Err(error) = cluster.stop().await
        {
            eprintln!("cwl-runner: stopping the embedded system: {error:#}");
        }
    }

    async fn kill(server: &ServerClient, tasks: &[u64]) {
        for &task_id in tasks {
            if let Err(error) = server.tasks.clone().kill_task(server::KillTaskRequest { task_id }).await {
                eprintln!("cwl-runner: could not kill task {task_id}: {}", error.message());
            }
        }
    }

    fn spec(&self, n: u64, dirs: &JobDirs, job: &JobSpec) -> Result<server::TaskSpec> {
        let mut line = shell_line(dirs, job);
        if !job.success_codes.is_empty() {
            // The job succeeds for the tool's other success codes too (else idds would fail the
            // work and skip its children); the real code is kept beside the work dir.
            let file = dirs.outdir.parent().unwrap_or(&dirs.outdir).join(EXIT_CODE_FILE);
            let codes: Vec<String> = job.success_codes.iter().map(ToString::to_string).collect();
            line = format!(
                "( {line} ); rc=$?; case $rc in {}) echo $rc > '{}'; exit 0;; esac; exit $rc",
                codes.join("|"),
                file.display().to_string().replace('\'', "'\\''")
            );
        }
        if line.len() > MAX_INLINE_COMMAND {
            let script = dirs.outdir.parent().unwrap_or(&dirs.outdir).join("command.sh");
            std::fs::write(&script, &line).map_err(|e| CwlError::io(&script, e))?;
            line = format!("/bin/sh '{}'", script.display().to_string().replace('\'', "'\\''"));
        }
        Ok(server::TaskSpec {
            name: task_name(&job.name, n),
            user: self.user.clone(),
            // The task command is a template: braces are escaped.
            command: line.replace('{', "{{").replace('}', "}}"),
            n_jobs: Some(1),
            resources: Some(common::Resources {
                cores: job.cores,
                memory_mb: job.ram_mb.unwrap_or(0),
                disk_mb: 0,
                walltime_seconds: job.timeout.map_or(0, |t| t.as_secs().max(1)),
            }),
            // CWL has no automatic retry: a failing tool is the workflow's permanentFail at
            // once, not after the system's default three attempts.
            split: Some(server::SplitRules { max_attempts: Some(1), ..Default::default() }),
            ..Default::default()
        })
    }

    /// Adds the invocation as a work of the run's workflow, waits for its task, follows the task
    /// to its end and reads the job.
    async fn add_and_wait(
        &self,
        spec: server::TaskSpec,
        key: String,
        parents: Vec<String>,
        dirs: &JobDirs,
    ) -> Result<JobOutcome> {
        let system = self.system().await?;
        let workflow_id = self.workflow(system).await?;
        let request = idds::AddWorkRequest { workflow_id, key: key.clone(), parents, task: Some(spec) };
        // Idempotent on the key: a repeated call answers the same work.
        panda_client::retry(5, true, || {
            let mut driven = system.driven.clone();
            let request = request.clone();
            async move { driven.add_work(request).await }
        })
        .await
        .map_err(|s| CwlError::Failed(format!("adding work {key} to idds workflow {workflow_id}: {}", s.message())))?;
        let task_id = self
            .follow(system, workflow_id, |workflow| {
                let work = workflow.works.iter().find(|w| w.key == key)?;
                if work.task_id != 0 {
                    return Some(Ok(work.task_id));
                }
                work_ended(work.status).then(|| {
                    let state = idds::WorkStatus::try_from(work.status)
                        .map_or("unknown", |s| s.as_str_name())
                        .trim_start_matches("WORK_STATUS_")
                        .to_lowercase();
                    Err(CwlError::Failed(format!(
                        "work {key} of idds workflow {workflow_id} ended {state} without running: {}",
                        work.reason
                    )))
                })
            })
            .await??;
        if let Ok(mut live) = self.live.lock() {
            live.insert(task_id);
        }
        let server = &system.server;
        // Cancelled while the work was being added: its task is killed at once (a cancel
        // either sees the task live or is seen here).
        if self.cancelled.load(Ordering::SeqCst) {
            Self::kill(server, &[task_id]).await;
        }
        let result = self.wait(server, task_id).await;
        if result.is_err() {
            // Whatever went wrong here, the job must not outlive the run.
            Self::kill(server, &[task_id]).await;
        }
        if let Ok(mut live) = self.live.lock() {
            live.remove(&task_id);
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                // Killed because the workflow was aborted: say so.
                let aborted = system
                    .workflows
                    .clone()
                    .get_workflow(idds::GetWorkflowRequest { workflow_id })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().workflow)
                    .is_some_and(|w| w.status == idds::WorkflowStatus::Cancelled as i32);
                if aborted {
                    return Err(CwlError::Failed(format!(
                        "idds workflow {workflow_id} was aborted (work {key}, task {task_id}): {error}"
                    )));
                }
                return Err(error);
            }
        };
        // A success code other than 0 made the job exit 0; the tool's code is in the file.
        let file = dirs.outdir.parent().unwrap_or(&dirs.outdir).join(EXIT_CODE_FILE);
        if outcome.exit_code == 0
            && let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(code) = text.trim().parse::<i32>()
        {
            return Ok(JobOutcome { exit_code: code, timed_out: false });
        }
        Ok(outcome)
    }

    async fn wait(&self, server: &ServerClient, task_id: u64) -> Result<JobOutcome> {
        let fail = |what: &str, s: tonic::Status| CwlError::Failed(format!("task {task_id}: {what}: {}", s.message()));
        let mut stream = server
            .tasks
            .clone()
            .watch_task(server::WatchTaskRequest { task_id })
            .await
            .map_err(|s| fail("watching", s))?
            .into_inner();
        let mut warned = false;
        while let Some(update) = stream.message().await.map_err(|s| fail("watching", s))? {
            let Some(task) = update.task else { continue };
            if task.status == common::TaskStatus::Pending as i32 {
                if self.fail_when_pending {
                    return Err(CwlError::Failed(format!("task {task_id}: no queue can run it: {}", task.error_diag)));
                }
                if !warned {
                    eprintln!("cwl-runner: task {task_id} is pending: {}", task.error_diag);
                    warned = true;
                }
            }
        }
        let jobs = panda_client::retry(5, true, || {
            let mut jobs = server.jobs.clone();
            async move { jobs.list_jobs(server::ListJobsRequest { task_id, ..Default::default() }).await }
        })
        .await
        .map_err(|s| fail("listing its job", s))?
        .into_inner()
        .jobs;
        // The current attempt: the last one of the (only) index.
        let Some(job) = jobs.iter().max_by_key(|j| j.job_id) else {
            return Err(CwlError::Failed(format!("task {task_id} ended without a job")));
        };
        outcome(task_id, job)
    }
}

/// What a job's record says about the tool's run.
fn outcome(task_id: u64, job: &server::Job) -> Result<JobOutcome> {
    if job.error_code == WALLTIME_EXCEEDED {
        return Ok(JobOutcome { exit_code: -1, timed_out: true });
    }
    match job.exit_code {
        // The tool ran: its exit code decides (successCodes, permanentFailCodes...).
        Some(code) if job.error_code == 0 || job.error_code == PAYLOAD_FAILED || job.error_source == "payload" => {
            Ok(JobOutcome { exit_code: code, timed_out: false })
        }
        _ if job.status == common::JobStatus::Finished as i32 => Ok(JobOutcome { exit_code: 0, timed_out: false }),
        _ => Err(CwlError::Failed(format!(
            "task {task_id}, job {}: the system could not run the tool ({} error {}: {})",
            job.job_id,
            if job.error_source.is_empty() { "unknown" } else { &job.error_source },
            job.error_code,
            job.error_diag
        ))),
    }
}

/// Whether an idds work status is final.
fn work_ended(status: i32) -> bool {
    use idds::WorkStatus as W;
    [W::Finished, W::Subfinished, W::Failed, W::Skipped, W::Bypassed, W::Cancelled].iter().any(|s| *s as i32 == status)
}

/// A workflow name from the document: `cwl.<file stem>[.<id>]`, `[A-Za-z0-9._-]`, at most 100.
pub fn workflow_name(document: &str) -> String {
    let (path, fragment) = document.split_once('#').unwrap_or((document, ""));
    let stem = std::path::Path::new(path).file_stem().and_then(|s| s.to_str()).unwrap_or("run");
    let base = if fragment.is_empty() { stem.to_owned() } else { format!("{stem}.{fragment}") };
    let clean: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let clean = clean.trim_matches('_');
    let clean: String = clean.chars().take(96).collect();
    format!("cwl.{}", if clean.is_empty() { "run" } else { &clean })
}

/// A task name from the tool's id: `[A-Za-z0-9._-]`, at most 200 characters.
fn task_name(tool: &str, n: u64) -> String {
    let base = tool.rsplit('/').next().unwrap_or(tool);
    let clean: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let clean = clean.trim_matches('_');
    let clean: String = clean.chars().take(160).collect();
    format!("cwl.{}.{n}", if clean.is_empty() { "tool" } else { &clean })
}

impl Executor for PilotExecutor {
    fn allocate(&self) -> Result<JobDirs> {
        self.dirs.allocate()
    }

    fn run(&self, dirs: &JobDirs, job: &JobSpec) -> Result<JobOutcome> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(CwlError::Cancelled);
        }
        if job.command.is_empty() {
            return Err(CwlError::Failed(format!("{}: empty command line", job.name)));
        }
        for s in &job.stage {
            stage_one(&dirs.outdir, s)?;
        }
        prepare_redirections(dirs, job)?;
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let spec = self.spec(n, dirs, job)?;
        let key = if job.key.is_empty() { format!("tool.{n}") } else { job.key.clone() };
        self.runtime.block_on(self.add_and_wait(spec, key, job.parents.clone(), dirs))
    }

    /// Kills the run's live tasks (their `run` calls then return) and starts no new work.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let Some(system) = self.system.get() else { return };
        let live: Vec<u64> = self.live.lock().map(|l| l.iter().copied().collect()).unwrap_or_default();
        if !live.is_empty() && !self.quiet() {
            eprintln!("cwl-runner: an invocation failed; killing task(s) {live:?}");
        }
        self.runtime.block_on(Self::kill(&system.server, &live));
    }

    /// Jobs run on the system's pilots, not on this host's cores.
    fn default_parallel(&self) -> usize {
        DEFAULT_PARALLEL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: common::JobStatus, exit: Option<i32>, source: &str, code: u32) -> server::Job {
        server::Job {
            job_id: 7,
            status: status as i32,
            exit_code: exit,
            error_source: source.to_owned(),
            error_code: code,
            error_diag: "diag".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes_come_from_the_payload_and_system_failures_are_errors() {
        let ok = outcome(1, &job(common::JobStatus::Finished, Some(0), "", 0)).unwrap();
        assert_eq!((ok.exit_code, ok.timed_out), (0, false));
        let failed = outcome(1, &job(common::JobStatus::Failed, Some(3), "pilot", PAYLOAD_FAILED)).unwrap();
        assert_eq!(failed.exit_code, 3);
        let killed = outcome(1, &job(common::JobStatus::Cancelled, Some(137), "pilot", 1144)).unwrap_err();
        assert!(killed.to_string().contains("pilot error 1144"), "{killed}");
        let timeout = outcome(1, &job(common::JobStatus::Failed, None, "pilot", WALLTIME_EXCEEDED)).unwrap();
        assert!(timeout.timed_out);
        let lost = outcome(1, &job(common::JobStatus::Failed, None, "server", 100)).unwrap_err().to_string();
        assert!(lost.contains("server error 100: diag"), "{lost}");
    }

    #[test]
    fn task_names_are_valid() {
        assert_eq!(task_name("/x/y/tool.cwl#main", 3), "cwl.tool.cwl_main.3");
        assert_eq!(task_name("##", 0), "cwl.tool.0");
        assert!(task_name(&"a".repeat(500), 1).len() <= 200);
    }

    #[test]
    fn workflow_names_are_valid_and_come_from_the_document() {
        assert_eq!(workflow_name("/x/y/scatter-wf1.cwl"), "cwl.scatter-wf1");
        assert_eq!(workflow_name("/x/pack.cwl#main"), "cwl.pack.main");
        assert_eq!(workflow_name("a b?.cwl"), "cwl.a_b");
        assert_eq!(workflow_name(""), "cwl.run");
        assert!(workflow_name(&"z".repeat(300)).len() <= 100);
    }
}
