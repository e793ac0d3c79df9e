//! Tasks that need another look because one of their jobs ended: a scout's verdict, a failed
//! job's next attempt, the merge jobs after the last job. Job events arrive one per job, often
//! hundreds per task at once; this set coalesces them so each task is processed once per round,
//! however many of its jobs ended meanwhile.
//!
//! A marked task that is lost (a crash before its round) is not lost work: its state is in the
//! server, and the periodic sweep finds every scouting task and every running task with failed
//! jobs or merges due.

use std::collections::BTreeSet;
use std::sync::Mutex;

use panda_types::TaskId;
use tokio::sync::Notify;

/// The set of tasks marked since the last round.
#[derive(Debug, Default)]
pub struct Attention {
    marked: Mutex<BTreeSet<TaskId>>,
    wake: Notify,
}

impl Attention {
    /// Marks a task; wakes the worker.
    pub fn mark(&self, task: TaskId) {
        let inserted = self.marked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(task);
        if inserted {
            self.wake.notify_one();
        }
    }

    /// Everything marked so far (oldest task first), emptying the set; none marked: empty.
    pub fn take(&self) -> Vec<TaskId> {
        std::mem::take(&mut *self.marked.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .into_iter()
            .collect()
    }

    /// Waits until something is marked (returns at once if something was marked since the
    /// last `take`, as `Notify` keeps one permit).
    pub async fn marked(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_coalesce_per_task_and_wake_the_worker() {
        let attention = Attention::default();
        for task in [3, 1, 3, 3, 2, 1] {
            attention.mark(TaskId(task));
        }
        // The permit stored by the first mark wakes a worker that starts waiting later.
        tokio::time::timeout(std::time::Duration::from_secs(5), attention.marked()).await.unwrap();
        assert_eq!(attention.take(), vec![TaskId(1), TaskId(2), TaskId(3)]);
        assert!(attention.take().is_empty());
        attention.mark(TaskId(3));
        assert_eq!(attention.take(), vec![TaskId(3)], "a task processed before is marked again");
    }
}
