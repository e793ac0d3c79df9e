//! The `kubernetes` plugin: one `batch/v1` Job per worker, through the API server with the `kube`
//! client.
//!
//! - **Submit**: a Job named `panda-<queue>-<worker_id>` (lowercased, made DNS-safe) with the
//!   labels `app.kubernetes.io/managed-by=panda-harvester`, `panda.io/queue`,
//!   `panda.io/worker-id` (on the Job and its pod), `backoffLimit: 0`, `restartPolicy: Never`,
//!   `activeDeadlineSeconds` from the queue's walltime, CPU and memory requests and limits from
//!   the queue's resources, the pilot image and command, a `pilot-dir` emptyDir as the pilot's
//!   work directory, and the token secret mounted read-only (`PANDA_TOKEN_FILE` points to it).
//!   Several creates run at once (`submit_parallelism`). A Job that already exists with the same
//!   worker label counts as submitted (a create retried after a lost answer submits nothing twice).
//!   4xx answers (bad spec, forbidden, missing namespace) are permanent, others temporary.
//! - **Monitor**: one Job list and one Pod list per cycle, both by the queue's label selector,
//!   whatever the number of workers; the mapping is the pure [`status::map`]. A Job absent
//!   from the list for `lost_after` ends its worker as cancelled.
//! - **Kill**: deletes the Job with `propagationPolicy: Background` (its pods go too), with
//!   `kill_grace_seconds`; an already deleted Job counts as killed.
//! - **Clean**: deletes the Job if it is still there (its pods with it).

pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, SecretVolumeSource,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use panda_types::WorkerStatus;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tracing::{debug, instrument};

use super::batch::{self, Unseen};
use super::{BatchState, CheckResult, Monitor, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec};

/// Label naming who manages the Job.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGER: &str = "panda-harvester";
/// Label holding the queue.
pub const QUEUE_LABEL: &str = "panda.io/queue";
/// Label holding the harvester worker ID.
pub const WORKER_LABEL: &str = "panda.io/worker-id";
/// Where the pilot's work directory is mounted in the pod.
pub const WORK_DIR: &str = "/panda/work";
/// Lines asked from the end of a pod's log (then cut to the bytes asked for).
const LOG_TAIL_LINES: i64 = 2000;
/// Where the token secret is mounted.
pub const TOKEN_DIR: &str = "/panda/token";

/// `plugin: { type: kubernetes, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// API server URL without credentials (a `kubectl proxy`, or a test server). Unset: the
    /// kubeconfig file, else the usual inference (in-cluster service account, `KUBECONFIG`,
    /// `~/.kube/config`).
    pub api_url: Option<String>,
    /// A kubeconfig file (its current context).
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the Jobs.
    pub namespace: String,
    /// The pilot image (required).
    pub image: String,
    /// `imagePullPolicy` (`Always`, `IfNotPresent`, `Never`); unset: the cluster's default.
    pub image_pull_policy: Option<String>,
    /// Pilot program and leading arguments inside the image.
    pub pilot_command: Vec<String>,
    /// The server URL as the pods reach it (default: the harvester's).
    pub server_url: Option<String>,
    /// A Secret holding the pilot's token, mounted read-only at `/panda/token`.
    pub token_secret: Option<String>,
    /// The key of the token in that Secret (`PANDA_TOKEN_FILE=/panda/token/<key>`).
    pub token_key: String,
    /// A token file on the harvester's machine that the credential manager copies into
    /// `token_secret` (server-side apply) when it changes, and at least every `token_refresh`.
    pub token_file: Option<PathBuf>,
    /// Longest time between two copies of an unchanged token.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub token_refresh: Duration,
    /// `serviceAccountName` of the pods.
    pub service_account: Option<String>,
    /// Extra labels on Jobs and pods.
    pub labels: BTreeMap<String, String>,
    /// `nodeSelector` of the pods.
    pub node_selector: BTreeMap<String, String>,
    /// CPU request as a percentage of the queue's cores (the limit is the cores).
    pub cpu_request_percent: u32,
    /// Set a memory limit (the queue's memory_mb) besides the request.
    pub memory_limit: bool,
    /// `ttlSecondsAfterFinished` of the Jobs.
    pub ttl_seconds_after_finished: Option<i32>,
    /// Grace period of the pods when a worker is killed.
    pub kill_grace_seconds: i64,
    /// A pod whose image cannot be pulled fails its worker after this long.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub image_pull_timeout: Duration,
    /// A Job gone from the API this long ends its worker as cancelled.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lost_after: Duration,
    /// Deadline of every API call.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Job creates running at once.
    pub submit_parallelism: u32,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            api_url: None,
            kubeconfig: None,
            namespace: "default".to_owned(),
            image: String::new(),
            image_pull_policy: None,
            pilot_command: vec!["panda-pilot".to_owned()],
            server_url: None,
            token_secret: None,
            token_key: "token".to_owned(),
            token_file: None,
            token_refresh: Duration::from_secs(600),
            service_account: None,
            labels: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            cpu_request_percent: 90,
            memory_limit: false,
            ttl_seconds_after_finished: Some(172_800),
            kill_grace_seconds: 30,
            image_pull_timeout: Duration::from_secs(1800),
            lost_after: Duration::from_secs(120),
            request_timeout: Duration::from_secs(20),
            submit_parallelism: 8,
        }
    }
}

