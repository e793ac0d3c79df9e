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
        /// Closed; every file ok. Reopened (running) when the task is retried or extended.
        Done => "done",
        /// Closed; some files ok. Reopened (running) when the task is retried.
        Finished => "finished",
        /// Closed; no file ok. Reopened (running) when the task is retried.
        Failed => "failed",
        /// Permanently unusable (the only final state).
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
            // Failed: the task ended (killed, broken) before any job wrote into it.
            Defined => matches!(next, Ready | Running | Pending | Failed | Broken),
            Ready => matches!(next, Running | Pending | ToUpdate | Done | Finished | Failed | Broken),
            Pending => matches!(next, Ready | Broken),
            ToUpdate => matches!(next, Ready | Broken),
            Running => matches!(next, Prepared | Done | Finished | Failed | Broken),
            Prepared => matches!(next, Done | Finished | Failed),
            // A retry (finished, failed) or an incremental execution (done, too) writes into the
            // task's closed outputs again.
            Done | Finished | Failed => next == Running,
            Broken => false,
        }
    }

    fn is_final(self) -> bool {
        self == DatasetStatus::Broken
    }
}

impl DatasetStatus {
    /// Closed at the end of its task: no job writes into it until the task is retried.
    pub fn is_closed(self) -> bool {
        matches!(self, DatasetStatus::Done | DatasetStatus::Finished | DatasetStatus::Failed)
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
        /// Gave up; expected again (output) or usable again (input) when the task is retried.
        Failed => "failed",
        /// Input: not at the assigned site.
        Missing => "missing",
        /// Input: was there, now gone.
        Lost => "lost",
        /// Input: corrupt.
        Broken => "broken",
        /// The job ended without producing it; expected again when the task is retried.
        NoOutput => "nooutput",
        /// Dropped because its job was killed; expected again when the task is retried.
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
            // A task retry: an output is expected from the next attempt, an input with its
            // attempts raised can be picked again.
            Failed => matches!(next, Defined | Ready),
            NoOutput | Cancelled => next == Defined,
            Finished | Broken => false,
        }
    }

    fn is_final(self) -> bool {
        matches!(self, FileStatus::Finished | FileStatus::Broken)
    }
}

/// Who causes a dataset or file transition. Pilots never move files themselves: the server
/// derives file states from a job's reports, so a pilot's word reaches the catalog only through
/// the server's post-processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataActor {
    /// A person's command through the user API: retrying a task reopens its outputs and expects
    /// its failed files again.
    User,
    /// JEDI: refinement (contents known, pending, to be re-read, broken), job generation (files
    /// picked and released, outputs opened) and giving up on exhausted or unavailable inputs.
    Jedi,
    /// The server: files follow their job (running, produced, failed, cancelled), and datasets
    /// are closed when their task ends.
    Server,
}

impl DataActor {
    /// Every actor.
    pub const ALL: [DataActor; 3] = [DataActor::User, DataActor::Jedi, DataActor::Server];

    /// Whether this actor may move a dataset from `from` to `to` (which the state machine must
    /// also allow).
    pub fn may_move_dataset(self, from: DatasetStatus, to: DatasetStatus) -> bool {
        use DatasetStatus::*;
        if !from.can_transition_to(to) {
            return false;
        }
        let closing = to.is_closed() || to == Prepared;
        match self {
            DataActor::User => from.is_closed(),
            DataActor::Server => closing,
            DataActor::Jedi => !closing && !from.is_closed(),
        }
    }

    /// Whether this actor may move a file from `from` to `to` (which the state machine must also
    /// allow).
    pub fn may_move_file(self, from: FileStatus, to: FileStatus) -> bool {
        use FileStatus::*;
        if !from.can_transition_to(to) {
            return false;
        }
        let retry = matches!(from, Failed | NoOutput | Cancelled);
        let availability = matches!(to, Missing | Lost | Broken) || matches!(from, Missing | Lost);
        let generation = matches!((from, to), (Ready, Picked | Failed) | (Picked, Ready | Failed));
        match self {
            // A retry: the user's command, or JEDI's automatic retry of a failed attempt.
            DataActor::User => retry,
            DataActor::Jedi => retry || availability || generation,
            DataActor::Server => !retry && !availability && !generation,
        }
    }

    /// The states from which this actor may move a dataset to `to`: the guard a bulk update
    /// filters on, so that rows in any other state are left alone.
    pub fn dataset_sources(self, to: DatasetStatus) -> Vec<DatasetStatus> {
        DatasetStatus::ALL.iter().copied().filter(|&from| self.may_move_dataset(from, to)).collect()
    }

    /// The states from which this actor may move a file to `to` (see `dataset_sources`).
    pub fn file_sources(self, to: FileStatus) -> Vec<FileStatus> {
        FileStatus::ALL.iter().copied().filter(|&from| self.may_move_file(from, to)).collect()
    }
}
