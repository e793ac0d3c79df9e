//! Dispatch restricted to one task: a pilot that keeps a warm runtime for a task's small jobs
//! asks for more jobs of that task (`GetJob` with `task_id`). The same claim as
//! [`Store::claim_jobs`] with one more filter; kept apart so that the general claim stays as it is.

use panda_types::{JobStatus, Resources, TaskId};
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::job;
use super::{Store, job_from_row, to_i64};
use crate::error::Result;
use crate::model::Job;

impl Store {
    /// Up to `limit` activated jobs of `task` on `queue` that fit `offer`, highest priority
    /// first (PostgreSQL: locked, skipping rows other transactions hold).
    pub async fn claim_task_jobs(
        &self,
        conn: &impl ConnectionTrait,
        queue: &str,
        task: TaskId,
        offer: &Resources,
        limit: u64,
    ) -> Result<Vec<Job>> {
        let mut query = job::Entity::find()
            .filter(job::Column::Queue.eq(queue))
            .filter(job::Column::Status.eq(JobStatus::Activated.as_str()))
            .filter(job::Column::TaskId.eq(to_i64(task.0)));
        if offer.cores > 0 {
            query = query.filter(job::Column::Cores.lte(i32::try_from(offer.cores).unwrap_or(i32::MAX)));
        }
        if offer.memory_mb > 0 {
            query = query.filter(job::Column::MemoryMb.lte(to_i64(offer.memory_mb)));
        }
        if offer.disk_mb > 0 {
            query = query.filter(job::Column::DiskMb.lte(to_i64(offer.disk_mb)));
        }
        if offer.walltime_seconds > 0 {
            query = query.filter(job::Column::WalltimeSeconds.lte(to_i64(offer.walltime_seconds)));
        }
        query = query.order_by_desc(job::Column::Priority).order_by_asc(job::Column::Id).limit(limit);
        if self.backend == DbBackend::Postgres {
            query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        query.all(conn).await?.into_iter().map(job_from_row).collect()
    }
}
