//! The workflow engine's use cases: accept a graph (native, Snakemake, or the older spec), submit
//! each ready work as a server task, follow task events, and let the pure planner
//! (`graph::plan`) decide what comes next. Each workflow's state is cached in memory behind a
//! lock and written through: every change (instance states, new loop iterations, the workflow's
//! end and its event) commits in one transaction, so a restart reloads exactly what was decided.
//! Submissions carry an idempotency key (`idds-<workflow>-<key>-<attempt>`), so a retried or
//! repeated submission never makes a second task.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use panda_bus::Envelope;
use panda_bus::outbox::{self, Outbox};
use panda_proto::events::v1::WorkflowStatusChanged;
use panda_proto::idds::v1 as wire;
use panda_proto::server::v1 as server;
use panda_runtime::{ErrorCode, ServiceError};
use panda_types::{FieldError, StateMachine, TaskStatus};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use tokio::sync::{Mutex, Notify, broadcast};
use tracing::{info, instrument, warn};

use crate::backend::{TaskBackend, TaskInfo};
use crate::graph::model::{Dependency, DependencyLevel, Graph, Node, NodeKind, SplitTemplate, TaskTemplate, Value};
use crate::graph::plan::{self, Instance, State};
use crate::graph::release::{self, HeldJobs};
use crate::graph::{self, Language, WorkStatus, WorkflowStatus};
use crate::store::{self, NewWork, Work, Workflow};

mod driven;
mod studies;
pub use studies::StudyView;

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
    /// Right request, wrong state.
    #[error("workflow {workflow_id} is {status}; {message}")]
    FailedPrecondition {
        /// The workflow.
        workflow_id: u64,
        /// Its state.
        status: &'static str,
        /// What is allowed.
        message: &'static str,
    },
    /// The database failed.
    #[error("idds database operation failed")]
    Db(#[from] DbErr),
    /// A stored graph does not parse (a bug or a foreign write).
    #[error("workflow {workflow_id}'s stored graph is unreadable: {reason}")]
    Corrupt {
        /// The workflow.
        workflow_id: u64,
        /// Why.
        reason: String,
    },
    /// A driven workflow already has a work of that key, with another spec.
    #[error(
        "workflow {workflow_id} already has a work {key:?} with other parents or another task; a key names one work"
    )]
    WorkExists {
        /// The workflow.
        workflow_id: u64,
        /// The key.
        key: String,
    },
    /// The study (or a request about one) is invalid.
    #[error("invalid study: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidStudy(Vec<FieldError>),
    /// No such study.
    #[error("study {study_id} not found")]
    StudyNotFound {
        /// The ID asked for.
        study_id: u64,
    },
    /// Right request, wrong study state.
    #[error("study {study_id}: {message}")]
    StudyPrecondition {
        /// The study.
        study_id: u64,
        /// What is wrong.
        message: String,
    },
    /// The study's optimizer (a plug-in) failed.
    #[error(transparent)]
    Optimizer(crate::hpo::HpoError),
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
            Error::InvalidArgument(_) | Error::InvalidStudy(_) => ErrorCode::InvalidArgument,
            Error::NotFound { .. } | Error::StudyNotFound { .. } => ErrorCode::NotFound,
            Error::FailedPrecondition { .. } | Error::StudyPrecondition { .. } => ErrorCode::FailedPrecondition,
            Error::WorkExists { .. } => ErrorCode::AlreadyExists,
            Error::Optimizer(_) => ErrorCode::Unavailable,
            Error::Db(DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) => ErrorCode::Unavailable,
            Error::Db(_) | Error::Corrupt { .. } => ErrorCode::Internal,
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

/// Submissions in flight at once in a submission pass.
pub const SUBMIT_CONCURRENCY: usize = 16;

/// The consumer name under which idds records processed task events.
const CONSUMER: &str = "idds.tasks";

/// How an event was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// It changed a work.
    Applied,
    /// Not a task of ours (or nothing to change, or seen before).
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

/// One workflow as the engine holds it.
struct Loaded {
    workflow: Workflow,
    graph: Arc<Graph>,
    /// Children of each top-level node (the planner looks only at what a change can unlock).
    index: Arc<plan::Index>,
    /// The next planner step looks at every node (after a load: what a crash interrupted).
    full: bool,
    state: State,
    /// Keys that have a row.
    stored: BTreeSet<String>,
    /// Task of each submitted key, and each key's submission attempts.
    tasks: HashMap<String, (Option<u64>, u32)>,
    /// Works whose jobs are held (file-level release): what each job still waits for. Not
    /// stored: rebuilt from the server's finished jobs after a load ([`Engine::sync_holds`]).
    holds: HashMap<String, HeldJobs>,
    /// Whether any work of the graph holds its jobs (most workflows: no, and release is skipped).
    any_holds: bool,
}

type Slot = Arc<Mutex<Option<Loaded>>>;

/// The engine.
#[derive(Clone)]
pub struct Engine {
    /// Counters.
    pub metrics: Metrics,
    db: DatabaseConnection,
    outbox: Outbox,
    backend: Arc<dyn TaskBackend>,
    /// Wakes the submitter.
    pub wake: Arc<Notify>,
    /// One submission pass at a time.
    submitting: Arc<Mutex<()>>,
    /// Workflows as loaded, each behind its own lock (changes to one workflow are serialised).
    cache: Arc<std::sync::Mutex<HashMap<u64, Slot>>>,
    /// Workflow IDs after each committed change (watch streams).
    changes: broadcast::Sender<u64>,
    /// Optimizer plug-ins by name (`[idds.hpo.plugins]`).
    plugins: Arc<BTreeMap<String, crate::hpo::plugin::PluginConfig>>,
    /// Serialises changes to studies (driving, asking, telling, point results).
    hpo_lock: Arc<Mutex<()>>,
    /// Driven workflows' driver leases: when each lapses (in memory; after a restart every
    /// running driven workflow gets a whole lease from reconciliation).
    leases: Arc<std::sync::Mutex<HashMap<u64, std::time::Instant>>>,
    /// How long a driver lease runs from its last renewal.
    driver_lease: std::time::Duration,
}

