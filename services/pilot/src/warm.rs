//! Warm runtimes: several small jobs of one work run in ONE long-lived process instead of one
//! process each (the Python SDK's `python -m pandars.runtime --serve`, named by the job's
//! `PANDA_WARM_RUNTIME` variable, which only the server's FunctionService sets).
//!
//! The pilot takes the first job as usual, then asks for more jobs of the same task
//! (`GetJob` with `task_id`, `warm_batch` at a time) and hands each to the runtime as one line on
//! its stdin. The runtime reads its calls in batches (`GetCalls`), runs them one after the other,
//! stores their results in batches (`PutResults`: durable and published before anything else)
//! and answers on its stdout:
//!
//! ```text
//! pilot → runtime   {"task": 7, "job": 42, "index": 3}
//! runtime → pilot   {"event": "start", "job": 42}
//! runtime → pilot   {"event": "done", "results": [{"job": 42, "ok": true, "error": "", "stdout": "", "stderr": "", "seconds": 0.01}]}
//! ```
//!
//! A `done` line comes only after its results were stored; the pilot then reports those jobs
//! finished or failed in one `UpdateJobs` call. Per-job semantics hold:
//! - a function that raises fails its own job only (the runtime stores a failure result and
//!   goes on);
//! - a kill (a heartbeat reply) of a job still waiting in the pilot fails it alone; a kill of a
//!   job handed to the runtime, a job past its wall time and a runtime that dies end the
//!   runtime: the job it was running (the last `start` without `done`) fails with the reason,
//!   the other handed jobs go back to the pilot's queue for a fresh runtime (they may run again;
//!   a stored success is kept, the first one wins). When no job had started, the handed jobs
//!   fail with the runtime's exit and stderr tail (a runtime that cannot start);
//! - every held job gets a `running` heartbeat each heartbeat interval (one `UpdateJobs`).
//!
//! The runtime outlives the task: the next job with the same command, code archive and
//! environment (the next work of a workflow) reuses it, which is what makes an iteration of an
//! HPO loop cost milliseconds. A job with another key replaces it. Not done per job: memory
//! limits (the runtime's memory is not watched) and log shipping (each job's captured stdout and
//! stderr tails go with its final report).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use panda_proto::common::v1::Resources;
use panda_proto::server::v1::GetJobRequest;
use panda_types::{JobId, JobStatus};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use crate::container::{self, Resolved};
use crate::error::Result;
use crate::error_codes;
use crate::job::{Context, Job};
use crate::payload;
use crate::server::{Delivery, Lease, Update};

/// The job variable naming the warm runtime's command.
pub(crate) const WARM_ENV: &str = "PANDA_WARM_RUNTIME";
/// The runtime's stderr, in its directory.
const RUNTIME_STDERR: &str = "runtime.stderr";

/// What lets jobs share one runtime: the same command, code, environment and container image
/// (jobs with different images never share a runtime; a runtime for an image runs inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    command: String,
    code_sha256: Option<String>,
    environment: BTreeMap<String, String>,
    container_image: Option<String>,
}

/// The runtime key of a job that may run in a warm runtime: it names one and has no input or
/// output files (those need a job directory of their own).
pub(crate) fn key_of(job: &Job) -> Option<Key> {
    let command = job.environment.get(WARM_ENV)?.trim();
    if command.is_empty() || !job.inputs.is_empty() || !job.outputs.is_empty() || job.job_index == 0 {
        return None;
    }
    let environment =
        job.environment.iter().filter(|(k, _)| !k.starts_with("PANDA_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    Some(Key {
        command: command.to_owned(),
        code_sha256: job.code_sha256.clone(),
        environment,
        container_image: job.container_image.clone(),
    })
}

/// One line to the runtime: a job to run.
#[derive(Debug, Serialize)]
struct CallLine {
    task: u64,
    job: u64,
    index: u32,
}

/// One line from the runtime.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Event {
    /// It starts running the job's call.
    Start { job: u64 },
    /// These jobs' results are stored.
    Done { results: Vec<DoneItem> },
}

#[derive(Debug, Deserialize)]
struct DoneItem {
    job: u64,
    ok: bool,
    #[serde(default)]
    error: String,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    seconds: f64,
}

