//! Worker state from a Job and its Pods, as the API server reports them (pure; no client).
//!
//! Pod information wins over Job information while the Job has not ended; once the Job carries a
//! `Complete` or `Failed` condition, that decides, and its pods only add the details (an
//! `OOMKilled` container, an eviction, the exit code).
//!
//! | Observation | Worker |
//! |---|---|
//! | Job `Complete` | finished |
//! | Job `Failed` (`DeadlineExceeded`, `BackoffLimitExceeded`, ...) | failed; the pod's reason (OOMKilled, Evicted) and exit code when one is left |
//! | Pod `Failed`, reason `Evicted` | failed, "evicted" |
//! | Pod `Failed`, a container terminated `OOMKilled` | failed, exit code 137 |
//! | Pod `Failed` otherwise | failed, the container's exit code |
//! | Pod `Succeeded` | finished |
//! | Pod `Running` | running |
//! | Pod `Pending`, a container waiting in `CreateContainerError`, `CreateContainerConfigError`, `CrashLoopBackOff`, `InvalidImageName` | failed |
//! | Pod `Pending`, `ImagePullBackOff` / `ErrImagePull` | submitted with the reason; failed once the Job is older than `image_pull_timeout` |
//! | Pod `Pending` otherwise (unschedulable, creating) | submitted, with the scheduler's message |
//! | Pod `Unknown` | cannot tell (node lost); the worker keeps its state |
//! | Job without pods | submitted |

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use panda_types::WorkerStatus;

use crate::plugins::{BatchState, CheckResult};

/// Container waiting reasons that never resolve by themselves.
const BROKEN_WAITING: &[&str] =
    &["CreateContainerError", "CreateContainerConfigError", "CrashLoopBackOff", "InvalidImageName"];
/// Container waiting reasons of an image that cannot be pulled (yet).
const IMAGE_PULL: &[&str] = &["ImagePullBackOff", "ErrImagePull"];

/// What the status mapping needs besides the objects.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Now, in seconds since the epoch.
    pub now: i64,
    /// A pod whose image cannot be pulled fails its worker once the Job is this old (seconds).
    pub image_pull_timeout: i64,
}

/// The worker state of Job `job` and its pods (newest pod last is not required).
pub fn map(name: &str, job: &Job, pods: &[&Pod], clock: Clock) -> CheckResult {
    let pod = newest(pods);
    if let Some((kind, reason, message)) = ended(job) {
        let mut diag = format!("Kubernetes job {name} {kind}");
        if !reason.is_empty() {
            diag.push_str(&format!(" ({reason})"));
        }
        if !message.is_empty() {
            diag.push_str(&format!(": {message}"));
        }
        if kind == "Complete" {
            return Ok(BatchState { status: WorkerStatus::Finished, exit_code: Some(0), diag: String::new() });
        }
        let (exit_code, detail) = pod.map(pod_failure).unwrap_or((None, String::new()));
        if !detail.is_empty() {
            diag.push_str(&format!("; {detail}"));
        }
        return Ok(BatchState { status: WorkerStatus::Failed, exit_code, diag });
    }
    let Some(pod) = pod else {
        return Ok(BatchState {
            status: WorkerStatus::Submitted,
            exit_code: None,
            diag: format!("Kubernetes job {name} has no pod yet"),
        });
    };
    let pod_name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    match phase {
        "Running" => Ok(BatchState { status: WorkerStatus::Running, exit_code: None, diag: String::new() }),
        "Succeeded" => Ok(BatchState { status: WorkerStatus::Finished, exit_code: Some(0), diag: String::new() }),
        "Failed" => {
            let (exit_code, detail) = pod_failure(pod);
            Ok(BatchState { status: WorkerStatus::Failed, exit_code, diag: format!("pod {pod_name} failed: {detail}") })
        }
        "Unknown" => Err(format!("pod {pod_name} is Unknown (its node does not report)")),
        _ => Ok(pending(name, pod_name, job, pod, clock)),
    }
}

/// The Job's final condition, if any: (type, reason, message).
fn ended(job: &Job) -> Option<(&str, &str, &str)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
        .map(|c| (c.type_.as_str(), c.reason.as_deref().unwrap_or_default(), c.message.as_deref().unwrap_or_default()))
}

fn newest<'a>(pods: &[&'a Pod]) -> Option<&'a Pod> {
    pods.iter().copied().max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()))
}

fn containers(pod: &Pod) -> &[ContainerStatus] {
    pod.status.as_ref().and_then(|s| s.container_statuses.as_deref()).unwrap_or_default()
}

