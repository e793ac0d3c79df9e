//! The provisioning cycle: report queues to the server (also the harvester's heartbeat), monitor
//! live workers, submit new ones where jobs wait, and clean up old ones. A cycle always runs to
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
    /// Queues by name.
    pub queues: Arc<BTreeMap<String, Queue>>,
    db: DatabaseConnection,
    outbox: Outbox,
    server: ServerClient,
    server_url: String,
    worker_dir: PathBuf,
    keep_finished: Duration,
    /// Counters.
    pub metrics: crate::metrics::Metrics,
}

const LIVE: &[WorkerStatus] =
    &[WorkerStatus::Submitted, WorkerStatus::Ready, WorkerStatus::Running, WorkerStatus::Idle];

/// A cycle step failed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// The harvester database.
    #[error("harvester database")]
    Db(#[from] DbErr),
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
            queues: Arc::new(queues),
            db,
            outbox,
            server,
            server_url,
            worker_dir,
            keep_finished,
            metrics: Default::default(),
        }
    }

    /// The harvester database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// One full cycle.
    pub async fn cycle(&self) {
        if let Err(error) = self.report_queues().await {
            warn!(%error, "could not report queues to the server");
        }
        if let Err(error) = self.fail_orphans().await {
            warn!(%error, "could not check for orphaned workers");
        }
        for queue in self.queues.values() {
            if let Err(error) = self.monitor(queue).await {
                warn!(queue = %queue.name, %error, "monitoring failed");
            }
        }
        match self.demand().await {
            Ok(demand) => {
                for queue in self.queues.values() {
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
            .queues
            .values()
            .map(|q| wire::Queue {
                name: q.name.clone(),
                status: q.config.status.as_str().to_owned(),
                max_resources: Some(panda_types::Resources::from(q.config.resources).into()),
                max_workers: q.config.max_workers,
                harvester_id: self.harvester_id.clone(),
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
        let names = self.queues.keys().cloned().collect();
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
        if worker.status.transition_to(to).is_err() {
            warn!(worker_id = worker.id, from = %worker.status, %to, "ignoring a worker state change the state machine refuses");
            return Ok(());
        }
        let txn = self.db.begin().await?;
        store::set_status(&txn, worker.id, to, batch_id, exit_code, diag).await?;
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
        txn.commit().await?;
        self.outbox.notify();
        self.metrics.transition(&worker.queue, to);
        info!(entity = "worker", id = worker.id, queue = %worker.queue, from = %worker.status, %to, "state change");
        Ok(())
    }

    /// Workers left `pending` by a harvester that died between writing the row and calling the
    /// plugin: they never reached the resource.
    async fn fail_orphans(&self) -> Result<(), CycleError> {
        let cutoff = Utc::now() - chrono::Duration::seconds(60);
        for worker in store::workers_in(&self.db, None, &[WorkerStatus::Pending]).await? {
            if worker.created_at < cutoff {
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
        let mut pending = Vec::new();
        for _ in 0..adjustment.new_workers {
            let txn = self.db.begin().await?;
            let worker = store::insert_pending(&txn, &queue.name, &self.worker_dir).await?;
            txn.commit().await?;
            pending.push(worker);
        }
        let specs: Vec<WorkerSpec> = pending
            .iter()
            .map(|w| WorkerSpec {
                worker_id: w.id.to_string(),
                queue: queue.name.clone(),
                work_dir: PathBuf::from(&w.work_dir),
                resources: queue.config.resources.into(),
                max_jobs: queue.config.pilot_max_jobs,
                server_url: self.server_url.clone(),
            })
            .collect();
        let outcomes = queue.plugins.submitter.submit(&specs).await;
        for (worker, outcome) in pending.iter().zip(outcomes) {
            match outcome {
                crate::plugins::SubmitOutcome::Submitted { batch_id } => {
                    self.metrics.submission(&queue.name, "submitted");
                    self.transition(worker, WorkerStatus::Submitted, Some(&batch_id), None, "").await?;
                }
                crate::plugins::SubmitOutcome::Temporary(diag) | crate::plugins::SubmitOutcome::Permanent(diag) => {
                    warn!(queue = %queue.name, worker_id = worker.id, %diag, "worker submission failed");
                    self.metrics.submission(&queue.name, "missed");
                    self.transition(worker, WorkerStatus::Missed, None, None, &diag).await?;
                }
            }
        }
        Ok(())
    }

    async fn clean(&self) -> Result<(), CycleError> {
        let before = Utc::now() - chrono::Duration::from_std(self.keep_finished).unwrap_or_default();
        for worker in store::to_clean(&self.db, before, 100).await? {
            let Some(queue) = self.queues.get(&worker.queue) else { continue };
            match queue.plugins.sweeper.clean(&worker_ref(&worker)).await {
                Ok(()) => store::mark_cleaned(&self.db, worker.id).await?,
                Err(diag) => warn!(worker_id = worker.id, %diag, "cleanup failed"),
            }
        }
        Ok(())
    }

    /// Kills live workers of queues whose plugin runs them locally (the embedded mode), waiting up
    /// to `grace` for them to report.
    pub async fn kill_local_workers(&self, grace: Duration) {
        for queue in self.queues.values().filter(|q| matches!(q.config.plugin, PluginConfig::Local(_))) {
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

    use super::*;
    use crate::plugins::{BatchState, CheckResult, Monitor, SubmitOutcome, Submitter, Sweeper};
    use crate::queues::QueueFile;

    /// A plugin whose monitor answers what the test set.
    #[derive(Default)]
    struct Scripted {
        answer: Mutex<Option<CheckResult>>,
    }

    #[async_trait]
    impl Submitter for Scripted {
        async fn submit(&self, workers: &[WorkerSpec]) -> Vec<SubmitOutcome> {
            workers.iter().map(|w| SubmitOutcome::Submitted { batch_id: w.worker_id.clone() }).collect()
        }
    }

    #[async_trait]
    impl Monitor for Scripted {
        async fn check(&self, workers: &[WorkerRef]) -> Vec<CheckResult> {
            let answer = self.answer.lock().unwrap().clone().expect("an answer is set");
            workers.iter().map(|_| answer.clone()).collect()
        }
    }

    #[async_trait]
    impl Sweeper for Scripted {
        async fn kill(&self, workers: &[WorkerRef]) -> Vec<Result<(), String>> {
            workers.iter().map(|_| Ok(())).collect()
        }
        async fn clean(&self, _: &WorkerRef) -> Result<(), String> {
            Ok(())
        }
    }

    fn state(status: WorkerStatus, diag: &str) -> CheckResult {
        Ok(BatchState { status, exit_code: None, diag: diag.to_owned() })
    }

    #[tokio::test]
    async fn monitoring_keeps_unknown_workers_records_reasons_and_never_requeues_started_ones() {
        let test_db = TestDb::sqlite_temp();
        let db = panda_db::connect_and_migrate::<store::Migrator>(&test_db.url, None).await.unwrap();
        let plugin = Arc::new(Scripted::default());
        let plugins = Plugins { submitter: plugin.clone(), monitor: plugin.clone(), sweeper: plugin.clone() };
        let config = QueueFile::embedded_default(1).queues.remove("local").unwrap();
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
}
