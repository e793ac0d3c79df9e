//! Harvesters' worker reports: the propagator of each harvester instance reports its workers per
//! queue; the latest report per queue and instance counts until it goes stale, and brokerage sees
//! the running ones as pilots (`list_queues`). The answer names the reported live workers whose
//! job the server wants killed, so a kill reaches a worker whose pilot does not stop it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use panda_types::{FieldError, StateMachine, WorkerStatus};
use sea_orm::TransactionTrait;
use tracing::instrument;

use super::Service;
use crate::error::{Error, Result};
use crate::model::{QueueWorkers, WorkerKill, WorkerReport};

/// At most this many live worker IDs per queue in one report.
pub const MAX_LIVE_WORKERS_PER_QUEUE: usize = 100_000;

impl Service {
    /// How long a harvester's worker report counts (default 5 minutes).
    pub fn with_worker_report_stale_after(mut self, stale_after: Duration) -> Self {
        self.worker_report_stale_after = stale_after;
        self
    }

    /// Stores `harvester_id`'s report of each queue (replacing its last one) and answers the
    /// reported live workers holding a job being killed. One transaction.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the field (empty harvester, bad queue name, a queue twice, an
    /// unknown or ended worker state, too many worker IDs); database failures.
    #[instrument(skip_all, fields(harvester_id = %harvester_id, queues = reports.len()))]
    pub async fn report_workers(&self, harvester_id: &str, reports: Vec<WorkerReport>) -> Result<Vec<WorkerKill>> {
        validate_reports(harvester_id, &reports)?;
        let txn = self.db.begin().await?;
        self.store.save_worker_reports(&txn, harvester_id, &reports, Utc::now()).await?;
        let kills = self.store.workers_to_kill(&txn, &reports).await?;
        txn.commit().await?;
        Ok(kills)
    }

    /// Worker counts per queue over the fresh reports.
    ///
    /// # Errors
    /// Database failures.
    pub async fn queue_workers(&self) -> Result<BTreeMap<String, QueueWorkers>> {
        let stale = chrono::Duration::from_std(self.worker_report_stale_after).unwrap_or(chrono::Duration::MAX);
        let fresh_since = Utc::now().checked_sub_signed(stale).unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        self.store.queue_workers(&self.reads, fresh_since).await
    }
}

fn validate_reports(harvester_id: &str, reports: &[WorkerReport]) -> Result<()> {
    let mut problems = Vec::new();
    if harvester_id.is_empty() {
        problems.push(FieldError::new("harvester_id", "is required"));
    }
    let mut seen = BTreeSet::new();
    for (i, report) in reports.iter().enumerate() {
        if let Err(e) = panda_types::QueueName::new(report.queue.clone()) {
            problems.push(FieldError::new(format!("queues[{i}].queue"), e.to_string()));
        }
        if !seen.insert(report.queue.as_str()) {
            problems.push(FieldError::new(
                format!("queues[{i}].queue"),
                format!("queue {:?} is reported twice", report.queue),
            ));
        }
        for status in report.by_status.keys() {
            match status.parse::<WorkerStatus>() {
                Ok(s) if !s.is_final() => {}
                Ok(_) => problems.push(FieldError::new(
                    format!("queues[{i}].workers_by_status"),
                    format!("{status:?} is an ended state; report live workers only"),
                )),
                Err(_) => problems.push(FieldError::new(
                    format!("queues[{i}].workers_by_status"),
                    format!("{status:?} is not a worker state; allowed: pending, submitted, ready, running, idle"),
                )),
            }
        }
        if report.live_worker_ids.len() > MAX_LIVE_WORKERS_PER_QUEUE {
            problems.push(FieldError::new(
                format!("queues[{i}].live_worker_ids"),
                format!("{} IDs; at most {MAX_LIVE_WORKERS_PER_QUEUE} per queue", report.live_worker_ids.len()),
            ));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(problems)) }
}
