//! The site admin's queue configuration file (YAML): which queues this harvester serves, each
//! with its limits, the resources a worker offers, and its plugin. Unknown keys and plugins are
//! refused with the file, the key and what is allowed.
//!
//! `defaults` and `templates` hold the same keys as a queue; a queue's settings are merged in this
//! order, each layer over the one before: built-in defaults, `defaults`, the queue's `template`,
//! the queue's own keys ([`merge_queue`]: mappings key by key; a `plugin` of another `type`
//! replaces the lower one whole). The merged queue must then be complete and valid. The JSON
//! Schema is [`QueueFile::json_schema`], shipped as `examples/queues.schema.json`.
//!
//! ```yaml
//! defaults:                       # every queue starts from these
//!   max_new_workers_per_cycle: 10
//! templates:
//!   slurm_debug:                  # a queue says `template: slurm_debug`
//!     resources: { cores: 1, memory_mb: 2000, walltime_seconds: 3600 }
//!     plugin: { type: slurm, partition: debug }
//! queues:
//!   local:
//!     status: online              # online | offline
//!     max_workers: 4              # workers queued + running, at most
//!     max_queued_workers: 4       # workers submitted but not running yet, at most
//!     max_new_workers_per_cycle: 4
//!     resources: { cores: 1, memory_mb: 2000 }   # what one worker offers a job
//!     pilot_max_jobs: 0           # jobs per pilot; 0 = until the queue has none
//!     site: CERN-PROD_DATADISK    # storage site for data locality; default: the queue's name
//!     containers: [apptainer]     # container runtimes its workers offer (tasks with an image need one)
//!     mode: pull                  # pull (pilots ask the server) | push (harvester fetches
//!                                 # jobs_per_worker jobs per new worker, into <worker dir>/jobs.json)
//!     jobs_per_worker: 1          # push mode only: 1 to 100
//!     plugin:
//!       type: local               # local | slurm | htcondor
//!       pilot_command: [/usr/bin/panda-pilot]    # optional; default: the pilot next to the harvester
//!   hpc:
//!     max_workers: 50
//!     resources: { cores: 8, memory_mb: 16000, walltime_seconds: 86400 }  # required for batch plugins
//!     plugin:
//!       type: slurm
//!       template_file: slurm.sh   # or `template: |` inline; relative to this file; default built in
//!       partition: debug          # optional: sbatch --partition, {partition}
//!       account: atlas            # optional: sbatch --account, {account}
//!       log_dir: /var/log/panda   # optional: <log_dir>/<queue>/<worker_id>; default the worker dir
//!       accounting: auto          # auto | slurmdbd | jobcomp | none (sacct after squeue)
//!       sbatch: sbatch            # also squeue, sacct, scancel: a path or [program, args...]
//!       pilot_command: [...]      # as for local
//!       command_timeout: 60s
//!       submit_parallelism: 8     # sbatch calls at once
//!       lost_after: 10m           # unknown to squeue and sacct this long: cancelled
//!   grid:
//!     max_workers: 200
//!     resources: { cores: 1, memory_mb: 2000 }
//!     plugin:
//!       type: htcondor
//!       template_file: grid.sub   # exactly one `queue` statement, last
//!       schedd: schedd01          # optional: -name; pool: -pool
//!       condor_submit: condor_submit   # also condor_q, condor_history, condor_rm
//!       held_timeout: 1h          # held this long: condor_rm, cancelled with the hold reason
//!       log_dir, pilot_command, command_timeout (2m), lost_after (10m) as for slurm
//!   cloud:
//!     max_workers: 100
//!     resources: { cores: 2, memory_mb: 4000, walltime_seconds: 86400 }
//!     plugin:
//!       type: kubernetes
//!       image: ghcr.io/example/panda-pilot:1     # required
//!       namespace: panda          # default: default
//!       kubeconfig: /etc/panda/kubeconfig   # or api_url: http://127.0.0.1:8001 (kubectl proxy); default: inferred
//!       token_secret: panda-token # Secret mounted at /panda/token; token_key: token
//!       server_url: http://panda-server.panda:50051   # as the pods reach it
//!       labels: {}, node_selector: {}, service_account, image_pull_policy, memory_limit: false,
//!       cpu_request_percent: 90, ttl_seconds_after_finished: 172800, kill_grace_seconds: 30,
//!       image_pull_timeout: 30m, lost_after: 2m, request_timeout: 20s, submit_parallelism: 8,
//!       token_file: /etc/panda/token  # the credential manager copies it into token_secret when it
//!                                     # changes, and at least every token_refresh (10m)
//!   hpc_small:
//!     template: slurm_debug
//!     max_workers: 5
//! ```
//!
//! Templates use `{placeholder}`s (`plugins::batch::COMMON_PLACEHOLDERS`, plus `partition` and
//! `account` for Slurm, `pilot_executable` and `pilot_arguments` for HTCondor) and `{{`/`}}` for
//! literal braces; an unknown placeholder is an error naming the file, queue, key and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use panda_types::{QueueName, Resources};
use serde::{Deserialize, Serialize};

