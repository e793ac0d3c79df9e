//! The server's domain records: what the store returns and the service works with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use panda_types::{JobId, JobStatus, Resources, TaskId, TaskSpec, TaskStatus};

/// A stored task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// ID.
    pub id: TaskId,
    /// What was submitted.
    pub spec: TaskSpec,
    /// Current state.
    pub status: TaskStatus,
    /// Why it is pending, broken or failed.
    pub error_diag: String,
    /// Client-chosen key making submission idempotent.
    pub idempotency_key: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub modified_at: DateTime<Utc>,
    /// An input dataset was open when JEDI last read the input: the task does not end yet.
    pub awaits_input: bool,
}

/// Jobs of a task by state group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// All jobs.
    pub total: u32,
    /// Not yet dispatched.
    pub queued: u32,
    /// Held by a pilot or post-processing.
    pub running: u32,
    /// Finished.
    pub finished: u32,
    /// Failed.
    pub failed: u32,
    /// Cancelled or closed.
    pub cancelled: u32,
}

impl JobCounts {
    /// Adds `n` jobs in `status`.
    pub fn add(&mut self, status: JobStatus, n: u32) {
        self.total += n;
        match status {
            JobStatus::Finished => self.finished += n,
            JobStatus::Failed => self.failed += n,
            JobStatus::Cancelled | JobStatus::Closed => self.cancelled += n,
            s if s.is_queued() => self.queued += n,
            _ => self.running += n,
        }
    }

    /// Jobs not in a final state.
    pub fn unfinished(&self) -> u32 {
        self.queued + self.running
    }
}

/// An output file a job produced (or is expected to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Logical file name.
    pub lfn: String,
    /// Size.
    pub size_bytes: u64,
    /// `adler32:xxxxxxxx`.
    pub checksum: String,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// ID.
    pub id: JobId,
    /// Its task.
    pub task_id: TaskId,
    /// Position in the task.
    pub job_index: u32,
    /// State.
    pub status: JobStatus,
    /// Queue it was brokered to.
    pub queue: String,
    /// Attempt number (1 for the first).
    pub attempt_nr: u32,
    /// Shell command, placeholders filled.
    pub command: String,
    /// Payload environment.
    pub environment: BTreeMap<String, String>,
    /// Input LFNs.
    pub input_files: Vec<String>,
    /// Output LFNs.
    pub output_files: Vec<String>,
    /// Request.
    pub resources: Resources,
    /// Priority.
    pub priority: i32,
    /// Fencing token of the current dispatch.
    pub lease_token: Option<String>,
    /// Pending instruction to the pilot (`tobekilled`).
    pub command_to_pilot: Option<String>,
    /// Payload exit code.
    pub exit_code: Option<i32>,
    /// Pilot error code.
    pub error_code: u32,
    /// Diagnostic.
    pub error_diag: String,
    /// Tail of stdout.
    pub stdout_tail: String,
    /// Tail of stderr.
    pub stderr_tail: String,
    /// CPU seconds.
    pub cpu_time_seconds: f64,
    /// Wall seconds.
    pub wall_time_seconds: f64,
    /// Peak RSS.
    pub max_rss_kb: u64,
    /// Worker node.
    pub node: String,
    /// Harvester worker.
    pub worker_id: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// First `starting`/`running` report.
    pub started_at: Option<DateTime<Utc>>,
    /// Reached a final state.
    pub ended_at: Option<DateTime<Utc>>,
    /// Last change.
    pub modified_at: DateTime<Utc>,
    /// Last pilot update.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// When the job (last) entered each state it went through.
    pub state_times: StateTimes,
    /// Which part of the system the job's error comes from (empty without an error).
    pub error_source: ErrorSource,
    /// A merge job over the task's outputs.
    pub merge: bool,
    /// Global share whose slots it uses (its task's; empty for jobs stored before shares
    /// existed, which count as the default share).
    pub share: String,
    /// The row's version as read: every write of the job bumps it, so a write that names it
    /// applies only to the job as it was read (optimistic concurrency).
    pub row_version: u64,
}

/// Which of a task's jobs an insertion brings (JEDI's phases of a task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobBatch {
    /// All the task's jobs, or the rest after its scouts.
    Jobs,
    /// The first few, run as scouts: the task goes to `scouting`.
    Scouts,
    /// Merge jobs over the outputs, once the other jobs have ended.
    Merge,
    /// More jobs of a running task, for files that arrived in its open input dataset (may be
    /// none: the input closed and every file has its job).
    More,
}

/// When a job entered each state, kept as the JSON object it is stored as. Dispatch and reports
/// only append to it, so the hot path neither parses nor re-serializes it; readers parse it
/// (a state entered again appears twice, and the later time wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTimes(String);

impl Default for StateTimes {
    fn default() -> Self {
        Self("{}".to_owned())
    }
}

impl StateTimes {
    /// As stored.
    pub fn from_json(json: String) -> Self {
        Self(json)
    }

    /// Starting with one state.
    pub fn starting(state: JobStatus, at: DateTime<Utc>) -> Self {
        let mut times = Self::default();
        times.record(state, at);
        times
    }

    /// Records entering `state` at `at`.
    pub fn record(&mut self, state: JobStatus, at: DateTime<Utc>) {
        let stamp = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.0.pop(); // the closing brace
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push_str(&format!("\"{}\":\"{stamp}\"}}", state.as_str()));
    }

