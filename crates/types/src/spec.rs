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
/// Job environment variable naming the task's container image (set by the server on each job,
/// like [`CODE_SHA256_ENV`]; the pilot runs the payload inside the image).
pub const CONTAINER_IMAGE_ENV: &str = "PANDA_CONTAINER_IMAGE";
/// Container runtimes a queue may declare and a pilot may use, in the pilot's order of preference.
pub const CONTAINER_RUNTIMES: &[&str] = &["apptainer", "singularity", "podman", "docker"];
/// Longest container image name.
pub const MAX_CONTAINER_IMAGE_LEN: usize = 512;
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
    /// Container image every job of the task runs in (none: the pilot's own environment).
    /// Checked by [`check_container_image`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
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
    /// See [`TaskSpec::container_image`]; empty for none.
    pub container_image: String,
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
        let container_image = (!self.container_image.is_empty()).then(|| self.container_image.clone());
        if let Some(image) = &container_image
            && let Err(e) = check_container_image(image)
        {
            errors.push(FieldError::new("task.container_image".to_owned(), e));
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
                container_image,
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

/// Schemes a container image may name (Apptainer/Singularity URIs; `docker://` also for Podman
/// and Docker).
pub const CONTAINER_IMAGE_SCHEMES: &[&str] = &["docker", "oras", "library", "shub"];

/// Checks a container image name: at most [`MAX_CONTAINER_IMAGE_LEN`] characters, no whitespace
/// or control characters, and one of `docker://REF`, `oras://REF` (REF a registry reference),
/// `library://PATH`, `shub://PATH`, an absolute path (a `.sif` file or an unpacked directory,
/// without `..`), or a plain registry reference (`python:3.11-slim`,
/// `ghcr.io/org/img@sha256:<64 hex>`).
///
/// # Errors
/// What is wrong and what is accepted, for a field error.
pub fn check_container_image(image: &str) -> Result<(), String> {
    const FORMS: &str = "use docker://REF, oras://REF, library://PATH, shub://PATH, an absolute path to a .sif \
                         file or an unpacked directory, or a registry reference such as python:3.11-slim";
    if image.chars().count() > MAX_CONTAINER_IMAGE_LEN {
        return Err(format!("must be at most {MAX_CONTAINER_IMAGE_LEN} characters (got {})", image.chars().count()));
    }
    if let Some(c) = image.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain whitespace or control characters (found {c:?} in {image:?})"));
    }
    if let Some((scheme, rest)) = image.split_once("://") {
        if !CONTAINER_IMAGE_SCHEMES.contains(&scheme) {
            return Err(format!("{image:?} has unknown scheme {scheme}://; {FORMS}"));
        }
        if rest.is_empty() {
            return Err(format!("{image:?} names no image after {scheme}://"));
        }
        return match scheme {
            "docker" | "oras" => check_registry_reference(rest).map_err(|e| format!("{image:?}: {e}")),
            _ if rest.starts_with('/') || rest.split('/').any(|part| part == "..") => {
                Err(format!("{image:?}: the path after {scheme}:// must be relative and without .."))
            }
            _ => Ok(()),
        };
    }
    if image.starts_with('/') {
        if image.split('/').any(|part| part == "..") {
            return Err(format!("{image:?}: an image path must not contain .. components"));
        }
        if image == "/" {
            return Err("\"/\" is not an image (name a .sif file or an unpacked image directory)".to_owned());
        }
        return Ok(());
    }
    check_registry_reference(image).map_err(|e| format!("{image:?} is not a registry reference ({e}); {FORMS}"))
}

/// Checks a registry reference `[host[:port]/]path[:tag][@algorithm:hex]` as Docker's
/// reference grammar does: path components `[a-z0-9]+` joined by `.`, `_`, `__` or dashes; a tag
/// of at most 128 `[A-Za-z0-9_.-]` not starting with `.` or `-`; a sha256 digest has 64 hex
/// digits.
fn check_registry_reference(reference: &str) -> Result<(), String> {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return Err(format!("digest {digest:?} must be ALGORITHM:HEX, e.g. sha256:<64 hex digits>"));
        };
        let hex_ok = if algorithm == "sha256" {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        } else {
            !algorithm.is_empty()
                && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !hex_ok {
            return Err(format!("digest {digest:?} must be sha256: and 64 lowercase hex digits"));
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let last = components.pop().unwrap_or_default();
    let (last, tag) = match last.split_once(':') {
        Some((last, tag)) => (last, Some(tag)),
        None => (last, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(format!("tag {tag:?} must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -"));
        }
    }
    // The first component is a registry host when it has a dot or a port, or is localhost.
    if let Some(&first) = components.first()
        && (first.contains(['.', ':']) || first == "localhost")
    {
        let (host, port) = match first.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (first, None),
        };
        let host_ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !host_ok || port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("registry {first:?} must be a host name with an optional :port"));
        }
        components.remove(0);
    }
    components.push(last);
    for component in components {
        if !path_component_ok(component) {
            return Err(format!(
                "name component {component:?} must be lowercase letters and digits joined by ., _, __ or -"
            ));
        }
    }
    Ok(())
}

fn path_component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            i += 1;
        } else if b == b'.' || b == b'_' || b == b'-' {
            // One separator: `.`, `_`, `__`, or any run of dashes, between alphanumerics.
            let start = i;
            while i < bytes.len() && bytes[i] == b'-' && b == b'-' {
                i += 1;
            }
            if b != b'-' {
                i += 1;
                if b == b'_' && i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            if i == start || i >= bytes.len() || !(bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit()) {
                return false;
            }
        } else {
            return false;
        }
    }
    true
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
