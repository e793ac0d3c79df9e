//! HPO studies in the engine against a real database (SQLite; PostgreSQL when configured) and
//! the in-process fake server: a workflow's study runs iteration by iteration to an early stop,
//! survives a restart without submitting twice, ends its work with the best point; studies
//! driven from outside with ask/tell; plug-in optimizers; bad studies refused; abort cancels.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use panda_bus::outbox::Outbox;
use panda_db::TestDb;
use panda_idds::backend::FakeBackend;
use panda_idds::graph::model::Value;
use panda_idds::graph::{WorkStatus, WorkflowStatus};
use panda_idds::hpo::plugin::PluginConfig;
use panda_idds::hpo::{PointStatus, Space, StudySpec};
use panda_idds::hpo_store::StudyStatus;
use panda_idds::{Engine, store};
use panda_proto::idds::v1 as wire;
use panda_types::TaskStatus;
use tokio::sync::mpsc::UnboundedReceiver;

struct Rig {
    engine: Engine,
    fake: Arc<FakeBackend>,
    submitted: UnboundedReceiver<u64>,
    conn: sea_orm::DatabaseConnection,
}

fn plugins() -> BTreeMap<String, PluginConfig> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hpo/random_plugin.py");
    BTreeMap::from([(
        "tiny".to_owned(),
        PluginConfig { command: vec!["python3".into(), script.into()], timeout: Duration::from_secs(20) },
    )])
}

async fn rig(db: &TestDb) -> Rig {
    let conn = panda_db::connect_and_migrate::<store::Migrator>(&db.url, Some(4)).await.unwrap();
    let (fake, submitted) = FakeBackend::new();
    let fake = Arc::new(fake);
    let engine = Engine::new(conn.clone(), Outbox::new(conn.clone()), fake.clone()).with_hpo_plugins(plugins());
    Rig { engine, fake, submitted, conn }
}

fn native(text: &str) -> wire::WorkflowDocument {
    wire::WorkflowDocument {
        language: wire::WorkflowLanguage::Native as i32,
        text: text.into(),
        name: String::new(),
        user: String::new(),
    }
}

const STUDY: &str = "
name: tuning
works:
  - name: tune
    hpo:
      space:
        x: {type: uniform, low: -5, high: 5}
        n: {type: integer, low: 1, high: 3}
      optimizer: random
      seed: 3
      max_points: 20
      points_per_iteration: 3
      early_stop: {patience: 4}
    task:
      command: 'echo x=%{x} n=%{n}'
  - {name: report, after: [tune], task: {command: 'true', n_jobs: 1}}
";

async fn statuses(engine: &Engine, id: u64) -> BTreeMap<String, WorkStatus> {
    engine.get_workflow(id).await.unwrap().1.into_iter().map(|w| (w.key, w.status)).collect()
}

/// Ends a point's task on the fake server: done with a loss, or failed.
async fn end_point(rig: &Rig, task_id: u64, loss: Option<f64>) {
    let status = if loss.is_some() { TaskStatus::Done } else { TaskStatus::Failed };
    rig.fake.with(|s| {
        s.status.insert(task_id, status);
        if let Some(loss) = loss {
            s.values.insert(task_id, BTreeMap::from([("loss".to_owned(), Value::Float(loss))]));
        }
    });
    rig.engine.on_task_status(task_id, status, Some(uuid::Uuid::new_v4())).await.unwrap();
}

fn env(rig: &Rig, task_id: u64, key: &str) -> String {
    rig.fake.with(|s| s.specs[&task_id].environment.get(key).cloned().unwrap_or_default())
}

