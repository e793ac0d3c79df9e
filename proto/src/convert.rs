//! Conversions between wire types and `panda-types` domain types. Handlers convert on their first
//! line and then use domain types only; a failed conversion is a [`ProtocolError`] naming the field.

use panda_types::{JobStatus, Resources, TaskStatus, WorkerStatus};

use crate::common::v1 as common;

/// A request field that is missing or does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A required field is absent or unspecified.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field has a value that does not convert.
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// Dotted field path.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// A domain enum carried on the wire as a protobuf enum number.
pub trait WireEnum: Sized + Copy {
    /// Converts the number found in `field`.
    ///
    /// # Errors
    /// [`ProtocolError::Missing`] for UNSPECIFIED, [`ProtocolError::Invalid`] for unknown numbers
    /// (a newer peer may send values this build does not know).
    fn from_wire(field: &'static str, value: i32) -> Result<Self, ProtocolError>;

    /// The wire number.
    fn to_wire(self) -> i32;
}

macro_rules! enum_map {
    ($domain:ident, $wire:ident, { $($d:ident <=> $w:ident),+ $(,)? }) => {
        impl WireEnum for $domain {
            fn from_wire(field: &'static str, value: i32) -> Result<Self, ProtocolError> {
                match common::$wire::try_from(value) {
                    Ok(common::$wire::Unspecified) => Err(ProtocolError::Missing(field)),
                    $(Ok(common::$wire::$w) => Ok($domain::$d),)+
                    Err(_) => Err(ProtocolError::Invalid { field, reason: format!("unknown value {value}") }),
                }
            }

            fn to_wire(self) -> i32 {
                (match self { $($domain::$d => common::$wire::$w),+ }) as i32
            }
        }
    };
}

enum_map!(TaskStatus, TaskStatus, {
    Registered <=> Registered, Defined <=> Defined, Staging <=> Staging, Staged <=> Staged,
    TopReprocess <=> Topreprocess, Preprocessing <=> Preprocessing, Assigning <=> Assigning, Ready <=> Ready,
    Pending <=> Pending, Scouting <=> Scouting, Scouted <=> Scouted, Running <=> Running, Throttled <=> Throttled,
    Prepared <=> Prepared, Finishing <=> Finishing, Passed <=> Passed, Aborting <=> Aborting, ToAbort <=> Toabort,
    ToBroken <=> Tobroken, ToRetry <=> Toretry, ToIncexec <=> Toincexec, Rerefine <=> Rerefine,
    ToReassign <=> Toreassign, Reassigning <=> Reassigning, Paused <=> Paused, Exhausted <=> Exhausted,
    Done <=> Done, Finished <=> Finished, Failed <=> Failed, Broken <=> Broken, Aborted <=> Aborted,
});

enum_map!(JobStatus, JobStatus, {
    Pending <=> Pending, Defined <=> Defined, Waiting <=> Waiting, Assigned <=> Assigned, Activated <=> Activated,
    Throttled <=> Throttled, Sent <=> Sent, Starting <=> Starting, Running <=> Running, Holding <=> Holding,
    Transferring <=> Transferring, Merging <=> Merging, Finished <=> Finished, Failed <=> Failed,
    Cancelled <=> Cancelled, Closed <=> Closed,
});

enum_map!(WorkerStatus, WorkerStatus, {
    Pending <=> Pending, Submitted <=> Submitted, Ready <=> Ready, Running <=> Running, Idle <=> Idle,
    Finished <=> Finished, Failed <=> Failed, Cancelled <=> Cancelled, Missed <=> Missed,
});

/// Resources from an optional wire message (absent means nothing specified).
pub fn resources(value: Option<common::Resources>) -> Resources {
    {
        let value = value.unwrap_or_default();
        Resources {
            cores: value.cores,
            memory_mb: value.memory_mb,
            disk_mb: value.disk_mb,
            walltime_seconds: value.walltime_seconds,
        }
    }
}

impl From<Resources> for common::Resources {
    fn from(value: Resources) -> Self {
        common::Resources {
            cores: value.cores,
            memory_mb: value.memory_mb,
            disk_mb: value.disk_mb,
            walltime_seconds: value.walltime_seconds,
        }
    }
}

impl From<crate::server::v1::TaskSpec> for panda_types::spec::TaskSpecDraft {
    fn from(spec: crate::server::v1::TaskSpec) -> Self {
        panda_types::spec::TaskSpecDraft {
            name: spec.name,
            user: spec.user,
            command: spec.command,
            input_datasets: spec.input_datasets,
            files_per_job: spec.files_per_job,
            n_jobs: spec.n_jobs,
            output_dataset: spec.output_dataset,
            resources: resources(spec.resources),
            priority: spec.priority,
            environment: spec.environment.into_iter().collect(),
            queues: spec.queues,
            code_sha256: spec.code_sha256,
            schema_version: spec.schema_version,
            split: spec
                .split
                .map(|r| panda_types::spec::SplitRulesDraft {
                    events_per_job: r.events_per_job,
                    gb_per_job: r.gb_per_job,
                    walltime_target_seconds: r.walltime_target_seconds,
                    seconds_per_event: r.seconds_per_event,
                    merge_files_per_job: r.merge_files_per_job,
                    scouts: r.scouts,
                    max_attempts: r.max_attempts,
                })
                .unwrap_or_default(),
            requirements: spec
                .requirements
                .map(|r| panda_types::spec::Requirements {
                    architecture: (!r.architecture.is_empty()).then_some(r.architecture),
                    container: (!r.container.is_empty()).then_some(r.container),
                    software_tags: r.software_tags,
                    excluded_queues: r.excluded_queues,
                })
                .unwrap_or_default(),
            merge_command: spec.merge_command,
            hold_jobs: spec.hold_jobs,
            share: spec.share,
            container_image: spec.container_image,
        }
    }
}

impl From<panda_types::TaskSpec> for crate::server::v1::TaskSpec {
    fn from(spec: panda_types::TaskSpec) -> Self {
        use panda_types::spec::TaskInput;
        let (input_datasets, files_per_job, n_jobs) = match spec.input {
            TaskInput::Datasets { names, files_per_job } => (names, Some(files_per_job), None),
            TaskInput::Generated { n_jobs } => (Vec::new(), None, Some(n_jobs)),
        };
        crate::server::v1::TaskSpec {
            name: spec.name,
            user: spec.user,
            command: spec.command,
            input_datasets,
            files_per_job,
            n_jobs,
            output_dataset: spec.output_dataset.unwrap_or_default(),
            resources: Some(spec.resources.into()),
            priority: spec.priority,
            environment: spec.environment.into_iter().collect(),
            queues: spec.queues.into_iter().map(String::from).collect(),
            code_sha256: spec.code_sha256.unwrap_or_default(),
            merge_command: spec.merge_command.unwrap_or_default(),
            schema_version: panda_types::spec::TASK_SCHEMA_VERSION,
            split: (spec.split != panda_types::spec::SplitRules::default()).then(|| {
                let r = spec.split;
                crate::server::v1::SplitRules {
                    events_per_job: r.events_per_job,
                    gb_per_job: r.bytes_per_job.map(|b| b as f64 / 1e9),
                    walltime_target_seconds: r.walltime_target_seconds,
                    seconds_per_event: r.micros_per_event.map(|m| m as f64 / 1e6),
                    merge_files_per_job: r.merge_files_per_job,
                    scouts: (r.scouts > 0).then_some(r.scouts),
                    max_attempts: (r.max_attempts > 0).then_some(r.max_attempts),
                }
            }),
            requirements: (spec.requirements != panda_types::spec::Requirements::default()).then(|| {
                let r = spec.requirements;
                crate::server::v1::Requirements {
                    architecture: r.architecture.unwrap_or_default(),
                    container: r.container.unwrap_or_default(),
                    software_tags: r.software_tags,
                    excluded_queues: r.excluded_queues,
                }
            }),
            hold_jobs: spec.hold_jobs,
            share: spec.share,
            container_image: spec.container_image.unwrap_or_default(),
        }
    }
}

/// Converts a timestamp for the wire.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips() {
        for &s in TaskStatus::ALL {
            assert_eq!(TaskStatus::from_wire("s", s.to_wire()), Ok(s));
        }
        for &s in JobStatus::ALL {
            assert_eq!(JobStatus::from_wire("s", s.to_wire()), Ok(s));
        }
        for &s in WorkerStatus::ALL {
            assert_eq!(WorkerStatus::from_wire("s", s.to_wire()), Ok(s));
        }
    }

    #[test]
    fn unspecified_and_unknown_are_errors() {
        assert_eq!(JobStatus::from_wire("status", 0), Err(ProtocolError::Missing("status")));
        assert!(matches!(JobStatus::from_wire("status", 999), Err(ProtocolError::Invalid { field: "status", .. })));
    }
}

