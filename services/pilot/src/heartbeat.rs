//! Watching a running payload: the `running` update at start, a heartbeat every interval, and
//! the reasons to kill it early (a KILL reply, a lost lease, the pilot's shutdown, the job's
//! wall-time or memory limit). A
//! heartbeat runs alongside the wait for the payload, so a slow server never delays noticing
//! that the payload exited or that the pilot must stop.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;

use panda_proto::server::v1::UpdateJobResponse;
use panda_types::JobStatus;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::payload::Payload;
use crate::server::{Attempt, Lease, ServerLink, Update};

/// Longest wait before repeating a failed heartbeat (the reference pilot retries after 120 s
/// with 30 min heartbeats).
const HEARTBEAT_RETRY: Duration = Duration::from_secs(60);

type Call = Pin<Box<dyn Future<Output = Result<UpdateJobResponse, tonic::Status>> + Send>>;

/// Why the pilot killed the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    /// The server replied KILL.
    Server,
    /// The pilot was told to stop.
    Shutdown,
    /// It ran past the job's wall time.
    Walltime {
        /// The limit.
        limit: Duration,
    },
    /// Its process group's resident memory went over the job's limit.
    Memory {
        /// What it used, KiB.
        rss_kb: u64,
        /// The limit, KiB.
        limit_kb: u64,
    },
}

/// How the payload ended.
#[derive(Debug)]
pub(crate) enum End {
    /// It exited by itself.
    Exited(ExitStatus),
    /// The pilot killed it.
    Killed { status: ExitStatus, reason: KillReason },
    /// The lease is gone (the job belongs to someone else now); the payload was killed if it
    /// still ran. Nothing more may be sent about the job.
    LeaseLost,
    /// Waiting for it failed; it was killed.
    Lost(std::io::Error),
}

/// How the heartbeat loop runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Between successful heartbeats.
    pub interval: Duration,
    /// SIGTERM to SIGKILL.
    pub kill_grace: Duration,
    /// The job's wall-time limit.
    pub walltime: Option<Duration>,
    /// The job's memory limit, KiB.
    pub memory_limit_kb: Option<u64>,
    /// Between memory checks.
    pub memory_check: Duration,
}

/// Sends `running`, heartbeats until the payload exits, and kills it when told to.
///
/// # Errors
/// [`crate::Error::ServerUnreachable`] once `server_deadline` passed without a successful
/// update; the payload has been killed by then.
pub(crate) async fn watch(
    payload: &mut Payload,
    server: &mut ServerLink,
    lease: &Lease,
    timing: Timing,
    shutdown: &CancellationToken,
) -> Result<End> {
    let started = Instant::now();
    let beat = |server: &ServerLink| -> Call {
        let update =
            Update { wall_time_seconds: started.elapsed().as_secs_f64(), ..Update::status(JobStatus::Running) };
        Box::pin(server.send(server.request(lease, &update)))
    };
    // The first `running` update goes out at once; later ones repeat it as heartbeats.
    let mut in_flight: Option<Call> = Some(beat(server));
    let mut next_beat = started + timing.interval;
    let kill = async |payload: &mut Payload, reason| match payload.terminate(timing.kill_grace).await {
        Ok(status) => End::Killed { status, reason },
        Err(error) => End::Lost(error),
    };
    let walltime_end = timing.walltime.map(|limit| (started + limit, limit));
    let mut memory_checks = tokio::time::interval(timing.memory_check);
    memory_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // A payload that already exited keeps its real result, whatever else happened.
            biased;
            waited = payload.wait() => {
                let status = match waited {
                    Ok(status) => status,
                    Err(error) => {
                        // Without a status the payload may still run: make sure it does not.
                        let _ = payload.terminate(timing.kill_grace).await;
                        return Ok(End::Lost(error));
                    }
                };
                // Let a call in flight finish (the channel deadline bounds it): for a short
                // payload it is the `running` update, which the server should see before the
                // final one. A KILL in its reply comes too late to matter.
                if in_flight.is_some()
                    && let Attempt::LeaseLost(_) = server.classify(poll(&mut in_flight).await)
                {
                    return Ok(End::LeaseLost);
                }
                return Ok(End::Exited(status));
            }
            () = shutdown.cancelled() => {
                tracing::info!(job_id = %lease.job_id, "pilot stopping: killing the payload");
                return Ok(kill(payload, KillReason::Shutdown).await);
            }
            result = poll(&mut in_flight), if in_flight.is_some() => {
                in_flight = None;
                match server.classify(result) {
                    Attempt::Accepted { kill: false } => next_beat = Instant::now() + timing.interval,
                    Attempt::Accepted { kill: true } => {
                        tracing::info!(job_id = %lease.job_id, "server asked for the job to be killed");
                        return Ok(kill(payload, KillReason::Server).await);
                    }
                    Attempt::LeaseLost(status) => {
                        tracing::warn!(job_id = %lease.job_id, message = status.message(), "lease lost: killing the payload and dropping the job");
                        let _ = payload.terminate(timing.kill_grace).await;
                        return Ok(End::LeaseLost);
                    }
                    Attempt::Failed(status) => {
                        // Transient or not, a failed heartbeat only counts towards the deadline:
                        // the payload's work is worth more than one refused call.
                        if let Err(error) = server.check_deadline(&status) {
                            let _ = payload.terminate(timing.kill_grace).await;
                            return Err(error);
                        }
                        tracing::warn!(job_id = %lease.job_id, code = ?status.code(), message = status.message(), "heartbeat failed; retrying");
                        next_beat = Instant::now() + timing.interval.min(HEARTBEAT_RETRY);
                    }
                }
            }
            () = sleep_until_opt(walltime_end.map(|(end, _)| end)), if walltime_end.is_some() => {
                let limit = walltime_end.map_or(Duration::ZERO, |(_, limit)| limit);
                tracing::warn!(job_id = %lease.job_id, ?limit, "wall-time limit reached: killing the payload");
                return Ok(kill(payload, KillReason::Walltime { limit }).await);
            }
            _ = memory_checks.tick(), if timing.memory_limit_kb.is_some() => {
                let limit_kb = timing.memory_limit_kb.unwrap_or(u64::MAX);
                let rss_kb = crate::payload::group_rss_kb(payload.group());
                if rss_kb > limit_kb {
                    tracing::warn!(job_id = %lease.job_id, rss_kb, limit_kb, "memory limit exceeded: killing the payload");
                    return Ok(kill(payload, KillReason::Memory { rss_kb, limit_kb }).await);
                }
            }
            () = tokio::time::sleep_until(next_beat), if in_flight.is_none() => in_flight = Some(beat(server)),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Awaits the call in flight; the caller's guard makes sure there is one.
async fn poll(call: &mut Option<Call>) -> Result<UpdateJobResponse, tonic::Status> {
    match call {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}
