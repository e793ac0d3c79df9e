//! The pilot protocol's use cases, batch first: many pilots' `GetJob` and `UpdateJob` calls share
//! one transaction (see `group_commit`), read and written with bulk statements, so one durable
//! commit serves them all. Each call still gets its own answer and its own errors: a bad report
//! is refused without touching the others in its batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use panda_types::{FileStatus, JobActor, JobId, JobStatus, Resources, StateMachine, TaskId};
use sea_orm::TransactionTrait;
use tracing::instrument;

use super::{Dispatched, JobChange, PilotCommand, Service, TO_BE_KILLED, apply_metrics};
use crate::error::{Error, Result};
use crate::group_commit::{GroupCommit, Shape};
use crate::model::{ErrorSource, FileRecord, Job, JobReport, OutputFile};
use crate::store::ClaimFilter;

/// One pilot's request for jobs.
#[derive(Debug, Clone)]
pub struct DispatchRequest {
    /// Queue the pilot serves.
    pub queue: String,
    /// Node it runs on.
    pub node: String,
    /// Harvester worker id, if any.
    pub worker_id: String,
    /// Resources it offers (zero: any).
    pub offer: Resources,
    /// Most jobs it takes (at least one).
    pub n: u32,
    /// Only jobs of this task (a pilot with a warm runtime for it); `None`: any task.
    pub task: Option<TaskId>,
}

/// One pilot's report on a job it holds.
#[derive(Debug, Clone)]
pub struct UpdateRequest {
    /// The job.
    pub job_id: JobId,
    /// The lease token its dispatch handed out.
    pub lease_token: String,
    /// What the pilot reports.
    pub report: JobReport,
}

/// The answer to one report: the job's state now, and what the pilot should do.
pub type UpdateOutcome = Result<(JobStatus, PilotCommand)>;

/// Files a report settles, written after the jobs themselves.
struct OutputsToRecord {
    job_id: JobId,
    produced: Vec<OutputFile>,
    others: FileStatus,
}

/// What a report did to a job.
enum Applied {
    /// A repeated final report: nothing to write.
    Unchanged,
    /// The job changed (maybe only its heartbeat).
    Changed { outputs: Option<OutputsToRecord> },
}

/// What a batch of reports does, decided in memory before anything is written.
struct DecidedReports {
    /// Per report of the batch: its answer (`None`: not decided in this pass).
    outcomes: Vec<Option<UpdateOutcome>>,
    /// Each changed job as the reports left it.
    changed: BTreeMap<JobId, Job>,
    /// The state changes to write, in order (their events and transitions).
    changes: Vec<JobChange>,
    /// Output files to settle.
    outputs: Vec<OutputsToRecord>,
}

impl DecidedReports {
    /// Replaces what was decided for the jobs `stale` by what `again` decided on their current
    /// rows for the reports `which`.
    fn replace(&mut self, stale: &BTreeSet<JobId>, which: &[usize], again: DecidedReports) {
        self.changed.retain(|id, _| !stale.contains(id));
        self.changes.retain(|change| !stale.contains(&change.job_id));
        self.outputs.retain(|o| !stale.contains(&o.job_id));
        self.changed.extend(again.changed);
        self.changes.extend(again.changes);
        self.outputs.extend(again.outputs);
        let mut outcomes = again.outcomes;
        for &i in which {
            self.outcomes[i] = outcomes[i].take();
        }
    }
}

