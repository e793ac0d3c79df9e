//! WorkerReportService: a harvester's propagator reports its workers per queue.

use panda_proto::server::v1 as wire;
use panda_proto::server::v1::worker_report_service_server::WorkerReportService;
use tonic::{Request, Response, Status};

use crate::model::WorkerReport;
use crate::service::Service;

/// The WorkerReportService adapter.
#[derive(Clone)]
pub struct WorkerReportApi {
    service: Service,
}

impl WorkerReportApi {
    /// An adapter over the service.
    pub fn new(service: Service) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl WorkerReportService for WorkerReportApi {
    async fn report_workers(
        &self,
        request: Request<wire::ReportWorkersRequest>,
    ) -> Result<Response<wire::ReportWorkersResponse>, Status> {
        let request = request.into_inner();
        let reports = request
            .queues
            .into_iter()
            .map(|q| WorkerReport {
                queue: q.queue,
                by_status: q.workers_by_status.into_iter().collect(),
                live_worker_ids: q.live_worker_ids,
            })
            .collect();
        let kills = self.service.report_workers(&request.harvester_id, reports).await?;
        Ok(Response::new(wire::ReportWorkersResponse {
            kills: kills
                .into_iter()
                .map(|k| wire::WorkerKill {
                    queue: k.queue,
                    worker_id: k.worker_id,
                    job_id: k.job_id.0,
                    reason: k.reason,
                })
                .collect(),
        }))
    }
}
