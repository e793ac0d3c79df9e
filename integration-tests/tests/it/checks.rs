//! Assertions shared by the embedded and process runs of the example workflow.

use std::time::Duration;

use panda_client::{ServerClient, WorkflowServiceClient};
use panda_integration_tests::{await_condition, jobs_of};
use panda_proto::common::v1::JobStatus;
use panda_proto::idds::v1 as idds;
use panda_proto::server::v1 as server;

/// Submits the fan-out-merge example and checks that it finishes with every job finished, in DAG
/// order, with the merged output holding both branches' results. Returns the workflow.
pub async fn run_example_workflow(server_url: &str, idds_url: &str, timeout: Duration) -> idds::Workflow {
    let spec = panda_client::files::parse_workflow(&panda_integration_tests::example("fan-out-merge.yaml")).unwrap();
    let workflows = WorkflowServiceClient::new(panda_client::channel(idds_url).unwrap());
    let server = ServerClient::new(server_url).unwrap();
    let workflow_id = panda_client::retry(50, false, || {
        let mut workflows = workflows.clone();
        let spec = spec.clone();
        async move { workflows.submit_workflow(idds::SubmitWorkflowRequest { spec: Some(spec), document: None }).await }
    })
    .await
    .unwrap()
    .into_inner()
    .workflow_id;

    let workflow = await_condition(timeout, "the example workflow to end", || {
        let mut workflows = workflows.clone();
        async move {
            let workflow =
                workflows.get_workflow(idds::GetWorkflowRequest { workflow_id }).await.ok()?.into_inner().workflow?;
            (workflow.status != idds::WorkflowStatus::Running as i32).then_some(workflow)
        }
    })
    .await;
    assert_eq!(workflow.status, idds::WorkflowStatus::Finished as i32, "workflow ended as {workflow:?}");
    assert_eq!(workflow.works.len(), 4);

    // Every job finished, and each task had several.
    let mut jobs_by_work = std::collections::BTreeMap::new();
    for work in &workflow.works {
        assert_eq!(work.status, idds::WorkStatus::Finished as i32, "{work:?}");
        let jobs = jobs_of(&server, work.task_id).await;
        assert!(jobs.len() >= 2, "work {} has {} jobs", work.name, jobs.len());
        for job in &jobs {
            assert_eq!(job.status, JobStatus::Finished as i32, "job {} of {}: {job:?}", job.job_id, work.name);
            assert_eq!(job.exit_code, Some(0));
        }
        jobs_by_work.insert(work.name.clone(), jobs);
    }
    // DAG order: no job of a work started before every job of each parent ended.
    for work in &workflow.works {
        for parent in &work.parents {
            let parent_end = jobs_by_work[parent].iter().map(|j| seconds(&j.ended_at)).fold(f64::MIN, f64::max);
            let child_start = jobs_by_work[&work.name].iter().map(|j| seconds(&j.started_at)).fold(f64::MAX, f64::min);
            assert!(
                child_start >= parent_end,
                "{} started at {child_start} before its parent {parent} ended at {parent_end}",
                work.name
            );
        }
    }
    // The merge saw both branches: 4 "squares" lines and 2 "primes" lines across its outputs.
    let merge = workflow.works.iter().find(|w| w.name == "merge").unwrap();
    let task = server
        .tasks
        .clone()
        .get_task(server::GetTaskRequest { task_id: merge.task_id })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let output = task.spec.unwrap().output_dataset;
    let dataset = server
        .internal
        .clone()
        .get_dataset(server::GetDatasetRequest { name: output })
        .await
        .unwrap()
        .into_inner()
        .dataset
        .unwrap();
    assert_eq!(dataset.status, "done");
    assert_eq!(dataset.files.len(), 2);
    for file in &dataset.files {
        assert_eq!(file.status, "finished");
        assert!(file.size_bytes > 0 && file.checksum.starts_with("adler32:"), "{file:?}");
    }
    workflow
}

fn seconds(ts: &Option<prost_types::Timestamp>) -> f64 {
    let ts = ts.as_ref().expect("timestamp set");
    ts.seconds as f64 + f64::from(ts.nanos) / 1e9
}
