//! The job generator: a registered (or pending) task is read from the server, split into jobs,
//! brokered, and its jobs inserted in one call. Safe to repeat: the server refuses a second
//! insertion, which counts as done.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use panda_client::ServerClient;
use panda_proto::convert::WireEnum;
use panda_proto::server::v1 as wire;
use panda_types::spec::{TaskInput, TaskSpecDraft};
use panda_types::{TaskId, TaskStatus};
use tracing::{info, instrument, warn};

use crate::brokerage::{self, Decision, QueueView};
use crate::error::Error;
use crate::split;

/// What processing a task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Jobs were inserted.
    Generated(usize),
    /// The task was parked in pending with this reason.
    Pending(String),
    /// Nothing to do: the task is in this state (jobs exist or it ended).
    Skipped(TaskStatus),
}

/// What JEDI did: `GetStats` and the Prometheus metrics read the same counters.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// `panda_jedi_tasks_processed_total`: tasks that got jobs.
    pub tasks_processed: Counter,
    /// `panda_jedi_jobs_generated_total`.
    pub jobs_generated: Counter,
    /// `panda_jedi_tasks_pending_total`: times a task was parked in pending.
    pub tasks_pending: Counter,
}

impl Stats {
    /// Registers the counters under `panda_jedi_`.
    pub fn register(&self, registry: &mut Registry) {
        let jedi = registry.sub_registry_with_prefix("panda_jedi");
        jedi.register("tasks_processed", "Tasks whose jobs were generated", self.tasks_processed.clone());
        jedi.register("jobs_generated", "Jobs generated and brokered", self.jobs_generated.clone());
        jedi.register("tasks_pending", "Times a task was parked in pending", self.tasks_pending.clone());
    }
}

/// JEDI's job generator.
#[derive(Clone)]
pub struct Jedi {
    server: ServerClient,
    queue_stale_after_seconds: u64,
    /// Counters.
    pub stats: Stats,
}

impl Jedi {
    /// A generator talking to the server through `server`.
    pub fn new(server: ServerClient, queue_stale_after_seconds: u64) -> Self {
        Self { server, queue_stale_after_seconds, stats: Stats::default() }
    }

