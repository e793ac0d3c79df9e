//! Retries of failed files: a failed job's files get another job until their attempts run out,
//! with a changed resource request when the error says so (the reference's retry module,
//! §5.5): out of memory → more memory; walltime exceeded → a longer walltime (the reference may
//! also shrink the job; here the job keeps its input, see ARCHITECTURE.md). Pure.

use panda_types::Resources;

/// Pilot error: the payload ran out of memory (reference PAYLOADOUTOFMEMORY).
pub const PAYLOAD_OUT_OF_MEMORY: u32 = 1212;
/// Pilot error: the payload exceeded its memory limit (reference PAYLOADEXCEEDMAXMEM).
pub const PAYLOAD_EXCEEDED_MAX_MEMORY: u32 = 1235;
/// Pilot error: walltime limit reached (reference REACHEDMAXTIME).
pub const REACHED_MAX_TIME: u32 = 1213;
/// Pilot error: the batch system sent SIGXCPU (CPU time limit).
pub const SIGXCPU: u32 = 1204;
/// Largest memory a retry asks for, MB.
pub const MAX_RETRY_MEMORY_MB: u64 = 16 * 1024 * 1024;

/// A failed attempt of a job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FailedAttempt {
    /// Attempts so far (1 for the first).
    pub attempt_nr: u32,
    /// Error code.
    pub error_code: u32,
    /// Diagnostic.
    pub error_diag: String,
    /// Peak RSS, kB.
    pub max_rss_kb: u64,
}

/// What to do with a failed job's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryAction {
    /// Run them again with this request.
    Retry {
        /// The next attempt's request.
        resources: Resources,
        /// Why the request changed (empty: unchanged).
        change: String,
    },
    /// Attempts exhausted: the files are failed.
    GiveUp {
        /// Why.
        reason: String,
    },
}

fn out_of_memory(a: &FailedAttempt) -> bool {
    matches!(a.error_code, PAYLOAD_OUT_OF_MEMORY | PAYLOAD_EXCEEDED_MAX_MEMORY) || {
        let d = a.error_diag.to_ascii_lowercase();
        d.contains("out of memory") || d.contains("oom")
    }
}

fn out_of_time(a: &FailedAttempt) -> bool {
    matches!(a.error_code, REACHED_MAX_TIME | SIGXCPU) || a.error_diag.to_ascii_lowercase().contains("walltime")
}

/// Decides the next attempt of a failed job.
pub fn decide(attempt: &FailedAttempt, max_attempts: u32, resources: Resources) -> RetryAction {
    if attempt.attempt_nr >= max_attempts {
        return RetryAction::GiveUp {
            reason: format!(
                "{} of {max_attempts} attempts failed; last: {} {}",
                attempt.attempt_nr, attempt.error_code, attempt.error_diag
            ),
        };
    }
    if out_of_memory(attempt) {
        let rss_mb = attempt.max_rss_kb.div_ceil(1024);
        let memory = (resources.memory_mb.max(1) * 2).max(rss_mb + rss_mb / 2).min(MAX_RETRY_MEMORY_MB);
        return RetryAction::Retry {
            change: format!("out of memory: memory {} → {memory} MB", resources.memory_mb),
            resources: Resources { memory_mb: memory, ..resources },
        };
    }
    if out_of_time(attempt) {
        let walltime = if resources.walltime_seconds == 0 { 0 } else { resources.walltime_seconds * 2 };
        return RetryAction::Retry {
            change: format!("walltime exceeded: walltime {}s → {walltime}s", resources.walltime_seconds),
            resources: Resources { walltime_seconds: walltime, ..resources },
        };
    }
    RetryAction::Retry { resources, change: String::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: Resources = Resources { cores: 1, memory_mb: 2000, disk_mb: 0, walltime_seconds: 3600 };

    #[test]
    fn plain_failure_retries_unchanged() {
        let a = FailedAttempt { attempt_nr: 1, error_code: 1305, error_diag: "exit 1".into(), max_rss_kb: 0 };
        assert_eq!(decide(&a, 3, REQUEST), RetryAction::Retry { resources: REQUEST, change: String::new() });
    }

    #[test]
    fn out_of_memory_asks_for_more_memory() {
        let a = FailedAttempt {
            attempt_nr: 1,
            error_code: PAYLOAD_OUT_OF_MEMORY,
            max_rss_kb: 3000 * 1024,
            ..Default::default()
        };
        let RetryAction::Retry { resources, change } = decide(&a, 3, REQUEST) else { panic!() };
        assert_eq!(resources.memory_mb, 4500);
        assert!(change.starts_with("out of memory"), "{change}");
        let by_diag = FailedAttempt { attempt_nr: 1, error_diag: "Killed: Out Of Memory".into(), ..Default::default() };
        let RetryAction::Retry { resources, .. } = decide(&by_diag, 3, REQUEST) else { panic!() };
        assert_eq!(resources.memory_mb, 4000);
    }

    #[test]
    fn walltime_exceeded_asks_for_a_longer_walltime() {
        let a = FailedAttempt { attempt_nr: 2, error_code: REACHED_MAX_TIME, ..Default::default() };
        let RetryAction::Retry { resources, change } = decide(&a, 3, REQUEST) else { panic!() };
        assert_eq!(resources.walltime_seconds, 7200);
        assert_eq!(resources.memory_mb, REQUEST.memory_mb);
        assert_eq!(change, "walltime exceeded: walltime 3600s → 7200s");
    }

    #[test]
    fn attempts_run_out() {
        let a = FailedAttempt {
            attempt_nr: 3,
            error_code: PAYLOAD_OUT_OF_MEMORY,
            error_diag: "oom".into(),
            ..Default::default()
        };
        let RetryAction::GiveUp { reason } = decide(&a, 3, REQUEST) else { panic!() };
        assert_eq!(reason, "3 of 3 attempts failed; last: 1212 oom");
    }
}
