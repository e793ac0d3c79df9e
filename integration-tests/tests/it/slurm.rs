//! Every service in this process with a Slurm queue: the harvester submits pilots as real Slurm
//! batch jobs, which take the task's jobs from the server. Ignored unless a Slurm runs on this
//! machine (`scripts/slurm-up.sh`, then `PANDA_TEST_SLURM=1`); asked for without one, it fails.

use std::time::Duration;

use panda_client::{HarvesterServiceClient, ServerClient};
use panda_integration_tests::{await_condition, await_task, fast_config, start};
use panda_proto::common::v1::{TaskStatus, WorkerStatus};
use panda_proto::harvester::v1 as harvester;
use panda_proto::server::v1 as server;

use crate::PILOT;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Slurm: run scripts/slurm-up.sh and set PANDA_TEST_SLURM=1"]
async fn a_task_runs_in_pilots_that_slurm_started() {
    assert_eq!(
        std::env::var("PANDA_TEST_SLURM").as_deref(),
        Ok("1"),
        "this test needs a running Slurm: run scripts/slurm-up.sh and set PANDA_TEST_SLURM=1"
    );
    let dir = tempfile::tempdir().unwrap();
    let queues = dir.path().join("queues.yaml");
    std::fs::write(
        &queues,
        format!(
            "queues:
  slurm_it:
    max_workers: 2
    resources: {{ cores: 1, memory_mb: 500, walltime_seconds: 600 }}
    plugin:
      type: slurm
      pilot_command: [{PILOT}]
      command_timeout: 30s
"
        ),
    )
    .unwrap();
    let mut config = fast_config(dir.path());
    config.harvester.queue_config = Some(queues);
    let cluster = start(config, PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();

    // Each job writes the Slurm job it ran in (the pilot's environment reaches the payload).
    let spec = server::TaskSpec {
        name: "on-slurm".into(),
        command: "echo \"job {index} in slurm job $SLURM_JOB_ID\" > {output}".into(),
        n_jobs: Some(4),
        output_dataset: "on-slurm.out".into(),
        ..Default::default()
    };
    let request = server::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() };
    let task_id = server.tasks.clone().submit_task(request).await.unwrap().into_inner().task_id;
    await_task(&server, task_id, TaskStatus::Done, Duration::from_secs(180)).await;
    for index in 1..=4 {
        let text = std::fs::read_to_string(dir.path().join(format!("storage/on-slurm.out._{index:06}"))).unwrap();
        let slurm_job = text.trim().rsplit(' ').next().unwrap();
        assert!(
            text.starts_with(&format!("job {index} in slurm job ")) && slurm_job.parse::<u64>().is_ok(),
            "{text:?}"
        );
    }

    // The pilots end when the queue has no more jobs; their workers end finished, with the Slurm
    // job IDs as batch IDs.
    let workers = HarvesterServiceClient::new(panda_client::channel(&cluster.harvester_url).unwrap());
    let listed = await_condition(Duration::from_secs(120), "the Slurm workers to finish", || {
        let mut workers = workers.clone();
        async move {
            let request = harvester::ListWorkersRequest { queue: "slurm_it".into(), limit: 100 };
            let listed = workers.list_workers(request).await.ok()?.into_inner().workers;
            let live = [WorkerStatus::Pending, WorkerStatus::Submitted, WorkerStatus::Running, WorkerStatus::Idle];
            (!listed.is_empty() && listed.iter().all(|w| !live.iter().any(|s| *s as i32 == w.status))).then_some(listed)
        }
    })
    .await;
    assert!(listed.iter().any(|w| w.status == WorkerStatus::Finished as i32), "{listed:?}");
    assert!(listed.iter().all(|w| w.batch_id.parse::<u64>().is_ok()), "{listed:?}");
    cluster.stop().await.unwrap();
}