async fn a_workflow_study_stops_early_survives_a_restart_and_ends_its_work(db: TestDb) {
    let mut rig = rig(&db).await;
    let id = rig.engine.submit_document(native(STUDY)).await.unwrap();
    assert_eq!(statuses(&rig.engine, id).await["tune"], WorkStatus::Ready);
    rig.engine.submit_ready().await.unwrap();
    assert_eq!(statuses(&rig.engine, id).await["tune"], WorkStatus::Submitted);
    let first: Vec<u64> = (0..3).map(|_| rig.submitted.try_recv().unwrap()).collect();
    assert!(rig.submitted.try_recv().is_err(), "one iteration of 3 points at a time");
    // Each point is a one-job task with its values in the command and the environment.
    for &task in &first {
        let spec = rig.fake.with(|s| s.specs[&task].clone());
        let x = env(&rig, task, "HPO_x");
        let n = env(&rig, task, "HPO_n");
        assert_eq!(spec.command, format!("echo x={x} n={n}"));
        assert_eq!(spec.n_jobs, Some(1));
        assert!((-5.0..=5.0).contains(&x.parse::<f64>().unwrap()), "{x}");
        assert!(["1", "2", "3"].contains(&n.as_str()), "{n}");
    }
    // Restart: a new engine on the same database submits nothing twice.
    let calls = rig.fake.with(|s| s.submit_calls);
    let restarted = Engine::new(rig.conn.clone(), Outbox::new(rig.conn.clone()), rig.fake.clone());
    restarted.reconcile().await.unwrap();
    assert!(rig.submitted.try_recv().is_err(), "no new task after the restart");
    assert_eq!(rig.fake.with(|s| s.submit_calls), calls);
    rig.engine = restarted;
    // Point 1 is the best (0.5); point 2 fails; every later point is worse: the study stops
    // after 4 points without improvement (points 3..6), before max_points.
    let loss = |seq: &str| {
        if seq == "1" {
            Some(0.5)
        } else if seq == "2" {
            None
        } else {
            Some(2.0)
        }
    };
    for &task in &first {
        end_point(&rig, task, loss(&env(&rig, task, "HPO_POINT_SEQ"))).await;
    }
    rig.engine.submit_ready().await.unwrap();
    let second: Vec<u64> = (0..3).map(|_| rig.submitted.try_recv().unwrap()).collect();
    assert_eq!(statuses(&rig.engine, id).await["tune"], WorkStatus::Submitted);
    for &task in &second {
        end_point(&rig, task, loss(&env(&rig, task, "HPO_POINT_SEQ"))).await;
    }
    rig.engine.submit_ready().await.unwrap();
    assert!(rig.submitted.try_recv().is_err(), "stopped early: no third iteration");
    let works = rig.engine.get_workflow(id).await.unwrap().1;
    let tune = works.iter().find(|w| w.key == "tune").unwrap();
    assert_eq!(tune.status, WorkStatus::Finished, "{}", tune.reason);
    assert!(tune.reason.contains("no improvement in 4 points since point 1"), "{}", tune.reason);
    assert_eq!(tune.outputs["best_loss"], Value::Float(0.5));
    assert_eq!(tune.outputs["points"], Value::Int(6));
    assert_eq!(tune.outputs["points_failed"], Value::Int(1));
    let study_id = match tune.outputs["study_id"] {
        Value::Int(i) => i as u64,
        ref other => panic!("{other:?}"),
    };
    let view = rig.engine.get_study(study_id).await.unwrap();
    assert_eq!(view.study.status, StudyStatus::Finished);
    assert_eq!(view.study.workflow_id, Some(id));
    assert_eq!(view.points.len(), 6);
    assert_eq!(view.points.iter().map(|p| p.iteration).collect::<Vec<_>>(), [1, 1, 1, 2, 2, 2]);
    assert_eq!(view.points[1].status, PointStatus::Failed);
    let best = view.best().unwrap();
    assert_eq!((best.seq, best.loss), (1, Some(0.5)));
    let best_x = best.params["x"].as_f64().unwrap();
    assert_eq!(tune.outputs["best.x"], Value::Float(best_x));
    // The work's child runs next; a redelivered point event changes nothing.
    assert_eq!(statuses(&rig.engine, id).await["report"], WorkStatus::Ready);
    let handled = rig.engine.on_task_status(first[0], TaskStatus::Done, None).await.unwrap();
    assert_eq!(handled, panda_idds::Handled::Ignored);
}

async fn a_point_without_a_loss_line_fails_and_abort_cancels_the_study(db: TestDb) {
    let mut rig = rig(&db).await;
    let id = rig.engine.submit_document(native(STUDY)).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    let tasks: Vec<u64> = (0..3).map(|_| rig.submitted.try_recv().unwrap()).collect();
    // Done, but no `panda-output loss=` line.
    rig.fake.with(|s| s.status.insert(tasks[0], TaskStatus::Done));
    rig.engine.on_task_status(tasks[0], TaskStatus::Done, None).await.unwrap();
    let study_id = rig.engine.list_studies(1).await.unwrap()[0].study.id;
    let view = rig.engine.get_study(study_id).await.unwrap();
    let point = view.points.iter().find(|p| p.task_id == Some(tasks[0])).unwrap();
    assert_eq!(point.status, PointStatus::Failed);
    assert!(point.reason.contains("panda-output loss="), "{}", point.reason);
    rig.engine.abort(id).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    let view = rig.engine.get_study(study_id).await.unwrap();
    assert_eq!(view.study.status, StudyStatus::Cancelled);
    assert!(view.study.reason.contains("cancelled"), "{}", view.study.reason);
    assert!(view.points.iter().all(|p| p.status == PointStatus::Failed));
    let killed = rig.fake.with(|s| s.actions.clone());
    assert_eq!(killed, vec![("kill", tasks[1]), ("kill", tasks[2])]);
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Cancelled);
}