impl KubernetesConfig {
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.image.trim().is_empty() {
            problems.push("image: must name the pilot image".to_owned());
        }
        if self.pilot_command.first().is_none_or(|p| p.is_empty()) {
            problems.push("pilot_command: must name a program".to_owned());
        }
        if !is_dns_label(&self.namespace) {
            problems.push(format!("namespace: {:?} is not a DNS label (a-z, 0-9, -; at most 63)", self.namespace));
        }
        if let Some(url) = &self.api_url
            && !url.parse::<http::Uri>().is_ok_and(|u| u.scheme().is_some())
        {
            problems.push(format!("api_url: {url:?} is not an absolute URL"));
        }
        if self.api_url.is_some() && self.kubeconfig.is_some() {
            problems.push("api_url: set either api_url or kubeconfig, not both".to_owned());
        }
        if let Some(policy) = &self.image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            problems.push(format!("image_pull_policy: {policy:?} is not one of Always, IfNotPresent, Never"));
        }
        if !(1..=100).contains(&self.cpu_request_percent) {
            problems.push(format!("cpu_request_percent: must be 1 to 100 (got {})", self.cpu_request_percent));
        }
        for key in self.labels.keys() {
            if [MANAGED_BY, QUEUE_LABEL, WORKER_LABEL].contains(&key.as_str()) {
                problems.push(format!("labels.{key}: is set by the harvester"));
            }
        }
        if self.token_file.is_some() && self.token_secret.is_none() {
            problems.push("token_file: needs token_secret (the Secret it is copied into)".to_owned());
        }
        if self.token_key.is_empty() {
            problems.push("token_key: must not be empty".to_owned());
        }
        if self.kill_grace_seconds < 0 {
            problems.push(format!("kill_grace_seconds: must not be negative (got {})", self.kill_grace_seconds));
        }
        if self.request_timeout < Duration::from_secs(1) {
            problems.push(format!("request_timeout: must be at least 1s (got {:?})", self.request_timeout));
        }
        if self.submit_parallelism == 0 {
            problems.push("submit_parallelism: must be at least 1 (got 0)".to_owned());
        }
        problems
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A label value from free text: at most 63 of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn label_value(text: &str) -> String {
    let cleaned: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect();
    let trimmed: String = cleaned.chars().take(63).collect();
    trimmed.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

/// The Job name of a worker: `panda-<queue>-<worker_id>`, lowercase DNS label (the queue part
/// shortened so the whole fits 63 characters).
pub fn job_name(queue: &str, worker_id: &str) -> String {
    let queue: String = queue
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .collect();
    let room = 63usize.saturating_sub("panda--".len() + worker_id.len());
    let queue: String = queue.chars().take(room).collect();
    let queue = queue.trim_matches('-');
    if queue.is_empty() { format!("panda-{worker_id}") } else { format!("panda-{queue}-{worker_id}") }
}

/// The Job of one worker.
pub fn job_manifest(config: &KubernetesConfig, queue: &str, worker: &WorkerSpec, server_url: &str) -> Job {
    let name = job_name(queue, &worker.worker_id);
    let mut labels = config.labels.clone();
    labels.insert(MANAGED_BY.to_owned(), MANAGER.to_owned());
    labels.insert(QUEUE_LABEL.to_owned(), label_value(queue));
    labels.insert(WORKER_LABEL.to_owned(), label_value(&worker.worker_id));
    // The pilot's view of the worker: its directory is the pod's emptyDir.
    let in_pod = WorkerSpec {
        work_dir: PathBuf::from(WORK_DIR),
        server_url: server_url.to_owned(),
        // Push mode is refused for this plugin: pods do not see the harvester's files.
        job_file: None,
        ..worker.clone()
    };
    let mut args = batch::pilot_args(&config.pilot_command, &in_pod);
    // `pilot_args` put the work dir's `pilot` child; keep it inside the mounted volume.
    let program = args.remove(0);
    let r = &worker.resources;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if r.cores > 0 {
        let millis = u64::from(r.cores) * 10 * u64::from(config.cpu_request_percent);
        requests.insert("cpu".to_owned(), Quantity(format!("{millis}m")));
        limits.insert("cpu".to_owned(), Quantity(r.cores.to_string()));
    }
    if r.memory_mb > 0 {
        requests.insert("memory".to_owned(), Quantity(format!("{}Mi", r.memory_mb)));
        if config.memory_limit {
            limits.insert("memory".to_owned(), Quantity(format!("{}Mi", r.memory_mb)));
        }
    }
    if r.disk_mb > 0 {
        requests.insert("ephemeral-storage".to_owned(), Quantity(format!("{}Mi", r.disk_mb)));
    }
    let mut env = vec![
        EnvVar { name: "HARVESTER_WORKER_ID".into(), value: Some(worker.worker_id.clone()), ..Default::default() },
        EnvVar { name: "PANDA_QUEUE".into(), value: Some(queue.to_owned()), ..Default::default() },
        EnvVar { name: "K8S_JOB_ID".into(), value: Some(name.clone()), ..Default::default() },
    ];
    let mut mounts = vec![VolumeMount { name: "pilot-dir".into(), mount_path: WORK_DIR.into(), ..Default::default() }];
    let mut volumes = vec![Volume {
        name: "pilot-dir".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: (r.disk_mb > 0).then(|| Quantity(format!("{}Mi", r.disk_mb))),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if let Some(secret) = &config.token_secret {
        env.push(EnvVar {
            name: "PANDA_TOKEN_FILE".into(),
            value: Some(format!("{TOKEN_DIR}/{}", config.token_key)),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "panda-token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "panda-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: "pilot".into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec![program]),
        args: Some(args),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: (!requests.is_empty()).then_some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let walltime = i64::try_from(r.walltime_seconds).unwrap_or(i64::MAX);
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: (walltime > 0).then_some(walltime),
            ttl_seconds_after_finished: config.ttl_seconds_after_finished,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    service_account_name: config.service_account.clone(),
                    node_selector: (!config.node_selector.is_empty()).then(|| config.node_selector.clone()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Workers as Kubernetes Jobs.
pub struct KubernetesPlugin {
    queue: String,
    config: KubernetesConfig,
    client: OnceCell<kube::Client>,
    unseen: Unseen,
    /// The token last copied into the Secret, and when.
    token_synced: tokio::sync::Mutex<Option<(Vec<u8>, std::time::Instant)>>,
}

impl KubernetesPlugin {
    /// A plugin for `queue`. The client connects on first use (a cluster that is down at start
    /// fails calls, not the harvester).
    pub fn new(queue: &str, config: KubernetesConfig) -> Self {
        Self {
            queue: queue.to_owned(),
            config,
            client: OnceCell::new(),
            unseen: Unseen::default(),
            token_synced: tokio::sync::Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<kube::Client, String> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let mut config = match (&self.config.api_url, &self.config.kubeconfig) {
                    (Some(url), _) => {
                        let uri = url.parse().map_err(|e| format!("api_url {url:?}: {e}"))?;
                        kube::Config::new(uri)
                    }
                    (None, Some(path)) => {
                        let file = kube::config::Kubeconfig::read_from(path)
                            .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
                        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                            .await
                            .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
                    }
                    (None, None) => kube::Config::infer().await.map_err(|e| format!("no Kubernetes config: {e}"))?,
                };
                config.default_namespace = self.config.namespace.clone();
                config.connect_timeout = Some(self.config.request_timeout);
                config.read_timeout = Some(self.config.request_timeout);
                config.write_timeout = Some(self.config.request_timeout);
                // One attempt per call: a failed call is retried by the next cycle, which keeps
                // every cycle bounded by request_timeout (kube's default retries 429/503/504).
                config.default_retry = false;
                kube::Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
            })
            .await?;
        Ok(client.clone())
    }

    fn selector(&self) -> String {
        format!("{MANAGED_BY}={MANAGER},{QUEUE_LABEL}={}", label_value(&self.queue))
    }

    async fn submit_one(&self, jobs: &Api<Job>, worker: &WorkerSpec) -> SubmitOutcome {
        let server_url = self.config.server_url.as_deref().unwrap_or(&worker.server_url);
        let job = job_manifest(&self.config, &self.queue, worker, server_url);
        let name = job.metadata.name.clone().unwrap_or_default();
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => SubmitOutcome::Submitted { batch_id: name },
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                // Ours from an earlier try whose answer was lost, or someone else's.
                match jobs.get(&name).await {
                    Ok(existing)
                        if existing.metadata.labels.as_ref().and_then(|l| l.get(WORKER_LABEL))
                            == Some(&label_value(&worker.worker_id)) =>
                    {
                        SubmitOutcome::Submitted { batch_id: name }
                    }
                    Ok(_) => SubmitOutcome::Permanent(format!(
                        "Kubernetes job {name} already exists and belongs to another worker"
                    )),
                    Err(e) => SubmitOutcome::Temporary(format!("create job {name}: already exists; reading it: {e}")),
                }
            }
            Err(error) => {
                let diag = format!("create job {name}: {}", describe(&error));
                if is_transient(&error) { SubmitOutcome::Temporary(diag) } else { SubmitOutcome::Permanent(diag) }
            }
        }
    }
}

/// Whether a call may work when tried again (server errors, throttling, transport).
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429 || status.code == 409,
        _ => true,
    }
}

fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} (HTTP {} {})", status.message, status.code, status.reason),
        other => other.to_string(),
    }
}

