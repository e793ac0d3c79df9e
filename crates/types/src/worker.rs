//! Harvester worker states and transitions (reference: `harvester-pilot.md` section 2.1).

use crate::macros::state_enum;
use crate::state::StateMachine;

state_enum! {
    /// The state of a harvester worker (one pilot slot on a resource).
    WorkerStatus {
        /// Row written just before the plugin's submit call.
        Pending => "pending",
        /// Accepted by the batch system, not running yet.
        Submitted => "submitted",
        /// Late binding: running and asking for a job.
        Ready => "ready",
        /// Slot active.
        Running => "running",
        /// Started but not running now, or ended with post-processing left.
        Idle => "idle",
        /// Ended successfully.
        Finished => "finished",
        /// Ended with a batch or payload failure.
        Failed => "failed",
        /// Killed, removed, lost or not found.
        Cancelled => "cancelled",
        /// Submission failed; never reached the batch system.
        Missed => "missed",
    }
}

impl StateMachine for WorkerStatus {
    const ENTITY: &'static str = "worker";

    fn can_transition_to(self, next: Self) -> bool {
        use WorkerStatus::*;
        if self.is_final() || self == next {
            return false;
        }
        match self {
            Pending => matches!(next, Submitted | Running | Missed),
            Submitted => matches!(next, Ready | Running | Idle | Finished | Failed | Cancelled),
            Ready => matches!(next, Running | Finished | Failed | Cancelled),
            Running => matches!(next, Idle | Finished | Failed | Cancelled),
            Idle => matches!(next, Running | Finished | Failed | Cancelled),
            Finished | Failed | Cancelled | Missed => false,
        }
    }

    fn is_final(self) -> bool {
        matches!(self, WorkerStatus::Finished | WorkerStatus::Failed | WorkerStatus::Cancelled | WorkerStatus::Missed)
    }
}
