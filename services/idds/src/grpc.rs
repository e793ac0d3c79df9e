//! WorkflowService adapter: decode, call the engine, encode.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use panda_proto::convert::{WireEnum, timestamp};
use panda_proto::idds::v1 as wire;
use panda_proto::idds::v1::workflow_service_server::WorkflowService;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::graph::model::NodeKind;
use crate::graph::render::{self, Format, Labels};
use crate::graph::{Graph, WorkStatus, WorkflowStatus};
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
        WorkStatus::Bypassed => wire::WorkStatus::Bypassed,
        WorkStatus::Cancelled => wire::WorkStatus::Cancelled,
    }
}

fn workflow_status(status: WorkflowStatus) -> wire::WorkflowStatus {
    match status {
        WorkflowStatus::Running => wire::WorkflowStatus::Running,
        WorkflowStatus::Suspended => wire::WorkflowStatus::Suspended,
        WorkflowStatus::Finished => wire::WorkflowStatus::Finished,
        WorkflowStatus::SubFinished => wire::WorkflowStatus::Subfinished,
        WorkflowStatus::Failed => wire::WorkflowStatus::Failed,
        WorkflowStatus::Cancelled => wire::WorkflowStatus::Cancelled,
    }
}

fn count(outputs: &BTreeMap<String, crate::graph::model::Value>, key: &str) -> u32 {
    outputs.get(key).and_then(crate::graph::model::Value::as_f64).map_or(0, |v| v.max(0.0) as u32)
}

fn encode(workflow: Workflow, works: Vec<Work>, graph: Option<&Graph>) -> wire::Workflow {
    let kinds: BTreeMap<String, &'static str> = graph
        .map(|g| {
            g.walk()
                .into_iter()
                .map(|(path, node)| {
                    let kind = match node.kind {
                        NodeKind::Task(_) if node.hpo.is_some() => "hpo",
                        NodeKind::Task(_) => "task",
                        NodeKind::Subworkflow(_) => "workflow",
                        NodeKind::Loop(_) => "loop",
                    };
                    (path, kind)
                })
                .collect()
        })
        .unwrap_or_default();
    wire::Workflow {
        workflow_id: workflow.id,
        name: workflow.name,
        user: workflow.user,
        status: workflow_status(workflow.status) as i32,
        works: works
            .into_iter()
            .map(|w| {
                let kind = kinds.get(&node_path(&w.key)).copied().unwrap_or("task");
                encode_work(w, kind)
            })
            .collect(),
        created_at: Some(timestamp(workflow.created_at)),
        ended_at: workflow.ended_at.map(timestamp),
    }
}

/// One work for the wire (parents are filled from the graph by the caller).
pub(crate) fn encode_work(w: Work, kind: &str) -> wire::Work {
    wire::Work {
        kind: kind.to_owned(),
        counts: Some(wire::WorkCounts {
            jobs_total: count(&w.outputs, "jobs_total"),
            jobs_finished: count(&w.outputs, "jobs_finished"),
            jobs_failed: count(&w.outputs, "jobs_failed"),
            files_released: count(&w.outputs, "files_released"),
            files_held: count(&w.outputs, "files_held"),
        }),
        outputs: w
            .outputs
            .iter()
            .filter(|(k, _)| !k.starts_with("jobs_") && !k.starts_with("files_"))
            .map(|(k, v)| (k.clone(), serde_json::to_string(v).unwrap_or_default()))
            .collect(),
        key: w.key,
        iteration: w.iteration,
        reason: w.reason,
        name: w.name,
        status: work_status(w.status) as i32,
        parents: Vec::new(),
        task_id: w.task_id.unwrap_or(0),
        task_status: w.task_status.parse::<panda_types::TaskStatus>().map(|s| s.to_wire()).unwrap_or(0),
        submitted_at: w.submitted_at.map(timestamp),
        ended_at: w.ended_at.map(timestamp),
    }
}