#[async_trait]
impl Submitter for KubernetesPlugin {
    /// Copies `token_file` into `token_secret` when the file changed or `token_refresh` passed.
    async fn refresh_credentials(&self) -> Result<Option<String>, String> {
        let (Some(file), Some(secret)) = (&self.config.token_file, &self.config.token_secret) else {
            return Ok(None);
        };
        let token = tokio::fs::read(file).await.map_err(|e| format!("token_file {}: {e}", file.display()))?;
        let mut synced = self.token_synced.lock().await;
        if let Some((last, at)) = &*synced
            && *last == token
            && at.elapsed() < self.config.token_refresh
        {
            return Ok(None);
        }
        let client = self.client().await?;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, &self.config.namespace);
        let object = k8s_openapi::api::core::v1::Secret {
            metadata: ObjectMeta {
                name: Some(secret.clone()),
                namespace: Some(self.config.namespace.clone()),
                labels: Some(BTreeMap::from([(MANAGED_BY.to_owned(), MANAGER.to_owned())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(self.config.token_key.clone(), k8s_openapi::ByteString(token.clone()))])),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        };
        let params = kube::api::PatchParams::apply(MANAGER).force();
        secrets
            .patch(secret, &params, &kube::api::Patch::Apply(&object))
            .await
            .map_err(|e| format!("apply secret {secret}: {}", describe(&e)))?;
        *synced = Some((token, std::time::Instant::now()));
        Ok(Some(format!("secret {secret} key {} from {}", self.config.token_key, file.display())))
    }