fn spec(text: &str) -> StudySpec {
    serde_yaml_ng::from_str(text).unwrap()
}

async fn ask_and_tell_drive_an_outside_study(db: TestDb) {
    let rig = rig(&db).await;
    let study =
        spec("{space: {x: {type: uniform, low: 0, high: 1}}, optimizer: tpe, max_points: 5, points_per_iteration: 2}");
    let id = rig.engine.create_study("outside", "alice", study, None).await.unwrap();
    let first = rig.engine.ask_points(id, 0).await.unwrap();
    assert_eq!(first.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2], "0 asks for points_per_iteration");
    assert!(first.iter().all(|p| p.status == PointStatus::Running));
    assert_eq!(rig.engine.tell_loss(id, 1, Some(0.3), "").await.unwrap(), StudyStatus::Running);
    assert_eq!(rig.engine.tell_loss(id, 2, None, "diverged").await.unwrap(), StudyStatus::Running);
    // Errors name what is wrong.
    let again = rig.engine.tell_loss(id, 1, Some(0.1), "").await.unwrap_err();
    assert!(again.to_string().contains("point 1 already ended done"), "{again}");
    let unknown = rig.engine.tell_loss(id, 9, Some(0.1), "").await.unwrap_err();
    assert!(unknown.to_string().contains("has no point 9"), "{unknown}");
    let nan = rig.engine.tell_loss(id, 1, Some(f64::NAN), "").await.unwrap_err();
    assert!(nan.to_string().contains("loss must be a finite number"), "{nan}");
    // Asking more than remain is cut to max_points.
    let rest = rig.engine.ask_points(id, 10).await.unwrap();
    assert_eq!(rest.iter().map(|p| p.seq).collect::<Vec<_>>(), [3, 4, 5]);
    for (seq, loss) in [(3, 0.2), (4, 0.9)] {
        assert_eq!(rig.engine.tell_loss(id, seq, Some(loss), "").await.unwrap(), StudyStatus::Running);
    }
    assert_eq!(rig.engine.tell_loss(id, 5, Some(0.25), "").await.unwrap(), StudyStatus::Finished);
    let view = rig.engine.get_study(id).await.unwrap();
    assert_eq!(view.best().map(|p| p.seq), Some(3));
    assert_eq!(view.points[1].reason, "diverged");
    assert!(view.study.reason.contains("max_points (5) reached"), "{}", view.study.reason);
    let ended = rig.engine.ask_points(id, 1).await.unwrap_err();
    assert!(ended.to_string().contains("it is finished"), "{ended}");
    assert_eq!(rig.engine.get_study(999).await.unwrap_err().to_string(), "study 999 not found");
}

async fn a_plugin_optimizer_proposes_points(db: TestDb) {
    let rig = rig(&db).await;
    let study = spec(
        "{space: {lr: {type: log_uniform, low: 0.001, high: 1}, act: {type: categorical, choices: [relu, tanh]}},
          optimizer: {plugin: tiny}, max_points: 8, points_per_iteration: 4, seed: 5}",
    );
    let id = rig.engine.create_study("plugged", "", study.clone(), None).await.unwrap();
    let points = rig.engine.ask_points(id, 0).await.unwrap();
    assert_eq!(points.len(), 4);
    for point in &points {
        study.space.check_point(&point.params, "p").unwrap();
    }
    let view = rig.engine.get_study(id).await.unwrap();
    assert_eq!(view.study.user, "anonymous");
}

async fn bad_studies_are_refused_naming_the_field(db: TestDb) {
    let rig = rig(&db).await;
    let empty = spec("{space: {x: {type: uniform, low: 1, high: 1}}, max_points: 3}");
    let error = rig.engine.create_study("s", "", empty, None).await.unwrap_err();
    assert_eq!(error.to_string(), "invalid study: study.space.x empty range: low and high are both 1");
    let unknown = spec("{space: {x: {type: integer, low: 1, high: 3}}, max_points: 3, optimizer: {plugin: nope}}");
    let error = rig.engine.create_study("s", "", unknown, None).await.unwrap_err();
    assert!(error.to_string().contains("study.optimizer.plugin no plug-in named \"nope\""), "{error}");
    assert!(error.to_string().contains("configured: tiny"), "{error}");
    let cases = [
        (
            "name: w\nworks:\n  - name: t\n    hpo: {space: {x: {type: uniform, low: 2, high: 1}}, max_points: 3}\n    task: {command: 'true'}\n",
            "hpo.space.x: low (2) is greater than high (1)",
        ),
        (
            "name: w\nworks:\n  - name: t\n    hpo: {space: {c: {type: categorical, choices: []}}, max_points: 3}\n",
            "hpo needs a task",
        ),
        (
            "name: w\nworks:\n  - name: t\n    hpo: {space: {x: {type: integer, low: 1, high: 3}}, max_points: 3, optimizer: {plugin: nope}}\n    task: {command: 'true'}\n",
            "nodes.t.hpo.optimizer.plugin",
        ),
    ];
    for (text, expected) in cases {
        let error = rig.engine.submit_document(native(text)).await.unwrap_err();
        assert!(error.to_string().contains(expected), "expected {expected:?} in {error}");
    }
    assert!(rig.engine.list_workflows(10).await.unwrap().is_empty(), "nothing stored");
    assert!(rig.engine.list_studies(10).await.unwrap().is_empty(), "nothing stored");
    let _ = Space::default();
}

