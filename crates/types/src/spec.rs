//! The task specification: what a user submits, validated into a typed form.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{QueueName, check_name};
pub use crate::rules::{Requirements, SplitRules, SplitRulesDraft};

/// Largest number of jobs one task may ask for without an input dataset.
pub const MAX_JOBS_PER_TASK: u32 = 100_000;
/// Job environment variable naming the task's code archive (set by the server on each job, so
/// the pilot knows what to unpack and the payload what it runs).
pub const CODE_SHA256_ENV: &str = "PANDA_CODE_SHA256";
/// Placeholders a task command may use.
pub const COMMAND_PLACEHOLDERS: &[&str] = &["inputs", "output", "index", "task_id", "job_id"];

/// Resources per job (or offered by a queue or pilot). Zero means "not specified".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU cores.
    pub cores: u32,
    /// Memory in MB.
    pub memory_mb: u64,
    /// Scratch disk in MB.
    pub disk_mb: u64,
    /// Wall time in seconds.
    pub walltime_seconds: u64,
}

impl Resources {
    /// Whether a job asking for `self` fits into `offer` (zero in the offer means unlimited).
    pub fn fits_into(&self, offer: &Resources) -> bool {
        fn fits(need: u64, have: u64) -> bool {
            have == 0 || need <= have
        }
        fits(u64::from(self.cores.max(1)), u64::from(offer.cores))
            && fits(self.memory_mb, offer.memory_mb)
            && fits(self.disk_mb, offer.disk_mb)
            && fits(self.walltime_seconds, offer.walltime_seconds)
    }
}

/// Where a task's jobs get their input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskInput {
    /// Files of one or more datasets (in order, as one list), `files_per_job` per job.
    Datasets {
        /// Dataset names.
        names: Vec<String>,
        /// Files per job, at least 1.
        files_per_job: u32,
    },
    /// No input; `n_jobs` jobs.
    Generated {
        /// Number of jobs, 1..=MAX_JOBS_PER_TASK.
        n_jobs: u32,
    },
}

/// A validated task specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Task name.
    pub name: String,
    /// Owner.
    pub user: String,
    /// Shell command template.
    pub command: String,
    /// Input.
    pub input: TaskInput,
    /// Dataset receiving one output file per job.
    pub output_dataset: Option<String>,
    /// Per-job request.
    pub resources: Resources,
    /// Higher runs first.
    pub priority: i32,
    /// Extra payload environment.
    pub environment: BTreeMap<String, String>,
    /// Queues brokerage may use (empty: any).
    pub queues: Vec<QueueName>,
    /// sha256 of the code archive unpacked into each job's directory (tasks stored before code
    /// archives existed have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_sha256: Option<String>,
    /// Splitting, scouting and retry rules.
    #[serde(default)]
    pub split: SplitRules,
    /// What a queue must offer beyond resources.
    #[serde(default)]
    pub requirements: Requirements,
    /// Command of the merge jobs (`split.merge_files_per_job`); none: [`DEFAULT_MERGE_COMMAND`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_command: Option<String>,
    /// Jobs are inserted held (`defined`) until a releaser releases them (file-level
    /// dependencies: idds).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_jobs: bool,
    /// Global share (a leaf of the server's share tree) whose slots the task's jobs use. Empty
    /// until the server resolves it at submission (then the configured default leaf); tasks
    /// stored before shares existed have none and count as the default leaf.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub share: String,
}

/// What a merge job runs unless the task says: its inputs concatenated, in job order.
pub const DEFAULT_MERGE_COMMAND: &str = "cat {inputs} > {output}";

impl TaskSpec {
    /// The merge jobs' command.
    pub fn merge_command(&self) -> &str {
        self.merge_command.as_deref().unwrap_or(DEFAULT_MERGE_COMMAND)
    }
}

/// A task specification as received, before validation (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSpecDraft {
    /// See [`TaskSpec::name`].
    pub name: String,
    /// See [`TaskSpec::user`].
    pub user: String,
    /// See [`TaskSpec::command`].
    pub command: String,
    /// Input dataset names, empty for none.
    pub input_datasets: Vec<String>,
    /// Files per job; `None` means the default of 1.
    pub files_per_job: Option<u32>,
    /// Jobs for a task without input.
    pub n_jobs: Option<u32>,
    /// Output dataset, empty for none.
    pub output_dataset: String,
    /// Per-job request.
    pub resources: Resources,
    /// Priority.
    pub priority: i32,
    /// Payload environment.
    pub environment: BTreeMap<String, String>,
    /// Allowed queues.
    pub queues: Vec<String>,
    /// Code archive sha256, empty for none.
    pub code_sha256: String,
    /// Version of the task-parameter schema the client wrote against; 0 means the current one
    /// ([`TASK_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Splitting, scouting and retry rules.
    pub split: SplitRulesDraft,
    /// Brokerage requirements.
    pub requirements: Requirements,
    /// See [`TaskSpec::merge_command`]; empty for the default.
    pub merge_command: String,
    /// See [`TaskSpec::hold_jobs`].
    pub hold_jobs: bool,
    /// See [`TaskSpec::share`]; empty for the server's default share.
    pub share: String,
}