    #[instrument(skip_all, fields(queue = %self.queue, plugin = "kubernetes", workers = workers.len()))]
    async fn submit(&self, workers: &[WorkerSpec]) -> Vec<SubmitOutcome> {
        let client = match self.client().await {
            Ok(client) => client,
            Err(diag) => return workers.iter().map(|_| SubmitOutcome::Temporary(diag.clone())).collect(),
        };
        let jobs: Api<Job> = Api::namespaced(client, &self.config.namespace);
        let parallelism = usize::try_from(self.config.submit_parallelism.max(1)).unwrap_or(1);
        let calls: Vec<_> = workers.iter().map(|worker| self.submit_one(&jobs, worker)).collect();
        futures::stream::iter(calls).buffered(parallelism).collect().await
    }
}

#[async_trait]
impl Monitor for KubernetesPlugin {
    #[instrument(skip_all, fields(queue = %self.queue, plugin = "kubernetes", workers = workers.len()))]
    async fn check(&self, workers: &[WorkerRef]) -> Vec<CheckResult> {
        let fail_all = |diag: String| workers.iter().map(|_| Err(diag.clone())).collect();
        let client = match self.client().await {
            Ok(client) => client,
            Err(diag) => return fail_all(diag),
        };
        let params = ListParams::default().labels(&self.selector());
        let jobs: Api<Job> = Api::namespaced(client.clone(), &self.config.namespace);
        let pods: Api<Pod> = Api::namespaced(client, &self.config.namespace);
        // One call for all Jobs and one for all pods of the queue, whatever the number of workers.
        let (jobs, pods) = match tokio::try_join!(jobs.list(&params), pods.list(&params)) {
            Ok(lists) => lists,
            Err(error) => return fail_all(format!("listing Kubernetes jobs and pods: {}", describe(&error))),
        };
        let mut pods_of: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for pod in &pods.items {
            if let Some(job) = pod.metadata.labels.as_ref().and_then(|l| l.get("job-name")) {
                pods_of.entry(job.as_str()).or_default().push(pod);
            }
        }
        let jobs: HashMap<&str, &Job> =
            jobs.items.iter().filter_map(|j| j.metadata.name.as_deref().map(|n| (n, j))).collect();
        debug!(jobs = jobs.len(), pods = pods.items.len(), "listed");
        let clock = status::Clock {
            now: k8s_openapi::jiff::Timestamp::now().as_second(),
            image_pull_timeout: i64::try_from(self.config.image_pull_timeout.as_secs()).unwrap_or(i64::MAX),
        };
        workers
            .iter()
            .map(|worker| {
                let name = worker.batch_id.as_str();
                match jobs.get(name) {
                    Some(job) => {
                        self.unseen.seen(name);
                        status::map(name, job, pods_of.get(name).map_or(&[][..], Vec::as_slice), clock)
                    }
                    None if self.unseen.lost(name, self.config.lost_after) => Ok(BatchState {
                        status: WorkerStatus::Cancelled,
                        exit_code: None,
                        diag: format!("Kubernetes job {name} not found (deleted)"),
                    }),
                    None => Err(format!("Kubernetes job {name} not found (yet)")),
                }
            })
            .collect()
    }
}

