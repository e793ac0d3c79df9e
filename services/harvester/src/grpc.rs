//! HarvesterService: queues and workers of this instance.

use std::collections::HashMap;

use panda_proto::convert::{WireEnum, timestamp};
use panda_proto::harvester::v1 as wire;
use panda_proto::harvester::v1::harvester_service_server::HarvesterService;
use tonic::{Request, Response, Status};

use crate::provisioner::{KillError, Provisioner};
use crate::store;

/// The gRPC adapter.
pub struct Api {
    /// The provisioner whose state is shown.
    pub provisioner: Provisioner,
}

fn db_error(error: sea_orm::DbErr) -> Status {
    tracing::error!(%error, "harvester database failed");
    Status::unavailable("harvester database unavailable; retry later")
}

/// Largest log tail a GetWorker call returns per log.
const MAX_LOG_TAIL: u32 = 1 << 20;

fn parse_worker_id(text: &str) -> Result<i64, Status> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Status::invalid_argument(format!("worker_id: {text:?} is not a worker ID (a positive integer)")))
}

fn to_wire(w: store::Worker) -> wire::Worker {
    wire::Worker {
        worker_id: w.id.to_string(),
        queue: w.queue,
        status: w.status.to_wire(),
        batch_id: w.batch_id,
        exit_code: w.exit_code,
        diag: w.diag,
        submitted_at: w.submitted_at.map(timestamp),
        ended_at: w.ended_at.map(timestamp),
        work_dir: w.work_dir,
    }
}

#[tonic::async_trait]
impl HarvesterService for Api {
    async fn list_queues(
        &self,
        _request: Request<wire::ListQueuesRequest>,
    ) -> Result<Response<wire::ListQueuesResponse>, Status> {
        let counts = store::counts(self.provisioner.db()).await.map_err(db_error)?;
        let queues = self
            .provisioner
            .queues()
            .values()
            .map(|q| {
                let workers_by_status: HashMap<String, u32> = counts
                    .iter()
                    .filter(|(queue, _, _)| *queue == q.name)
                    .map(|(_, status, n)| (status.as_str().to_owned(), *n))
                    .collect();
                wire::QueueSummary {
                    name: q.name.clone(),
                    plugin: q.config.plugin.name().to_owned(),
                    max_workers: q.config.max_workers,
                    workers_by_status,
                }
            })
            .collect();
        Ok(Response::new(wire::ListQueuesResponse { queues }))
    }

    async fn list_workers(
        &self,
        request: Request<wire::ListWorkersRequest>,
    ) -> Result<Response<wire::ListWorkersResponse>, Status> {
        let request = request.into_inner();
        if request.limit > 10_000 {
            return Err(Status::invalid_argument(format!("limit must be at most 10000 (got {})", request.limit)));
        }
        let queue = (!request.queue.is_empty()).then_some(request.queue.as_str());
        if let Some(queue) = queue
            && !self.provisioner.queues().contains_key(queue)
        {
            return Err(Status::not_found(format!("queue {queue:?} is not served by this harvester")));
        }
        let limit = if request.limit == 0 { 100 } else { u64::from(request.limit) };
        let workers = store::list(self.provisioner.db(), queue, limit).await.map_err(db_error)?;
        Ok(Response::new(wire::ListWorkersResponse { workers: workers.into_iter().map(to_wire).collect() }))
    }

    async fn get_worker(
        &self,
        request: Request<wire::GetWorkerRequest>,
    ) -> Result<Response<wire::GetWorkerResponse>, Status> {
        let request = request.into_inner();
        let worker_id = parse_worker_id(&request.worker_id)?;
        if request.log_tail_bytes > MAX_LOG_TAIL {
            return Err(Status::invalid_argument(format!(
                "log_tail_bytes must be at most {MAX_LOG_TAIL} (got {})",
                request.log_tail_bytes
            )));
        }
        let tail = if request.log_tail_bytes == 0 { 16_384 } else { request.log_tail_bytes };
        let worker = store::get(self.provisioner.db(), worker_id)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Status::not_found(format!("worker_id: worker {worker_id} not found")))?;
        let queues = self.provisioner.queues();
        let (plugin, logs, logs_diag) = match queues.get(&worker.queue) {
            None => (String::new(), Vec::new(), format!("queue {:?} is not served any more", worker.queue)),
            Some(queue) => {
                let reference = crate::plugins::WorkerRef {
                    worker_id: worker.id.to_string(),
                    batch_id: worker.batch_id.clone(),
                    work_dir: worker.work_dir.clone().into(),
                };
                let (logs, diag) = match queue.plugins.sweeper.logs(&reference, u64::from(tail)).await {
                    Ok(logs) if logs.is_empty() => (logs, "no logs found".to_owned()),
                    Ok(logs) => (logs, String::new()),
                    Err(diag) => (Vec::new(), diag),
                };
                (queue.config.plugin.name().to_owned(), logs, diag)
            }
        };
        Ok(Response::new(wire::GetWorkerResponse {
            worker: Some(to_wire(worker)),
            plugin,
            logs: logs
                .into_iter()
                .map(|l| wire::WorkerLog { name: l.name, text: l.text, truncated: l.truncated })
                .collect(),
            logs_diag,
        }))
    }

    async fn kill_worker(
        &self,
        request: Request<wire::KillWorkerRequest>,
    ) -> Result<Response<wire::KillWorkerResponse>, Status> {
        let request = request.into_inner();
        let worker_id = parse_worker_id(&request.worker_id)?;
        if request.reason.len() > 1024 {
            return Err(Status::invalid_argument("reason must be at most 1024 bytes"));
        }
        let reason = if request.reason.trim().is_empty() { "killed by an administrator" } else { &request.reason };
        match self.provisioner.kill_worker(worker_id, reason).await {
            Ok(status) => Ok(Response::new(wire::KillWorkerResponse { status: status.to_wire() })),
            Err(KillError::NotFound(id)) => Err(Status::not_found(format!("worker_id: worker {id} not found"))),
            Err(error @ KillError::UnknownQueue { .. }) => Err(Status::failed_precondition(error.to_string())),
            Err(error @ KillError::Plugin { .. }) => Err(Status::unavailable(error.to_string())),
            Err(KillError::Cycle(error)) => {
                tracing::error!(%error, "kill failed");
                Err(Status::unavailable("harvester database unavailable; retry later"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_validated_naming_the_field() {
        assert_eq!(parse_worker_id("42").unwrap(), 42);
        for bad in ["", "0", "-3", "abc", "1.5"] {
            let status = parse_worker_id(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(status.message().starts_with("worker_id: "), "{}", status.message());
        }
    }
}
