//! ReleaseService: decode, call `Service::release_jobs`, encode.

use panda_proto::server::v1 as wire;
use panda_proto::server::v1::release_service_server::ReleaseService;
use panda_types::TaskId;
use tonic::{Request, Response, Status};

use crate::service::Service;

/// Serves ReleaseService.
#[derive(Clone)]
pub struct ReleaseApi {
    service: Service,
}

impl ReleaseApi {
    /// An adapter over the service.
    pub fn new(service: Service) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl ReleaseService for ReleaseApi {
    async fn release_jobs(
        &self,
        request: Request<wire::ReleaseJobsRequest>,
    ) -> Result<Response<wire::ReleaseJobsResponse>, Status> {
        let request = request.into_inner();
        if request.task_id == 0 {
            return Err(Status::invalid_argument("task_id is required"));
        }
        let done = self
            .service
            .release_jobs(TaskId(request.task_id), &request.release, &request.close, &request.close_reason)
            .await?;
        Ok(Response::new(wire::ReleaseJobsResponse {
            released: done.released.into_iter().map(|id| id.0).collect(),
            closed: done.closed.into_iter().map(|id| id.0).collect(),
            unchanged: done.unchanged,
            held: done.held,
        }))
    }
}
