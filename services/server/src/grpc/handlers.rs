//! The four server APIs on one adapter.

use std::collections::BTreeMap;

use chrono::Utc;
use panda_proto::common::v1 as common;
use panda_proto::convert::{WireEnum, resources};
use panda_proto::server::v1 as wire;
use panda_proto::server::v1::internal_service_server::InternalService;
use panda_proto::server::v1::job_service_server::JobService;
use panda_proto::server::v1::pilot_service_server::PilotService;
use panda_proto::server::v1::task_service_server::TaskService;
use panda_types::{JobId, JobStatus, TaskId, TaskStatus};
use tonic::{Request, Response, Status};

use super::convert;
use super::watch;
use crate::error::Error;
use crate::feed::ChangeFeed;
use crate::model::{JobBatch, JobReport, NewJob, OutputFile, Queue};
use crate::service::{DispatchRequest, PilotBatches, PilotCommand, Service, UpdateRequest};
use crate::store::{JobFilter, TaskFilter};

/// Longest long poll of a GetJob call (`wait_ms`).
pub const MAX_GET_JOB_WAIT_MS: u32 = 60_000;

/// Serves TaskService, JobService, PilotService and InternalService.
#[derive(Clone)]
pub struct Api {
    pub(super) service: Service,
    pilots: PilotBatches,
    pub(super) feed: ChangeFeed,
    heartbeat_interval_seconds: u32,
}

impl Api {
    /// An adapter over the service; pilots' calls go through its group commits.
    pub fn new(service: Service, pilots: PilotBatches, feed: ChangeFeed, heartbeat_interval_seconds: u32) -> Self {
        Self { service, pilots, feed, heartbeat_interval_seconds }
    }
}

/// Most reports in one UpdateJobs call.
const MAX_REPORTS_PER_CALL: usize = 1000;

