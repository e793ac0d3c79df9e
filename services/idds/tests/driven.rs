//! Driven workflows (a driver such as the CWL runner adds works while it runs) against a real
//! database and an in-process fake server: added works wait for their parents, are submitted
//! once, survive a restart; the workflow ends only when closed or aborted; bad AddWork input is
//! refused naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use panda_bus::outbox::Outbox;
use panda_db::TestDb;
use panda_idds::backend::FakeBackend;
use panda_idds::graph::{WorkStatus, WorkflowStatus};
use panda_idds::{Engine, store};
use panda_proto::idds::v1 as wire;
use panda_proto::server::v1 as server;
use panda_types::TaskStatus;
use tonic::Code;

struct Rig {
    engine: Engine,
    fake: Arc<FakeBackend>,
}

async fn rig(db: &TestDb) -> Rig {
    let conn = panda_db::connect_and_migrate::<store::Migrator>(&db.url, Some(4)).await.unwrap();
    let (fake, _submitted) = FakeBackend::new();
    let fake = Arc::new(fake);
    Rig { engine: Engine::new(conn.clone(), Outbox::new(conn), fake.clone()), fake }
}

fn task(command: &str) -> Option<server::TaskSpec> {
    Some(server::TaskSpec { name: "tool".into(), command: command.into(), n_jobs: Some(1), ..Default::default() })
}

fn parents(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

async fn statuses(engine: &Engine, id: u64) -> BTreeMap<String, WorkStatus> {
    engine.get_workflow(id).await.unwrap().1.into_iter().map(|w| (w.key, w.status)).collect()
}

async fn task_of(engine: &Engine, id: u64, key: &str) -> u64 {
    let works = engine.get_workflow(id).await.unwrap().1;
    works.iter().find(|w| w.key == key).and_then(|w| w.task_id).unwrap_or_else(|| panic!("{key} has no task"))
}

async fn end(rig: &Rig, task_id: u64, status: TaskStatus) {
    rig.fake.with(|s| s.status.insert(task_id, status));
    rig.engine.on_task_status(task_id, status, Some(uuid::Uuid::new_v4())).await.unwrap();
}

fn code(error: panda_idds::service::Error) -> (Code, String) {
    let status = tonic::Status::from(error);
    (status.code(), status.message().to_owned())
}

async fn added_works_run_after_their_parents_and_the_workflow_ends_when_closed(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.create_driven("cwl.scatter".into(), "alice".into()).await.unwrap();
    // Empty, yet running: the driver has not added anything yet.
    rig.engine.submit_ready().await.unwrap();
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Running);
    for i in 0..3 {
        let added = rig.engine.add_work(id, format!("echo.{i}"), Vec::new(), task("echo")).await.unwrap();
        assert!(added.created);
        assert_eq!(added.work.status, WorkStatus::Ready);
    }
    let all = parents(&["echo.0", "echo.1", "echo.2"]);
    let added = rig.engine.add_work(id, "merge".into(), all.clone(), task("cat")).await.unwrap();
    assert_eq!(added.work.status, WorkStatus::Waiting);
    assert_eq!(rig.engine.submit_ready().await.unwrap().submitted, 3);
    // The same AddWork again (a driver that retried) answers the same work and submits nothing.
    let again = rig.engine.add_work(id, "echo.1".into(), Vec::new(), task("echo")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.work.task_id, Some(task_of(&rig.engine, id, "echo.1").await));
    for i in 0..3 {
        let t = task_of(&rig.engine, id, &format!("echo.{i}")).await;
        end(&rig, t, TaskStatus::Done).await;
    }
    assert_eq!(rig.engine.submit_ready().await.unwrap().submitted, 1);
    let merge = task_of(&rig.engine, id, "merge").await;
    assert_eq!(rig.fake.with(|s| s.specs[&merge].user.clone()), "alice");
    end(&rig, merge, TaskStatus::Done).await;
    // Every work ended, and still running: the driver may add more.
    assert!(statuses(&rig.engine, id).await.values().all(|s| *s == WorkStatus::Finished));
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Running);
    // Parents are shown as for any workflow.
    let (graph, _) = rig.engine.get_graph(id).await.unwrap();
    assert_eq!(graph.node("merge").unwrap().hard_parents(), vec!["echo.0", "echo.1", "echo.2"]);
    rig.engine.close(id, WorkflowStatus::Finished, "").await.unwrap();
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Finished);
    // Closing again the same way is harmless; adding is over.
    rig.engine.close(id, WorkflowStatus::Finished, "").await.unwrap();
    let (c, m) = code(rig.engine.add_work(id, "late".into(), Vec::new(), task("x")).await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert_eq!(rig.fake.with(|s| s.by_key.len()), 4, "one task per work");
}

