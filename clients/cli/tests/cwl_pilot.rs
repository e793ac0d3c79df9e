//! The CWL runner's pilot executor through the real system: the run is a driven idds workflow
//! and each CommandLineTool invocation a work of it, whose one-job task a pilot runs. The
//! embedded default (a system started by the runner) and `--server URL --idds URL` against a
//! system this test starts, whose workflows, tasks and jobs the test inspects: a tool's
//! resources, a scatter workflow's works and their parents, a failing tool, a time limit, an
//! aborted workflow, and Ctrl-C, each leaving no task or job behind.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use panda_all::{AllConfig, Cluster};
use panda_client::ServerClient;
use panda_proto::common::v1::{JobStatus, TaskStatus};
use panda_proto::idds::v1 as idds;
use panda_proto::server::v1 as server;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crates/cwl/tests/fixtures").join(name).display().to_string()
}

async fn runner(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_panda"))
        .arg("cwl-runner")
        .args(args)
        .output()
        .await
        .expect("run panda cwl-runner")
}

fn json_out(res: &Output) -> Value {
    assert!(res.status.success(), "exit {:?}, stderr: {}", res.status.code(), String::from_utf8_lossy(&res.stderr));
    serde_json::from_slice(&res.stdout).expect("the output object as JSON on stdout")
}

fn read(v: &Value) -> String {
    let loc = v["location"].as_str().expect("a location");
    std::fs::read_to_string(loc.trim_start_matches("file://")).expect("output file readable")
}

async fn start_system(dir: &Path) -> Cluster {
    let queues = dir.join("queues.yaml");
    std::fs::write(
        &queues,
        "queues:\n  local:\n    max_workers: 2\n    resources: { cores: 0, memory_mb: 0 }\n    plugin:\n      type: local\n",
    )
    .expect("queue file");
    let mut config = AllConfig::ephemeral(dir.join("data"));
    config.harvester.queue_config = Some(queues);
    config.harvester.cycle_interval = Duration::from_millis(200);
    config.jedi.sweep_interval = Duration::from_secs(1);
    config.server.heartbeat_interval = Duration::from_secs(1);
    // Shorter than the runs here, so a live runner must renew its driver lease to keep its
    // workflow (and a killed one has it failed soon).
    config.idds.driver_lease = Duration::from_secs(2);
    Cluster::start(config, vec![env!("CARGO_BIN_EXE_panda").to_owned(), "pilot".to_owned()])
        .await
        .expect("system starts")
}

async fn tasks(server: &ServerClient) -> Vec<server::Task> {
    let request = server::ListTasksRequest { limit: 1000, ..Default::default() };
    server.tasks.clone().list_tasks(request).await.expect("ListTasks").into_inner().tasks
}

async fn jobs(server: &ServerClient, task_id: u64) -> Vec<server::Job> {
    let request = server::ListJobsRequest { task_id, ..Default::default() };
    server.jobs.clone().list_jobs(request).await.expect("ListJobs").into_inner().jobs
}