impl Service {
    /// Hands up to `n` activated jobs of `queue` that fit `offer` to a pilot, each exactly once.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad queue name; database failures.
    pub async fn dispatch(
        &self,
        queue: &str,
        node: &str,
        worker_id: &str,
        offer: Resources,
        n: u32,
    ) -> Result<Vec<Dispatched>> {
        let request = DispatchRequest {
            queue: queue.to_owned(),
            node: node.to_owned(),
            worker_id: worker_id.to_owned(),
            offer,
            n,
            task: None,
        };
        self.dispatch_batch(std::slice::from_ref(&request)).await?.pop().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Serves many pilots' requests in one transaction. Requests for the same queue and offer are
    /// served by one claim, in arrival order; each job goes to exactly one request.
    ///
    /// Where rows are locked (PostgreSQL) the jobs are claimed inside the transaction with
    /// `FOR UPDATE SKIP LOCKED`, so concurrent batches and replicas skip each other's. SQLite has
    /// one writer for the whole database: there the jobs are picked outside the transaction and
    /// handed out in memory, and the transaction only marks each one sent if its row version is
    /// still the one read; a job that changed meanwhile is not handed out, and the requests left
    /// short claim again inside the transaction.
    ///
    /// # Errors
    /// The outer error is a database failure (nothing was dispatched); the inner ones are each
    /// request's own (INVALID_ARGUMENT for a bad queue name).
    #[instrument(skip_all, fields(calls = requests.len()))]
    pub async fn dispatch_batch(&self, requests: &[DispatchRequest]) -> Result<Vec<Result<Vec<Dispatched>>>> {
        let mut answers: Vec<Result<Vec<Job>>> = requests
            .iter()
            .map(|r| {
                panda_types::QueueName::new(r.queue.clone()).map(|_| Vec::new()).map_err(|e| Error::invalid("queue", e))
            })
            .collect();
        let mut groups: BTreeMap<ClaimGroup<'_>, Vec<usize>> = BTreeMap::new();
        for (i, request) in requests.iter().enumerate() {
            if answers[i].is_ok() {
                let o = request.offer;
                let key = [u64::from(o.cores), o.memory_mb, o.disk_mb, o.walltime_seconds];
                groups.entry((request.queue.as_str(), request.task, key)).or_default().push(i);
            }
        }
        if groups.is_empty() {
            return Ok(answers.into_iter().map(|a| a.map(|_| Vec::new())).collect());
        }
        let now = Utc::now();
        let mut changes: Vec<JobChange> = Vec::new();
        // Jobs handed out so far: a later group's claim must skip them (they are still activated
        // in the database until the batch writes them).
        let mut taken: Vec<JobId> = Vec::new();
        let locked = if self.store.has_row_locks() { Some(self.db.begin().await?) } else { None };
        for (group, members) in &groups {
            let wanted = still_wanted(requests, members, &answers);
            let claimed = match &locked {
                Some(txn) => self.claim_group(txn, group, &requests[members[0]].offer, wanted, &taken).await?,
                None => self.claim_group(&self.reads, group, &requests[members[0]].offer, wanted, &taken).await?,
            };
            taken.extend(self.hand_out(requests, members, &mut answers, claimed, now, &mut changes)?);
        }
        let statements = {
            let sent: Vec<&Job> = answers.iter().flatten().flatten().collect();
            self.store.mark_sent_if_unchanged_statements(sent, now)
        };
        let txn = match locked {
            Some(txn) => txn,
            None => self.db.begin().await?,
        };
        let written = self.store.save_jobs_if_unchanged(&txn, statements).await?;
        if written.len() < taken.len() {
            // Some jobs changed after they were picked (SQLite only; rows claimed with locks
            // cannot): they are not handed out, and the requests left short claim again, here.
            tracing::debug!(lost = taken.len() - written.len(), "picked jobs changed before the dispatch wrote them");
            for answer in answers.iter_mut().flatten() {
                answer.retain(|job| written.contains(&job.id));
            }
            changes.retain(|change| written.contains(&change.job_id));
            for (group, members) in &groups {
                let wanted = still_wanted(requests, members, &answers);
                if wanted == 0 {
                    continue;
                }
                let claimed = self.claim_group(&txn, group, &requests[members[0]].offer, wanted, &[]).await?;
                let handed: BTreeSet<JobId> =
                    self.hand_out(requests, members, &mut answers, claimed, now, &mut changes)?.into_iter().collect();
                // Written before the next group's claim, which must not see these as activated.
                let sent: Vec<&Job> =
                    answers.iter().flatten().flatten().filter(|job| handed.contains(&job.id)).collect();
                self.store.mark_sent(&txn, sent, now).await?;
            }
        }
        let lfns: Vec<String> =
            answers.iter().flatten().flatten().flat_map(|j| j.input_files.iter().cloned()).collect();
        let catalog = self.store.files_by_lfn(&txn, &lfns).await?;
        let n_sent = changes.len();
        self.commit_changes(txn, changes).await?;
        self.metrics.jobs_dispatched.inc_by(n_sent as u64);
        if !self.shares.is_single() {
            self.shares.dispatched(answers.iter().flatten().flatten().map(|j| (j.queue.as_str(), j.share.as_str())));
        }
        Ok(answers
            .into_iter()
            .map(|answer| answer.map(|jobs| jobs.into_iter().map(|job| with_inputs(job, &catalog)).collect()))
            .collect())
    }

    /// Claims up to `wanted` activated jobs for one group of requests, skipping `except`.
    async fn claim_group(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        (queue, task, _): &ClaimGroup<'_>,
        offer: &Resources,
        wanted: u64,
        except: &[JobId],
    ) -> Result<Vec<Job>> {
        match task {
            None => self.claim_jobs(conn, queue, offer, wanted, except).await,
            Some(task) => {
                let narrow = ClaimFilter { task: Some(*task), except, ..ClaimFilter::default() };
                self.store.claim_jobs(conn, queue, offer, wanted, narrow).await
            }
        }
    }

    /// Hands `claimed` out to the group's requests in arrival order, each up to what it still
    /// wants, as sent jobs with fresh lease tokens; answers the ids handed out.
    fn hand_out(
        &self,
        requests: &[DispatchRequest],
        members: &[usize],
        answers: &mut [Result<Vec<Job>>],
        claimed: Vec<Job>,
        now: DateTime<Utc>,
        changes: &mut Vec<JobChange>,
    ) -> Result<Vec<JobId>> {
        let mut claimed = claimed.into_iter();
        let mut ids = Vec::new();
        for &i in members {
            let request = &requests[i];
            let Ok(mine) = &mut answers[i] else { continue };
            let room = (request.n.max(1) as usize).saturating_sub(mine.len());
            for mut job in claimed.by_ref().take(room) {
                changes.push(self.decide_move(&mut job, JobStatus::Sent, JobActor::Server)?);
                job.lease_token = Some(uuid::Uuid::new_v4().simple().to_string());
                job.node.clone_from(&request.node);
                job.worker_id.clone_from(&request.worker_id);
                job.modified_at = now;
                ids.push(job.id);
                mine.push(job);
            }
        }
        Ok(ids)
    }

    /// Claims up to `wanted` activated jobs of `queue`, skipping `except`: with one share, as they
    /// come (priority, then age); with several, share by share, the one furthest under its target
    /// first ([`crate::shares::Shares::plan`]), then whatever is left on the queue if that came
    /// short (usage is counted every few seconds, so a share's jobs may be gone or new).
    async fn claim_jobs(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        queue: &str,
        offer: &Resources,
        wanted: u64,
        except: &[JobId],
    ) -> Result<Vec<Job>> {
        if self.shares.is_single() {
            return self
                .store
                .claim_jobs(conn, queue, offer, wanted, ClaimFilter { except, ..ClaimFilter::default() })
                .await;
        }
        let mut jobs = Vec::new();
        for (share, n) in self.shares.plan(queue, wanted) {
            jobs.extend(
                self.store
                    .claim_jobs(
                        conn,
                        queue,
                        offer,
                        n,
                        ClaimFilter { share: Some(&share), except, ..ClaimFilter::default() },
                    )
                    .await?,
            );
        }
        let short = wanted.saturating_sub(jobs.len() as u64);
        if short > 0 {
            let except: Vec<JobId> = except.iter().copied().chain(jobs.iter().map(|j| j.id)).collect();
            jobs.extend(
                self.store
                    .claim_jobs(conn, queue, offer, short, ClaimFilter { except: &except, ..ClaimFilter::default() })
                    .await?,
            );
        }
        Ok(jobs)
    }

    /// Puts back jobs whose dispatch answer never reached its pilot (it hung up first), so they
    /// need not wait for the watchdog. A job is only put back while it is still `sent` under
    /// the same lease: a pilot that did get it is never robbed.
    ///
    /// # Errors
    /// Database failures (the watchdog then puts the jobs back later).
    pub async fn release_undelivered(&self, jobs: Vec<Dispatched>) -> Result<usize> {
        let leases: Vec<(JobId, String)> =
            jobs.into_iter().map(|d| (d.job.id, d.job.lease_token.unwrap_or_default())).collect();
        let released = self.release_leases(&leases, "dispatch answer not delivered").await?;
        Ok(released.len())
    }

    /// Hands jobs back to their queue: each job still `sent` under the given lease token goes
    /// back to `activated`, its lease revoked (a later report with that token is refused). A job
    /// started, ended, unknown, or sent under another lease is left as it is, so calling again
    /// changes nothing. Answers the jobs released, in id order.
    ///
    /// # Errors
    /// Database failures (nothing was released).
    pub async fn release_leases(&self, leases: &[(JobId, String)], reason: &str) -> Result<Vec<JobId>> {
        let ids: Vec<JobId> = leases.iter().map(|(id, _)| *id).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin().await?;
        let mut current = self.store.lock_jobs(&txn, &ids).await?;
        let mut events = Vec::new();
        let mut released = Vec::new();
        for (job_id, token) in leases {
            let Some(job) = current.get_mut(job_id) else { continue };
            if job.status != JobStatus::Sent || token.is_empty() || job.lease_token.as_deref() != Some(token) {
                continue;
            }
            self.move_job(job, JobStatus::Activated, JobActor::Server, &mut events)?;
            job.lease_token = None;
            job.node.clear();
            job.worker_id.clear();
            released.push(job.id);
        }
        released.sort();
        released.dedup();
        let changed: Vec<&Job> = released.iter().filter_map(|id| current.get(id)).collect();
        self.store.save_jobs(&txn, &changed).await?;
        self.commit(txn, events).await?;
        if !released.is_empty() {
            tracing::info!(jobs = ?released, %reason, "jobs handed back; activated again");
        }
        Ok(released)
    }

    /// Applies a pilot's report on a job it holds: a state change, a heartbeat, or the final
    /// report. Repeating a final report changes nothing.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the lease token is not the current one or the state
    /// machine refuses the change; INVALID_ARGUMENT for outputs the job does not declare.
    pub async fn update_job(&self, job_id: JobId, lease_token: &str, report: JobReport) -> UpdateOutcome {
        let update = UpdateRequest { job_id, lease_token: lease_token.to_owned(), report };
        self.update_batch(std::slice::from_ref(&update)).await?.pop().unwrap_or(Err(Error::JobNotFound { job_id }))
    }

    /// Applies many reports in one transaction; a refused report changes nothing and leaves the
    /// others in its batch unaffected.
    ///
    /// Where rows are locked (PostgreSQL) the jobs are read with one locking query in id order
    /// inside the transaction. SQLite has a single writer for the whole database, and everything a
    /// batch does between its statements holds it: there the jobs are read on a read connection
    /// and the reports decided before the transaction starts, which then only writes each changed
    /// job back if its row version is still the one read. A job that changed meanwhile (another
    /// batch's report, a kill, the watchdog) has its reports decided again on the row as it is
    /// then, inside the transaction, so the outcome is always that of reports applied one at a
    /// time to the job as it is.
    ///
    /// # Errors
    /// The outer error is a database failure (nothing was written); the inner ones are each
    /// report's own.
    #[instrument(skip_all, fields(calls = updates.len()))]
    pub async fn update_batch(&self, updates: &[UpdateRequest]) -> Result<Vec<UpdateOutcome>> {
        let ids: Vec<JobId> = updates.iter().map(|u| u.job_id).collect();
        if self.store.has_row_locks() {
            let txn = self.db.begin().await?;
            let jobs = self.store.lock_jobs(&txn, &ids).await?;
            self.apply_reports(Some(txn), updates, jobs).await
        } else {
            let jobs = self.store.read_jobs(&self.reads, &ids).await?;
            self.apply_reports(None, updates, jobs).await
        }
    }

    /// Decides `updates` on `jobs` (as read, each with its row version), then writes the changed
    /// jobs in `txn` (begun here if `None`) where their rows are unchanged since; reports on the
    /// others are decided again on the rows as they are now. See [`Service::update_batch`].
    ///
    /// # Errors
    /// As [`Service::update_batch`].
    pub async fn apply_reports(
        &self,
        txn: Option<sea_orm::DatabaseTransaction>,
        updates: &[UpdateRequest],
        jobs: HashMap<JobId, Job>,
    ) -> Result<Vec<UpdateOutcome>> {
        let now = Utc::now();
        let all: Vec<usize> = (0..updates.len()).collect();
        let mut decided = self.decide_reports(updates, &all, jobs, now);
        let statements = {
            let changed: Vec<&Job> = decided.changed.values().collect();
            self.store.save_if_unchanged_statements(&changed)
        };
        let txn = match txn {
            Some(txn) => txn,
            None => self.db.begin().await?,
        };
        let written = self.store.save_jobs_if_unchanged(&txn, statements).await?;
        let stale: BTreeSet<JobId> = decided.changed.keys().filter(|id| !written.contains(id)).copied().collect();
        if !stale.is_empty() {
            tracing::debug!(jobs = stale.len(), "jobs changed since their reports were decided; deciding again");
            // Inside the transaction: locked (PostgreSQL), or SQLite's one writer.
            let stale_ids: Vec<JobId> = stale.iter().copied().collect();
            let current = self.store.lock_jobs(&txn, &stale_ids).await?;
            let again: Vec<usize> = all.into_iter().filter(|&i| stale.contains(&updates[i].job_id)).collect();
            let redecided = self.decide_reports(updates, &again, current, now);
            let to_save: Vec<&Job> = redecided.changed.values().collect();
            self.store.save_jobs(&txn, &to_save).await?;
            decided.replace(&stale, &again, redecided);
        }
        for OutputsToRecord { job_id, produced, others } in &decided.outputs {
            self.store.record_outputs(&txn, *job_id, produced, *others, now).await?;
        }
        self.commit_changes(txn, decided.changes).await?;
        let ended: Vec<&Job> = decided.changed.values().filter(|j| j.status.is_final()).collect();
        if !self.shares.is_single() {
            // Jobs a pilot held end only through its reports: their slots are free again.
            self.shares.ended(ended.iter().map(|j| j.share.as_str()));
        }
        let ended_tasks: BTreeSet<TaskId> = ended.iter().map(|j| j.task_id).collect();
        for task_id in ended_tasks {
            self.end_task_if_drained(task_id).await;
        }
        // Every report was decided in the first pass (and some again): none is left `None`.
        Ok(decided
            .outcomes
            .into_iter()
            .zip(updates)
            .map(|(outcome, update)| outcome.unwrap_or(Err(Error::JobNotFound { job_id: update.job_id })))
            .collect())
    }

    /// Decides the reports `updates[i]` for `i` in `which` (ascending) on `jobs`, in order: each
    /// report sees the job as the reports before it left it. Pure: nothing is written.
    fn decide_reports(
        &self,
        updates: &[UpdateRequest],
        which: &[usize],
        mut jobs: HashMap<JobId, Job>,
        now: DateTime<Utc>,
    ) -> DecidedReports {
        let mut decided = DecidedReports {
            outcomes: (0..updates.len()).map(|_| None).collect(),
            changed: BTreeMap::new(),
            changes: Vec::new(),
            outputs: Vec::new(),
        };
        let mut changed_ids = BTreeSet::new();
        for &i in which {
            let update = &updates[i];
            let Some(job) = jobs.get_mut(&update.job_id) else {
                decided.outcomes[i] = Some(Err(Error::JobNotFound { job_id: update.job_id }));
                continue;
            };
            // Applied to a copy: a refused report must leave no trace on the job.
            let mut draft = job.clone();
            let mut own_changes = Vec::new();
            let outcome =
                match self.apply_report(&mut draft, &update.lease_token, &update.report, now, &mut own_changes) {
                    Ok(Applied::Unchanged) => Ok((job.status, PilotCommand::None)),
                    Ok(Applied::Changed { outputs: settled }) => {
                        *job = draft;
                        decided.changes.append(&mut own_changes);
                        changed_ids.insert(job.id);
                        decided.outputs.extend(settled);
                        let kill = job.command_to_pilot.as_deref() == Some(TO_BE_KILLED) && !job.status.is_final();
                        Ok((job.status, if kill { PilotCommand::Kill } else { PilotCommand::None }))
                    }
                    Err(error) => Err(error),
                };
            decided.outcomes[i] = Some(outcome);
        }
        // Moved out once all reports are decided: a job's later reports see the earlier ones.
        decided.changed = changed_ids.into_iter().filter_map(|id| jobs.remove_entry(&id)).collect();
        decided
    }

    /// Checks one report against the job (lease, outputs, state machine) and applies it.
    fn apply_report(
        &self,
        job: &mut Job,
        lease_token: &str,
        report: &JobReport,
        now: DateTime<Utc>,
        changes: &mut Vec<JobChange>,
    ) -> Result<Applied> {
        let job_id = job.id;
        if job.lease_token.as_deref() != Some(lease_token) || lease_token.is_empty() {
            return Err(Error::NotHolder { job_id });
        }
        for (i, output) in report.output_files.iter().enumerate() {
            if !job.output_files.contains(&output.lfn) {
                return Err(Error::invalid(
                    format!("output_files[{i}].lfn"),
                    format!(
                        "{:?} is not an output of job {job_id} (expected one of {:?})",
                        output.lfn, job.output_files
                    ),
                ));
            }
        }
        let kill_requested = job.command_to_pilot.as_deref() == Some(TO_BE_KILLED);
        if job.status.is_final() {
            // A retried final report: answer as before, change nothing.
            let same = report.status == job.status
                || (report.status == JobStatus::Failed && job.status == JobStatus::Cancelled);
            return if same {
                Ok(Applied::Unchanged)
            } else {
                Err(Error::JobTransition { job_id, from: job.status, to: report.status })
            };
        }
        job.heartbeat_at = Some(now);
        job.modified_at = now;
        if !report.node.is_empty() {
            job.node.clone_from(&report.node);
        }
        apply_metrics(job, report);
        // Only jobs that declare outputs have file rows to settle.
        let settle = |produced: Vec<OutputFile>, others| {
            (!job.output_files.is_empty()).then_some(OutputsToRecord { job_id, produced, others })
        };
        let outputs = match report.status {
            JobStatus::Starting => {
                if job.status == JobStatus::Sent {
                    changes.push(self.decide_move(job, JobStatus::Starting, JobActor::Pilot)?);
                }
                None
            }
            JobStatus::Running => {
                if matches!(job.status, JobStatus::Sent | JobStatus::Starting) {
                    changes.push(self.decide_move(job, JobStatus::Running, JobActor::Pilot)?);
                }
                None
            }
            JobStatus::Finished => {
                let outputs = settle(report.output_files.clone(), FileStatus::NoOutput);
                if job.status == JobStatus::Sent {
                    changes.push(self.decide_move(job, JobStatus::Starting, JobActor::Pilot)?);
                }
                // The reference stores a final report as holding, then post-processing finishes
                // the job; outputs are registered right here, so both steps happen together.
                changes.push(self.decide_move(job, JobStatus::Holding, JobActor::Pilot)?);
                changes.push(self.decide_move(job, JobStatus::Finished, JobActor::Server)?);
                outputs
            }
            JobStatus::Failed => {
                let outputs = settle(Vec::new(), FileStatus::Failed);
                // A failure after a kill request is the kill taking effect: the user's doing.
                let (to, actor) = if kill_requested {
                    (JobStatus::Cancelled, JobActor::User)
                } else {
                    (JobStatus::Failed, JobActor::Pilot)
                };
                changes.push(self.decide_move(job, to, actor)?);
                if to == JobStatus::Failed {
                    // A pilot error code says the pilot failed (stage-in, stage-out, ...); else the
                    // payload's non-zero exit code is the reason.
                    let payload = report.error_code == 0 && report.exit_code.is_some_and(|code| code != 0);
                    job.error_source = if payload { ErrorSource::Payload } else { ErrorSource::Pilot };
                }
                outputs
            }
            other => {
                return Err(Error::invalid(
                    "status",
                    format!("{other} cannot be reported by a pilot; use starting, running, finished or failed"),
                ));
            }
        };
        Ok(Applied::Changed { outputs })
    }
}

/// How many more jobs the group's requests want (a refused request wants none).
fn still_wanted(requests: &[DispatchRequest], members: &[usize], answers: &[Result<Vec<Job>>]) -> u64 {
    members
        .iter()
        .filter_map(|&i| {
            answers[i].as_ref().ok().map(|mine| (requests[i].n.max(1) as usize).saturating_sub(mine.len()))
        })
        .sum::<usize>() as u64
}

/// Requests one claim serves: the same queue, task restriction (a warm runtime's) and offer
/// (cores, memory, disk, walltime).
type ClaimGroup<'a> = (&'a str, Option<TaskId>, [u64; 4]);