/// An AddWork request (workflow, key, parents, task) and the code and text its refusal carries.
type Case = (u64, &'static str, Vec<String>, Option<server::TaskSpec>, Code, &'static str);

async fn bad_add_work_input_is_refused_naming_the_field(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.create_driven("cwl.bad".into(), String::new()).await.unwrap();
    rig.engine.add_work(id, "a".into(), Vec::new(), task("true")).await.unwrap();
    let cases: Vec<Case> = vec![
        (999, "x", Vec::new(), task("true"), Code::NotFound, "workflow 999 not found"),
        (id, "a b", Vec::new(), task("true"), Code::InvalidArgument, "key "),
        (id, "b", parents(&["b"]), task("true"), Code::InvalidArgument, "parents[0] a work cannot wait for itself"),
        (id, "b", parents(&["a", "a"]), task("true"), Code::InvalidArgument, "parents[1] \"a\" is named twice"),
        (id, "b", parents(&["a", "zz"]), task("true"), Code::InvalidArgument, "parents[1] workflow"),
        (id, "b", Vec::new(), None, Code::InvalidArgument, "task is required"),
        (id, "b", Vec::new(), task(""), Code::InvalidArgument, "task.command"),
        // The same key with another task or other parents names another work.
        (id, "a", Vec::new(), task("false"), Code::AlreadyExists, "already has a work \"a\""),
        (id, "a", parents(&["b"]), task("true"), Code::AlreadyExists, "already has a work \"a\""),
    ];
    for (workflow, key, parents, task, expected, text) in cases {
        let (c, m) = code(rig.engine.add_work(workflow, key.into(), parents, task).await.unwrap_err());
        assert_eq!(c, expected, "{key}: {m}");
        assert!(m.contains(text), "{key}: {m:?} should contain {text:?}");
    }
    // A parent added later cannot be named first, so no cycle can form: b → a exists, a → b not.
    let (c, m) = code(rig.engine.add_work(id, "c".into(), parents(&["d"]), task("true")).await.unwrap_err());
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("add parents before their children"), "{m}");
    // Nothing of the refused requests was stored.
    assert_eq!(statuses(&rig.engine, id).await.keys().collect::<Vec<_>>(), vec!["a"]);
    // A workflow made from a document is not driven.
    let doc = wire::WorkflowDocument {
        language: wire::WorkflowLanguage::Native as i32,
        text: "name: plain\nworks:\n  - {name: a, task: {command: 'true', n_jobs: 1}}\n".into(),
        name: String::new(),
        user: String::new(),
    };
    let plain = rig.engine.submit_document(doc).await.unwrap();
    let (c, m) = code(rig.engine.add_work(plain, "b".into(), Vec::new(), task("true")).await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert!(m.contains("not a driven workflow"), "{m}");
    let (c, _) = code(rig.engine.close(plain, WorkflowStatus::Finished, "").await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition);
    let (c, m) = code(rig.engine.create_driven("no spaces".into(), String::new()).await.unwrap_err());
    assert_eq!(c, Code::InvalidArgument, "{m}");
}

async fn closing_failed_or_aborting_stops_the_running_works(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.create_driven("cwl.fail".into(), String::new()).await.unwrap();
    rig.engine.add_work(id, "a".into(), Vec::new(), task("true")).await.unwrap();
    rig.engine.add_work(id, "b".into(), parents(&["a"]), task("true")).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    let a = task_of(&rig.engine, id, "a").await;
    // Finished needs every work ended.
    let (c, m) = code(rig.engine.close(id, WorkflowStatus::Finished, "").await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition);
    assert!(m.contains("have not ended"), "{m}");
    let (c, _) = code(rig.engine.close(id, WorkflowStatus::Cancelled, "").await.unwrap_err());
    assert_eq!(c, Code::InvalidArgument);
    rig.engine.close(id, WorkflowStatus::Failed, "tool x failed").await.unwrap();
    assert!(rig.fake.with(|s| s.actions.contains(&("kill", a))));
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Failed);
    assert!(statuses(&rig.engine, id).await.values().all(|s| *s == WorkStatus::Cancelled));

    // Abort (the user's `panda workflow abort`) works on a driven workflow like on any other.
    let id = rig.engine.create_driven("cwl.abort".into(), String::new()).await.unwrap();
    rig.engine.add_work(id, "a".into(), Vec::new(), task("true")).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    let a = task_of(&rig.engine, id, "a").await;
    rig.engine.abort(id).await.unwrap();
    assert!(rig.fake.with(|s| s.actions.contains(&("kill", a))));
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Cancelled);
    let (c, m) = code(rig.engine.add_work(id, "b".into(), Vec::new(), task("true")).await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition);
    assert!(m.contains("cancelled"), "{m}");
    // The driver's close after an abort is refused: the workflow ended.
    let (c, _) = code(rig.engine.close(id, WorkflowStatus::Failed, "").await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition);
}

