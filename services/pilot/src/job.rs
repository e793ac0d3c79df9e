//! One job from dispatch to final report: job directory, `starting`, stage-in, payload with
//! heartbeats, stage-out, and the final `finished`/`failed` update with exit code, pilot error
//! code, output tails, resource use and output files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use panda_proto::server::v1::DispatchedJob;
use panda_types::{JobId, JobStatus, TaskId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::code;
use crate::config::Config;
use crate::container::{self, Resolved};
use crate::error::{Error, Result};
use crate::error_codes;
use crate::heartbeat::{self, End, KillReason, Timing};
use crate::logship;
use crate::payload::{self, Payload};
use crate::server::{Delivery, Lease, ServerLink, Update};
use crate::stage::{self, InputFile};

/// A dispatched job, as the pilot uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub lease: Lease,
    pub task_id: TaskId,
    pub attempt_nr: u32,
    pub command: String,
    pub environment: BTreeMap<String, String>,
    pub inputs: Vec<InputFile>,
    pub outputs: Vec<String>,
    /// Requested by the server (0: unspecified).
    pub heartbeat_interval_seconds: u32,
    /// Code archive to unpack into the job directory.
    pub code_sha256: Option<String>,
    /// Wall-time limit in seconds (0: none).
    pub walltime_seconds: u64,
    /// Memory limit in MB (0: none).
    pub memory_mb: u64,
    /// Position in the task (from 1; 0 from an older server).
    pub job_index: u32,
    /// Container image the payload runs in (none: on the node as it is).
    pub container_image: Option<String>,
}

impl From<DispatchedJob> for Job {
    fn from(job: DispatchedJob) -> Self {
        Self {
            lease: Lease { job_id: JobId(job.job_id), token: job.lease_token },
            task_id: TaskId(job.task_id),
            attempt_nr: job.attempt_nr,
            command: job.command,
            environment: job.environment.into_iter().collect(),
            inputs: job
                .input_files
                .into_iter()
                .map(|file| InputFile {
                    lfn: file.lfn,
                    url: file.url,
                    size_bytes: file.size_bytes,
                    checksum: file.checksum,
                })
                .collect(),
            outputs: job.output_files,
            heartbeat_interval_seconds: job.heartbeat_interval_seconds,
            code_sha256: (!job.code_sha256.is_empty()).then_some(job.code_sha256),
            walltime_seconds: job.resources.map_or(0, |r| r.walltime_seconds),
            memory_mb: job.resources.map_or(0, |r| r.memory_mb),
            job_index: job.job_index,
            container_image: (!job.container_image.is_empty()).then_some(job.container_image),
        }
    }
}

/// How a job ended for this pilot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Reported finished.
    Finished,
    /// Reported failed.
    Failed,
    /// The lease was lost (or the server refused the job): nothing more was reported.
    Dropped,
}

/// What a job needs from the pilot.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub config: &'a Config,
    /// Absolute root of the job directories.
    pub work_dir: &'a Path,
    pub server: &'a mut ServerLink,
    /// Where outputs go (`file://` directory).
    pub storage_url: &'a str,
    pub shutdown: &'a CancellationToken,
}

/// The directory a job runs in.
pub(crate) fn job_dir(work_dir: &Path, job_id: JobId) -> PathBuf {
    work_dir.join(format!("PanDA_Pilot-{job_id}"))
}

/// The payload's environment on top of the pilot's: the job's variables, then the PANDA_*
/// variables, which win so that a job cannot lie about its own identity. `PANDA_SERVER_URL` is
/// the server this pilot talks to (the Python SDK's runtime fetches its call and stores its
/// result there).
pub(crate) fn payload_environment(job: &Job, job_dir: &Path, server_url: &str) -> Vec<(String, String)> {
    let mut environment: Vec<(String, String)> = job.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let panda = [
        ("PANDA_JOB_ID", job.lease.job_id.to_string()),
        ("PANDA_TASK_ID", job.task_id.to_string()),
        ("PANDA_ATTEMPT_NR", job.attempt_nr.to_string()),
        ("PANDA_WORK_DIR", job_dir.display().to_string()),
        ("PANDA_INPUT_FILES", job.inputs.iter().map(|file| file.lfn.as_str()).collect::<Vec<_>>().join(" ")),
        ("PANDA_OUTPUT_FILES", job.outputs.join(" ")),
        ("PANDA_SERVER_URL", server_url.to_owned()),
    ];
    environment.retain(|(key, _)| !panda.iter().any(|(name, _)| name == key));
    environment.extend(panda.into_iter().map(|(key, value)| (key.to_owned(), value)));
    environment
}

