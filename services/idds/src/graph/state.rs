//! Work and workflow states, with their transitions as explicit tables.

/// State of one work (a node instance: a task, or a loop / sub-workflow in progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkStatus {
    /// Waiting for its parents (or its condition's inputs).
    Waiting,
    /// Parents finished and its condition holds; its task is being submitted.
    Ready,
    /// Its task exists (a loop or sub-workflow: its body runs).
    Submitted,
    /// Its task is done (every job finished).
    Finished,
    /// Its task finished partly.
    SubFinished,
    /// Its task failed, broke or was aborted, or the server refused it.
    Failed,
    /// Never ran: a parent did not finish.
    Skipped,
    /// Never ran: its condition was false, or every parent was bypassed (a branch not taken).
    Bypassed,
    /// Stopped by an abort of the workflow.
    Cancelled,
}

impl WorkStatus {
    /// Every state.
    pub const ALL: [WorkStatus; 9] = [
        WorkStatus::Waiting,
        WorkStatus::Ready,
        WorkStatus::Submitted,
        WorkStatus::Finished,
        WorkStatus::SubFinished,
        WorkStatus::Failed,
        WorkStatus::Skipped,
        WorkStatus::Bypassed,
        WorkStatus::Cancelled,
    ];

    /// Final states (a retry may reopen failed ones).
    pub fn is_final(self) -> bool {
        !matches!(self, WorkStatus::Waiting | WorkStatus::Ready | WorkStatus::Submitted)
    }

    /// Whether a child that needs this work may start: it finished, or its branch was not taken.
    pub fn lets_children_run(self) -> bool {
        matches!(self, WorkStatus::Finished | WorkStatus::Bypassed)
    }

    /// The transition table.
    pub fn can_transition_to(self, next: WorkStatus) -> bool {
        use WorkStatus::*;
        match self {
            Waiting => matches!(next, Ready | Submitted | Skipped | Bypassed | Cancelled),
            Ready => matches!(next, Submitted | Failed | Cancelled),
            Submitted => matches!(next, Finished | SubFinished | Failed | Cancelled),
            // A retry runs the task's failed jobs again, or re-examines what a failure skipped.
            Failed | SubFinished => matches!(next, Submitted | Ready),
            Skipped => next == Waiting,
            Finished | Bypassed | Cancelled => false,
        }
    }

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkStatus::Waiting => "waiting",
            WorkStatus::Ready => "ready",
            WorkStatus::Submitted => "submitted",
            WorkStatus::Finished => "finished",
            WorkStatus::SubFinished => "subfinished",
            WorkStatus::Failed => "failed",
            WorkStatus::Skipped => "skipped",
            WorkStatus::Bypassed => "bypassed",
            WorkStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        WorkStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// What a work becomes when its task reaches `task_status` (the reference's task →
    /// processing → transform mapping); `None` while the task is still active.
    pub fn from_task_status(task_status: panda_types::TaskStatus) -> Option<Self> {
        use panda_types::TaskStatus::*;
        match task_status {
            Done => Some(WorkStatus::Finished),
            Finished => Some(WorkStatus::SubFinished),
            Failed | Broken | Aborted => Some(WorkStatus::Failed),
            _ => None,
        }
    }
}

/// State of a whole workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkflowStatus {
    /// Works still to run.
    Running,
    /// Held by the user: nothing new is submitted and its tasks are paused.
    Suspended,
    /// Every work finished (or was bypassed by a condition).
    Finished,
    /// Some works finished.
    SubFinished,
    /// No work finished.
    Failed,
    /// Aborted by the user.
    Cancelled,
}

impl WorkflowStatus {
    /// Every state.
    pub const ALL: [WorkflowStatus; 6] = [
        WorkflowStatus::Running,
        WorkflowStatus::Suspended,
        WorkflowStatus::Finished,
        WorkflowStatus::SubFinished,
        WorkflowStatus::Failed,
        WorkflowStatus::Cancelled,
    ];

    /// Final states.
    pub fn is_final(self) -> bool {
        !matches!(self, WorkflowStatus::Running | WorkflowStatus::Suspended)
    }

    /// The transition table: suspend/resume, end, abort, and a retry reopening a workflow that
    /// ended with failures.
    pub fn can_transition_to(self, next: WorkflowStatus) -> bool {
        use WorkflowStatus::*;
        match self {
            Running => next != Running,
            Suspended => matches!(next, Running | Cancelled),
            SubFinished | Failed => next == Running,
            Finished | Cancelled => false,
        }
    }

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "running",
            WorkflowStatus::Suspended => "suspended",
            WorkflowStatus::Finished => "finished",
            WorkflowStatus::SubFinished => "subfinished",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        WorkflowStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// The workflow's state from its top-level works' states (the reference's transforms → request
/// rule; bypassed works count as done).
pub fn workflow_status(works: impl IntoIterator<Item = WorkStatus>) -> Option<WorkflowStatus> {
    let (mut total, mut ok, mut any_processed) = (0, 0, false);
    for status in works {
        if !status.is_final() {
            return None;
        }
        total += 1;
        if status.lets_children_run() {
            ok += 1;
        }
        any_processed |= matches!(status, WorkStatus::Finished | WorkStatus::SubFinished);
    }
    Some(if ok == total {
        WorkflowStatus::Finished
    } else if any_processed {
        WorkflowStatus::SubFinished
    } else {
        WorkflowStatus::Failed
    })
}
