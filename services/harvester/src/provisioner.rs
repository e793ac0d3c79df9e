//! The provisioning cycle: report queues to the server (also the harvester's heartbeat), renew
//! the credentials workers need (`Submitter::refresh_credentials`), monitor live workers, submit
//! new ones where jobs wait, and clean up old ones. Besides the cycle: `kill_worker` (admin
//! kills) and `reload` (a new queue file). A cycle always runs to
//! its end; errors are logged and retried next cycle, and one queue's failure does not stop the
//! others.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use panda_bus::Envelope;
use panda_bus::outbox::{self, Outbox};
use panda_client::ServerClient;
use panda_proto::convert::WireEnum;
use panda_proto::events::v1::WorkerStatusChanged;
use panda_proto::server::v1 as wire;
use panda_types::{StateMachine, WorkerStatus};
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use tracing::{info, warn};

use crate::adjuster::{self, Limits, WorkerCounts};
use crate::plugins::{PluginConfig, Plugins, WorkerRef, WorkerSpec};
use crate::queues::{QueueConfig, QueueStatus};
use crate::store::{self, Worker};

/// A configured queue with its plugins.
#[derive(Clone)]
pub struct Queue {
    /// Name.
    pub name: String,
    /// Settings.
    pub config: QueueConfig,
    /// Plugin instances.
    pub plugins: Plugins,
}

/// The harvester's working state.
#[derive(Clone)]
pub struct Provisioner {
    /// This instance.
    pub harvester_id: String,
    /// Queues by name; replaced whole by a config reload.
    queues: Arc<std::sync::RwLock<Arc<BTreeMap<String, Queue>>>>,
    db: DatabaseConnection,
    outbox: Outbox,
    server: ServerClient,
    server_url: String,
    worker_dir: PathBuf,
    keep_finished: Duration,
    server_kill_grace: Duration,
    /// When this process started: a worker still `pending` from before was left by a harvester
    /// that stopped during its submission.
    started_at: chrono::DateTime<Utc>,
    /// Counters.
    pub metrics: crate::metrics::Metrics,
}

const LIVE: &[WorkerStatus] =
    &[WorkerStatus::Submitted, WorkerStatus::Ready, WorkerStatus::Running, WorkerStatus::Idle];

/// What a reload did, by queue name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// New queues.
    pub added: Vec<String>,
    /// Queues whose settings changed.
    pub changed: Vec<String>,
    /// Queues as they were.
    pub unchanged: Vec<String>,
    /// Queues gone from the file, with no live worker.
    pub removed: Vec<String>,
    /// Queues gone from the file, kept offline until their live workers end.
    pub draining: Vec<String>,
}

/// Why a kill request did not go through.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// No such worker.
    #[error("worker {0} not found")]
    NotFound(i64),
    /// The worker's queue is not served any more.
    #[error("worker {worker_id}'s queue {queue:?} is not served by this harvester")]
    UnknownQueue {
        /// Worker.
        worker_id: i64,
        /// Its queue.
        queue: String,
    },
    /// The resource refused or could not be reached; the worker keeps its state.
    #[error("killing worker {worker_id} failed: {diag}")]
    Plugin {
        /// Worker.
        worker_id: i64,
        /// What the plugin said.
        diag: String,
    },
    /// The database.
    #[error(transparent)]
    Cycle(#[from] CycleError),
}

/// A cycle step failed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// The harvester database.
    #[error("harvester database")]
    Db(#[from] DbErr),
    /// Push mode: the job file could not be written.
    #[error("cannot write the job file of worker {worker_id}: {diag}")]
    JobFile {
        /// Worker.
        worker_id: i64,
        /// What failed.
        diag: String,
    },
    /// The server.
    #[error("server call {call} failed: {status}")]
    Server {
        /// Which call.
        call: &'static str,
        /// What it said.
        status: tonic::Status,
    },
}

