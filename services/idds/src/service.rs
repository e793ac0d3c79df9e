//! The workflow engine's use cases: accept a DAG, submit each work as a task when its parents
//! finished, follow task events to the end. Submissions carry an idempotency key
//! (`idds-<workflow>-<work>`), so a retried or repeated submission never makes a second task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use panda_bus::Envelope;
use panda_bus::outbox::{self, Outbox};
use panda_client::ServerClient;
use panda_proto::events::v1::WorkflowStatusChanged;
use panda_proto::idds::v1 as wire;
use panda_proto::server::v1 as server;
use panda_runtime::{ErrorCode, ServiceError};
use panda_types::{FieldError, StateMachine, TaskSpec, TaskStatus};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use tokio::sync::{Mutex, Notify};
use tracing::{info, instrument, warn};

use crate::dag::{self, WorkDraft, WorkStatus, WorkflowStatus};
use crate::store::{self, Work, Workflow};

/// What can go wrong in idds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workflow is invalid.
    #[error("invalid workflow: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldError>),
    /// No such workflow.
    #[error("workflow {workflow_id} not found")]
    NotFound {
        /// The ID asked for.
        workflow_id: u64,
    },
    /// The database failed.
    #[error("idds database operation failed")]
    Db(#[from] DbErr),
    /// The server failed.
    #[error("server call {call} failed: {status}")]
    Server {
        /// Which call.
        call: &'static str,
        /// What it said.
        status: tonic::Status,
    },
}

impl ServiceError for Error {
    fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::Db(DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) => ErrorCode::Unavailable,
            Error::Db(_) => ErrorCode::Internal,
            Error::Server { status, .. } if panda_client::is_transient(status, true) => ErrorCode::Unavailable,
            Error::Server { .. } => ErrorCode::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        panda_runtime::to_status(&error)
    }
}

/// The consumer name under which idds records processed task events.
const CONSUMER: &str = "idds.tasks";

/// How an event was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// It changed a work.
    Applied,
    /// Not a task of ours (or nothing to change).
    Ignored,
    /// A submission is in flight that may own this task: try again later.
    NotYet,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Ended {
    status: &'static str,
}

/// The engine's counters.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    works_submitted: prometheus_client::metrics::counter::Counter,
    workflows_ended: prometheus_client::metrics::family::Family<Ended, prometheus_client::metrics::counter::Counter>,
}

impl Metrics {
    /// Registers `panda_idds_works_submitted_total` and `panda_idds_workflows_ended_total{status}`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let idds = registry.sub_registry_with_prefix("panda_idds");
        idds.register("works_submitted", "Works submitted as tasks", self.works_submitted.clone());
        idds.register("workflows_ended", "Workflows that ended, by state", self.workflows_ended.clone());
    }
}

/// The engine.
#[derive(Clone)]
pub struct Engine {
    /// Counters.
    pub metrics: Metrics,
    db: DatabaseConnection,
    outbox: Outbox,
    server: ServerClient,
    /// Wakes the submitter.
    pub wake: Arc<Notify>,
    /// One submission pass at a time.
    submitting: Arc<Mutex<()>>,
}

impl Engine {
    /// Builds the engine.
    pub fn new(db: DatabaseConnection, outbox: Outbox, server: ServerClient) -> Self {
        Self { metrics: Metrics::default(), db, outbox, server, wake: Arc::default(), submitting: Arc::default() }
    }

    async fn commit(&self, txn: DatabaseTransaction, events: Vec<Envelope>) -> Result<(), Error> {
        outbox::append(&txn, &events).await?;
        txn.commit().await?;
        if !events.is_empty() {
            self.outbox.notify();
        }
        Ok(())
    }

