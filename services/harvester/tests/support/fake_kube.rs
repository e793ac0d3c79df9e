//! A small stand-in for a Kubernetes API server: `batch/v1` Jobs and `core/v1` Pods in their real
//! JSON shapes (objects, lists, `Status` errors), with just enough of the Job controller to give
//! each new Job a pending pod. Tests move pods along (`set_pod_status`) the way a kubelet would.
//! No API server can run on the development and CI machines.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// What the fake holds.
#[derive(Default)]
pub struct Cluster {
    /// Jobs by name.
    pub jobs: BTreeMap<String, Value>,
    /// Pods by name.
    pub pods: BTreeMap<String, Value>,
    /// Every request, as `METHOD path?query`.
    pub calls: Vec<String>,
    /// Bodies of DELETE requests.
    pub deletes: Vec<Value>,
    /// Secrets by name, as last applied.
    pub secrets: BTreeMap<String, Value>,
    /// Answer every call with this HTTP status (a broken API server).
    pub fail_with: Option<u16>,
    /// Answer every call with a truncated JSON body.
    pub garbage: bool,
    /// Answer creates with this Status code (quota, invalid spec).
    pub refuse_create: Option<(u16, &'static str)>,
}

/// A running fake; stops when dropped.
pub struct FakeKube {
    /// Its URL.
    pub url: String,
    /// Its state.
    pub cluster: Arc<Mutex<Cluster>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<Mutex<Cluster>>;

fn json_response(code: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    json_response(
        code,
        &json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason, "code": code }),
    )
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `a=b,c=d` against an object's labels.
fn matches(selector: Option<&str>, object: &Value) -> bool {
    let Some(selector) = selector else { return true };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let Some((key, value)) = term.split_once('=') else { return false };
        object["metadata"]["labels"][key].as_str() == Some(value)
    })
}

fn label_selector(query: Option<&str>) -> Option<String> {
    let query = query?;
    url_pairs(query).into_iter().find(|(k, _)| k == "labelSelector").map(|(_, v)| v)
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn record(state: &Shared, method: &Method, uri: &Uri) -> Option<Response> {
    let mut cluster = state.lock().expect("fake state");
    cluster.calls.push(format!("{method} {uri}"));
    if cluster.garbage {
        return Some(
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"kind\": \"JobL").into_response(),
        );
    }
    cluster.fail_with.map(|code| status(code, "InternalError", "etcdserver: request timed out"))
}

async fn jobs(
    State(state): State<Shared>,
    Path(ns): Path<String>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(failure) = record(&state, &method, &uri).await {
        return failure;
    }
    let mut cluster = state.lock().expect("fake state");
    if method == Method::GET {
        let selector = label_selector(query.as_deref());
        let items: Vec<Value> = cluster.jobs.values().filter(|j| matches(selector.as_deref(), j)).cloned().collect();
        return json_response(
            200,
            &json!({ "apiVersion": "batch/v1", "kind": "JobList", "metadata": { "resourceVersion": "100" },
                     "items": items }),
        );
    }
    // POST: create.
    if let Some((code, reason)) = cluster.refuse_create {
        return status(code, reason, "refused by the test");
    }
    let Ok(mut job) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    let Some(name) = job["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(422, "Invalid", "Job.batch \"\" is invalid: metadata.name: Required value");
    };
    if cluster.jobs.contains_key(&name) {
        return status(409, "AlreadyExists", &format!("jobs.batch \"{name}\" already exists"));
    }
    let uid = format!("uid-{name}");
    job["metadata"]["namespace"] = json!(ns);
    job["metadata"]["uid"] = json!(uid);
    job["metadata"]["creationTimestamp"] = json!(now());
    job["metadata"]["resourceVersion"] = json!("1");
    job["status"] = json!({ "active": 1, "startTime": now() });
    // The Job controller: one pod from the template, labelled with the job name.
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    labels["job-name"] = json!(name);
    labels["batch.kubernetes.io/job-name"] = json!(name);
    labels["controller-uid"] = json!(uid);
    let pod_name = format!("{name}-x7k2p");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": pod_name, "namespace": ns, "labels": labels, "creationTimestamp": now(),
                      "ownerReferences": [ { "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                                             "controller": true } ] },
        "spec": job["spec"]["template"]["spec"].clone(),
        "status": { "phase": "Pending", "conditions": [ { "type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient cpu." } ] }
    });
    cluster.pods.insert(pod_name, pod);
    cluster.jobs.insert(name, job.clone());
    json_response(201, &job)
}