    /// The JSON to store.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// State name → when it was (last) entered; what does not parse is left out.
    pub fn parse(&self) -> BTreeMap<String, DateTime<Utc>> {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&self.0)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(state, at)| {
                let at = DateTime::parse_from_rfc3339(at.as_str()?).ok()?.with_timezone(&Utc);
                Some((state, at))
            })
            .collect()
    }
}

/// Which part of the system a job's error comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ErrorSource {
    /// No error.
    #[default]
    None,
    /// The pilot (stage-in, stage-out, its own failure); `error_code` is the pilot's.
    Pilot,
    /// The payload: it exited non-zero; `exit_code` is its.
    Payload,
    /// The server (lost heartbeat and other watchdog decisions); `error_code` is the server's.
    Server,
}

impl ErrorSource {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::None => "",
            ErrorSource::Pilot => "pilot",
            ErrorSource::Payload => "payload",
            ErrorSource::Server => "server",
        }
    }

    /// From the stored name (unknown names read as none).
    pub fn parse(text: &str) -> Self {
        match text {
            "pilot" => ErrorSource::Pilot,
            "payload" => ErrorSource::Payload,
            "server" => ErrorSource::Server,
            _ => ErrorSource::None,
        }
    }
}

/// A job as JEDI hands it over for insertion.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Position in the task.
    pub job_index: u32,
    /// Brokered queue.
    pub queue: String,
    /// Shell command.
    pub command: String,
    /// Environment.
    pub environment: BTreeMap<String, String>,
    /// Input LFNs.
    pub input_files: Vec<String>,
    /// Output LFNs.
    pub output_files: Vec<String>,
    /// Request.
    pub resources: Resources,
    /// Priority.
    pub priority: i32,
    /// A merge job (set by the server from the insertion's kind, not by the caller).
    pub merge: bool,
}

/// What a pilot reports.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    /// Reported state (starting, running, finished, failed).
    pub status: JobStatus,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Pilot error code.
    pub error_code: u32,
    /// Diagnostic.
    pub error_diag: String,
    /// stdout tail.
    pub stdout_tail: String,
    /// stderr tail.
    pub stderr_tail: String,
    /// CPU seconds.
    pub cpu_time_seconds: f64,
    /// Wall seconds.
    pub wall_time_seconds: f64,
    /// Peak RSS.
    pub max_rss_kb: u64,
    /// Produced outputs.
    pub output_files: Vec<OutputFile>,
    /// Node.
    pub node: String,
}

/// A queue as a harvester announces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    /// Name.
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    /// Largest job it takes.
    pub max_resources: Resources,
    /// Worker limit.
    pub max_workers: u32,
    /// Announcing harvester.
    pub harvester_id: String,
    /// Storage site it reads input from (data locality); empty: its name.
    pub site: String,
    /// Container runtimes its workers offer (apptainer, singularity, podman, docker).
    pub containers: Vec<String>,
    /// Last announcement.
    pub heartbeat_at: DateTime<Utc>,
}

/// Jobs of a queue by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueLoad {
    /// Queue.
    pub queue: String,
    /// Dispatchable.
    pub activated: u32,
    /// Handed out, not started.
    pub sent: u32,
    /// Starting or running.
    pub running: u32,
}

/// One harvester's workers on one queue, as its propagator reported them (`ReportWorkers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Queue.
    pub queue: String,
    /// Worker counts by state name (live states only).
    pub by_status: std::collections::BTreeMap<String, u32>,
    /// IDs of the live workers.
    pub live_worker_ids: Vec<String>,
}

/// A queue's workers summed over the harvesters' fresh reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueWorkers {
    /// Running workers: the pilots brokerage counts as slots.
    pub pilots: u32,
    /// Worker counts by state name.
    pub by_status: std::collections::BTreeMap<String, u32>,
}

/// A live worker holding a job the server wants killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerKill {
    /// Queue.
    pub queue: String,
    /// Harvester worker.
    pub worker_id: String,
    /// The job.
    pub job_id: JobId,
    /// Why.
    pub reason: String,
}

/// A catalogued file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Logical file name.
    pub lfn: String,
    /// Dataset name.
    pub dataset: String,
    /// Size.
    pub size_bytes: u64,
    /// Checksum.
    pub checksum: String,
    /// State name.
    pub status: String,
}

/// A dataset with its files.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Name.
    pub name: String,
    /// Producing task.
    pub task_id: TaskId,
    /// State.
    pub status: panda_types::DatasetStatus,
    /// Files.
    pub files: Vec<FileRecord>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;

    #[test]
    fn state_times_append_and_the_latest_entry_of_a_state_wins() {
        let at = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        let mut times = StateTimes::starting(JobStatus::Activated, at(0));
        times.record(JobStatus::Sent, at(1));
        times.record(JobStatus::Activated, at(2));
        times.record(JobStatus::Sent, at(3));
        let parsed = times.parse();
        assert_eq!(parsed.len(), 2);
        assert_eq!((parsed["activated"], parsed["sent"]), (at(2), at(3)));
        assert!(serde_json::from_str::<serde_json::Value>(times.as_json()).is_ok(), "{}", times.as_json());
        assert!(StateTimes::default().parse().is_empty());
        assert!(StateTimes::from_json("not json".into()).parse().is_empty());
    }
}
