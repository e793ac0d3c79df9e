//! Scouting: the first jobs of a task run as scouts; what they measure (time per event, memory,
//! walltime, output size) re-sizes the rest. A task whose scouts all fail goes to the broken path
//! with the scouts' errors instead of generating thousands of failing jobs. Pure.
//!
//! Measurements follow the reference (§5.4): time per event is the 95th percentile over the
//! finished scouts that processed events; memory the 75th percentile of peak RSS plus a 10 %
//! margin; output per event the 75th percentile; walltime the longest scout. The verdict comes
//! when half the scouts finished (the reference's early avalanche), or when all ended.

use panda_types::Resources;

/// Margin added to the scouts' memory (the reference's `SCOUT_RAMCOUNT_MARGIN`).
pub const MEMORY_MARGIN_PERCENT: u64 = 10;
/// Walltime requested per job relative to the measured expectation.
pub const WALLTIME_FACTOR: f64 = 1.5;
/// Scratch disk requested per job relative to the output the scouts measured for its events.
pub const DISK_FACTOR: f64 = 2.0;

/// What one scout job reported.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScoutReport {
    /// The job.
    pub job_id: u64,
    /// Still queued or running.
    pub ended: bool,
    /// Ended finished.
    pub finished: bool,
    /// Error code and diagnostic, when it failed.
    pub error: String,
    /// Wall seconds.
    pub wall_seconds: f64,
    /// Peak RSS, kB.
    pub max_rss_kb: u64,
    /// Events it processed (0: unknown).
    pub n_events: u64,
    /// Bytes it wrote.
    pub output_bytes: u64,
}

/// What the scouts measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tuning {
    /// Time per event, microseconds (when scouts processed events).
    pub micros_per_event: Option<u64>,
    /// Memory request, MB.
    pub memory_mb: u64,
    /// Longest scout, seconds.
    pub walltime_seconds: u64,
    /// Output bytes per event.
    pub output_bytes_per_event: Option<u64>,
}

impl Tuning {
    /// The resource request for the rest of the task's jobs: measured memory, a walltime for
    /// `events_per_job` events (or the longest scout) with [`WALLTIME_FACTOR`] of margin, and at
    /// least [`DISK_FACTOR`] times the output those events write as disk (never less than the
    /// task asked for).
    pub fn resources(&self, preset: Resources, events_per_job: Option<u64>) -> Resources {
        let expected = match (self.micros_per_event, events_per_job) {
            (Some(micros), Some(events)) => micros.saturating_mul(events) / 1_000_000,
            _ => self.walltime_seconds,
        };
        let output_mb = match (self.output_bytes_per_event, events_per_job) {
            (Some(bytes), Some(events)) => {
                ((bytes.saturating_mul(events) as f64) * DISK_FACTOR / (1024.0 * 1024.0)).ceil() as u64
            }
            _ => 0,
        };
        Resources {
            memory_mb: if self.memory_mb > 0 { self.memory_mb } else { preset.memory_mb },
            walltime_seconds: ((expected.max(1) as f64) * WALLTIME_FACTOR).ceil() as u64,
            disk_mb: preset.disk_mb.max(output_mb),
            ..preset
        }
    }
}

/// The scouts' outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough scouts ended yet.
    Wait,
    /// Every scout ended and none finished: the task goes to the broken path with these errors.
    Failed {
        /// One line per failed scout.
        errors: Vec<String>,
    },
    /// Enough scouts finished: generate the rest with this tuning.
    Succeeded(Tuning),
}

fn percentile(mut values: Vec<f64>, p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * p).ceil() as usize;
    values.get(index).copied()
}