async fn a_restarted_engine_keeps_the_added_works_and_waits_for_the_driver(db: TestDb) {
    let rig1 = rig(&db).await;
    let id = rig1.engine.create_driven("cwl.restart".into(), String::new()).await.unwrap();
    rig1.engine.add_work(id, "a".into(), Vec::new(), task("true")).await.unwrap();
    rig1.engine.add_work(id, "b".into(), parents(&["a"]), task("true")).await.unwrap();
    rig1.engine.submit_ready().await.unwrap();
    let a = task_of(&rig1.engine, id, "a").await;
    let fake = rig1.fake.clone();
    drop(rig1);
    let conn = panda_db::connect_and_migrate::<store::Migrator>(&db.url, Some(4)).await.unwrap();
    let engine = Engine::new(conn.clone(), Outbox::new(conn), fake.clone());
    // Missed while down: a's task ended. Reconciliation applies it and submits b, once.
    fake.with(|s| s.status.insert(a, TaskStatus::Done));
    engine.reconcile().await.unwrap();
    engine.reconcile().await.unwrap();
    let b = task_of(&engine, id, "b").await;
    fake.with(|s| s.status.insert(b, TaskStatus::Done));
    engine.reconcile().await.unwrap();
    assert!(statuses(&engine, id).await.values().all(|s| *s == WorkStatus::Finished));
    // Still the driver's: running, and it can add more.
    assert_eq!(engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Running);
    let added = engine.add_work(id, "c".into(), parents(&["b"]), task("true")).await.unwrap();
    assert_eq!(added.work.status, WorkStatus::Ready);
    engine.submit_ready().await.unwrap();
    assert_eq!(fake.with(|s| s.by_key.len()), 3, "one task per work across the restart");
}

