//! DrivenWorkflowService adapter: decode, call the engine, encode.

use panda_proto::idds::v1 as wire;
use panda_proto::idds::v1::driven_workflow_service_server::DrivenWorkflowService;
use tonic::{Request, Response, Status};

use crate::graph::WorkflowStatus;
use crate::service::Engine;

/// The gRPC adapter.
pub struct DrivenApi {
    /// The engine.
    pub engine: Engine,
}

impl DrivenApi {
    fn lease_seconds(&self) -> u32 {
        u32::try_from(self.engine.driver_lease().as_secs()).unwrap_or(u32::MAX)
    }
}

fn required_id(id: u64) -> Result<u64, Status> {
    if id == 0 { Err(Status::invalid_argument("workflow_id is required")) } else { Ok(id) }
}

#[tonic::async_trait]
impl DrivenWorkflowService for DrivenApi {
    async fn create_driven_workflow(
        &self,
        request: Request<wire::CreateDrivenWorkflowRequest>,
    ) -> Result<Response<wire::CreateDrivenWorkflowResponse>, Status> {
        let request = request.into_inner();
        let workflow_id = self.engine.create_driven(request.name, request.user).await?;
        Ok(Response::new(wire::CreateDrivenWorkflowResponse { workflow_id, lease_seconds: self.lease_seconds() }))
    }

    async fn add_work(
        &self,
        request: Request<wire::AddWorkRequest>,
    ) -> Result<Response<wire::AddWorkResponse>, Status> {
        let request = request.into_inner();
        let workflow_id = required_id(request.workflow_id)?;
        let parents = request.parents.clone();
        let added = self.engine.add_work(workflow_id, request.key, request.parents, request.task).await?;
        let mut work = crate::grpc::encode_work(added.work, "task");
        work.parents = parents;
        Ok(Response::new(wire::AddWorkResponse { work: Some(work), created: added.created }))
    }

    async fn close_workflow(
        &self,
        request: Request<wire::CloseWorkflowRequest>,
    ) -> Result<Response<wire::CloseWorkflowResponse>, Status> {
        let request = request.into_inner();
        let workflow_id = required_id(request.workflow_id)?;
        let status = match wire::WorkflowStatus::try_from(request.status) {
            Ok(wire::WorkflowStatus::Finished) => WorkflowStatus::Finished,
            Ok(wire::WorkflowStatus::Failed) => WorkflowStatus::Failed,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "status must be FINISHED or FAILED (got {})",
                    request.status
                )));
            }
        };
        if request.reason.len() > 4096 {
            return Err(Status::invalid_argument("reason must be at most 4096 bytes"));
        }
        self.engine.close(workflow_id, status, &request.reason).await?;
        let workflow = crate::grpc::current(&self.engine, workflow_id).await?;
        Ok(Response::new(wire::CloseWorkflowResponse { workflow: Some(workflow) }))
    }

    async fn renew_driver(
        &self,
        request: Request<wire::RenewDriverRequest>,
    ) -> Result<Response<wire::RenewDriverResponse>, Status> {
        let workflow_id = required_id(request.into_inner().workflow_id)?;
        self.engine.renew_driver(workflow_id).await?;
        Ok(Response::new(wire::RenewDriverResponse { lease_seconds: self.lease_seconds() }))
    }
}
