//! The propagator's pure parts: the worker report of each queue (counts by state and the live
//! workers' IDs), and the grace the server's kills give pilots. When the server kills a job, its
//! pilot learns it at its next heartbeat and stops the payload; only a worker whose job is still
//! named after `grace` (the pilot did not stop it: hung, or lost its server) is killed through its
//! plugin.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use panda_types::WorkerStatus;
use tokio::time::Instant;

use crate::store::Worker;

/// One queue's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueReport {
    /// Workers by state name.
    pub by_status: BTreeMap<String, u32>,
    /// IDs of the live workers (submitted, ready, running, idle).
    pub live_worker_ids: Vec<String>,
}

/// The report of every queue in `queues` (a queue without workers reports zeros, so the server
/// drops what it had), from the harvester's pending and live workers.
pub fn reports<'a>(queues: impl IntoIterator<Item = &'a str>, workers: &[Worker]) -> BTreeMap<String, QueueReport> {
    let mut out: BTreeMap<String, QueueReport> =
        queues.into_iter().map(|q| (q.to_owned(), QueueReport::default())).collect();
    for worker in workers {
        let Some(report) = out.get_mut(&worker.queue) else { continue };
        *report.by_status.entry(worker.status.as_str().to_owned()).or_default() += 1;
        if matches!(
            worker.status,
            WorkerStatus::Submitted | WorkerStatus::Ready | WorkerStatus::Running | WorkerStatus::Idle
        ) {
            report.live_worker_ids.push(worker.id.to_string());
        }
    }
    out
}

/// Workers the server named as holding a killed job, since when.
#[derive(Debug, Default)]
pub struct KillTracker {
    named_since: HashMap<i64, (Instant, String)>,
}

impl KillTracker {
    /// Takes the workers named in this report (worker ID, reason) and answers those named for at
    /// least `grace`: their pilots did not stop. A worker no longer named (its pilot stopped the
    /// job, or the worker ended) is forgotten.
    pub fn due(&mut self, named: Vec<(i64, String)>, now: Instant, grace: Duration) -> Vec<(i64, String)> {
        let mut kept = HashMap::with_capacity(named.len());
        for (worker_id, reason) in named {
            let since = self.named_since.remove(&worker_id).map_or(now, |(since, _)| since);
            kept.insert(worker_id, (since, reason));
        }
        self.named_since = kept;
        let mut due: Vec<(i64, String)> = self
            .named_since
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= grace)
            .map(|(id, (_, reason))| (*id, reason.clone()))
            .collect();
        due.sort();
        due
    }

    /// How many workers are waiting out their grace.
    pub fn waiting(&self) -> usize {
        self.named_since.len()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn worker(id: i64, queue: &str, status: WorkerStatus) -> Worker {
        Worker {
            id,
            queue: queue.into(),
            status,
            batch_id: String::new(),
            exit_code: None,
            diag: String::new(),
            work_dir: String::new(),
            created_at: Utc::now(),
            submitted_at: None,
            ended_at: None,
            cleaned: false,
        }
    }

    #[test]
    fn reports_count_by_state_list_live_workers_and_cover_empty_queues() {
        let workers = [
            worker(1, "a", WorkerStatus::Pending),
            worker(2, "a", WorkerStatus::Running),
            worker(3, "a", WorkerStatus::Running),
            worker(4, "a", WorkerStatus::Idle),
            worker(5, "gone", WorkerStatus::Running),
        ];
        let reports = reports(["a", "b"], &workers);
        assert_eq!(reports.len(), 2);
        let a = &reports["a"];
        assert_eq!(
            a.by_status,
            BTreeMap::from([("idle".to_owned(), 1), ("pending".to_owned(), 1), ("running".to_owned(), 2)])
        );
        // Pending workers have not reached the resource: no pilot can hold a job there.
        assert_eq!(a.live_worker_ids, ["2", "3", "4"]);
        assert_eq!(reports["b"], QueueReport::default());
    }

    #[test]
    fn a_worker_is_due_only_after_being_named_for_the_whole_grace() {
        let grace = Duration::from_secs(60);
        let start = Instant::now();
        let mut tracker = KillTracker::default();
        let named = |ids: &[i64]| ids.iter().map(|id| (*id, format!("job of {id} killed"))).collect::<Vec<_>>();
        assert!(tracker.due(named(&[1, 2]), start, grace).is_empty());
        assert_eq!(tracker.waiting(), 2);
        // Worker 2's pilot stopped its job: no longer named, forgotten.
        assert!(tracker.due(named(&[1]), start + Duration::from_secs(30), grace).is_empty());
        assert_eq!(tracker.waiting(), 1);
        // Named again later: its grace starts over.
        assert_eq!(
            tracker.due(named(&[1, 2]), start + Duration::from_secs(60), grace),
            [(1, "job of 1 killed".to_owned())]
        );
        assert_eq!(tracker.due(named(&[1, 2]), start + Duration::from_secs(119), grace).len(), 1);
        assert_eq!(tracker.due(named(&[1, 2]), start + Duration::from_secs(120), grace).len(), 2);
        // Nothing named: nothing waits.
        assert!(tracker.due(Vec::new(), start + Duration::from_secs(500), grace).is_empty());
        assert_eq!(tracker.waiting(), 0);
    }
}
