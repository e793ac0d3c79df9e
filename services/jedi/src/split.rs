//! Job generation: a task's specification and input files become job plans. Pure: no I/O.
//!
//! Rules (one size rule per task, checked at submission):
//! - **files per job**: consecutive files, the last job takes the remainder;
//! - **events per job** (`split.events_per_job`, or `split.walltime_target_seconds` divided by
//!   the time per event): a stream of events over the files in order; a large file is cut into
//!   event ranges over several jobs, several small files are merged into one job;
//! - **gigabytes per job**: consecutive files while their size fits (a larger file alone);
//! - without input, `n_jobs` jobs.
//!
//! Each job writes `<output_dataset>._<NNNNNN>` and a log `<output_dataset|task-N>.log._<NNNNNN>.tgz`.
//! [`merge_plans`] makes the optional merge jobs over a task's outputs.

use std::collections::BTreeMap;

use panda_types::spec::{TaskInput, render_command};
use panda_types::{TaskId, TaskSpec};

/// An input file as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InputFile {
    /// Logical file name.
    pub lfn: String,
    /// Size.
    pub size_bytes: u64,
    /// Events (0: unknown).
    pub n_events: u64,
    /// Storage sites with a replica.
    pub replicas: Vec<String>,
}

impl InputFile {
    /// A file with only a name (tests).
    pub fn named(lfn: impl Into<String>) -> Self {
        Self { lfn: lfn.into(), ..Self::default() }
    }
}

/// Part of a file a job processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRange {
    /// The file.
    pub lfn: String,
    /// First event (0-based).
    pub first: u64,
    /// Number of events.
    pub count: u64,
}

/// One job to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    /// 1-based position in the task (also in output file names).
    pub index: u32,
    /// Input LFNs (each once, in order).
    pub inputs: Vec<String>,
    /// With an events rule: which events of which file.
    pub event_ranges: Vec<EventRange>,
    /// Events processed (0: unknown).
    pub n_events: u64,
    /// Bytes of input.
    pub input_bytes: u64,
    /// Output LFNs.
    pub outputs: Vec<String>,
    /// Log file name.
    pub log_file: String,
    /// Command with placeholders filled.
    pub command: String,
}

impl JobPlan {
    /// `lfn:first:count,...`, for the job's environment (`PANDA_EVENT_RANGES`).
    pub fn event_ranges_env(&self) -> String {
        self.event_ranges.iter().map(|r| format!("{}:{}:{}", r.lfn, r.first, r.count)).collect::<Vec<_>>().join(",")
    }
}

/// Splitting could not produce jobs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The input datasets have no usable files.
    #[error("input datasets {datasets} have no finished files")]
    EmptyInput {
        /// The datasets, comma separated.
        datasets: String,
    },
    /// An events rule over a file whose event count is unknown.
    #[error("task.split.events_per_job: input file {lfn:?} has no event count in the catalog")]
    NoEvents {
        /// The file.
        lfn: String,
    },
    /// The rules would make more jobs than a task may have.
    #[error("splitting gives {jobs} jobs, more than the {max} a task may have; raise the job size")]
    TooManyJobs {
        /// Jobs it would make.
        jobs: usize,
        /// Limit.
        max: usize,
    },
}

/// Most jobs one task may be split into.
pub const MAX_JOBS: usize = 1_000_000;

/// The output file of job `index` in `dataset` (the reference's `<dataset>._<NNNNNN>` style).
pub fn output_lfn(dataset: &str, index: u32) -> String {
    format!("{dataset}._{index:06}")
}

/// The log file of job `index`.
pub fn log_lfn(task_id: TaskId, spec: &TaskSpec, index: u32) -> String {
    match &spec.output_dataset {
        Some(dataset) => format!("{dataset}.log._{index:06}.tgz"),
        None => format!("task-{task_id}.log._{index:06}.tgz"),
    }
}

