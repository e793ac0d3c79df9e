//! How many workers to submit to a queue this cycle (the reference's WorkerAdjuster, pull mode):
//! one documented formula, and the reason for the number, so "why N workers" is never a mystery.
//!
//! ```text
//! 0                                          if the queue is offline or no job is activated
//! queued_cap = max_queued_workers (default max_workers)
//! n = min(activated, queued_cap) - queued    (never negative)
//! n = min(n, max_workers - queued - running, max_new_workers_per_cycle)
//! ```

/// Workers of a queue now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Pending or submitted: not running yet.
    pub queued: u32,
    /// Running, idle or ready.
    pub running: u32,
}

/// A queue's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Online.
    pub online: bool,
    /// Cap on queued + running.
    pub max_workers: u32,
    /// Cap on queued.
    pub max_queued_workers: Option<u32>,
    /// Cap per cycle.
    pub max_new_workers_per_cycle: Option<u32>,
}

/// The number and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    /// Workers to submit.
    pub new_workers: u32,
    /// The limit that decided it.
    pub reason: String,
}

/// Applies the formula.
pub fn new_workers(activated: u32, counts: WorkerCounts, limits: Limits) -> Adjustment {
    let result = |n: u32, reason: String| Adjustment { new_workers: n, reason };
    if !limits.online {
        return result(0, "queue is offline".to_owned());
    }
    if activated == 0 {
        return result(0, "no activated jobs".to_owned());
    }
    let queued_cap = limits.max_queued_workers.unwrap_or(limits.max_workers);
    let wanted = activated.min(queued_cap);
    if counts.queued >= wanted {
        return result(
            0,
            format!(
                "{} workers already queued for {activated} activated jobs (queued cap {queued_cap})",
                counts.queued
            ),
        );
    }
    let mut n = wanted - counts.queued;
    let mut reason = format!("{activated} activated jobs, {} queued workers, queued cap {queued_cap}", counts.queued);
    let headroom = limits.max_workers.saturating_sub(counts.queued + counts.running);
    if headroom < n {
        n = headroom;
        reason = format!(
            "max_workers {} reached ({} queued, {} running)",
            limits.max_workers, counts.queued, counts.running
        );
    }
    if let Some(per_cycle) = limits.max_new_workers_per_cycle
        && per_cycle < n
    {
        n = per_cycle;
        reason = format!("max_new_workers_per_cycle {per_cycle}");
    }
    result(n, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_workers: u32, queued: Option<u32>, per_cycle: Option<u32>) -> Limits {
        Limits { online: true, max_workers, max_queued_workers: queued, max_new_workers_per_cycle: per_cycle }
    }

    fn check(activated: u32, queued: u32, running: u32, limits: Limits, expected: u32) {
        let got = new_workers(activated, WorkerCounts { queued, running }, limits);
        assert_eq!(
            got.new_workers, expected,
            "activated {activated} queued {queued} running {running}: {}",
            got.reason
        );
    }

    #[test]
    fn formula() {
        check(0, 0, 0, limits(10, None, None), 0); // nothing to run
        check(3, 0, 0, limits(10, None, None), 3); // one per activated job
        check(3, 1, 0, limits(10, None, None), 2); // queued ones count
        check(30, 0, 0, limits(10, None, None), 10); // max_workers
        check(30, 0, 8, limits(10, None, None), 2); // running ones use slots
        check(30, 0, 0, limits(10, Some(4), None), 4); // queued cap
        check(30, 0, 0, limits(10, None, Some(3)), 3); // per cycle
        check(30, 5, 5, limits(10, None, None), 0); // full
    }

    #[test]
    fn offline_queue_gets_nothing() {
        let mut l = limits(10, None, None);
        l.online = false;
        let got = new_workers(5, WorkerCounts::default(), l);
        assert_eq!(got.new_workers, 0);
        assert_eq!(got.reason, "queue is offline");
    }

    #[test]
    fn reason_names_the_binding_limit() {
        let got = new_workers(30, WorkerCounts { queued: 0, running: 8 }, limits(10, None, None));
        assert!(got.reason.starts_with("max_workers 10 reached"), "{}", got.reason);
    }
}
