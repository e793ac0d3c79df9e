//! WorkflowService adapter.

use panda_proto::convert::{WireEnum, timestamp};
use panda_proto::idds::v1 as wire;
use panda_proto::idds::v1::workflow_service_server::WorkflowService;
use tonic::{Request, Response, Status};

use crate::dag::{WorkStatus, WorkflowStatus};
use crate::service::Engine;
use crate::store::{Work, Workflow};

/// The gRPC adapter.
pub struct Api {
    /// The engine.
    pub engine: Engine,
}

fn work_status(status: WorkStatus) -> wire::WorkStatus {
    match status {
        WorkStatus::Waiting => wire::WorkStatus::Waiting,
        WorkStatus::Ready => wire::WorkStatus::Ready,
        WorkStatus::Submitted => wire::WorkStatus::Submitted,
        WorkStatus::Finished => wire::WorkStatus::Finished,
        WorkStatus::SubFinished => wire::WorkStatus::Subfinished,
        WorkStatus::Failed => wire::WorkStatus::Failed,
        WorkStatus::Skipped => wire::WorkStatus::Skipped,
    }
}

fn workflow_status(status: WorkflowStatus) -> wire::WorkflowStatus {
    match status {
        WorkflowStatus::Running => wire::WorkflowStatus::Running,
        WorkflowStatus::Finished => wire::WorkflowStatus::Finished,
        WorkflowStatus::SubFinished => wire::WorkflowStatus::Subfinished,
        WorkflowStatus::Failed => wire::WorkflowStatus::Failed,
    }
}

fn encode(workflow: Workflow, works: Vec<Work>) -> wire::Workflow {
    wire::Workflow {
        workflow_id: workflow.id,
        name: workflow.name,
        user: workflow.user,
        status: workflow_status(workflow.status) as i32,
        works: works
            .into_iter()
            .map(|w| wire::Work {
                name: w.name,
                status: work_status(w.status) as i32,
                parents: w.parents,
                task_id: w.task_id.unwrap_or(0),
                task_status: w.task_status.parse::<panda_types::TaskStatus>().map(|s| s.to_wire()).unwrap_or(0),
                submitted_at: w.submitted_at.map(timestamp),
                ended_at: w.ended_at.map(timestamp),
            })
            .collect(),
        created_at: Some(timestamp(workflow.created_at)),
        ended_at: workflow.ended_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl WorkflowService for Api {
    async fn submit_workflow(
        &self,
        request: Request<wire::SubmitWorkflowRequest>,
    ) -> Result<Response<wire::SubmitWorkflowResponse>, Status> {
        let spec = request.into_inner().spec.ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let workflow_id = self.engine.submit_workflow(spec).await?;
        Ok(Response::new(wire::SubmitWorkflowResponse { workflow_id }))
    }

    async fn get_workflow(
        &self,
        request: Request<wire::GetWorkflowRequest>,
    ) -> Result<Response<wire::GetWorkflowResponse>, Status> {
        let id = request.into_inner().workflow_id;
        if id == 0 {
            return Err(Status::invalid_argument("workflow_id is required"));
        }
        let (workflow, works) = self.engine.get_workflow(id).await?;
        Ok(Response::new(wire::GetWorkflowResponse { workflow: Some(encode(workflow, works)) }))
    }

    async fn list_workflows(
        &self,
        request: Request<wire::ListWorkflowsRequest>,
    ) -> Result<Response<wire::ListWorkflowsResponse>, Status> {
        let limit = request.into_inner().limit;
        if limit > 1000 {
            return Err(Status::invalid_argument(format!("limit must be at most 1000 (got {limit})")));
        }
        let limit = if limit == 0 { 100 } else { u64::from(limit) };
        let workflows = self.engine.list_workflows(limit).await?;
        Ok(Response::new(wire::ListWorkflowsResponse {
            workflows: workflows.into_iter().map(|(w, works)| encode(w, works)).collect(),
        }))
    }
}
