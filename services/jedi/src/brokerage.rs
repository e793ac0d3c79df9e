//! Job brokerage: which queue runs each job. A pure function over a snapshot of the queues, so
//! tests, benchmarks and the service run the same code.
//!
//! Filters, in order (the first one a queue fails is recorded for the explanation): the task's
//! queue list, status `online`, a recent harvester heartbeat, cores, memory, disk, walltime.
//! Among the survivors each job goes to the queue with the lowest load per worker slot,
//! counting the jobs already assigned in this round, so a task spreads over equal queues.

use std::fmt;

use panda_types::{Resources, TaskSpec};

/// A queue as brokerage sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    /// Name.
    pub name: String,
    /// `online`, `offline`, ...
    pub status: String,
    /// Largest job it takes (zero: unlimited).
    pub max_resources: Resources,
    /// Worker slots.
    pub max_workers: u32,
    /// Activated + sent + running jobs now.
    pub load: u32,
    /// Seconds since its harvester last reported.
    pub seconds_since_heartbeat: u64,
}

/// Why a queue was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not in the task's queue list.
    NotRequested,
    /// Status is not online.
    NotOnline(String),
    /// Its harvester has not reported for too long.
    Stale(u64),
    /// Too few cores.
    Cores(Shortfall),
    /// Too little memory (MB).
    Memory(Shortfall),
    /// Too little disk (MB).
    Disk(Shortfall),
    /// Too short a walltime (seconds).
    Walltime(Shortfall),
}

/// A resource the job needs more of than the queue offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// What the job asks for.
    pub need: u64,
    /// What the queue offers.
    pub have: u64,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotRequested => write!(f, "not in task.queues"),
            Rejection::NotOnline(status) => write!(f, "status is {status}"),
            Rejection::Stale(seconds) => write!(f, "no harvester heartbeat for {seconds}s"),
            Rejection::Cores(Shortfall { need, have }) => write!(f, "needs {need} cores, queue offers {have}"),
            Rejection::Memory(Shortfall { need, have }) => write!(f, "needs {need} MB memory, queue offers {have}"),
            Rejection::Disk(Shortfall { need, have }) => write!(f, "needs {need} MB disk, queue offers {have}"),
            Rejection::Walltime(Shortfall { need, have }) => {
                write!(f, "needs {need}s walltime, queue offers {have}s")
            }
        }
    }
}

/// The outcome of brokering one task.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Queue name for each job, in order.
    Assigned(Vec<String>),
    /// No queue passed; each queue with the first filter it failed.
    NoQueue(Vec<(String, Rejection)>),
}

/// Explains a [`Decision::NoQueue`] in one line.
pub fn explain(rejections: &[(String, Rejection)]) -> String {
    if rejections.is_empty() {
        return "no queue can run this task: no queue is registered (is a harvester running?)".to_owned();
    }
    let reasons: Vec<String> = rejections.iter().map(|(q, r)| format!("{q}: {r}")).collect();
    format!("no queue can run this task: {}", reasons.join("; "))
}

fn check(queue: &QueueView, spec: &TaskSpec, stale_after: u64) -> Result<(), Rejection> {
    if !spec.queues.is_empty() && !spec.queues.iter().any(|q| q.as_str() == queue.name) {
        return Err(Rejection::NotRequested);
    }
    if queue.status != "online" {
        return Err(Rejection::NotOnline(queue.status.clone()));
    }
    if queue.seconds_since_heartbeat > stale_after {
        return Err(Rejection::Stale(queue.seconds_since_heartbeat));
    }
    let need = &spec.resources;
    let have = &queue.max_resources;
    let short = |need: u64, have: u64| (have != 0 && need > have).then_some(Shortfall { need, have });
    if let Some(s) = short(u64::from(need.cores.max(1)), u64::from(have.cores)) {
        return Err(Rejection::Cores(s));
    }
    if let Some(s) = short(need.memory_mb, have.memory_mb) {
        return Err(Rejection::Memory(s));
    }
    if let Some(s) = short(need.disk_mb, have.disk_mb) {
        return Err(Rejection::Disk(s));
    }
    if let Some(s) = short(need.walltime_seconds, have.walltime_seconds) {
        return Err(Rejection::Walltime(s));
    }
    Ok(())
}

