//! A task's splitting rules (how its input becomes jobs, scouting, retries) and its extra
//! brokerage requirements: the typed, validated form of the reference's `splitRule` codes.

use serde::{Deserialize, Serialize};

use crate::spec::FieldError;

/// Attempts per input file when the task does not say: three, the reference's ContentsFeeder
/// default (a transient site problem should not fail a user's file); `max_attempts: 1` turns
/// automatic retries off.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most scouts a task may ask for (the reference generates up to 10).
pub const MAX_SCOUTS: u32 = 10;

/// Splitting rules as received (every field optional). Equality compares the numbers bit for bit,
/// so it is a total equivalence (`Eq`) even with NaN in a draft.
#[derive(Debug, Clone, Default)]
pub struct SplitRulesDraft {
    /// Events per job: a file is cut into event ranges, small files are merged.
    pub events_per_job: Option<u64>,
    /// Input gigabytes per job.
    pub gb_per_job: Option<f64>,
    /// Target walltime per job; needs `seconds_per_event` (or scouts that measure it).
    pub walltime_target_seconds: Option<u64>,
    /// Time per event (preset; scouts measure it).
    pub seconds_per_event: Option<f64>,
    /// Merge jobs, each over this many output files.
    pub merge_files_per_job: Option<u32>,
    /// Scout jobs run first (0: none).
    pub scouts: Option<u32>,
    /// Attempts per input file.
    pub max_attempts: Option<u32>,
}

impl PartialEq for SplitRulesDraft {
    fn eq(&self, other: &Self) -> bool {
        let bits = |v: Option<f64>| v.map(f64::to_bits);
        self.events_per_job == other.events_per_job
            && bits(self.gb_per_job) == bits(other.gb_per_job)
            && self.walltime_target_seconds == other.walltime_target_seconds
            && bits(self.seconds_per_event) == bits(other.seconds_per_event)
            && self.merge_files_per_job == other.merge_files_per_job
            && self.scouts == other.scouts
            && self.max_attempts == other.max_attempts
    }
}

impl Eq for SplitRulesDraft {}

/// Validated splitting rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SplitRules {
    /// Events per job.
    pub events_per_job: Option<u64>,
    /// Input bytes per job.
    pub bytes_per_job: Option<u64>,
    /// Target walltime per job, seconds.
    pub walltime_target_seconds: Option<u64>,
    /// Preset time per event, microseconds.
    pub micros_per_event: Option<u64>,
    /// Output files per merge job.
    pub merge_files_per_job: Option<u32>,
    /// Scout jobs.
    pub scouts: u32,
    /// Attempts per input file (0: not set, [`DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: u32,
}

impl SplitRules {
    /// Attempts per file.
    pub fn max_attempts(&self) -> u32 {
        if self.max_attempts == 0 { DEFAULT_MAX_ATTEMPTS } else { self.max_attempts }
    }
}

impl SplitRulesDraft {
    /// Validates the rules; `files_per_job` and `has_input` come from the rest of the spec.
    /// Problems are pushed to `errors`, fields named `task.split.<field>`.
    pub fn validate(&self, files_per_job: Option<u32>, has_input: bool, errors: &mut Vec<FieldError>) -> SplitRules {
        let mut bad =
            |field: &str, message: String| errors.push(FieldError::new(format!("task.split.{field}"), message));
        let mut sizes = Vec::new();
        if files_per_job.is_some() {
            sizes.push("task.files_per_job");
        }
        if let Some(n) = self.events_per_job {
            sizes.push("task.split.events_per_job");
            if n == 0 {
                bad("events_per_job", "must be at least 1 (got 0)".into());
            }
            if !has_input {
                bad("events_per_job", "needs task.input_datasets (files with events)".into());
            }
        }
        let mut bytes_per_job = None;
        if let Some(gb) = self.gb_per_job {
            sizes.push("task.split.gb_per_job");
            if !(gb.is_finite() && gb > 0.0) {
                bad("gb_per_job", format!("must be a positive number (got {gb})"));
            } else if gb > 1_000_000.0 {
                bad("gb_per_job", format!("must be at most 1000000 (got {gb})"));
            } else {
                bytes_per_job = Some((gb * 1e9) as u64);
            }
            if !has_input {
                bad("gb_per_job", "needs task.input_datasets".into());
            }
        }
        if sizes.len() > 1 {
            bad(
                sizes[1].trim_start_matches("task.split."),
                format!("contradicts {}: set one of files_per_job, split.events_per_job, split.gb_per_job", sizes[0]),
            );
        }
        let mut micros_per_event = None;
        if let Some(s) = self.seconds_per_event {
            if !(s.is_finite() && s > 0.0) {
                bad("seconds_per_event", format!("must be a positive number (got {s})"));
            } else {
                micros_per_event = Some(((s * 1e6).round() as u64).max(1));
            }
        }
        if let Some(w) = self.walltime_target_seconds {
            if w == 0 {
                bad("walltime_target_seconds", "must be at least 1 (got 0)".into());
            }
            if self.seconds_per_event.is_none() && self.scouts.unwrap_or(0) == 0 {
                bad(
                    "walltime_target_seconds",
                    "needs task.split.seconds_per_event or task.split.scouts to know the time per event".into(),
                );
            }
            if files_per_job.is_some() || self.gb_per_job.is_some() {
                bad("walltime_target_seconds", "contradicts a fixed files_per_job or gb_per_job".into());
            }
        }
        if self.merge_files_per_job == Some(0) {
            bad("merge_files_per_job", "must be at least 1 (got 0)".into());
        }
        if let Some(n) = self.scouts
            && n > MAX_SCOUTS
        {
            bad("scouts", format!("must be at most {MAX_SCOUTS} (got {n})"));
        }
        match self.max_attempts {
            Some(0) => bad("max_attempts", "must be at least 1 (got 0)".into()),
            Some(n) if n > 100 => bad("max_attempts", format!("must be at most 100 (got {n})")),
            _ => {}
        }
        SplitRules {
            events_per_job: self.events_per_job,
            bytes_per_job,
            walltime_target_seconds: self.walltime_target_seconds,
            micros_per_event,
            merge_files_per_job: self.merge_files_per_job,
            scouts: self.scouts.unwrap_or(0),
            max_attempts: self.max_attempts.unwrap_or(0),
        }
    }
}

