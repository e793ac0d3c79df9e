//! CatalogService and BrokerageService: decode, call `crate::catalog`, encode.

use panda_proto::common::v1 as common;
use panda_proto::server::v1 as wire;
use panda_proto::server::v1::brokerage_service_server::BrokerageService;
use panda_proto::server::v1::catalog_service_server::CatalogService;
use panda_proto::server::v1::generation_service_server::GenerationService;
use panda_types::TaskId;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::catalog::Catalog;
use crate::service::{JobRetry, Service};
use crate::store::CatalogEntry;

/// Serves CatalogService and BrokerageService.
#[derive(Clone)]
pub struct CatalogApi {
    catalog: Catalog,
}

impl CatalogApi {
    /// An adapter over the catalog.
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn register_dataset(
        &self,
        request: Request<wire::RegisterDatasetRequest>,
    ) -> Result<Response<wire::RegisterDatasetResponse>, Status> {
        let request = request.into_inner();
        let files = request
            .files
            .into_iter()
            .map(|f| CatalogEntry {
                lfn: f.lfn,
                size_bytes: f.size_bytes,
                checksum: f.checksum,
                n_events: f.n_events,
                replicas: f.replicas,
            })
            .collect();
        self.catalog.register_dataset(&request.name, files).await?;
        Ok(Response::new(wire::RegisterDatasetResponse {}))
    }

    async fn get_dataset_contents(
        &self,
        request: Request<wire::GetDatasetContentsRequest>,
    ) -> Result<Response<wire::GetDatasetContentsResponse>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let (dataset, mut details) = self.catalog.dataset_contents(&name).await?;
        Ok(Response::new(wire::GetDatasetContentsResponse {
            dataset: Some(wire::Dataset {
                name: dataset.name,
                task_id: dataset.task_id.0,
                status: dataset.status.as_str().to_owned(),
                files: dataset
                    .files
                    .into_iter()
                    .map(|f| {
                        let (n_events, replicas) = details.remove(&f.lfn).unwrap_or_default();
                        common::FileInfo {
                            lfn: f.lfn,
                            dataset: f.dataset,
                            size_bytes: f.size_bytes,
                            checksum: f.checksum,
                            status: f.status,
                            n_events,
                            replicas,
                        }
                    })
                    .collect(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl BrokerageService for CatalogApi {
    async fn record_brokerage(
        &self,
        request: Request<wire::RecordBrokerageRequest>,
    ) -> Result<Response<wire::RecordBrokerageResponse>, Status> {
        let explanation =
            request.into_inner().explanation.ok_or_else(|| Status::invalid_argument("explanation is required"))?;
        if explanation.task_id == 0 {
            return Err(Status::invalid_argument("explanation.task_id is required"));
        }
        let task_id = TaskId(explanation.task_id);
        let (pending, summary) = (explanation.pending, explanation.summary.clone());
        self.catalog.record_brokerage(task_id, pending, &summary, explanation.encode_to_vec()).await?;
        Ok(Response::new(wire::RecordBrokerageResponse {}))
    }

    async fn get_brokerage(
        &self,
        request: Request<wire::GetBrokerageRequest>,
    ) -> Result<Response<wire::GetBrokerageResponse>, Status> {
        let task_id = request.into_inner().task_id;
        if task_id == 0 {
            return Err(Status::invalid_argument("task_id is required"));
        }
        let body = self.catalog.brokerage(TaskId(task_id)).await?;
        let explanation = wire::BrokerageExplanation::decode(body.as_slice())
            .map_err(|e| Status::internal(format!("stored brokerage of task {task_id} does not decode: {e}")))?;
        Ok(Response::new(wire::GetBrokerageResponse { explanation: Some(explanation) }))
    }
}

/// Serves GenerationService.
#[derive(Clone)]
pub struct GenerationApi {
    service: Service,
}

impl GenerationApi {
    /// An adapter over the service.
    pub fn new(service: Service) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl GenerationService for GenerationApi {
    async fn retry_jobs(
        &self,
        request: Request<wire::RetryJobsRequest>,
    ) -> Result<Response<wire::RetryJobsResponse>, Status> {
        let request = request.into_inner();
        if request.task_id == 0 {
            return Err(Status::invalid_argument("task_id is required"));
        }
        let retries = request
            .jobs
            .into_iter()
            .map(|j| JobRetry {
                job_id: panda_types::JobId(j.job_id),
                resources: panda_proto::convert::resources(j.resources),
                change: j.change,
                queue: j.queue,
            })
            .collect();
        let ids = self.service.retry_jobs(TaskId(request.task_id), retries).await?;
        Ok(Response::new(wire::RetryJobsResponse { job_ids: ids.into_iter().map(|id| id.0).collect() }))
    }

    async fn break_task(
        &self,
        request: Request<wire::BreakTaskRequest>,
    ) -> Result<Response<wire::BreakTaskResponse>, Status> {
        let request = request.into_inner();
        if request.task_id == 0 {
            return Err(Status::invalid_argument("task_id is required"));
        }
        if request.reason.trim().is_empty() {
            return Err(Status::invalid_argument("reason is required"));
        }
        self.service.break_task(TaskId(request.task_id), request.reason).await?;
        Ok(Response::new(wire::BreakTaskResponse {}))
    }
}