/// A running warm runtime. Dropping it SIGKILLs its process group.
pub(crate) struct Runtime {
    key: Key,
    child: Child,
    group: Pid,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    dir: PathBuf,
    exited: bool,
    /// The runtime and container name when it runs in the key's image.
    container: Option<(Resolved, String)>,
}

/// Why a runtime could not start: the pilot error code and diagnostic its jobs fail with.
#[derive(Debug)]
struct StartError {
    code: u32,
    diag: String,
}

impl From<String> for StartError {
    fn from(diag: String) -> Self {
        Self { code: error_codes::SETUP_FAILURE, diag }
    }
}

impl From<&str> for StartError {
    fn from(diag: &str) -> Self {
        diag.to_owned().into()
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("command", &self.key.command).field("group", &self.group).finish()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.exited {
            payload::signal_group(self.group, Signal::SIGKILL);
        }
    }
}

impl Runtime {
    /// Starts `key`'s command in a fresh directory holding the code archive (inside the key's
    /// container image, when it has one).
    async fn start(key: &Key, cx: &Context<'_>, task_id: u64) -> std::result::Result<Self, StartError> {
        let dir = runtime_dir(cx.work_dir, task_id);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir).await.map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if let Some(sha256) = &key.code_sha256 {
            crate::code::install(cx.server.cache(), cx.work_dir, sha256, &dir).await.map_err(|e| e.diag)?;
        }
        let stderr = std::fs::File::create(dir.join(RUNTIME_STDERR))
            .map_err(|e| format!("cannot create {}: {e}", dir.join(RUNTIME_STDERR).display()))?;
        let mut environment: Vec<(String, String)> =
            key.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        environment.push((WARM_ENV.to_owned(), key.command.clone()));
        environment.push(("PANDA_SERVER_URL".to_owned(), cx.config.server_url.clone()));
        environment.push(("PANDA_WORK_DIR".to_owned(), dir.display().to_string()));
        if let Some(sha256) = &key.code_sha256 {
            environment.push((panda_types::spec::CODE_SHA256_ENV.to_owned(), sha256.clone()));
        }
        let shell_line = format!("exec {}", key.command);
        let mut container = None;
        let mut command = match &key.container_image {
            None => {
                let mut command = Command::new("/bin/sh");
                command.arg("-c").arg(&shell_line).envs(environment.iter().map(|(k, v)| (k, v)));
                command
            }
            Some(image) => {
                environment.push((panda_types::spec::CONTAINER_IMAGE_ENV.to_owned(), image.clone()));
                let name = format!("panda-warm-{}-{task_id}", std::process::id());
                let launch = container::Launch {
                    image,
                    dir: &dir,
                    environment: &environment,
                    command: &shell_line,
                    name: &name,
                    interactive: true,
                    user: container::owner_of(&dir),
                };
                let (resolved, invocation) = crate::job::container_invocation(&cx.config.container, &launch)
                    .map_err(|(code, diag)| StartError { code, diag })?;
                let (program, args) =
                    invocation.argv.split_first().ok_or_else(|| "empty container command line".to_owned())?;
                let mut command = Command::new(program);
                command.args(args).envs(invocation.runtime_env.iter().map(|(k, v)| (k, v)));
                tracing::info!(runtime = %resolved.runtime, image = %image, "warm runtime runs in a container");
                container = Some((resolved, name));
                command
            }
        };
        command.current_dir(&dir).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr).process_group(0);
        let mut child = command.spawn().map_err(|e| format!("cannot start the warm runtime {:?}: {e}", key.command))?;
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).ok_or("the warm runtime exited at once")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the warm runtime's pipes are missing".into());
        };
        tracing::info!(command = %key.command, group = pid, dir = %dir.display(), "warm runtime started");
        Ok(Self {
            key: key.clone(),
            child,
            group: Pid::from_raw(pid),
            stdin,
            lines: BufReader::new(stdout).lines(),
            dir,
            exited: false,
            container,
        })
    }

    /// Removes its Podman/Docker container (not in its process group), if any.
    async fn remove_container(&self) {
        if let Some((resolved, name)) = &self.container {
            container::remove(resolved, name).await;
        }
    }

    /// When the runtime failed to run its image: the diagnostic naming runtime and image.
    fn image_failure(&self, exit_code: Option<i32>, stderr: &str) -> Option<String> {
        let (resolved, _) = self.container.as_ref()?;
        let image = self.key.container_image.as_deref()?;
        container::runtime_failure(resolved.runtime, image, exit_code?, stderr)
    }

    async fn send(&mut self, job: &Job) -> std::io::Result<()> {
        let line = CallLine { task: job.task_id.0, job: job.lease.job_id.0, index: job.job_index };
        let mut text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
        text.push('\n');
        self.stdin.write_all(text.as_bytes()).await?;
        self.stdin.flush().await
    }

    /// Ends the runtime: SIGTERM to its group, `grace` to exit, then SIGKILL.
    async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        payload::signal_group(self.group, Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        };
        self.kill_rest(status).await
    }

    /// Waits for a runtime whose stdout closed, and kills what it left in its group.
    async fn reap(&mut self, grace: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(grace, self.child.wait()).await.ok().and_then(std::result::Result::ok);
        self.kill_rest(status).await
    }

    /// After the grace: SIGKILL to the group, the exit status (`status`, or waited for now), and
    /// the container removed.
    async fn kill_rest(&mut self, status: Option<ExitStatus>) -> Option<ExitStatus> {
        payload::signal_group(self.group, Signal::SIGKILL);
        let status = match status {
            Some(status) => Some(status),
            None => self.child.wait().await.ok(),
        };
        self.exited = true;
        self.remove_container().await;
        status
    }

    async fn stderr_tail(&self) -> String {
        payload::tail(&self.dir, RUNTIME_STDERR).await
    }

    /// Stops the runtime and removes its directory (the pilot is done with it).
    pub(crate) async fn close(mut self, grace: Duration) {
        // EOF on stdin: the runtime finishes and exits by itself.
        let _ = self.stdin.shutdown().await;
        let _ = self.reap(grace).await;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

/// What a warm task run did, for the pilot's summary.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub run: u32,
    pub finished: u32,
    pub failed: u32,
}