impl Engine {
    /// Builds the engine.
    pub fn new(db: DatabaseConnection, outbox: Outbox, backend: Arc<dyn TaskBackend>) -> Self {
        Self {
            metrics: Metrics::default(),
            db,
            outbox,
            backend,
            wake: Arc::default(),
            submitting: Arc::default(),
            cache: Arc::default(),
            changes: broadcast::channel(1024).0,
            plugins: Arc::default(),
            hpo_lock: Arc::default(),
            leases: Arc::default(),
            driver_lease: crate::config::DEFAULT_DRIVER_LEASE,
        }
    }

    /// Driven workflows' drivers must renew within `lease` (`idds.driver_lease`).
    #[must_use]
    pub fn with_driver_lease(mut self, lease: std::time::Duration) -> Self {
        self.driver_lease = lease;
        self
    }

    /// How long a driver lease runs from its last renewal.
    pub fn driver_lease(&self) -> std::time::Duration {
        self.driver_lease
    }

    /// Uses these optimizer plug-ins (by name).
    #[must_use]
    pub fn with_hpo_plugins(mut self, plugins: BTreeMap<String, crate::hpo::plugin::PluginConfig>) -> Self {
        self.plugins = Arc::new(plugins);
        self
    }

    /// The engine's database (for tests and tools).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Changes, by workflow ID, as they commit.
    pub fn subscribe(&self) -> broadcast::Receiver<u64> {
        self.changes.subscribe()
    }

    fn slot(&self, workflow_id: u64) -> Slot {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.entry(workflow_id).or_default().clone()
    }

    fn evict(&self, workflow_id: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.remove(&workflow_id);
    }

    async fn load(&self, workflow_id: u64) -> Result<Loaded, Error> {
        let workflow = store::get_workflow(&self.db, workflow_id).await?.ok_or(Error::NotFound { workflow_id })?;
        let works = store::works_of(&self.db, workflow_id).await?;
        let graph = if workflow.graph_json.is_empty() {
            legacy_graph(&workflow, &works)
        } else {
            serde_json::from_str(&workflow.graph_json)
                .map_err(|e| Error::Corrupt { workflow_id, reason: e.to_string() })?
        };
        let mut instances = BTreeMap::new();
        let mut tasks = HashMap::new();
        for work in &works {
            instances.insert(
                work.key.clone(),
                Instance {
                    status: work.status,
                    iteration: work.iteration,
                    outputs: work.outputs.clone(),
                    params: work.params.clone(),
                    reason: work.reason.clone(),
                },
            );
            tasks.insert(work.key.clone(), (work.task_id, work.attempt));
        }
        let any_holds = any_holds(&graph);
        Ok(Loaded {
            stored: instances.keys().cloned().collect(),
            workflow,
            index: Arc::new(plan::Index::new(&graph)),
            full: true,
            graph: Arc::new(graph),
            state: State::new(instances),
            tasks,
            holds: HashMap::new(),
            any_holds,
        })
    }