impl Provisioner {
    /// Builds the provisioner.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        harvester_id: String,
        queues: BTreeMap<String, Queue>,
        db: DatabaseConnection,
        outbox: Outbox,
        server: ServerClient,
        server_url: String,
        worker_dir: PathBuf,
        keep_finished: Duration,
    ) -> Self {
        Self {
            harvester_id,
            queues: Arc::new(std::sync::RwLock::new(Arc::new(queues))),
            db,
            outbox,
            server,
            server_url,
            worker_dir,
            keep_finished,
            server_kill_grace: Duration::from_secs(60),
            started_at: Utc::now(),
            metrics: Default::default(),
        }
    }

    /// How long a pilot has to stop a job the server killed before its worker is killed through
    /// the plugin (default 60 s).
    pub fn with_server_kill_grace(mut self, grace: Duration) -> Self {
        self.server_kill_grace = grace;
        self
    }

    /// The harvester database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The queues now (a snapshot: a reload replaces the map, not what a cycle holds).
    pub fn queues(&self) -> Arc<BTreeMap<String, Queue>> {
        // A panic while holding the lock cannot leave the map half-written (it is replaced whole).
        self.queues.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Serves the queues of a newly loaded file. A queue whose settings did not change keeps its
    /// plugin instance (and what it remembers); a changed or new queue gets one from `build`; a
    /// queue gone from the file that still has live workers stays, offline, until they end (so
    /// none is orphaned), then goes at a later reload or restart.
    ///
    /// # Errors
    /// The database, when counting a removed queue's workers.
    pub async fn reload(
        &self,
        file: crate::queues::QueueFile,
        build: impl Fn(&str, &PluginConfig) -> Plugins,
    ) -> Result<ReloadSummary, CycleError> {
        let old = self.queues();
        let mut summary = ReloadSummary::default();
        let mut queues = BTreeMap::new();
        for (name, config) in file.queues {
            let queue = match old.get(&name) {
                Some(current) if current.config == config => {
                    summary.unchanged.push(name.clone());
                    current.clone()
                }
                Some(current) => {
                    summary.changed.push(name.clone());
                    // Same plugin settings (only limits changed): keep the instance.
                    let plugins = if current.config.plugin == config.plugin {
                        current.plugins.clone()
                    } else {
                        build(&name, &config.plugin)
                    };
                    Queue { name: name.clone(), config, plugins }
                }
                None => {
                    summary.added.push(name.clone());
                    let plugins = build(&name, &config.plugin);
                    Queue { name: name.clone(), config, plugins }
                }
            };
            queues.insert(name, queue);
        }
        let gone: Vec<(&String, &Queue)> = old.iter().filter(|(name, _)| !queues.contains_key(*name)).collect();
        for (name, queue) in gone {
            if store::workers_in(&self.db, Some(name), LIVE).await?.is_empty() {
                summary.removed.push(name.clone());
            } else {
                summary.draining.push(name.clone());
                let mut queue = queue.clone();
                queue.config.status = QueueStatus::Offline;
                queues.insert(name.clone(), queue);
            }
        }
        *self.queues.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(queues);
        Ok(summary)
    }

    /// One full cycle.
    pub async fn cycle(&self) {
        if let Err(error) = self.report_queues().await {
            warn!(%error, "could not report queues to the server");
        }
        if let Err(error) = self.recover_interrupted().await {
            warn!(%error, "could not check for orphaned workers and stranded jobs; retrying next cycle");
        }
        let queues = self.queues();
        // Credential manager: what workers need to reach the server stays fresh where they run.
        for queue in queues.values() {
            match queue.plugins.submitter.refresh_credentials().await {
                Ok(Some(what)) => info!(queue = %queue.name, %what, "credentials renewed"),
                Ok(None) => {}
                Err(diag) => warn!(queue = %queue.name, %diag, "credentials could not be renewed"),
            }
        }
        for queue in queues.values() {
            if let Err(error) = self.monitor(queue).await {
                warn!(queue = %queue.name, %error, "monitoring failed");
            }
        }
        match self.demand().await {
            Ok(demand) => {
                for queue in queues.values() {
                    let activated = demand.get(&queue.name).copied().unwrap_or(0);
                    if let Err(error) = self.submit(queue, activated).await {
                        warn!(queue = %queue.name, %error, "submission failed");
                    }
                }
            }
            Err(error) => warn!(%error, "could not read queue demand; no submissions this cycle"),
        }
        if let Err(error) = self.clean().await {
            warn!(%error, "cleaning failed");
        }
    }

    async fn report_queues(&self) -> Result<(), CycleError> {
        let queues = self
            .queues()
            .values()
            .map(|q| wire::Queue {
                name: q.name.clone(),
                status: q.config.status.as_str().to_owned(),
                max_resources: Some(panda_types::Resources::from(q.config.resources).into()),
                max_workers: q.config.max_workers,
                harvester_id: self.harvester_id.clone(),
                site: q.config.site.clone().unwrap_or_default(),
                containers: q.config.containers.iter().map(|c| c.as_str().to_owned()).collect(),
            })
            .collect();
        self.server
            .internal
            .clone()
            .register_queues(wire::RegisterQueuesRequest { harvester_id: self.harvester_id.clone(), queues })
            .await
            .map_err(|status| CycleError::Server { call: "RegisterQueues", status })?;
        Ok(())
    }

    async fn demand(&self) -> Result<BTreeMap<String, u32>, CycleError> {
        let names = self.queues().keys().cloned().collect();
        let loads = self
            .server
            .internal
            .clone()
            .queue_demand(wire::QueueDemandRequest { queues: names })
            .await
            .map_err(|status| CycleError::Server { call: "QueueDemand", status })?
            .into_inner()
            .queues;
        Ok(loads.into_iter().map(|l| (l.queue, l.activated)).collect())
    }

    /// Moves a worker and records its event in one transaction.
    async fn transition(
        &self,
        worker: &Worker,
        to: WorkerStatus,
        batch_id: Option<&str>,
        exit_code: Option<i32>,
        diag: &str,
    ) -> Result<(), CycleError> {
        self.transition_pushed(worker, to, batch_id, exit_code, diag, None).await
    }

    /// [`Self::transition`], also moving the worker's pushed jobs to `push` in the same
    /// transaction.
    async fn transition_pushed(
        &self,
        worker: &Worker,
        to: WorkerStatus,
        batch_id: Option<&str>,
        exit_code: Option<i32>,
        diag: &str,
        push: Option<store::PushState>,
    ) -> Result<(), CycleError> {
        if worker.status.transition_to(to).is_err() {
            warn!(worker_id = worker.id, from = %worker.status, %to, "ignoring a worker state change the state machine refuses");
            return Ok(());
        }
        let txn = self.db.begin().await?;
        if !store::set_status_from(&txn, worker.id, Some(worker.status), to, batch_id, exit_code, diag).await? {
            // Someone else moved it first (a kill during a monitor cycle): theirs stands.
            txn.rollback().await?;
            info!(worker_id = worker.id, from = %worker.status, %to, "worker changed meanwhile; state change skipped");
            return Ok(());
        }
        let event = Envelope::new(
            format!("worker.{to}"),
            &WorkerStatusChanged {
                worker_id: worker.id.to_string(),
                queue: worker.queue.clone(),
                status: to.to_wire(),
                harvester_id: self.harvester_id.clone(),
            },
        );
        outbox::append(&txn, &[event]).await?;
        if let Some(push) = push {
            store::set_pushed_state(&txn, worker.id, push).await?;
        }
        txn.commit().await?;
        self.outbox.notify();
        self.metrics.transition(&worker.queue, to);
        info!(entity = "worker", id = worker.id, queue = %worker.queue, from = %worker.status, %to, "state change");
        Ok(())
    }

    /// What a harvester that stopped mid-cycle left: workers still `pending` (never reached the
    /// resource) end `missed`, and jobs fetched for them or for ended workers (push mode) go back
    /// to the server. Every cycle starts with it.
    ///
    /// # Errors
    /// The database.
    pub async fn recover_interrupted(&self) -> Result<(), CycleError> {
        self.fail_orphans().await?;
        self.release_stranded().await?;
        Ok(())
    }

    /// Workers left `pending` by a harvester that died between writing the row and calling the
    /// plugin (written before this process started, or a minute ago): they never reached the
    /// resource. Jobs fetched for them (push mode) are handed back by [`Self::release_stranded`].
    async fn fail_orphans(&self) -> Result<(), CycleError> {
        let cutoff = Utc::now() - chrono::Duration::seconds(60);
        for worker in store::workers_in(&self.db, None, &[WorkerStatus::Pending]).await? {
            if worker.created_at < cutoff || worker.created_at < self.started_at {
                self.transition(
                    &worker,
                    WorkerStatus::Missed,
                    None,
                    None,
                    "never submitted: harvester stopped during submission",
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn monitor(&self, queue: &Queue) -> Result<(), CycleError> {
        let live = store::workers_in(&self.db, Some(&queue.name), LIVE).await?;
        if live.is_empty() {
            return Ok(());
        }
        let refs: Vec<WorkerRef> = live.iter().map(worker_ref).collect();
        let results = queue.plugins.monitor.check(&refs).await;
        // Workers the resource could not tell about, grouped by reason: one log line per reason.
        let mut unknown: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (worker, result) in live.iter().zip(results) {
            match result {
                Ok(state) => {
                    let status = settled(worker.status, state.status);
                    if status != worker.status {
                        self.transition(worker, status, None, state.exit_code, &state.diag).await?;
                    } else if !state.diag.is_empty() && state.diag != worker.diag {
                        // Same state, news about it (a pending reason, a hold reason).
                        store::set_diag(&self.db, worker.id, &state.diag).await?;
                    }
                }
                Err(diag) => {
                    if diag != worker.diag {
                        store::set_diag(&self.db, worker.id, &diag).await?;
                    }
                    unknown.entry(diag).or_default().push(worker.id);
                }
            }
        }
        for (diag, ids) in unknown {
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            warn!(queue = %queue.name, workers = %ids.join(","), %diag, "worker state unknown; kept as it was");
        }
        Ok(())
    }

    async fn submit(&self, queue: &Queue, activated: u32) -> Result<(), CycleError> {
        let mut counts = WorkerCounts::default();
        for worker in store::workers_in(
            &self.db,
            Some(&queue.name),
            &[
                WorkerStatus::Pending,
                WorkerStatus::Submitted,
                WorkerStatus::Ready,
                WorkerStatus::Running,
                WorkerStatus::Idle,
            ],
        )
        .await?
        {
            match worker.status {
                WorkerStatus::Pending | WorkerStatus::Submitted => counts.queued += 1,
                _ => counts.running += 1,
            }
        }
        let limits = Limits {
            online: queue.config.status == QueueStatus::Online,
            max_workers: queue.config.max_workers,
            max_queued_workers: queue.config.max_queued_workers,
            max_new_workers_per_cycle: queue.config.max_new_workers_per_cycle,
        };
        let adjustment = adjuster::new_workers(activated, counts, limits);
        if adjustment.new_workers == 0 {
            tracing::debug!(queue = %queue.name, reason = %adjustment.reason, "no new workers");
            return Ok(());
        }
        info!(queue = %queue.name, n = adjustment.new_workers, reason = %adjustment.reason, "submitting workers");
        let pending = self.fetch_for_new_workers(queue, adjustment.new_workers).await?;
        self.submit_pending(queue, pending).await
    }

    /// Writes `n` new workers (`pending`) of `queue`. In push mode each also gets its jobs from
    /// the server (GetJob on its behalf, `jobs_per_worker` of them), stored with it in the
    /// harvester's database and then written to its job file, before anything is submitted; a
    /// worker the server has no job for is not kept. Answers the workers to submit, with their
    /// job files.
    ///
    /// # Errors
    /// The database (nothing fetched for the worker being written).
    pub async fn fetch_for_new_workers(
        &self,
        queue: &Queue,
        n: u32,
    ) -> Result<Vec<(Worker, Option<PathBuf>)>, CycleError> {
        let push = queue.config.mode == crate::queues::QueueMode::Push;
        let mut pending = Vec::new();
        for _ in 0..n {
            let txn = self.db.begin().await?;
            let worker = store::insert_pending(&txn, &queue.name, &self.worker_dir).await?;
            txn.commit().await?;
            if !push {
                pending.push((worker, None));
                continue;
            }
            match self.fetch_jobs(queue, &worker).await {
                Ok(Some(job_file)) => pending.push((worker, Some(job_file))),
                Ok(None) => {
                    // No job (left) for this queue: the worker is not needed.
                    store::delete_pending(&self.db, worker.id).await?;
                    break;
                }
                Err(error) => {
                    warn!(queue = %queue.name, worker_id = worker.id, %error, "could not fetch jobs for a new worker");
                    self.metrics.submission(&queue.name, "missed");
                    let diag = format!("jobs not fetched: {error}");
                    self.transition(&worker, WorkerStatus::Missed, None, None, &diag).await?;
                    // Jobs it holds already (recorded, file not written) go back now.
                    self.release_stranded().await?;
                    break;
                }
            }
        }
        Ok(pending)
    }

    /// Push mode: GetJob for `worker`, the answer stored with the worker (so a harvester that
    /// stops now can still hand the jobs back), then written to the worker's job file. `None`
    /// when the server has no job for the queue.
    async fn fetch_jobs(&self, queue: &Queue, worker: &Worker) -> Result<Option<PathBuf>, CycleError> {
        let resources: panda_types::Resources = queue.config.resources.into();
        let response = self
            .server
            .pilot
            .clone()
            .get_job(wire::GetJobRequest {
                queue: queue.name.clone(),
                node: self.harvester_id.clone(),
                resources: Some(resources.into()),
                worker_id: worker.id.to_string(),
                n_jobs: queue.config.jobs_per_worker,
                // Any task, and no waiting: a worker is only made for jobs already there.
                ..Default::default()
            })
            .await
            .map_err(|status| CycleError::Server { call: "GetJob", status })?
            .into_inner();
        if response.jobs.is_empty() {
            return Ok(None);
        }
        let job_file = panda_proto::convert::job_file::from_response(&queue.name, &worker.id.to_string(), response);
        let job_ids: Vec<u64> = job_file.jobs.iter().map(|j| j.job_id).collect();
        let text = serde_json::to_string_pretty(&job_file)
            .map_err(|e| CycleError::JobFile { worker_id: worker.id, diag: e.to_string() })?;
        if let Err(error) = store::insert_pushed(&self.db, worker.id, &queue.name, &text).await {
            // Not recorded: hand the jobs back now, or they wait for the server's lease time-out.
            self.release(worker.id, &job_file, "harvester could not record them").await;
            return Err(error.into());
        }
        let dir = PathBuf::from(&worker.work_dir);
        let path = dir.join(panda_types::job_file::JOB_FILE_NAME);
        write_atomically(&dir, &path, &text)
            .await
            .map_err(|diag| CycleError::JobFile { worker_id: worker.id, diag })?;
        info!(queue = %queue.name, worker_id = worker.id, jobs = ?job_ids, "jobs fetched for a new worker");
        Ok(Some(path))
    }

    /// Hands a worker's pushed jobs back to the server (those still `sent` under its leases go
    /// back to `activated`). Whether the server answered.
    async fn release(&self, worker_id: i64, job_file: &panda_types::job_file::JobFile, why: &str) -> bool {
        let leases = job_file
            .jobs
            .iter()
            .map(|j| wire::JobLease { job_id: j.job_id, lease_token: j.lease_token.clone() })
            .collect();
        let reason = format!("{} worker {worker_id}: {why}", self.harvester_id);
        match self.server.pilot.clone().release_leases(wire::ReleaseLeasesRequest { leases, reason }).await {
            Ok(answer) => {
                let released = answer.into_inner().released_job_ids;
                if !released.is_empty() {
                    info!(worker_id, jobs = ?released, %why, "pushed jobs handed back to the server");
                }
                true
            }
            Err(status) => {
                warn!(worker_id, %status, "could not hand pushed jobs back; retrying next cycle");
                false
            }
        }
    }

    /// Hands back the pushed jobs of workers that ended (never submitted, failed, killed,
    /// finished): whatever a pilot did not start goes back to the queue at once, not after the
    /// server's lease time-out. Lease-checked on the server, so a job a pilot runs or ran is
    /// untouched; a worker whose jobs were handed back is not asked about again. Answers the
    /// workers done.
    ///
    /// # Errors
    /// The database.
    pub async fn release_stranded(&self) -> Result<Vec<i64>, CycleError> {
        let mut done = Vec::new();
        for (worker_id, text) in store::pushed_to_release(&self.db, 100).await? {
            match serde_json::from_str::<panda_types::job_file::JobFile>(&text) {
                Ok(job_file) => {
                    if !self.release(worker_id, &job_file, "its worker ended or was never submitted").await {
                        break;
                    }
                }
                Err(error) => {
                    warn!(worker_id, %error, "stored job file does not parse; its jobs wait for the server's lease time-out")
                }
            }
            store::set_pushed_state(&self.db, worker_id, store::PushState::Released).await?;
            done.push(worker_id);
        }
        Ok(done)
    }

    /// Submits workers written by [`Self::fetch_for_new_workers`] through the queue's plugin. A
    /// worker the plugin refuses ends `missed`, and its pushed jobs go back to the server at
    /// once.
    ///
    /// # Errors
    /// The database.
    pub async fn submit_pending(
        &self,
        queue: &Queue,
        pending: Vec<(Worker, Option<PathBuf>)>,
    ) -> Result<(), CycleError> {
        if pending.is_empty() {
            return Ok(());
        }
        let specs: Vec<WorkerSpec> = pending
            .iter()
            .map(|(w, job_file)| WorkerSpec {
                worker_id: w.id.to_string(),
                queue: queue.name.clone(),
                work_dir: PathBuf::from(&w.work_dir),
                resources: queue.config.resources.into(),
                max_jobs: queue.config.pilot_max_jobs,
                server_url: self.server_url.clone(),
                job_file: job_file.clone(),
                container_runtimes: queue.config.containers.iter().map(|c| c.as_str().to_owned()).collect(),
            })
            .collect();
        let outcomes = queue.plugins.submitter.submit(&specs).await;
        let mut refused = false;
        for ((worker, job_file), outcome) in pending.iter().zip(outcomes) {
            match outcome {
                crate::plugins::SubmitOutcome::Submitted { batch_id } => {
                    self.metrics.submission(&queue.name, "submitted");
                    let push = job_file.as_ref().map(|_| store::PushState::Delivered);
                    self.transition_pushed(worker, WorkerStatus::Submitted, Some(&batch_id), None, "", push).await?;
                }
                crate::plugins::SubmitOutcome::Temporary(diag) | crate::plugins::SubmitOutcome::Permanent(diag) => {
                    warn!(queue = %queue.name, worker_id = worker.id, %diag, "worker submission failed");
                    self.metrics.submission(&queue.name, "missed");
                    self.transition(worker, WorkerStatus::Missed, None, None, &diag).await?;
                    refused |= job_file.is_some();
                }
            }
        }
        if refused {
            self.release_stranded().await?;
        }
        Ok(())
    }

    async fn clean(&self) -> Result<(), CycleError> {
        let before = Utc::now() - chrono::Duration::from_std(self.keep_finished).unwrap_or_default();
        let queues = self.queues();
        for worker in store::to_clean(&self.db, before, 100).await? {
            let Some(queue) = queues.get(&worker.queue) else { continue };
            match queue.plugins.sweeper.clean(&worker_ref(&worker)).await {
                Ok(()) => store::mark_cleaned(&self.db, worker.id).await?,
                Err(diag) => warn!(worker_id = worker.id, %diag, "cleanup failed"),
            }
        }
        Ok(())
    }

    /// The propagator's cycle: reports every queue's workers to the server (counts by state and
    /// the live workers' IDs), so brokerage sees the pilots, then kills through the plugin the
    /// workers the server named as holding a killed job for longer than the grace (their pilots
    /// did not stop on their own). Answers the workers killed.
    ///
    /// # Errors
    /// The database or the server; nothing is killed then.
    pub async fn propagate(&self) -> Result<Vec<i64>, CycleError> {
        let queues = self.queues();
        let mut statuses = vec![WorkerStatus::Pending];
        statuses.extend_from_slice(LIVE);
        let workers = store::workers_in(&self.db, None, &statuses).await?;
        let reports = crate::propagator::reports(queues.keys().map(String::as_str), &workers);
        let request = wire::ReportWorkersRequest {
            harvester_id: self.harvester_id.clone(),
            queues: reports
                .into_iter()
                .map(|(queue, report)| wire::QueueWorkers {
                    queue,
                    workers_by_status: report.by_status.into_iter().collect(),
                    live_worker_ids: report.live_worker_ids,
                })
                .collect(),
        };
        let kills = self
            .server
            .workers
            .clone()
            .report_workers(request)
            .await
            .map_err(|status| CycleError::Server { call: "ReportWorkers", status })?
            .into_inner()
            .kills;
        let mut named = Vec::with_capacity(kills.len());
        for kill in kills {
            match kill.worker_id.parse::<i64>() {
                Ok(id) => named.push((id, kill.reason)),
                Err(_) => {
                    warn!(worker_id = %kill.worker_id, queue = %kill.queue, "the server named a worker ID this harvester never gave; ignored")
                }
            }
        }
        // When each worker was first named is stored: a restart neither resets nor loses a grace.
        let before = store::named_kills(&self.db).await?;
        let (after, due) = crate::propagator::kills_due(&before, named, Utc::now(), self.server_kill_grace);
        if after != before {
            let txn = self.db.begin().await?;
            store::replace_named_kills(&txn, &before, &after).await?;
            txn.commit().await?;
        }
        let mut killed = Vec::new();
        for (worker_id, reason) in due {
            let diag = format!(
                "{reason}; its pilot did not stop within {:?}: killed by the harvester",
                self.server_kill_grace
            );
            match self.kill_worker(worker_id, &diag).await {
                Ok(status) => {
                    info!(worker_id, %status, %reason, "worker killed after a server kill");
                    killed.push(worker_id);
                }
                Err(error) => {
                    warn!(worker_id, %error, "could not kill a worker after a server kill; retrying next cycle")
                }
            }
        }
        Ok(killed)
    }

    /// Kills one worker at its resource (scancel, condor_rm, Job deletion, a signal to the local
    /// pilot's process group) and ends it as cancelled with `reason`. A worker already ended is
    /// left as it is (answer: its state). A worker still `pending` (its submission has not
    /// returned) cannot be killed yet.
    ///
    /// # Errors
    /// [`KillError`]: unknown worker or queue, or the plugin's failure (the worker keeps its state).
    pub async fn kill_worker(&self, worker_id: i64, reason: &str) -> Result<WorkerStatus, KillError> {
        let worker =
            store::get(&self.db, worker_id).await.map_err(CycleError::from)?.ok_or(KillError::NotFound(worker_id))?;
        if worker.status.is_final() {
            return Ok(worker.status);
        }
        if worker.status == WorkerStatus::Pending {
            return Err(KillError::Plugin { worker_id, diag: "its submission is in progress; try again".into() });
        }
        let queues = self.queues();
        let queue = queues
            .get(&worker.queue)
            .ok_or_else(|| KillError::UnknownQueue { worker_id, queue: worker.queue.clone() })?;
        let result = queue.plugins.sweeper.kill(&[worker_ref(&worker)]).await.into_iter().next();
        match result {
            Some(Ok(())) => {
                self.transition(&worker, WorkerStatus::Cancelled, None, None, reason).await?;
                Ok(WorkerStatus::Cancelled)
            }
            Some(Err(diag)) => Err(KillError::Plugin { worker_id, diag }),
            None => Err(KillError::Plugin { worker_id, diag: "the plugin gave no answer".into() }),
        }
    }

    /// Kills live workers of queues whose plugin runs them locally (the embedded mode), waiting up
    /// to `grace` for them to report.
    pub async fn kill_local_workers(&self, grace: Duration) {
        let queues = self.queues();
        for queue in queues.values().filter(|q| matches!(q.config.plugin, PluginConfig::Local(_))) {
            let Ok(live) = store::workers_in(&self.db, Some(&queue.name), LIVE).await else { continue };
            if live.is_empty() {
                continue;
            }
            let refs: Vec<WorkerRef> = live.iter().map(worker_ref).collect();
            for (worker, result) in live.iter().zip(queue.plugins.sweeper.kill(&refs).await) {
                if let Err(diag) = result {
                    warn!(worker_id = worker.id, %diag, "kill failed");
                }
            }
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline {
                if let Err(error) = self.monitor(queue).await {
                    warn!(%error, "monitoring during shutdown failed");
                    break;
                }
                match store::workers_in(&self.db, Some(&queue.name), LIVE).await {
                    Ok(left) if left.is_empty() => break,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
}

/// A started worker never goes back to `submitted` (reference §2.1): a batch system that queues
/// it again (requeue, eviction) makes it `idle`.
fn settled(current: WorkerStatus, reported: WorkerStatus) -> WorkerStatus {
    match (current, reported) {
        (WorkerStatus::Running | WorkerStatus::Idle | WorkerStatus::Ready, WorkerStatus::Submitted) => {
            WorkerStatus::Idle
        }
        _ => reported,
    }
}

/// Writes `text` to `path` (in `dir`, created if needed) through a temporary file, so a reader
/// never sees half of it.
async fn write_atomically(dir: &std::path::Path, path: &std::path::Path, text: &str) -> Result<(), String> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, text).await.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
}

fn worker_ref(worker: &Worker) -> WorkerRef {
    WorkerRef {
        worker_id: worker.id.to_string(),
        batch_id: worker.batch_id.clone(),
        work_dir: PathBuf::from(&worker.work_dir),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use panda_db::TestDb;
    use sea_orm::ConnectionTrait;

    use super::*;
    use crate::plugins::{BatchState, CheckResult, Monitor, SubmitOutcome, Submitter, Sweeper};
    use crate::queues::QueueFile;

    /// A plugin whose monitor answers what the test set, recording every call.
    #[derive(Default)]
    struct Scripted {
        answer: Mutex<Option<CheckResult>>,
        /// Worker IDs given to submit.
        submitted: Mutex<Vec<String>>,
        /// Batch IDs given to each check call.
        checked: Mutex<Vec<Vec<String>>>,
        /// Batch IDs given to kill; `kill_fails` makes the kill fail.
        killed: Mutex<Vec<String>>,
        kill_fails: Mutex<Option<String>>,
    }

    #[async_trait]
    impl Submitter for Scripted {
        async fn submit(&self, workers: &[WorkerSpec]) -> Vec<SubmitOutcome> {
            self.submitted.lock().unwrap().extend(workers.iter().map(|w| w.worker_id.clone()));
            workers.iter().map(|w| SubmitOutcome::Submitted { batch_id: format!("b{}", w.worker_id) }).collect()
        }
    }

    #[async_trait]
    impl Monitor for Scripted {
        async fn check(&self, workers: &[WorkerRef]) -> Vec<CheckResult> {
            self.checked.lock().unwrap().push(workers.iter().map(|w| w.batch_id.clone()).collect());
            let answer = self.answer.lock().unwrap().clone().expect("an answer is set");
            workers.iter().map(|_| answer.clone()).collect()
        }
    }

    #[async_trait]
    impl Sweeper for Scripted {
        async fn kill(&self, workers: &[WorkerRef]) -> Vec<Result<(), String>> {
            self.killed.lock().unwrap().extend(workers.iter().map(|w| w.batch_id.clone()));
            let failure = self.kill_fails.lock().unwrap().clone();
            workers.iter().map(|_| failure.clone().map_or(Ok(()), Err)).collect()
        }
        async fn clean(&self, _: &WorkerRef) -> Result<(), String> {
            Ok(())
        }
    }

    fn provisioner_on(db: &DatabaseConnection, plugin: &Arc<Scripted>, max_workers: u32) -> (Provisioner, Queue) {
        let plugins = Plugins { submitter: plugin.clone(), monitor: plugin.clone(), sweeper: plugin.clone() };
        let config = QueueFile::embedded_default(max_workers).queues.remove("local").unwrap();
        let queue = Queue { name: "q".into(), config, plugins };
        let provisioner = Provisioner::new(
            "h".into(),
            BTreeMap::from([("q".to_owned(), queue.clone())]),
            db.clone(),
            Outbox::new(db.clone()),
            ServerClient::new("http://127.0.0.1:1").unwrap(),
            "http://127.0.0.1:1".into(),
            std::env::temp_dir(),
            Duration::from_secs(3600),
        );
        (provisioner, queue)
    }

    async fn statuses(db: &DatabaseConnection) -> Vec<(i64, WorkerStatus, String)> {
        let mut all: Vec<_> =
            store::list(db, None, 100).await.unwrap().into_iter().map(|w| (w.id, w.status, w.batch_id)).collect();
        all.sort();
        all
    }

    #[tokio::test]
    async fn a_restarted_harvester_picks_up_its_workers_orphans_none_and_submits_none_twice() {
        let test_db = TestDb::sqlite_temp();
        let db = panda_db::connect_and_migrate::<store::Migrator>(&test_db.url, None).await.unwrap();
        let first = Arc::new(Scripted::default());
        let (before, queue) = provisioner_on(&db, &first, 4);
        before.submit(&queue, 3).await.unwrap();
        assert_eq!(first.submitted.lock().unwrap().len(), 3);
        // It dies after writing a fourth worker's row, before calling the plugin.
        let interrupted = store::insert_pending(&db, "q", &std::env::temp_dir()).await.unwrap();
        drop(before);

        // A new process: new plugin instance, same database.
        let db = panda_db::connect_and_migrate::<store::Migrator>(&test_db.url, None).await.unwrap();
        let second = Arc::new(Scripted::default());
        *second.answer.lock().unwrap() = Some(state(WorkerStatus::Running, ""));
        let (after, queue) = provisioner_on(&db, &second, 4);
        after.monitor(&queue).await.unwrap();
        // Every submitted worker is monitored again (none orphaned), in one call.
        assert_eq!(*second.checked.lock().unwrap(), [vec!["b1".to_owned(), "b2".into(), "b3".into()]]);
        // The demand is covered by the running and the interrupted worker: nothing submitted.
        after.submit(&queue, 3).await.unwrap();
        assert!(second.submitted.lock().unwrap().is_empty());
        // The interrupted worker never reached the resource and was written before this process
        // started: missed at once, never handed to the plugin.
        after.fail_orphans().await.unwrap();
        let missed = store::get(&db, interrupted.id).await.unwrap().unwrap();
        assert_eq!(missed.status, WorkerStatus::Missed);
        assert!(missed.diag.contains("never submitted"), "{}", missed.diag);
        // A worker this process is writing is left alone until it is a minute old.
        let current = store::insert_pending(&db, "q", &std::env::temp_dir()).await.unwrap();
        after.fail_orphans().await.unwrap();
        assert_eq!(store::get(&db, current.id).await.unwrap().unwrap().status, WorkerStatus::Pending);
        db.execute_unprepared(&format!(
            "UPDATE workers SET created_at = '2000-01-01T00:00:00+00:00' WHERE id = {}",
            current.id
        ))
        .await
        .unwrap();
        after.fail_orphans().await.unwrap();
        assert_eq!(store::get(&db, current.id).await.unwrap().unwrap().status, WorkerStatus::Missed);
        // More demand: one new worker (a new ID) fills the queue to its 4; none of the old ones again.
        after.submit(&queue, 10).await.unwrap();
        assert_eq!(*second.submitted.lock().unwrap(), ["6"]);
        let all = statuses(&db).await;
        assert_eq!(
            all.iter().map(|(id, s, _)| (*id, *s)).collect::<Vec<_>>(),
            [
                (1, WorkerStatus::Running),
                (2, WorkerStatus::Running),
                (3, WorkerStatus::Running),
                (4, WorkerStatus::Missed),
                (5, WorkerStatus::Missed),
                (6, WorkerStatus::Submitted)
            ]
        );
    }

    #[tokio::test]
    async fn kill_reaches_the_resource_and_ends_the_worker_cancelled() {
        let test_db = TestDb::sqlite_temp();
        let db = panda_db::connect_and_migrate::<store::Migrator>(&test_db.url, None).await.unwrap();
        let plugin = Arc::new(Scripted::default());
        let (provisioner, queue) = provisioner_on(&db, &plugin, 4);
        provisioner.submit(&queue, 2).await.unwrap();

        // The resource refuses: the worker keeps its state, the caller learns why.
        *plugin.kill_fails.lock().unwrap() = Some("scancel: Unable to contact slurm controller".into());
        let error = provisioner.kill_worker(1, "by test").await.unwrap_err();
        assert!(matches!(&error, KillError::Plugin { worker_id: 1, diag } if diag.contains("scancel")), "{error}");
        assert_eq!(store::get(&db, 1).await.unwrap().unwrap().status, WorkerStatus::Submitted);

        *plugin.kill_fails.lock().unwrap() = None;
        assert_eq!(provisioner.kill_worker(1, "by test").await.unwrap(), WorkerStatus::Cancelled);
        let killed = store::get(&db, 1).await.unwrap().unwrap();
        assert_eq!((killed.status, killed.diag.as_str()), (WorkerStatus::Cancelled, "by test"));
        assert_eq!(*plugin.killed.lock().unwrap(), ["b1", "b1"]);
        // Again: already ended, nothing sent to the resource.
        assert_eq!(provisioner.kill_worker(1, "again").await.unwrap(), WorkerStatus::Cancelled);
        assert_eq!(plugin.killed.lock().unwrap().len(), 2);
        assert!(matches!(provisioner.kill_worker(99, "x").await, Err(KillError::NotFound(99))));

        // A monitor cycle that read the worker before the kill cannot overwrite it.
        let stale = store::get(&db, 2).await.unwrap().unwrap();
        provisioner.kill_worker(2, "killed").await.unwrap();
        provisioner.transition(&stale, WorkerStatus::Running, None, None, "").await.unwrap();
        assert_eq!(store::get(&db, 2).await.unwrap().unwrap().status, WorkerStatus::Cancelled);
    }

    #[tokio::test]
    async fn a_reload_keeps_unchanged_plugins_adds_new_queues_and_drains_removed_ones() {
        let test_db = TestDb::sqlite_temp();
        let db = panda_db::connect_and_migrate::<store::Migrator>(&test_db.url, None).await.unwrap();
        let plugin = Arc::new(Scripted::default());
        let (provisioner, queue) = provisioner_on(&db, &plugin, 4);
        provisioner.submit(&queue, 1).await.unwrap();
        let built = Mutex::new(Vec::new());
        let build = |name: &str, _: &PluginConfig| {
            built.lock().unwrap().push(name.to_owned());
            let fresh = Arc::new(Scripted::default());
            Plugins { submitter: fresh.clone(), monitor: fresh.clone(), sweeper: fresh }
        };
        let parse = |text: &str| QueueFile::parse(text, std::path::Path::new("q.yaml")).unwrap();

        // Only a limit changed: the same plugin instance goes on.
        let file = parse(
            "queues:\n  q:\n    max_workers: 9\n    resources: { cores: 1 }\n    plugin: { type: local }\n  new:\n    max_workers: 1\n    plugin: { type: local }\n",
        );
        let summary = provisioner.reload(file, build).await.unwrap();
        assert_eq!((summary.changed, summary.added), (vec!["q".to_owned()], vec!["new".to_owned()]));
        assert_eq!(*built.lock().unwrap(), ["new"]);
        let queues = provisioner.queues();
        assert_eq!(queues["q"].config.max_workers, 9);
        *plugin.answer.lock().unwrap() = Some(state(WorkerStatus::Running, ""));
        provisioner.monitor(&queues["q"]).await.unwrap();
        assert_eq!(plugin.checked.lock().unwrap().len(), 1, "the queue kept its plugin instance");

        // `q` removed while its worker lives: kept, offline, so the worker is still monitored.
        let file = parse("queues:\n  new:\n    max_workers: 1\n    plugin: { type: local }\n");
        let summary = provisioner.reload(file.clone(), build).await.unwrap();
        assert_eq!((summary.draining, summary.unchanged), (vec!["q".to_owned()], vec!["new".to_owned()]));
        assert_eq!(provisioner.queues()["q"].config.status, QueueStatus::Offline);
        // Once the worker ended, the next reload lets the queue go.
        provisioner.kill_worker(1, "done").await.unwrap();
        let summary = provisioner.reload(file, build).await.unwrap();
        assert_eq!(summary.removed, ["q"]);
        assert!(!provisioner.queues().contains_key("q"));
    }

    fn state(status: WorkerStatus, diag: &str) -> CheckResult {
        Ok(BatchState { status, exit_code: None, diag: diag.to_owned() })
    }

    #[tokio::test]
    async fn monitoring_keeps_unknown_workers_records_reasons_and_never_requeues_started_ones() {
        let test_db = TestDb::sqlite_temp();
        let db = panda_db::connect_and_migrate::<store::Migrator>(&test_db.url, None).await.unwrap();
        let plugin = Arc::new(Scripted::default());
        let (provisioner, queue) = provisioner_on(&db, &plugin, 1);
        let worker = store::insert_pending(&db, "q", &std::env::temp_dir()).await.unwrap();
        store::set_status(&db, worker.id, WorkerStatus::Submitted, Some("7"), None, "").await.unwrap();
        let reread = || async { store::list(&db, Some("q"), 1).await.unwrap().remove(0) };
        let answer = |a: CheckResult| *plugin.answer.lock().unwrap() = Some(a);

        // The batch system cannot tell: the state stays, the reason becomes the diagnostic.
        answer(Err("squeue ended with exit code 1: Unable to contact slurm controller".into()));
        provisioner.monitor(&queue).await.unwrap();
        let now = reread().await;
        assert_eq!(
            (now.status, now.diag.as_str()),
            (WorkerStatus::Submitted, "squeue ended with exit code 1: Unable to contact slurm controller")
        );

        // Same state with news (a pending reason): recorded without a transition.
        answer(state(WorkerStatus::Submitted, "Slurm job 7 PENDING (Priority)"));
        provisioner.monitor(&queue).await.unwrap();
        assert_eq!(reread().await.diag, "Slurm job 7 PENDING (Priority)");

        // Running, then queued again by the batch system (requeue): idle, not submitted.
        answer(state(WorkerStatus::Running, ""));
        provisioner.monitor(&queue).await.unwrap();
        assert_eq!(reread().await.status, WorkerStatus::Running);
        answer(state(WorkerStatus::Submitted, "Slurm job 7 REQUEUED"));
        provisioner.monitor(&queue).await.unwrap();
        let now = reread().await;
        assert_eq!((now.status, now.diag.as_str()), (WorkerStatus::Idle, "Slurm job 7 REQUEUED"));

        answer(state(WorkerStatus::Failed, "Slurm job 7 NODE_FAIL"));
        provisioner.monitor(&queue).await.unwrap();
        assert_eq!(reread().await.status, WorkerStatus::Failed);
    }

    /// The server's side of ReportWorkers, as the test sets it: records each report and names
    /// the workers in `kill` as holding a killed job.
    #[derive(Default)]
    struct FakeReports {
        requests: Mutex<Vec<wire::ReportWorkersRequest>>,
        kill: Mutex<Vec<String>>,
    }

    #[derive(Clone)]
    struct FakeServer(Arc<FakeReports>);

    #[tonic::async_trait]
    impl wire::worker_report_service_server::WorkerReportService for FakeServer {
        async fn report_workers(
            &self,
            request: tonic::Request<wire::ReportWorkersRequest>,
        ) -> Result<tonic::Response<wire::ReportWorkersResponse>, tonic::Status> {
            let request = request.into_inner();
            let queue = request.queues.first().map(|q| q.queue.clone()).unwrap_or_default();
            self.0.requests.lock().unwrap().push(request);
            let kills = self
                .0
                .kill
                .lock()
                .unwrap()
                .iter()
                .map(|id| wire::WorkerKill {
                    queue: queue.clone(),
                    worker_id: id.clone(),
                    job_id: 42,
                    reason: "job 42 was killed on the server".into(),
                })
                .collect();
            Ok(tonic::Response::new(wire::ReportWorkersResponse { kills }))
        }
    }

    #[tokio::test]
    async fn a_server_kill_reaches_a_local_worker_whose_pilot_does_not_stop_within_the_grace() {
        let test_db = TestDb::sqlite_temp();
        let db = panda_db::connect_and_migrate::<store::Migrator>(&test_db.url, None).await.unwrap();
        let fake = Arc::new(FakeReports::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut server = panda_runtime::grpc::server("fake-server").unwrap();
        server.router = server
            .router
            .add_service(wire::worker_report_service_server::WorkerReportServiceServer::new(FakeServer(fake.clone())));
        let served = tokio::spawn(panda_runtime::grpc::serve(server, listener, shutdown.clone()));

        // A local pilot that never stops on its own (it ignores the server).
        let dir = tempfile::tempdir().unwrap();
        let plugin_config = PluginConfig::Local(crate::plugins::local::LocalConfig {
            pilot_command: Some(vec!["/bin/sh".into(), "-c".into(), "sleep 600".into(), "pilot".into()]),
        });
        let mut config = QueueFile::embedded_default(2).queues.remove("local").unwrap();
        config.plugin = plugin_config.clone();
        let plugins = crate::plugins::build("q", &plugin_config, &crate::plugins::PluginDeps { pilot_program: vec![] });
        let queue = Queue { name: "q".into(), config, plugins };
        let provisioner = Provisioner::new(
            "h".into(),
            BTreeMap::from([("q".to_owned(), queue.clone())]),
            db.clone(),
            Outbox::new(db.clone()),
            ServerClient::new(&url).unwrap(),
            url.clone(),
            dir.path().to_owned(),
            Duration::from_secs(3600),
        )
        .with_server_kill_grace(Duration::from_millis(300));
        provisioner.submit(&queue, 2).await.unwrap();
        provisioner.monitor(&queue).await.unwrap();
        let pid = store::get(&db, 1).await.unwrap().unwrap().batch_id;

        // Nothing killed: the report carries the counts and the live workers.
        assert!(provisioner.propagate().await.unwrap().is_empty());
        {
            let requests = fake.requests.lock().unwrap();
            let report = &requests[0];
            assert_eq!(report.harvester_id, "h");
            assert_eq!(report.queues.len(), 1);
            assert_eq!(report.queues[0].queue, "q");
            assert_eq!(report.queues[0].workers_by_status.get("running"), Some(&2));
            assert_eq!(report.queues[0].live_worker_ids, ["1", "2"]);
        }

        // The server killed worker 1's job: the pilot gets the grace first...
        fake.kill.lock().unwrap().push("1".into());
        assert!(provisioner.propagate().await.unwrap().is_empty());
        assert_eq!(store::get(&db, 1).await.unwrap().unwrap().status, WorkerStatus::Running);
        // The start of the grace is in the database: a harvester restarted meanwhile (new
        // process, same database) neither starts the grace again nor forgets it...
        assert_eq!(store::named_kills(&db).await.unwrap().keys().copied().collect::<Vec<_>>(), [1]);
        let provisioner = Provisioner::new(
            "h".into(),
            BTreeMap::from([("q".to_owned(), queue.clone())]),
            db.clone(),
            Outbox::new(db.clone()),
            ServerClient::new(&url).unwrap(),
            url.clone(),
            dir.path().to_owned(),
            Duration::from_secs(3600),
        )
        .with_server_kill_grace(Duration::from_millis(300));
        // ...so once the grace has passed, its first report kills the worker through its plugin.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(provisioner.propagate().await.unwrap(), [1]);
        let killed = store::get(&db, 1).await.unwrap().unwrap();
        assert_eq!(killed.status, WorkerStatus::Cancelled);
        assert!(killed.diag.contains("job 42 was killed on the server"), "{}", killed.diag);
        assert!(killed.diag.contains("did not stop within"), "{}", killed.diag);
        let mut gone = false;
        for _ in 0..100 {
            // Gone, or a zombie (dead, not yet reaped).
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_none_or(|s| s == "Z") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the pilot process {pid} still runs");
        // Worker 2 was never named: still running; the next report no longer lists worker 1.
        assert_eq!(store::get(&db, 2).await.unwrap().unwrap().status, WorkerStatus::Running);
        fake.kill.lock().unwrap().clear();
        provisioner.propagate().await.unwrap();
        assert_eq!(fake.requests.lock().unwrap().last().unwrap().queues[0].live_worker_ids, ["2"]);
        assert!(store::named_kills(&db).await.unwrap().is_empty(), "no longer named: forgotten");

        provisioner.kill_worker(2, "test over").await.unwrap();
        shutdown.cancel();
        served.await.unwrap().unwrap();
    }
}