/// Runs `job` to its final report.
///
/// # Errors
/// [`Error::WorkDir`] when the job directory cannot be made (the job is reported failed first),
/// [`Error::ServerUnreachable`] when no update got through for `server_deadline` (the payload is
/// killed first). Not cancel-safe: dropping the future kills the payload without a report.
pub(crate) async fn run(job: Job, cx: &mut Context<'_>) -> Result<Outcome> {
    let span = tracing::info_span!("job", job_id = %job.lease.job_id, task_id = %job.task_id);
    run_in_span(job, cx).instrument(span).await
}

async fn run_in_span(job: Job, cx: &mut Context<'_>) -> Result<Outcome> {
    let lease = job.lease.clone();
    if cx.shutdown.is_cancelled() {
        // A job received in the same answer as the one running at shutdown: hand it back.
        let update = Update::failed(error_codes::SIGTERM, "pilot was told to stop before the job started");
        return report(cx, &lease, update).await;
    }
    tracing::info!(attempt_nr = job.attempt_nr, "job received");
    let dir = job_dir(cx.work_dir, lease.job_id);
    if let Err(source) = prepare_dir(&dir).await {
        let diag = format!("cannot create job directory {}: {source}", dir.display());
        report(cx, &lease, Update::failed(error_codes::SETUP_FAILURE, diag)).await?;
        return Err(Error::WorkDir { path: dir, source });
    }
    if let Some(outcome) = announce(cx, &lease).await? {
        return Ok(outcome);
    }

    let staged = tokio::select! {
        biased;
        () = cx.shutdown.cancelled() => None,
        staged = prepare_inputs(cx, &job, &dir) => Some(staged),
    };
    let update = match staged {
        None => Update::failed(error_codes::SIGTERM, "pilot was told to stop during stage-in"),
        Some(Err(error)) => {
            tracing::warn!(diag = %error.diag, "stage-in failed");
            Update::failed(error.code, error.diag)
        }
        Some(Ok(())) => match execute(cx, &job, &dir).await? {
            Some(update) => update,
            None => return Ok(Outcome::Dropped),
        },
    };

    let outcome = report(cx, &lease, update).await?;
    if outcome == Outcome::Finished {
        // Outputs are in storage and the tails went with the report; failed jobs keep their
        // directory for a post-mortem.
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), %error, "cannot remove the job directory");
        }
    }
    Ok(outcome)
}

/// Sends `starting`; `Some` when the job ends here.
async fn announce(cx: &mut Context<'_>, lease: &Lease) -> Result<Option<Outcome>> {
    match cx.server.deliver(lease, &Update::status(JobStatus::Starting), cx.shutdown).await? {
        Delivery::Accepted { kill: false } => Ok(None),
        Delivery::Accepted { kill: true } => {
            let update =
                Update::failed(error_codes::PANDA_KILL, "killed on server instruction before the payload started");
            report(cx, lease, update).await.map(Some)
        }
        Delivery::LeaseLost(status) | Delivery::Rejected(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "server refused the starting update; dropping the job");
            Ok(Some(Outcome::Dropped))
        }
        Delivery::Abandoned(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "pilot stopping and the server is unreachable; job left to the server's time-out");
            Ok(Some(Outcome::Failed))
        }
    }
}

/// Unpacks the code archive, then stages in the inputs (which win over archive files of the same
/// name).
async fn prepare_inputs(cx: &Context<'_>, job: &Job, dir: &Path) -> Result<(), stage::StageError> {
    if let Some(sha256) = &job.code_sha256 {
        code::install(cx.server.cache(), cx.work_dir, sha256, dir).await?;
    }
    stage::stage_in(dir, &job.inputs, &cx.config.stage_in_policy()).await
}

