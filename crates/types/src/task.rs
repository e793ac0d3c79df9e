//! Task states and transitions (reference: JEDI task states, `server-jedi.md` section 1).

use crate::macros::state_enum;
use crate::state::StateMachine;

state_enum! {
    /// The state of a task, with the reference's names.
    TaskStatus {
        /// Parameters stored, not parsed yet.
        Registered => "registered",
        /// Parameters parsed, datasets created.
        Defined => "defined",
        /// Inputs being recalled from tape.
        Staging => "staging",
        /// Tape recall done.
        Staged => "staged",
        /// A preprocessing job must run.
        TopReprocess => "topreprocess",
        /// The preprocessing job runs.
        Preprocessing => "preprocessing",
        /// Waiting for task brokerage to choose a nucleus.
        Assigning => "assigning",
        /// Inputs and destination known; jobs can be generated.
        Ready => "ready",
        /// Temporary problem (no queue, input not ready); see the task's diagnostic.
        Pending => "pending",
        /// Scout jobs generated; waiting for their metrics.
        Scouting => "scouting",
        /// Scout metrics computed.
        Scouted => "scouted",
        /// Jobs generated and running.
        Running => "running",
        /// Too many failing attempts; no new jobs for a while.
        Throttled => "throttled",
        /// Every input is finished or out of attempts; post-processing next.
        Prepared => "prepared",
        /// `finish` received.
        Finishing => "finishing",
        /// Jobs drained after `finish`.
        Passed => "passed",
        /// `kill` received; jobs being killed.
        Aborting => "aborting",
        /// Jobs killed; awaiting post-processing.
        ToAbort => "toabort",
        /// Fatal definition problem found; awaiting post-processing.
        ToBroken => "tobroken",
        /// `retry` received.
        ToRetry => "toretry",
        /// Incremental execution requested.
        ToIncexec => "toincexec",
        /// Parameters and inputs re-read for incremental execution.
        Rerefine => "rerefine",
        /// `reassign` received.
        ToReassign => "toreassign",
        /// Reassignment in progress.
        Reassigning => "reassigning",
        /// Frozen by command.
        Paused => "paused",
        /// The system gave up for now; needs a person.
        Exhausted => "exhausted",
        /// Every input processed successfully.
        Done => "done",
        /// Partly successful.
        Finished => "finished",
        /// Nothing succeeded.
        Failed => "failed",
        /// Bad task definition.
        Broken => "broken",
        /// Killed.
        Aborted => "aborted",
    }
}

impl TaskStatus {
    /// States in which work is in progress: they can be paused, parked in `pending`, killed
    /// or finished by command, and `pending`/`paused`/`reassigning` return to one of them.
    pub const fn is_active(self) -> bool {
        use TaskStatus::*;
        matches!(
            self,
            Registered
                | Defined
                | Staging
                | Staged
                | TopReprocess
                | Preprocessing
                | Assigning
                | Ready
                | Scouting
                | Scouted
                | Running
                | Throttled
        )
    }

    /// States from which `kill` and `finish` are refused (`statusToRejectExtChange`).
    pub const fn rejects_commands(self) -> bool {
        use TaskStatus::*;
        matches!(self, Finished | Done | Prepared | Broken | ToBroken | Aborted | ToAbort | Aborting | Failed | Passed)
    }
}

impl StateMachine for TaskStatus {
    const ENTITY: &'static str = "task";

    fn can_transition_to(self, next: Self) -> bool {
        use TaskStatus::*;
        if self == next {
            return false;
        }
        // Commands, valid from many states.
        let command = match next {
            // `finishing` is not in the reject list: a finish may still be escalated to a kill.
            Aborting | Finishing => !self.rejects_commands(),
            Paused => self.is_active() || self == Pending,
            ToReassign => self.is_active() || self == Pending,
            Pending => self.is_active() || self == Paused,
            _ => false,
        };
        if command {
            return true;
        }
        match self {
            Registered => matches!(next, Defined | ToBroken | TopReprocess | Staging),
            TopReprocess => next == Preprocessing,
            Preprocessing => next == Registered,
            Staging => next == Staged,
            Staged => next == Defined,
            Defined => matches!(next, Assigning | Ready | ToBroken),
            Assigning => next == Ready,
            Ready => matches!(next, Scouting | Running),
            Scouting => matches!(next, Scouted | ToBroken | Exhausted | Running),
            Scouted => next == Running,
            Running => matches!(next, Prepared | Defined | Throttled),
            Throttled => next == Running,
            // pending/paused go back to where they were (the reference's oldStatus).
            Pending | Paused | Reassigning => next.is_active() || next == Exhausted,
            Prepared => matches!(next, Done | Finished | Failed | Exhausted),
            Exhausted => matches!(next, ToRetry | ToIncexec),
            Finishing => next == Passed,
            Passed => matches!(next, Done | Finished | Failed),
            Aborting => next == ToAbort,
            ToAbort => next == Aborted,
            ToBroken => next == Broken,
            ToRetry => next == Ready,
            ToIncexec => next == Rerefine,
            Rerefine => next == Defined,
            ToReassign => next == Reassigning,
            // Final states reopen only through the retry and incremental-execution commands
            // (incexec is accepted from done and from every state that accepts retry).
            Finished | Failed | Aborted => matches!(next, ToRetry | ToIncexec),
            Done => next == ToIncexec,
            Broken => false,
        }
    }

    fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Done | TaskStatus::Finished | TaskStatus::Failed | TaskStatus::Broken | TaskStatus::Aborted
        )
    }
}

/// Who causes a task transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskActor {
    /// A person's command through the user API: kill, finish, pause and resume, retry,
    /// incremental execution, reassign.
    User,
    /// JEDI: refinement, job generation, brokerage (pending and back), scouting, throttling and
    /// breaking tasks that cannot run.
    Jedi,
    /// The server's post-processing once a task's jobs all ended (JEDI's PostProcessor in the
    /// reference): prepared and the final states, and the end of a kill or finish.
    Server,
}

impl TaskActor {
    /// Every actor.
    pub const ALL: [TaskActor; 3] = [TaskActor::User, TaskActor::Jedi, TaskActor::Server];

    /// Whether this actor may move a task from `from` to `to` (which the state machine must also
    /// allow).
    pub fn may_move(self, from: TaskStatus, to: TaskStatus) -> bool {
        use TaskStatus::*;
        if !from.can_transition_to(to) {
            return false;
        }
        let command = matches!(to, Aborting | Finishing | Paused | ToRetry | ToIncexec | ToReassign) || from == Paused;
        let post_processing =
            matches!(from, Prepared | Aborting | ToAbort | Finishing | Passed) || (from, to) == (Running, Prepared);
        match self {
            TaskActor::User => command,
            TaskActor::Server => post_processing && !command,
            TaskActor::Jedi => !command && !post_processing,
        }
    }
}
