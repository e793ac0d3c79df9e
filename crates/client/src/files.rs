//! The YAML files users write (also read by the Python SDK later): a task, or a workflow of tasks. Unknown keys are refused with the
//! file, the key and the line.

use std::collections::BTreeMap;
use std::path::Path;

use panda_proto::common::v1 as common;
use panda_proto::idds::v1 as idds;
use panda_proto::server::v1 as server;
use serde::Deserialize;

/// Resources per job.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesFile {
    cores: u32,
    memory_mb: u64,
    disk_mb: u64,
    walltime_seconds: u64,
}

/// A task in a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// Defaults to the work's name in a workflow.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    user: String,
    command: String,
    #[serde(default)]
    input_datasets: Vec<String>,
    #[serde(default)]
    files_per_job: Option<u32>,
    #[serde(default)]
    n_jobs: Option<u32>,
    #[serde(default)]
    output_dataset: String,
    #[serde(default)]
    resources: ResourcesFile,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    queues: Vec<String>,
    /// Code archive (sha256 from `panda cache upload`) unpacked into each job's directory.
    #[serde(default)]
    code_sha256: String,
    /// Task-parameter schema version (docs/task-parameters.md); unset: the current one.
    #[serde(default)]
    schema_version: u32,
    /// Splitting, scouting and retry rules.
    #[serde(default)]
    split: Option<SplitFile>,
    /// Brokerage requirements.
    #[serde(default)]
    requirements: Option<RequirementsFile>,
    /// Command of the merge jobs (with `split.merge_files_per_job`).
    #[serde(default)]
    merge_command: String,
    /// Jobs wait held until released (file-level dependencies).
    #[serde(default)]
    hold_jobs: bool,
    /// Global share (a leaf of the server's share tree; empty: the server's default).
    #[serde(default)]
    share: String,
    /// Container image every job runs in (`docker://...`, a `.sif` path, `python:3.11-slim`, ...).
    #[serde(default)]
    container_image: String,
}

/// `split:` of a task file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    #[serde(default)]
    events_per_job: Option<u64>,
    #[serde(default)]
    gb_per_job: Option<f64>,
    #[serde(default)]
    walltime_target_seconds: Option<u64>,
    #[serde(default)]
    seconds_per_event: Option<f64>,
    #[serde(default)]
    merge_files_per_job: Option<u32>,
    #[serde(default)]
    scouts: Option<u32>,
    #[serde(default)]
    max_attempts: Option<u32>,
}

/// `requirements:` of a task file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementsFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    container: String,
    #[serde(default)]
    software_tags: Vec<String>,
    #[serde(default)]
    excluded_queues: Vec<String>,
}

impl TaskFile {
    /// The wire spec.
    pub fn into_spec(self, default_name: &str) -> server::TaskSpec {
        server::TaskSpec {
            name: self.name.unwrap_or_else(|| default_name.to_owned()),
            user: self.user,
            command: self.command,
            input_datasets: self.input_datasets,
            files_per_job: self.files_per_job,
            n_jobs: self.n_jobs,
            output_dataset: self.output_dataset,
            resources: Some(common::Resources {
                cores: self.resources.cores,
                memory_mb: self.resources.memory_mb,
                disk_mb: self.resources.disk_mb,
                walltime_seconds: self.resources.walltime_seconds,
            }),
            priority: self.priority,
            environment: self.environment.into_iter().collect(),
            queues: self.queues,
            code_sha256: self.code_sha256,
            merge_command: self.merge_command,
            share: self.share,
            schema_version: self.schema_version,
            split: self.split.map(|s| server::SplitRules {
                events_per_job: s.events_per_job,
                gb_per_job: s.gb_per_job,
                walltime_target_seconds: s.walltime_target_seconds,
                seconds_per_event: s.seconds_per_event,
                merge_files_per_job: s.merge_files_per_job,
                scouts: s.scouts,
                max_attempts: s.max_attempts,
            }),
            requirements: self.requirements.map(|r| server::Requirements {
                architecture: r.architecture,
                container: r.container,
                software_tags: r.software_tags,
                excluded_queues: r.excluded_queues,
            }),
            hold_jobs: self.hold_jobs,
            container_image: self.container_image,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkFile {
    name: String,
    #[serde(default)]
    parents: Vec<String>,
    task: TaskFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    name: String,
    #[serde(default)]
    user: String,
    works: Vec<WorkFile>,
}

/// A task or workflow file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or does not fit the format.
    #[error("{path} is not a valid {kind} file: {message}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// `task` or `workflow`.
        kind: &'static str,
        /// Parser message with the key path and line.
        message: String,
    },
}

fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_owned(), source })
}

/// Reads a task file.
///
/// # Errors
/// The file is missing or does not fit the format (the message names the key and line).
pub fn load_task(path: &Path) -> Result<server::TaskSpec, FileError> {
    let file: TaskFile = serde_yaml_ng::from_str(&read(path)?).map_err(|e| FileError::Parse {
        path: path.to_owned(),
        kind: "task",
        message: e.to_string(),
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("task").to_owned();
    Ok(file.into_spec(&stem))
}

/// Reads a workflow file.
///
/// # Errors
/// The file is missing or does not fit the format.
pub fn load_workflow(path: &Path) -> Result<idds::WorkflowSpec, FileError> {
    parse_workflow(&read(path)?).map_err(|e| FileError::Parse {
        path: path.to_owned(),
        kind: "workflow",
        message: e.to_string(),
    })
}

/// Parses workflow YAML.
///
/// # Errors
/// YAML or format errors.
pub fn parse_workflow(text: &str) -> Result<idds::WorkflowSpec, serde_yaml_ng::Error> {
    let file: WorkflowFile = serde_yaml_ng::from_str(text)?;
    Ok(idds::WorkflowSpec {
        name: file.name,
        user: file.user,
        works: file
            .works
            .into_iter()
            .map(|w| idds::WorkSpec { task: Some(w.task.into_spec(&w.name)), name: w.name, parents: w.parents })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_parses() {
        // The other examples use idds's document format (conditions, loops, Snakemake), which
        // idds compiles and tests itself (panda-idds graph tests).
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workflows/fan-out-merge.yaml");
        let spec = load_workflow(&path).unwrap();
        assert_eq!(spec.works.len(), 4);
    }

    #[test]
    fn unknown_key_is_named() {
        let error = parse_workflow("name: w\nworks:\n  - name: a\n    task: { command: x, n_job: 1 }\n").unwrap_err();
        assert!(error.to_string().contains("n_job"), "{error}");
    }

    #[test]
    fn a_task_file_names_its_container_image() {
        let file: TaskFile = serde_yaml_ng::from_str(
            "command: python3 run.py\nn_jobs: 1\ncontainer_image: docker://python:3.11-slim\nrequirements: { container: apptainer }\n",
        )
        .unwrap();
        let spec = file.into_spec("t");
        assert_eq!(spec.container_image, "docker://python:3.11-slim");
        assert_eq!(spec.requirements.unwrap().container, "apptainer");
    }

    #[test]
    fn task_name_defaults_to_work_name() {
        let spec = parse_workflow("name: w\nworks:\n  - name: a\n    task: { command: x, n_jobs: 1 }\n").unwrap();
        assert_eq!(spec.works[0].task.as_ref().unwrap().name, "a");
    }
}
