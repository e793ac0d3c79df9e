//! The job generator: a registered (or pending) task is read from the server, split into jobs,
//! brokered, and its jobs inserted in one call. Safe to repeat: the server refuses a second
//! insertion, which counts as done.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use panda_client::ServerClient;
use panda_proto::convert::WireEnum;
use panda_proto::server::v1 as wire;
use panda_types::rules::DEFAULT_MAX_ATTEMPTS;
use panda_types::spec::{TaskInput, TaskSpecDraft};
use panda_types::{JobStatus, Resources, StateMachine, TaskId, TaskSpec, TaskStatus};
use tracing::{info, instrument, warn};

use crate::brokerage::{self, Load, QueueState, Snapshot};
use crate::error::Error;
use crate::{retry, scouting, split};

/// A task's input as found: the finished files of its datasets, and why to wait for more while
/// one of them is still open.
#[derive(Debug, Default)]
struct Inputs {
    files: Vec<split::InputFile>,
    open: Option<String>,
}

/// What an insertion is, for the server.
#[derive(Debug, Clone, Copy, Default)]
struct Insertion {
    /// The task's scouts.
    scouting: bool,
    /// More jobs of a running task, for new input files.
    more: bool,
    /// An input dataset was still open when the input was read.
    input_open: bool,
}

/// What processing a task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Jobs were inserted.
    Generated(usize),
    /// The task was parked in pending with this reason.
    Pending(String),
    /// Nothing to do: the task is in this state (jobs exist or it ended).
    Skipped(TaskStatus),
    /// Failed jobs got their next attempt.
    Retried(usize),
    /// The task's merge jobs were inserted.
    Merging(usize),
    /// The task cannot run (bad input, every scout failed): broken with this reason.
    Broken(String),
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
    /// `panda_jedi_jobs_retried_total`: failed jobs given another attempt.
    pub jobs_retried: Counter,
}

impl Stats {
    /// Registers the counters under `panda_jedi_`.
    pub fn register(&self, registry: &mut Registry) {
        let jedi = registry.sub_registry_with_prefix("panda_jedi");
        jedi.register("tasks_processed", "Tasks whose jobs were generated", self.tasks_processed.clone());
        jedi.register("jobs_generated", "Jobs generated and brokered", self.jobs_generated.clone());
        jedi.register("tasks_pending", "Times a task was parked in pending", self.tasks_pending.clone());
        jedi.register("jobs_retried", "Failed jobs given another attempt", self.jobs_retried.clone());
    }
}

/// JEDI's job generator.
#[derive(Clone)]
pub struct Jedi {
    server: ServerClient,
    settings: brokerage::Settings,
    /// Counters.
    pub stats: Stats,
}

impl Jedi {
    /// A generator talking to the server through `server`.
    pub fn new(server: ServerClient, settings: brokerage::Settings) -> Self {
        Self { server, settings, stats: Stats::default() }
    }

