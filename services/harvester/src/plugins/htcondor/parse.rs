//! Pure half of the HTCondor plugin: submit description checks, argument quoting, the output of
//! `condor_submit`, `condor_q -json`, `condor_history -json` and `condor_rm`, and the JobStatus
//! mapping. No I/O.

use std::collections::HashMap;
use std::time::Duration;

use panda_types::WorkerStatus;
use serde::Deserialize;

use crate::plugins::BatchState;

/// Job attributes asked of `condor_q` and `condor_history` (`-attributes`).
pub const ATTRIBUTES: &str = "ClusterId,ProcId,JobStatus,EnteredCurrentStatus,JobStartDate,ExitCode,ExitBySignal,\
ExitSignal,HoldReason,HoldReasonCode,LastHoldReason,RemoveReason";

/// One job's ClassAd, as much of it as the plugin reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobAd {
    /// Cluster.
    pub cluster_id: i64,
    /// Process within the cluster.
    pub proc_id: i64,
    /// 1 idle, 2 running, 3 removed, 4 completed, 5 held, 6 transferring output, 7 suspended.
    pub job_status: i64,
    /// When it entered its current status (Unix seconds).
    pub entered_current_status: Option<i64>,
    /// When it first started (Unix seconds); set once it ever ran.
    pub job_start_date: Option<i64>,
    /// Exit code of a job that exited normally.
    pub exit_code: Option<i64>,
    /// Whether a signal ended it.
    pub exit_by_signal: Option<bool>,
    /// That signal.
    pub exit_signal: Option<i64>,
    /// Why it is held.
    pub hold_reason: Option<String>,
    /// The hold reason's code.
    pub hold_reason_code: Option<i64>,
    /// Why it was last held.
    pub last_hold_reason: Option<String>,
    /// Why it was removed.
    pub remove_reason: Option<String>,
}

impl JobAd {
    /// `cluster.proc`, the batch ID.
    pub fn id(&self) -> String {
        format!("{}.{}", self.cluster_id, self.proc_id)
    }
}

/// A batch ID split into cluster and process, if it is one (`123.4`).
pub fn split_id(id: &str) -> Option<(i64, i64)> {
    let (cluster, proc) = id.split_once('.')?;
    Some((cluster.parse().ok()?, proc.parse().ok()?))
}

/// Parses `condor_q -json` or `condor_history -json` output: a JSON array of ads, or nothing at
/// all when no job matched.
///
/// # Errors
/// A message naming the command and what did not parse.
pub fn parse_ads(command: &str, text: &str) -> Result<Vec<JobAd>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| format!("malformed {command} -json output: {e}"))
}

/// Parses `condor_submit` output: one "N job(s) submitted to cluster C." line per cluster, in
/// order; returns (cluster, number of jobs) pairs.
///
/// # Errors
/// A message when no such line is found.
pub fn parse_submit(stdout: &str) -> Result<Vec<(i64, i64)>, String> {
    let mut clusters = Vec::new();
    for line in stdout.lines() {
        let Some((count, rest)) = line.trim().split_once(" job(s) submitted to cluster ") else { continue };
        let cluster = rest.trim().trim_end_matches('.');
        match (count.trim().parse(), cluster.parse()) {
            (Ok(count), Ok(cluster)) => clusters.push((cluster, count)),
            _ => return Err(format!("condor_submit printed an unreadable line: {:?}", line.trim())),
        }
    }
    if clusters.is_empty() {
        return Err(format!("condor_submit printed no \"submitted to cluster\" line: {:?}", stdout.trim()));
    }
    Ok(clusters)
}

/// The batch IDs `cluster.proc` handed out, in submission order.
pub fn batch_ids(clusters: &[(i64, i64)]) -> Vec<String> {
    clusters.iter().flat_map(|&(cluster, count)| (0..count).map(move |proc| format!("{cluster}.{proc}"))).collect()
}

/// Whether a failed `condor_submit` is the description's fault (permanent) rather than the
/// schedd's (busy, unreachable: temporary, the reference's default for a failed call).
pub fn submit_failure_is_permanent(text: &str) -> bool {
    const PERMANENT: &[&str] =
        &["ERROR: on Line", "Parse error", "does not exist", "is not a valid", "Unknown universe"];
    PERMANENT.iter().any(|p| text.contains(p))
}

/// Checks a submit description template: exactly one `queue` statement, queueing one job, last.
///
/// # Errors
/// What is wrong.
pub fn check_queue_statement(template: &str) -> Result<(), String> {
    let statements: Vec<&str> =
        template.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let queues: Vec<&&str> = statements
        .iter()
        .filter(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case("queue")))
        .collect();
    match queues.as_slice() {
        [] => Err("needs a `queue` statement at the end (one job per worker)".to_owned()),
        [queue] => {
            let rest: Vec<&str> = queue.split_whitespace().skip(1).collect();
            if !(rest.is_empty() || rest == ["1"]) {
                return Err(format!("`{queue}` must queue exactly one job (`queue` or `queue 1`)"));
            }
            if statements.last() != Some(*queue) {
                return Err("the `queue` statement must be the last one".to_owned());
            }
            Ok(())
        }
        _ => Err(format!("has {} `queue` statements; one per worker is allowed", queues.len())),
    }
}