/// `loop#2/step` → `loop/step`: the node path of an instance key.
fn node_path(key: &str) -> String {
    key.split('/').map(|part| part.split('#').next().unwrap_or(part)).collect::<Vec<_>>().join("/")
}

fn with_parents(mut workflow: wire::Workflow, graph: &Graph) -> wire::Workflow {
    let parents: BTreeMap<String, Vec<String>> = graph
        .walk()
        .into_iter()
        .map(|(path, node)| {
            let mut p: Vec<String> = node.hard_parents().into_iter().map(str::to_owned).collect();
            p.extend(node.condition_parents().into_iter().map(str::to_owned));
            p.sort();
            p.dedup();
            (path, p)
        })
        .collect();
    for work in &mut workflow.works {
        work.parents = parents.get(&node_path(&work.key)).cloned().unwrap_or_default();
    }
    workflow
}

fn required_id(id: u64) -> Result<u64, Status> {
    if id == 0 { Err(Status::invalid_argument("workflow_id is required")) } else { Ok(id) }
}

fn format(value: i32) -> Result<Format, Status> {
    match wire::GraphFormat::try_from(value) {
        Ok(wire::GraphFormat::Unspecified | wire::GraphFormat::Text) => Ok(Format::Text),
        Ok(wire::GraphFormat::Dot) => Ok(Format::Dot),
        Ok(wire::GraphFormat::Mermaid) => Ok(Format::Mermaid),
        Err(_) => Err(Status::invalid_argument(format!("format must be text, dot or mermaid (got {value})"))),
    }
}

impl Api {
    async fn current(&self, id: u64) -> Result<wire::Workflow, Status> {
        current(&self.engine, id).await
    }
}

