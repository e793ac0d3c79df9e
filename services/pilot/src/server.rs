//! The pilot's end of PilotService: asking for jobs and sending updates, with one policy for
//! failures. Transient errors are retried; the pilot gives up only after `server_deadline`
//! without any successful call. FAILED_PRECONDITION or NOT_FOUND on an update means the lease is
//! gone (the server gave the job to someone else, or forgot it): the job must be dropped.

use std::future::Future;
use std::time::{Duration, Instant};

use panda_proto::convert::WireEnum;
use panda_proto::server::v1::{
    GetJobRequest, GetJobResponse, OutputFile, PilotCommand, UpdateJobRequest, UpdateJobResponse, UpdateJobsRequest,
};
use panda_types::{JobId, JobStatus};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use panda_client::{CacheServiceClient, LogServiceClient, PilotServiceClient};

use crate::error::{Error, Result};
use crate::stage::StagedOutput;

/// First retry delay after a transient failure; doubles up to [`MAX_RETRY_DELAY`].
const MIN_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Longest retry delay (the reference pilot waits 10 s to 120 s between tries).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// How long a report may still be retried once the pilot was told to stop: batch systems send
/// SIGKILL soon after SIGTERM (Slurm's default KillWait is 30 s).
const SHUTDOWN_REPORT_BUDGET: Duration = Duration::from_secs(20);

/// The job a pilot holds and the fencing token that proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The job.
    pub job_id: JobId,
    /// Token from the dispatch.
    pub token: String,
}

/// The content of one UpdateJob call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Update {
    pub status: JobStatus,
    pub exit_code: Option<i32>,
    pub error_code: u32,
    pub error_diag: String,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub cpu_time_seconds: f64,
    pub wall_time_seconds: f64,
    pub max_rss_kb: u64,
    pub output_files: Vec<StagedOutput>,
}

impl Update {
    /// An update carrying only a state (a heartbeat when it repeats the current one).
    pub(crate) fn status(status: JobStatus) -> Self {
        Self {
            status,
            exit_code: None,
            error_code: 0,
            error_diag: String::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            cpu_time_seconds: 0.0,
            wall_time_seconds: 0.0,
            max_rss_kb: 0,
            output_files: Vec::new(),
        }
    }

    /// A failure report with a pilot error code.
    pub(crate) fn failed(error_code: u32, error_diag: impl Into<String>) -> Self {
        Self { error_code, error_diag: error_diag.into(), ..Self::status(JobStatus::Failed) }
    }
}

/// How one update call went.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Accepted; `kill` when the server asks for the payload to be killed.
    Accepted { kill: bool },
    /// The lease is gone: drop the job without further updates.
    LeaseLost(tonic::Status),
    /// Not accepted; whether to retry depends on the status.
    Failed(tonic::Status),
}

/// How a report that must arrive (starting, final) ended.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// Accepted; `kill` when the server asks for the job to be killed.
    Accepted { kill: bool },
    /// The lease is gone.
    LeaseLost(tonic::Status),
    /// Refused with an error a retry will not fix.
    Rejected(tonic::Status),
    /// The pilot is shutting down and the shutdown budget is spent.
    Abandoned(tonic::Status),
}

/// Client, node name and the time of the last successful call.
#[derive(Debug)]
pub(crate) struct ServerLink {
    client: PilotServiceClient<Channel>,
    cache: CacheServiceClient<Channel>,
    logs: LogServiceClient<Channel>,
    node: String,
    server_deadline: Duration,
    last_success: Instant,
}

impl ServerLink {
    /// A lazily connecting link; the deadline clock starts now.
    pub(crate) fn new(url: &str, node: String, server_deadline: Duration) -> Result<Self> {
        let server = panda_client::ServerClient::new(url).map_err(Error::ServerUrl)?;
        Ok(Self {
            client: server.pilot,
            cache: server.cache,
            logs: server.logs,
            node,
            server_deadline,
            last_success: Instant::now(),
        })
    }

    /// The CacheService client (code archives).
    pub(crate) fn cache(&self) -> &CacheServiceClient<Channel> {
        &self.cache
    }

    /// A LogService client (the payload's output).
    pub(crate) fn logs(&self) -> LogServiceClient<Channel> {
        self.logs.clone()
    }