fn invalid(error: panda_proto::convert::ProtocolError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn required_id(field: &'static str, id: u64) -> Result<u64, Status> {
    if id == 0 { Err(Status::invalid_argument(format!("{field} is required"))) } else { Ok(id) }
}

#[tonic::async_trait]
impl TaskService for Api {
    type WatchTaskStream = watch::Stream<wire::WatchTaskResponse>;

    async fn watch_task(
        &self,
        request: Request<wire::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let task_id = TaskId(required_id("task_id", request.into_inner().task_id)?);
        Ok(Response::new(watch::task(self, task_id).await?))
    }

    type WatchUserTasksStream = watch::Stream<wire::WatchTaskResponse>;

    async fn watch_user_tasks(
        &self,
        request: Request<wire::WatchUserTasksRequest>,
    ) -> Result<Response<Self::WatchUserTasksStream>, Status> {
        Ok(Response::new(watch::user_tasks(self, request.into_inner().user).await?))
    }

    async fn submit_task(
        &self,
        request: Request<wire::SubmitTaskRequest>,
    ) -> Result<Response<wire::SubmitTaskResponse>, Status> {
        let request = request.into_inner();
        let spec = request.spec.ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let key = (!request.idempotency_key.is_empty()).then_some(request.idempotency_key);
        let (task, created) = self.service.submit_task(spec.into(), key).await?;
        Ok(Response::new(wire::SubmitTaskResponse { task_id: task.id.0, created }))
    }

    async fn get_task(
        &self,
        request: Request<wire::GetTaskRequest>,
    ) -> Result<Response<wire::GetTaskResponse>, Status> {
        let task_id = TaskId(required_id("task_id", request.into_inner().task_id)?);
        let (task, counts) = self.service.get_task(task_id).await?;
        Ok(Response::new(wire::GetTaskResponse { task: Some(convert::task(task, counts)) }))
    }

    async fn list_tasks(
        &self,
        request: Request<wire::ListTasksRequest>,
    ) -> Result<Response<wire::ListTasksResponse>, Status> {
        let request = request.into_inner();
        let statuses = request
            .statuses
            .iter()
            .map(|s| TaskStatus::from_wire("statuses", *s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        if request.limit > 1000 {
            return Err(Error::invalid("limit", format!("must be at most 1000 (got {})", request.limit)).into());
        }
        let limit = if request.limit == 0 { 100 } else { request.limit };
        let time = |field: &'static str, ts: Option<prost_types::Timestamp>| -> Result<_, Status> {
            ts.map(|t| {
                chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                    .ok_or_else(|| Status::invalid_argument(format!("{field} is not a valid time")))
            })
            .transpose()
        };
        let filter = TaskFilter {
            statuses,
            user: (!request.user.is_empty()).then_some(request.user),
            limit: u64::from(limit),
            before: (request.before_task_id != 0).then_some(TaskId(request.before_task_id)),
            name_contains: (!request.name_contains.is_empty()).then_some(request.name_contains),
            created_after: time("created_after", request.created_after)?,
            created_before: time("created_before", request.created_before)?,
            oldest_first: request.oldest_first,
            after: (request.after_task_id != 0).then_some(TaskId(request.after_task_id)),
        };
        let tasks = self.service.list_tasks(filter).await?;
        let next = if tasks.len() == limit as usize { tasks.last().map_or(0, |(t, _)| t.id.0) } else { 0 };
        let (next_before, next_after) = if request.oldest_first { (0, next) } else { (next, 0) };
        Ok(Response::new(wire::ListTasksResponse {
            tasks: tasks.into_iter().map(|(t, c)| convert::task(t, c)).collect(),
            next_before,
            next_after,
        }))
    }

    async fn kill_task(
        &self,
        request: Request<wire::KillTaskRequest>,
    ) -> Result<Response<wire::KillTaskResponse>, Status> {
        let task_id = TaskId(required_id("task_id", request.into_inner().task_id)?);
        let (task, counts) = self.service.kill_task(task_id).await?;
        Ok(Response::new(wire::KillTaskResponse { task: Some(convert::task(task, counts)) }))
    }

    async fn pause_task(
        &self,
        request: Request<wire::PauseTaskRequest>,
    ) -> Result<Response<wire::PauseTaskResponse>, Status> {
        let task_id = TaskId(required_id("task_id", request.into_inner().task_id)?);
        let (task, counts) = self.service.pause_task(task_id).await?;
        Ok(Response::new(wire::PauseTaskResponse { task: Some(convert::task(task, counts)) }))
    }

    async fn resume_task(
        &self,
        request: Request<wire::ResumeTaskRequest>,
    ) -> Result<Response<wire::ResumeTaskResponse>, Status> {
        let task_id = TaskId(required_id("task_id", request.into_inner().task_id)?);
        let (task, counts) = self.service.resume_task(task_id).await?;
        Ok(Response::new(wire::ResumeTaskResponse { task: Some(convert::task(task, counts)) }))
    }

    async fn retry_task(
        &self,
        request: Request<wire::RetryTaskRequest>,
    ) -> Result<Response<wire::RetryTaskResponse>, Status> {
        let task_id = TaskId(required_id("task_id", request.into_inner().task_id)?);
        let (task, counts) = self.service.retry_task(task_id).await?;
        Ok(Response::new(wire::RetryTaskResponse { task: Some(convert::task(task, counts)) }))
    }

    async fn set_task_priority(
        &self,
        request: Request<wire::SetTaskPriorityRequest>,
    ) -> Result<Response<wire::SetTaskPriorityResponse>, Status> {
        let request = request.into_inner();
        let task_id = TaskId(required_id("task_id", request.task_id)?);
        let (task, counts) = self.service.set_task_priority(task_id, request.priority).await?;
        Ok(Response::new(wire::SetTaskPriorityResponse { task: Some(convert::task(task, counts)) }))
    }
}

#[tonic::async_trait]
impl JobService for Api {
    async fn list_jobs(
        &self,
        request: Request<wire::ListJobsRequest>,
    ) -> Result<Response<wire::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let statuses = request
            .statuses
            .iter()
            .map(|s| JobStatus::from_wire("statuses", *s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        if request.limit > 10_000 {
            return Err(Error::invalid("limit", format!("must be at most 10000 (got {})", request.limit)).into());
        }
        let limit = if request.limit == 0 { 1000 } else { request.limit };
        if request.task_id != 0 {
            // A clear NOT_FOUND beats an empty list for a mistyped task id.
            self.service.get_task(TaskId(request.task_id)).await?;
        }
        let filter = JobFilter {
            task_id: (request.task_id != 0).then_some(TaskId(request.task_id)),
            statuses,
            limit: u64::from(limit),
            after: (request.after_job_id != 0).then_some(JobId(request.after_job_id)),
            queue: (!request.queue.is_empty()).then_some(request.queue),
        };
        let jobs = self.service.list_jobs(filter).await?;
        let next_after = if jobs.len() == limit as usize { jobs.last().map_or(0, |j| j.id.0) } else { 0 };
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        let mut produced = self.service.outputs_of_jobs(&ids).await?;
        Ok(Response::new(wire::ListJobsResponse {
            jobs: jobs
                .into_iter()
                .map(|j| {
                    let outputs = outputs_with_state(&j.output_files, produced.remove(&j.id).unwrap_or_default());
                    convert::job(j, outputs)
                })
                .collect(),
            next_after,
        }))
    }

    async fn show_job(
        &self,
        request: Request<wire::ShowJobRequest>,
    ) -> Result<Response<wire::ShowJobResponse>, Status> {
        let job_id = JobId(required_id("job_id", request.into_inner().job_id)?);
        let job = self.service.show_job(job_id).await?;
        let produced = self.service.outputs_of_jobs(&[job_id]).await?.remove(&job_id).unwrap_or_default();
        let outputs = outputs_with_state(&job.output_files, produced);
        Ok(Response::new(wire::ShowJobResponse { job: Some(convert::job(job, outputs)) }))
    }

    type WatchJobStream = watch::Stream<wire::WatchJobResponse>;

    async fn watch_job(
        &self,
        request: Request<wire::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let job_id = JobId(required_id("job_id", request.into_inner().job_id)?);
        Ok(Response::new(watch::job(self, job_id).await?))
    }

    async fn kill_job(
        &self,
        request: Request<wire::KillJobRequest>,
    ) -> Result<Response<wire::KillJobResponse>, Status> {
        let job_id = JobId(required_id("job_id", request.into_inner().job_id)?);
        let job = self.service.kill_job(job_id).await?;
        let outputs = outputs_of(&job.output_files);
        Ok(Response::new(wire::KillJobResponse { job: Some(convert::job(job, outputs)) }))
    }
}

pub(super) fn outputs_of(lfns: &[String]) -> Vec<common::FileInfo> {
    lfns.iter().map(|lfn| common::FileInfo { lfn: lfn.clone(), ..Default::default() }).collect()
}

/// The job's declared outputs, each with its size, checksum and state where the job holds its
/// file row (an earlier attempt's rows moved to the next attempt: names only).
fn outputs_with_state(lfns: &[String], rows: Vec<crate::model::FileRecord>) -> Vec<common::FileInfo> {
    let mut rows: std::collections::HashMap<String, crate::model::FileRecord> =
        rows.into_iter().map(|r| (r.lfn.clone(), r)).collect();
    lfns.iter()
        .map(|lfn| match rows.remove(lfn) {
            Some(row) => common::FileInfo {
                lfn: row.lfn,
                size_bytes: row.size_bytes,
                checksum: row.checksum,
                status: row.status,
                ..Default::default()
            },
            None => common::FileInfo { lfn: lfn.clone(), ..Default::default() },
        })
        .collect()
}

#[tonic::async_trait]
impl PilotService for Api {
    async fn get_job(&self, request: Request<wire::GetJobRequest>) -> Result<Response<wire::GetJobResponse>, Status> {
        let request = request.into_inner();
        if request.queue.is_empty() {
            return Err(Status::invalid_argument("queue is required"));
        }
        if request.n_jobs > 100 {
            return Err(Error::invalid("n_jobs", format!("must be at most 100 (got {})", request.n_jobs)).into());
        }
        if request.wait_ms > MAX_GET_JOB_WAIT_MS {
            return Err(Error::invalid(
                "wait_ms",
                format!("must be at most {MAX_GET_JOB_WAIT_MS} (got {}); poll again instead", request.wait_ms),
            )
            .into());
        }
        let offer = resources(request.resources);
        let n = request.n_jobs.max(1);
        let task = (request.task_id != 0).then_some(TaskId(request.task_id));
        let wait = std::time::Duration::from_millis(u64::from(request.wait_ms));
        let dispatch =
            DispatchRequest { queue: request.queue, node: request.node, worker_id: request.worker_id, offer, n, task };
        let dispatched = self.pilots.dispatch_waiting(&self.service.activations(), dispatch, wait).await?;
        let storage_url = self.service.storage_url();
        let jobs = dispatched
            .into_iter()
            .map(|d| wire::DispatchedJob {
                job_id: d.job.id.0,
                task_id: d.job.task_id.0,
                attempt_nr: d.job.attempt_nr,
                lease_token: d.job.lease_token.clone().unwrap_or_default(),
                command: d.job.command.clone(),
                environment: d.job.environment.clone().into_iter().collect(),
                input_files: d
                    .inputs
                    .into_iter()
                    .map(|f| wire::StagedFile {
                        url: format!("{storage_url}/{}", f.lfn),
                        lfn: f.lfn,
                        size_bytes: f.size_bytes,
                        checksum: f.checksum,
                    })
                    .collect(),
                output_files: d.job.output_files.clone(),
                resources: Some(d.job.resources.into()),
                heartbeat_interval_seconds: self.heartbeat_interval_seconds,
                code_sha256: d.job.environment.get(panda_types::spec::CODE_SHA256_ENV).cloned().unwrap_or_default(),
                job_index: d.job.job_index,
                container_image: d
                    .job
                    .environment
                    .get(panda_types::spec::CONTAINER_IMAGE_ENV)
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(wire::GetJobResponse { jobs, storage_url }))
    }

    async fn update_job(
        &self,
        request: Request<wire::UpdateJobRequest>,
    ) -> Result<Response<wire::UpdateJobResponse>, Status> {
        let update = update_request(request.into_inner())?;
        let (status, command) = self.pilots.update(update).await?;
        Ok(Response::new(update_response(status, command)))
    }

    async fn update_jobs(
        &self,
        request: Request<wire::UpdateJobsRequest>,
    ) -> Result<Response<wire::UpdateJobsResponse>, Status> {
        let updates = request.into_inner().updates;
        if updates.len() > MAX_REPORTS_PER_CALL {
            return Err(Error::invalid(
                "updates",
                format!("at most {MAX_REPORTS_PER_CALL} reports per call (got {}); split them", updates.len()),
            )
            .into());
        }
        let job_ids: Vec<u64> = updates.iter().map(|u| u.job_id).collect();
        // Malformed reports are answered here; the others are applied together.
        let mut answers: Vec<Option<Result<wire::UpdateJobResponse, Status>>> = Vec::with_capacity(updates.len());
        let mut valid = Vec::new();
        for update in updates {
            match update_request(update) {
                Ok(update) => {
                    valid.push(update);
                    answers.push(None);
                }
                Err(status) => answers.push(Some(Err(status))),
            }
        }
        let mut applied = self.pilots.update_many(valid).await?.into_iter();
        let results = answers
            .into_iter()
            .zip(job_ids)
            .map(|(answer, job_id)| {
                let answer = answer.unwrap_or_else(|| match applied.next() {
                    Some(Ok((status, command))) => Ok(update_response(status, command)),
                    Some(Err(error)) => Err(error.into()),
                    None => Err(Status::internal("a report got no answer")),
                });
                match answer {
                    Ok(response) => {
                        wire::UpdateJobResult { job_id, code: 0, message: String::new(), response: Some(response) }
                    }
                    Err(status) => wire::UpdateJobResult {
                        job_id,
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        response: None,
                    },
                }
            })
            .collect();
        Ok(Response::new(wire::UpdateJobsResponse { results }))
    }

    async fn release_leases(
        &self,
        request: Request<wire::ReleaseLeasesRequest>,
    ) -> Result<Response<wire::ReleaseLeasesResponse>, Status> {
        let request = request.into_inner();
        if request.leases.len() > MAX_REPORTS_PER_CALL {
            return Err(Error::invalid(
                "leases",
                format!("at most {MAX_REPORTS_PER_CALL} jobs per call (got {}); split them", request.leases.len()),
            )
            .into());
        }
        let mut leases = Vec::with_capacity(request.leases.len());
        for (i, lease) in request.leases.into_iter().enumerate() {
            if lease.job_id == 0 {
                return Err(Status::invalid_argument(format!("leases[{i}].job_id is required")));
            }
            let job_id = JobId(lease.job_id);
            if lease.lease_token.is_empty() {
                return Err(Status::invalid_argument(format!("leases[{i}] (job {job_id}): lease_token is required")));
            }
            leases.push((job_id, lease.lease_token));
        }
        let reason = if request.reason.is_empty() { "handed back by its holder" } else { request.reason.as_str() };
        let released = self.service.release_leases(&leases, reason).await?;
        Ok(Response::new(wire::ReleaseLeasesResponse {
            released_job_ids: released.into_iter().map(|id| id.0).collect(),
        }))
    }
}

/// A pilot's report, checked for what needs no database.
fn update_request(request: wire::UpdateJobRequest) -> Result<UpdateRequest, Status> {
    let job_id = JobId(required_id("job_id", request.job_id)?);
    if request.lease_token.is_empty() {
        return Err(Status::invalid_argument(format!("job {job_id}: lease_token is required")));
    }
    let status = JobStatus::from_wire("status", request.status).map_err(invalid)?;
    if !status.is_pilot_reportable() {
        return Err(Status::invalid_argument(format!(
            "status {status} cannot be reported by a pilot; use starting, running, finished or failed"
        )));
    }
    for (field, value) in
        [("cpu_time_seconds", request.cpu_time_seconds), ("wall_time_seconds", request.wall_time_seconds)]
    {
        if !value.is_finite() || value < 0.0 {
            return Err(Status::invalid_argument(format!("{field} must be a non-negative number (got {value})")));
        }
    }
    let report = JobReport {
        status,
        exit_code: request.exit_code,
        error_code: request.error_code,
        error_diag: request.error_diag,
        stdout_tail: request.stdout_tail,
        stderr_tail: request.stderr_tail,
        cpu_time_seconds: request.cpu_time_seconds,
        wall_time_seconds: request.wall_time_seconds,
        max_rss_kb: request.max_rss_kb,
        output_files: request
            .output_files
            .into_iter()
            .map(|f| OutputFile { lfn: f.lfn, size_bytes: f.size_bytes, checksum: f.checksum })
            .collect(),
        node: request.node,
    };
    Ok(UpdateRequest { job_id, lease_token: request.lease_token, report })
}

fn update_response(status: JobStatus, command: PilotCommand) -> wire::UpdateJobResponse {
    let command = match command {
        PilotCommand::None => wire::PilotCommand::None,
        PilotCommand::Kill => wire::PilotCommand::Kill,
    };
    wire::UpdateJobResponse { command: command as i32, status: status.to_wire() }
}

#[tonic::async_trait]
impl InternalService for Api {
    async fn insert_jobs(
        &self,
        request: Request<wire::InsertJobsRequest>,
    ) -> Result<Response<wire::InsertJobsResponse>, Status> {
        let request = request.into_inner();
        let task_id = TaskId(required_id("task_id", request.task_id)?);
        let jobs = request
            .jobs
            .into_iter()
            .map(|j| NewJob {
                job_index: j.job_index,
                queue: j.queue,
                command: j.command,
                environment: j.environment.into_iter().collect::<BTreeMap<_, _>>(),
                input_files: j.input_files,
                output_files: j.output_files,
                resources: resources(j.resources),
                priority: j.priority,
                merge: false,
            })
            .collect();
        let batch = match (request.scouting, request.merge, request.more) {
            (false, false, false) => JobBatch::Jobs,
            (true, false, false) => JobBatch::Scouts,
            (false, true, false) => JobBatch::Merge,
            (false, false, true) => JobBatch::More,
            _ => return Err(Status::invalid_argument("scouting, merge and more: a batch is one of them at most")),
        };
        let ids = self.service.insert_jobs_reading(task_id, jobs, batch, request.input_open).await?;
        Ok(Response::new(wire::InsertJobsResponse { job_ids: ids.into_iter().map(|id| id.0).collect() }))
    }

    async fn set_task_pending(
        &self,
        request: Request<wire::SetTaskPendingRequest>,
    ) -> Result<Response<wire::SetTaskPendingResponse>, Status> {
        let request = request.into_inner();
        let task_id = TaskId(required_id("task_id", request.task_id)?);
        if request.reason.is_empty() {
            return Err(Status::invalid_argument("reason is required"));
        }
        self.service.set_task_pending(task_id, request.reason).await?;
        Ok(Response::new(wire::SetTaskPendingResponse {}))
    }

    async fn queue_demand(
        &self,
        request: Request<wire::QueueDemandRequest>,
    ) -> Result<Response<wire::QueueDemandResponse>, Status> {
        let loads = self.service.queue_demand(&request.into_inner().queues).await?;
        Ok(Response::new(wire::QueueDemandResponse { queues: loads.into_iter().map(convert::queue_load).collect() }))
    }

    async fn register_queues(
        &self,
        request: Request<wire::RegisterQueuesRequest>,
    ) -> Result<Response<wire::RegisterQueuesResponse>, Status> {
        let request = request.into_inner();
        if request.harvester_id.is_empty() {
            return Err(Status::invalid_argument("harvester_id is required"));
        }
        let now = Utc::now();
        let queues = request
            .queues
            .into_iter()
            .map(|q| Queue {
                name: q.name,
                status: q.status,
                max_resources: resources(q.max_resources),
                max_workers: q.max_workers,
                harvester_id: request.harvester_id.clone(),
                site: q.site,
                containers: q.containers,
                heartbeat_at: now,
            })
            .collect();
        self.service.register_queues(queues).await?;
        Ok(Response::new(wire::RegisterQueuesResponse {}))
    }

    async fn list_queues(
        &self,
        _request: Request<wire::ListQueuesRequest>,
    ) -> Result<Response<wire::ListQueuesResponse>, Status> {
        let now = Utc::now();
        let queues = self
            .service
            .list_queues()
            .await?
            .into_iter()
            .map(|(q, load, workers)| wire::QueueWithLoad {
                seconds_since_heartbeat: (now - q.heartbeat_at).num_seconds().max(0) as u64,
                queue: Some(convert::queue(q)),
                load: Some(convert::queue_load(load)),
                pilots: workers.pilots,
                workers_by_status: workers.by_status.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(wire::ListQueuesResponse { queues }))
    }

    async fn get_dataset(
        &self,
        request: Request<wire::GetDatasetRequest>,
    ) -> Result<Response<wire::GetDatasetResponse>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let dataset = self.service.get_dataset(&name).await?;
        Ok(Response::new(wire::GetDatasetResponse {
            dataset: Some(wire::Dataset {
                name: dataset.name,
                task_id: dataset.task_id.0,
                status: dataset.status.as_str().to_owned(),
                files: dataset
                    .files
                    .into_iter()
                    .map(|f| common::FileInfo {
                        lfn: f.lfn,
                        dataset: f.dataset,
                        size_bytes: f.size_bytes,
                        checksum: f.checksum,
                        status: f.status,
                        ..Default::default()
                    })
                    .collect(),
            }),
        }))
    }
}
