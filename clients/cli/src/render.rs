//! Tables for people, JSON for scripts.

use chrono::{DateTime, TimeZone, Utc};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use panda_proto::common::v1::{JobStatus, TaskStatus, WorkerStatus};
use panda_proto::harvester::v1 as harvester;
use panda_proto::idds::v1 as idds;
use panda_proto::server::v1 as server;
use serde_json::{Value, json};

/// Writes one line to stdout. When the reader went away (a closed pipe), exits with success:
/// there is no one left to tell.
pub fn emit(line: String) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}") {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {error}");
        std::process::exit(1);
    }
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables.
    Table,
    /// JSON.
    Json,
}

fn time(ts: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.as_ref().and_then(|t| Utc.timestamp_opt(t.seconds, t.nanos.max(0) as u32).single())
}

pub(crate) fn time_text(ts: &Option<prost_types::Timestamp>) -> String {
    time(ts).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

pub(crate) fn time_json(ts: &Option<prost_types::Timestamp>) -> Value {
    time(ts).map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

/// A task state's name.
pub fn task_status(value: i32) -> String {
    TaskStatus::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATUS_").to_lowercase())
        .unwrap_or_else(|_| value.to_string())
}

/// A job state's name.
pub fn job_status(value: i32) -> String {
    JobStatus::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATUS_").to_lowercase())
        .unwrap_or_else(|_| value.to_string())
}

fn worker_status(value: i32) -> String {
    WorkerStatus::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("WORKER_STATUS_").to_lowercase())
        .unwrap_or_else(|_| value.to_string())
}

/// A work state's name.
pub fn work_status(value: i32) -> String {
    idds::WorkStatus::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("WORK_STATUS_").to_lowercase())
        .unwrap_or_else(|_| value.to_string())
}

/// A workflow state's name.
pub fn workflow_status(value: i32) -> String {
    idds::WorkflowStatus::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("WORKFLOW_STATUS_").to_lowercase())
        .unwrap_or_else(|_| value.to_string())
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header);
    table
}

fn task_json(t: &server::Task) -> Value {
    let spec = t.spec.clone().unwrap_or_default();
    let counts = t.job_counts.unwrap_or_default();
    json!({
        "task_id": t.task_id, "name": spec.name, "user": spec.user, "status": task_status(t.status),
        "error_diag": t.error_diag, "command": spec.command, "input_datasets": spec.input_datasets,
        "output_dataset": spec.output_dataset, "code_sha256": spec.code_sha256, "container_image": spec.container_image, "priority": spec.priority, "share": spec.share, "created_at": time_json(&t.created_at), "modified_at": time_json(&t.modified_at),
        "jobs": {"total": counts.total, "queued": counts.queued, "running": counts.running, "finished": counts.finished,
                 "failed": counts.failed, "cancelled": counts.cancelled},
    })
}

/// Prints tasks.
pub fn tasks(format: Format, tasks: &[server::Task]) {
    match format {
        Format::Json => out!("{}", Value::Array(tasks.iter().map(task_json).collect())),
        Format::Table => {
            let mut t = table(&["ID", "NAME", "USER", "STATUS", "JOBS", "DONE", "FAILED", "CREATED"]);
            for task in tasks {
                let spec = task.spec.clone().unwrap_or_default();
                let c = task.job_counts.unwrap_or_default();
                t.add_row(vec![
                    task.task_id.to_string(),
                    spec.name,
                    spec.user,
                    task_status(task.status),
                    c.total.to_string(),
                    c.finished.to_string(),
                    c.failed.to_string(),
                    time_text(&task.created_at),
                ]);
            }
            out!("{t}");
        }
    }
}

/// Prints one task in detail.
pub fn task(format: Format, task: &server::Task) {
    detail(format, task_json(task));
}

/// One record: its JSON, or a FIELD/VALUE table of it.
fn detail(format: Format, value: Value) {
    match format {
        Format::Json => out!("{value}"),
        Format::Table => {
            let mut t = table(&["FIELD", "VALUE"]);
            if let Value::Object(map) = value {
                for (key, value) in map {
                    let text = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    t.add_row(vec![key, text]);
                }
            }
            out!("{t}");
        }
    }
}