async fn job(
    State(state): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Some(failure) = record(&state, &method, &uri).await {
        return failure;
    }
    let mut cluster = state.lock().expect("fake state");
    if method == Method::DELETE {
        cluster.deletes.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        let Some(job) = cluster.jobs.remove(&name) else {
            return status(404, "NotFound", &format!("jobs.batch \"{name}\" not found"));
        };
        cluster.pods.retain(|_, pod| pod["metadata"]["labels"]["job-name"].as_str() != Some(name.as_str()));
        return json_response(200, &job);
    }
    match cluster.jobs.get(&name) {
        Some(job) => json_response(200, job),
        None => status(404, "NotFound", &format!("jobs.batch \"{name}\" not found")),
    }
}

async fn pods(
    State(state): State<Shared>,
    Path(_ns): Path<String>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(failure) = record(&state, &method, &uri).await {
        return failure;
    }
    let cluster = state.lock().expect("fake state");
    let selector = label_selector(query.as_deref());
    let items: Vec<Value> = cluster.pods.values().filter(|p| matches(selector.as_deref(), p)).cloned().collect();
    json_response(
        200,
        &json!({ "apiVersion": "v1", "kind": "PodList", "metadata": { "resourceVersion": "100" }, "items": items }),
    )
}

async fn pod_log(
    State(state): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Response {
    if let Some(failure) = record(&state, &method, &uri).await {
        return failure;
    }
    let cluster = state.lock().expect("fake state");
    if !cluster.pods.contains_key(&name) {
        return status(404, "NotFound", &format!("pods \"{name}\" not found"));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], format!("pilot of {name} started\npilot done\n"))
        .into_response()
}

async fn secret(
    State(state): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Some(failure) = record(&state, &method, &uri).await {
        return failure;
    }
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "the body is not JSON");
    };
    if object["kind"] != "Secret" || object["metadata"]["name"].as_str() != Some(name.as_str()) {
        return status(422, "Invalid", "a Secret named as in the path is expected");
    }
    object["metadata"]["resourceVersion"] = json!("7");
    state.lock().expect("fake state").secrets.insert(name, object.clone());
    json_response(200, &object)
}

impl FakeKube {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Self {
        let cluster: Shared = Arc::default();
        let app = Router::new()
            .route("/apis/batch/v1/namespaces/{ns}/jobs", get(jobs).post(jobs))
            .route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", get(job).delete(job))
            .route("/api/v1/namespaces/{ns}/pods", get(pods))
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
            .route("/api/v1/namespaces/{ns}/secrets/{name}", axum::routing::patch(secret))
            .with_state(cluster.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, cluster, task }
    }

    /// The state, locked.
    pub fn state(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().expect("fake state")
    }

    /// Replaces the status of the pod of Job `job` (the kubelet's report).
    pub fn set_pod_status(&self, job: &str, status: Value) {
        let mut cluster = self.state();
        let pod = cluster
            .pods
            .values_mut()
            .find(|p| p["metadata"]["labels"]["job-name"].as_str() == Some(job))
            .expect("the job has a pod");
        pod["status"] = status;
    }

    /// Replaces the status of Job `job` (the Job controller's report).
    pub fn set_job_status(&self, job: &str, status: Value) {
        let mut cluster = self.state();
        cluster.jobs.get_mut(job).expect("the job exists")["status"] = status;
    }
}
