//! The pilot: a stateless agent on a worker node. It asks the server's PilotService for a job,
//! runs it in its own directory and reports on it, then asks for the next one (in push mode it
//! first runs the jobs of the job file harvester wrote, `Config::job_file`), until the server
//! has none, `max_jobs` or the lifetime is reached, or it is told to stop. For each job:
//! `starting`, stage-in (copy and verify inputs), the payload (`/bin/sh -c` in its own process
//! group) with `running` heartbeats, stage-out (copy and measure outputs), and a final
//! `finished` or `failed` update with exit code, pilot error code, output tails and resource use.
//!
//! Modules:
//! - [`cli`]: the command line shared by `panda-pilot` and `panda pilot`.
//! - `config`: [`Config`], the `[pilot]` section.
//! - `error`: [`Error`], why the pilot stopped early (job failures are reported, not errors).
//! - [`error_codes`]: pilot error codes sent with failed jobs, numbered as in the reference.
//! - `server`: the PilotService client side: GetJob, UpdateJob, retries and the server deadline.
//! - `job`: one job from dispatch to final report.
//! - `stage`: stage-in and stage-out over `file://` URLs, with adler32.
//! - `code`: the job's code archive from the server's cache, unpacked into the job directory.
//! - `logship`: the payload's stdout and stderr sent to the server while it runs.
//! - `payload`: starting, killing and measuring the payload's process group.
//! - `heartbeat`: watching the payload: heartbeats and the reasons to kill it.
//! - `warm`: several jobs of one work in one long-lived runtime process (Function-as-a-Task).
//! - [`container`]: the payload (or warm runtime) inside the task's container image, through
//!   apptainer, singularity, podman or docker (`[pilot.container]`).

pub mod cli;
mod code;
mod config;
pub mod container;
mod error;
pub mod error_codes;
mod heartbeat;
mod job;
mod logship;
mod payload;
mod server;
mod stage;
mod warm;

use std::path::PathBuf;
use std::time::Instant;

use panda_proto::common::v1::Resources;
use panda_proto::server::v1::GetJobRequest;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ContainerConfig, ContainerRuntime, DEFAULT_HEARTBEAT_INTERVAL};
pub use error::{Error, Result};

use crate::job::{Context, Job, Outcome};
use crate::server::ServerLink;

/// Longest single long poll (the server allows 60 s).
const MAX_POLL_SLICE: std::time::Duration = std::time::Duration::from_secs(20);

/// What a pilot did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Jobs received from the server, including those whose lease was lost.
    pub jobs_run: u32,
    /// Jobs reported finished.
    pub jobs_finished: u32,
    /// Jobs reported failed.
    pub jobs_failed: u32,
}

