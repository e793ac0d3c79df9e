//! Pure half of the Slurm plugin: the fixed output formats it asks for, their parsers, the state
//! mapping, and the classification of failures. No I/O.

use std::collections::HashMap;

use panda_types::WorkerStatus;

use crate::plugins::BatchState;

/// `squeue --Format`: a `|` after every field, so nothing is padded or cut. `exit_code` is the raw
/// wait status (exit code × 256 + signal).
pub const SQUEUE_FORMAT: &str = "JobID:|,State:|,exit_code:|,Reason:|";

/// `sacct --format` (with `--parsable2`: `|` between fields). ExitCode is `code:signal`.
pub const SACCT_FORMAT: &str = "JobID,State,ExitCode";

/// How a job ended, as Slurm reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The batch script's exit code.
    pub code: i32,
    /// The signal that ended it (0: none).
    pub signal: i32,
}

impl ExitStatus {
    /// A shell's convention: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        if self.signal != 0 { 128 + self.signal } else { self.code }
    }
}

/// One job as `squeue` or `sacct` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// Slurm job ID.
    pub job_id: String,
    /// State name (`PENDING`, `CANCELLED`, ...), without sacct's ` by <uid>`.
    pub state: String,
    /// How it ended (also present, as 0, before it ended).
    pub exit: Option<ExitStatus>,
    /// squeue's reason, or sacct's ` by <uid>` detail.
    pub reason: String,
}

/// A line the parser did not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {command} output, line {line}: {message}: {text:?}")]
pub struct ParseError {
    /// squeue or sacct.
    pub command: &'static str,
    /// Line number (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: &'static str,
    /// The line.
    pub text: String,
}

fn is_job_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a batch ID can be a Slurm job ID (digits).
pub fn valid_job_id(id: &str) -> bool {
    is_job_id(id)
}

/// Parses `sbatch --parsable` output: `<id>` or `<id>;<cluster>` on the last line.
///
/// # Errors
/// The output, when it holds no job ID.
pub fn parse_sbatch(stdout: &str) -> Result<String, String> {
    let last = stdout.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
    let id = last.split(';').next().unwrap_or("").trim();
    if is_job_id(id) { Ok(id.to_owned()) } else { Err(format!("sbatch printed no job id: {:?}", stdout.trim())) }
}

/// Parses `squeue --noheader --Format=`[`SQUEUE_FORMAT`].
///
/// # Errors
/// [`ParseError`] for the first line that does not fit the format.
pub fn parse_squeue(text: &str) -> Result<Vec<JobRecord>, ParseError> {
    let mut records = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        let error = |message| ParseError { command: "squeue", line: i + 1, message, text: raw.to_owned() };
        let body = line.strip_suffix('|').ok_or_else(|| error("no closing |"))?;
        let fields: Vec<&str> = body.splitn(4, '|').collect();
        let [job_id, state, exit, reason] = fields[..] else {
            return Err(error("expected JobID|State|exit_code|Reason|"));
        };
        if !is_job_id(job_id.trim()) {
            return Err(error("JobID is not a number"));
        }
        let raw_status: i32 = exit.trim().parse().map_err(|_| error("exit_code is not a number"))?;
        records.push(JobRecord {
            job_id: job_id.trim().to_owned(),
            state: state.trim().to_owned(),
            exit: Some(ExitStatus { code: (raw_status >> 8) & 0xff, signal: raw_status & 0x7f }),
            reason: reason.trim().to_owned(),
        });
    }
    Ok(records)
}

/// Parses `sacct --noheader --parsable2 --format=`[`SACCT_FORMAT`] (plain or `--completion`).
/// Step rows (`123.batch`) are skipped; a job listed twice (requeued) keeps its last row.
///
/// # Errors
/// [`ParseError`] for the first line that does not fit the format.
pub fn parse_sacct(text: &str) -> Result<Vec<JobRecord>, ParseError> {
    let mut records: Vec<JobRecord> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let error = |message| ParseError { command: "sacct", line: i + 1, message, text: raw.to_owned() };
        let fields: Vec<&str> = line.split('|').collect();
        let [job_id, state, exit] = fields[..] else { return Err(error("expected JobID|State|ExitCode")) };
        if job_id.contains('.') {
            continue;
        }
        if !is_job_id(job_id) {
            return Err(error("JobID is not a number"));
        }
        let (code, signal) = exit.split_once(':').ok_or_else(|| error("ExitCode is not code:signal"))?;
        let exit = ExitStatus {
            code: code.parse().map_err(|_| error("ExitCode is not code:signal"))?,
            signal: signal.parse().map_err(|_| error("ExitCode is not code:signal"))?,
        };
        let (state, reason) = state.split_once(' ').unwrap_or((state, ""));
        let record = JobRecord {
            job_id: job_id.to_owned(),
            state: state.to_owned(),
            exit: Some(exit),
            reason: reason.to_owned(),
        };
        match records.iter_mut().find(|r| r.job_id == record.job_id) {
            Some(existing) => *existing = record,
            None => records.push(record),
        }
    }
    Ok(records)
}