    /// Applies `change` to a workflow, lets the planner move it, and commits every changed
    /// instance, the workflow's state and its events in one transaction (recording `event_id`
    /// as processed in the same one). Returns `None` when the event was seen before.
    async fn mutate<R>(
        &self,
        workflow_id: u64,
        event_id: Option<uuid::Uuid>,
        change: impl FnOnce(&mut Loaded) -> Result<R, Error>,
        extra: impl AsyncFnOnce(&DatabaseTransaction, &Loaded) -> Result<(), Error>,
    ) -> Result<Option<R>, Error> {
        let slot = self.slot(workflow_id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(workflow_id).await?);
        }
        let loaded = guard.as_mut().expect("loaded above");
        let txn = self.db.begin().await?;
        if let Some(event_id) = event_id
            && !panda_bus::idempotency::first_delivery(&txn, CONSUMER, event_id).await?
        {
            return Ok(None);
        }
        let result = self.apply(&txn, loaded, change, extra).await;
        match result {
            Ok((value, events, ready)) => {
                outbox::append(&txn, &events).await?;
                if let Err(error) = txn.commit().await {
                    *guard = None;
                    self.evict(workflow_id);
                    return Err(error.into());
                }
                if !events.is_empty() {
                    self.outbox.notify();
                }
                let _ = self.changes.send(workflow_id);
                if ready {
                    self.wake.notify_one();
                }
                Ok(Some(value))
            }
            Err(error) => {
                // The cached state may be ahead of the database: reload on next use.
                *guard = None;
                self.evict(workflow_id);
                Err(error)
            }
        }
    }

    async fn apply<R>(
        &self,
        txn: &DatabaseTransaction,
        loaded: &mut Loaded,
        change: impl FnOnce(&mut Loaded) -> Result<R, Error>,
        extra: impl AsyncFnOnce(&DatabaseTransaction, &Loaded) -> Result<(), Error>,
    ) -> Result<(R, Vec<Envelope>, bool), Error> {
        let before = loaded.workflow.status;
        let value = change(loaded)?;
        let mut events = Vec::new();
        let end = if loaded.workflow.status.is_final() && loaded.workflow.status != WorkflowStatus::Cancelled {
            None
        } else if std::mem::take(&mut loaded.full) {
            plan::advance(&loaded.graph, &mut loaded.state)
        } else {
            plan::advance_changed(&loaded.graph, &loaded.index, &mut loaded.state)
        };
        // A driven workflow ends when its driver closes it, not when the works added so far ended.
        let end = if loaded.graph.driven { None } else { end };
        let changed = loaded.state.take_changed();
        let mut new = Vec::new();
        let mut ready = false;
        for key in &changed {
            let Some(instance) = loaded.state.works.get(key) else { continue };
            ready |= instance.status == WorkStatus::Ready;
            if loaded.stored.contains(key) {
                store::update_work(txn, loaded.workflow.id, key, instance).await?;
            } else {
                new.push(new_work(key, instance));
            }
        }
        store::insert_works(txn, loaded.workflow.id, &new).await?;
        loaded.stored.extend(new.into_iter().map(|w| w.key));
        extra(txn, loaded).await?;
        if let Some(end) = end
            && matches!(loaded.workflow.status, WorkflowStatus::Running)
        {
            store::set_workflow_status(txn, loaded.workflow.id, end).await?;
            info!(workflow_id = loaded.workflow.id, status = end.as_str(), "workflow ended");
            self.metrics.workflows_ended.get_or_create(&Ended { status: end.as_str() }).inc();
            loaded.workflow.status = end;
        }
        // Every change of the workflow's state has its event: the end, and what operations did
        // (workflow.cancelled after an abort, suspended, running again after a resume or retry).
        if loaded.workflow.status != before {
            events.push(workflow_event(&loaded.workflow, loaded.workflow.status));
        }
        Ok((value, events, ready))
    }

    /// Validates and stores a workflow written as the older spec (works of tasks) and starts it.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming each bad work and field.
    #[instrument(skip_all, fields(name = %spec.name))]
    pub async fn submit_workflow(&self, spec: wire::WorkflowSpec) -> Result<u64, Error> {
        let mut errors = Vec::new();
        let mut nodes = Vec::new();
        for (i, work) in spec.works.iter().enumerate() {
            let Some(task) = work.task.clone() else {
                errors.push(FieldError::new(format!("works[{i}].task"), "is required"));
                continue;
            };
            let mut node = Node::task(&work.name, template_from_wire(task, &work.name));
            node.after =
                work.parents.iter().map(|p| Dependency { node: p.clone(), level: DependencyLevel::Task }).collect();
            nodes.push(node);
        }
        if !errors.is_empty() {
            return Err(Error::InvalidArgument(errors));
        }
        let graph = Graph { name: spec.name.clone(), nodes, ..Graph::default() };
        graph::validate::validate(&graph).map_err(graph_errors)?;
        self.start(graph, spec.user).await
    }

    /// Parses, validates, stores and starts a workflow document.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming each bad node, rule or line; nothing is stored then.
    #[instrument(skip_all, fields(name = %document.name))]
    pub async fn submit_document(&self, document: wire::WorkflowDocument) -> Result<u64, Error> {
        let (graph, user) = compile(&document)?;
        let user = if user.is_empty() { document.user } else { user };
        self.start(graph, user).await
    }

    async fn start(&self, graph: Graph, user: String) -> Result<u64, Error> {
        // Scatter is carried for the CWL runner; the task engine does not fan it out yet.
        if let Some((path, _)) = graph.walk().into_iter().find(|(_, n)| n.scatter.is_some()) {
            return Err(Error::InvalidArgument(vec![FieldError::new(
                format!("nodes.{path}.scatter"),
                "is not executed by the task engine yet (the CWL runner expands it)",
            )]));
        }
        let user = if user.is_empty() { "anonymous".to_owned() } else { user };
        check_tasks(&graph, &user)?;
        for (path, node) in graph.walk() {
            if let Some(spec) = &node.hpo {
                self.check_study(spec, &format!("nodes.{path}.hpo")).map_err(Error::InvalidArgument)?;
            }
        }
        let mut state = State::initial(&graph);
        plan::advance(&graph, &mut state);
        state.take_changed();
        let graph_json = serde_json::to_string(&graph).map_err(|e| DbErr::Custom(e.to_string()))?;
        let works: Vec<NewWork> = state.works.iter().map(|(k, i)| new_work(k, i)).collect();
        let txn = self.db.begin().await?;
        let workflow = store::insert_workflow(&txn, &graph.name, &user, graph_json).await?;
        store::insert_works(&txn, workflow.id, &works).await?;
        let events = vec![workflow_event(&workflow, WorkflowStatus::Running)];
        outbox::append(&txn, &events).await?;
        txn.commit().await?;
        self.outbox.notify();
        info!(workflow_id = workflow.id, works = works.len(), "workflow submitted");
        let id = workflow.id;
        let any_holds = any_holds(&graph);
        let loaded = Loaded {
            workflow,
            stored: state.works.keys().cloned().collect(),
            index: Arc::new(plan::Index::new(&graph)),
            full: false,
            graph: Arc::new(graph),
            state,
            tasks: HashMap::new(),
            holds: HashMap::new(),
            any_holds,
        };
        *self.slot(id).lock().await = Some(loaded);
        let _ = self.changes.send(id);
        self.wake.notify_one();
        Ok(id)
    }

    /// Submits every ready work of running workflows as a task (idempotent per work and attempt).
    /// A workflow's ready works are submitted together (up to [`SUBMIT_CONCURRENCY`] calls in
    /// flight) and recorded in one transaction; a crash before that commit is harmless, since
    /// the next pass submits with the same idempotency keys and gets the same tasks.
    ///
    /// # Errors
    /// Database failures; transient server failures end the pass (the caller retries later),
    /// refusals fail the work.
    pub async fn submit_ready(&self) -> Result<Pass, Error> {
        let _pass = self.submitting.lock().await;
        let mut pass = Pass::default();
        let mut by_workflow: BTreeMap<u64, Vec<Work>> = BTreeMap::new();
        for work in store::works_in(&self.db, WorkStatus::Ready).await? {
            // An HPO work starts its study instead of one task (its points are tasks).
            if self.start_work_study(&work).await? {
                pass.submitted += 1;
                continue;
            }
            by_workflow.entry(work.workflow_id).or_default().push(work);
        }
        for (workflow_id, works) in by_workflow {
            let rendered = self.render(workflow_id, works).await?;
            let results: Vec<(Work, String, u32, Result<u64, tonic::Status>)> =
                futures::stream::iter(rendered.into_iter().map(|(work, spec, attempt)| async move {
                    let key = format!("idds-{}-{}-{}", work.workflow_id, work.key, attempt);
                    let json = serde_json::to_string(&spec_json(&spec)).unwrap_or_default();
                    let result = self.backend.submit(spec, key).await;
                    (work, json, attempt, result)
                }))
                .buffered(SUBMIT_CONCURRENCY)
                .collect()
                .await;
            let mut accepted = Vec::new();
            let mut refused = Vec::new();
            for (work, json, attempt, result) in results {
                match result {
                    Ok(task_id) => {
                        info!(workflow_id, work = %work.key, task_id, "work submitted");
                        accepted.push((work.key, task_id, json, attempt));
                    }
                    Err(status) if panda_client::is_transient(&status, true) => {
                        warn!(work = %work.key, %status, "server unavailable; will submit later");
                        pass.deferred = true;
                    }
                    Err(status) => {
                        warn!(work = %work.key, %status, "task refused; failing the work");
                        refused.push((work.key, format!("the server refused the task: {}", status.message())));
                    }
                }
            }
            if !accepted.is_empty() || !refused.is_empty() {
                self.mutate(
                    workflow_id,
                    None,
                    |loaded| {
                        for (key, task_id, _, attempt) in &accepted {
                            if loaded.state.works.get(key).map(|i| i.status) == Some(WorkStatus::Ready) {
                                loaded.state.set_status(key, WorkStatus::Submitted, "");
                            }
                            loaded.tasks.insert(key.clone(), (Some(*task_id), *attempt));
                        }
                        for (key, reason) in &refused {
                            if loaded.state.works.get(key).map(|i| i.status) == Some(WorkStatus::Ready) {
                                loaded.state.set_status(key, WorkStatus::Failed, reason.clone());
                            }
                        }
                        Ok(())
                    },
                    async |txn, _| {
                        for (key, task_id, json, attempt) in &accepted {
                            store::record_task(txn, workflow_id, key, *task_id, json.clone(), *attempt).await?;
                        }
                        Ok(())
                    },
                )
                .await?;
                self.metrics.works_submitted.inc_by(accepted.len() as u64);
                pass.submitted += accepted.len();
                // Held works whose jobs already exist (their task.running event came before this
                // record) release what their parents produced meanwhile.
                for (key, ..) in &accepted {
                    self.sync_holds(workflow_id, Some(key.clone()), &[]).await?;
                }
            }
            if pass.deferred {
                break;
            }
        }
        if !pass.deferred {
            pass.deferred = self.drive_studies().await?;
        }
        Ok(pass)
    }

    /// The tasks of a workflow's ready works (none when the workflow is suspended; works no
    /// longer ready are left out).
    async fn render(&self, workflow_id: u64, works: Vec<Work>) -> Result<Vec<(Work, server::TaskSpec, u32)>, Error> {
        let slot = self.slot(workflow_id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(workflow_id).await?);
        }
        let loaded = guard.as_ref().expect("loaded above");
        if loaded.workflow.status != WorkflowStatus::Running {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(works.len());
        for work in works {
            if loaded.state.works.get(&work.key).map(|i| i.status) != Some(WorkStatus::Ready) {
                continue;
            }
            let Some((node, params)) = plan::resolve(&loaded.graph, &loaded.state, &work.key) else {
                return Err(Error::Corrupt { workflow_id, reason: format!("no node for {}", work.key) });
            };
            let NodeKind::Task(template) = &node.kind else { continue };
            let mut task = plan::render_task(template, &params, &work.key);
            scope_datasets(&mut task, &loaded.graph, &loaded.workflow, &work.key);
            let attempt = loaded.tasks.get(&work.key).map_or(0, |(_, a)| *a);
            out.push((work, wire_spec(task, &loaded.workflow.user, release::holds(node)), attempt));
        }
        Ok(out)
    }

    /// Applies a task's new state to its work, once per event: the event id is recorded in the
    /// same transaction as the change, so a redelivered event does nothing. Reconciliation passes
    /// no event id; it is idempotent on its own (a final work never changes).
    ///
    /// # Errors
    /// Database failures; server failures while reading the task's counts and outputs.
    pub async fn on_task_status(
        &self,
        task_id: u64,
        task_status: TaskStatus,
        event_id: Option<uuid::Uuid>,
    ) -> Result<Handled, Error> {
        let Some(work) = store::work_by_task(&self.db, task_id).await? else {
            if crate::hpo_store::point_by_task(&self.db, task_id).await?.is_some() {
                return self.on_point_task(task_id, task_status, event_id).await;
            }
            // Our submitter may not have recorded this task yet.
            let in_flight = !store::works_in(&self.db, WorkStatus::Ready).await?.is_empty()
                || crate::hpo_store::any_pending(&self.db).await?;
            return Ok(if in_flight && task_status.is_final() { Handled::NotYet } else { Handled::Ignored });
        };
        let handled = self.apply_task_status(&work, task_id, task_status, event_id).await?;
        // Held jobs follow (idempotent, so also on a repeated event: a failed sync is redone):
        // a work whose jobs now exist releases what its parents produced so far; a parent that
        // ended releases or closes what still waits for it.
        let keys = if task_status.is_final() { vec![work.key.clone()] } else { Vec::new() };
        let own = (!task_status.is_final()).then(|| work.key.clone());
        self.sync_holds(work.workflow_id, own, &keys).await?;
        Ok(handled)
    }

    async fn apply_task_status(
        &self,
        work: &Work,
        task_id: u64,
        task_status: TaskStatus,
        event_id: Option<uuid::Uuid>,
    ) -> Result<Handled, Error> {
        if work.status != WorkStatus::Submitted {
            return Ok(Handled::Ignored);
        }
        let end = WorkStatus::from_task_status(task_status);
        // Counts and produced values are read before the transaction (server calls).
        let outputs = match end {
            Some(_) => Some(self.outputs_of(work, task_id).await?),
            None => None,
        };
        let key = work.key.clone();
        let status_text = task_status.as_str();
        let applied = self
            .mutate(
                work.workflow_id,
                event_id,
                |loaded| {
                    let current = loaded.state.works.get(&key).map(|i| i.status);
                    let ours = loaded.tasks.get(&key).and_then(|(t, _)| *t) == Some(task_id);
                    if current != Some(WorkStatus::Submitted) || !ours {
                        return Ok(false);
                    }
                    if let (Some(end), Some(outputs)) = (end, outputs) {
                        info!(workflow_id = loaded.workflow.id, work = %key, task_id, %task_status, "work ended");
                        loaded.state.set_outputs(&key, outputs);
                        loaded.state.set_status(&key, end, format!("task {task_id} {status_text}"));
                    }
                    Ok(true)
                },
                async |txn, _| {
                    store::set_task_status(txn, work.workflow_id, &work.key, status_text).await?;
                    Ok(())
                },
            )
            .await?;
        Ok(match applied {
            Some(true) => Handled::Applied,
            _ => Handled::Ignored,
        })
    }

    /// A job finished: the jobs of file-level children that waited only for the files it wrote
    /// are released now (per file, not per dataset). Idempotent: the server releases only held
    /// jobs, and a countdown lost with a failed call is rebuilt from the server.
    ///
    /// # Errors
    /// Database failures; server failures (the event is retried).
    pub async fn on_job_finished(&self, task_id: u64, job_index: u32) -> Result<Handled, Error> {
        let Some(work) = store::work_by_task(&self.db, task_id).await? else { return Ok(Handled::Ignored) };
        let slot = self.slot(work.workflow_id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(work.workflow_id).await?);
        }
        let loaded = guard.as_mut().expect("loaded above");
        if !loaded.any_holds {
            return Ok(Handled::Ignored);
        }
        let graph = loaded.graph.clone();
        let children = held_children(&graph, &work.key);
        let Some((NodeKind::Task(template), _)) =
            plan::resolve(&graph, &loaded.state, &work.key).map(|(n, p)| (&n.kind, p))
        else {
            return Ok(Handled::Ignored);
        };
        let files: &[String] = job_index
            .checked_sub(1)
            .and_then(|i| template.jobs.get(i as usize))
            .map(|j| j.outputs.as_slice())
            .unwrap_or_default();
        let mut handled = Handled::Ignored;
        for child in children {
            let Some(child_task) = running_task(loaded, &child) else { continue };
            let Some(held) = loaded.holds.get_mut(&child) else {
                self.sync_hold(loaded, &child).await?;
                handled = Handled::Applied;
                continue;
            };
            let released: Vec<u32> = files.iter().flat_map(|f| held.produced(f)).map(|i| i + 1).collect();
            if released.is_empty() {
                continue;
            }
            if let Err(status) = self.backend.release(child_task, released.clone(), Vec::new(), String::new()).await {
                // The countdown already moved: forget it, so the retry rebuilds it from the server.
                loaded.holds.remove(&child);
                return Err(Error::Server { call: "ReleaseJobs", status });
            }
            info!(workflow_id = work.workflow_id, work = %child, task_id = child_task, jobs = ?released, "held jobs released");
            handled = Handled::Applied;
        }
        Ok(handled)
    }

    /// Rebuilds (from the server) the hold of `own` if it holds jobs, and of the held children
    /// of each of `parents`, releasing what can run and closing what never will.
    async fn sync_holds(&self, workflow_id: u64, own: Option<String>, parents: &[String]) -> Result<(), Error> {
        let slot = self.slot(workflow_id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(workflow_id).await?);
        }
        let loaded = guard.as_mut().expect("loaded above");
        if !loaded.any_holds {
            return Ok(());
        }
        let graph = loaded.graph.clone();
        let mut keys: Vec<String> = parents.iter().flat_map(|p| held_children(&graph, p)).collect();
        if let Some(own) = own
            && plan::resolve(&graph, &loaded.state, &own).is_some_and(|(n, _)| release::holds(n))
        {
            keys.push(own);
        }
        for key in keys {
            if running_task(loaded, &key).is_some() {
                self.sync_hold(loaded, &key).await?;
            }
        }
        Ok(())
    }

    /// A held work's countdown from scratch: every file its parents' finished jobs wrote is
    /// produced; a parent that ended lost the rest. Releases and closes on the server what that
    /// allows (idempotent), and keeps the countdown for the next job events.
    async fn sync_hold(&self, loaded: &mut Loaded, key: &str) -> Result<(), Error> {
        let graph = loaded.graph.clone();
        let Some(child_task) = running_task(loaded, key) else { return Ok(()) };
        let Some((child, _)) = plan::resolve(&graph, &loaded.state, key) else { return Ok(()) };
        let NodeKind::Task(child_template) = &child.kind else { return Ok(()) };
        let scope = key.rsplit_once('/').map_or("", |(scope, _)| scope);
        let mut parents = Vec::new();
        for name in release::file_parents(child) {
            let parent_key = plan::key_in(scope, name);
            let Some((parent, _)) = plan::resolve(&graph, &loaded.state, &parent_key) else { continue };
            let NodeKind::Task(template) = &parent.kind else { continue };
            let ended = loaded.state.works.get(&parent_key).is_some_and(|i| i.status.is_final());
            let task = loaded.tasks.get(&parent_key).and_then(|(t, _)| *t);
            parents.push((parent_key, &**template, task, ended));
        }
        let templates: Vec<&TaskTemplate> = parents.iter().map(|p| p.1).collect();
        let mut held = HeldJobs::new(&release::awaited(child_template, &templates));
        let mut release_now = held.released_at_start();
        let mut close = Vec::new();
        let mut lost = Vec::new();
        for (parent_key, template, task, ended) in &parents {
            let finished = match task {
                Some(task) => self
                    .backend
                    .finished_jobs(*task)
                    .await
                    .map_err(|status| Error::Server { call: "ListJobs", status })?,
                None => Vec::new(),
            };
            for index in &finished {
                let Some(job) = index.checked_sub(1).and_then(|i| template.jobs.get(i as usize)) else { continue };
                for file in &job.outputs {
                    release_now.extend(held.produced(file));
                }
            }
            if *ended {
                for (i, job) in template.jobs.iter().enumerate() {
                    if finished.binary_search(&(i as u32 + 1)).is_ok() {
                        continue;
                    }
                    for file in &job.outputs {
                        let missing = held.lost(file);
                        if !missing.is_empty() {
                            lost.push(format!("{file} (from {parent_key})"));
                            close.extend(missing);
                        }
                    }
                }
            }
        }
        if !release_now.is_empty() || !close.is_empty() {
            let mut reason = format!("input never produced: {}", lost.join(", "));
            reason.truncate(reason.floor_char_boundary(1000));
            let release: Vec<u32> = release_now.iter().map(|i| i + 1).collect();
            let close: Vec<u32> = close.iter().map(|i| i + 1).collect();
            let (released, closed) = self
                .backend
                .release(child_task, release, close, reason)
                .await
                .map_err(|status| Error::Server { call: "ReleaseJobs", status })?;
            if released + closed > 0 {
                info!(workflow_id = loaded.workflow.id, work = %key, task_id = child_task, released, closed, "held jobs synchronised");
            }
        }
        loaded.holds.insert(key.to_owned(), held);
        Ok(())
    }

    async fn outputs_of(&self, work: &Work, task_id: u64) -> Result<BTreeMap<String, Value>, Error> {
        let info: TaskInfo =
            self.backend.task_info(task_id).await.map_err(|status| Error::Server { call: "GetTask", status })?;
        let mut outputs = BTreeMap::from([
            ("jobs_total".to_owned(), Value::Int(i64::from(info.jobs_total))),
            ("jobs_finished".to_owned(), Value::Int(i64::from(info.jobs_finished))),
            ("jobs_failed".to_owned(), Value::Int(i64::from(info.jobs_failed))),
            ("files_produced".to_owned(), Value::Int(i64::from(info.jobs_finished))),
        ]);
        if self.wants_values(work).await? {
            let values = self
                .backend
                .produced_values(task_id)
                .await
                .map_err(|status| Error::Server { call: "ReadJobLog", status })?;
            outputs.extend(values);
        }
        Ok(outputs)
    }

    /// Whether a work declared outputs (then its jobs' `panda-output` lines are collected).
    async fn wants_values(&self, work: &Work) -> Result<bool, Error> {
        let slot = self.slot(work.workflow_id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(work.workflow_id).await?);
        }
        let loaded = guard.as_ref().expect("loaded above");
        Ok(plan::resolve(&loaded.graph, &loaded.state, &work.key).is_some_and(|(node, _)| !node.outputs.is_empty()))
    }

    /// Catches up after a restart: asks the server for the state of every submitted work's task
    /// (events may have been missed while idds was down), then submits ready works. Works that
    /// were ready are submitted with the same idempotency key as before, so a submission that
    /// reached the server before the crash is not made twice.
    ///
    /// # Errors
    /// Database failures.
    pub async fn reconcile(&self) -> Result<(), Error> {
        for work in store::works_in(&self.db, WorkStatus::Submitted).await? {
            let Some(task_id) = work.task_id else { continue };
            match self.backend.task_info(task_id).await {
                Ok(info) => {
                    self.on_task_status(task_id, info.status, None).await?;
                }
                Err(status) => warn!(task_id, %status, "could not reconcile a work's task"),
            }
        }
        self.reconcile_points().await?;
        // Workflows whose planner step did not run (e.g. stored by an older version) move now.
        // Running driven workflows get a whole driver lease from now: a driver still alive
        // renews it, a dead one lets it lapse.
        for workflow_id in store::workflows_in(&self.db, WorkflowStatus::Running).await? {
            let driven = self.mutate(workflow_id, None, |l| Ok(l.graph.driven), async |_, _| Ok(())).await?;
            if driven == Some(true) {
                self.lease_from(workflow_id, std::time::Instant::now(), false);
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

    /// A workflow's graph (for rendering) and its works.
    ///
    /// # Errors
    /// NOT_FOUND.
    pub async fn get_graph(&self, workflow_id: u64) -> Result<(Graph, Vec<Work>), Error> {
        let (workflow, works) = self.get_workflow(workflow_id).await?;
        let graph = if workflow.graph_json.is_empty() {
            legacy_graph(&workflow, &works)
        } else {
            serde_json::from_str(&workflow.graph_json)
                .map_err(|e| Error::Corrupt { workflow_id, reason: e.to_string() })?
        };
        Ok((graph, works))
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

    /// Aborts a workflow: kills its running tasks and cancels what has not ended.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when it already ended.
    pub async fn abort(&self, workflow_id: u64) -> Result<(), Error> {
        let running = self
            .mutate(
                workflow_id,
                None,
                |loaded| {
                    let status = loaded.workflow.status;
                    if status.is_final() {
                        return Err(precondition(
                            workflow_id,
                            status,
                            "only running or suspended workflows can be aborted",
                        ));
                    }
                    let keys = plan::abort(&loaded.graph, &mut loaded.state);
                    loaded.workflow.status = WorkflowStatus::Cancelled;
                    Ok(keys.iter().filter_map(|k| loaded.tasks.get(k).and_then(|(t, _)| *t)).collect::<Vec<u64>>())
                },
                async |txn, loaded| {
                    store::set_workflow_status(txn, workflow_id, WorkflowStatus::Cancelled).await?;
                    let _ = loaded;
                    Ok(())
                },
            )
            .await?
            .unwrap_or_default();
        for task_id in running {
            if let Err(status) = self.backend.kill(task_id).await {
                warn!(task_id, %status, "could not kill an aborted workflow's task");
            }
        }
        // The submitter cancels the studies of its hpo works.
        self.wake.notify_one();
        info!(workflow_id, "workflow aborted");
        Ok(())
    }

    /// Retries a workflow's failed works (the server reruns their tasks' failed jobs; a task the
    /// server refused is submitted anew) and reopens what their failure skipped.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the workflow finished, was cancelled or has nothing
    /// to retry.
    pub async fn retry(&self, workflow_id: u64) -> Result<u32, Error> {
        // Server first: a task the server cannot retry stays failed here.
        let (_, works) = self.get_graph(workflow_id).await?;
        let workflow = store::get_workflow(&self.db, workflow_id).await?.ok_or(Error::NotFound { workflow_id })?;
        if matches!(workflow.status, WorkflowStatus::Finished | WorkflowStatus::Cancelled) {
            return Err(precondition(workflow_id, workflow.status, "only workflows with failed works can be retried"));
        }
        let mut retried_on_server = BTreeSet::new();
        for work in works.iter().filter(|w| matches!(w.status, WorkStatus::Failed | WorkStatus::SubFinished)) {
            let Some(task_id) = work.task_id else { continue };
            match self.backend.retry(task_id).await {
                Ok(()) => {
                    retried_on_server.insert(work.key.clone());
                }
                Err(status) => warn!(task_id, %status, "the server did not retry a failed work's task"),
            }
        }
        let count = self
            .mutate(
                workflow_id,
                None,
                |loaded| {
                    let failed: Vec<String> = loaded
                        .state
                        .works
                        .iter()
                        .filter(|(_, i)| matches!(i.status, WorkStatus::Failed | WorkStatus::SubFinished))
                        .map(|(k, _)| k.clone())
                        .collect();
                    // A task the server did not retry (or never had) is submitted anew.
                    plan::retry(&loaded.graph, &mut loaded.state, |key| retried_on_server.contains(key));
                    let resubmitted: Vec<&String> = failed
                        .iter()
                        .filter(|k| loaded.state.works.get(*k).map(|i| i.status) == Some(WorkStatus::Ready))
                        .collect();
                    for key in &resubmitted {
                        let attempt = loaded.tasks.get(*key).map_or(0, |(_, a)| *a) + 1;
                        loaded.tasks.insert((*key).clone(), (None, attempt));
                    }
                    if failed.is_empty() {
                        return Err(precondition(
                            workflow_id,
                            loaded.workflow.status,
                            "it has no failed work to retry",
                        ));
                    }
                    loaded.workflow.status = WorkflowStatus::Running;
                    Ok(failed.len() as u32)
                },
                async |txn, loaded| {
                    store::set_workflow_status(txn, workflow_id, WorkflowStatus::Running).await?;
                    for (key, (task, attempt)) in &loaded.tasks {
                        if task.is_none() && *attempt > 0 {
                            store::clear_task(txn, workflow_id, key, *attempt).await?;
                        }
                    }
                    Ok(())
                },
            )
            .await?
            .unwrap_or_default();
        info!(workflow_id, retried = count, "workflow retried");
        Ok(count)
    }

    /// Suspends (`hold`) or resumes a workflow; its running tasks are paused or resumed.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION from the wrong state.
    pub async fn suspend(&self, workflow_id: u64, hold: bool) -> Result<(), Error> {
        let (from, to) = if hold {
            (WorkflowStatus::Running, WorkflowStatus::Suspended)
        } else {
            (WorkflowStatus::Suspended, WorkflowStatus::Running)
        };
        let tasks = self
            .mutate(
                workflow_id,
                None,
                |loaded| {
                    if loaded.workflow.status != from {
                        let message = if hold {
                            "only running workflows can be suspended"
                        } else {
                            "only suspended workflows can be resumed"
                        };
                        return Err(precondition(workflow_id, loaded.workflow.status, message));
                    }
                    loaded.workflow.status = to;
                    Ok(loaded
                        .state
                        .works
                        .iter()
                        .filter(|(_, i)| i.status == WorkStatus::Submitted)
                        .filter_map(|(k, _)| loaded.tasks.get(k).and_then(|(t, _)| *t))
                        .collect::<Vec<u64>>())
                },
                async |txn, _| Ok(store::set_workflow_status(txn, workflow_id, to).await?),
            )
            .await?
            .unwrap_or_default();
        for task_id in tasks {
            let result = if hold { self.backend.pause(task_id).await } else { self.backend.resume(task_id).await };
            if let Err(status) = result {
                warn!(task_id, %status, hold, "could not pause or resume a workflow's task");
            }
        }
        if !hold {
            self.wake.notify_one();
        }
        info!(workflow_id, status = to.as_str(), "workflow suspended or resumed");
        Ok(())
    }
}

/// What a submission pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Works submitted.
    pub submitted: usize,
    /// The server was unavailable: try again later.
    pub deferred: bool,
}

fn precondition(workflow_id: u64, status: WorkflowStatus, message: &'static str) -> Error {
    Error::FailedPrecondition { workflow_id, status: status.as_str(), message }
}

fn graph_errors(errors: Vec<graph::GraphError>) -> Error {
    Error::InvalidArgument(
        errors
            .into_iter()
            .map(|e| {
                let field = if e.node.is_empty() { "document".to_owned() } else { format!("nodes.{}", e.node) };
                let message = if e.line > 0 { format!("(line {}): {}", e.line, e.message) } else { e.message };
                FieldError::new(field, message)
            })
            .collect(),
    )
}

/// Every task is checked as the server will check it (parameters filled with placeholders), so a
/// workflow is refused whole at submission rather than failing half-way when a task is refused.
fn check_tasks(graph: &Graph, user: &str) -> Result<(), Error> {
    let mut errors = Vec::new();
    for (path, node) in graph.walk() {
        let NodeKind::Task(template) = &node.kind else { continue };
        let mut task = TaskTemplate::clone(template);
        task.command = fill_params(&task.command);
        let draft = panda_types::spec::TaskSpecDraft::from(wire_spec(task, user, release::holds(node)));
        if let Err(problems) = draft.validate() {
            errors
                .extend(problems.into_iter().map(|e| FieldError::new(format!("nodes.{path}.{}", e.field), e.message)));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(errors)) }
}

/// `%{name}` → `0`, for checking a template before its parameters are known.
fn fill_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("%{") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('}') {
            Some(end) => {
                out.push('0');
                rest = &rest[start + 2 + end + 1..];
            }
            None => {
                out.push_str("%{");
                rest = &rest[start + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses and validates a document.
///
/// # Errors
/// INVALID_ARGUMENT naming each problem.
pub fn compile(document: &wire::WorkflowDocument) -> Result<(Graph, String), Error> {
    let language = match wire::WorkflowLanguage::try_from(document.language) {
        Ok(wire::WorkflowLanguage::Native) => Language::Native,
        Ok(wire::WorkflowLanguage::Snakemake) => Language::Snakemake,
        _ => {
            return Err(Error::InvalidArgument(vec![FieldError::new(
                "document.language",
                format!("must be native or snakemake (got {})", document.language),
            )]));
        }
    };
    if document.text.len() > 16 * 1024 * 1024 {
        return Err(Error::InvalidArgument(vec![FieldError::new("document.text", "must be at most 16 MiB")]));
    }
    let name = if document.name.is_empty() { "snakemake" } else { document.name.as_str() };
    graph::compile(language, &document.text, name).map_err(graph_errors)
}

fn new_work(key: &str, instance: &Instance) -> NewWork {
    NewWork {
        key: key.to_owned(),
        name: key.rsplit('/').next().unwrap_or(key).to_owned(),
        status: instance.status,
        iteration: instance.iteration,
        reason: instance.reason.clone(),
        outputs: instance.outputs.clone(),
        params: instance.params.clone(),
    }
}

/// A graph for a workflow stored before graphs were (each work a task from its stored spec).
fn legacy_graph(workflow: &Workflow, works: &[Work]) -> Graph {
    let nodes = works
        .iter()
        .map(|w| {
            let task: Option<server::TaskSpec> =
                serde_json::from_str::<panda_types::TaskSpec>(&w.task_json).ok().map(Into::into);
            Node::task(&w.name, task.map(|t| template_from_wire(t, &w.name)).unwrap_or_default())
        })
        .collect();
    Graph { name: workflow.name.clone(), nodes, ..Graph::default() }
}

/// A task template from a wire task spec (the older workflow format, CreateStudy).
pub fn template_from_wire(task: server::TaskSpec, name: &str) -> TaskTemplate {
    let resources = task.resources.unwrap_or_default();
    TaskTemplate {
        name: if task.name.is_empty() { name.to_owned() } else { task.name },
        command: task.command,
        input_datasets: task.input_datasets,
        files_per_job: task.files_per_job,
        n_jobs: task.n_jobs,
        output_dataset: task.output_dataset,
        cores: resources.cores,
        memory_mb: resources.memory_mb,
        walltime_seconds: resources.walltime_seconds,
        priority: task.priority,
        environment: task.environment.into_iter().collect(),
        queues: task.queues,
        code_sha256: task.code_sha256,
        container_image: task.container_image,
        split: task.split.map(|s| SplitTemplate {
            events_per_job: s.events_per_job,
            gb_per_job: s.gb_per_job,
            walltime_target_seconds: s.walltime_target_seconds,
            seconds_per_event: s.seconds_per_event,
            merge_files_per_job: s.merge_files_per_job,
            scouts: s.scouts,
            max_attempts: s.max_attempts,
        }),
        jobs: Vec::new(),
    }
}

fn wire_spec(task: TaskTemplate, user: &str, hold_jobs: bool) -> server::TaskSpec {
    server::TaskSpec {
        name: task.name,
        user: user.to_owned(),
        command: task.command,
        input_datasets: task.input_datasets,
        files_per_job: task.files_per_job,
        n_jobs: task.n_jobs,
        output_dataset: task.output_dataset,
        resources: Some(panda_proto::common::v1::Resources {
            cores: task.cores,
            memory_mb: task.memory_mb,
            disk_mb: 0,
            walltime_seconds: task.walltime_seconds,
        }),
        priority: task.priority,
        environment: task.environment.into_iter().collect(),
        queues: task.queues,
        code_sha256: task.code_sha256,
        merge_command: String::new(),
        schema_version: 0,
        // JEDI's rules as the work wrote them (brokerage requirements are not carried yet).
        split: task.split.map(|s| server::SplitRules {
            events_per_job: s.events_per_job,
            gb_per_job: s.gb_per_job,
            walltime_target_seconds: s.walltime_target_seconds,
            seconds_per_event: s.seconds_per_event,
            merge_files_per_job: s.merge_files_per_job,
            scouts: s.scouts,
            max_attempts: s.max_attempts,
        }),
        requirements: None,
        hold_jobs,
        share: String::new(),
        container_image: task.container_image,
    }
}

fn spec_json(spec: &server::TaskSpec) -> serde_json::Value {
    serde_json::json!({
        "name": spec.name, "command": spec.command, "input_datasets": spec.input_datasets,
        "output_dataset": spec.output_dataset, "n_jobs": spec.n_jobs, "files_per_job": spec.files_per_job,
    })
}

/// Datasets produced inside the workflow are scoped to this run (`<workflow>.<id>.<name>`, plus
/// the loop iteration inside loops), so the same workflow can run twice and each iteration
/// writes its own; names of datasets produced elsewhere are kept.
fn scope_datasets(task: &mut TaskTemplate, graph: &Graph, workflow: &Workflow, key: &str) {
    let produced = |g: &Graph| -> BTreeSet<String> {
        g.nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Task(t) if !t.output_dataset.is_empty() => Some(t.output_dataset.clone()),
                _ => None,
            })
            .collect()
    };
    // Only datasets this task reads or writes matter: check those against the producers.
    if task.input_datasets.is_empty() && task.output_dataset.is_empty() {
        return;
    }
    let top = produced(graph);
    // The graph holding this instance, and its scope text.
    let (scope, local) = match key.rsplit_once('/') {
        None => (String::new(), BTreeSet::new()),
        Some((scope, _)) => {
            (scope.replace(['#', '/'], "-"), body_graph(graph, scope).map(produced).unwrap_or_default())
        }
    };
    let name = |scope: &str, d: &str| {
        if scope.is_empty() {
            format!("{}.{}.{d}", workflow.name, workflow.id)
        } else {
            format!("{}.{}.{scope}.{d}", workflow.name, workflow.id)
        }
    };
    task.input_datasets = task
        .input_datasets
        .iter()
        .map(|d| {
            if !scope.is_empty() && local.contains(d) {
                name(&scope, d)
            } else if top.contains(d) {
                name("", d)
            } else {
                d.clone()
            }
        })
        .collect();
    if !task.output_dataset.is_empty() {
        task.output_dataset = name(&scope, &task.output_dataset);
    }
}

/// Whether any work of a graph (nested ones included) holds its jobs.
fn any_holds(graph: &Graph) -> bool {
    graph.walk().iter().any(|(_, node)| release::holds(node))
}

/// The task of a work whose task is running (submitted and recorded).
fn running_task(loaded: &Loaded, key: &str) -> Option<u64> {
    (loaded.state.works.get(key).map(|i| i.status) == Some(WorkStatus::Submitted))
        .then(|| loaded.tasks.get(key).and_then(|(t, _)| *t))
        .flatten()
}

/// Keys of the works (in the same scope) whose jobs are held for files `key` writes.
fn held_children(graph: &Graph, key: &str) -> Vec<String> {
    let (scope, name) = key.rsplit_once('/').unwrap_or(("", key));
    let scope_graph = if scope.is_empty() { Some(graph) } else { body_graph(graph, scope) };
    scope_graph
        .map(|g| {
            g.nodes
                .iter()
                .filter(|n| release::holds(n) && release::file_parents(n).any(|p| p == name))
                .map(|n| plan::key_in(scope, &n.name))
                .collect()
        })
        .unwrap_or_default()
}

/// The nested graph a scope (`loop#2`, `outer#1/inner#3`) runs.
fn body_graph<'g>(graph: &'g Graph, scope: &str) -> Option<&'g Graph> {
    let mut current = graph;
    for part in scope.split('/') {
        let (name, _) = part.split_once('#')?;
        current = match &current.node(name)?.kind {
            NodeKind::Task(_) => return None,
            NodeKind::Subworkflow(body) => body,
            NodeKind::Loop(spec) => &spec.body,
        };
    }
    Some(current)
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