/// Runs jobs until the server has none left, `max_jobs` or `lifetime` is reached, or `shutdown`
/// is cancelled (SIGTERM in `main`); on shutdown the running payload is killed and its job
/// reported failed with [`error_codes::SIGTERM`] before this returns.
///
/// # Errors
/// [`Error::InvalidConfig`] and [`Error::ServerUrl`] before any job; [`Error::WorkDir`] when a
/// directory cannot be created; [`Error::GetJob`] when the server refuses to hand out jobs;
/// [`Error::ServerUnreachable`] after `server_deadline` without a successful call (the payload
/// is killed first).
///
/// Not cancel-safe: dropping the future SIGKILLs a running payload but reports nothing. Cancel
/// `shutdown` instead.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Summary> {
    config.validate()?;
    let node = config.node.clone().unwrap_or_else(hostname);
    let work_dir = prepare_work_dir(&config).await?;
    let mut server = ServerLink::new(&config.server_url, node, config.server_deadline)?;
    tracing::info!(queue = %config.queue, node = server.node(), server = %config.server_url, work_dir = %work_dir.display(), "pilot started");
    let started = Instant::now();
    let mut summary = Summary::default();
    if let Some(path) = &config.job_file {
        // Push mode: harvester fetched these for this worker; their leases are ours already.
        let pushed = read_job_file(path).await?;
        tracing::info!(job_file = %path.display(), jobs = pushed.jobs.len(), "running the jobs of the job file");
        let storage_url = pushed.storage_url;
        for dispatched in pushed.jobs.into_iter().map(panda_proto::convert::job_file::to_dispatched) {
            // A job not run here is not lost: harvester hands back what is still `sent` when the
            // worker ends, or the server's lease time-out does.
            if shutdown.is_cancelled() {
                break;
            }
            summary.jobs_run += 1;
            let mut cx = Context {
                config: &config,
                work_dir: &work_dir,
                server: &mut server,
                storage_url: &storage_url,
                shutdown: &shutdown,
            };
            match job::run(Job::from(dispatched), &mut cx).await? {
                Outcome::Finished => summary.jobs_finished += 1,
                Outcome::Failed => summary.jobs_failed += 1,
                Outcome::Dropped => {}
            }
        }
    }
    // The warm runtime (see `warm`), kept across works while its key fits.
    let mut runtime: Option<warm::Runtime> = None;
    let mut idle_since = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            tracing::info!("pilot told to stop");
            break;
        }
        if config.max_jobs != 0 && summary.jobs_run >= config.max_jobs {
            tracing::info!(max_jobs = config.max_jobs, "job limit reached");
            break;
        }
        if started.elapsed() >= config.lifetime {
            tracing::info!(lifetime = ?config.lifetime, "lifetime reached; taking no more jobs");
            break;
        }
        // Long poll while idle_wait lasts, in slices so that lifetime and shutdown are seen.
        let idle_left = config.idle_wait.saturating_sub(idle_since.elapsed());
        let wait = idle_left.min(MAX_POLL_SLICE);
        let request = GetJobRequest {
            queue: config.queue.clone(),
            node: server.node().to_owned(),
            resources: Some(Resources {
                cores: config.cores,
                memory_mb: config.memory_mb,
                disk_mb: 0,
                walltime_seconds: 0,
            }),
            worker_id: config.worker_id.clone(),
            n_jobs: 1,
            task_id: 0,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let answer = if wait.is_zero() {
            server.get_jobs(request, &shutdown).await?
        } else {
            server.wait_for_jobs(request, &shutdown).await?
        };
        let Some(response) = answer else { continue };
        if response.jobs.is_empty() {
            if idle_since.elapsed() < config.idle_wait {
                continue;
            }
            tracing::info!("no jobs in PanDA for this queue");
            break;
        }
        for dispatched in response.jobs {
            let job = Job::from(dispatched);
            let mut cx = Context {
                config: &config,
                work_dir: &work_dir,
                server: &mut server,
                storage_url: &response.storage_url,
                shutdown: &shutdown,
            };
            if let Some(key) = warm::key_of(&job) {
                let tally = warm::run_task(job, key, &mut runtime, &mut cx).await?;
                summary.jobs_run += tally.run;
                summary.jobs_finished += tally.finished;
                summary.jobs_failed += tally.failed;
                continue;
            }
            summary.jobs_run += 1;
            match job::run(job, &mut cx).await? {
                Outcome::Finished => summary.jobs_finished += 1,
                Outcome::Failed => summary.jobs_failed += 1,
                Outcome::Dropped => {}
            }
        }
        idle_since = Instant::now();
    }
    if let Some(runtime) = runtime.take() {
        runtime.close(config.kill_grace).await;
    }
    tracing::info!(
        jobs_run = summary.jobs_run,
        finished = summary.jobs_finished,
        failed = summary.jobs_failed,
        "pilot done"
    );
    Ok(summary)
}

/// Reads and checks a job file.
async fn read_job_file(path: &std::path::Path) -> Result<panda_types::job_file::JobFile> {
    let fail = |reason: String| Error::JobFile { path: path.to_owned(), reason };
    let text = tokio::fs::read_to_string(path).await.map_err(|e| fail(e.to_string()))?;
    let file: panda_types::job_file::JobFile = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    file.check().map_err(|e| fail(e.to_string()))?;
    Ok(file)
}

/// The absolute work directory, created if needed; relative paths are resolved once here, so
/// that `PANDA_WORK_DIR` is absolute for the payload.
async fn prepare_work_dir(config: &Config) -> Result<PathBuf> {
    let fail = |source| Error::WorkDir { path: config.work_dir.clone(), source };
    let work_dir = std::path::absolute(&config.work_dir).map_err(fail)?;
    tokio::fs::create_dir_all(&work_dir).await.map_err(fail)?;
    Ok(work_dir)
}

fn hostname() -> String {
    match nix::unistd::gethostname().map(|name| name.into_string()) {
        Ok(Ok(name)) if !name.is_empty() => name,
        _ => {
            tracing::warn!("cannot read the host name; reporting node \"localhost\" (set pilot.node)");
            "localhost".to_owned()
        }
    }
}
