//! The engine against a real database (SQLite; PostgreSQL when configured): task events move the
//! DAG, a redelivered event changes nothing, failures skip the subtree.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use panda_bus::outbox::Outbox;
use panda_db::TestDb;
use panda_idds::dag::{WorkStatus, WorkflowStatus};
use panda_idds::{Engine, Handled, store};
use panda_proto::idds::v1 as wire;
use panda_proto::server::v1::TaskSpec;
use panda_types::TaskStatus;

async fn engine(db: &TestDb) -> Engine {
    let conn = panda_db::connect_and_migrate::<store::Migrator>(&db.url, Some(4)).await.unwrap();
    // No server answers here: these tests never submit (the submitter is not running).
    let server = panda_client::ServerClient::new("http://127.0.0.1:1").unwrap();
    Engine::new(conn.clone(), Outbox::new(conn), server)
}

fn work(name: &str, parents: &[&str]) -> wire::WorkSpec {
    wire::WorkSpec {
        name: name.into(),
        parents: parents.iter().map(|p| p.to_string()).collect(),
        task: Some(TaskSpec { name: name.into(), command: "true".into(), n_jobs: Some(1), ..Default::default() }),
    }
}

fn diamond() -> wire::WorkflowSpec {
    wire::WorkflowSpec {
        name: "wf".into(),
        user: String::new(),
        works: vec![work("gen", &[]), work("a", &["gen"]), work("b", &["gen"]), work("merge", &["a", "b"])],
    }
}

/// Marks a ready work submitted as task `task_id`, as the submitter would.
async fn submitted(engine: &Engine, workflow_id: u64, name: &str, task_id: u64) {
    let (_, works) = engine.get_workflow(workflow_id).await.unwrap();
    let work = works.iter().find(|w| w.name == name).unwrap();
    assert_eq!(work.status, WorkStatus::Ready, "{name} should be ready");
    store::set_work(engine_db(engine), work.id, WorkStatus::Submitted, Some(task_id), Some("registered"))
        .await
        .unwrap();
}

fn engine_db(engine: &Engine) -> &sea_orm::DatabaseConnection {
    engine.db()
}

async fn statuses(engine: &Engine, workflow_id: u64) -> Vec<(String, WorkStatus)> {
    let (_, works) = engine.get_workflow(workflow_id).await.unwrap();
    works.into_iter().map(|w| (w.name, w.status)).collect()
}

async fn dag_runs_in_order_and_events_apply_once(db: TestDb) {
    let engine = engine(&db).await;
    let id = engine.submit_workflow(diamond()).await.unwrap();
    let start = statuses(&engine, id).await;
    for (name, expected) in [
        ("gen", WorkStatus::Ready),
        ("a", WorkStatus::Waiting),
        ("b", WorkStatus::Waiting),
        ("merge", WorkStatus::Waiting),
    ] {
        assert!(start.contains(&(name.to_owned(), expected)), "{name}: {start:?}");
    }
    submitted(&engine, id, "gen", 10).await;
    let event = uuid::Uuid::new_v4();
    assert_eq!(engine.on_task_status(10, TaskStatus::Done, Some(event)).await.unwrap(), Handled::Applied);
    // The same event again (at-least-once delivery) changes nothing.
    assert_eq!(engine.on_task_status(10, TaskStatus::Done, Some(event)).await.unwrap(), Handled::Ignored);
    let now = statuses(&engine, id).await;
    for (name, expected) in [
        ("gen", WorkStatus::Finished),
        ("a", WorkStatus::Ready),
        ("b", WorkStatus::Ready),
        ("merge", WorkStatus::Waiting),
    ] {
        assert!(now.contains(&(name.to_owned(), expected)), "{name}: {now:?}");
    }
    submitted(&engine, id, "a", 11).await;
    submitted(&engine, id, "b", 12).await;
    engine.on_task_status(11, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap();
    // merge waits for both parents.
    assert!(statuses(&engine, id).await.contains(&("merge".to_owned(), WorkStatus::Waiting)));
    engine.on_task_status(12, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap();
    submitted(&engine, id, "merge", 13).await;
    engine.on_task_status(13, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap();
    let (workflow, _) = engine.get_workflow(id).await.unwrap();
    assert_eq!(workflow.status, WorkflowStatus::Finished);
    // Events for tasks idds does not know are ignored.
    assert_eq!(
        engine.on_task_status(999, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap(),
        Handled::Ignored
    );
}

async fn a_failed_parent_skips_its_subtree(db: TestDb) {
    let engine = engine(&db).await;
    let id = engine.submit_workflow(diamond()).await.unwrap();
    submitted(&engine, id, "gen", 20).await;
    engine.on_task_status(20, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap();
    submitted(&engine, id, "a", 21).await;
    submitted(&engine, id, "b", 22).await;
    engine.on_task_status(21, TaskStatus::Failed, Some(uuid::Uuid::new_v4())).await.unwrap();
    engine.on_task_status(22, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap();
    let now = statuses(&engine, id).await;
    assert!(now.contains(&("a".to_owned(), WorkStatus::Failed)), "{now:?}");
    assert!(now.contains(&("merge".to_owned(), WorkStatus::Skipped)), "{now:?}");
    assert_eq!(engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::SubFinished);
}

async fn an_invalid_workflow_stores_nothing(db: TestDb) {
    let engine = engine(&db).await;
    let mut spec = diamond();
    spec.works[0].parents = vec!["merge".into()];
    let error = engine.submit_workflow(spec).await.unwrap_err().to_string();
    assert!(error.contains("cycle"), "{error}");
    assert!(engine.list_workflows(10).await.unwrap().is_empty());
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

suite!(dag_runs_in_order_and_events_apply_once, a_failed_parent_skips_its_subtree, an_invalid_workflow_stores_nothing);