/// Every task ended and no job is queued or running.
async fn nothing_left(server: &ServerClient) {
    let ended = [TaskStatus::Done, TaskStatus::Finished, TaskStatus::Failed, TaskStatus::Aborted, TaskStatus::Broken];
    for task in tasks(server).await {
        assert!(
            ended.iter().any(|s| *s as i32 == task.status),
            "task {} left in {:?}",
            task.task_id,
            TaskStatus::try_from(task.status)
        );
        for job in jobs(server, task.task_id).await {
            let over = [JobStatus::Finished, JobStatus::Failed, JobStatus::Cancelled, JobStatus::Closed];
            assert!(over.iter().any(|s| *s as i32 == job.status), "job {} left in {}", job.job_id, job.status);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_system_runs_a_scatter_workflow_into_the_outdir() {
    let out = tempfile::tempdir().expect("tempdir");
    let outdir = format!("--outdir={}", out.path().display());
    let res = runner(&["--quiet", &outdir, &fixture("wf-scatter-tools.cwl")]).await;
    let v = json_out(&res);
    let each: Vec<String> = v["each"].as_array().expect("each is an array").iter().map(read).collect();
    assert_eq!(each, ["ALPHA\n", "BETA\n", "GAMMA\n"]);
    assert_eq!(read(&v["all"]), "ALPHA\nBETA\nGAMMA\n");
    assert_eq!(v["all"]["checksum"], json!("sha1$82fde261fb7703024292edfe3828a05433c047fa"));
    // Every output lives in --outdir.
    let canon = std::fs::canonicalize(out.path()).expect("canonical outdir");
    let mut names: Vec<String> = std::fs::read_dir(&canon)
        .expect("outdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["all.txt", "alpha.txt", "beta.txt", "gamma.txt"]);
    for f in v["each"].as_array().into_iter().flatten().chain([&v["all"]]) {
        let loc = f["location"].as_str().expect("location");
        assert!(loc.starts_with(&format!("file://{}", canon.display())), "{loc} outside --outdir");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_mode_jobs_carry_the_tool_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let system = start_system(dir.path()).await;
    let server = ServerClient::new(&system.server_url).expect("client");
    let url = format!("--server={}", system.server_url);
    let idds_url = format!("--idds={}", system.idds_url);
    let out = tempfile::tempdir().expect("tempdir");
    let outdir = format!("--outdir={}", out.path().display());

    // One tool: one task with one job that ran it with the requested resources.
    let job_file = dir.path().join("job.yml");
    std::fs::write(&job_file, "word: delta\ncores: 2\n").expect("job file");
    let v =
        json_out(&runner(&[&url, &idds_url, &outdir, &fixture("shout.cwl"), &job_file.display().to_string()]).await);
    assert_eq!(read(&v["out"]), "DELTA\n");
    let all = tasks(&server).await;
    assert_eq!(all.len(), 1, "one task per tool invocation");
    assert_eq!(all[0].status, TaskStatus::Done as i32);
    let job = &jobs(&server, all[0].task_id).await[0];
    assert_eq!(job.status, JobStatus::Finished as i32);
    let resources = job.resources.expect("resources");
    assert_eq!((resources.cores, resources.memory_mb), (2, 1000), "ResourceRequirement sizes the job");
    assert!(job.command.contains("'shout' 'delta'"), "{}", job.command);

    // A failing tool: exit 1, its task failed with the tool's exit code.
    let res = runner(&[&url, &idds_url, &outdir, &fixture("fail.cwl")]).await;
    assert_eq!(res.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&res.stderr));
    assert!(String::from_utf8_lossy(&res.stderr).contains("exited with code 1"));
    let failed = tasks(&server).await.into_iter().find(|t| t.spec.as_ref().is_some_and(|s| s.name.contains("fail")));
    let failed = failed.expect("the failing tool's task");
    assert_eq!(failed.status, TaskStatus::Failed as i32);
    assert_eq!(jobs(&server, failed.task_id).await[0].exit_code, Some(1));

    // ToolTimeLimit is the job's walltime: the pilot stops it and the run fails.
    let res = runner(&[&url, &idds_url, &outdir, &fixture("timeout.cwl")]).await;
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("time limit"), "{}", String::from_utf8_lossy(&res.stderr));
    nothing_left(&server).await;

    // Ctrl-C while a tool runs: the runner kills its task and exits 130.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_panda"))
        .args(["cwl-runner", &url, &idds_url, &outdir, &fixture("sleep.cwl")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the runner");
    let running = async {
        loop {
            for t in tasks(&server).await {
                if t.spec.as_ref().is_some_and(|s| s.name.contains("sleep"))
                    && jobs(&server, t.task_id).await.iter().any(|j| j.status == JobStatus::Running as i32)
                {
                    return t.task_id;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let task_id = tokio::time::timeout(Duration::from_secs(60), running).await.expect("the sleep job runs");
    let pid = child.id().expect("runner pid");
    let signalled = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().expect("kill");
    assert!(signalled.success());
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("runner exits").expect("wait");
    assert_eq!(status.code(), Some(130));
    let aborted = async {
        loop {
            let task = tasks(&server).await.into_iter().find(|t| t.task_id == task_id);
            if task.is_some_and(|t| t.status == TaskStatus::Aborted as i32) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), aborted).await.expect("the interrupted run's task is aborted");
    assert_eq!(jobs(&server, task_id).await[0].status, JobStatus::Cancelled as i32);
    nothing_left(&server).await;

    // `panda workflow submit wf.cwl` returns at once with an idds workflow; its one work's job
    // runs the runner against the server, each tool invocation a task of its own.
    let before = tasks(&server).await.len();
    let wf_out = tempfile::tempdir().expect("tempdir");
    let submitted = tokio::process::Command::new(env!("CARGO_BIN_EXE_panda"))
        .args(["--server-url", &system.server_url, "--idds-url", &system.idds_url, "-o", "json"])
        .args(["workflow", "submit", &fixture("wf-scatter-tools.cwl"), "--outdir"])
        .arg(wf_out.path())
        .output()
        .await
        .expect("panda workflow submit");
    let id = json_out(&submitted)["workflow_id"].as_u64().expect("a workflow id");
    let mut idds = panda_client::WorkflowServiceClient::new(panda_client::channel(&system.idds_url).expect("channel"));
    let mut watch = idds
        .watch_workflow(panda_proto::idds::v1::WatchWorkflowRequest { workflow_id: id })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(update) = watch.message().await.expect("watch stream") {
            last = update.workflow;
        }
    });
    ended.await.expect("the CWL workflow ends");
    let workflow = last.expect("a workflow state");
    assert_eq!(workflow.status, panda_proto::idds::v1::WorkflowStatus::Finished as i32, "{workflow:?}");
    assert_eq!(workflow.works.len(), 1);
    assert_eq!(std::fs::read_to_string(wf_out.path().join("all.txt")).expect("all.txt"), "ALPHA\nBETA\nGAMMA\n");
    assert_eq!(tasks(&server).await.len(), before + 5, "the runner's task and one per tool invocation");
    nothing_left(&server).await;
    system.stop().await.expect("system stops");
}

async fn workflow_named(
    idds: &mut panda_client::WorkflowServiceClient<tonic::transport::Channel>,
    name: &str,
) -> Option<u64> {
    let request = idds::ListWorkflowsRequest { limit: 100 };
    let all = idds.list_workflows(request).await.expect("ListWorkflows").into_inner().workflows;
    all.into_iter().find(|w| w.name == name).map(|w| w.workflow_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_invocation_is_a_work_of_the_runs_idds_workflow_and_an_abort_stops_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let system = start_system(dir.path()).await;
    let server = ServerClient::new(&system.server_url).expect("client");
    let mut idds = panda_client::WorkflowServiceClient::new(panda_client::channel(&system.idds_url).expect("channel"));
    let url = format!("--server={}", system.server_url);
    let idds_url = format!("--idds={}", system.idds_url);
    let out = tempfile::tempdir().expect("tempdir");
    let outdir = format!("--outdir={}", out.path().display());

    // A scatter then a gather: one work per invocation, keyed by step and scatter index, the
    // gather waiting for every scattered work; the run closes its workflow as finished.
    let v = json_out(&runner(&["--quiet", &url, &idds_url, &outdir, &fixture("wf-scatter-tools.cwl")]).await);
    assert_eq!(read(&v["all"]), "ALPHA\nBETA\nGAMMA\n");
    let id = workflow_named(&mut idds, "cwl.wf-scatter-tools").await.expect("the run's workflow");
    let workflow = idds
        .get_workflow(idds::GetWorkflowRequest { workflow_id: id })
        .await
        .expect("GetWorkflow")
        .into_inner()
        .workflow
        .expect("workflow");
    assert_eq!(workflow.status, idds::WorkflowStatus::Finished as i32, "{workflow:?}");
    // Scatter elements are added concurrently, so compare in key order.
    let mut works: Vec<(&str, Vec<String>)> =
        workflow.works.iter().map(|w| (w.key.as_str(), w.parents.clone())).collect();
    works.sort();
    let shouts: Vec<String> = (0..3).map(|i| format!("shout.{i}")).collect();
    assert_eq!(
        works,
        [("gather", shouts.clone()), ("shout.0", vec![]), ("shout.1", vec![]), ("shout.2", vec![])],
        "{workflow:?}"
    );
    let all_tasks = tasks(&server).await;
    for work in &workflow.works {
        assert_eq!(work.status, idds::WorkStatus::Finished as i32, "{work:?}");
        assert_eq!(work.counts.as_ref().map(|c| (c.jobs_total, c.jobs_finished)), Some((1, 1)), "{work:?}");
        let task = all_tasks.iter().find(|t| t.task_id == work.task_id).expect("the work's task");
        assert_eq!(task.status, TaskStatus::Done as i32);
    }
    assert_eq!(all_tasks.len(), 4, "one task per work, nothing submitted twice");

    // The user aborts the run's workflow while a tool runs: its task is killed and the runner
    // fails (exit 1), saying why.
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_panda"))
        .args(["cwl-runner", &url, &idds_url, &outdir, &fixture("sleep.cwl")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the runner");
    let running = async {
        loop {
            if let Some(id) = workflow_named(&mut idds.clone(), "cwl.sleep").await {
                let workflow = idds.clone().get_workflow(idds::GetWorkflowRequest { workflow_id: id }).await;
                let task_id = workflow
                    .ok()
                    .and_then(|w| w.into_inner().workflow)
                    .and_then(|w| w.works.first().map(|w| w.task_id));
                if let Some(task_id) = task_id.filter(|t| *t != 0)
                    && jobs(&server, task_id).await.iter().any(|j| j.status == JobStatus::Running as i32)
                {
                    return (id, task_id);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (id, task_id) = tokio::time::timeout(Duration::from_secs(60), running).await.expect("the sleep job runs");
    idds.abort_workflow(idds::AbortWorkflowRequest { workflow_id: id }).await.expect("AbortWorkflow");
    let res = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the runner exits")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("idds workflow {id} was aborted")), "{stderr}");
    let task = tasks(&server).await.into_iter().find(|t| t.task_id == task_id).expect("the sleep task");
    assert_eq!(task.status, TaskStatus::Aborted as i32);
    let workflow = idds.get_workflow(idds::GetWorkflowRequest { workflow_id: id }).await.expect("GetWorkflow");
    assert_eq!(workflow.into_inner().workflow.expect("workflow").status, idds::WorkflowStatus::Cancelled as i32);
    nothing_left(&server).await;
    system.stop().await.expect("system stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runner_stops_renewing_and_idds_fails_its_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let system = start_system(dir.path()).await;
    let server = ServerClient::new(&system.server_url).expect("client");
    let idds = panda_client::WorkflowServiceClient::new(panda_client::channel(&system.idds_url).expect("channel"));
    let url = format!("--server={}", system.server_url);
    let idds_url = format!("--idds={}", system.idds_url);
    let out = tempfile::tempdir().expect("tempdir");
    let outdir = format!("--outdir={}", out.path().display());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_panda"))
        .args(["cwl-runner", "--quiet", &url, &idds_url, &outdir, &fixture("sleep.cwl")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the runner");
    let running = async {
        loop {
            if let Some(id) = workflow_named(&mut idds.clone(), "cwl.sleep").await {
                let workflow = idds.clone().get_workflow(idds::GetWorkflowRequest { workflow_id: id }).await;
                let task_id = workflow
                    .ok()
                    .and_then(|w| w.into_inner().workflow)
                    .and_then(|w| w.works.first().map(|w| w.task_id));
                if let Some(task_id) = task_id.filter(|t| *t != 0)
                    && jobs(&server, task_id).await.iter().any(|j| j.status == JobStatus::Running as i32)
                {
                    return (id, task_id);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (id, task_id) = tokio::time::timeout(Duration::from_secs(60), running).await.expect("the sleep job runs");
    // The driver dies without a word (SIGKILL: no close, no abort).
    child.kill().await.expect("kill the runner");
    let failed = async {
        loop {
            let workflow = idds
                .clone()
                .get_workflow(idds::GetWorkflowRequest { workflow_id: id })
                .await
                .expect("GetWorkflow")
                .into_inner()
                .workflow
                .expect("workflow");
            if workflow.status == idds::WorkflowStatus::Failed as i32 {
                return workflow;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let workflow = tokio::time::timeout(Duration::from_secs(60), failed).await.expect("idds fails the workflow");
    let work = workflow.works.first().expect("the sleep work");
    assert!(work.reason.contains("driver's lease lapsed"), "{work:?}");
    // The task ends killed; nothing is left running.
    let aborted = async {
        loop {
            let task = tasks(&server).await.into_iter().find(|t| t.task_id == task_id).expect("the sleep task");
            if task.status == TaskStatus::Aborted as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), aborted).await.expect("the task is killed");
    nothing_left(&server).await;
    system.stop().await.expect("system stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_invocations_run_as_concurrent_tasks_and_a_failure_kills_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let system = start_system(dir.path()).await;
    let server = ServerClient::new(&system.server_url).expect("client");
    let url = format!("--server={}", system.server_url);
    let idds_url = format!("--idds={}", system.idds_url);
    let out = tempfile::tempdir().expect("tempdir");
    let outdir = format!("--outdir={}", out.path().display());
    let marks = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("job.yml");

    // Two pilots (the queue's max_workers) and --parallel 2: scatter elements overlap on them,
    // and the outputs keep the scatter order.
    std::fs::write(&job, format!("items: [0, 1, 2, 3]\nmarks: {}\n", marks.path().display())).expect("job");
    let res = runner(&[
        "--quiet",
        "--parallel=2",
        &url,
        &idds_url,
        &outdir,
        &fixture("wf-parallel.cwl"),
        &job.display().to_string(),
    ])
    .await;
    let v = json_out(&res);
    let spans: Vec<(i64, f64, f64)> = v["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| {
            let p: Vec<&str> = s.as_str().expect("span").split(' ').collect();
            (p[0].parse().expect("item"), p[1].parse().expect("start"), p[2].parse().expect("end"))
        })
        .collect();
    assert_eq!(spans.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let overlapping = spans.iter().enumerate().any(|(i, a)| spans[i + 1..].iter().any(|b| a.1 < b.2 && b.1 < a.2));
    assert!(overlapping, "no two invocations overlapped: {spans:?}");

    // Two invocations (the one scatter element, the independent step) on the two pilots: the
    // first to start fails at once, the other naps 120 s unless killed. The run fails
    // (exit 1) and the task still running is killed, not left behind.
    let marks = tempfile::tempdir().expect("tempdir");
    std::fs::write(&job, format!("items: [0]\nfail_first: true\nnap: 120\nmarks: {}\n", marks.path().display()))
        .expect("job");
    let res = runner(&[
        "--quiet",
        "--parallel=2",
        &url,
        &idds_url,
        &outdir,
        &fixture("wf-parallel.cwl"),
        &job.display().to_string(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited with code 3"), "{stderr}");
    let settled = async {
        loop {
            let open = tasks(&server).await.into_iter().filter(|t| {
                ![TaskStatus::Done, TaskStatus::Finished, TaskStatus::Failed, TaskStatus::Aborted, TaskStatus::Broken]
                    .iter()
                    .any(|s| *s as i32 == t.status)
            });
            if open.count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), settled).await.expect("every task ends");
    nothing_left(&server).await;
    let names: Vec<String> = std::fs::read_dir(marks.path())
        .expect("marks")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    // Killed, none napped to its end.
    assert!(names.iter().any(|n| n.starts_with("started.")), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("ended.")), "{names:?}");
    system.stop().await.expect("system stops");
}