/// A dispatched job with its inputs' catalog entries (an input the catalog does not know yet is
/// passed on by name only).
fn with_inputs(job: Job, catalog: &HashMap<String, FileRecord>) -> Dispatched {
    let inputs = job
        .input_files
        .iter()
        .map(|lfn| {
            catalog.get(lfn).cloned().unwrap_or_else(|| FileRecord {
                lfn: lfn.clone(),
                dataset: String::new(),
                size_bytes: 0,
                checksum: String::new(),
                status: String::new(),
            })
        })
        .collect();
    Dispatched { job, inputs }
}

/// The pilot protocol behind group commits: what the gRPC adapter calls. Calls that arrive
/// while a batch commits share the next batch; a batch that fails as a whole (a database error)
/// is retried call by call, so each caller gets its own answer.
#[derive(Clone)]
pub struct PilotBatches {
    dispatch: GroupCommit<DispatchRequest, Result<Vec<Dispatched>>>,
    update: GroupCommit<Vec<UpdateRequest>, Result<Vec<UpdateOutcome>>>,
}

impl PilotBatches {
    /// Starts the dispatch and report batchers over `service`.
    pub fn start(service: &Service, shape: Shape) -> Self {
        let dispatch = {
            let (service, releaser) = (service.clone(), service.clone());
            GroupCommit::start(
                "dispatch",
                shape,
                move |requests: Vec<DispatchRequest>| {
                    let service = service.clone();
                    async move {
                        match service.dispatch_batch(&requests).await {
                            Ok(answers) => answers,
                            Err(error) if requests.len() == 1 => vec![Err(error)],
                            Err(error) => {
                                tracing::warn!(error = %panda_runtime::error::chain(&error), calls = requests.len(), "dispatch batch failed; serving its calls one by one");
                                let mut answers = Vec::with_capacity(requests.len());
                                for request in &requests {
                                    answers.push(match service.dispatch_batch(std::slice::from_ref(request)).await {
                                        Ok(mut one) => one.pop().unwrap_or_else(|| Ok(Vec::new())),
                                        Err(error) => Err(error),
                                    });
                                }
                                answers
                            }
                        }
                    }
                    .boxed()
                },
                move |lost: Vec<Result<Vec<Dispatched>>>| {
                    let service = releaser.clone();
                    async move {
                        let jobs: Vec<Dispatched> = lost.into_iter().flatten().flatten().collect();
                        if jobs.is_empty() {
                            return;
                        }
                        if let Err(error) = service.release_undelivered(jobs).await {
                            tracing::warn!(error = %panda_runtime::error::chain(&error), "could not put back undelivered jobs; the watchdog will");
                        }
                    }
                    .boxed()
                },
            )
        };
        let update = {
            let service = service.clone();
            GroupCommit::start(
                "update",
                shape,
                // Each item is one call's reports (UpdateJob: one; UpdateJobs: many); all the
                // reports of a batch of calls are applied in one transaction.
                move |calls: Vec<Vec<UpdateRequest>>| {
                    let service = service.clone();
                    async move {
                        let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
                        let all: Vec<UpdateRequest> = calls.concat();
                        match service.update_batch(&all).await {
                            Ok(outcomes) => split(outcomes, &sizes),
                            Err(error) if calls.len() == 1 => vec![Err(error)],
                            Err(error) => {
                                tracing::warn!(error = %panda_runtime::error::chain(&error), calls = calls.len(), "report batch failed; applying its calls one by one");
                                let mut answers = Vec::with_capacity(calls.len());
                                for call in &calls {
                                    answers.push(service.update_batch(call).await);
                                }
                                answers
                            }
                        }
                    }
                    .boxed()
                },
                // A report whose caller left is still applied; nothing to undo.
                |_lost: Vec<Result<Vec<UpdateOutcome>>>| async {}.boxed(),
            )
        };
        Self { dispatch, update }
    }

