//! Bus events the server publishes (through the outbox): `task.<state>` and `job.<state>`.

use panda_bus::Envelope;
use panda_proto::convert::WireEnum;
use panda_proto::events::v1::{JobStatusChanged, TaskStatusChanged};
use panda_types::{JobStatus, TaskStatus};

use crate::model::{Job, Task};

/// A task moved from `from` to its current state.
pub fn task_changed(task: &Task, from: TaskStatus) -> Envelope {
    Envelope::new(
        format!("task.{}", task.status),
        &TaskStatusChanged {
            task_id: task.id.0,
            name: task.spec.name.clone(),
            status: task.status.to_wire(),
            previous_status: from.to_wire(),
            error_diag: task.error_diag.clone(),
            user: task.spec.user.clone(),
        },
    )
}

/// A job moved from `from` to its current state.
pub fn job_changed(job: &Job, from: JobStatus) -> Envelope {
    Envelope::new(
        format!("job.{}", job.status),
        &JobStatusChanged {
            job_id: job.id.0,
            task_id: job.task_id.0,
            status: job.status.to_wire(),
            previous_status: from.to_wire(),
            queue: job.queue.clone(),
            job_index: job.job_index,
        },
    )
}
