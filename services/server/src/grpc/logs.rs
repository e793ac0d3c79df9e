//! LogService: appends from pilots, and log streams for users that follow a job until it ends.

use panda_proto::convert::WireEnum;
use panda_proto::server::v1 as wire;
use panda_proto::server::v1::log_service_server::LogService;
use panda_types::{JobId, StateMachine};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::feed::{ChangeFeed, Watcher};
use crate::logs::{LogStream, Logs};

/// How often a follower re-reads anyway (appends through another server replica, missed wake-ups).
const FOLLOW_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves LogService.
#[derive(Clone)]
pub struct LogApi {
    logs: Logs,
    feed: ChangeFeed,
}

impl LogApi {
    /// An adapter over the logs; `feed` announces job changes (a followed job's end).
    pub fn new(logs: Logs, feed: ChangeFeed) -> Self {
        Self { logs, feed }
    }
}

fn log_stream(value: i32) -> Result<LogStream, Status> {
    match wire::LogStream::try_from(value) {
        Ok(wire::LogStream::Stdout) => Ok(LogStream::Stdout),
        Ok(wire::LogStream::Stderr) => Ok(LogStream::Stderr),
        Ok(wire::LogStream::Unspecified) => Err(Status::invalid_argument("stream is required (stdout or stderr)")),
        Err(_) => Err(Status::invalid_argument(format!("stream is invalid: unknown value {value}"))),
    }
}

fn required_job(job_id: u64) -> Result<JobId, Status> {
    if job_id == 0 { Err(Status::invalid_argument("job_id is required")) } else { Ok(JobId(job_id)) }
}

#[tonic::async_trait]
impl LogService for LogApi {
    type ReadJobLogStream = tokio_stream::wrappers::ReceiverStream<Result<wire::ReadJobLogResponse, Status>>;

    async fn append_job_log(
        &self,
        request: Request<wire::AppendJobLogRequest>,
    ) -> Result<Response<wire::AppendJobLogResponse>, Status> {
        let request = request.into_inner();
        let job_id = required_job(request.job_id)?;
        if request.lease_token.is_empty() {
            return Err(Status::invalid_argument("lease_token is required"));
        }
        let stream = log_stream(request.stream)?;
        let appended = self.logs.append(job_id, &request.lease_token, stream, request.offset, request.data).await?;
        Ok(Response::new(wire::AppendJobLogResponse {
            stored_bytes: appended.stored_bytes,
            cap_reached: appended.cap_reached,
        }))
    }

    async fn read_job_log(
        &self,
        request: Request<wire::ReadJobLogRequest>,
    ) -> Result<Response<Self::ReadJobLogStream>, Status> {
        let request = request.into_inner();
        let job_id = required_job(request.job_id)?;
        let stream = log_stream(request.stream)?;
        // Subscribe before the first read, so no append or job change falls between the two.
        let follower = Follower {
            logs: self.logs.clone(),
            appended: self.logs.subscribe(),
            changes: self.feed.watch().await.map_err(|error| {
                Status::unavailable(format!("cannot follow job changes right now ({error}); retry shortly"))
            })?,
            job_id,
            stream,
            offset: request.offset,
            follow: request.follow,
        };
        // An unknown job is refused before the stream starts.
        self.logs.job_state(job_id).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(status) = follower.run(&tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// One reader of one job's stream.
struct Follower {
    logs: Logs,
    appended: tokio::sync::broadcast::Receiver<JobId>,
    changes: Watcher,
    job_id: JobId,
    stream: LogStream,
    offset: u64,
    follow: bool,
}

type Sender = mpsc::Sender<Result<wire::ReadJobLogResponse, Status>>;

impl Follower {
    /// Sends what is stored; when following, waits for more until the job ended. The job's state
    /// is read before each drain: pilots append everything before their final report, so a drain
    /// after seeing the job ended sends the whole log.
    async fn run(mut self, tx: &Sender) -> Result<(), Status> {
        let mut refresh = tokio::time::interval(FOLLOW_REFRESH);
        refresh.tick().await;
        loop {
            let (status, cap_reached) = self.logs.job_state(self.job_id).await?;
            if !self.drain(tx, status.to_wire()).await? {
                return Ok(());
            }
            if !self.follow || status.is_final() {
                // The last message carries no data: how the log ended.
                let end = wire::ReadJobLogResponse {
                    offset: self.offset,
                    data: Vec::new(),
                    job_status: status.to_wire(),
                    cap_reached,
                };
                let _ = tx.send(Ok(end)).await;
                return Ok(());
            }
            if !self.wait(tx, &mut refresh).await? {
                return Ok(());
            }
        }
    }

    /// Sends every stored chunk from the current offset; `false` when the reader hung up.
    async fn drain(&mut self, tx: &Sender, job_status: i32) -> Result<bool, Status> {
        loop {
            let slices = self.logs.read(self.job_id, self.stream, self.offset).await?;
            if slices.is_empty() {
                return Ok(true);
            }
            for slice in slices {
                self.offset = slice.offset + slice.data.len() as u64;
                let message =
                    wire::ReadJobLogResponse { offset: slice.offset, data: slice.data, job_status, cap_reached: false };
                if tx.send(Ok(message)).await.is_err() {
                    return Ok(false);
                }
            }
        }
    }

    /// Waits until this job's log grew or the job changed (or the refresh interval passed);
    /// `false` when the reader hung up.
    async fn wait(&mut self, tx: &Sender, refresh: &mut tokio::time::Interval) -> Result<bool, Status> {
        let closed = || Status::unavailable("the server is shutting down; read again from the last offset");
        let shutdown = self.changes.shutdown();
        loop {
            tokio::select! {
                () = tx.closed() => return Ok(false),
                () = shutdown.cancelled() => return Err(closed()),
                appended = self.appended.recv() => match appended {
                    Ok(job_id) if job_id != self.job_id => {}
                    Ok(_) | Err(RecvError::Lagged(_)) => return Ok(true),
                    Err(RecvError::Closed) => return Err(closed()),
                },
                change = self.changes.changes.recv() => match change {
                    Ok(change) if change.job.is_none_or(|(job_id, _)| job_id != self.job_id) => {}
                    Ok(_) | Err(RecvError::Lagged(_)) => return Ok(true),
                    Err(RecvError::Closed) => return Err(closed()),
                },
                _ = refresh.tick() => return Ok(true),
            }
        }
    }
}