/// Judges the scouts of a task.
pub fn evaluate(reports: &[ScoutReport]) -> Verdict {
    let finished: Vec<&ScoutReport> = reports.iter().filter(|r| r.finished).collect();
    let all_ended = reports.iter().all(|r| r.ended);
    if reports.is_empty() || (finished.len() * 2 < reports.len() && !all_ended) {
        return Verdict::Wait;
    }
    if finished.is_empty() {
        return Verdict::Failed { errors: reports.iter().map(|r| format!("job {}: {}", r.job_id, r.error)).collect() };
    }
    let per_event: Vec<f64> =
        finished.iter().filter(|r| r.n_events > 0).map(|r| r.wall_seconds / r.n_events as f64).collect();
    let memory_kb = percentile(finished.iter().map(|r| r.max_rss_kb as f64).collect(), 0.75).unwrap_or(0.0);
    let output: Vec<f64> =
        finished.iter().filter(|r| r.n_events > 0).map(|r| r.output_bytes as f64 / r.n_events as f64).collect();
    let memory_mb = (memory_kb / 1024.0).ceil() as u64;
    Verdict::Succeeded(Tuning {
        micros_per_event: percentile(per_event, 0.95).map(|s| ((s * 1e6).round() as u64).max(1)),
        memory_mb: if memory_mb == 0 { 0 } else { memory_mb + memory_mb * MEMORY_MARGIN_PERCENT / 100 },
        walltime_seconds: finished.iter().map(|r| r.wall_seconds.ceil() as u64).max().unwrap_or(0),
        output_bytes_per_event: percentile(output, 0.75).map(|b| b.round() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(job_id: u64, wall: f64, rss_mb: u64, events: u64) -> ScoutReport {
        ScoutReport {
            job_id,
            ended: true,
            finished: true,
            wall_seconds: wall,
            max_rss_kb: rss_mb * 1024,
            n_events: events,
            output_bytes: events * 1000,
            ..Default::default()
        }
    }

    fn failed(job_id: u64, error: &str) -> ScoutReport {
        ScoutReport { job_id, ended: true, error: error.into(), ..Default::default() }
    }

    fn running(job_id: u64) -> ScoutReport {
        ScoutReport { job_id, ..Default::default() }
    }

    #[test]
    fn measurements_reconfigure_the_rest() {
        let reports =
            [ok(1, 100.0, 1000, 100), ok(2, 200.0, 2000, 100), ok(3, 150.0, 1500, 100), ok(4, 120.0, 1200, 100)];
        let Verdict::Succeeded(t) = evaluate(&reports) else { panic!() };
        // 95th percentile of 1.0, 1.2, 1.5, 2.0 s/event.
        assert_eq!(t.micros_per_event, Some(2_000_000));
        // 75th percentile of RSS (1500 MB... index ceil(3×0.75)=3 → 2000) + 10 %.
        assert_eq!(t.memory_mb, 2200);
        assert_eq!(t.walltime_seconds, 200);
        assert_eq!(t.output_bytes_per_event, Some(1000));
        let preset = Resources { cores: 2, memory_mb: 8000, disk_mb: 5, walltime_seconds: 60 };
        let r = t.resources(preset, Some(500));
        // 500 events × 2 s × 1.5; the preset disk (5 MB) is more than 2 × 500 × 1000 bytes.
        assert_eq!(r, Resources { cores: 2, memory_mb: 2200, disk_mb: 5, walltime_seconds: 1500 });
        // 10,000 events write 10 MB: 20 MB of disk.
        assert_eq!(t.resources(preset, Some(10_000)).disk_mb, 20);
        // Without events, the longest scout × 1.5.
        assert_eq!(t.resources(preset, None).walltime_seconds, 300);
    }

    #[test]
    fn all_scouts_failing_fails_with_their_errors() {
        let v = evaluate(&[failed(1, "1305 payload exit 1"), failed(2, "1099 stage-in failed")]);
        assert_eq!(
            v,
            Verdict::Failed { errors: vec!["job 1: 1305 payload exit 1".into(), "job 2: 1099 stage-in failed".into()] }
        );
    }

    #[test]
    fn waits_until_half_finished_or_all_ended() {
        assert_eq!(evaluate(&[ok(1, 1.0, 1, 1), running(2), running(3), running(4), failed(5, "x")]), Verdict::Wait);
        assert!(matches!(
            evaluate(&[ok(1, 1.0, 1, 1), ok(2, 1.0, 1, 1), running(3), running(4)]),
            Verdict::Succeeded(_)
        ));
        assert!(matches!(evaluate(&[ok(1, 1.0, 1, 1), failed(2, "x"), failed(3, "y")]), Verdict::Succeeded(_)));
        assert_eq!(evaluate(&[failed(1, "x"), running(2)]), Verdict::Wait);
        assert_eq!(evaluate(&[]), Verdict::Wait);
    }
}