use crate::plugins::PluginConfig;

/// Whether a queue takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    /// Brokerage sends jobs; workers are submitted.
    #[default]
    Online,
    /// No new jobs, no new workers.
    Offline,
}

impl QueueStatus {
    /// The name the server uses.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueStatus::Online => "online",
            QueueStatus::Offline => "offline",
        }
    }
}

/// Who takes jobs from the server for a queue's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueMode {
    /// Pilots ask the server for jobs themselves (GetJob).
    #[default]
    Pull,
    /// Harvester fetches `jobs_per_worker` jobs for each worker it submits and hands them over in
    /// a job file in the worker's directory (`panda_types::job_file`; the pilot's `--job-file`).
    Push,
}

impl QueueMode {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueMode::Pull => "pull",
            QueueMode::Push => "push",
        }
    }
}

/// A container runtime a queue's workers offer (tasks with a container image go only to queues
/// declaring one; the pilot runs the payload through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerRuntime {
    /// `apptainer exec`.
    Apptainer,
    /// `singularity exec` (Apptainer's predecessor, same command line).
    Singularity,
    /// `podman run`.
    Podman,
    /// `docker run`.
    Docker,
}

impl ContainerRuntime {
    /// Every runtime, in the order the pilot looks for them on `PATH`.
    pub const ALL: [ContainerRuntime; 4] = [
        ContainerRuntime::Apptainer,
        ContainerRuntime::Singularity,
        ContainerRuntime::Podman,
        ContainerRuntime::Docker,
    ];

    /// The runtimes this machine can run, in the pilot's order: an executable of that name on
    /// `path_var` (a `PATH` value); Docker also needs its daemon's socket (`docker_socket`), since
    /// a client alone cannot run a container.
    pub fn found(path_var: Option<&std::ffi::OsStr>, docker_socket: &Path) -> Vec<ContainerRuntime> {
        Self::ALL
            .into_iter()
            .filter(|runtime| panda_runtime::executable::find_on_path(runtime.as_str(), path_var).is_some())
            .filter(|runtime| *runtime != ContainerRuntime::Docker || docker_socket.exists())
            .collect()
    }

    /// The name the server and pilot use.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRuntime::Apptainer => "apptainer",
            ContainerRuntime::Singularity => "singularity",
            ContainerRuntime::Podman => "podman",
            ContainerRuntime::Docker => "docker",
        }
    }
}

/// Most jobs one GetJob call hands out (the server's limit).
pub const MAX_JOBS_PER_WORKER: u32 = 100;

/// Resources one worker offers (zero: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerResources {
    /// Cores.
    pub cores: u32,
    /// Memory in MB.
    pub memory_mb: u64,
    /// Scratch disk in MB.
    pub disk_mb: u64,
    /// Wall time in seconds.
    pub walltime_seconds: u64,
}

impl From<WorkerResources> for Resources {
    fn from(r: WorkerResources) -> Self {
        Resources { cores: r.cores, memory_mb: r.memory_mb, disk_mb: r.disk_mb, walltime_seconds: r.walltime_seconds }
    }
}

/// One queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Online or offline.
    #[serde(default)]
    pub status: QueueStatus,
    /// Cap on workers queued + running.
    pub max_workers: u32,
    /// Cap on workers submitted but not running (default: max_workers).
    #[serde(default)]
    pub max_queued_workers: Option<u32>,
    /// Cap on workers submitted per cycle (default: no extra cap).
    #[serde(default)]
    pub max_new_workers_per_cycle: Option<u32>,
    /// What a worker offers.
    #[serde(default)]
    pub resources: WorkerResources,
    /// Jobs per pilot; 0 = until the queue has none. In push mode the pushed jobs count, and a
    /// pilot pulls more after them only when this allows (set it to `jobs_per_worker` for
    /// pilots that run only what harvester pushed).
    #[serde(default)]
    pub pilot_max_jobs: u32,
    /// Storage site the queue reads its input from: JEDI's brokerage counts input replicas at
    /// this site as local (data locality). Default: the queue's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Container runtimes its workers offer (`apptainer`, `singularity`, `podman`, `docker`):
    /// brokerage sends tasks with a `container_image` only to queues declaring one (the one the
    /// task's `requirements.container` names, when it does). Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerRuntime>,
    /// `pull` (pilots fetch their jobs) or `push` (harvester fetches them for each new worker
    /// and writes them to the worker's job file).
    #[serde(default)]
    pub mode: QueueMode,
    /// Push mode: jobs fetched for each new worker (1 to 100).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub jobs_per_worker: u32,
    /// How workers are provisioned.
    pub plugin: PluginConfig,
}