    /// The node name sent with every call.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Asks for jobs, retrying transient failures. `None` when shutdown came while waiting to
    /// retry. The call itself is never abandoned halfway: its answer may hold jobs the server has
    /// already marked as ours, which must then be reported.
    pub(crate) async fn get_jobs(
        &mut self,
        request: GetJobRequest,
        shutdown: &CancellationToken,
    ) -> Result<Option<GetJobResponse>> {
        let mut retries = 0;
        loop {
            let mut client = self.client.clone();
            match client.get_job(request.clone()).await {
                Ok(response) => {
                    self.last_success = Instant::now();
                    return Ok(Some(response.into_inner()));
                }
                // GetJob hands jobs out, so it is not idempotent: a timed-out call may have
                // dispatched a job, and only the lease time-out on the server recovers it.
                Err(status) if panda_client::is_transient(&status, false) => {
                    let wait = self.retry_delay(retries, &status)?;
                    tracing::warn!(code = ?status.code(), message = status.message(), ?wait, "GetJob failed; retrying");
                    retries += 1;
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return Ok(None),
                    }
                }
                Err(source) => return Err(Error::GetJob { queue: request.queue.clone(), source }),
            }
        }
    }

    /// Waits for jobs (a long poll, `request.wait_ms`), giving up when `shutdown` comes: the
    /// server puts back jobs it dispatched to a caller that hung up, so dropping the call loses
    /// nothing (should the answer have been on its way, the server's lost-heartbeat watchdog
    /// takes the jobs back). `None` on shutdown.
    pub(crate) async fn wait_for_jobs(
        &mut self,
        request: GetJobRequest,
        shutdown: &CancellationToken,
    ) -> Result<Option<GetJobResponse>> {
        tokio::select! {
            () = shutdown.cancelled() => Ok(None),
            answer = self.get_jobs(request, shutdown) => answer,
        }
    }

    /// Sends several reports in `UpdateJobs` calls (at most 1000 reports each), retrying
    /// transient failures as [`ServerLink::deliver`] does; one [`Delivery`] per report, in order.
    ///
    /// # Errors
    /// [`Error::ServerUnreachable`] once `server_deadline` passed without a successful call.
    pub(crate) async fn deliver_many(
        &mut self,
        reports: &[(Lease, Update)],
        shutdown: &CancellationToken,
    ) -> Result<Vec<Delivery>> {
        let mut deliveries = Vec::with_capacity(reports.len());
        for chunk in reports.chunks(1000) {
            let request = UpdateJobsRequest {
                updates: chunk.iter().map(|(lease, update)| self.request(lease, update)).collect(),
            };
            let mut retries = 0;
            let mut shutdown_seen: Option<Instant> = None;
            loop {
                let mut client = self.client.clone();
                let status = match client.update_jobs(request.clone()).await {
                    Ok(answer) => {
                        self.last_success = Instant::now();
                        let mut results = answer.into_inner().results.into_iter();
                        for _ in chunk {
                            deliveries.push(match results.next() {
                                Some(result) if result.code == 0 => Delivery::Accepted {
                                    kill: result.response.is_some_and(|r| r.command == PilotCommand::Kill as i32),
                                },
                                Some(result) => {
                                    let status = tonic::Status::new(tonic::Code::from(result.code), result.message);
                                    match status.code() {
                                        tonic::Code::FailedPrecondition | tonic::Code::NotFound => {
                                            Delivery::LeaseLost(status)
                                        }
                                        _ => Delivery::Rejected(status),
                                    }
                                }
                                None => Delivery::Rejected(tonic::Status::internal(
                                    "the server sent no answer for a report",
                                )),
                            });
                        }
                        break;
                    }
                    Err(status) if !panda_client::is_transient(&status, true) => {
                        deliveries.extend(chunk.iter().map(|_| Delivery::Rejected(status.clone())));
                        break;
                    }
                    Err(status) => status,
                };
                let mut wait = self.retry_delay(retries, &status)?;
                if shutdown.is_cancelled() {
                    let seen = *shutdown_seen.get_or_insert_with(Instant::now);
                    let left = SHUTDOWN_REPORT_BUDGET.saturating_sub(seen.elapsed());
                    if left.is_zero() {
                        deliveries.extend(chunk.iter().map(|_| Delivery::Abandoned(status.clone())));
                        break;
                    }
                    wait = wait.min(left);
                }
                tracing::warn!(reports = chunk.len(), code = ?status.code(), message = status.message(), ?wait, "UpdateJobs failed; retrying");
                retries += 1;
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
                }
            }
        }
        Ok(deliveries)
    }

    /// The wire request for `update` of the leased job.
    pub(crate) fn request(&self, lease: &Lease, update: &Update) -> UpdateJobRequest {
        UpdateJobRequest {
            job_id: lease.job_id.0,
            lease_token: lease.token.clone(),
            status: update.status.to_wire(),
            exit_code: update.exit_code,
            error_code: update.error_code,
            error_diag: update.error_diag.clone(),
            stdout_tail: update.stdout_tail.clone(),
            stderr_tail: update.stderr_tail.clone(),
            cpu_time_seconds: update.cpu_time_seconds,
            wall_time_seconds: update.wall_time_seconds,
            max_rss_kb: update.max_rss_kb,
            output_files: update
                .output_files
                .iter()
                .map(|file| OutputFile {
                    lfn: file.lfn.clone(),
                    size_bytes: file.size_bytes,
                    checksum: file.checksum.clone(),
                })
                .collect(),
            node: self.node.clone(),
        }
    }

    /// One UpdateJob call as an owned future, so that it can run while the pilot watches the
    /// payload. Pass the result to [`ServerLink::classify`].
    pub(crate) fn send(
        &self,
        request: UpdateJobRequest,
    ) -> impl Future<Output = Result<UpdateJobResponse, tonic::Status>> + Send + 'static {
        let mut client = self.client.clone();
        async move { client.update_job(request).await.map(tonic::Response::into_inner) }
    }

    /// Sorts the result of an update call and notes a success for the deadline.
    pub(crate) fn classify(&mut self, result: Result<UpdateJobResponse, tonic::Status>) -> Attempt {
        match result {
            Ok(reply) => {
                self.last_success = Instant::now();
                Attempt::Accepted { kill: reply.command == PilotCommand::Kill as i32 }
            }
            Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound) => {
                Attempt::LeaseLost(status)
            }
            Err(status) => Attempt::Failed(status),
        }
    }

    /// [`Error::ServerUnreachable`] once `server_deadline` has passed without a successful call.
    pub(crate) fn check_deadline(&self, last: &tonic::Status) -> Result<()> {
        let elapsed = self.last_success.elapsed();
        if elapsed >= self.server_deadline {
            return Err(Error::ServerUnreachable { elapsed, limit: self.server_deadline, last: last.clone() });
        }
        Ok(())
    }

    /// Sends `update` until the server answers, retrying transient failures with backoff. Used
    /// for reports that must arrive (starting and final); the server treats a repeat of the same
    /// report as a no-op, so a retry after a lost answer is safe.
    ///
    /// # Errors
    /// [`Error::ServerUnreachable`] once `server_deadline` passed without a successful call.
    pub(crate) async fn deliver(
        &mut self,
        lease: &Lease,
        update: &Update,
        shutdown: &CancellationToken,
    ) -> Result<Delivery> {
        let request = self.request(lease, update);
        let mut retries = 0;
        let mut shutdown_seen: Option<Instant> = None;
        loop {
            let result = self.send(request.clone()).await;
            let status = match self.classify(result) {
                Attempt::Accepted { kill } => return Ok(Delivery::Accepted { kill }),
                Attempt::LeaseLost(status) => return Ok(Delivery::LeaseLost(status)),
                Attempt::Failed(status) if !panda_client::is_transient(&status, true) => {
                    return Ok(Delivery::Rejected(status));
                }
                Attempt::Failed(status) => status,
            };
            let mut wait = self.retry_delay(retries, &status)?;
            if shutdown.is_cancelled() {
                let seen = *shutdown_seen.get_or_insert_with(Instant::now);
                let left = SHUTDOWN_REPORT_BUDGET.saturating_sub(seen.elapsed());
                if left.is_zero() {
                    return Ok(Delivery::Abandoned(status));
                }
                wait = wait.min(left);
            }
            tracing::warn!(job_id = %lease.job_id, code = ?status.code(), message = status.message(), ?wait, "UpdateJob failed; retrying");
            retries += 1;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // Wake up to start the shutdown budget; after that, only the sleep counts.
                () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            }
        }
    }

    /// The wait before retry number `retries`, never past the deadline; the deadline error once
    /// it has passed.
    fn retry_delay(&self, retries: u32, last: &tonic::Status) -> Result<Duration> {
        self.check_deadline(last)?;
        let remaining = self.server_deadline.saturating_sub(self.last_success.elapsed());
        Ok(backoff(retries).min(remaining))
    }
}

/// Exponential backoff: [`MIN_RETRY_DELAY`] doubling per retry up to [`MAX_RETRY_DELAY`].
pub(crate) fn backoff(retries: u32) -> Duration {
    MIN_RETRY_DELAY.saturating_mul(2_u32.saturating_pow(retries)).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests;
