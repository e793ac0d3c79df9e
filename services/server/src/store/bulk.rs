//! Bulk job statements for the pilot protocol's batches: a batch of dispatches or reports reads
//! and writes all its jobs with a few statements instead of a few per job. Both databases accept
//! `UPDATE … FROM (VALUES …)` (SQLite since 3.33), whose columns both name `column1`, `column2`….

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use panda_types::{JobId, JobStatus};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, Statement, Value};

use super::entities::job;
use super::{Store, job_from_row, to_i64};
use crate::error::Result;
use crate::model::Job;

/// Rows per statement: well under both databases' limits on bound variables (SQLite 32766,
/// PostgreSQL 65535) at the widest row below.
pub(crate) const ROWS_PER_STATEMENT: usize = 1000;

/// Splits `n` rows into statement sizes, largest first: powers of two up to 512, and
/// [`ROWS_PER_STATEMENT`] for the bulk of larger batches. A statement's text depends on its
/// number of rows, and the driver caches prepared statements by text: one text per batch size
/// meant a parse and plan per batch (for a hundred rows of twenty columns, about as much work as
/// writing them). With these sizes there are at most eleven texts per statement kind, each
/// prepared once, for at most ten statements per batch below a thousand rows.
pub(crate) fn statement_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= ROWS_PER_STATEMENT { ROWS_PER_STATEMENT } else { 1 << n.ilog2().min(9) };
        n -= size;
        Some(size)
    })
}

/// `items` in consecutive chunks of [`statement_sizes`].
pub(crate) fn statement_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    statement_sizes(items.len()).map(move |size| {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        chunk
    })
}

/// What use cases change on a job; everything else is fixed at insert.
const MUTABLE_COLUMNS: [&str; 19] = [
    "status",
    "lease_token",
    "command_to_pilot",
    "exit_code",
    "error_code",
    "error_diag",
    "stdout_tail",
    "stderr_tail",
    "cpu_time_seconds",
    "wall_time_seconds",
    "max_rss_kb",
    "node",
    "started_at",
    "ended_at",
    "modified_at",
    "heartbeat_at",
    "worker_id",
    "state_times_json",
    "error_source",
];

/// Which rows a bulk update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// Every row named.
    None,
    /// Only rows whose version is the one given as each row's last value.
    RowVersion,
}

