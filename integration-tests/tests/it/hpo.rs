//! The HPO example workflow on the embedded system: idds proposes points, local pilots evaluate
//! the quadratic, the study stops early in the optimum region and the next work runs.

use std::time::Duration;

use panda_client::{HpoServiceClient, WorkflowServiceClient};
use panda_integration_tests::{await_condition, example, fast_config, start};
use panda_proto::idds::v1 as idds;

use crate::PILOT;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hpo_example_finds_the_optimum_region() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let mut workflows = WorkflowServiceClient::new(panda_client::channel(&cluster.idds_url).unwrap());
    let document = idds::WorkflowDocument {
        language: idds::WorkflowLanguage::Native as i32,
        text: example("hpo.yaml"),
        name: String::new(),
        user: String::new(),
    };
    let workflow_id = workflows
        .submit_workflow(idds::SubmitWorkflowRequest { spec: None, document: Some(document) })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let workflow = await_condition(Duration::from_secs(240), "the hpo workflow to end", || {
        let mut workflows = workflows.clone();
        async move {
            let w =
                workflows.get_workflow(idds::GetWorkflowRequest { workflow_id }).await.ok()?.into_inner().workflow?;
            (w.status != idds::WorkflowStatus::Running as i32).then_some(w)
        }
    })
    .await;
    assert_eq!(workflow.status, idds::WorkflowStatus::Finished as i32, "{workflow:?}");
    let tune = workflow.works.iter().find(|w| w.name == "tune").unwrap();
    assert!(tune.reason.contains("reached the threshold 0.05"), "stopped early: {}", tune.reason);

    let mut hpo = HpoServiceClient::new(panda_client::channel(&cluster.idds_url).unwrap());
    let studies = hpo.list_studies(idds::ListStudiesRequest { limit: 10 }).await.unwrap().into_inner().studies;
    let listed = studies.iter().find(|s| s.workflow_id == workflow_id).expect("the work's study");
    let study =
        hpo.get_study(idds::GetStudyRequest { study_id: listed.study_id }).await.unwrap().into_inner().study.unwrap();
    assert_eq!(study.status, "finished");
    assert!(study.points_total < 32, "early stop before max_points: {}", study.points_total);
    assert_eq!(study.points_total as usize, study.points.len());
    assert_eq!(study.points.iter().filter(|p| p.status == "done").count() as u32, study.points_done);
    // Every point ran as its own task and reported the loss its parameters give.
    for point in &study.points {
        assert_ne!(point.task_id, 0);
        let p: serde_json::Value = serde_json::from_str(&point.params_json).unwrap();
        let (x, y, s) = (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap(), p["scale"].as_f64().unwrap());
        let expected = s * ((x - 1.5).powi(2) + (y + 2.0).powi(2));
        assert!((point.loss.unwrap() - expected).abs() < 1e-4, "{point:?}");
    }
    // The best point is in the optimum region.
    let best: serde_json::Value = serde_json::from_str(&study.best_params_json).unwrap();
    assert!(study.best_loss.unwrap() <= 0.05);
    assert!((best["x"].as_f64().unwrap() - 1.5).abs() < 1.0, "{best}");
    assert!((best["y"].as_f64().unwrap() + 2.0).abs() < 1.0, "{best}");
    // The work after the study ran.
    let report = workflow.works.iter().find(|w| w.name == "report").unwrap();
    assert_eq!(report.status, idds::WorkStatus::Finished as i32);
    cluster.stop().await.unwrap();
}