/// Runs the payload with heartbeats and judges how it ended; the final update, or `None` when
/// the lease was lost and nothing more may be sent.
async fn execute(cx: &mut Context<'_>, job: &Job, dir: &Path) -> Result<Option<Update>> {
    let environment = payload_environment(job, dir, &cx.config.server_url);
    let (spawned, container) = match &job.container_image {
        None => {
            let environment = environment.iter().map(|(key, value)| (key.as_str(), value.as_str()));
            (Payload::spawn(&job.command, dir, environment), None)
        }
        Some(image) => {
            let name = format!("panda-job-{}-{}", job.lease.job_id, std::process::id());
            let launch = container::Launch {
                image,
                dir,
                environment: &environment,
                command: &job.command,
                name: &name,
                interactive: false,
                user: container::owner_of(dir),
            };
            let (resolved, invocation) = match container_invocation(&cx.config.container, &launch) {
                Ok(found) => found,
                Err((code, diag)) => return Ok(Some(Update::failed(code, diag))),
            };
            tracing::info!(runtime = %resolved.runtime, program = %resolved.program.display(), image = %image, "payload runs in a container");
            let runtime_env = invocation.runtime_env.iter().map(|(key, value)| (key.as_str(), value.as_str()));
            let spawned = Payload::spawn_argv(&invocation.argv, dir, runtime_env);
            (spawned, Some(RunningContainer { resolved, name, image: image.clone() }))
        }
    };
    let mut payload = match spawned {
        Ok(payload) => payload,
        Err(error) => {
            let diag = match &container {
                Some(c) => format!("cannot start container runtime {}: {error}", c.resolved.program.display()),
                None => format!("cannot start the payload: {error}"),
            };
            return Ok(Some(Update::failed(error_codes::PAYLOAD_FAILED, diag)));
        }
    };
    tracing::info!(group = payload.group().as_raw(), "payload started");
    let timing = Timing {
        interval: cx.config.heartbeat_interval_for(job.heartbeat_interval_seconds),
        kill_grace: cx.config.kill_grace,
        walltime: (job.walltime_seconds > 0).then(|| std::time::Duration::from_secs(job.walltime_seconds)),
        memory_limit_kb: (job.memory_mb > 0).then(|| job.memory_mb.saturating_mul(1024)),
        memory_check: cx.config.memory_check_interval,
    };
    // The output goes to the server while the payload runs; what is left goes before the final
    // report (the join waits for it).
    let stop_shipping = CancellationToken::new();
    let shipping =
        logship::ship(cx.server.logs(), job.lease.clone(), dir, cx.config.log_interval, stop_shipping.clone());
    let watching = async {
        let end = heartbeat::watch(&mut payload, cx.server, &job.lease, timing, cx.shutdown).await;
        stop_shipping.cancel();
        end
    };
    let (end, ()) = tokio::join!(watching, shipping);
    let usage = payload.finish();
    // A Podman/Docker container is not in the payload's process group: after a kill, remove it.
    if let Some(c) = &container
        && !matches!(end, Ok(End::Exited(_)))
    {
        container::remove(&c.resolved, &c.name).await;
    }
    let runtime_failed = match (&container, &end) {
        (Some(c), Ok(End::Exited(status))) if !status.success() => {
            let stderr = payload::tail(dir, payload::STDERR_FILE).await;
            container::runtime_failure(c.resolved.runtime, &c.image, payload::exit_code(*status), &stderr)
                .map(|diag| (*status, diag))
        }
        _ => None,
    };
    let with_exit =
        |status, code, diag: &str| Update { exit_code: Some(payload::exit_code(status)), ..Update::failed(code, diag) };
    let mut update = if let Some((status, diag)) = runtime_failed {
        tracing::warn!(%diag, "the container runtime failed");
        with_exit(status, error_codes::IMAGE_NOT_FOUND, &diag)
    } else {
        match end? {
            End::Exited(status) if status.success() => stage_out(cx, job, dir).await,
            End::Exited(status) => with_exit(status, error_codes::PAYLOAD_FAILED, &payload::describe_exit(status)),
            End::Killed { status, reason: KillReason::Server } => {
                with_exit(status, error_codes::PANDA_KILL, "killed on server instruction")
            }
            End::Killed { status, reason: KillReason::Shutdown } => {
                with_exit(status, error_codes::SIGTERM, "pilot was told to stop (SIGTERM) while the payload ran")
            }
            End::Killed { status, reason: KillReason::Walltime { limit } } => with_exit(
                status,
                error_codes::REACHED_MAX_TIME,
                &format!("payload ran past the job's wall-time limit of {}s and was killed", limit.as_secs()),
            ),
            End::Killed { status, reason: KillReason::Memory { rss_kb, limit_kb } } => with_exit(
                status,
                error_codes::PAYLOAD_EXCEEDED_MAX_MEM,
                &format!(
                    "payload used {} MB of resident memory, over the job's limit of {} MB, and was killed",
                    rss_kb / 1024,
                    limit_kb / 1024
                ),
            ),
            End::LeaseLost => return Ok(None),
            End::Lost(error) => Update::failed(error_codes::GENERAL, format!("lost track of the payload: {error}")),
        }
    };
    update.stdout_tail = payload::tail(dir, payload::STDOUT_FILE).await;
    update.stderr_tail = payload::tail(dir, payload::STDERR_FILE).await;
    update.cpu_time_seconds = usage.cpu_seconds;
    update.wall_time_seconds = usage.wall_seconds;
    update.max_rss_kb = usage.max_rss_kb;
    Ok(Some(update))
}