    /// Generates and brokers the jobs of one task.
    ///
    /// # Errors
    /// [`Error`] when the server fails; [`Error::is_transient`] says whether to retry.
    #[instrument(skip(self), fields(task_id = %task_id))]
    pub async fn process_task(&self, task_id: TaskId) -> Result<Outcome, Error> {
        let server_error = |call: &'static str| move |status: tonic::Status| Error::Server { call, task_id, status };
        let task = self
            .server
            .tasks
            .clone()
            .get_task(wire::GetTaskRequest { task_id: task_id.0 })
            .await
            .map_err(server_error("GetTask"))?
            .into_inner()
            .task
            .ok_or(Error::Protocol { call: "GetTask", task_id, detail: "no task in the answer".into() })?;
        let status = TaskStatus::from_wire("status", task.status).map_err(|e| Error::Protocol {
            call: "GetTask",
            task_id,
            detail: e.to_string(),
        })?;
        if !matches!(status, TaskStatus::Registered | TaskStatus::Pending) {
            return Ok(Outcome::Skipped(status));
        }
        let spec = task.spec.ok_or(Error::Protocol { call: "GetTask", task_id, detail: "no spec".into() })?;
        let spec = TaskSpecDraft::from(spec).validate().map_err(|errors| Error::Protocol {
            call: "GetTask",
            task_id,
            detail: errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        })?;

        let input_files = match &spec.input {
            TaskInput::Datasets { names, .. } => {
                let mut files = Vec::new();
                for name in names {
                    let dataset = self
                        .server
                        .internal
                        .clone()
                        .get_dataset(wire::GetDatasetRequest { name: name.clone() })
                        .await
                        .map_err(server_error("GetDataset"))?
                        .into_inner()
                        .dataset
                        .ok_or(Error::Protocol { call: "GetDataset", task_id, detail: "no dataset".into() })?;
                    // A dataset still being written would give a partial split: wait until its
                    // producer closes it.
                    if !matches!(dataset.status.as_str(), "done" | "finished") {
                        let reason = format!(
                            "input dataset {name:?} is {} (its producer, task {}, has not finished)",
                            dataset.status, dataset.task_id
                        );
                        return self.park(task_id, reason).await;
                    }
                    files.extend(dataset.files.into_iter().filter(|f| f.status == "finished").map(|f| f.lfn));
                }
                files
            }
            TaskInput::Generated { .. } => Vec::new(),
        };
        let plans = match split::split(task_id, &spec, &input_files) {
            Ok(plans) => plans,
            Err(error) => return self.park(task_id, error.to_string()).await,
        };

        let queues = self
            .server
            .internal
            .clone()
            .list_queues(wire::ListQueuesRequest {})
            .await
            .map_err(server_error("ListQueues"))?
            .into_inner()
            .queues
            .into_iter()
            .filter_map(|q| {
                let queue = q.queue?;
                let load = q.load.unwrap_or_default();
                Some(QueueView {
                    name: queue.name,
                    status: queue.status,
                    max_resources: panda_proto::convert::resources(queue.max_resources),
                    max_workers: queue.max_workers,
                    load: load.activated + load.sent + load.running,
                    seconds_since_heartbeat: q.seconds_since_heartbeat,
                })
            })
            .collect::<Vec<_>>();
        let assignments = match brokerage::broker(&spec, plans.len(), &queues, self.queue_stale_after_seconds) {
            Decision::Assigned(assignments) => assignments,
            Decision::NoQueue(rejections) => return self.park(task_id, brokerage::explain(&rejections)).await,
        };

        let jobs: Vec<wire::NewJob> = plans
            .into_iter()
            .zip(assignments)
            .map(|(plan, queue)| wire::NewJob {
                job_index: plan.index,
                queue,
                command: plan.command,
                environment: spec.environment.clone().into_iter().collect(),
                input_files: plan.inputs,
                output_files: plan.outputs,
                resources: Some(spec.resources.into()),
                priority: spec.priority,
            })
            .collect();
        let n = jobs.len();
        match self.server.internal.clone().insert_jobs(wire::InsertJobsRequest { task_id: task_id.0, jobs }).await {
            Ok(_) => {
                info!(task_id = %task_id, jobs = n, "jobs generated");
                self.stats.tasks_processed.inc();
                self.stats.jobs_generated.inc_by(n as u64);
                Ok(Outcome::Generated(n))
            }
            // Another delivery of the same event (or a JEDI replica) got there first.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Ok(Outcome::Skipped(TaskStatus::Running))
            }
            Err(status) => Err(Error::Server { call: "InsertJobs", task_id, status }),
        }
    }

    async fn park(&self, task_id: TaskId, reason: String) -> Result<Outcome, Error> {
        warn!(task_id = %task_id, %reason, "task pending");
        match self
            .server
            .internal
            .clone()
            .set_task_pending(wire::SetTaskPendingRequest { task_id: task_id.0, reason: reason.clone() })
            .await
        {
            Ok(_) => {
                self.stats.tasks_pending.inc();
                Ok(Outcome::Pending(reason))
            }
            // The task left the active states meanwhile (e.g. killed): nothing to do.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Ok(Outcome::Skipped(TaskStatus::Aborting))
            }
            Err(status) => Err(Error::Server { call: "SetTaskPending", task_id, status }),
        }
    }

    /// Examines every registered and pending task once, oldest first (the safety-net sweep:
    /// lost events, and pending tasks whose reason may have gone).
    ///
    /// # Errors
    /// When the server cannot list tasks.
    pub async fn sweep_once(&self) -> Result<usize, tonic::Status> {
        let mut generated = 0;
        let mut after = 0;
        loop {
            let page = self
                .server
                .tasks
                .clone()
                .list_tasks(wire::ListTasksRequest {
                    statuses: vec![TaskStatus::Registered.to_wire(), TaskStatus::Pending.to_wire()],
                    limit: 100,
                    oldest_first: true,
                    after_task_id: after,
                    ..Default::default()
                })
                .await?
                .into_inner();
            for task in page.tasks {
                match self.process_task(TaskId(task.task_id)).await {
                    Ok(Outcome::Generated(_)) => generated += 1,
                    Ok(_) => {}
                    Err(error) => warn!(%error, "sweep could not process a task"),
                }
            }
            if page.next_after == 0 {
                return Ok(generated);
            }
            after = page.next_after;
        }
    }
}
