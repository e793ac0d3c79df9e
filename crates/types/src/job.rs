//! Job states and transitions (reference: PanDA job states, `server-jedi.md` section 2).

use crate::macros::state_enum;
use crate::state::StateMachine;

state_enum! {
    /// The state of a job, with the reference's names.
    JobStatus {
        /// Just inserted, not set up.
        Pending => "pending",
        /// Set up; inputs may need moving.
        Defined => "defined",
        /// Placeholder (event service).
        Waiting => "waiting",
        /// Input being moved to the queue's storage.
        Assigned => "assigned",
        /// Dispatchable: a pilot of its queue may take it.
        Activated => "activated",
        /// Held back (user over cap).
        Throttled => "throttled",
        /// Handed to a pilot.
        Sent => "sent",
        /// The pilot set up and stages in.
        Starting => "starting",
        /// The payload runs.
        Running => "running",
        /// The pilot sent its final report; post-processing pending.
        Holding => "holding",
        /// Outputs being moved to their destination.
        Transferring => "transferring",
        /// Outputs waiting for merge jobs.
        Merging => "merging",
        /// Success.
        Finished => "finished",
        /// Failed in execution or data management.
        Failed => "failed",
        /// Killed by a person or by JEDI.
        Cancelled => "cancelled",
        /// Ended by the system without real work.
        Closed => "closed",
    }
}

impl JobStatus {
    /// States a pilot may report in `UpdateJob`.
    pub const fn is_pilot_reportable(self) -> bool {
        matches!(self, JobStatus::Starting | JobStatus::Running | JobStatus::Finished | JobStatus::Failed)
    }

    /// States in which a pilot holds the job (dispatched and not final).
    pub const fn is_held_by_pilot(self) -> bool {
        matches!(self, JobStatus::Sent | JobStatus::Starting | JobStatus::Running)
    }

    /// Not yet dispatched.
    pub const fn is_queued(self) -> bool {
        matches!(
            self,
            JobStatus::Pending
                | JobStatus::Defined
                | JobStatus::Waiting
                | JobStatus::Assigned
                | JobStatus::Activated
                | JobStatus::Throttled
        )
    }
}

impl StateMachine for JobStatus {
    const ENTITY: &'static str = "job";

    fn can_transition_to(self, next: Self) -> bool {
        use JobStatus::*;
        if self.is_final() || self == next {
            return false;
        }
        // Any non-final job can be killed, closed by the system, or failed by a watchdog.
        if matches!(next, Cancelled | Closed | Failed) {
            return true;
        }
        match self {
            Pending => next == Defined,
            Defined => matches!(next, Assigned | Activated),
            Waiting => matches!(next, Defined | Activated),
            Assigned => next == Activated,
            Activated => matches!(next, Sent | Throttled),
            Throttled => next == Activated,
            // A dispatched job whose pilot never started it goes back to the queue.
            Sent => matches!(next, Starting | Running | Activated),
            Starting => matches!(next, Running | Holding),
            Running => next == Holding,
            Holding => matches!(next, Transferring | Merging | Finished),
            Transferring | Merging => next == Finished,
            Finished | Failed | Cancelled | Closed => false,
        }
    }

    fn is_final(self) -> bool {
        matches!(self, JobStatus::Finished | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Closed)
    }
}
