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

/// Who causes a job transition (reference: `server-jedi.md`, who updates a job in each state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobActor {
    /// A person through the user API (kill, pause, resume).
    User,
    /// The pilot holding the job (its reports), or harvester reporting for it in push mode.
    Pilot,
    /// JEDI: job generation, setup and closing jobs it no longer needs.
    Jedi,
    /// The server itself: dispatch, and post-processing of final reports.
    Server,
    /// The server's watchdog: silent pilots.
    Watchdog,
}

impl JobActor {
    /// Every actor.
    pub const ALL: [JobActor; 5] =
        [JobActor::User, JobActor::Pilot, JobActor::Jedi, JobActor::Server, JobActor::Watchdog];

    /// Whether this actor may move a job from `from` to `to` (which the state machine must also
    /// allow).
    pub fn may_move(self, from: JobStatus, to: JobStatus) -> bool {
        use JobStatus::*;
        if !from.can_transition_to(to) {
            return false;
        }
        match self {
            // Kill, and pause/resume of queued jobs.
            JobActor::User => to == Cancelled || matches!((from, to), (Activated, Throttled) | (Throttled, Activated)),
            // Its own progress and its own failure, only while it holds the job.
            JobActor::Pilot => from.is_held_by_pilot() && matches!(to, Starting | Running | Holding | Failed),
            // Setup before dispatch, failing queued jobs that cannot run (lost input, broken
            // task), and closing what is no longer needed.
            JobActor::Jedi => {
                to == Closed
                    || (from.is_queued() && to == Failed)
                    || (from.is_queued() && from != Throttled && matches!(to, Defined | Assigned | Activated))
            }
            // Dispatch; a dispatch never delivered goes back; post-processing after the final
            // report (which may also fail the job: outputs that cannot be registered).
            JobActor::Server => matches!(
                (from, to),
                (Activated, Sent)
                    | (Sent, Activated)
                    | (Holding, Transferring | Merging | Finished | Failed)
                    | (Transferring | Merging, Finished | Failed)
            ),
            // A silent pilot: an unstarted job returns to the queue, a started one fails.
            JobActor::Watchdog => matches!((from, to), (Sent, Activated)) || (from.is_held_by_pilot() && to == Failed),
        }
    }
}