/// Why a runtime ended while it held jobs.
enum Death {
    /// It exited (or closed its stdout) by itself.
    Exited,
    /// The server asked to kill this job.
    Killed(JobId),
    /// The job ran past its wall time.
    Walltime(JobId, u64),
    /// The pilot is stopping.
    Shutdown,
}

/// A job handed to the runtime.
struct Handed {
    job: Job,
    started: Option<Instant>,
}

/// Runs `first` and every further job of its task the server has for this pilot in the warm
/// runtime in `slot` (started, or replaced when its key differs). Returns when the task has no
/// more jobs for this pilot; the runtime stays in `slot` for the next work.
///
/// # Errors
/// [`crate::Error::ServerUnreachable`] and GetJob refusals, as for ordinary jobs.
pub(crate) async fn run_task(first: Job, key: Key, slot: &mut Option<Runtime>, cx: &mut Context<'_>) -> Result<Tally> {
    let task_id = first.task_id;
    let batch = cx.config.warm_batch.clamp(1, 100) as usize;
    let heartbeat = cx.config.heartbeat_interval_for(first.heartbeat_interval_seconds);
    let mut tally = Tally { run: 1, ..Tally::default() };
    let mut pending: VecDeque<Job> = VecDeque::from([first]);
    let mut handed: VecDeque<Handed> = VecDeque::new();
    let mut more = true;
    let mut next_heartbeat = Instant::now() + heartbeat;
    loop {
        if cx.shutdown.is_cancelled() {
            if let Some(mut runtime) = slot.take() {
                runtime.terminate(cx.config.kill_grace).await;
            }
            let held: Vec<Job> = handed.drain(..).map(|h| h.job).chain(pending.drain(..)).collect();
            let update = Update::failed(error_codes::SIGTERM, "pilot was told to stop while it held the job");
            report_failures(cx, &mut tally, held.into_iter().map(|job| (job, update.clone())).collect()).await?;
            return Ok(tally);
        }
        // More jobs of the task while the runtime has little left.
        if more && pending.is_empty() && handed.len() <= batch / 2 {
            let request = GetJobRequest {
                queue: cx.config.queue.clone(),
                node: cx.server.node().to_owned(),
                resources: Some(Resources {
                    cores: cx.config.cores,
                    memory_mb: cx.config.memory_mb,
                    disk_mb: 0,
                    walltime_seconds: 0,
                }),
                worker_id: cx.config.worker_id.clone(),
                n_jobs: u32::try_from(batch).unwrap_or(1),
                task_id: task_id.0,
                wait_ms: 0,
            };
            if let Some(answer) = cx.server.get_jobs(request, cx.shutdown).await? {
                more = !answer.jobs.is_empty();
                tally.run += u32::try_from(answer.jobs.len()).unwrap_or(0);
                pending.extend(answer.jobs.into_iter().map(Job::from));
            }
            continue;
        }
        if pending.is_empty() && handed.is_empty() {
            return Ok(tally);
        }
        // A runtime for this key.
        if slot.as_ref().is_some_and(|runtime| runtime.key != key)
            && let Some(old) = slot.take()
        {
            old.close(cx.config.kill_grace).await;
        }
        if slot.is_none() {
            match Runtime::start(&key, cx, task_id.0).await {
                Ok(runtime) => *slot = Some(runtime),
                Err(StartError { code, diag }) => {
                    tracing::warn!(%diag, "cannot start the warm runtime");
                    let update = Update::failed(code, diag);
                    let held: Vec<Job> = handed.drain(..).map(|h| h.job).chain(pending.drain(..)).collect();
                    report_failures(cx, &mut tally, held.into_iter().map(|job| (job, update.clone())).collect())
                        .await?;
                    more = false;
                    continue;
                }
            }
        }
        let Some(runtime) = slot.as_mut() else { continue };
        // Hand jobs over, up to a batch in the runtime.
        let mut broken = false;
        while handed.len() < batch {
            let Some(job) = pending.pop_front() else { break };
            if runtime.send(&job).await.is_err() {
                // The runtime is gone: the job counts as handed, so that a runtime that cannot
                // start (its image cannot be pulled, its command is missing) fails the jobs it
                // was given with its exit and stderr instead of being started again and again.
                handed.push_back(Handed { job, started: None });
                broken = true;
                break;
            }
            handed.push_back(Handed { job, started: None });
        }
        let running =
            handed.iter().rev().find_map(|h| h.started.map(|at| (h.job.lease.job_id, at, h.job.walltime_seconds)));
        let walltime_at = running
            .filter(|(_, _, limit)| *limit > 0)
            .map(|(job_id, at, limit)| (job_id, limit, at + Duration::from_secs(limit)));
        let death = if broken {
            Some(Death::Exited)
        } else {
            tokio::select! {
                line = runtime.lines.next_line() => match line {
                    Ok(Some(text)) => {
                        on_line(cx, &mut tally, &mut handed, &text).await?;
                        None
                    }
                    Ok(None) | Err(_) => Some(Death::Exited),
                },
                () = sleep_until_some(walltime_at.map(|(_, _, at)| at)) => {
                    walltime_at.map(|(job_id, limit, _)| Death::Walltime(job_id, limit))
                }
                () = tokio::time::sleep_until(next_heartbeat) => {
                    next_heartbeat = Instant::now() + heartbeat;
                    heartbeat_all(cx, &mut tally, &mut pending, &mut handed).await?
                }
                () = cx.shutdown.cancelled() => Some(Death::Shutdown),
            }
        };
        if let Some(death) = death {
            let Some(mut runtime) = slot.take() else { continue };
            bury(cx, &mut tally, &mut runtime, death, &mut pending, &mut handed).await?;
            let _ = tokio::fs::remove_dir_all(&runtime.dir).await;
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Handles one line of the runtime.
async fn on_line(cx: &mut Context<'_>, tally: &mut Tally, handed: &mut VecDeque<Handed>, text: &str) -> Result<()> {
    let event = match serde_json::from_str::<Event>(text) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(line = %text.chars().take(200).collect::<String>(), %error, "warm runtime wrote a line that is not an event; ignored");
            return Ok(());
        }
    };
    match event {
        Event::Start { job } => {
            if let Some(h) = handed.iter_mut().find(|h| h.job.lease.job_id.0 == job) {
                h.started = Some(Instant::now());
            }
        }
        Event::Done { results } => {
            let mut finals = Vec::with_capacity(results.len());
            for item in results {
                let Some(at) = handed.iter().position(|h| h.job.lease.job_id.0 == item.job) else { continue };
                let Some(Handed { job, .. }) = handed.remove(at) else { continue };
                let tails = |update: Update| Update {
                    stdout_tail: item.stdout.clone(),
                    stderr_tail: item.stderr.clone(),
                    wall_time_seconds: item.seconds,
                    ..update
                };
                let update = if item.ok {
                    tails(Update { exit_code: Some(0), ..Update::status(JobStatus::Finished) })
                } else {
                    let diag =
                        if item.error.is_empty() { "the function failed".to_owned() } else { item.error.clone() };
                    tails(Update { exit_code: Some(1), ..Update::failed(error_codes::PAYLOAD_FAILED, diag) })
                };
                finals.push((job, update));
            }
            report_finals(cx, tally, finals).await?;
        }
    }
    Ok(())
}

/// The heartbeat of every held job; a kill of a job waiting in the pilot fails it alone, a kill
/// of a handed job ends the runtime.
async fn heartbeat_all(
    cx: &mut Context<'_>,
    tally: &mut Tally,
    pending: &mut VecDeque<Job>,
    handed: &mut VecDeque<Handed>,
) -> Result<Option<Death>> {
    let leases: Vec<(Lease, Update)> = handed
        .iter()
        .map(|h| &h.job)
        .chain(pending.iter())
        .map(|job| (job.lease.clone(), Update::status(JobStatus::Running)))
        .collect();
    let deliveries = cx.server.deliver_many(&leases, cx.shutdown).await?;
    let mut death = None;
    let mut killed_waiting = Vec::new();
    for ((lease, _), delivery) in leases.iter().zip(deliveries) {
        match delivery {
            Delivery::Accepted { kill: true } => {
                if let Some(at) = pending.iter().position(|job| job.lease == *lease) {
                    if let Some(job) = pending.remove(at) {
                        killed_waiting.push(job);
                    }
                } else if death.is_none() {
                    death = Some(Death::Killed(lease.job_id));
                }
            }
            Delivery::LeaseLost(status) => {
                tracing::warn!(job_id = %lease.job_id, message = status.message(), "lease lost; dropping the job");
                pending.retain(|job| job.lease != *lease);
                // A handed job's answer is refused later; nothing else to do.
            }
            Delivery::Accepted { kill: false } | Delivery::Rejected(_) | Delivery::Abandoned(_) => {}
        }
    }
    let update = Update::failed(error_codes::PANDA_KILL, "killed on server instruction before its call started");
    report_failures(cx, tally, killed_waiting.into_iter().map(|job| (job, update.clone())).collect()).await?;
    Ok(death)
}

/// Ends a runtime that died or must die: the job it was running fails with the reason, the other
/// handed jobs go back to `pending` (or fail, when none had started).
async fn bury(
    cx: &mut Context<'_>,
    tally: &mut Tally,
    runtime: &mut Runtime,
    death: Death,
    pending: &mut VecDeque<Job>,
    handed: &mut VecDeque<Handed>,
) -> Result<()> {
    let status = match death {
        Death::Exited => runtime.reap(cx.config.kill_grace).await,
        Death::Killed(_) | Death::Walltime(..) | Death::Shutdown => runtime.terminate(cx.config.kill_grace).await,
    };
    if matches!(death, Death::Shutdown) {
        // The loop fails every held job on its next turn.
        for h in handed.drain(..).rev() {
            pending.push_front(h.job);
        }
        return Ok(());
    }
    let exit = status.map(payload::exit_code);
    let described =
        status.map_or_else(|| "ended".to_owned(), payload::describe_exit).replace("payload", "warm runtime");
    let stderr = runtime.stderr_tail().await;
    let culprit = match death {
        Death::Killed(job_id) | Death::Walltime(job_id, _) => Some(job_id),
        Death::Exited | Death::Shutdown => {
            handed.iter().rev().find(|h| h.started.is_some()).map(|h| h.job.lease.job_id)
        }
    };
    tracing::warn!(?exit, culprit = ?culprit.map(|id| id.0), handed = handed.len(), "warm runtime ended while it held jobs");
    let mut failures = Vec::new();
    let any_started = handed.iter().any(|h| h.started.is_some());
    let culprit_update = match death {
        Death::Killed(_) => Update::failed(error_codes::PANDA_KILL, "killed on server instruction"),
        Death::Walltime(_, limit) => Update::failed(
            error_codes::REACHED_MAX_TIME,
            format!("the call ran past the job's wall-time limit of {limit}s; its warm runtime was killed"),
        ),
        Death::Exited | Death::Shutdown => {
            Update::failed(error_codes::PAYLOAD_FAILED, format!("{described} while running the job's call"))
        }
    };
    // A runtime that could not run its image fails its jobs with that reason.
    let image_failure = runtime.image_failure(exit, &stderr);
    let culprit_update = match (&image_failure, &death) {
        (Some(diag), Death::Exited) => Update::failed(error_codes::IMAGE_NOT_FOUND, diag.clone()),
        _ => culprit_update,
    };
    let with_tail = |update: Update| Update { exit_code: exit, stderr_tail: stderr.clone(), ..update };
    let mut back = Vec::new();
    for h in handed.drain(..) {
        if Some(h.job.lease.job_id) == culprit {
            failures.push((h.job, with_tail(culprit_update.clone())));
        } else if any_started || culprit.is_some() {
            back.push(h.job);
        } else {
            let update = match &image_failure {
                Some(diag) => Update::failed(error_codes::IMAGE_NOT_FOUND, diag.clone()),
                None => {
                    Update::failed(error_codes::PAYLOAD_FAILED, format!("{described} before running the job's call"))
                }
            };
            failures.push((h.job, with_tail(update)));
        }
    }
    for job in back.into_iter().rev() {
        pending.push_front(job);
    }
    report_failures(cx, tally, failures).await
}

/// Final reports of failed jobs: `running` first (a job still `sent` cannot fail directly), then
/// `failed`, in one call.
async fn report_failures(cx: &mut Context<'_>, tally: &mut Tally, failures: Vec<(Job, Update)>) -> Result<()> {
    report_finals(cx, tally, failures).await
}

/// Sends final reports in one `UpdateJobs` call and counts them.
async fn report_finals(cx: &mut Context<'_>, tally: &mut Tally, finals: Vec<(Job, Update)>) -> Result<()> {
    if finals.is_empty() {
        return Ok(());
    }
    let mut reports = Vec::with_capacity(finals.len() * 2);
    let mut intended = Vec::with_capacity(finals.len());
    for (job, update) in finals {
        let finished = update.status == JobStatus::Finished;
        if !finished {
            reports.push((job.lease.clone(), Update::status(JobStatus::Running)));
        }
        intended.push((reports.len(), job.lease.job_id, finished));
        reports.push((job.lease, update));
    }
    let deliveries = cx.server.deliver_many(&reports, cx.shutdown).await?;
    for (at, job_id, finished) in intended {
        match deliveries.get(at) {
            Some(Delivery::Accepted { .. } | Delivery::Rejected(_) | Delivery::Abandoned(_)) => {
                if let Some(Delivery::Rejected(status)) = deliveries.get(at) {
                    tracing::error!(job_id = %job_id, code = ?status.code(), message = status.message(), "server refused the final report");
                }
                if finished {
                    tally.finished += 1;
                } else {
                    tally.failed += 1;
                }
            }
            Some(Delivery::LeaseLost(status)) => {
                tracing::warn!(job_id = %job_id, message = status.message(), "lease lost before the final report; dropping the job");
            }
            None => {}
        }
    }
    Ok(())
}

/// Where a warm runtime runs: its own directory under the pilot's work directory.
fn runtime_dir(work_dir: &Path, task_id: u64) -> PathBuf {
    work_dir.join(format!("warm-runtime-{}-{task_id}", std::process::id()))
}

#[cfg(test)]
mod tests;
