//! A scripted PilotService: hands out the jobs it was given, checks lease tokens, records every
//! call, and answers `running` updates as the test script says.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use panda_proto::common::v1::JobStatus;
use panda_proto::server::v1::cache_service_server::{CacheService, CacheServiceServer};
use panda_proto::server::v1::log_service_server::{LogService, LogServiceServer};
use panda_proto::server::v1::pilot_service_server::{PilotService, PilotServiceServer};
use panda_proto::server::v1::{
    AppendJobLogRequest, AppendJobLogResponse, ArchiveInfo, DispatchedJob, DownloadArchiveRequest,
    DownloadArchiveResponse, GetJobRequest, GetJobResponse, PilotCommand, ReadJobLogRequest, ReadJobLogResponse,
    StatArchiveRequest, StatArchiveResponse, UpdateJobRequest, UpdateJobResponse, UpdateJobResult, UpdateJobsRequest,
    UpdateJobsResponse, UploadArchiveRequest, UploadArchiveResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What the fake answers to a `running` update once its condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// PILOT_COMMAND_KILL.
    Kill,
    /// FAILED_PRECONDITION (the lease is gone).
    LeaseGone,
}

/// When a scripted reply starts: a file exists (the payload wrote it) and the pilot has sent at
/// least `min_running` running updates.
#[derive(Debug, Clone)]
pub struct Condition {
    pub file: PathBuf,
    pub min_running: usize,
}

/// The test's script.
#[derive(Debug, Default)]
pub struct Script {
    pub jobs: VecDeque<DispatchedJob>,
    pub storage_url: String,
    pub running_reply: Option<(Condition, Reply)>,
    /// Indices (0-based, among all running updates) answered UNAVAILABLE.
    pub unavailable_running: std::ops::Range<usize>,
    /// How many final updates (finished or failed) to answer UNAVAILABLE first.
    pub unavailable_finals: usize,
    /// Code archives the fake CacheService serves, by sha256.
    pub archives: HashMap<String, Vec<u8>>,
    /// Jobs dispatched to someone else before the pilot started (harvester in push mode): their
    /// leases are valid from the start, GetJob never hands them out.
    pub pushed: Vec<DispatchedJob>,
}

/// What the fake saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub get_jobs: Vec<GetJobRequest>,
    /// Accepted updates, in order.
    pub updates: Vec<UpdateJobRequest>,
    /// Every running update, accepted or not.
    pub running: usize,
    /// Updates answered with an error.
    pub refused: Vec<(u64, i32, tonic::Code)>,
    /// Accepted log chunks, in order.
    pub appends: Vec<Append>,
    /// Archive downloads served.
    pub downloads: usize,
}

/// A log chunk the fake stored.
#[derive(Debug, Clone)]
pub struct Append {
    pub job_id: u64,
    pub stream: i32,
    pub offset: u64,
    pub data: Vec<u8>,
    /// Updates accepted before it (to check the order against the final report).
    pub updates_before: usize,
}

#[derive(Debug, Default)]
struct State {
    script: Script,
    seen: Seen,
    leases: HashMap<u64, String>,
}

/// The fake service; clones share state.
#[derive(Debug, Clone, Default)]
pub struct Fake {
    state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn new(script: Script) -> Self {
        let leases = script.pushed.iter().map(|job| (job.job_id, job.lease_token.clone())).collect();
        Self { state: Arc::new(Mutex::new(State { script, leases, ..State::default() })) }
    }

    /// Serves on an OS-chosen loopback port until the test's runtime ends.
    pub async fn serve(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = PilotServiceServer::new(self.clone());
        let (logs, cache) = (LogServiceServer::new(self.clone()), CacheServiceServer::new(self.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .add_service(logs)
                .add_service(cache)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        addr
    }

    /// Reads what was seen so far.
    pub fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.state.lock().unwrap().seen)
    }

    /// Jobs not handed out yet.
    pub fn jobs_left(&self) -> usize {
        self.state.lock().unwrap().script.jobs.len()
    }

    /// The accepted updates' states, in order.
    pub fn statuses(&self) -> Vec<JobStatus> {
        self.seen(|seen| seen.updates.iter().map(|update| status(update.status)).collect())
    }

    /// The bytes of a job's stream as the fake stored them.
    pub fn log(&self, job_id: u64, stream: i32) -> Vec<u8> {
        self.seen(|seen| {
            seen.appends
                .iter()
                .filter(|a| a.job_id == job_id && a.stream == stream)
                .flat_map(|a| a.data.clone())
                .collect()
        })
    }

    /// The last accepted update.
    pub fn last_update(&self) -> UpdateJobRequest {
        self.seen(|seen| seen.updates.last().cloned()).expect("no update was accepted")
    }
}

pub fn status(value: i32) -> JobStatus {
    JobStatus::try_from(value).expect("a known job status")
}