    /// Moves one task on: generates and brokers its jobs (registered, pending), judges its scouts
    /// and generates the rest (scouting), or retries its failed jobs (running).
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
        if !matches!(status, TaskStatus::Registered | TaskStatus::Pending | TaskStatus::Scouting | TaskStatus::Running)
        {
            return Ok(Outcome::Skipped(status));
        }
        let counts = task.job_counts.unwrap_or_default();
        let spec = task.spec.ok_or(Error::Protocol { call: "GetTask", task_id, detail: "no spec".into() })?;
        let spec = TaskSpecDraft::from(spec).validate().map_err(|errors| Error::Protocol {
            call: "GetTask",
            task_id,
            detail: errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        })?;
        match status {
            TaskStatus::Scouting => self.after_scouts(task_id, &spec).await,
            TaskStatus::Running => self.running(task_id, &spec, &counts, task.awaits_input).await,
            _ => self.generate(task_id, &spec).await,
        }
    }

    /// The task's input files, or why it must wait. A dataset still being written gives the
    /// files finished so far (streaming input: the task runs on them and gets jobs for the rest as
    /// they arrive); the task waits only while such a dataset has no file yet.
    async fn input_files(
        &self,
        task_id: TaskId,
        spec: &TaskSpec,
    ) -> Result<Result<Vec<split::InputFile>, String>, Error> {
        Ok(self.inputs(task_id, spec).await?.and_then(|inputs| match inputs.open {
            Some(reason) if inputs.files.is_empty() => Err(reason),
            _ => Ok(inputs.files),
        }))
    }

    /// The task's input files, and whether a dataset is still open (with the reason to wait).
    async fn inputs(&self, task_id: TaskId, spec: &TaskSpec) -> Result<Result<Inputs, String>, Error> {
        let TaskInput::Datasets { names, .. } = &spec.input else { return Ok(Ok(Inputs::default())) };
        let mut files = Vec::new();
        let mut open = None;
        for name in names {
            let dataset = self
                .server
                .catalog
                .clone()
                .get_dataset_contents(wire::GetDatasetContentsRequest { name: name.clone() })
                .await
                .map_err(|status| Error::Server { call: "GetDatasetContents", task_id, status })?
                .into_inner()
                .dataset
                .ok_or(Error::Protocol { call: "GetDatasetContents", task_id, detail: "no dataset".into() })?;
            // A producer that failed or broke leaves nothing more to wait for.
            if matches!(dataset.status.as_str(), "failed" | "broken")
                && !dataset.files.iter().any(|f| f.status == "finished")
            {
                return Ok(Err(format!(
                    "input dataset {name:?} is {} (its producer, task {})",
                    dataset.status, dataset.task_id
                )));
            }
            if !matches!(dataset.status.as_str(), "done" | "finished" | "failed") && open.is_none() {
                open = Some(format!(
                    "input dataset {name:?} is {} and has no file yet (its producer, task {}, has not finished)",
                    dataset.status, dataset.task_id
                ));
            }
            files.extend(dataset.files.into_iter().filter(|f| f.status == "finished").map(|f| split::InputFile {
                lfn: f.lfn,
                size_bytes: f.size_bytes,
                n_events: f.n_events,
                replicas: f.replicas,
            }));
        }
        Ok(Ok(Inputs { files, open }))
    }

    /// The queues now, as brokerage sees them.
    async fn snapshot(&self, task_id: TaskId) -> Result<Snapshot, Error> {
        let queues = self
            .server
            .internal
            .clone()
            .list_queues(wire::ListQueuesRequest {})
            .await
            .map_err(|status| Error::Server { call: "ListQueues", task_id, status })?
            .into_inner()
            .queues
            .into_iter()
            .filter_map(|q| {
                let queue = q.queue?;
                let load = q.load.unwrap_or_default();
                Some(QueueState {
                    // A queue reads from its announced storage site, by default its own name.
                    site: if queue.site.is_empty() { queue.name.clone() } else { queue.site },
                    name: queue.name,
                    status: queue.status,
                    max_resources: panda_proto::convert::resources(queue.max_resources),
                    capacity: queue.max_workers,
                    load: Load {
                        running: load.sent + load.running,
                        queued: load.activated,
                        pilots: q.pilots,
                        ..Load::default()
                    },
                    seconds_since_heartbeat: q.seconds_since_heartbeat,
                    containers: queue.containers,
                    ..QueueState::online("", 0)
                })
            })
            .collect::<Vec<_>>();
        Ok(Snapshot { queues, settings: self.settings })
    }

    fn request(
        task_id: TaskId,
        spec: &TaskSpec,
        resources: Resources,
        files: &[split::InputFile],
        n_jobs: u32,
    ) -> brokerage::Request {
        brokerage::Request {
            task_id: task_id.0,
            user: spec.user.clone(),
            resources,
            architecture: spec.requirements.architecture.clone(),
            container: spec.requirements.container.clone(),
            container_image: spec.container_image.clone(),
            software_tags: spec.requirements.software_tags.clone(),
            queues: spec.queues.iter().map(|q| q.as_str().to_owned()).collect(),
            excluded_queues: spec.requirements.excluded_queues.clone(),
            input: brokerage::DataLocality::from_files(files.iter().map(|f| (f.size_bytes, f.replicas.as_slice()))),
            n_jobs,
        }
    }

    /// First generation: all jobs, or only the scouts when the task asks for them.
    async fn generate(&self, task_id: TaskId, spec: &TaskSpec) -> Result<Outcome, Error> {
        let (files, streaming) = match self.inputs(task_id, spec).await? {
            Ok(Inputs { files, open: Some(reason) }) if files.is_empty() => return self.park(task_id, reason).await,
            Ok(Inputs { files, open }) => (files, open.is_some()),
            Err(reason) => return self.park(task_id, reason).await,
        };
        let mut plans = match split::split(task_id, spec, &files, None) {
            Ok(plans) => plans,
            Err(error @ split::SplitError::EmptyInput { .. }) => return self.park(task_id, error.to_string()).await,
            // Bad input found at refinement: the task cannot ever run.
            Err(error) => return self.break_task(task_id, error.to_string()).await,
        };
        let scouts = spec.split.scouts as usize;
        // Streaming input (a dataset still open) runs without scouts: the jobs come as files do.
        let scouting = scouts > 0 && plans.len() > scouts && !streaming;
        if scouting {
            plans.truncate(scouts);
        }
        let how = Insertion { scouting, more: false, input_open: streaming };
        self.broker_and_insert(task_id, spec, plans, spec.resources, &files, how).await
    }

    /// A running task reading a dataset that was open: jobs for the files that arrived since its
    /// last jobs. `Ok(None)` when there is nothing new; the flag says whether a dataset is still
    /// open (then the task must not merge yet).
    async fn stream(&self, task_id: TaskId, spec: &TaskSpec) -> Result<(Option<Outcome>, bool), Error> {
        let Ok(inputs) = self.inputs(task_id, spec).await? else { return Ok((None, false)) };
        let open = inputs.open.is_some();
        let jobs = self.current_jobs(task_id).await?;
        let used: std::collections::HashSet<&str> =
            jobs.iter().filter(|j| !j.merge).flat_map(|j| j.input_files.iter().map(String::as_str)).collect();
        let new: Vec<split::InputFile> =
            inputs.files.iter().filter(|f| !used.contains(f.lfn.as_str())).cloned().collect();
        if new.is_empty() {
            if !open {
                // Closed, and every file has its job: tell the server the input is complete.
                self.server
                    .internal
                    .clone()
                    .insert_jobs(wire::InsertJobsRequest {
                        task_id: task_id.0,
                        jobs: Vec::new(),
                        scouting: false,
                        merge: false,
                        more: true,
                        input_open: false,
                    })
                    .await
                    .map_err(|status| Error::Server { call: "InsertJobs", task_id, status })?;
            }
            return Ok((None, open));
        }
        let first_index = jobs.iter().map(|j| j.job_index).max().unwrap_or(0) + 1;
        let plans = match split::split_from(task_id, spec, &new, None, first_index) {
            Ok(plans) => plans,
            Err(error) => return Ok((Some(self.break_task(task_id, error.to_string()).await?), open)),
        };
        info!(task_id = %task_id, files = new.len(), open, "new input files");
        let how = Insertion { scouting: false, more: true, input_open: open };
        Ok((Some(self.broker_and_insert(task_id, spec, plans, spec.resources, &new, how).await?), open))
    }

    /// Brokers `plans` and inserts them in one call (all or none), or parks the task pending with
    /// the explanation. The explanation is recorded either way.
    async fn broker_and_insert(
        &self,
        task_id: TaskId,
        spec: &TaskSpec,
        plans: Vec<split::JobPlan>,
        resources: Resources,
        files: &[split::InputFile],
        how: Insertion,
    ) -> Result<Outcome, Error> {
        let Insertion { scouting, more, input_open } = how;
        let snapshot = self.snapshot(task_id).await?;
        let request = Self::request(task_id, spec, resources, files, plans.len() as u32);
        let decision = brokerage::broker(&snapshot, &request, &mut Vec::new());
        self.server
            .brokerage
            .clone()
            .record_brokerage(wire::RecordBrokerageRequest { explanation: Some(to_wire(&decision.explanation)) })
            .await
            .map_err(|status| Error::Server { call: "RecordBrokerage", task_id, status })?;
        if decision.explanation.is_pending() {
            return self.park(task_id, decision.explanation.summary()).await;
        }
        let assignments: Vec<String> = decision.queue_names(&snapshot).into_iter().map(str::to_owned).collect();
        // Scouts run first among the task's jobs (the reference gives them max(901, priority + 1)).
        let priority = if scouting { spec.priority.max(900).saturating_add(1) } else { spec.priority };
        let jobs: Vec<wire::NewJob> = plans
            .into_iter()
            .zip(assignments)
            .map(|(plan, queue)| wire::NewJob {
                job_index: plan.index,
                queue,
                environment: {
                    let mut env: std::collections::HashMap<String, String> =
                        spec.environment.clone().into_iter().collect();
                    if !plan.event_ranges.is_empty() {
                        env.insert("PANDA_EVENT_RANGES".to_owned(), plan.event_ranges_env());
                    }
                    env
                },
                command: plan.command,
                input_files: plan.inputs,
                output_files: plan.outputs,
                resources: Some(resources.into()),
                priority,
            })
            .collect();
        let n = jobs.len();
        match self
            .server
            .internal
            .clone()
            .insert_jobs(wire::InsertJobsRequest { task_id: task_id.0, jobs, scouting, merge: false, more, input_open })
            .await
        {
            Ok(_) => {
                info!(task_id = %task_id, jobs = n, scouting, "jobs generated");
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

    /// The current attempt of each of the task's jobs.
    async fn current_jobs(&self, task_id: TaskId) -> Result<Vec<wire::Job>, Error> {
        let mut by_index: std::collections::BTreeMap<u32, wire::Job> = std::collections::BTreeMap::new();
        let mut after = 0;
        loop {
            let page = self
                .server
                .jobs
                .clone()
                .list_jobs(wire::ListJobsRequest {
                    task_id: task_id.0,
                    limit: 10_000,
                    after_job_id: after,
                    ..Default::default()
                })
                .await
                .map_err(|status| Error::Server { call: "ListJobs", task_id, status })?
                .into_inner();
            for job in page.jobs {
                match by_index.get(&job.job_index) {
                    Some(have) if have.attempt_nr >= job.attempt_nr => {}
                    _ => {
                        by_index.insert(job.job_index, job);
                    }
                }
            }
            if page.next_after == 0 {
                return Ok(by_index.into_values().collect());
            }
            after = page.next_after;
        }
    }

    /// A scouting task: waits for its scouts, breaks it when they all failed, or generates the
    /// rest of its jobs sized by what the scouts measured.
    async fn after_scouts(&self, task_id: TaskId, spec: &TaskSpec) -> Result<Outcome, Error> {
        let files = match self.input_files(task_id, spec).await? {
            Ok(files) => files,
            Err(reason) => return self.park(task_id, reason).await,
        };
        let plans = match split::split(task_id, spec, &files, None) {
            Ok(plans) => plans,
            Err(error) => return self.break_task(task_id, error.to_string()).await,
        };
        let jobs = self.current_jobs(task_id).await?;
        let reports: Vec<scouting::ScoutReport> = jobs
            .iter()
            .map(|j| {
                let status = JobStatus::from_wire("status", j.status).unwrap_or(JobStatus::Pending);
                scouting::ScoutReport {
                    job_id: j.job_id,
                    ended: status.is_final(),
                    finished: status == JobStatus::Finished,
                    error: format!("error {} {}", j.error_code, j.error_diag).trim_end().to_owned(),
                    wall_seconds: j.wall_time_seconds,
                    max_rss_kb: j.max_rss_kb,
                    n_events: plans.iter().find(|p| p.index == j.job_index).map_or(0, |p| p.n_events),
                    output_bytes: j.output_files.iter().map(|f| f.size_bytes).sum(),
                }
            })
            .collect();
        match scouting::evaluate(&reports) {
            scouting::Verdict::Wait => Ok(Outcome::Skipped(TaskStatus::Scouting)),
            scouting::Verdict::Failed { errors } => {
                let reason = format!("all {} scout jobs failed: {}", errors.len(), errors.join("; "));
                self.break_task(task_id, reason).await
            }
            scouting::Verdict::Succeeded(tuning) => {
                let scouts = spec.split.scouts;
                let rest = match split::split_rest(task_id, spec, &files, tuning.micros_per_event, scouts) {
                    Ok(rest) => rest,
                    Err(error) => return self.break_task(task_id, error.to_string()).await,
                };
                let resources = tuning.resources(spec.resources, split::events_per_job(spec, tuning.micros_per_event));
                info!(task_id = %task_id, ?tuning, jobs = rest.len(), "scouts done; generating the rest");
                self.broker_and_insert(task_id, spec, rest, resources, &files, Insertion::default()).await
            }
        }
    }

    /// A running task: its failed jobs' next attempts first; once every job has ended, its merge
    /// jobs if it merges.
    async fn running(
        &self,
        task_id: TaskId,
        spec: &TaskSpec,
        counts: &wire::JobCounts,
        awaits_input: bool,
    ) -> Result<Outcome, Error> {
        if counts.failed > 0 {
            let retried = self.retry_failed(task_id, spec).await?;
            if matches!(retried, Outcome::Retried(_)) {
                return Ok(retried);
            }
        }
        let mut open = false;
        if awaits_input {
            let (generated, still_open) = self.stream(task_id, spec).await?;
            if let Some(outcome) = generated {
                return Ok(outcome);
            }
            open = still_open;
        }
        let live = counts.total.saturating_sub(counts.finished + counts.failed + counts.cancelled);
        match spec.split.merge_files_per_job {
            // Merging waits for the whole input.
            Some(_) if open => Ok(Outcome::Skipped(TaskStatus::Running)),
            Some(files_per_job) if live == 0 && counts.finished > 0 => self.merge(task_id, spec, files_per_job).await,
            _ => Ok(Outcome::Skipped(TaskStatus::Running)),
        }
    }

    /// Merge jobs over the outputs of the task's finished jobs, `files_per_job` each, inserted
    /// once (the server refuses a second batch).
    async fn merge(&self, task_id: TaskId, spec: &TaskSpec, files_per_job: u32) -> Result<Outcome, Error> {
        let jobs = self.current_jobs(task_id).await?;
        if jobs.iter().any(|j| j.merge) {
            return Ok(Outcome::Skipped(TaskStatus::Running));
        }
        let Some(dataset) = spec.output_dataset.as_deref() else {
            return Ok(Outcome::Skipped(TaskStatus::Running));
        };
        // The produced outputs, in job order (the dataset knows which were produced).
        let produced: std::collections::HashSet<String> = self
            .server
            .catalog
            .clone()
            .get_dataset_contents(wire::GetDatasetContentsRequest { name: dataset.to_owned() })
            .await
            .map_err(|status| Error::Server { call: "GetDatasetContents", task_id, status })?
            .into_inner()
            .dataset
            .map(|d| d.files.into_iter().filter(|f| f.status == "finished").map(|f| f.lfn).collect())
            .unwrap_or_default();
        let outputs: Vec<String> = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Finished.to_wire())
            .flat_map(|j| j.output_files.iter().map(|f| f.lfn.clone()))
            .filter(|lfn| produced.contains(lfn))
            .collect();
        if outputs.is_empty() {
            return Ok(Outcome::Skipped(TaskStatus::Running));
        }
        let first_index = jobs.iter().map(|j| j.job_index).max().unwrap_or(0) + 1;
        let plans = split::merge_plans(task_id, dataset, spec.merge_command(), &outputs, files_per_job, first_index);
        let snapshot = self.snapshot(task_id).await?;
        let request = Self::request(task_id, spec, spec.resources, &[], plans.len() as u32);
        let decision = brokerage::broker(&snapshot, &request, &mut Vec::new());
        let queues = decision.queue_names(&snapshot);
        if queues.is_empty() {
            // Stays running; the next sweep tries again when a queue is back.
            warn!(task_id = %task_id, reason = %decision.explanation.summary(), "no queue for the merge jobs");
            return Ok(Outcome::Skipped(TaskStatus::Running));
        }
        let jobs: Vec<wire::NewJob> = plans
            .into_iter()
            .zip(queues)
            .map(|(plan, queue)| wire::NewJob {
                job_index: plan.index,
                queue: queue.to_owned(),
                environment: spec.environment.clone().into_iter().collect(),
                command: plan.command,
                input_files: plan.inputs,
                output_files: plan.outputs,
                resources: Some(spec.resources.into()),
                priority: spec.priority,
            })
            .collect();
        let n = jobs.len();
        match self
            .server
            .internal
            .clone()
            .insert_jobs(wire::InsertJobsRequest {
                task_id: task_id.0,
                jobs,
                scouting: false,
                merge: true,
                more: false,
                input_open: false,
            })
            .await
        {
            Ok(_) => {
                info!(task_id = %task_id, jobs = n, "merge jobs generated");
                self.stats.jobs_generated.inc_by(n as u64);
                Ok(Outcome::Merging(n))
            }
            // Inserted by another delivery, or the task moved on.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Ok(Outcome::Skipped(TaskStatus::Running))
            }
            Err(status) => Err(Error::Server { call: "InsertJobs", task_id, status }),
        }
    }

    /// A running task with retries: the next attempt of each failed job with attempts left,
    /// with the request its error calls for, rebrokered for that request.
    async fn retry_failed(&self, task_id: TaskId, spec: &TaskSpec) -> Result<Outcome, Error> {
        let max = spec.split.max_attempts();
        if max <= 1 {
            return Ok(Outcome::Skipped(TaskStatus::Running));
        }
        let failed: Vec<wire::Job> = self
            .current_jobs(task_id)
            .await?
            .into_iter()
            .filter(|j| j.status == JobStatus::Failed.to_wire() && j.attempt_nr < max)
            .collect();
        if failed.is_empty() {
            return Ok(Outcome::Skipped(TaskStatus::Running));
        }
        let snapshot = self.snapshot(task_id).await?;
        let mut retries = Vec::new();
        for job in &failed {
            let attempt = retry::FailedAttempt {
                attempt_nr: job.attempt_nr,
                error_code: job.error_code,
                error_diag: job.error_diag.clone(),
                max_rss_kb: job.max_rss_kb,
            };
            let resources = panda_proto::convert::resources(job.resources);
            let retry::RetryAction::Retry { resources, change, .. } = retry::decide(&attempt, max, resources) else {
                continue;
            };
            // A changed request may not fit the old queue: broker the one job again.
            let queue = if change.is_empty() {
                String::new()
            } else {
                let request = Self::request(task_id, spec, resources, &[], 1);
                let decision = brokerage::broker(&snapshot, &request, &mut Vec::new());
                decision.queue_names(&snapshot).first().map(|q| (*q).to_owned()).unwrap_or_default()
            };
            retries.push(wire::RetryJob { job_id: job.job_id, resources: Some(resources.into()), change, queue });
        }
        let n = retries.len();
        match self
            .server
            .generation
            .clone()
            .retry_jobs(wire::RetryJobsRequest { task_id: task_id.0, jobs: retries })
            .await
        {
            Ok(_) => {
                info!(task_id = %task_id, jobs = n, "failed jobs retried");
                self.stats.jobs_retried.inc_by(n as u64);
                Ok(Outcome::Retried(n))
            }
            // A concurrent sweep retried them first, or the task moved on.
            Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument) => {
                warn!(task_id = %task_id, %status, "retry refused");
                Ok(Outcome::Skipped(TaskStatus::Running))
            }
            Err(status) => Err(Error::Server { call: "RetryJobs", task_id, status }),
        }
    }

    async fn break_task(&self, task_id: TaskId, reason: String) -> Result<Outcome, Error> {
        warn!(task_id = %task_id, %reason, "task broken");
        match self
            .server
            .generation
            .clone()
            .break_task(wire::BreakTaskRequest { task_id: task_id.0, reason: reason.clone() })
            .await
        {
            Ok(_) => Ok(Outcome::Broken(reason)),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => Ok(Outcome::Skipped(TaskStatus::Broken)),
            Err(status) => Err(Error::Server { call: "BreakTask", task_id, status }),
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

    /// Examines every registered, pending and scouting task once, oldest first, and the running
    /// ones with failed jobs to retry (the safety-net sweep for lost events and pending tasks
    /// whose reason may have gone; the only trigger for scout verdicts and retries).
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
                    statuses: vec![
                        TaskStatus::Registered.to_wire(),
                        TaskStatus::Pending.to_wire(),
                        TaskStatus::Scouting.to_wire(),
                        TaskStatus::Running.to_wire(),
                    ],
                    limit: 100,
                    oldest_first: true,
                    after_task_id: after,
                    ..Default::default()
                })
                .await?
                .into_inner();
            for task in page.tasks {
                if task.status == TaskStatus::Running.to_wire() && !running_task_needs_jedi(&task) {
                    continue;
                }
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

/// Whether a running task waits for JEDI: a failed job it retries, or (every job ended, some
/// finished) the merge jobs it asks for.
fn running_task_needs_jedi(task: &wire::Task) -> bool {
    let counts = task.job_counts.unwrap_or_default();
    let split = task.spec.as_ref().and_then(|s| s.split.as_ref());
    let retries = split.and_then(|s| s.max_attempts).unwrap_or(DEFAULT_MAX_ATTEMPTS) > 1;
    let live = counts.total.saturating_sub(counts.finished + counts.failed + counts.cancelled);
    let merges = split.is_some_and(|s| s.merge_files_per_job.is_some());
    // A drained running task that reads datasets waits for files of an open one (or its end).
    (counts.failed > 0 && retries) || (merges && live == 0 && counts.finished > 0) || (task.awaits_input && live == 0)
}

/// The explanation as the server stores and shows it.
pub fn to_wire(e: &brokerage::Explanation) -> wire::BrokerageExplanation {
    wire::BrokerageExplanation {
        task_id: e.task_id,
        decided_at: Some(panda_proto::convert::timestamp(chrono::Utc::now())),
        pending: e.is_pending(),
        summary: e.summary(),
        n_jobs: e.n_jobs,
        dropped: e
            .dropped
            .iter()
            .map(|d| wire::DroppedQueue {
                queue: d.queue.clone(),
                filter: d.filter.as_str().to_owned(),
                reason: d.reason.to_string(),
            })
            .collect(),
        chosen: e
            .chosen
            .iter()
            .map(|c| wire::ChosenQueue {
                queue: c.queue.clone(),
                jobs: c.jobs,
                weight: c.score.weight,
                slots: c.score.slots,
                queued: c.score.queued,
                assigned: c.score.assigned,
                taken: c.score.taken,
                many_assigned: c.score.many_assigned,
                locality: c.score.locality,
            })
            .collect(),
    }
}