/// `column = v.columnN` for every mutable column, in [`mutable_values`] order.
fn save_set() -> String {
    MUTABLE_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = v.column{}", i + 2))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A job's id, then its [`MUTABLE_COLUMNS`] values.
fn mutable_values(job: &Job) -> Vec<Value> {
    vec![
        Value::from(to_i64(job.id.0)),
        Value::from(job.status.as_str().to_owned()),
        Value::from(job.lease_token.clone()),
        Value::from(job.command_to_pilot.clone()),
        Value::from(job.exit_code),
        Value::from(job.error_code as i32),
        Value::from(job.error_diag.clone()),
        Value::from(job.stdout_tail.clone()),
        Value::from(job.stderr_tail.clone()),
        Value::from(job.cpu_time_seconds),
        Value::from(job.wall_time_seconds),
        Value::from(to_i64(job.max_rss_kb)),
        Value::from(job.node.clone()),
        Value::from(job.started_at),
        Value::from(job.ended_at),
        Value::from(job.modified_at),
        Value::from(job.heartbeat_at),
        Value::from(job.worker_id.clone()),
        Value::from(job.state_times.as_json().to_owned()),
        Value::from(job.error_source.as_str().to_owned()),
    ]
}

impl Store {
    /// Jobs by id, locked (PostgreSQL) in id order until the end of the caller's transaction.
    /// Every batch locks in the same order, so two batches cannot deadlock on each other.
    pub async fn lock_jobs(&self, conn: &impl ConnectionTrait, ids: &[JobId]) -> Result<HashMap<JobId, Job>> {
        self.jobs_by_id(conn, ids, true).await
    }

    /// Jobs by id as they are now, without locks (each with the version it was read at).
    pub async fn read_jobs(&self, conn: &impl ConnectionTrait, ids: &[JobId]) -> Result<HashMap<JobId, Job>> {
        self.jobs_by_id(conn, ids, false).await
    }

    async fn jobs_by_id(&self, conn: &impl ConnectionTrait, ids: &[JobId], lock: bool) -> Result<HashMap<JobId, Job>> {
        let mut ids: Vec<i64> = ids.iter().map(|id| to_i64(id.0)).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut jobs = HashMap::with_capacity(ids.len());
        for chunk in statement_chunks(&ids) {
            let mut query =
                job::Entity::find().filter(job::Column::Id.is_in(chunk.iter().copied())).order_by_asc(job::Column::Id);
            if lock {
                query = self.locking(query);
            }
            for row in query.all(conn).await? {
                let job = job_from_row(row)?;
                jobs.insert(job.id, job);
            }
        }
        Ok(jobs)
    }

    /// Whether the database locks rows (PostgreSQL); SQLite serializes writers instead.
    pub fn has_row_locks(&self) -> bool {
        self.backend == DbBackend::Postgres
    }

    /// Records claimed jobs as sent to their pilots: state, lease token, node and worker. The
    /// caller holds the rows (claimed in this transaction).
    pub async fn mark_sent<'a>(
        &self,
        conn: &impl ConnectionTrait,
        jobs: impl IntoIterator<Item = &'a Job>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        for statement in self.mark_sent_statements(jobs, now, Guard::None) {
            conn.execute_raw(statement).await?;
        }
        Ok(())
    }

    /// The statements that record jobs read outside the transaction as sent, each only where its
    /// row still has the version it was read with; run them with
    /// [`Store::save_jobs_if_unchanged`], which answers the jobs written.
    pub fn mark_sent_if_unchanged_statements<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a Job>,
        now: DateTime<Utc>,
    ) -> Vec<Statement> {
        self.mark_sent_statements(jobs, now, Guard::RowVersion)
    }

    fn mark_sent_statements<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a Job>,
        now: DateTime<Utc>,
        guard: Guard,
    ) -> Vec<Statement> {
        let rows: Vec<Vec<Value>> = jobs
            .into_iter()
            .map(|job| {
                let mut row = vec![
                    Value::from(to_i64(job.id.0)),
                    Value::from(job.lease_token.clone()),
                    Value::from(job.node.clone()),
                    Value::from(job.worker_id.clone()),
                    Value::from(job.state_times.as_json().to_owned()),
                ];
                if guard == Guard::RowVersion {
                    row.push(Value::from(to_i64(job.row_version)));
                }
                row
            })
            .collect();
        let set = format!(
            "status = '{}', lease_token = v.column2, node = v.column3, worker_id = v.column4, \
             state_times_json = v.column5, modified_at = {}",
            JobStatus::Sent.as_str(),
            self.placeholder(1)
        );
        self.update_statements(&set, vec![Value::from(now)], rows, guard)
    }

    /// Writes every mutable field of these jobs, one statement per thousand jobs: the one way
    /// jobs are written after their insert. The caller holds the rows (locked, or SQLite's one
    /// writer having read them in this transaction).
    pub async fn save_jobs(&self, conn: &impl ConnectionTrait, jobs: &[&Job]) -> Result<()> {
        let rows = jobs.iter().map(|job| mutable_values(job)).collect();
        for statement in self.update_statements(&save_set(), Vec::new(), rows, Guard::None) {
            conn.execute_raw(statement).await?;
        }
        Ok(())
    }

    /// The statements of [`Store::save_jobs_if_unchanged`], built before its transaction so that
    /// the work of building them does not hold the writer.
    pub fn save_if_unchanged_statements(&self, jobs: &[&Job]) -> Vec<Statement> {
        let rows = jobs
            .iter()
            .map(|job| {
                let mut row = mutable_values(job);
                row.push(Value::from(to_i64(job.row_version)));
                row
            })
            .collect();
        self.update_statements(&save_set(), Vec::new(), rows, Guard::RowVersion)
    }

    /// Runs [`Store::save_if_unchanged_statements`]: writes every mutable field of each job whose
    /// row still has the version the job was read with, and answers the jobs written. A job left
    /// out changed since it was read (the caller decides it again on the row as it is now).
    pub async fn save_jobs_if_unchanged(
        &self,
        conn: &impl ConnectionTrait,
        statements: Vec<Statement>,
    ) -> Result<HashSet<JobId>> {
        let mut written = HashSet::new();
        for statement in statements {
            for row in conn.query_all_raw(statement).await? {
                let id: i64 = row.try_get_by_index(0)?;
                written.insert(JobId(id as u64));
            }
        }
        Ok(written)
    }

    /// `UPDATE jobs SET <set>, row_version = row_version + 1 FROM (VALUES <rows>) AS v WHERE
    /// jobs.id = v.column1`, in chunks; with [`Guard::RowVersion`] only where the row's version is
    /// the rows' last value, answering the ids written. `set` refers to the rows' columns as
    /// `v.columnN` and to `fixed` as placeholders 1… (each once, in order); every row starts
    /// with the job id.
    fn update_statements(&self, set: &str, fixed: Vec<Value>, rows: Vec<Vec<Value>>, guard: Guard) -> Vec<Statement> {
        let mut statements = Vec::new();
        let width = rows.first().map_or(0, Vec::len);
        let mut rows = rows.into_iter();
        for size in statement_sizes(rows.len()) {
            let mut values = fixed.clone();
            let mut tuples = Vec::with_capacity(size);
            for row in rows.by_ref().take(size) {
                let first = values.len() + 1;
                let marks: Vec<String> = (first..first + row.len()).map(|n| self.placeholder(n)).collect();
                tuples.push(format!("({})", marks.join(", ")));
                values.extend(row);
            }
            let condition = match guard {
                Guard::RowVersion => format!(" AND jobs.row_version = v.column{width} RETURNING jobs.id"),
                Guard::None => String::new(),
            };
            let sql = format!(
                "UPDATE jobs SET {set}, row_version = jobs.row_version + 1 FROM (VALUES {}) AS v \
                 WHERE jobs.id = v.column1{condition}",
                tuples.join(", ")
            );
            statements.push(Statement::from_sql_and_values(self.backend, sql, values));
        }
        statements
    }

    /// The n-th (1-based) bound parameter in this backend's syntax. SQLite gets plain `?`
    /// (each parameter appears once, in order): with numbered ones the driver looks every
    /// parameter's name up, which costs more than the statement itself at thousands of rows.
    fn placeholder(&self, n: usize) -> String {
        match self.backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every row is written exactly once, in order, by statements of a few fixed sizes.
        #[test]
        fn statement_chunks_cover_every_row_once_in_few_sizes(n in 0usize..5000) {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&rows).collect();
            let joined: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            prop_assert_eq!(&joined, &rows);
            for chunk in &chunks {
                let size = chunk.len();
                prop_assert!(size == ROWS_PER_STATEMENT || (size.is_power_of_two() && size <= 512), "size {}", size);
            }
            // Below a thousand rows: one statement per set bit.
            if n < ROWS_PER_STATEMENT {
                prop_assert_eq!(chunks.len(), n.count_ones() as usize);
            }
        }
    }

    #[test]
    fn statement_sizes_of_some_batches() {
        assert_eq!(statement_sizes(0).count(), 0);
        assert_eq!(statement_sizes(1).collect::<Vec<_>>(), [1]);
        assert_eq!(statement_sizes(137).collect::<Vec<_>>(), [128, 8, 1]);
        assert_eq!(statement_sizes(2600).collect::<Vec<_>>(), [1000, 1000, 512, 64, 16, 8]);
    }
}