/// What a task needs from a queue beyond resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Requirements {
    /// CPU architecture (e.g. `x86_64`).
    pub architecture: Option<String>,
    /// Container runtime (e.g. `apptainer`).
    pub container: Option<String>,
    /// Software tags every queue must have.
    pub software_tags: Vec<String>,
    /// Queues never to use.
    pub excluded_queues: Vec<String>,
}

impl Requirements {
    /// Checks lengths and names; fields named `task.requirements.<field>`.
    pub fn validate(&self, errors: &mut Vec<FieldError>) {
        let mut bad = |field: String, message: String| {
            errors.push(FieldError::new(format!("task.requirements.{field}"), message))
        };
        for (field, value) in [("architecture", &self.architecture), ("container", &self.container)] {
            if let Some(v) = value
                && let Err(e) = crate::ids::check_name(v, 100)
            {
                bad(field.to_owned(), e);
            }
        }
        if self.software_tags.len() > 100 {
            bad("software_tags".into(), format!("must list at most 100 tags (got {})", self.software_tags.len()));
        }
        for (i, tag) in self.software_tags.iter().enumerate() {
            if let Err(e) = crate::ids::check_name(tag, 200) {
                bad(format!("software_tags[{i}]"), e);
            }
        }
        for (i, q) in self.excluded_queues.iter().enumerate() {
            if let Err(e) = crate::QueueName::new(q.clone()) {
                bad(format!("excluded_queues[{i}]"), e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(draft: SplitRulesDraft, files_per_job: Option<u32>, has_input: bool) -> Vec<String> {
        let mut errors = Vec::new();
        draft.validate(files_per_job, has_input, &mut errors);
        errors.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn contradicting_sizes_are_named() {
        let e = check(SplitRulesDraft { events_per_job: Some(10), ..Default::default() }, Some(2), true);
        assert_eq!(
            e,
            vec![
                "task.split.events_per_job contradicts task.files_per_job: set one of files_per_job, split.events_per_job, split.gb_per_job"
            ]
        );
        let e = check(
            SplitRulesDraft { events_per_job: Some(10), gb_per_job: Some(1.0), ..Default::default() },
            None,
            true,
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("task.split.gb_per_job contradicts task.split.events_per_job"), "{e:?}");
    }

    #[test]
    fn zero_and_negative_sizes_are_named() {
        let e = check(SplitRulesDraft { events_per_job: Some(0), ..Default::default() }, None, true);
        assert_eq!(e, vec!["task.split.events_per_job must be at least 1 (got 0)"]);
        let e = check(SplitRulesDraft { gb_per_job: Some(-1.5), ..Default::default() }, None, true);
        assert_eq!(e, vec!["task.split.gb_per_job must be a positive number (got -1.5)"]);
        let e = check(SplitRulesDraft { seconds_per_event: Some(0.0), ..Default::default() }, None, true);
        assert_eq!(e, vec!["task.split.seconds_per_event must be a positive number (got 0)"]);
        let e = check(
            SplitRulesDraft { merge_files_per_job: Some(0), max_attempts: Some(0), ..Default::default() },
            None,
            true,
        );
        assert_eq!(e.len(), 2, "{e:?}");
        let e = check(SplitRulesDraft { scouts: Some(11), ..Default::default() }, None, true);
        assert_eq!(e, vec!["task.split.scouts must be at most 10 (got 11)"]);
    }

    #[test]
    fn walltime_target_needs_a_time_per_event() {
        let e = check(SplitRulesDraft { walltime_target_seconds: Some(3600), ..Default::default() }, None, true);
        assert!(e[0].starts_with("task.split.walltime_target_seconds needs"), "{e:?}");
        let ok =
            SplitRulesDraft { walltime_target_seconds: Some(3600), seconds_per_event: Some(2.5), ..Default::default() };
        assert!(check(ok.clone(), None, true).is_empty());
        let mut errors = Vec::new();
        let rules = ok.validate(None, true, &mut errors);
        assert_eq!(rules.micros_per_event, Some(2_500_000));
    }

    #[test]
    fn event_and_size_rules_need_input() {
        let e = check(SplitRulesDraft { events_per_job: Some(5), ..Default::default() }, None, false);
        assert_eq!(e, vec!["task.split.events_per_job needs task.input_datasets (files with events)"]);
    }

    #[test]
    fn requirements_name_bad_entries() {
        let mut errors = Vec::new();
        Requirements {
            software_tags: vec!["ok".into(), "bad tag".into()],
            excluded_queues: vec!["".into()],
            ..Default::default()
        }
        .validate(&mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["task.requirements.software_tags[1]", "task.requirements.excluded_queues[0]"]);
    }
}