/// Brokers `n_jobs` jobs of a task onto the queues.
pub fn broker(spec: &TaskSpec, n_jobs: usize, queues: &[QueueView], stale_after_seconds: u64) -> Decision {
    let mut rejected = Vec::new();
    let mut candidates: Vec<(&QueueView, u64)> = Vec::new();
    for queue in queues {
        match check(queue, spec, stale_after_seconds) {
            Ok(()) => candidates.push((queue, u64::from(queue.load))),
            Err(reason) => rejected.push((queue.name.clone(), reason)),
        }
    }
    if candidates.is_empty() {
        return Decision::NoQueue(rejected);
    }
    let mut assigned = Vec::with_capacity(n_jobs);
    for _ in 0..n_jobs {
        // Lowest load per slot; compare a/b < c/d as a*d < c*b to stay in integers.
        let Some((best, load)) = candidates.iter_mut().min_by(|(qa, la), (qb, lb)| {
            let (sa, sb) = (u64::from(qa.max_workers.max(1)), u64::from(qb.max_workers.max(1)));
            (*la * sb).cmp(&(*lb * sa)).then_with(|| qa.name.cmp(&qb.name))
        }) else {
            break;
        };
        *load += 1;
        assigned.push(best.name.clone());
    }
    Decision::Assigned(assigned)
}

#[cfg(test)]
mod tests {
    use panda_types::spec::TaskSpecDraft;

    use super::*;

    fn spec(cores: u32, memory_mb: u64, queues: &[&str]) -> TaskSpec {
        TaskSpecDraft {
            name: "t".into(),
            command: "true".into(),
            n_jobs: Some(1),
            resources: Resources { cores, memory_mb, ..Default::default() },
            queues: queues.iter().map(|q| q.to_string()).collect(),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    fn queue(name: &str, cores: u32, memory_mb: u64, slots: u32, load: u32) -> QueueView {
        QueueView {
            name: name.into(),
            status: "online".into(),
            max_resources: Resources { cores, memory_mb, ..Default::default() },
            max_workers: slots,
            load,
            seconds_since_heartbeat: 1,
        }
    }

    #[test]
    fn spreads_over_equal_queues_by_load() {
        let queues = [queue("a", 4, 8000, 2, 0), queue("b", 4, 8000, 2, 1)];
        let Decision::Assigned(picks) = broker(&spec(1, 1000, &[]), 3, &queues, 60) else { panic!() };
        assert_eq!(picks, vec!["a", "a", "b"]);
    }

    #[test]
    fn load_is_relative_to_slots() {
        let queues = [queue("small", 4, 0, 1, 1), queue("big", 4, 0, 100, 10)];
        let Decision::Assigned(picks) = broker(&spec(1, 0, &[]), 1, &queues, 60) else { panic!() };
        assert_eq!(picks, vec!["big"]);
    }

    #[test]
    fn each_filter_rejects_with_a_reason() {
        let mut offline = queue("off", 8, 0, 1, 0);
        offline.status = "offline".into();
        let mut stale = queue("stale", 8, 0, 1, 0);
        stale.seconds_since_heartbeat = 600;
        let queues = [offline, stale, queue("few-cores", 2, 0, 1, 0), queue("low-mem", 8, 1000, 1, 0)];
        let Decision::NoQueue(rejections) = broker(&spec(4, 2000, &[]), 1, &queues, 60) else { panic!() };
        assert_eq!(
            rejections,
            vec![
                ("off".into(), Rejection::NotOnline("offline".into())),
                ("stale".into(), Rejection::Stale(600)),
                ("few-cores".into(), Rejection::Cores(Shortfall { need: 4, have: 2 })),
                ("low-mem".into(), Rejection::Memory(Shortfall { need: 2000, have: 1000 })),
            ]
        );
        let text = explain(&rejections);
        assert!(text.contains("few-cores: needs 4 cores, queue offers 2"), "{text}");
    }

    #[test]
    fn task_queue_list_restricts_candidates() {
        let queues = [queue("a", 0, 0, 1, 0), queue("b", 0, 0, 1, 5)];
        let Decision::Assigned(picks) = broker(&spec(1, 0, &["b"]), 2, &queues, 60) else { panic!() };
        assert_eq!(picks, vec!["b", "b"]);
    }

    #[test]
    fn no_queues_explains_harvester() {
        let Decision::NoQueue(rejections) = broker(&spec(1, 0, &[]), 1, &[], 60) else { panic!() };
        assert!(explain(&rejections).contains("harvester"));
    }
}