impl KubernetesPlugin {
    async fn delete(&self, jobs: &Api<Job>, name: &str) -> Result<(), String> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            grace_period_seconds: u32::try_from(self.config.kill_grace_seconds).ok(),
            ..Default::default()
        };
        match jobs.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(format!("delete job {name}: {}", describe(&error))),
        }
    }
}

#[async_trait]
impl Sweeper for KubernetesPlugin {
    #[instrument(skip_all, fields(queue = %self.queue, plugin = "kubernetes", workers = workers.len()))]
    async fn kill(&self, workers: &[WorkerRef]) -> Vec<Result<(), String>> {
        let client = match self.client().await {
            Ok(client) => client,
            Err(diag) => return workers.iter().map(|_| Err(diag.clone())).collect(),
        };
        let jobs: Api<Job> = Api::namespaced(client, &self.config.namespace);
        let calls: Vec<_> = workers
            .iter()
            .map(|w| {
                let jobs = &jobs;
                async move {
                    if w.batch_id.is_empty() {
                        return Ok(()); // never reached the cluster
                    }
                    self.delete(jobs, &w.batch_id).await
                }
            })
            .collect();
        let parallelism = usize::try_from(self.config.submit_parallelism.max(1)).unwrap_or(1);
        futures::stream::iter(calls).buffered(parallelism).collect().await
    }

    async fn logs(&self, worker: &WorkerRef, tail: u64) -> Result<Vec<super::WorkerLog>, String> {
        if worker.batch_id.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let pods: Api<Pod> = Api::namespaced(client, &self.config.namespace);
        let params = ListParams::default().labels(&format!("job-name={}", worker.batch_id));
        let list = pods.list(&params).await.map_err(|e| format!("listing pods: {}", describe(&e)))?;
        let mut logs = Vec::new();
        for pod in &list.items {
            let Some(name) = pod.metadata.name.as_deref() else { continue };
            let params = kube::api::LogParams {
                container: Some("pilot".into()),
                tail_lines: Some(LOG_TAIL_LINES),
                ..Default::default()
            };
            match pods.logs(name, &params).await {
                Ok(text) => {
                    let keep = usize::try_from(tail).unwrap_or(usize::MAX);
                    let mut start = text.len().saturating_sub(keep);
                    while !text.is_char_boundary(start) {
                        start += 1;
                    }
                    let truncated = start > 0;
                    let text = text[start..].to_owned();
                    logs.push(super::WorkerLog { name: format!("{name}/pilot"), text, truncated });
                }
                Err(e) => return Err(format!("logs of pod {name}: {}", describe(&e))),
            }
        }
        Ok(logs)
    }