    /// One pilot's GetJob, in the next dispatch batch.
    ///
    /// # Errors
    /// As [`Service::dispatch_batch`]; UNAVAILABLE while shutting down.
    pub async fn dispatch(&self, request: DispatchRequest) -> Result<Vec<Dispatched>> {
        self.dispatch.call(request).await.map_err(Error::from)?
    }

    /// One pilot's GetJob that may wait: when nothing matches, waits up to `wait` for jobs of
    /// the queue to become activated (see [`crate::activations`]) and tries again, answering as
    /// soon as a claim gives jobs, or empty at the deadline. `wait` zero: one claim, as
    /// [`PilotBatches::dispatch`]. A caller that hangs up while waiting leaves nothing behind
    /// (jobs claimed for a departed caller go back to the queue, see `release_undelivered`).
    ///
    /// # Errors
    /// As [`PilotBatches::dispatch`].
    pub async fn dispatch_waiting(
        &self,
        activations: &crate::activations::Activations,
        request: DispatchRequest,
        wait: std::time::Duration,
    ) -> Result<Vec<Dispatched>> {
        if wait.is_zero() {
            return self.dispatch(request).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before the first claim: an activation between claim and wait is not missed.
        let mut woken = activations.subscribe(&request.queue);
        loop {
            woken.borrow_and_update();
            let jobs = self.dispatch(request.clone()).await?;
            if !jobs.is_empty() {
                return Ok(jobs);
            }
            match tokio::time::timeout_at(deadline, woken.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Ok(jobs),
            }
        }
    }

    /// One pilot's UpdateJob, in the next report batch.
    ///
    /// # Errors
    /// As [`Service::update_batch`]; UNAVAILABLE while shutting down.
    pub async fn update(&self, request: UpdateRequest) -> UpdateOutcome {
        let job_id = request.job_id;
        self.update_many(vec![request]).await?.pop().unwrap_or(Err(Error::JobNotFound { job_id }))
    }

    /// One call's reports (UpdateJobs), in the next report batch; an answer per report.
    ///
    /// # Errors
    /// The outer error: the batch could not be applied (nothing was written); UNAVAILABLE while
    /// shutting down.
    pub async fn update_many(&self, requests: Vec<UpdateRequest>) -> Result<Vec<UpdateOutcome>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        self.update.call(requests).await.map_err(Error::from)?
    }
}

/// Cuts a batch's outcomes back into one list per call.
fn split(outcomes: Vec<UpdateOutcome>, sizes: &[usize]) -> Vec<Result<Vec<UpdateOutcome>>> {
    let mut outcomes = outcomes.into_iter();
    sizes.iter().map(|&n| Ok(outcomes.by_ref().take(n).collect())).collect()
}