fn job_json(j: &server::Job) -> Value {
    json!({
        "job_id": j.job_id, "task_id": j.task_id, "index": j.job_index, "status": job_status(j.status), "queue": j.queue,
        "attempt_nr": j.attempt_nr, "priority": j.priority, "command": j.command, "input_files": j.input_files,
        "output_files": j.output_files.iter().map(|f| f.lfn.clone()).collect::<Vec<_>>(),
        "exit_code": j.exit_code, "error_code": j.error_code, "error_diag": j.error_diag,
        "cpu_time_seconds": j.cpu_time_seconds, "wall_time_seconds": j.wall_time_seconds, "max_rss_kb": j.max_rss_kb,
        "node": j.node, "worker_id": j.worker_id, "stdout_tail": j.stdout_tail, "stderr_tail": j.stderr_tail,
        "created_at": time_json(&j.created_at), "started_at": time_json(&j.started_at), "ended_at": time_json(&j.ended_at),
        "error_source": j.error_source,
        "state_times": j.state_times.iter().map(|(state, at)| (state.clone(), time_json(&Some(*at)))).collect::<serde_json::Map<_, _>>(),
    })
}

/// Prints jobs.
pub fn jobs(format: Format, jobs: &[server::Job]) {
    match format {
        Format::Json => out!("{}", Value::Array(jobs.iter().map(job_json).collect())),
        Format::Table => {
            let mut t = table(&["ID", "TASK", "#", "STATUS", "QUEUE", "EXIT", "ERROR", "WALL s", "CPU s", "ENDED"]);
            for j in jobs {
                t.add_row(vec![
                    j.job_id.to_string(),
                    j.task_id.to_string(),
                    j.job_index.to_string(),
                    job_status(j.status),
                    j.queue.clone(),
                    j.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    if j.error_code == 0 { String::new() } else { format!("{} {}", j.error_code, j.error_diag) },
                    format!("{:.1}", j.wall_time_seconds),
                    format!("{:.2}", j.cpu_time_seconds),
                    time_text(&j.ended_at),
                ]);
            }
            out!("{t}");
        }
    }
}

/// Prints one job in detail.
pub fn job(format: Format, job: &server::Job) {
    detail(format, job_json(job));
}

fn workflow_json(w: &idds::Workflow) -> Value {
    json!({
        "workflow_id": w.workflow_id, "name": w.name, "user": w.user, "status": workflow_status(w.status),
        "created_at": time_json(&w.created_at), "ended_at": time_json(&w.ended_at),
        "works": w.works.iter().map(|k| json!({
            "name": k.name, "status": work_status(k.status), "parents": k.parents, "task_id": k.task_id,
            "task_status": if k.task_status == 0 { Value::Null } else { Value::String(task_status(k.task_status)) },
            "submitted_at": time_json(&k.submitted_at), "ended_at": time_json(&k.ended_at),
        })).collect::<Vec<_>>(),
    })
}

/// Prints workflows.
pub fn workflows(format: Format, workflows: &[idds::Workflow]) {
    match format {
        Format::Json => out!("{}", Value::Array(workflows.iter().map(workflow_json).collect())),
        Format::Table => {
            let mut t = table(&["ID", "NAME", "USER", "STATUS", "WORKS", "FINISHED", "CREATED"]);
            for w in workflows {
                let finished = w.works.iter().filter(|k| k.status == idds::WorkStatus::Finished as i32).count();
                t.add_row(vec![
                    w.workflow_id.to_string(),
                    w.name.clone(),
                    w.user.clone(),
                    workflow_status(w.status),
                    w.works.len().to_string(),
                    finished.to_string(),
                    time_text(&w.created_at),
                ]);
            }
            out!("{t}");
        }
    }
}

/// Prints one workflow with its works.
pub fn workflow(format: Format, w: &idds::Workflow) {
    match format {
        Format::Json => out!("{}", workflow_json(w)),
        Format::Table => {
            out!("workflow {} {:?}: {}", w.workflow_id, w.name, workflow_status(w.status));
            let mut t = table(&["WORK", "PARENTS", "STATUS", "TASK", "TASK STATUS", "SUBMITTED", "ENDED"]);
            for k in &w.works {
                t.add_row(vec![
                    k.name.clone(),
                    k.parents.join(", "),
                    work_status(k.status),
                    if k.task_id == 0 { String::new() } else { k.task_id.to_string() },
                    if k.task_status == 0 { String::new() } else { task_status(k.task_status) },
                    time_text(&k.submitted_at),
                    time_text(&k.ended_at),
                ]);
            }
            out!("{t}");
        }
    }
}