    async fn clean(&self, worker: &WorkerRef) -> Result<(), String> {
        if worker.batch_id.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        self.delete(&Api::namespaced(client, &self.config.namespace), &worker.batch_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> WorkerSpec {
        WorkerSpec {
            worker_id: "42".into(),
            queue: "K8S_Queue".into(),
            work_dir: "/data/workers/K8S_Queue/42".into(),
            resources: panda_types::Resources { cores: 4, memory_mb: 8000, disk_mb: 20000, walltime_seconds: 3600 },
            max_jobs: 1,
            server_url: "http://harvester-view:50051".into(),
            job_file: None,
            container_runtimes: Vec::new(),
        }
    }

    #[test]
    fn job_names_are_dns_labels() {
        assert_eq!(job_name("K8S_Queue", "42"), "panda-k8s-queue-42");
        let long = job_name(&"x".repeat(100), "123456");
        assert!(long.len() <= 63 && long.ends_with("-123456") && is_dns_label(&long), "{long}");
        assert_eq!(job_name("__", "7"), "panda-7");
        assert_eq!(label_value("_a b_"), "a-b");
    }

    #[test]
    fn the_job_carries_labels_resources_image_token_and_deadline() {
        let config = KubernetesConfig {
            image: "ghcr.io/panda/pilot:1".into(),
            token_secret: Some("panda-token".into()),
            labels: BTreeMap::from([("team".into(), "atlas".into())]),
            memory_limit: true,
            ..Default::default()
        };
        let job = job_manifest(&config, "K8S_Queue", &worker(), "http://panda.svc:50051");
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["apiVersion"], "batch/v1");
        assert_eq!(json["kind"], "Job");
        assert_eq!(json["metadata"]["name"], "panda-k8s-queue-42");
        let labels = &json["metadata"]["labels"];
        assert_eq!(labels[QUEUE_LABEL], "K8S_Queue");
        assert_eq!(labels[WORKER_LABEL], "42");
        assert_eq!(labels[MANAGED_BY], MANAGER);
        assert_eq!(labels["team"], "atlas");
        assert_eq!(json["spec"]["template"]["metadata"]["labels"], *labels);
        assert_eq!(json["spec"]["backoffLimit"], 0);
        assert_eq!(json["spec"]["activeDeadlineSeconds"], 3600);
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "ghcr.io/panda/pilot:1");
        assert_eq!(container["command"], serde_json::json!(["panda-pilot"]));
        let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
        let arg = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
        assert_eq!(arg("--server").as_deref(), Some("http://panda.svc:50051"));
        assert_eq!(arg("--worker-id").as_deref(), Some("42"));
        assert_eq!(arg("--work-dir").as_deref(), Some("/panda/work/pilot"));
        assert_eq!(container["resources"]["requests"]["cpu"], "3600m");
        assert_eq!(container["resources"]["limits"]["cpu"], "4");
        assert_eq!(container["resources"]["requests"]["memory"], "8000Mi");
        assert_eq!(container["resources"]["limits"]["memory"], "8000Mi");
        assert_eq!(container["resources"]["requests"]["ephemeral-storage"], "20000Mi");
        let token = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "panda-token").unwrap();
        assert_eq!(token["secret"]["secretName"], "panda-token");
        assert_eq!(token["secret"]["defaultMode"], 0o400);
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "PANDA_TOKEN_FILE" && e["value"] == "/panda/token/token")
        );
    }

    #[test]
    fn config_problems_name_the_key() {
        let config = KubernetesConfig {
            namespace: "Bad_NS".into(),
            image_pull_policy: Some("Sometimes".into()),
            cpu_request_percent: 0,
            labels: BTreeMap::from([(QUEUE_LABEL.to_owned(), "x".into())]),
            api_url: Some("not a url".into()),
            ..Default::default()
        };
        let problems = config.problems().join("\n");
        for expected in [
            "image: must name",
            "namespace: \"Bad_NS\"",
            "image_pull_policy: \"Sometimes\"",
            "cpu_request_percent",
            "labels.panda.io/queue",
            "api_url: \"not a url\"",
        ] {
            assert!(problems.contains(expected), "{expected} missing in {problems}");
        }
        let good = KubernetesConfig { image: "pilot:1".into(), ..Default::default() };
        assert!(good.problems().is_empty(), "{:?}", good.problems());
    }
}
