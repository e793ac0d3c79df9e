//! The harvester's Prometheus metrics. Labels are bounded: configured queue names and states.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Submission {
    queue: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    queue: String,
    to: &'static str,
}

/// Counters the harvester keeps.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    submissions: Family<Submission, Counter>,
    transitions: Family<Transition, Counter>,
}

impl Metrics {
    /// Registers `panda_harvester_worker_submissions_total{queue,outcome}` and
    /// `panda_harvester_worker_transitions_total{queue,to}`.
    pub fn register(&self, registry: &mut Registry) {
        let harvester = registry.sub_registry_with_prefix("panda_harvester");
        harvester.register("worker_submissions", "Workers submitted, by outcome", self.submissions.clone());
        harvester.register("worker_transitions", "Worker state changes", self.transitions.clone());
    }

    /// Counts a submission (`submitted` or `missed`).
    pub fn submission(&self, queue: &str, outcome: &'static str) {
        self.submissions.get_or_create(&Submission { queue: queue.to_owned(), outcome }).inc();
    }

    /// Counts a state change.
    pub fn transition(&self, queue: &str, to: panda_types::WorkerStatus) {
        self.transitions.get_or_create(&Transition { queue: queue.to_owned(), to: to.as_str() }).inc();
    }
}