/// Arguments in the submit description's new syntax: the whole list in double quotes, an
/// argument with spaces or quotes in single quotes, quotes doubled.
pub fn condor_arguments(args: &[String]) -> String {
    let words: Vec<String> = args
        .iter()
        .map(|arg| {
            let arg = arg.replace('"', "\"\"");
            if arg.is_empty() || arg.contains([' ', '\t', '\'']) {
                format!("'{}'", arg.replace('\'', "''"))
            } else {
                arg
            }
        })
        .collect();
    format!("\"{}\"", words.join(" "))
}

/// What the monitor does with a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Report this state.
    State(BatchState),
    /// Held for `held_timeout` or longer: remove it, then report it cancelled with `reason`.
    /// `meanwhile` is its state if the removal fails.
    RemoveHeld {
        /// The hold reason (kept as the worker's diagnostic).
        reason: String,
        /// Reported if the removal fails.
        meanwhile: BatchState,
    },
    /// A status HTCondor does not document.
    Unknown(String),
}

fn state(status: WorkerStatus, exit_code: Option<i32>, diag: String) -> BatchState {
    BatchState { status, exit_code, diag }
}

/// Maps a job's ad at time `now` (Unix seconds). Like the reference: idle and suspended jobs are
/// `submitted`, or `idle` once they ever started; removed is `cancelled`; completed is `finished`
/// with exit code 0 and `failed` otherwise; held jobs keep their state (the reason as diagnostic)
/// until held for `held_timeout`, then are removed.
pub fn map_ad(ad: &JobAd, now: i64, held_timeout: Duration) -> Verdict {
    let id = ad.id();
    let waiting = if ad.job_start_date.is_some() { WorkerStatus::Idle } else { WorkerStatus::Submitted };
    match ad.job_status {
        1 => Verdict::State(state(waiting, None, String::new())),
        7 => Verdict::State(state(waiting, None, format!("HTCondor job {id} suspended"))),
        2 | 6 => Verdict::State(state(WorkerStatus::Running, None, String::new())),
        3 => {
            let mut diag = format!("HTCondor job {id} removed");
            if let Some(reason) = ad.remove_reason.as_deref().filter(|r| !r.is_empty()) {
                diag.push_str(&format!(": {reason}"));
            }
            if let Some(hold) = ad.last_hold_reason.as_deref().filter(|r| !r.is_empty()) {
                diag.push_str(&format!(" (last held: {hold})"));
            }
            Verdict::State(state(WorkerStatus::Cancelled, None, diag))
        }
        4 => Verdict::State(match (ad.exit_by_signal, ad.exit_signal, ad.exit_code) {
            (Some(true), signal, _) => {
                let signal = signal.unwrap_or(0);
                let code = i32::try_from(128 + signal).ok();
                state(WorkerStatus::Failed, code, format!("HTCondor job {id} was killed by signal {signal}"))
            }
            (_, _, Some(0)) => state(WorkerStatus::Finished, Some(0), String::new()),
            (_, _, Some(code)) => state(
                WorkerStatus::Failed,
                i32::try_from(code).ok(),
                format!("HTCondor job {id} completed with exit code {code}"),
            ),
            (_, _, None) => {
                state(WorkerStatus::Failed, None, format!("HTCondor job {id} completed without an exit code"))
            }
        }),
        5 => {
            let reason = ad.hold_reason.clone().unwrap_or_default();
            let held_for = ad.entered_current_status.map_or(0, |since| now.saturating_sub(since)).max(0);
            let diag = format!("HTCondor job {id} held: {reason}");
            if u64::try_from(held_for).unwrap_or(0) >= held_timeout.as_secs() {
                Verdict::RemoveHeld {
                    reason: format!("held for {held_for}s, removed: {reason}"),
                    meanwhile: state(waiting, None, diag),
                }
            } else {
                Verdict::State(state(waiting, None, diag))
            }
        }
        other => Verdict::Unknown(format!("HTCondor job {id} has an unknown JobStatus {other}")),
    }
}

/// `condor_rm` answers per job: "Job C.P marked for removal", or "Job C.P not found" (already gone,
/// which counts as removed). Jobs it does not mention are absent from the map.
pub fn parse_rm(output: &str) -> HashMap<String, Result<(), String>> {
    let mut results = HashMap::new();
    for line in output.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("Job ") else { continue };
        let Some((id, what)) = rest.split_once(' ') else { continue };
        if split_id(id).is_none() {
            continue;
        }
        let result = if what.contains("marked for removal") || what.contains("not found") || what.contains("already") {
            Ok(())
        } else {
            Err(line.to_owned())
        };
        results.insert(id.to_owned(), result);
    }
    results
}
