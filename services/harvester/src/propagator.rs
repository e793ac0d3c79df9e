//! The propagator's pure parts: the worker report of each queue (counts by state and the live
//! workers' IDs), and the grace the server's kills give pilots. When the server kills a job, its
//! pilot learns it at its next heartbeat and stops the payload; only a worker whose job is still
//! named after `grace` (the pilot did not stop it: hung, or lost its server) is killed through its
//! plugin. When each named worker was first named is kept in the harvester's database.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use panda_types::WorkerStatus;

use crate::store::{NamedKills, Worker};

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

/// The server's kills after this report: which workers are named since when (to store, so a
/// restart neither resets nor loses a grace), and which are due for a kill through the plugin,
/// named for at least `grace` (their pilots did not stop), in ID order. A worker no longer named
/// (its pilot stopped the job, or the worker ended) is forgotten; named again later, its grace
/// starts over.
pub fn kills_due(
    before: &NamedKills,
    named: Vec<(i64, String)>,
    now: DateTime<Utc>,
    grace: Duration,
) -> (NamedKills, Vec<(i64, String)>) {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut after = NamedKills::new();
    for (worker_id, reason) in named {
        let since = before.get(&worker_id).map_or(now, |(since, _)| *since);
        after.insert(worker_id, (since, reason));
    }
    let due = after
        .iter()
        .filter(|(_, (since, _))| now.signed_duration_since(*since) >= grace)
        .map(|(id, (_, reason))| (*id, reason.clone()))
        .collect();
    (after, due)
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
        let start = Utc::now();
        let at = |seconds: i64| start + chrono::Duration::seconds(seconds);
        let named = |ids: &[i64]| ids.iter().map(|id| (*id, format!("job of {id} killed"))).collect::<Vec<_>>();
        let (kept, due) = kills_due(&NamedKills::new(), named(&[1, 2]), at(0), grace);
        assert!(due.is_empty());
        assert_eq!(kept.len(), 2);
        // Worker 2's pilot stopped its job: no longer named, forgotten.
        let (kept, due) = kills_due(&kept, named(&[1]), at(30), grace);
        assert!(due.is_empty());
        assert_eq!(kept.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(kept[&1].0, at(0), "worker 1 keeps the start of its grace");
        // Named again later: its grace starts over.
        let (kept, due) = kills_due(&kept, named(&[1, 2]), at(60), grace);
        assert_eq!(due, [(1, "job of 1 killed".to_owned())]);
        let (kept, due) = kills_due(&kept, named(&[1, 2]), at(119), grace);
        assert_eq!(due.len(), 1);
        let (kept, due) = kills_due(&kept, named(&[1, 2]), at(120), grace);
        assert_eq!(due.len(), 2);
        // Nothing named: nothing waits.
        let (kept, due) = kills_due(&kept, Vec::new(), at(500), grace);
        assert!(due.is_empty() && kept.is_empty());
    }
}