#[tonic::async_trait]
impl PilotService for Fake {
    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state.lock().unwrap();
        let n = request.n_jobs.max(1) as usize;
        let task_id = request.task_id;
        state.seen.get_jobs.push(request);
        let mut jobs = Vec::new();
        while jobs.len() < n {
            // task_id: only jobs of that task.
            let Some(at) = state.script.jobs.iter().position(|job| task_id == 0 || job.task_id == task_id) else {
                break;
            };
            let Some(job) = state.script.jobs.remove(at) else { break };
            state.leases.insert(job.job_id, job.lease_token.clone());
            jobs.push(job);
        }
        Ok(Response::new(GetJobResponse { jobs, storage_url: state.script.storage_url.clone() }))
    }

    async fn update_job(&self, request: Request<UpdateJobRequest>) -> Result<Response<UpdateJobResponse>, Status> {
        self.apply(request.into_inner()).map(Response::new)
    }

    async fn update_jobs(&self, request: Request<UpdateJobsRequest>) -> Result<Response<UpdateJobsResponse>, Status> {
        let mut results = Vec::new();
        for update in request.into_inner().updates {
            let job_id = update.job_id;
            results.push(match self.apply(update) {
                Ok(response) => UpdateJobResult { job_id, code: 0, message: String::new(), response: Some(response) },
                Err(status) => UpdateJobResult {
                    job_id,
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    response: None,
                },
            });
        }
        Ok(Response::new(UpdateJobsResponse { results }))
    }

    async fn release_leases(
        &self,
        _request: Request<panda_proto::server::v1::ReleaseLeasesRequest>,
    ) -> Result<Response<panda_proto::server::v1::ReleaseLeasesResponse>, Status> {
        Err(Status::unimplemented("pilots never hand jobs back"))
    }
}

impl Fake {
    /// One report, as UpdateJob answers it.
    fn apply(&self, request: UpdateJobRequest) -> Result<UpdateJobResponse, Status> {
        let mut state = self.state.lock().unwrap();
        let refuse = |state: &mut State, request: &UpdateJobRequest, status: Status| {
            state.seen.refused.push((request.job_id, request.status, status.code()));
            Err(status)
        };
        if state.leases.get(&request.job_id) != Some(&request.lease_token) {
            return refuse(&mut state, &request, Status::failed_precondition("lease token does not match"));
        }
        let mut command = PilotCommand::None;
        match status(request.status) {
            JobStatus::Running => {
                let index = state.seen.running;
                state.seen.running += 1;
                if state.script.unavailable_running.contains(&index) {
                    return refuse(&mut state, &request, Status::unavailable("scripted outage"));
                }
                if let Some((condition, reply)) = &state.script.running_reply
                    && condition.file.exists()
                    && state.seen.running >= condition.min_running
                {
                    match reply {
                        Reply::Kill => command = PilotCommand::Kill,
                        Reply::LeaseGone => {
                            state.leases.remove(&request.job_id);
                            return refuse(&mut state, &request, Status::failed_precondition("job was reassigned"));
                        }
                    }
                }
            }
            JobStatus::Finished | JobStatus::Failed if state.script.unavailable_finals > 0 => {
                state.script.unavailable_finals -= 1;
                return refuse(&mut state, &request, Status::unavailable("scripted outage"));
            }
            _ => {}
        }
        let current = request.status;
        state.seen.updates.push(request);
        Ok(UpdateJobResponse { command: command as i32, status: current })
    }
}

#[tonic::async_trait]
impl LogService for Fake {
    type ReadJobLogStream = tokio_stream::Empty<Result<ReadJobLogResponse, Status>>;

    async fn append_job_log(
        &self,
        request: Request<AppendJobLogRequest>,
    ) -> Result<Response<AppendJobLogResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state.lock().unwrap();
        if state.leases.get(&request.job_id) != Some(&request.lease_token) {
            return Err(Status::failed_precondition("lease token does not match"));
        }
        let stored: u64 = state
            .seen
            .appends
            .iter()
            .filter(|a| a.job_id == request.job_id && a.stream == request.stream)
            .map(|a| a.data.len() as u64)
            .sum();
        if request.offset != stored {
            return Err(Status::invalid_argument(format!("offset {} but {stored} stored", request.offset)));
        }
        let updates_before = state.seen.updates.len();
        let stored_bytes = stored + request.data.len() as u64;
        state.seen.appends.push(Append {
            job_id: request.job_id,
            stream: request.stream,
            offset: request.offset,
            data: request.data,
            updates_before,
        });
        Ok(Response::new(AppendJobLogResponse { stored_bytes, cap_reached: false }))
    }

    async fn read_job_log(
        &self,
        _request: Request<ReadJobLogRequest>,
    ) -> Result<Response<Self::ReadJobLogStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

#[tonic::async_trait]
impl CacheService for Fake {
    type DownloadArchiveStream = tokio_stream::Iter<std::vec::IntoIter<Result<DownloadArchiveResponse, Status>>>;

    async fn stat_archive(
        &self,
        _request: Request<StatArchiveRequest>,
    ) -> Result<Response<StatArchiveResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn upload_archive(
        &self,
        _request: Request<tonic::Streaming<UploadArchiveRequest>>,
    ) -> Result<Response<UploadArchiveResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn download_archive(
        &self,
        request: Request<DownloadArchiveRequest>,
    ) -> Result<Response<Self::DownloadArchiveStream>, Status> {
        let sha256 = request.into_inner().sha256;
        let mut state = self.state.lock().unwrap();
        let Some(bytes) = state.script.archives.get(&sha256).cloned() else {
            return Err(Status::not_found(format!("archive {sha256} is not in the cache")));
        };
        state.seen.downloads += 1;
        let info = ArchiveInfo { sha256, size_bytes: bytes.len() as u64, ..Default::default() };
        let messages = bytes
            .chunks(1000)
            .enumerate()
            .map(|(i, chunk)| {
                Ok(DownloadArchiveResponse { archive: (i == 0).then(|| info.clone()), chunk: chunk.to_vec() })
            })
            .collect::<Vec<_>>();
        Ok(Response::new(tokio_stream::iter(messages)))
    }
}
