//! The server's Prometheus metrics. Names and labels are fixed here; labels are bounded sets
//! (states), never IDs.

use std::sync::Arc;

use panda_types::{JobStatus, TaskStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    from: &'static str,
    to: &'static str,
}

/// Counters the server keeps.
#[derive(Clone, Default)]
pub struct Metrics {
    /// `panda_server_tasks_submitted_total`.
    pub tasks_submitted: Counter,
    /// `panda_server_jobs_dispatched_total`.
    pub jobs_dispatched: Counter,
    task_transitions: Family<Transition, Counter>,
    job_transitions: Family<Transition, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under `panda_server_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let server = registry.sub_registry_with_prefix("panda_server");
        server.register("tasks_submitted", "Tasks accepted", metrics.tasks_submitted.clone());
        server.register("jobs_dispatched", "Jobs handed to pilots", metrics.jobs_dispatched.clone());
        server.register("task_transitions", "Task state changes", metrics.task_transitions.clone());
        server.register("job_transitions", "Job state changes", metrics.job_transitions.clone());
        metrics
    }

    /// Counts a task state change.
    pub fn task_transition(&self, from: TaskStatus, to: TaskStatus) {
        self.task_transitions.get_or_create(&Transition { from: from.as_str(), to: to.as_str() }).inc();
    }

    /// How many `from` → `to` job state changes were counted.
    pub fn job_transitions(&self, from: JobStatus, to: JobStatus) -> u64 {
        self.job_transitions.get_or_create(&Transition { from: from.as_str(), to: to.as_str() }).get()
    }

    /// Counts a job state change.
    pub fn job_transition(&self, from: JobStatus, to: JobStatus) {
        self.job_transitions.get_or_create(&Transition { from: from.as_str(), to: to.as_str() }).inc();
    }
}

/// A registry with the server's metrics.
pub fn registry() -> (Arc<Registry>, Metrics) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    (Arc::new(registry), metrics)
}