/// The job file of push mode (`panda_types::job_file`) holds exactly what GetJob answers.
pub mod job_file {
    use panda_types::job_file::{JobFile, PushedFile, PushedJob};

    use crate::server::v1 as wire;

    /// A dispatched job as a job file entry.
    pub fn to_pushed(job: wire::DispatchedJob) -> PushedJob {
        PushedJob {
            job_id: job.job_id,
            task_id: job.task_id,
            attempt_nr: job.attempt_nr,
            lease_token: job.lease_token,
            command: job.command,
            environment: job.environment.into_iter().collect(),
            input_files: job
                .input_files
                .into_iter()
                .map(|f| PushedFile { lfn: f.lfn, url: f.url, size_bytes: f.size_bytes, checksum: f.checksum })
                .collect(),
            output_files: job.output_files,
            resources: super::resources(job.resources),
            heartbeat_interval_seconds: job.heartbeat_interval_seconds,
            code_sha256: job.code_sha256,
            job_index: job.job_index,
            container_image: job.container_image,
        }
    }

    /// A job file entry as the dispatched job it came from.
    pub fn to_dispatched(job: PushedJob) -> wire::DispatchedJob {
        wire::DispatchedJob {
            job_id: job.job_id,
            task_id: job.task_id,
            attempt_nr: job.attempt_nr,
            lease_token: job.lease_token,
            command: job.command,
            environment: job.environment.into_iter().collect(),
            input_files: job
                .input_files
                .into_iter()
                .map(|f| wire::StagedFile { lfn: f.lfn, url: f.url, size_bytes: f.size_bytes, checksum: f.checksum })
                .collect(),
            output_files: job.output_files,
            resources: Some(job.resources.into()),
            heartbeat_interval_seconds: job.heartbeat_interval_seconds,
            code_sha256: job.code_sha256,
            job_index: job.job_index,
            container_image: job.container_image,
        }
    }

    /// The job file of a GetJob answer fetched for `worker_id` of `queue`.
    pub fn from_response(queue: &str, worker_id: &str, response: wire::GetJobResponse) -> JobFile {
        JobFile::new(
            queue.to_owned(),
            worker_id.to_owned(),
            response.storage_url,
            response.jobs.into_iter().map(to_pushed).collect(),
        )
    }
}