/// What a Slurm state means for a worker. Differences from the reference (which maps TIMEOUT and
/// PREEMPTED to finished and SUSPENDED to running): a time-out is a failure, a preemption a
/// cancellation, and a suspended or stopped job an idle worker (started, not running now).
pub fn worker_status(state: &str) -> Option<WorkerStatus> {
    let status = match state {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" | "SPECIAL_EXIT" => {
            WorkerStatus::Submitted
        }
        "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" | "RESIZING" => WorkerStatus::Running,
        "SUSPENDED" | "STOPPED" => WorkerStatus::Idle,
        "COMPLETED" => WorkerStatus::Finished,
        "FAILED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE" | "LAUNCH_FAILED" => {
            WorkerStatus::Failed
        }
        "CANCELLED" | "PREEMPTED" | "REVOKED" => WorkerStatus::Cancelled,
        _ => return None,
    };
    Some(status)
}

/// A job record as a worker state, with a diagnostic that names Slurm's state.
///
/// # Errors
/// A message when the state is not one Slurm documents.
pub fn map_record(record: &JobRecord) -> Result<BatchState, String> {
    let status = worker_status(&record.state)
        .ok_or_else(|| format!("job {} is in an unknown Slurm state {:?}", record.job_id, record.state))?;
    let ended = matches!(status, WorkerStatus::Finished | WorkerStatus::Failed | WorkerStatus::Cancelled);
    let exit_code = if ended { record.exit.map(ExitStatus::shell_code) } else { None };
    let mut diag = match status {
        WorkerStatus::Running | WorkerStatus::Finished => String::new(),
        _ => format!("Slurm job {} {}", record.job_id, record.state),
    };
    if !diag.is_empty() {
        if !record.reason.is_empty() && record.reason != "None" {
            diag.push_str(&format!(" ({})", record.reason));
        }
        match record.exit {
            Some(exit) if ended && exit.signal != 0 => diag.push_str(&format!(", signal {}", exit.signal)),
            Some(exit) if ended && exit.code != 0 => diag.push_str(&format!(", exit code {}", exit.code)),
            _ => {}
        }
        if record.state == "TIMEOUT" {
            diag.push_str(": wall time limit reached");
        }
    }
    Ok(BatchState { status, exit_code, diag })
}

/// Whether a failed `sbatch` may succeed later (the controller is busy or unreachable, a submit
/// limit is reached) rather than never (a bad partition, account, or request).
pub fn sbatch_failure_is_transient(text: &str) -> bool {
    const TRANSIENT: &[&str] = &[
        "Unable to contact slurm controller",
        "Socket timed out",
        "temporarily unable to accept job",
        "Resource temporarily unavailable",
        "Zero Bytes were transmitted or received",
        "Transport endpoint",
        "Connection refused",
        "Communication connection failure",
        "job submit limit",
        "MaxSubmitJobs",
        "AssocMaxSubmitJobLimit",
        "QOSMaxSubmitJobPerUserLimit",
        "Slurmctld is busy",
        "Try again",
    ];
    TRANSIENT.iter().any(|t| text.to_lowercase().contains(&t.to_lowercase()))
}

/// Whether `squeue` failed only because none of the asked jobs is known any more.
pub fn squeue_knows_none(stderr: &str) -> bool {
    stderr.contains("Invalid job id specified")
}

/// Whether plain `sacct` failed because there is no slurmdbd (then `sacct --completion` is the way).
pub fn sacct_has_no_accounting(text: &str) -> bool {
    text.contains("accounting storage is disabled")
}

/// Per-job errors in `scancel`'s standard error ("Kill job error on job id N: reason").
pub fn parse_scancel_errors(stderr: &str) -> HashMap<String, String> {
    let mut errors = HashMap::new();
    for line in stderr.lines() {
        let Some((_, rest)) = line.split_once("error on job id ") else { continue };
        let (id, reason) = rest.split_once(':').unwrap_or((rest, ""));
        let id = id.trim().split('_').next().unwrap_or("").to_owned();
        errors.insert(id, reason.trim().to_owned());
    }
    errors
}

/// Whether a `scancel` error still means the job is gone or going (a kill is idempotent).
pub fn scancel_error_means_gone(reason: &str) -> bool {
    reason.contains("Invalid job id specified") || reason.contains("already completing or completed")
}