fn one() -> u32 {
    1
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Queues by name.
    pub queues: BTreeMap<String, QueueConfig>,
}

/// The file as written: `defaults`, `templates` and `queues`, each a YAML mapping merged before
/// it is read as a [`QueueConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: serde_yaml_ng::Mapping,
    #[serde(default)]
    templates: BTreeMap<String, serde_yaml_ng::Mapping>,
    queues: BTreeMap<String, serde_yaml_ng::Mapping>,
}

impl RawFile {
    /// Queue `name`'s effective settings, or a problem naming the queue and key.
    fn effective(&self, name: &str, entry: &serde_yaml_ng::Mapping) -> Result<QueueConfig, String> {
        let template = match entry.get("template") {
            None => None,
            Some(serde_yaml_ng::Value::String(t)) => match self.templates.get(t) {
                Some(template) => Some(template),
                None => {
                    let known: Vec<&str> = self.templates.keys().map(String::as_str).collect();
                    return Err(format!(
                        "queues.{name}.template: no template {t:?} (templates: {})",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ));
                }
            },
            Some(_) => return Err(format!("queues.{name}.template: must be a template name")),
        };
        let mut own = entry.clone();
        own.remove("template");
        let merged = merge_queue(&self.defaults, template, &own);
        serde_path_to_error::deserialize::<_, QueueConfig>(serde_yaml_ng::Value::Mapping(merged)).map_err(|e| {
            let key = e.path().to_string();
            let origin = if template.is_some() { " (after merging its template and defaults)" } else { "" };
            if key == "." || key.is_empty() {
                format!("queues.{name}: {}{origin}", e.inner())
            } else {
                format!("queues.{name}.{key}: {}{origin}", e.inner())
            }
        })
    }
}

/// A queue's settings from its layers, lowest first: the file's `defaults`, the queue's
/// `template`, the queue's own keys (built-in defaults fill what none sets). Mappings merge key
/// by key, recursively; any other value replaces the lower one. A `plugin` mapping whose `type`
/// differs from the lower layer's replaces it whole (keys of another plugin do not carry over).
pub fn merge_queue(
    defaults: &serde_yaml_ng::Mapping,
    template: Option<&serde_yaml_ng::Mapping>,
    queue: &serde_yaml_ng::Mapping,
) -> serde_yaml_ng::Mapping {
    let mut merged = defaults.clone();
    for layer in template.into_iter().chain([queue]) {
        merge_into(&mut merged, layer, true);
    }
    merged
}

fn merge_into(base: &mut serde_yaml_ng::Mapping, over: &serde_yaml_ng::Mapping, top: bool) {
    use serde_yaml_ng::Value;
    for (key, value) in over {
        let replace_plugin = top
            && key.as_str() == Some("plugin")
            && base.get(key).and_then(|b| b.get("type")) != value.get("type")
            && value.get("type").is_some();
        if !replace_plugin && let (Some(Value::Mapping(lower)), Value::Mapping(upper)) = (base.get_mut(key), value) {
            merge_into(lower, upper, false);
            continue;
        }
        base.insert(key.clone(), value.clone());
    }
}

/// A queue config problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum QueueConfigError {
    /// The file cannot be read.
    #[error("cannot read the queue config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or has unknown keys or plugins.
    #[error("queue config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message with the key path and line.
        message: String,
    },
    /// Values break a rule.
    #[error("queue config {path}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        problems: Vec<String>,
    },
}

impl QueueConfigError {
    /// One line per problem, each naming the file (for `config check`).
    pub fn lines(&self) -> Vec<String> {
        match self {
            QueueConfigError::Invalid { path, problems } => {
                problems.iter().map(|p| format!("{}: {p}", path.display())).collect()
            }
            QueueConfigError::Read { path, source } => vec![format!("{}: cannot read: {source}", path.display())],
            other => vec![other.to_string()],
        }
    }
}

impl QueueFile {
    /// The built-in configuration when no file is given: one `local` queue of `workers` pilots,
    /// offering the container runtimes found on this machine (its pilots run here).
    pub fn embedded_default(workers: u32) -> Self {
        let containers =
            ContainerRuntime::found(std::env::var_os("PATH").as_deref(), Path::new("/var/run/docker.sock"));
        Self::local(workers, containers)
    }