/// The task-parameter schema this code accepts (docs/task-parameters.md). A change that would
/// make an old client's parameters mean something else gets a new version; old versions are
/// refused with a message rather than misread.
pub const TASK_SCHEMA_VERSION: u32 = 2;

/// Older versions still accepted, read with their own meaning: version 1 did not retry failed
/// files unless `split.max_attempts` said so (version 2 retries three times by default).
pub const OLDER_TASK_SCHEMA_VERSIONS: &[u32] = &[1];

/// Most payload environment variables per task.
pub const MAX_ENVIRONMENT_ENTRIES: usize = 256;

/// Longest payload environment value, in bytes.
pub const MAX_ENVIRONMENT_VALUE_BYTES: usize = 32 * 1024;

/// Longest global-share name.
pub const MAX_SHARE_NAME: usize = 100;

/// Most queues a task may be restricted to.
pub const MAX_QUEUES_PER_TASK: usize = 1000;

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `task.files_per_job`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

impl TaskSpecDraft {
    /// Validates every field and reports every problem at once.
    ///
    /// # Errors
    /// One [`FieldError`] per problem, fields named `task.<field>`.
    pub fn validate(mut self) -> Result<TaskSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut bad = |field: &str, message: String| errors.push(FieldError::new(format!("task.{field}"), message));

        let known = self.schema_version == 0
            || self.schema_version == TASK_SCHEMA_VERSION
            || OLDER_TASK_SCHEMA_VERSIONS.contains(&self.schema_version);
        if !known {
            bad(
                "schema_version",
                format!(
                    "version {} is not supported; this server accepts versions 1..={TASK_SCHEMA_VERSION} \
                     (docs/task-parameters.md), or 0 for the current one",
                    self.schema_version
                ),
            );
        }
        // Version 1's default: no automatic retry.
        if self.schema_version == 1 && self.split.max_attempts.is_none() {
            self.split.max_attempts = Some(1);
        }
        if let Err(e) = check_name(&self.name, 200) {
            bad("name", e);
        }
        if self.user.len() > 200 {
            bad("user", format!("must be at most 200 characters (got {})", self.user.len()));
        }
        if self.command.trim().is_empty() {
            bad("command", "must not be empty".to_owned());
        } else if self.command.len() > 64 * 1024 {
            bad("command", format!("must be at most 65536 bytes (got {})", self.command.len()));
        } else if let Err(e) = check_placeholders(&self.command) {
            bad("command", e);
        }
        let input = if self.input_datasets.is_empty() {
            if self.files_per_job.is_some() {
                bad("files_per_job", "needs task.input_datasets".to_owned());
            }
            match self.n_jobs {
                None => {
                    bad("n_jobs", "is required when there are no input_datasets (1..=100000)".to_owned());
                    None
                }
                Some(n) if n == 0 || n > MAX_JOBS_PER_TASK => {
                    bad("n_jobs", format!("must be 1..={MAX_JOBS_PER_TASK} (got {n})"));
                    None
                }
                Some(n_jobs) => Some(TaskInput::Generated { n_jobs }),
            }
        } else {
            for (i, name) in self.input_datasets.iter().enumerate() {
                if let Err(e) = check_name(name, 255) {
                    bad(&format!("input_datasets[{i}]"), e);
                } else if self.input_datasets[..i].contains(name) {
                    bad(&format!("input_datasets[{i}]"), format!("{name:?} is listed twice"));
                }
            }
            if self.input_datasets.len() > 100 {
                bad("input_datasets", format!("must list at most 100 datasets (got {})", self.input_datasets.len()));
            }
            if let Some(n) = self.n_jobs {
                bad("n_jobs", format!("must not be set with input_datasets (got {n}); use files_per_job"));
            }
            match self.files_per_job.unwrap_or(1) {
                0 => {
                    bad("files_per_job", "must be at least 1 (got 0)".to_owned());
                    None
                }
                files_per_job => Some(TaskInput::Datasets { names: self.input_datasets.clone(), files_per_job }),
            }
        };
        let output_dataset = (!self.output_dataset.is_empty()).then(|| self.output_dataset.clone());
        if let Some(output) = &output_dataset {
            if let Err(e) = check_name(output, 255) {
                bad("output_dataset", e);
            } else if self.input_datasets.contains(output) {
                bad("output_dataset", format!("must differ from the input datasets (both {output:?})"));
            }
        }
        // Through `placeholders`, so that an escaped `{{output}}` does not count as a use.
        let uses = |name: &str| placeholders(&self.command).any(|p| p == name);
        if uses("output") && output_dataset.is_none() {
            bad("command", "uses {output} but task.output_dataset is not set".to_owned());
        }
        if uses("inputs") && self.input_datasets.is_empty() {
            bad("command", "uses {inputs} but task.input_datasets is not set".to_owned());
        }
        if self.resources.cores > 1024 {
            bad("resources.cores", format!("must be at most 1024 (got {})", self.resources.cores));
        }
        if self.resources.memory_mb > 16 * 1024 * 1024 {
            bad("resources.memory_mb", format!("must be at most 16777216 (got {})", self.resources.memory_mb));
        }
        if self.environment.len() > MAX_ENVIRONMENT_ENTRIES {
            bad(
                "environment",
                format!("must have at most {MAX_ENVIRONMENT_ENTRIES} variables (got {})", self.environment.len()),
            );
        }
        for (key, value) in &self.environment {
            if value.len() > MAX_ENVIRONMENT_VALUE_BYTES {
                bad(
                    "environment",
                    format!(
                        "value of {key:?} must be at most {MAX_ENVIRONMENT_VALUE_BYTES} bytes (got {}); put large \
                         inputs in a dataset or the code archive",
                        value.len()
                    ),
                );
            }
        }
        if self.queues.len() > MAX_QUEUES_PER_TASK {
            bad("queues", format!("must list at most {MAX_QUEUES_PER_TASK} queues (got {})", self.queues.len()));
        }
        for key in self.environment.keys() {
            let valid = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                bad("environment", format!("key {key:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"));
            } else if key.starts_with("PANDA_") {
                bad("environment", format!("key {key:?} is reserved (PANDA_* is set by the pilot)"));
            }
        }
        let mut queues = Vec::new();
        for (i, queue) in self.queues.iter().enumerate() {
            match QueueName::new(queue.clone()) {
                Ok(q) => queues.push(q),
                Err(e) => bad(&format!("queues[{i}]"), e),
            }
        }
        let code_sha256 = (!self.code_sha256.is_empty()).then(|| self.code_sha256.clone());
        if let Some(sha) = &code_sha256
            && let Err(e) = check_sha256(sha)
        {
            bad("code_sha256", e);
        }
        let split = self.split.validate(self.files_per_job, !self.input_datasets.is_empty(), &mut errors);
        let merge_command = (!self.merge_command.trim().is_empty()).then(|| self.merge_command.clone());
        if let Some(command) = &merge_command {
            let problem = if split.merge_files_per_job.is_none() {
                Some("needs task.split.merge_files_per_job (merge jobs run it)".to_owned())
            } else if command.len() > 64 * 1024 {
                Some(format!("must be at most 65536 bytes (got {})", command.len()))
            } else if let Err(e) = check_placeholders(command) {
                Some(e)
            } else if !command.contains("{output}") {
                Some("must write {output} (the merged file the job declares)".to_owned())
            } else {
                None
            };
            if let Some(message) = problem {
                errors.push(FieldError::new("task.merge_command".to_owned(), message));
            }
        }
        if !self.share.is_empty()
            && let Err(e) = check_name(&self.share, MAX_SHARE_NAME)
        {
            errors.push(FieldError::new("task.share".to_owned(), e));
        }
        self.requirements.validate(&mut errors);
        match (errors.is_empty(), input) {
            (true, Some(input)) => Ok(TaskSpec {
                name: self.name,
                user: if self.user.is_empty() { "anonymous".to_owned() } else { self.user },
                command: self.command,
                input,
                output_dataset,
                resources: Resources { cores: self.resources.cores.max(1), ..self.resources },
                priority: self.priority,
                environment: self.environment,
                queues,
                code_sha256,
                split,
                requirements: self.requirements,
                merge_command,
                hold_jobs: self.hold_jobs,
                share: self.share,
            }),
            _ => Err(errors),
        }
    }
}