/// Why a pod failed: its exit code and a short reason (eviction, OOM, the container's exit).
fn pod_failure(pod: &Pod) -> (Option<i32>, String) {
    let status = pod.status.as_ref();
    if status.and_then(|s| s.reason.as_deref()) == Some("Evicted") {
        let message = status.and_then(|s| s.message.as_deref()).unwrap_or_default();
        return (None, format!("Evicted: {message}").trim_end_matches(": ").to_owned());
    }
    for container in containers(pod) {
        let terminated = container.state.as_ref().and_then(|s| s.terminated.as_ref());
        if let Some(t) = terminated {
            let reason = t.reason.as_deref().unwrap_or("Error");
            if reason == "OOMKilled" {
                return (
                    Some(t.exit_code),
                    format!("container {} OOMKilled (exit code {})", container.name, t.exit_code),
                );
            }
            if t.exit_code != 0 {
                return (
                    Some(t.exit_code),
                    format!("container {} {reason} (exit code {})", container.name, t.exit_code),
                );
            }
        }
    }
    match status.and_then(|s| s.reason.as_deref()) {
        Some(reason) => (None, reason.to_owned()),
        None => (None, String::new()),
    }
}

fn pending(job_name: &str, pod_name: &str, job: &Job, pod: &Pod, clock: Clock) -> BatchState {
    for container in containers(pod) {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let message = waiting.message.as_deref().unwrap_or_default();
        let diag = format!("pod {pod_name} container {} {reason}: {message}", container.name);
        let diag = diag.trim_end_matches(": ").to_owned();
        if BROKEN_WAITING.contains(&reason) {
            return BatchState { status: WorkerStatus::Failed, exit_code: None, diag };
        }
        if IMAGE_PULL.contains(&reason) {
            let created = job.metadata.creation_timestamp.as_ref().map_or(clock.now, |t| t.0.as_second());
            if clock.now - created >= clock.image_pull_timeout {
                return BatchState {
                    status: WorkerStatus::Failed,
                    exit_code: None,
                    diag: format!("{diag} (gave up after {}s)", clock.image_pull_timeout),
                };
            }
            return BatchState { status: WorkerStatus::Submitted, exit_code: None, diag };
        }
    }
    // Not scheduled yet: the scheduler says why.
    let unscheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False"));
    let diag = match unscheduled {
        Some(c) => format!(
            "Kubernetes job {job_name} pending ({}): {}",
            c.reason.as_deref().unwrap_or("Unschedulable"),
            c.message.as_deref().unwrap_or_default()
        ),
        None => format!("Kubernetes job {job_name} pending"),
    };
    BatchState { status: WorkerStatus::Submitted, exit_code: None, diag }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(value: serde_json::Value) -> Job {
        serde_json::from_value(value).expect("a Job")
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a Pod")
    }

    const CLOCK: Clock = Clock { now: 1_767_225_600 + 120, image_pull_timeout: 600 };

    fn running_job() -> Job {
        job(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": "panda-q-1", "creationTimestamp": "2026-01-01T00:00:00Z" },
            "status": { "active": 1, "startTime": "2026-01-01T00:00:00Z" }
        }))
    }

    fn with_condition(kind: &str, reason: &str, message: &str) -> Job {
        let mut job = running_job();
        job.status = Some(
            serde_json::from_value(serde_json::json!({
                "failed": 1,
                "conditions": [
                    { "type": "FailureTarget", "status": "True", "reason": reason },
                    { "type": kind, "status": "True", "reason": reason, "message": message,
                      "lastTransitionTime": "2026-01-01T00:01:00Z" }
                ]
            }))
            .expect("a JobStatus"),
        );
        job
    }

    fn pod_in(phase: &str, extra: serde_json::Value) -> Pod {
        let mut status = serde_json::json!({ "phase": phase });
        if let (Some(status), Some(extra)) = (status.as_object_mut(), extra.as_object()) {
            status.extend(extra.clone());
        }
        pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "panda-q-1-abcde", "creationTimestamp": "2026-01-01T00:00:01Z",
                          "labels": { "job-name": "panda-q-1" } },
            "status": status
        }))
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({ "containerStatuses": [ { "name": "pilot", "image": "panda/pilot:1", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": reason, "message": message } } } ] })
    }

    fn terminated(reason: &str, exit_code: i32) -> serde_json::Value {
        serde_json::json!({ "containerStatuses": [ { "name": "pilot", "image": "panda/pilot:1", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": { "terminated": { "reason": reason, "exitCode": exit_code } } } ] })
    }

    fn check(job: &Job, pods: &[Pod], clock: Clock) -> CheckResult {
        map("panda-q-1", job, &pods.iter().collect::<Vec<_>>(), clock)
    }

    fn status(result: &CheckResult) -> WorkerStatus {
        result.as_ref().expect("a state").status
    }

    #[test]
    fn job_conditions_decide_once_the_job_ended() {
        let mut complete = running_job();
        complete.status = Some(
            serde_json::from_value(serde_json::json!({ "succeeded": 1, "conditions": [
                { "type": "SuccessCriteriaMet", "status": "True" }, { "type": "Complete", "status": "True" } ] }))
            .unwrap(),
        );
        let finished = check(&complete, &[pod_in("Succeeded", terminated("Completed", 0))], CLOCK).unwrap();
        assert_eq!((finished.status, finished.exit_code), (WorkerStatus::Finished, Some(0)));

        // Deadline exceeded while the pod is still being stopped: failed, with the Job's reason.
        let deadline = with_condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline");
        let state = check(&deadline, &[pod_in("Running", serde_json::json!({}))], CLOCK).unwrap();
        assert_eq!(state.status, WorkerStatus::Failed);
        assert!(state.diag.contains("DeadlineExceeded") && state.diag.contains("deadline"), "{}", state.diag);

        // A condition that is not True does not count.
        let mut not_yet = with_condition("Failed", "BackoffLimitExceeded", "");
        if let Some(c) = not_yet.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[1].status = "False".into();
        }
        assert_eq!(status(&check(&not_yet, &[pod_in("Running", serde_json::json!({}))], CLOCK)), WorkerStatus::Running);
    }

    #[test]
    fn oom_killed_and_evicted_pods_fail_their_worker_with_the_reason() {
        let backoff = with_condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit");
        let state = check(&backoff, &[pod_in("Failed", terminated("OOMKilled", 137))], CLOCK).unwrap();
        assert_eq!((state.status, state.exit_code), (WorkerStatus::Failed, Some(137)));
        assert!(state.diag.contains("BackoffLimitExceeded") && state.diag.contains("OOMKilled"), "{}", state.diag);

        // The pod failed before the Job controller noticed.
        let state = check(&running_job(), &[pod_in("Failed", terminated("OOMKilled", 137))], CLOCK).unwrap();
        assert_eq!((state.status, state.exit_code), (WorkerStatus::Failed, Some(137)));
        assert!(state.diag.contains("OOMKilled"), "{}", state.diag);

        let evicted = pod_in(
            "Failed",
            serde_json::json!({ "reason": "Evicted", "message": "The node was low on resource: memory." }),
        );
        let state = check(&running_job(), &[evicted], CLOCK).unwrap();
        assert_eq!(state.status, WorkerStatus::Failed);
        assert!(state.diag.contains("Evicted: The node was low on resource: memory."), "{}", state.diag);

        let state = check(&running_job(), &[pod_in("Failed", terminated("Error", 3))], CLOCK).unwrap();
        assert_eq!((state.status, state.exit_code), (WorkerStatus::Failed, Some(3)));
    }

    #[test]
    fn pod_phases_map_to_worker_states() {
        let job = running_job();
        assert_eq!(status(&check(&job, &[], CLOCK)), WorkerStatus::Submitted);
        assert_eq!(status(&check(&job, &[pod_in("Pending", serde_json::json!({}))], CLOCK)), WorkerStatus::Submitted);
        assert_eq!(status(&check(&job, &[pod_in("Running", serde_json::json!({}))], CLOCK)), WorkerStatus::Running);
        assert_eq!(
            status(&check(&job, &[pod_in("Succeeded", terminated("Completed", 0))], CLOCK)),
            WorkerStatus::Finished
        );
        let unknown = check(&job, &[pod_in("Unknown", serde_json::json!({}))], CLOCK).unwrap_err();
        assert!(unknown.contains("Unknown"), "{unknown}");

        // The newest pod decides (an older one failed, its replacement runs).
        let mut old = pod_in("Failed", terminated("Error", 1));
        old.metadata.creation_timestamp = serde_json::from_value(serde_json::json!("2025-12-31T23:00:00Z")).unwrap();
        let pods = [pod_in("Running", serde_json::json!({})), old];
        assert_eq!(status(&check(&job, &pods, CLOCK)), WorkerStatus::Running);
    }

    #[test]
    fn pending_pods_say_why_and_broken_ones_fail() {
        let job = running_job();
        let unschedulable = pod_in(
            "Pending",
            serde_json::json!({ "conditions": [ { "type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu." } ] }),
        );
        let state = check(&job, &[unschedulable], CLOCK).unwrap();
        assert_eq!(state.status, WorkerStatus::Submitted);
        assert!(state.diag.contains("Unschedulable") && state.diag.contains("Insufficient cpu"), "{}", state.diag);

        let pull = pod_in("Pending", waiting("ImagePullBackOff", "Back-off pulling image \"panda/pilot:nope\""));
        let state = check(&job, std::slice::from_ref(&pull), CLOCK).unwrap();
        assert_eq!(state.status, WorkerStatus::Submitted);
        assert!(state.diag.contains("ImagePullBackOff") && state.diag.contains("panda/pilot:nope"), "{}", state.diag);
        // The same pod past the timeout (the Job was created 120 s before CLOCK.now).
        let state = check(&job, &[pull], Clock { image_pull_timeout: 60, ..CLOCK }).unwrap();
        assert_eq!(state.status, WorkerStatus::Failed);
        assert!(state.diag.contains("gave up after 60s"), "{}", state.diag);

        let crash = pod_in("Pending", waiting("CreateContainerConfigError", "secret \"panda-token\" not found"));
        let state = check(&job, &[crash], CLOCK).unwrap();
        assert_eq!(state.status, WorkerStatus::Failed);
        assert!(state.diag.contains("secret \"panda-token\" not found"), "{}", state.diag);
    }
}