    /// One `local` queue of `workers` pilots offering `containers`.
    pub fn local(workers: u32, containers: Vec<ContainerRuntime>) -> Self {
        let queue = QueueConfig {
            status: QueueStatus::Online,
            max_workers: workers,
            max_queued_workers: None,
            max_new_workers_per_cycle: None,
            resources: WorkerResources { cores: 1, ..Default::default() },
            pilot_max_jobs: 0,
            site: None,
            containers,
            mode: QueueMode::Pull,
            jobs_per_worker: 1,
            plugin: PluginConfig::Local(Default::default()),
        };
        Self { queues: BTreeMap::from([("local".to_owned(), queue)]) }
    }

    /// Reads and validates a file.
    ///
    /// # Errors
    /// [`QueueConfigError`] naming the file, the key and what is allowed.
    pub fn load(path: &Path) -> Result<Self, QueueConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| QueueConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text (`path` is for messages): merges each queue over its
    /// template and the file's `defaults` (see [`merge_queue`]), then checks the result.
    ///
    /// # Errors
    /// [`QueueConfigError::Parse`] or [`QueueConfigError::Invalid`], listing every problem.
    pub fn parse(text: &str, path: &Path) -> Result<Self, QueueConfigError> {
        let raw: RawFile = serde_yaml_ng::from_str(text)
            .map_err(|e| QueueConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let mut problems = Vec::new();
        let mut queues = BTreeMap::new();
        for (name, entry) in &raw.queues {
            match raw.effective(name, entry) {
                Ok(queue) => {
                    queues.insert(name.clone(), queue);
                }
                Err(problem) => problems.push(problem),
            }
        }
        for name in raw.templates.keys() {
            if raw.queues.contains_key(name) {
                problems.push(format!("templates.{name}: a template and a queue cannot share a name"));
            }
        }
        let mut file = QueueFile { queues };
        // Template files are named relative to the queue file.
        let base_dir = path.parent().unwrap_or(Path::new("."));
        for (name, queue) in &mut file.queues {
            problems.extend(queue.plugin.load_files(base_dir).into_iter().map(|p| format!("queues.{name}.plugin.{p}")));
        }
        problems.extend(file.problems());
        if raw.queues.is_empty() && !problems.iter().any(|p| p.starts_with("queues:")) {
            problems.push("queues: at least one queue is needed".to_owned());
        }
        if problems.is_empty() { Ok(file) } else { Err(QueueConfigError::Invalid { path: path.to_owned(), problems }) }
    }

    /// The JSON Schema of the queue file (`panda-harvester config schema`; shipped as
    /// `examples/queues.schema.json`). Queue entries, `defaults` and templates take the same keys,
    /// none of them required: what a queue must have is checked after the merge.
    pub fn json_schema() -> serde_json::Value {
        let mut root = schemars::schema_for!(QueueConfig).to_value();
        let mut defs = root.get_mut("$defs").map(serde_json::Value::take).unwrap_or_else(|| serde_json::json!({}));
        let properties = root.get("properties").cloned().unwrap_or_default();
        let settings = serde_json::json!({
            "description": "Queue settings; every key optional here (merged: built-in defaults, then `defaults`, then the queue's `template`, then the queue).",
            "type": "object",
            "properties": properties,
            "additionalProperties": false
        });
        let mut entry = settings.clone();
        entry["description"] = "A queue: its settings over its template and the file's defaults.".into();
        entry["properties"]["template"] = serde_json::json!({
            "description": "The name of an entry of `templates` whose settings this queue starts from.",
            "type": "string"
        });
        defs["QueueSettings"] = settings;
        defs["QueueEntry"] = entry;
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://panda-rs.invalid/schemas/harvester-queues.schema.json",
            "title": "panda-harvester queue file",
            "type": "object",
            "additionalProperties": false,
            "required": ["queues"],
            "properties": {
                "defaults": { "$ref": "#/$defs/QueueSettings", "description": "Settings every queue starts from." },
                "templates": {
                    "description": "Named settings a queue can start from with `template: NAME`.",
                    "type": "object",
                    "additionalProperties": { "$ref": "#/$defs/QueueSettings" }
                },
                "queues": {
                    "description": "The queues this harvester serves, by name.",
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": { "$ref": "#/$defs/QueueEntry" }
                }
            },
            "$defs": defs
        })
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, queue) in &self.queues {
            if let Err(e) = QueueName::new(name.clone()) {
                problems.push(format!("queues.{name}: the name {e}"));
            }
            if let Some(site) = &queue.site
                && let Err(e) = panda_types::ids::check_name(site, 255)
            {
                problems.push(format!("queues.{name}.site: {e}"));
            }
            if queue.max_workers == 0 {
                problems.push(format!(
                    "queues.{name}.max_workers: must be at least 1 (got 0); set status: offline to stop a queue"
                ));
            }
            if let Some(0) = queue.max_queued_workers {
                problems.push(format!("queues.{name}.max_queued_workers: must be at least 1 (got 0)"));
            }
            if let Some(0) = queue.max_new_workers_per_cycle {
                problems.push(format!("queues.{name}.max_new_workers_per_cycle: must be at least 1 (got 0)"));
            }
            if !(1..=MAX_JOBS_PER_WORKER).contains(&queue.jobs_per_worker) {
                problems.push(format!(
                    "queues.{name}.jobs_per_worker: must be 1 to {MAX_JOBS_PER_WORKER} (got {})",
                    queue.jobs_per_worker
                ));
            }
            if queue.mode == QueueMode::Push {
                if matches!(queue.plugin, PluginConfig::Kubernetes(_)) {
                    problems.push(format!(
                        "queues.{name}.mode: push needs workers that read the harvester's worker directory (local, slurm, htcondor with a shared file system); the kubernetes plugin's pods cannot: use mode: pull"
                    ));
                }
                if queue.pilot_max_jobs != 0 && queue.pilot_max_jobs < queue.jobs_per_worker {
                    problems.push(format!(
                        "queues.{name}.pilot_max_jobs: {} is less than jobs_per_worker ({}): the pilot would not run every job pushed to it; use 0 or at least {}",
                        queue.pilot_max_jobs, queue.jobs_per_worker, queue.jobs_per_worker
                    ));
                }
            } else if queue.jobs_per_worker != 1 {
                problems.push(format!(
                    "queues.{name}.jobs_per_worker: only used in push mode (mode: push); remove it or set mode: push"
                ));
            }
            if queue.plugin.is_batch() {
                // A batch job asks for what it needs; "unlimited" is not a request.
                let plugin = queue.plugin.name();
                if queue.resources.cores == 0 {
                    problems.push(format!("queues.{name}.resources.cores: must be set for a {plugin} queue (got 0)"));
                }
                if queue.resources.memory_mb == 0 {
                    problems
                        .push(format!("queues.{name}.resources.memory_mb: must be set for a {plugin} queue (got 0)"));
                }
            }
            // A template file that could not be read was reported when loading it.
            let unread = |p: &String| p.ends_with(" was not read");
            problems.extend(
                queue.plugin.problems().into_iter().filter(|p| !unread(p)).map(|p| format!("queues.{name}.plugin.{p}")),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<QueueFile, String> {
        QueueFile::parse(text, Path::new("queues.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn full_queue_parses() {
        let file = parse(
            "queues:\n  site_a:\n    status: offline\n    max_workers: 8\n    max_queued_workers: 2\n    max_new_workers_per_cycle: 3\n    resources: { cores: 4, memory_mb: 8000 }\n    pilot_max_jobs: 5\n    plugin:\n      type: local\n      pilot_command: [/bin/true]\n",
        )
        .unwrap();
        let queue = &file.queues["site_a"];
        assert_eq!(queue.status, QueueStatus::Offline);
        assert_eq!(queue.max_queued_workers, Some(2));
        assert_eq!(queue.resources.cores, 4);
        assert_eq!(queue.site, None, "default: the queue's name");
    }

    #[test]
    fn a_queue_names_its_storage_site() {
        let file =
            parse("queues:\n  q:\n    site: CERN-PROD_DATADISK\n    max_workers: 1\n    plugin: { type: local }\n")
                .unwrap();
        assert_eq!(file.queues["q"].site.as_deref(), Some("CERN-PROD_DATADISK"));
        let error =
            parse("queues:\n  q:\n    site: 'a site'\n    max_workers: 1\n    plugin: { type: local }\n").unwrap_err();
        assert!(error.contains("queues.q.site: \"a site\" contains ' '"), "{error}");
    }

    #[test]
    fn the_embedded_queue_offers_the_runtimes_found_on_path_and_docker_only_with_its_daemon() {
        use std::os::unix::fs::PermissionsExt;
        let (bin, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let put = |dir: &Path, name: &str, mode: u32| {
            let file = dir.join(name);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put(bin.path(), "docker", 0o755);
        put(other.path(), "podman", 0o755);
        put(other.path(), "apptainer", 0o755);
        put(bin.path(), "singularity", 0o644); // not executable: not a runtime
        let path = std::env::join_paths([bin.path(), other.path()]).unwrap();
        let no_socket = bin.path().join("docker.sock");
        // In the pilot's order, whatever the order on PATH; no daemon, no docker.
        assert_eq!(
            ContainerRuntime::found(Some(&path), &no_socket),
            [ContainerRuntime::Apptainer, ContainerRuntime::Podman]
        );
        std::fs::write(&no_socket, "").unwrap();
        assert_eq!(
            ContainerRuntime::found(Some(&path), &no_socket),
            [ContainerRuntime::Apptainer, ContainerRuntime::Podman, ContainerRuntime::Docker]
        );
        assert!(ContainerRuntime::found(None, &no_socket).is_empty());
        let file = QueueFile::local(2, vec![ContainerRuntime::Podman]);
        assert_eq!(file.queues["local"].containers, [ContainerRuntime::Podman]);
        assert_eq!(file.queues["local"].max_workers, 2);
    }

    #[test]
    fn a_queue_declares_its_container_runtimes() {
        let file = parse(
            "queues:\n  q:\n    containers: [apptainer, podman]\n    max_workers: 1\n    plugin: { type: local }\n",
        )
        .unwrap();
        assert_eq!(file.queues["q"].containers, [ContainerRuntime::Apptainer, ContainerRuntime::Podman]);
        let file = parse("queues:\n  q:\n    max_workers: 1\n    plugin: { type: local }\n").unwrap();
        assert!(file.queues["q"].containers.is_empty(), "default: none");
        let error = parse("queues:\n  q:\n    containers: [lxc]\n    max_workers: 1\n    plugin: { type: local }\n")
            .unwrap_err();
        assert!(error.contains("queues.q") && error.contains("unknown variant `lxc`"), "{error}");
    }

    #[test]
    fn mode_defaults_to_pull_and_push_settings_are_checked() {
        let file = parse("queues:\n  q:\n    max_workers: 1\n    plugin: { type: local }\n").unwrap();
        assert_eq!((file.queues["q"].mode, file.queues["q"].jobs_per_worker), (QueueMode::Pull, 1));
        let file = parse(
            "defaults: { mode: push }\nqueues:\n  q:\n    max_workers: 1\n    jobs_per_worker: 3\n    pilot_max_jobs: 3\n    plugin: { type: local }\n",
        )
        .unwrap();
        assert_eq!((file.queues["q"].mode, file.queues["q"].jobs_per_worker), (QueueMode::Push, 3));

        let error =
            parse("queues:\n  q:\n    max_workers: 1\n    mode: shove\n    plugin: { type: local }\n").unwrap_err();
        assert!(error.contains("queues.q.mode") && error.contains("shove") && error.contains("push"), "{error}");
        let error = parse(
            "queues:\n  q:\n    max_workers: 1\n    mode: push\n    jobs_per_worker: 101\n    plugin: { type: local }\n  r:\n    max_workers: 1\n    mode: push\n    jobs_per_worker: 4\n    pilot_max_jobs: 2\n    plugin: { type: local }\n  s:\n    max_workers: 1\n    jobs_per_worker: 2\n    plugin: { type: local }\n  k:\n    max_workers: 1\n    mode: push\n    resources: { cores: 1, memory_mb: 1000 }\n    plugin: { type: kubernetes, image: pilot:1 }\n",
        )
        .unwrap_err();
        assert!(error.contains("queues.q.jobs_per_worker: must be 1 to 100 (got 101)"), "{error}");
        assert!(error.contains("queues.r.pilot_max_jobs: 2 is less than jobs_per_worker (4)"), "{error}");
        assert!(error.contains("queues.s.jobs_per_worker: only used in push mode"), "{error}");
        assert!(error.contains("queues.k.mode: push needs workers that read"), "{error}");
    }

    #[test]
    fn unknown_plugin_names_file_key_and_allowed() {
        let error = parse("queues:\n  q:\n    max_workers: 1\n    plugin:\n      type: slurmm\n").unwrap_err();
        assert!(error.contains("queues.yaml"), "{error}");
        assert!(error.contains("slurmm") && error.contains("local"), "{error}");
    }

    #[test]
    fn unknown_key_is_named() {
        let error = parse("queues:\n  q:\n    max_wrokers: 1\n    plugin: { type: local }\n").unwrap_err();
        assert!(error.contains("max_wrokers"), "{error}");
        assert!(error.contains("queues.yaml"), "{error}");
    }

    #[test]
    fn rules_are_all_reported() {
        let error = parse("queues:\n  'bad name':\n    max_workers: 0\n    plugin: { type: local }\n").unwrap_err();
        assert!(error.contains("queues.bad name: the name"), "{error}");
        assert!(error.contains("max_workers: must be at least 1"), "{error}");
    }

    #[test]
    fn missing_file_is_named() {
        let error = QueueFile::load(Path::new("/nonexistent/queues.yaml")).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/queues.yaml"), "{error}");
    }

    #[test]
    fn example_files_are_valid() {
        for name in ["queues.yaml", "queues-batch.yaml", "queues-kubernetes.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
            let file = QueueFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            for queue in file.queues.values() {
                if let PluginConfig::Slurm(config) = &queue.plugin {
                    assert!(config.template_text.as_deref().is_some_and(|t| t.contains("{pilot_command}")));
                }
            }
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const BATCH_RESOURCES: &str = "    resources: { cores: 1, memory_mb: 1000 }\n";

    #[test]
    fn slurm_and_htcondor_queues_load_their_templates_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        write(dir.path(), "t/job.sh", "#!/bin/sh\n#SBATCH -p {partition}\n{pilot_command}\n");
        write(dir.path(), "t/job.sub", "executable = {pilot_executable}\narguments = {pilot_arguments}\nqueue\n");
        let path = write(
            dir.path(),
            "queues.yaml",
            &format!(
                "queues:\n  hpc:\n    max_workers: 2\n{BATCH_RESOURCES}    plugin:\n      type: slurm\n      template_file: t/job.sh\n      partition: debug\n      squeue: [ssh, login1, squeue]\n      lost_after: 5m\n  grid:\n    max_workers: 2\n{BATCH_RESOURCES}    plugin: {{ type: htcondor, template_file: t/job.sub, held_timeout: 30m }}\n"
            ),
        );
        let file = QueueFile::load(&path).unwrap();
        let PluginConfig::Slurm(slurm) = &file.queues["hpc"].plugin else { panic!() };
        assert_eq!(slurm.template_file.as_deref(), Some(dir.path().join("t/job.sh").as_path()));
        assert!(slurm.template_text.as_deref().unwrap().contains("#SBATCH -p {partition}"));
        assert_eq!(slurm.squeue.0, ["ssh", "login1", "squeue"]);
        assert_eq!(slurm.lost_after, std::time::Duration::from_secs(300));
        let PluginConfig::Htcondor(condor) = &file.queues["grid"].plugin else { panic!() };
        assert_eq!(condor.held_timeout, std::time::Duration::from_secs(1800));
        // The effective configuration prints (config check) and names the file, not its text.
        let printed = serde_yaml_ng::to_string(&file).unwrap();
        assert!(printed.contains("template_file:") && !printed.contains("#SBATCH"), "{printed}");
    }

    #[test]
    fn batch_plugin_errors_name_file_queue_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bad.sh", "#!/bin/sh\necho ${HOME}\n{pilot_command}\n");
        let path = write(
            dir.path(),
            "queues.yaml",
            "queues:\n  hpc:\n    max_workers: 2\n    plugin: { type: slurm, template_file: bad.sh }\n  grid:\n    max_workers: 2\n    resources: { cores: 1, memory_mb: 1 }\n    plugin: { type: htcondor, template_file: missing.sub }\n",
        );
        let error = QueueFile::load(&path).unwrap_err().to_string();
        assert!(error.starts_with(&format!("queue config {}: ", path.display())), "{error}");
        assert!(
            error.contains(&format!(
                "queues.hpc.plugin.template_file: {} line 2: unknown placeholder {{HOME}}",
                dir.path().join("bad.sh").display()
            )),
            "{error}"
        );
        assert!(error.contains("queues.hpc.resources.cores: must be set for a slurm queue"), "{error}");
        assert!(error.contains("queues.hpc.resources.memory_mb: must be set for a slurm queue"), "{error}");
        assert!(error.contains("queues.grid.plugin.template_file: cannot read"), "{error}");
        assert!(error.contains("missing.sub"), "{error}");
        assert!(!error.contains("was not read"), "{error}");

        let error = parse(&format!(
            "queues:\n  hpc:\n    max_workers: 1\n{BATCH_RESOURCES}    plugin: {{ type: slurm, partiton: debug }}\n"
        ))
        .unwrap_err();
        assert!(error.contains("queues.yaml") && error.contains("partiton") && error.contains("partition"), "{error}");
        let error = parse(&format!(
            "queues:\n  hpc:\n    max_workers: 1\n{BATCH_RESOURCES}    plugin: {{ type: htcondor, template: \"queue 2\" }}\n"
        ))
        .unwrap_err();
        assert!(error.contains("queues.hpc.plugin.template: `queue 2` must queue exactly one job"), "{error}");
        let error = parse(&format!(
            "queues:\n  hpc:\n    max_workers: 1\n{BATCH_RESOURCES}    plugin: {{ type: slurm, accounting: slurmdb }}\n"
        ))
        .unwrap_err();
        assert!(error.contains("slurmdb") && error.contains("jobcomp"), "{error}");
    }

    #[test]
    fn queues_merge_over_their_template_and_the_defaults_in_order() {
        let file = parse(
            "defaults:\n  max_workers: 3\n  max_new_workers_per_cycle: 2\n  resources: { cores: 1, memory_mb: 1000 }\ntemplates:\n  hpc:\n    max_workers: 10\n    resources: { memory_mb: 4000, walltime_seconds: 600 }\n    plugin: { type: slurm, partition: debug, lost_after: 5m }\nqueues:\n  plain:\n    plugin: { type: local }\n  big:\n    template: hpc\n    resources: { cores: 8 }\n    plugin: { type: slurm, account: atlas }\n  other_plugin:\n    template: hpc\n    plugin: { type: htcondor }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let plain = &file.queues["plain"];
        // defaults < built-in defaults only.
        assert_eq!((plain.max_workers, plain.max_new_workers_per_cycle), (3, Some(2)));
        assert_eq!(plain.max_queued_workers, None);
        let big = &file.queues["big"];
        // template over defaults, queue over template; mappings merge key by key.
        assert_eq!(big.max_workers, 10);
        assert_eq!(big.max_new_workers_per_cycle, Some(2));
        assert_eq!(big.resources, WorkerResources { cores: 8, memory_mb: 4000, disk_mb: 0, walltime_seconds: 600 });
        let PluginConfig::Slurm(slurm) = &big.plugin else { panic!("{:?}", big.plugin) };
        assert_eq!(slurm.partition.as_deref(), Some("debug"));
        assert_eq!(slurm.account.as_deref(), Some("atlas"));
        assert_eq!(slurm.lost_after, std::time::Duration::from_secs(300));
        // Another plugin type replaces the template's plugin whole (no Slurm keys carried over).
        assert!(matches!(file.queues["other_plugin"].plugin, PluginConfig::Htcondor(_)));
    }

    #[test]
    fn template_and_merge_errors_name_the_queue_and_key() {
        let error =
            parse("queues:\n  q:\n    template: nope\n    max_workers: 1\n    plugin: { type: local }\n").unwrap_err();
        assert!(error.contains("queues.q.template: no template \"nope\" (templates: none)"), "{error}");
        let error = parse(
            "templates:\n  t:\n    max_workers: many\nqueues:\n  q:\n    template: t\n    plugin: { type: local }\n  r:\n    plugin: { type: local }\n",
        )
        .unwrap_err();
        assert!(error.contains("queues.q.max_workers: invalid type"), "{error}");
        assert!(error.contains("after merging its template"), "{error}");
        // Every queue is reported, not only the first.
        assert!(error.contains("queues.r: missing field `max_workers`"), "{error}");
        let error =
            parse("templates:\n  q: {}\nqueues:\n  q:\n    max_workers: 1\n    plugin: { type: local }\n").unwrap_err();
        assert!(error.contains("templates.q: a template and a queue cannot share a name"), "{error}");
        let error = parse("defaults: {}\ntemplate: {}\nqueues: {}\n").unwrap_err();
        assert!(error.contains("unknown field `template`"), "{error}");
        let lines = QueueFile::parse("queues: {}\n", Path::new("q.yaml")).unwrap_err().lines();
        assert_eq!(lines, ["q.yaml: queues: at least one queue is needed"]);
    }

    #[test]
    fn the_shipped_json_schema_is_the_generated_one() {
        let generated = serde_json::to_string_pretty(&QueueFile::json_schema()).unwrap() + "\n";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/queues.schema.json");
        if std::env::var_os("PANDA_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == generated,
            "{} is stale: run PANDA_UPDATE_SCHEMA=1 cargo test -p panda-harvester --lib shipped_json_schema",
            path.display()
        );
        let schema = QueueFile::json_schema();
        for plugin in ["local", "slurm", "htcondor", "kubernetes"] {
            assert!(schema.to_string().contains(&format!("\"{plugin}\"")), "{plugin} missing from the schema");
        }
        assert_eq!(schema["properties"]["queues"]["additionalProperties"]["$ref"], "#/$defs/QueueEntry");
        assert_eq!(schema["$defs"]["QueueEntry"]["additionalProperties"], false);
    }
}