/// Events per job the rules ask for, if any: `events_per_job`, capped by the walltime target
/// divided by the time per event (`micros_per_event` overrides the preset, e.g. from scouts).
pub fn events_per_job(spec: &TaskSpec, micros_per_event: Option<u64>) -> Option<u64> {
    let rules = &spec.split;
    let per_event = micros_per_event.or(rules.micros_per_event);
    let by_walltime = match (rules.walltime_target_seconds, per_event) {
        (Some(target), Some(micros)) => Some((target.saturating_mul(1_000_000) / micros.max(1)).max(1)),
        _ => None,
    };
    match (rules.events_per_job, by_walltime) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Chunk {
    files: Vec<usize>,
    ranges: Vec<EventRange>,
    events: u64,
    bytes: u64,
}

/// Splits a task. `micros_per_event` is a measured time per event (scouts) that overrides the
/// preset.
///
/// # Errors
/// [`SplitError`] for empty input, unknown event counts under an events rule, too many jobs.
pub fn split(
    task_id: TaskId,
    spec: &TaskSpec,
    files: &[InputFile],
    micros_per_event: Option<u64>,
) -> Result<Vec<JobPlan>, SplitError> {
    split_from(task_id, spec, files, micros_per_event, 1)
}

/// [`split`] with the jobs numbered from `first_index`: the jobs for files that arrived in a
/// still-open input dataset after the task's first jobs (their outputs' names follow on).
///
/// # Errors
/// As [`split`].
pub fn split_from(
    task_id: TaskId,
    spec: &TaskSpec,
    files: &[InputFile],
    micros_per_event: Option<u64>,
    first_index: u32,
) -> Result<Vec<JobPlan>, SplitError> {
    let chunks: Vec<Chunk> = match &spec.input {
        TaskInput::Datasets { names, files_per_job } => {
            if files.is_empty() {
                return Err(SplitError::EmptyInput { datasets: names.join(", ") });
            }
            if let Some(per_job) = events_per_job(spec, micros_per_event) {
                by_events(files, per_job, 0)?
            } else if let Some(max_bytes) = spec.split.bytes_per_job {
                by_bytes(files, max_bytes)
            } else {
                let indices: Vec<usize> = (0..files.len()).collect();
                indices
                    .chunks(*files_per_job as usize)
                    .map(|c| Chunk {
                        files: c.to_vec(),
                        ranges: Vec::new(),
                        events: c.iter().map(|&i| files[i].n_events).sum(),
                        bytes: c.iter().map(|&i| files[i].size_bytes).sum(),
                    })
                    .collect()
            }
        }
        TaskInput::Generated { n_jobs } => {
            (0..*n_jobs).map(|_| Chunk { files: Vec::new(), ranges: Vec::new(), events: 0, bytes: 0 }).collect()
        }
    };
    plans(task_id, spec, files, chunks, first_index)
}

/// The jobs after a task's `scouts` first ones, sized with the scouts' measured time per event:
/// with an events rule, the event stream after the scouts' events is split again; otherwise the
/// same jobs as [`split`] gives, minus the scouts. Numbered after the scouts.
///
/// # Errors
/// As [`split`].
pub fn split_rest(
    task_id: TaskId,
    spec: &TaskSpec,
    files: &[InputFile],
    micros_per_event: Option<u64>,
    scouts: u32,
) -> Result<Vec<JobPlan>, SplitError> {
    let preset = split(task_id, spec, files, None)?;
    let n = (scouts as usize).min(preset.len());
    match (&spec.input, events_per_job(spec, micros_per_event)) {
        (TaskInput::Datasets { .. }, Some(per_job)) => {
            let skip: u64 = preset[..n].iter().map(|p| p.n_events).sum();
            plans(task_id, spec, files, by_events(files, per_job, skip)?, n as u32 + 1)
        }
        _ => Ok(preset.into_iter().skip(n).collect()),
    }
}

fn plans(
    task_id: TaskId,
    spec: &TaskSpec,
    files: &[InputFile],
    chunks: Vec<Chunk>,
    first_index: u32,
) -> Result<Vec<JobPlan>, SplitError> {
    if chunks.len() > MAX_JOBS {
        return Err(SplitError::TooManyJobs { jobs: chunks.len(), max: MAX_JOBS });
    }
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let index = first_index + i as u32;
            let inputs: Vec<String> = chunk.files.iter().map(|&f| files[f].lfn.clone()).collect();
            let outputs: Vec<String> = spec.output_dataset.iter().map(|dataset| output_lfn(dataset, index)).collect();
            let command = render(task_id, &spec.command, &inputs, outputs.first(), index);
            JobPlan {
                index,
                log_file: log_lfn(task_id, spec, index),
                event_ranges: chunk.ranges,
                n_events: chunk.events,
                input_bytes: chunk.bytes,
                command,
                inputs,
                outputs,
            }
        })
        .collect())
}