    /// The engine's database (for tests and tools).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Validates and stores a workflow and starts it.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming each bad work and field.
    #[instrument(skip_all, fields(name = %spec.name))]
    pub async fn submit_workflow(&self, spec: wire::WorkflowSpec) -> Result<u64, Error> {
        let mut errors = Vec::new();
        if let Err(e) = panda_types::ids::check_name(&spec.name, 100) {
            errors.push(FieldError::new("name", e));
        }
        let drafts: Vec<WorkDraft> = spec
            .works
            .iter()
            .map(|w| WorkDraft {
                name: w.name.clone(),
                parents: w.parents.clone(),
                task: w.task.clone().map(Into::into).unwrap_or_default(),
            })
            .collect();
        for (i, work) in spec.works.iter().enumerate() {
            if work.task.is_none() {
                errors.push(FieldError::new(format!("works[{i}].task"), "is required"));
            }
        }
        if !errors.is_empty() {
            return Err(Error::InvalidArgument(errors));
        }
        let order = dag::validate(&drafts).map_err(Error::InvalidArgument)?;
        let produced: BTreeSet<String> =
            drafts.iter().map(|w| w.task.output_dataset.clone()).filter(|d| !d.is_empty()).collect();
        let user = if spec.user.is_empty() { "anonymous".to_owned() } else { spec.user.clone() };

        let txn = self.db.begin().await?;
        let workflow = store::insert_workflow(&txn, &spec.name, &user).await?;
        for &i in &order {
            let mut task = drafts[i].task.clone();
            task.input_datasets = task
                .input_datasets
                .iter()
                .map(|d| dag::scoped_dataset(d, &produced, &spec.name, workflow.id))
                .collect();
            task.output_dataset = dag::scoped_dataset(&task.output_dataset, &produced, &spec.name, workflow.id);
            if task.user.is_empty() {
                task.user = user.clone();
            }
            let task: TaskSpec = task.validate().map_err(Error::InvalidArgument)?;
            let json = serde_json::to_string(&task).map_err(|e| DbErr::Custom(e.to_string()))?;
            store::insert_work(&txn, workflow.id, &drafts[i].name, &drafts[i].parents, json).await?;
        }
        let mut events = vec![workflow_event(&workflow, WorkflowStatus::Running)];
        self.advance(&txn, workflow.id, &mut events).await?;
        self.commit(txn, events).await?;
        info!(workflow_id = workflow.id, works = order.len(), "workflow submitted");
        self.wake.notify_one();
        Ok(workflow.id)
    }

    /// Marks works whose parents finished ready (or skipped), and ends the workflow when every
    /// work is final.
    async fn advance(
        &self,
        txn: &DatabaseTransaction,
        workflow_id: u64,
        events: &mut Vec<Envelope>,
    ) -> Result<(), Error> {
        let works = store::works_of(txn, workflow_id).await?;
        let graph: BTreeMap<String, (WorkStatus, Vec<String>)> =
            works.iter().map(|w| (w.name.clone(), (w.status, w.parents.clone()))).collect();
        let step = dag::advance(&graph);
        let mut status: BTreeMap<&str, WorkStatus> = works.iter().map(|w| (w.name.as_str(), w.status)).collect();
        for work in &works {
            if step.ready.contains(&work.name) {
                store::set_work(txn, work.id, WorkStatus::Ready, None, None).await?;
                status.insert(&work.name, WorkStatus::Ready);
            } else if step.skipped.contains(&work.name) {
                store::set_work(txn, work.id, WorkStatus::Skipped, None, None).await?;
                status.insert(&work.name, WorkStatus::Skipped);
                info!(workflow_id, work = %work.name, "work skipped: a parent did not finish");
            }
        }
        let workflow_status = dag::workflow_status(status.values().copied());
        if workflow_status != WorkflowStatus::Running {
            let workflow = store::get_workflow(txn, workflow_id).await?.ok_or(Error::NotFound { workflow_id })?;
            if workflow.status == WorkflowStatus::Running {
                store::set_workflow_status(txn, workflow_id, workflow_status).await?;
                info!(workflow_id, status = workflow_status.as_str(), "workflow ended");
                self.metrics.workflows_ended.get_or_create(&Ended { status: workflow_status.as_str() }).inc();
                events.push(workflow_event(&workflow, workflow_status));
            }
        }
        Ok(())
    }

    /// Submits every ready work as a task (idempotent per work).
    ///
    /// # Errors
    /// Database failures; server failures are logged and retried on the next pass.
    pub async fn submit_ready(&self) -> Result<usize, Error> {
        let _pass = self.submitting.lock().await;
        let mut submitted = 0;
        for work in store::works_in(&self.db, WorkStatus::Ready).await? {
            let task: TaskSpec = match serde_json::from_str(&work.task_json) {
                Ok(task) => task,
                Err(e) => {
                    warn!(work = %work.name, error = %e, "stored task of a work does not parse; failing the work");
                    self.finish_work(&work, WorkStatus::Failed, "").await?;
                    continue;
                }
            };
            let request = server::SubmitTaskRequest {
                spec: Some(task.into()),
                idempotency_key: format!("idds-{}-{}", work.workflow_id, work.name),
            };
            match self.server.tasks.clone().submit_task(request).await {
                Ok(response) => {
                    let task_id = response.into_inner().task_id;
                    let txn = self.db.begin().await?;
                    store::set_work(&txn, work.id, WorkStatus::Submitted, Some(task_id), Some("registered")).await?;
                    txn.commit().await?;
                    info!(workflow_id = work.workflow_id, work = %work.name, task_id, "work submitted");
                    self.metrics.works_submitted.inc();
                    submitted += 1;
                }
                Err(status) if panda_client::is_transient(&status, true) => {
                    warn!(work = %work.name, %status, "server unavailable; will submit later");
                    break;
                }
                Err(status) => {
                    // The server refused the task for good (e.g. its input dataset is gone).
                    warn!(work = %work.name, %status, "task refused; failing the work");
                    self.finish_work(&work, WorkStatus::Failed, status.message()).await?;
                }
            }
        }
        Ok(submitted)
    }

