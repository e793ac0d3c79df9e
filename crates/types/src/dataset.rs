//! Dataset and file states (reference: `server-jedi.md` section 3).

use crate::macros::state_enum;
use crate::state::StateMachine;

state_enum! {
    /// The state of a dataset (input and output datasets share one set of names).
    DatasetStatus {
        /// Created, contents not known yet.
        Defined => "defined",
        /// Contents known and usable.
        Ready => "ready",
        /// Temporarily unusable.
        Pending => "pending",
        /// Contents must be re-read.
        ToUpdate => "toupdate",
        /// Output: jobs are writing into it.
        Running => "running",
        /// Output: every job ended; being closed.
        Prepared => "prepared",
        /// Closed; every file ok.
        Done => "done",
        /// Closed; some files ok.
        Finished => "finished",
        /// Closed; no file ok.
        Failed => "failed",
        /// Permanently unusable.
        Broken => "broken",
    }
}

impl StateMachine for DatasetStatus {
    const ENTITY: &'static str = "dataset";

    fn can_transition_to(self, next: Self) -> bool {
        use DatasetStatus::*;
        if self.is_final() || self == next {
            return false;
        }
        match self {
            Defined => matches!(next, Ready | Running | Pending | Broken),
            Ready => matches!(next, Running | Pending | ToUpdate | Done | Finished | Failed | Broken),
            Pending => matches!(next, Ready | Broken),
            ToUpdate => matches!(next, Ready | Broken),
            Running => matches!(next, Prepared | Done | Finished | Failed | Broken),
            Prepared => matches!(next, Done | Finished | Failed),
            Done | Finished | Failed | Broken => false,
        }
    }

    fn is_final(self) -> bool {
        matches!(self, DatasetStatus::Done | DatasetStatus::Finished | DatasetStatus::Failed | DatasetStatus::Broken)
    }
}

state_enum! {
    /// The state of a file in a dataset (input and output files share one set of names).
    FileStatus {
        /// Output: expected from a job.
        Defined => "defined",
        /// Input: known and usable.
        Ready => "ready",
        /// Input: chosen for a job being generated.
        Picked => "picked",
        /// Used or written by a running job.
        Running => "running",
        /// Output: written, not yet registered at the destination.
        Prepared => "prepared",
        /// Output: waiting for a merge job.
        Merging => "merging",
        /// Processed (input) or produced (output).
        Finished => "finished",
        /// Gave up.
        Failed => "failed",
        /// Input: not at the assigned site.
        Missing => "missing",
        /// Input: was there, now gone.
        Lost => "lost",
        /// Input: corrupt.
        Broken => "broken",
        /// The job ended without producing it.
        NoOutput => "nooutput",
        /// Dropped because its job was killed.
        Cancelled => "cancelled",
    }
}

impl StateMachine for FileStatus {
    const ENTITY: &'static str = "file";

    fn can_transition_to(self, next: Self) -> bool {
        use FileStatus::*;
        if self.is_final() || self == next {
            return false;
        }
        match self {
            Defined => matches!(next, Running | Prepared | Finished | Failed | NoOutput | Cancelled),
            // An input file goes back to ready after a failed attempt (retries are new jobs).
            Ready => matches!(next, Picked | Missing | Lost | Broken | Failed),
            Picked => matches!(next, Running | Ready | Failed),
            Running => matches!(next, Prepared | Finished | Failed | Ready | NoOutput | Cancelled),
            Prepared => matches!(next, Merging | Finished | Failed),
            Merging => matches!(next, Finished | Failed),
            Missing | Lost => matches!(next, Ready | Broken),
            Finished | Failed | Broken | NoOutput | Cancelled => false,
        }
    }

    fn is_final(self) -> bool {
        matches!(
            self,
            FileStatus::Finished
                | FileStatus::Failed
                | FileStatus::Broken
                | FileStatus::NoOutput
                | FileStatus::Cancelled
        )
    }
}
