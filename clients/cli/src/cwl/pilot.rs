//! The pilot executor: each CommandLineTool invocation becomes a task with one job, run by a
//! pilot of the system (embedded or `--server URL`). The CWL engine still builds the command line
//! and prepares the work dir on this host (staging, InitialWorkDir); the job's command changes to
//! that directory and runs the tool there, so the pilot must share this file system (the embedded
//! pilots run on this host). The executor submits, follows the task with `WatchTask` (a stream,
//! no polling), reads the job's exit code, and kills the task if anything goes wrong on this
//! side, so no job outlives the run.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::OnceCell;

use panda_all::{AllConfig, Cluster};
use panda_client::ServerClient;
use panda_cwl::exec::{
    Executor, JobDirs, JobOutcome, JobSpec, LocalExecutor, prepare_redirections, shell_line, stage_one,
};
use panda_cwl::{CwlError, Result};
use panda_proto::common::v1 as common;
use panda_proto::server::v1 as server;

/// The pilot's code for a payload killed at its wall-time limit (REACHEDMAXTIME).
const WALLTIME_EXCEEDED: u32 = 1213;
/// The pilot's code for a payload that exited non-zero (its exit code is the tool's).
const PAYLOAD_FAILED: u32 = 1305;
/// The longest command a task may carry; longer lines go to a script in the job's directory.
const MAX_INLINE_COMMAND: usize = 60 * 1024;

/// Where the jobs go.
pub enum Target {
    /// A running deployment's server.
    Server(String),
    /// An embedded system, started when the first tool runs (a document that fails to load or
    /// runs only expressions starts nothing) and stopped by [`PilotExecutor::shutdown`].
    Embedded {
        /// Its configuration.
        config: Box<AllConfig>,
        /// The pilot program and its leading arguments.
        pilot_program: Vec<String>,
    },
}

/// Runs jobs through a PanDA server.
pub struct PilotExecutor {
    target: Mutex<Option<Target>>,
    server: OnceCell<ServerClient>,
    cluster: Mutex<Option<Cluster>>,
    runtime: tokio::runtime::Handle,
    /// Allocates work dirs exactly as the local executor does (same host or shared file system).
    dirs: LocalExecutor,
    user: String,
    /// A task that goes `pending` (no queue can take it) fails at once when true (embedded);
    /// with a deployment it may wait for a queue to come back.
    fail_when_pending: bool,
    live: Mutex<BTreeSet<u64>>,
    counter: AtomicU64,
    run_id: String,
}

impl PilotExecutor {
    /// An executor submitting to `target`, with work dirs under `root`.
    pub fn new(target: Target, runtime: tokio::runtime::Handle, root: &std::path::Path, user: String) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Self {
            fail_when_pending: matches!(target, Target::Embedded { .. }),
            target: Mutex::new(Some(target)),
            server: OnceCell::new(),
            cluster: Mutex::new(None),
            runtime,
            dirs: LocalExecutor::new(root),
            user,
            live: Mutex::new(BTreeSet::new()),
            counter: AtomicU64::new(0),
            run_id: format!("{}-{nanos}", std::process::id()),
        }
    }

    /// The server, starting the embedded system on first use.
    async fn server(&self) -> Result<&ServerClient> {
        self.server
            .get_or_try_init(|| async {
                let target = self.target.lock().ok().and_then(|mut t| t.take());
                let url = match target {
                    Some(Target::Server(url)) => url,
                    Some(Target::Embedded { config, pilot_program }) => {
                        let cluster = Cluster::start(*config, pilot_program)
                            .await
                            .map_err(|e| CwlError::Failed(format!("starting the embedded system: {e:#}")))?;
                        let url = cluster.server_url.clone();
                        if let Ok(mut slot) = self.cluster.lock() {
                            *slot = Some(cluster);
                        }
                        url
                    }
                    None => return Err(CwlError::Failed("the system could not be reached before".into())),
                };
                ServerClient::new(&url).map_err(|e| CwlError::Failed(format!("server {url}: {e}")))
            })
            .await
    }

    /// Kills the tasks still running (Ctrl-C), then stops the embedded system if one started.
    pub async fn shutdown(&self, kill_live: bool) {
        if kill_live && let Some(server) = self.server.get() {
            let live: Vec<u64> = self.live.lock().map(|l| l.iter().copied().collect()).unwrap_or_default();
            if !live.is_empty() {
                eprintln!("cwl-runner: interrupted; killing task(s) {live:?}");
            }
            Self::kill(server, &live).await;
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

    async fn submit_and_wait(&self, spec: server::TaskSpec, key: String) -> Result<JobOutcome> {
        let fail = |what: &str, s: tonic::Status| CwlError::Failed(format!("{what}: {}", s.message()));
        let server = self.server().await?;
        // The idempotency key makes a repeated submission return the first task.
        let request = server::SubmitTaskRequest { spec: Some(spec), idempotency_key: key };
        let task_id = panda_client::retry(5, true, || {
            let mut tasks = server.tasks.clone();
            let request = request.clone();
            async move { tasks.submit_task(request).await }
        })
        .await
        .map_err(|s| fail("submitting the job", s))?
        .into_inner()
        .task_id;
        if let Ok(mut live) = self.live.lock() {
            live.insert(task_id);
        }
        let result = self.wait(server, task_id).await;
        if result.is_err() {
            // Whatever went wrong here, the job must not outlive the run.
            Self::kill(server, &[task_id]).await;
        }
        if let Ok(mut live) = self.live.lock() {
            live.remove(&task_id);
        }
        result
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
        if job.command.is_empty() {
            return Err(CwlError::Failed(format!("{}: empty command line", job.name)));
        }
        for s in &job.stage {
            stage_one(&dirs.outdir, s)?;
        }
        prepare_redirections(dirs, job)?;
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let spec = self.spec(n, dirs, job)?;
        let key = format!("cwl-{}-{n}", self.run_id);
        self.runtime.block_on(self.submit_and_wait(spec, key))
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
}
