//! The weight that picks among the queues that passed the filters.
//!
//! `weight = (R + 1) / ((queued + assigned + taken + 10) × many_assigned) × locality` where R is
//! the largest of running jobs, pilots and capacity (worker slots); `many_assigned =
//! clamp(assigned / queued, 1, 2)` penalises a queue whose brokered jobs are not becoming
//! dispatchable; `locality = (local bytes + total bytes) / total bytes` (1 to 2) favours the sites
//! that hold the input. `taken` counts the jobs this round gave the queue, so the weight falls as
//! a queue fills and the next job goes elsewhere.

use std::fmt;

use super::{DataLocality, QueueState};

/// How a queue scored.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// R: the largest of running jobs, pilots and capacity.
    pub slots: u32,
    /// Queued (activated) jobs before this round.
    pub queued: u32,
    /// Brokered, not yet dispatchable jobs.
    pub assigned: u32,
    /// Jobs given earlier in this cycle (other tasks).
    pub taken: u32,
    /// 1..=2.
    pub many_assigned: f64,
    /// 1..=2.
    pub locality: f64,
    /// The result.
    pub weight: f64,
}

impl Score {
    /// The weight after `more` jobs of this round went to the queue.
    pub fn with_more_jobs(&self, more: u32) -> f64 {
        weight(
            self.slots,
            self.queued,
            self.assigned,
            self.taken.saturating_add(more),
            self.many_assigned,
            self.locality,
        )
    }
}

fn weight(slots: u32, queued: u32, assigned: u32, taken: u32, many_assigned: f64, locality: f64) -> f64 {
    let waiting = f64::from(queued) + f64::from(assigned) + f64::from(taken) + 10.0;
    (f64::from(slots) + 1.0) / (waiting * many_assigned) * locality
}

/// Scores one queue for a task whose input is `input`.
pub fn score(queue: &QueueState, input: &DataLocality, taken: u32) -> Score {
    let load = &queue.load;
    let slots = load.running.max(load.pilots).max(queue.capacity);
    let many_assigned = (f64::from(load.assigned) / f64::from(load.queued.max(1))).clamp(1.0, 2.0);
    let locality = if input.is_known() {
        (input.at(&queue.site) as f64 + input.total_bytes as f64) / input.total_bytes as f64
    } else {
        1.0
    };
    Score {
        slots,
        queued: load.queued,
        assigned: load.assigned,
        taken,
        many_assigned,
        locality,
        weight: weight(slots, load.queued, load.assigned, taken, many_assigned, locality),
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "weight {:.4} = (R {} + 1) / ((queued {} + assigned {} + taken {} + 10) × {:.2}) × locality {:.2}",
            self.weight, self.slots, self.queued, self.assigned, self.taken, self.many_assigned, self.locality
        )
    }
}