/// The container a payload runs in.
struct RunningContainer {
    resolved: Resolved,
    name: String,
    image: String,
}

/// The runtime and its command line for a launch, or the pilot error code and diagnostic to
/// fail with when there is no runtime (CONTAINER_RUNTIME_NOT_INSTALLED) or it cannot take the
/// image's form (IMAGE_NOT_FOUND).
pub(crate) fn container_invocation(
    config: &container::ContainerConfig,
    launch: &container::Launch<'_>,
) -> std::result::Result<(Resolved, container::Invocation), (u32, String)> {
    let resolved = container::resolve(config, std::env::var_os("PATH").as_deref()).map_err(|diag| {
        let diag = format!("the job runs in container image {}: {diag}", launch.image);
        tracing::warn!(%diag, "no container runtime");
        (error_codes::CONTAINER_RUNTIME_NOT_INSTALLED, diag)
    })?;
    let invocation = container::command(&resolved, config, launch).map_err(|diag| {
        tracing::warn!(%diag, "the container runtime cannot take the image");
        (error_codes::IMAGE_NOT_FOUND, diag)
    })?;
    Ok((resolved, invocation))
}

/// Checks and copies the outputs of a payload that exited 0; the update to send.
async fn stage_out(cx: &Context<'_>, job: &Job, dir: &Path) -> Update {
    let update = |base: Update| Update { exit_code: Some(0), ..base };
    if let Some(lfn) = stage::find_missing_output(dir, &job.outputs) {
        let diag = format!("payload exited 0 but did not write output file {lfn}");
        return update(Update::failed(error_codes::MISSING_OUTPUT, diag));
    }
    let unique = format!("{}-{}", job.lease.job_id, std::process::id());
    match stage::stage_out(dir, &job.outputs, cx.storage_url, &unique).await {
        Ok(output_files) => update(Update { output_files, ..Update::status(JobStatus::Finished) }),
        Err(error) => {
            tracing::warn!(diag = %error.diag, "stage-out failed");
            update(Update::failed(error.code, error.diag))
        }
    }
}

/// Makes an empty job directory; a leftover from an earlier dispatch of the same job (whose
/// lease this pilot lost) is removed first.
async fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    tokio::fs::create_dir_all(dir).await
}

/// Sends the final report and says how the job ended.
async fn report(cx: &mut Context<'_>, lease: &Lease, update: Update) -> Result<Outcome> {
    let intended = if update.status == JobStatus::Finished { Outcome::Finished } else { Outcome::Failed };
    match cx.server.deliver(lease, &update, cx.shutdown).await? {
        Delivery::Accepted { .. } => {
            tracing::info!(status = %update.status, exit_code = ?update.exit_code, error_code = update.error_code, diag = %update.error_diag, "job reported");
            Ok(intended)
        }
        Delivery::LeaseLost(status) => {
            tracing::warn!(message = status.message(), "lease lost before the final report; dropping the job");
            Ok(Outcome::Dropped)
        }
        Delivery::Rejected(status) => {
            tracing::error!(code = ?status.code(), message = status.message(), "server refused the final report");
            Ok(intended)
        }
        Delivery::Abandoned(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "pilot stopping and the server is unreachable; final report not sent");
            Ok(intended)
        }
    }
}

#[cfg(test)]
mod tests;