fn render(task_id: TaskId, template: &str, inputs: &[String], output: Option<&String>, index: u32) -> String {
    let mut values = BTreeMap::new();
    values.insert("inputs", inputs.join(" "));
    values.insert("output", output.cloned().unwrap_or_default());
    values.insert("index", index.to_string());
    values.insert("task_id", task_id.to_string());
    // The job id is known only once the server stores the job: the pilot exports it.
    values.insert("job_id", "${PANDA_JOB_ID}".to_owned());
    render_command(template, &values)
}

/// Cuts the event stream of `files` (in order) into jobs of `per_job` events, leaving out the
/// first `skip` events (already processed by scouts).
fn by_events(files: &[InputFile], per_job: u64, mut skip: u64) -> Result<Vec<Chunk>, SplitError> {
    let mut chunks = Vec::new();
    let mut current = Chunk { files: Vec::new(), ranges: Vec::new(), events: 0, bytes: 0 };
    for (i, file) in files.iter().enumerate() {
        if file.n_events == 0 {
            return Err(SplitError::NoEvents { lfn: file.lfn.clone() });
        }
        let mut first = skip.min(file.n_events);
        skip -= first;
        while first < file.n_events {
            let count = (per_job - current.events).min(file.n_events - first);
            if current.files.last() != Some(&i) {
                current.files.push(i);
                // Bytes in proportion to the events taken.
                current.bytes += file.size_bytes;
            }
            current.ranges.push(EventRange { lfn: file.lfn.clone(), first, count });
            current.events += count;
            first += count;
            if current.events == per_job {
                chunks.push(std::mem::replace(
                    &mut current,
                    Chunk { files: Vec::new(), ranges: Vec::new(), events: 0, bytes: 0 },
                ));
            }
        }
    }
    if current.events > 0 {
        chunks.push(current);
    }
    Ok(chunks)
}

fn by_bytes(files: &[InputFile], max_bytes: u64) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        match chunks.last_mut() {
            Some(c) if c.bytes + file.size_bytes <= max_bytes => {
                c.files.push(i);
                c.bytes += file.size_bytes;
                c.events += file.n_events;
            }
            _ => {
                chunks.push(Chunk { files: vec![i], ranges: Vec::new(), events: file.n_events, bytes: file.size_bytes })
            }
        }
    }
    chunks
}

/// Merge jobs over a task's outputs: `files_per_job` outputs each, running `command` (the task's
/// `merge_command`), writing `<dataset>.merged._<NNNNNN>`, numbered after the task's last job
/// (`first_index`).
pub fn merge_plans(
    task_id: TaskId,
    dataset: &str,
    command: &str,
    outputs: &[String],
    files_per_job: u32,
    first_index: u32,
) -> Vec<JobPlan> {
    outputs
        .chunks(files_per_job.max(1) as usize)
        .enumerate()
        .map(|(i, inputs)| {
            let index = first_index + i as u32;
            let output = format!("{dataset}.merged._{index:06}");
            JobPlan {
                index,
                inputs: inputs.to_vec(),
                event_ranges: Vec::new(),
                n_events: 0,
                input_bytes: 0,
                command: render(task_id, command, inputs, Some(&output), index),
                outputs: vec![output],
                log_file: format!("{dataset}.log._{index:06}.tgz"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
