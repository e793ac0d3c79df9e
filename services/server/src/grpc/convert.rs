//! Domain records to wire messages.

use panda_proto::common::v1 as common;
use panda_proto::convert::{WireEnum, timestamp};
use panda_proto::server::v1 as wire;

use crate::model::{Job, JobCounts, Queue, QueueLoad, Task};

pub(super) fn task(task: Task, counts: JobCounts) -> wire::Task {
    wire::Task {
        task_id: task.id.0,
        spec: Some(task.spec.into()),
        status: task.status.to_wire(),
        error_diag: task.error_diag,
        created_at: Some(timestamp(task.created_at)),
        modified_at: Some(timestamp(task.modified_at)),
        job_counts: Some(wire::JobCounts {
            total: counts.total,
            queued: counts.queued,
            running: counts.running,
            finished: counts.finished,
            failed: counts.failed,
            cancelled: counts.cancelled,
        }),
        idempotency_key: task.idempotency_key.unwrap_or_default(),
        awaits_input: task.awaits_input,
    }
}

pub(super) fn job(job: Job, outputs: Vec<common::FileInfo>) -> wire::Job {
    wire::Job {
        job_id: job.id.0,
        task_id: job.task_id.0,
        job_index: job.job_index,
        status: job.status.to_wire(),
        queue: job.queue,
        attempt_nr: job.attempt_nr,
        command: job.command,
        input_files: job.input_files,
        output_files: outputs,
        resources: Some(job.resources.into()),
        priority: job.priority,
        exit_code: job.exit_code,
        error_code: job.error_code,
        error_diag: job.error_diag,
        stdout_tail: job.stdout_tail,
        stderr_tail: job.stderr_tail,
        cpu_time_seconds: job.cpu_time_seconds,
        wall_time_seconds: job.wall_time_seconds,
        max_rss_kb: job.max_rss_kb,
        node: job.node,
        worker_id: job.worker_id,
        created_at: Some(timestamp(job.created_at)),
        started_at: job.started_at.map(timestamp),
        ended_at: job.ended_at.map(timestamp),
        modified_at: Some(timestamp(job.modified_at)),
        environment: job.environment.into_iter().collect(),
        state_times: job.state_times.parse().into_iter().map(|(state, at)| (state, timestamp(at))).collect(),
        error_source: job.error_source.as_str().to_owned(),
        merge: job.merge,
    }
}

pub(super) fn queue_load(load: QueueLoad) -> wire::QueueLoad {
    wire::QueueLoad { queue: load.queue, activated: load.activated, sent: load.sent, running: load.running }
}

pub(super) fn queue(queue: Queue) -> wire::Queue {
    wire::Queue {
        name: queue.name,
        status: queue.status,
        max_resources: Some(queue.max_resources.into()),
        max_workers: queue.max_workers,
        harvester_id: queue.harvester_id,
        site: queue.site,
        containers: queue.containers,
    }
}