/// Checks that `text` is a sha256 digest as the cache names archives: 64 lowercase hex digits.
///
/// # Errors
/// What is wrong, for a field error.
pub fn check_sha256(text: &str) -> Result<(), String> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(format!("must be a sha256 digest: 64 lowercase hex digits (got {text:?})"))
    }
}

/// Checks that every `{name}` in a command is a known placeholder (`{{` and `}}` escape braces).
fn check_placeholders(command: &str) -> Result<(), String> {
    for name in placeholders(command) {
        if !COMMAND_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "has unknown placeholder {{{name}}}; allowed: {}",
                COMMAND_PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(" ")
            ));
        }
    }
    Ok(())
}

fn placeholders(command: &str) -> impl Iterator<Item = &str> {
    let mut rest = command;
    std::iter::from_fn(move || {
        loop {
            let start = rest.find('{')?;
            if rest[start..].starts_with("{{") {
                rest = &rest[start + 2..];
                continue;
            }
            let end = rest[start..].find('}')? + start;
            let name = &rest[start + 1..end];
            rest = &rest[end + 1..];
            return Some(name);
        }
    })
}

/// Fills a command's placeholders (`{{`/`}}` become literal braces).
pub fn render_command(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if template[i..].starts_with("{{") => {
                out.push('{');
                chars.next();
            }
            '}' if template[i..].starts_with("}}") => {
                out.push('}');
                chars.next();
            }
            '{' => match template[i..].find('}') {
                Some(len) => {
                    let name = &template[i + 1..i + len];
                    match values.get(name) {
                        Some(value) => out.push_str(value),
                        None => out.push_str(&template[i..=i + len]),
                    }
                    // `len` counts bytes, not chars: skip up to the closing brace by position.
                    while chars.next_if(|&(j, _)| j <= i + len).is_some() {}
                }
                None => out.push('{'),
            },
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
