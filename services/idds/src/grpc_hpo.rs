//! HpoService adapter: decode, call the engine, encode.

use panda_proto::convert::timestamp;
use panda_proto::idds::v1 as wire;
use panda_proto::idds::v1::hpo_service_server::HpoService;
use panda_types::FieldError;
use tonic::{Request, Response, Status};

use crate::hpo::{PointStatus, StudySpec};
use crate::hpo_store::StoredPoint;
use crate::service::{Engine, Error, StudyView};

/// The gRPC adapter.
pub struct HpoApi {
    /// The engine.
    pub engine: Engine,
}

fn point(p: &StoredPoint) -> wire::HpoPoint {
    wire::HpoPoint {
        seq: p.seq,
        iteration: p.iteration,
        params_json: serde_json::to_string(&p.params).unwrap_or_default(),
        status: p.status.as_str().to_owned(),
        loss: p.loss,
        task_id: p.task_id.unwrap_or(0),
        reason: p.reason.clone(),
    }
}

/// A study for the wire (with its points when `with_points`).
pub fn encode(view: &StudyView, with_points: bool) -> wire::Study {
    let study = &view.study;
    let best = view.best();
    wire::Study {
        study_id: study.id,
        name: study.name.clone(),
        user: study.user.clone(),
        status: study.status.as_str().to_owned(),
        reason: study.reason.clone(),
        optimizer: study.spec.optimizer.label(),
        max_points: study.spec.max_points,
        points_per_iteration: study.spec.points_per_iteration,
        spec_json: serde_json::to_string(&study.spec).unwrap_or_default(),
        workflow_id: study.workflow_id.unwrap_or(0),
        work_key: study.work_key.clone(),
        has_task: !study.task_json.is_empty(),
        created_at: Some(timestamp(study.created_at)),
        ended_at: study.ended_at.map(timestamp),
        points: if with_points { view.points.iter().map(point).collect() } else { Vec::new() },
        points_total: view.points.len() as u32,
        points_done: view.points.iter().filter(|p| p.status == PointStatus::Done).count() as u32,
        points_failed: view.points.iter().filter(|p| p.status == PointStatus::Failed).count() as u32,
        best_seq: best.map_or(0, |p| p.seq),
        best_loss: best.and_then(|p| p.loss),
        best_params_json: best.map(|p| serde_json::to_string(&p.params).unwrap_or_default()).unwrap_or_default(),
    }
}

fn required(id: u64) -> Result<u64, Status> {
    if id == 0 { Err(Status::invalid_argument("study_id is required")) } else { Ok(id) }
}

#[tonic::async_trait]
impl HpoService for HpoApi {
    async fn create_study(
        &self,
        request: Request<wire::CreateStudyRequest>,
    ) -> Result<Response<wire::CreateStudyResponse>, Status> {
        let request = request.into_inner();
        let spec: StudySpec = serde_yaml_ng::from_str(&request.spec)
            .map_err(|e| Error::InvalidStudy(vec![FieldError::new("spec", e.to_string())]))?;
        let task = request.task.map(|t| crate::service::template_from_wire(t, &request.name));
        let study_id = self.engine.create_study(&request.name, &request.user, spec, task).await?;
        Ok(Response::new(wire::CreateStudyResponse { study_id }))
    }

    async fn get_study(
        &self,
        request: Request<wire::GetStudyRequest>,
    ) -> Result<Response<wire::GetStudyResponse>, Status> {
        let view = self.engine.get_study(required(request.into_inner().study_id)?).await?;
        Ok(Response::new(wire::GetStudyResponse { study: Some(encode(&view, true)) }))
    }

    async fn list_studies(
        &self,
        request: Request<wire::ListStudiesRequest>,
    ) -> Result<Response<wire::ListStudiesResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 50,
            n => u64::from(n.min(1000)),
        };
        let views = self.engine.list_studies(limit).await?;
        Ok(Response::new(wire::ListStudiesResponse { studies: views.iter().map(|v| encode(v, false)).collect() }))
    }

    async fn ask_points(
        &self,
        request: Request<wire::AskPointsRequest>,
    ) -> Result<Response<wire::AskPointsResponse>, Status> {
        let request = request.into_inner();
        let points = self.engine.ask_points(required(request.study_id)?, request.n).await?;
        Ok(Response::new(wire::AskPointsResponse { points: points.iter().map(point).collect() }))
    }

    async fn tell_loss(
        &self,
        request: Request<wire::TellLossRequest>,
    ) -> Result<Response<wire::TellLossResponse>, Status> {
        let request = request.into_inner();
        if request.seq == 0 {
            return Err(Status::invalid_argument("seq is required (the point's number, from 1)"));
        }
        let status =
            self.engine.tell_loss(required(request.study_id)?, request.seq, request.loss, &request.reason).await?;
        Ok(Response::new(wire::TellLossResponse { study_status: status.as_str().to_owned() }))
    }
}