/// Prints the server's queues.
pub fn queues(format: Format, queues: &[server::QueueWithLoad]) {
    let rows: Vec<Value> = queues
        .iter()
        .map(|q| {
            let queue = q.queue.clone().unwrap_or_default();
            let load = q.load.clone().unwrap_or_default();
            let site = if queue.site.is_empty() { queue.name.clone() } else { queue.site.clone() };
            json!({"name": queue.name, "status": queue.status, "site": site, "containers": queue.containers,
                   "harvester": queue.harvester_id, "max_workers": queue.max_workers,
                   "activated": load.activated, "sent": load.sent, "running": load.running,
                   "pilots": q.pilots, "workers_by_status": q.workers_by_status,
                   "seconds_since_heartbeat": q.seconds_since_heartbeat})
        })
        .collect();
    match format {
        Format::Json => out!("{}", Value::Array(rows)),
        Format::Table => {
            let mut t = table(&[
                "QUEUE",
                "STATUS",
                "SITE",
                "CONTAINERS",
                "HARVESTER",
                "MAX WORKERS",
                "ACTIVATED",
                "SENT",
                "RUNNING",
                "PILOTS",
                "HEARTBEAT AGE s",
            ]);
            for r in rows {
                t.add_row(
                    [
                        "name",
                        "status",
                        "site",
                        "containers",
                        "harvester",
                        "max_workers",
                        "activated",
                        "sent",
                        "running",
                        "pilots",
                        "seconds_since_heartbeat",
                    ]
                    .iter()
                    .map(|k| match &r[*k] {
                        Value::String(s) => s.clone(),
                        Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>(),
                );
            }
            out!("{t}");
        }
    }
}

/// Prints harvester workers.
pub fn workers(format: Format, workers: &[harvester::Worker]) {
    let rows: Vec<Value> = workers
        .iter()
        .map(|w| json!({"worker_id": w.worker_id, "queue": w.queue, "status": worker_status(w.status), "batch_id": w.batch_id,
                        "exit_code": w.exit_code, "diag": w.diag, "submitted_at": time_json(&w.submitted_at),
                        "ended_at": time_json(&w.ended_at), "work_dir": w.work_dir}))
        .collect();
    match format {
        Format::Json => out!("{}", Value::Array(rows)),
        Format::Table => {
            let mut t = table(&["WORKER", "QUEUE", "STATUS", "BATCH ID", "EXIT", "DIAG", "SUBMITTED", "ENDED"]);
            for w in workers {
                t.add_row(vec![
                    w.worker_id.clone(),
                    w.queue.clone(),
                    worker_status(w.status),
                    w.batch_id.clone(),
                    w.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    w.diag.clone(),
                    time_text(&w.submitted_at),
                    time_text(&w.ended_at),
                ]);
            }
            out!("{t}");
        }
    }
}

/// Prints one update of `panda task watch`: a line per change.
pub fn watch_update(format: Format, update: &server::WatchTaskResponse, task_changed: bool) {
    match format {
        Format::Json => out!(
            "{}",
            json!({
                "task": update.task.as_ref().map(task_json),
                "job": update.job.as_ref().map(job_json),
            })
        ),
        Format::Table => {
            let now = Utc::now().format("%H:%M:%S");
            if let Some(job) = &update.job {
                let error = if job.error_code == 0 {
                    String::new()
                } else {
                    format!(" error {} {}", job.error_code, job.error_diag)
                };
                out!(
                    "{now} job {} (#{}, attempt {}) {} on {}{error}",
                    job.job_id,
                    job.job_index,
                    job.attempt_nr,
                    job_status(job.status),
                    job.queue
                );
            }
            if let Some(task) = update.task.as_ref().filter(|_| task_changed) {
                let c = task.job_counts.unwrap_or_default();
                out!(
                    "{now} task {} {}: {} jobs, {} queued, {} running, {} finished, {} failed, {} cancelled{}",
                    task.task_id,
                    task_status(task.status),
                    c.total,
                    c.queued,
                    c.running,
                    c.finished,
                    c.failed,
                    c.cancelled,
                    if task.error_diag.is_empty() { String::new() } else { format!(" ({})", task.error_diag) }
                );
            }
        }
    }
}
