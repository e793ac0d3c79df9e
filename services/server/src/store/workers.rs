//! Harvesters' worker reports (`ReportWorkers`): the latest per queue and harvester instance, and
//! the live workers holding a job the server wants killed. Table from migration m0008
//! (`queue_workers`).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use panda_types::{JobId, JobStatus, StateMachine};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set};

use super::Store;
use super::entities::job;
use crate::error::{Error, Result};
use crate::model::{QueueWorkers, WorkerKill, WorkerReport};

pub(crate) mod queue_workers {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "queue_workers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub queue: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub harvester_id: String,
        #[sea_orm(column_type = "Text")]
        pub counts_json: String,
        pub reported_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What `command_to_pilot` holds for a job being killed.
const TO_BE_KILLED: &str = "tobekilled";

impl Store {
    /// Replaces `harvester_id`'s report of each queue in `reports`.
    pub async fn save_worker_reports(
        &self,
        conn: &impl ConnectionTrait,
        harvester_id: &str,
        reports: &[WorkerReport],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if reports.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(reports.len());
        for report in reports {
            let counts_json = serde_json::to_string(&report.by_status).map_err(|e| Error::Corrupt {
                what: format!("worker counts of queue {}", report.queue),
                detail: e.to_string(),
            })?;
            rows.push(queue_workers::ActiveModel {
                queue: Set(report.queue.clone()),
                harvester_id: Set(harvester_id.to_owned()),
                counts_json: Set(counts_json),
                reported_at: Set(now),
            });
        }
        queue_workers::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::columns([queue_workers::Column::Queue, queue_workers::Column::HarvesterId])
                    .update_columns([queue_workers::Column::CountsJson, queue_workers::Column::ReportedAt])
                    .to_owned(),
            )
            .exec(conn)
            .await?;
        Ok(())
    }

    /// Worker counts per queue, summed over the reports made at or after `fresh_since` (older
    /// ones are stale: their harvester stopped reporting).
    pub async fn queue_workers(
        &self,
        conn: &impl ConnectionTrait,
        fresh_since: DateTime<Utc>,
    ) -> Result<BTreeMap<String, QueueWorkers>> {
        let rows =
            queue_workers::Entity::find().filter(queue_workers::Column::ReportedAt.gte(fresh_since)).all(conn).await?;
        let mut out: BTreeMap<String, QueueWorkers> = BTreeMap::new();
        for row in rows {
            let counts: BTreeMap<String, u32> = serde_json::from_str(&row.counts_json).map_err(|e| Error::Corrupt {
                what: format!("worker counts of queue {} from {}", row.queue, row.harvester_id),
                detail: e.to_string(),
            })?;
            let entry = out.entry(row.queue).or_default();
            for (status, n) in counts {
                if status == "running" {
                    entry.pilots = entry.pilots.saturating_add(n);
                }
                let total = entry.by_status.entry(status).or_default();
                *total = total.saturating_add(n);
            }
        }
        Ok(out)
    }

    /// The reported live workers that hold a live job marked to be killed.
    pub async fn workers_to_kill(
        &self,
        conn: &impl ConnectionTrait,
        reports: &[WorkerReport],
    ) -> Result<Vec<WorkerKill>> {
        let mut kills = Vec::new();
        for report in reports.iter().filter(|r| !r.live_worker_ids.is_empty()) {
            // Few jobs of a queue are being killed at any time: read those, match in memory.
            let marked: Vec<(i64, String)> = Self::marked_for_kill_query(&report.queue).into_tuple().all(conn).await?;
            if marked.is_empty() {
                continue;
            }
            let live: HashSet<&str> = report.live_worker_ids.iter().map(String::as_str).collect();
            for (job_id, worker_id) in marked {
                if live.contains(worker_id.as_str()) {
                    kills.push(WorkerKill {
                        queue: report.queue.clone(),
                        worker_id,
                        job_id: JobId(job_id as u64),
                        reason: format!("job {job_id} was killed on the server"),
                    });
                }
            }
        }
        Ok(kills)
    }

    /// Jobs of `queue` held by a pilot (not final, not queued) that are to be killed, with their
    /// worker (read through the `jobs_live` index).
    pub(super) fn marked_for_kill_query(queue: &str) -> sea_orm::Select<job::Entity> {
        job::Entity::find()
            .select_only()
            .column(job::Column::Id)
            .column(job::Column::WorkerId)
            .filter(super::live_jobs())
            .filter(job::Column::Queue.eq(queue))
            .filter(job::Column::CommandToPilot.eq(TO_BE_KILLED))
            .filter(job::Column::WorkerId.ne(""))
            .filter(
                job::Column::Status
                    .is_in(JobStatus::ALL.iter().filter(|s| !s.is_final() && !s.is_queued()).map(|s| s.as_str())),
            )
    }
}