/// A workflow as GetWorkflow answers it (works with their kinds and parents).
pub(crate) async fn current(engine: &Engine, id: u64) -> Result<wire::Workflow, Status> {
    let (graph, works) = engine.get_graph(id).await?;
    let (workflow, _) = engine.get_workflow(id).await?;
    Ok(with_parents(encode(workflow, works, Some(&graph)), &graph))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<wire::WatchWorkflowResponse, Status>> + Send>>;

#[tonic::async_trait]
impl WorkflowService for Api {
    type WatchWorkflowStream = WatchStream;

    async fn submit_workflow(
        &self,
        request: Request<wire::SubmitWorkflowRequest>,
    ) -> Result<Response<wire::SubmitWorkflowResponse>, Status> {
        let request = request.into_inner();
        let workflow_id = match (request.spec, request.document) {
            (Some(spec), None) => self.engine.submit_workflow(spec).await?,
            (None, Some(document)) => self.engine.submit_document(document).await?,
            (Some(_), Some(_)) => return Err(Status::invalid_argument("give spec or document, not both")),
            (None, None) => return Err(Status::invalid_argument("spec or document is required")),
        };
        Ok(Response::new(wire::SubmitWorkflowResponse { workflow_id }))
    }

    async fn get_workflow(
        &self,
        request: Request<wire::GetWorkflowRequest>,
    ) -> Result<Response<wire::GetWorkflowResponse>, Status> {
        let id = required_id(request.into_inner().workflow_id)?;
        Ok(Response::new(wire::GetWorkflowResponse { workflow: Some(self.current(id).await?) }))
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
            workflows: workflows.into_iter().map(|(w, works)| encode(w, works, None)).collect(),
        }))
    }

    async fn watch_workflow(
        &self,
        request: Request<wire::WatchWorkflowRequest>,
    ) -> Result<Response<Self::WatchWorkflowStream>, Status> {
        let id = required_id(request.into_inner().workflow_id)?;
        // Subscribe before the first read, so no change between them is missed.
        let mut changes = self.engine.subscribe();
        let first = self.current(id).await?;
        let api = Api { engine: self.engine.clone() };
        let stream = async_stream(first, move |tx| async move {
            loop {
                match changes.recv().await {
                    Ok(changed) if changed != id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
                let workflow = match api.current(id).await {
                    Ok(workflow) => workflow,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let ended =
                    WorkflowStatus::ALL.iter().any(|s| s.is_final() && workflow_status(*s) as i32 == workflow.status);
                if tx.send(Ok(wire::WatchWorkflowResponse { workflow: Some(workflow) })).await.is_err() || ended {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn abort_workflow(
        &self,
        request: Request<wire::AbortWorkflowRequest>,
    ) -> Result<Response<wire::AbortWorkflowResponse>, Status> {
        let id = required_id(request.into_inner().workflow_id)?;
        self.engine.abort(id).await?;
        Ok(Response::new(wire::AbortWorkflowResponse { workflow: Some(self.current(id).await?) }))
    }

    async fn retry_workflow(
        &self,
        request: Request<wire::RetryWorkflowRequest>,
    ) -> Result<Response<wire::RetryWorkflowResponse>, Status> {
        let id = required_id(request.into_inner().workflow_id)?;
        let retried = self.engine.retry(id).await?;
        Ok(Response::new(wire::RetryWorkflowResponse { workflow: Some(self.current(id).await?), retried }))
    }

    async fn suspend_workflow(
        &self,
        request: Request<wire::SuspendWorkflowRequest>,
    ) -> Result<Response<wire::SuspendWorkflowResponse>, Status> {
        let id = required_id(request.into_inner().workflow_id)?;
        self.engine.suspend(id, true).await?;
        Ok(Response::new(wire::SuspendWorkflowResponse { workflow: Some(self.current(id).await?) }))
    }

    async fn resume_workflow(
        &self,
        request: Request<wire::ResumeWorkflowRequest>,
    ) -> Result<Response<wire::ResumeWorkflowResponse>, Status> {
        let id = required_id(request.into_inner().workflow_id)?;
        self.engine.suspend(id, false).await?;
        Ok(Response::new(wire::ResumeWorkflowResponse { workflow: Some(self.current(id).await?) }))
    }

    async fn get_workflow_graph(
        &self,
        request: Request<wire::GetWorkflowGraphRequest>,
    ) -> Result<Response<wire::GetWorkflowGraphResponse>, Status> {
        let request = request.into_inner();
        let id = required_id(request.workflow_id)?;
        let format = format(request.format)?;
        let (graph, works) = self.engine.get_graph(id).await?;
        // Label each node with its latest instance's state (loops: the running iteration).
        let mut labels = Labels::new();
        for work in works {
            let mut label = work.status.as_str().to_owned();
            if work.iteration > 0 {
                label.push_str(&format!(" (iteration {})", work.iteration));
            }
            if let Some(task_id) = work.task_id {
                label.push_str(&format!(" task {task_id}"));
            }
            labels.insert(node_path(&work.key), label);
        }
        Ok(Response::new(wire::GetWorkflowGraphResponse { graph: render::render(&graph, format, &labels) }))
    }

    async fn check_workflow(
        &self,
        request: Request<wire::CheckWorkflowRequest>,
    ) -> Result<Response<wire::CheckWorkflowResponse>, Status> {
        let request = request.into_inner();
        let format = format(request.format)?;
        let document = request.document.ok_or_else(|| Status::invalid_argument("document is required"))?;
        let (graph, _) = crate::service::compile(&document)?;
        Ok(Response::new(wire::CheckWorkflowResponse {
            nodes: graph.walk().len() as u32,
            graph: render::render(&graph, format, &Labels::new()),
        }))
    }
}

/// A stream that yields `first`, then whatever `producer` sends.
fn async_stream<F, Fut>(first: wire::Workflow, producer: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<wire::WatchWorkflowResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let ended =
        first.status != wire::WorkflowStatus::Running as i32 && first.status != wire::WorkflowStatus::Suspended as i32;
    let first = Ok(wire::WatchWorkflowResponse { workflow: Some(first) });
    if !ended {
        tokio::spawn(producer(tx));
    }
    Box::pin(futures::stream::once(async move { first }).chain(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

use futures::StreamExt;