async fn the_grpc_adapter_names_bad_fields_and_round_trips(db: TestDb) {
    use panda_proto::idds::v1::hpo_service_server::HpoService;
    use tonic::{Code, Request};
    let rig = rig(&db).await;
    let api = panda_idds::grpc_hpo::HpoApi { engine: rig.engine.clone() };
    let create =
        |spec: &str| wire::CreateStudyRequest { name: "api".into(), user: "bob".into(), spec: spec.into(), task: None };
    let bad_yaml = api.create_study(Request::new(create("{space: {x: {type: uniform, low: 0}}, max_points: 2}"))).await;
    let status = bad_yaml.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("spec") && status.message().contains("high"), "{}", status.message());
    let bad_range = api
        .create_study(Request::new(create("{space: {x: {type: log_uniform, low: 0, high: 1}}, max_points: 2}")))
        .await;
    let status = bad_range.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("study.space.x log_uniform needs low > 0"), "{}", status.message());
    let task = panda_proto::server::v1::TaskSpec { command: "echo %{x}".into(), ..Default::default() };
    let driven = api
        .create_study(Request::new(wire::CreateStudyRequest {
            task: Some(task),
            ..create("{space: {x: {type: integer, low: 1, high: 9}}, max_points: 2}")
        }))
        .await
        .unwrap()
        .into_inner()
        .study_id;
    let status = api.ask_points(Request::new(wire::AskPointsRequest { study_id: driven, n: 1 })).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    let id = api
        .create_study(Request::new(create("{space: {x: {type: integer, low: 1, high: 9}}, max_points: 2}")))
        .await
        .unwrap()
        .into_inner()
        .study_id;
    let points = api.ask_points(Request::new(wire::AskPointsRequest { study_id: id, n: 2 })).await.unwrap();
    let points = points.into_inner().points;
    assert_eq!(points.len(), 2);
    let x: serde_json::Value = serde_json::from_str(&points[0].params_json).unwrap();
    assert!((1..=9).contains(&x["x"].as_i64().unwrap()), "{x}");
    let tell = |seq, loss| wire::TellLossRequest { study_id: id, seq, loss, reason: String::new() };
    let status = api.tell_loss(Request::new(tell(0, Some(1.0)))).await.unwrap_err();
    assert!(status.message().contains("seq is required"), "{}", status.message());
    api.tell_loss(Request::new(tell(1, Some(2.0)))).await.unwrap();
    let after = api.tell_loss(Request::new(tell(2, Some(1.0)))).await.unwrap().into_inner();
    assert_eq!(after.study_status, "finished");
    let study = api.get_study(Request::new(wire::GetStudyRequest { study_id: id })).await.unwrap().into_inner();
    let study = study.study.unwrap();
    assert_eq!((study.best_seq, study.best_loss, study.points_done), (2, Some(1.0), 2));
    assert_eq!(study.points.len(), 2);
    let status = api.get_study(Request::new(wire::GetStudyRequest { study_id: 0 })).await.unwrap_err();
    assert!(status.message().contains("study_id is required"), "{}", status.message());
    let status = api.get_study(Request::new(wire::GetStudyRequest { study_id: 77 })).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let listed = api.list_studies(Request::new(wire::ListStudiesRequest { limit: 0 })).await.unwrap().into_inner();
    assert_eq!(listed.studies.len(), 2);
    assert!(listed.studies.iter().all(|s| s.points.is_empty()), "lists carry no points");
}

macro_rules! suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::TestDb::sqlite_temp()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                #[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
                async fn $case() {
                    super::$case(super::TestDb::postgres_from_env().await).await;
                }
            )+
        }
    };
}

suite!(
    a_workflow_study_stops_early_survives_a_restart_and_ends_its_work,
    a_point_without_a_loss_line_fails_and_abort_cancels_the_study,
    ask_and_tell_drive_an_outside_study,
    a_plugin_optimizer_proposes_points,
    bad_studies_are_refused_naming_the_field,
    the_grpc_adapter_names_bad_fields_and_round_trips,
);