    async fn finish_work(&self, work: &Work, status: WorkStatus, task_status: &str) -> Result<(), Error> {
        let txn = self.db.begin().await?;
        store::set_work(&txn, work.id, status, None, Some(task_status)).await?;
        let mut events = Vec::new();
        self.advance(&txn, work.workflow_id, &mut events).await?;
        self.commit(txn, events).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Applies a task's new state to its work, once per event: the event id is recorded in the
    /// same transaction as the change (`processed_events`), so a redelivered event does nothing.
    /// Reconciliation passes no event id; it is idempotent on its own (a final work never changes).
    ///
    /// # Errors
    /// Database failures.
    pub async fn on_task_status(
        &self,
        task_id: u64,
        task_status: TaskStatus,
        event_id: Option<uuid::Uuid>,
    ) -> Result<Handled, Error> {
        let txn = self.db.begin().await?;
        let Some(work) = store::work_by_task(&txn, task_id).await? else {
            // Our submitter may not have recorded this task yet.
            let in_flight = !store::works_in(&txn, WorkStatus::Ready).await?.is_empty();
            return Ok(if in_flight && task_status.is_final() { Handled::NotYet } else { Handled::Ignored });
        };
        if work.status.is_final() {
            return Ok(Handled::Ignored);
        }
        if let Some(event_id) = event_id
            && !panda_bus::idempotency::first_delivery(&txn, CONSUMER, event_id).await?
        {
            return Ok(Handled::Ignored);
        }
        let mut events = Vec::new();
        match WorkStatus::from_task_status(task_status) {
            Some(status) => {
                info!(workflow_id = work.workflow_id, work = %work.name, task_id, %task_status, "work ended");
                store::set_work(&txn, work.id, status, None, Some(task_status.as_str())).await?;
                self.advance(&txn, work.workflow_id, &mut events).await?;
            }
            None => store::set_work(&txn, work.id, work.status, None, Some(task_status.as_str())).await?,
        }
        self.commit(txn, events).await?;
        self.wake.notify_one();
        Ok(Handled::Applied)
    }

    /// Catches up after a restart: asks the server for the state of every submitted work's task
    /// (events may have been missed while idds was down), and submits ready works.
    ///
    /// # Errors
    /// Database failures.
    pub async fn reconcile(&self) -> Result<(), Error> {
        for work in store::works_in(&self.db, WorkStatus::Submitted).await? {
            let Some(task_id) = work.task_id else { continue };
            match self.server.tasks.clone().get_task(server::GetTaskRequest { task_id }).await {
                Ok(response) => {
                    if let Some(task) = response.into_inner().task
                        && let Ok(status) =
                            <TaskStatus as panda_proto::convert::WireEnum>::from_wire("status", task.status)
                    {
                        self.on_task_status(task_id, status, None).await?;
                    }
                }
                Err(status) => warn!(task_id, %status, "could not reconcile a work's task"),
            }
        }
        self.submit_ready().await?;
        Ok(())
    }

    /// A workflow with its works.
    ///
    /// # Errors
    /// NOT_FOUND.
    pub async fn get_workflow(&self, workflow_id: u64) -> Result<(Workflow, Vec<Work>), Error> {
        let workflow = store::get_workflow(&self.db, workflow_id).await?.ok_or(Error::NotFound { workflow_id })?;
        let works = store::works_of(&self.db, workflow_id).await?;
        Ok((workflow, works))
    }

    /// Newest workflows with their works.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_workflows(&self, limit: u64) -> Result<Vec<(Workflow, Vec<Work>)>, Error> {
        let mut out = Vec::new();
        for workflow in store::list_workflows(&self.db, limit).await? {
            let works = store::works_of(&self.db, workflow.id).await?;
            out.push((workflow, works));
        }
        Ok(out)
    }
}

fn workflow_event(workflow: &Workflow, status: WorkflowStatus) -> Envelope {
    Envelope::new(
        format!("workflow.{}", status.as_str()),
        &WorkflowStatusChanged {
            workflow_id: workflow.id,
            name: workflow.name.clone(),
            status: status.as_str().to_owned(),
        },
    )
}
