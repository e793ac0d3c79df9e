//! HarvesterService: queues and workers of this instance.

use std::collections::HashMap;

use panda_proto::convert::{WireEnum, timestamp};
use panda_proto::harvester::v1 as wire;
use panda_proto::harvester::v1::harvester_service_server::HarvesterService;
use tonic::{Request, Response, Status};

use crate::provisioner::Provisioner;
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

#[tonic::async_trait]
impl HarvesterService for Api {
    async fn list_queues(
        &self,
        _request: Request<wire::ListQueuesRequest>,
    ) -> Result<Response<wire::ListQueuesResponse>, Status> {
        let counts = store::counts(self.provisioner.db()).await.map_err(db_error)?;
        let queues = self
            .provisioner
            .queues
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
            && !self.provisioner.queues.contains_key(queue)
        {
            return Err(Status::not_found(format!("queue {queue:?} is not served by this harvester")));
        }
        let limit = if request.limit == 0 { 100 } else { u64::from(request.limit) };
        let workers = store::list(self.provisioner.db(), queue, limit).await.map_err(db_error)?;
        Ok(Response::new(wire::ListWorkersResponse {
            workers: workers
                .into_iter()
                .map(|w| wire::Worker {
                    worker_id: w.id.to_string(),
                    queue: w.queue,
                    status: w.status.to_wire(),
                    batch_id: w.batch_id,
                    exit_code: w.exit_code,
                    diag: w.diag,
                    submitted_at: w.submitted_at.map(timestamp),
                    ended_at: w.ended_at.map(timestamp),
                    work_dir: w.work_dir,
                })
                .collect(),
        }))
    }
}