async fn the_grpc_adapter_checks_ids_and_states(db: TestDb) {
    use panda_proto::idds::v1::driven_workflow_service_server::DrivenWorkflowService;
    let rig = rig(&db).await;
    let api = panda_idds::grpc_driven::DrivenApi { engine: rig.engine.clone() };
    let id = api
        .create_driven_workflow(tonic::Request::new(wire::CreateDrivenWorkflowRequest {
            name: "cwl.api".into(),
            user: "bob".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let request = |workflow_id, key: &str, parents: Vec<String>| wire::AddWorkRequest {
        workflow_id,
        key: key.into(),
        parents,
        task: task("true"),
    };
    let error = api.add_work(tonic::Request::new(request(0, "a", Vec::new()))).await.unwrap_err();
    assert_eq!((error.code(), error.message()), (Code::InvalidArgument, "workflow_id is required"));
    let a = api.add_work(tonic::Request::new(request(id, "a", Vec::new()))).await.unwrap().into_inner();
    assert!(a.created);
    let b = api.add_work(tonic::Request::new(request(id, "b", parents(&["a"])))).await.unwrap().into_inner();
    let work = b.work.unwrap();
    assert_eq!(
        (work.key.as_str(), work.parents.clone(), work.status),
        ("b", parents(&["a"]), wire::WorkStatus::Waiting as i32)
    );
    let close = |status: wire::WorkflowStatus| wire::CloseWorkflowRequest {
        workflow_id: id,
        status: status as i32,
        reason: String::new(),
    };
    let error = api.close_workflow(tonic::Request::new(close(wire::WorkflowStatus::Running))).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("FINISHED or FAILED"), "{}", error.message());
    let closed =
        api.close_workflow(tonic::Request::new(close(wire::WorkflowStatus::Failed))).await.unwrap().into_inner();
    let workflow = closed.workflow.unwrap();
    assert_eq!(workflow.status, wire::WorkflowStatus::Failed as i32);
    assert_eq!(workflow.works.len(), 2);
    assert_eq!(workflow.works.iter().find(|w| w.key == "b").unwrap().parents, parents(&["a"]));
}

async fn a_driver_that_stops_renewing_has_its_workflow_failed_and_tasks_killed(db: TestDb) {
    use std::time::{Duration, Instant};
    let rig = rig(&db).await;
    let engine = rig.engine.clone().with_driver_lease(Duration::from_secs(30));
    let id = engine.create_driven("cwl.dead".into(), String::new()).await.unwrap();
    engine.add_work(id, "a".into(), Vec::new(), task("true")).await.unwrap();
    engine.add_work(id, "b".into(), parents(&["a"]), task("true")).await.unwrap();
    engine.submit_ready().await.unwrap();
    let a = task_of(&engine, id, "a").await;
    // Within the lease: nothing happens.
    assert!(engine.expire_driver_leases(Instant::now() + Duration::from_secs(20)).await.unwrap().is_empty());
    assert_eq!(engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Running);
    // The driver renews, so the lease runs 30 s from now, not from the last AddWork.
    let renewed = Instant::now();
    assert_eq!(engine.renew_driver(id).await.unwrap(), Duration::from_secs(30));
    assert!(engine.expire_driver_leases(renewed + Duration::from_secs(29)).await.unwrap().is_empty());
    // Then it stops: past the lease the workflow fails, its running task is killed, the rest
    // cancelled, each naming the lapse.
    let later = Instant::now() + Duration::from_secs(31);
    assert_eq!(engine.expire_driver_leases(later).await.unwrap(), vec![id]);
    assert!(rig.fake.with(|s| s.actions.contains(&("kill", a))));
    let (workflow, works) = engine.get_workflow(id).await.unwrap();
    assert_eq!(workflow.status, WorkflowStatus::Failed);
    for work in &works {
        assert_eq!(work.status, WorkStatus::Cancelled, "{}", work.key);
        assert!(work.reason.contains("driver's lease lapsed"), "{}: {}", work.key, work.reason);
    }
    // Done once: a second sweep does nothing; a late driver is told the workflow ended.
    assert!(engine.expire_driver_leases(later).await.unwrap().is_empty());
    let (c, m) = code(engine.renew_driver(id).await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition);
    assert!(m.contains("failed"), "{m}");
    let (c, _) = code(engine.add_work(id, "c".into(), Vec::new(), task("true")).await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition);

    // A closed workflow has no lease left to lapse; a plain workflow has none to renew.
    let closed = engine.create_driven("cwl.closed".into(), String::new()).await.unwrap();
    engine.close(closed, WorkflowStatus::Finished, "").await.unwrap();
    assert!(engine.expire_driver_leases(Instant::now() + Duration::from_secs(3600)).await.unwrap().is_empty());
    assert_eq!(engine.get_workflow(closed).await.unwrap().0.status, WorkflowStatus::Finished);
    let (c, m) = code(engine.renew_driver(closed).await.unwrap_err());
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    let (c, _) = code(engine.renew_driver(999_999).await.unwrap_err());
    assert_eq!(c, Code::NotFound);

    // Through gRPC: the driver learns the lease length at creation and at each renewal.
    use panda_proto::idds::v1::driven_workflow_service_server::DrivenWorkflowService;
    let api = panda_idds::grpc_driven::DrivenApi { engine: engine.clone() };
    let created = api
        .create_driven_workflow(tonic::Request::new(wire::CreateDrivenWorkflowRequest {
            name: "cwl.api".into(),
            user: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.lease_seconds, 30);
    let renewed = api
        .renew_driver(tonic::Request::new(wire::RenewDriverRequest { workflow_id: created.workflow_id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.lease_seconds, 30);
    let missing = api.renew_driver(tonic::Request::new(wire::RenewDriverRequest { workflow_id: 0 })).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
}

async fn after_a_restart_a_driven_workflow_gets_a_whole_lease_and_then_lapses(db: TestDb) {
    use std::time::{Duration, Instant};
    let rig1 = rig(&db).await;
    let id = rig1.engine.create_driven("cwl.restart-lease".into(), String::new()).await.unwrap();
    rig1.engine.add_work(id, "a".into(), Vec::new(), task("true")).await.unwrap();
    rig1.engine.submit_ready().await.unwrap();
    let a = task_of(&rig1.engine, id, "a").await;
    let fake = rig1.fake.clone();
    drop(rig1);
    let conn = panda_db::connect_and_migrate::<store::Migrator>(&db.url, Some(4)).await.unwrap();
    let engine = Engine::new(conn.clone(), Outbox::new(conn), fake.clone()).with_driver_lease(Duration::from_secs(30));
    fake.with(|s| s.status.insert(a, TaskStatus::Running));
    let restarted = Instant::now();
    engine.reconcile().await.unwrap();
    assert!(engine.expire_driver_leases(restarted + Duration::from_secs(20)).await.unwrap().is_empty());
    // The driver died with the old idds: nobody renews.
    assert_eq!(engine.expire_driver_leases(Instant::now() + Duration::from_secs(31)).await.unwrap(), vec![id]);
    assert_eq!(engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Failed);
    assert!(fake.with(|s| s.actions.contains(&("kill", a))));
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
    added_works_run_after_their_parents_and_the_workflow_ends_when_closed,
    bad_add_work_input_is_refused_naming_the_field,
    closing_failed_or_aborting_stops_the_running_works,
    a_restarted_engine_keeps_the_added_works_and_waits_for_the_driver,
    the_grpc_adapter_checks_ids_and_states,
    a_driver_that_stops_renewing_has_its_workflow_failed_and_tasks_killed,
    after_a_restart_a_driven_workflow_gets_a_whole_lease_and_then_lapses,
);
