//! The engine against a real database (SQLite; PostgreSQL when configured) and an in-process
//! fake server: task events move the graph, a redelivered event changes nothing, conditions and
//! loops run, operations work, and a restarted engine resumes without submitting anything twice.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use panda_bus::outbox::Outbox;
use panda_db::TestDb;
use panda_idds::backend::FakeBackend;
use panda_idds::graph::model::Value;
use panda_idds::graph::{WorkStatus, WorkflowStatus};
use panda_idds::{Engine, Handled, store};
use panda_proto::idds::v1 as wire;
use panda_types::TaskStatus;
use tokio::sync::mpsc::UnboundedReceiver;

struct Rig {
    engine: Engine,
    fake: Arc<FakeBackend>,
    submitted: UnboundedReceiver<u64>,
}

async fn rig(db: &TestDb) -> Rig {
    let conn = panda_db::connect_and_migrate::<store::Migrator>(&db.url, Some(4)).await.unwrap();
    let (fake, submitted) = FakeBackend::new();
    let fake = Arc::new(fake);
    Rig { engine: Engine::new(conn.clone(), Outbox::new(conn), fake.clone()), fake, submitted }
}

fn native(text: &str) -> wire::WorkflowDocument {
    wire::WorkflowDocument {
        language: wire::WorkflowLanguage::Native as i32,
        text: text.into(),
        name: String::new(),
        user: String::new(),
    }
}

const DIAMOND: &str = "
name: diamond
works:
  - {name: gen, task: {command: 'true', n_jobs: 1, output_dataset: numbers}}
  - {name: a, after: [gen], task: {command: 'cat {inputs}', input_datasets: [numbers]}}
  - {name: b, after: [gen], task: {command: 'cat {inputs}', input_datasets: [numbers]}}
  - {name: merge, after: [a, b], task: {command: 'true', n_jobs: 1}}
";

async fn statuses(engine: &Engine, id: u64) -> BTreeMap<String, WorkStatus> {
    engine.get_workflow(id).await.unwrap().1.into_iter().map(|w| (w.key, w.status)).collect()
}

async fn task_of(engine: &Engine, id: u64, key: &str) -> u64 {
    let works = engine.get_workflow(id).await.unwrap().1;
    works.iter().find(|w| w.key == key).and_then(|w| w.task_id).unwrap_or_else(|| panic!("{key} has no task"))
}

/// Ends a task on the fake server and delivers its event.
async fn end(rig: &Rig, task_id: u64, status: TaskStatus) -> Handled {
    rig.fake.with(|s| s.status.insert(task_id, status));
    rig.engine.on_task_status(task_id, status, Some(uuid::Uuid::new_v4())).await.unwrap()
}

async fn dag_runs_in_order_and_events_apply_once(db: TestDb) {
    let mut rig = rig(&db).await;
    let id = rig.engine.submit_document(native(DIAMOND)).await.unwrap();
    assert_eq!(statuses(&rig.engine, id).await["gen"], WorkStatus::Ready);
    assert_eq!(rig.engine.submit_ready().await.unwrap().submitted, 1);
    let gen_task = rig.submitted.recv().await.unwrap();
    // Datasets produced in the workflow are scoped to this run.
    let spec = rig.fake.with(|s| s.specs[&gen_task].clone());
    assert_eq!(spec.output_dataset, format!("diamond.{id}.numbers"));
    rig.fake.with(|s| s.status.insert(gen_task, TaskStatus::Done));
    let event = uuid::Uuid::new_v4();
    assert_eq!(rig.engine.on_task_status(gen_task, TaskStatus::Done, Some(event)).await.unwrap(), Handled::Applied);
    // The same event again (at-least-once delivery) changes nothing.
    assert_eq!(rig.engine.on_task_status(gen_task, TaskStatus::Done, Some(event)).await.unwrap(), Handled::Ignored);
    let now = statuses(&rig.engine, id).await;
    assert_eq!((now["a"], now["b"], now["merge"]), (WorkStatus::Ready, WorkStatus::Ready, WorkStatus::Waiting));
    assert_eq!(rig.engine.submit_ready().await.unwrap().submitted, 2);
    let a = task_of(&rig.engine, id, "a").await;
    let b = task_of(&rig.engine, id, "b").await;
    assert_eq!(rig.fake.with(|s| s.specs[&a].input_datasets.clone()), vec![format!("diamond.{id}.numbers")]);
    end(&rig, a, TaskStatus::Done).await;
    assert_eq!(statuses(&rig.engine, id).await["merge"], WorkStatus::Waiting, "merge waits for both parents");
    end(&rig, b, TaskStatus::Done).await;
    rig.engine.submit_ready().await.unwrap();
    end(&rig, task_of(&rig.engine, id, "merge").await, TaskStatus::Done).await;
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Finished);
    // Events for tasks idds does not know are ignored.
    assert_eq!(
        rig.engine.on_task_status(999, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap(),
        Handled::Ignored
    );
}

async fn a_failed_parent_skips_its_subtree_and_retry_reruns_it(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.submit_document(native(DIAMOND)).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    end(&rig, task_of(&rig.engine, id, "gen").await, TaskStatus::Done).await;
    rig.engine.submit_ready().await.unwrap();
    let a = task_of(&rig.engine, id, "a").await;
    end(&rig, a, TaskStatus::Failed).await;
    end(&rig, task_of(&rig.engine, id, "b").await, TaskStatus::Done).await;
    let now = statuses(&rig.engine, id).await;
    assert_eq!((now["a"], now["merge"]), (WorkStatus::Failed, WorkStatus::Skipped));
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::SubFinished);
    assert_eq!(rig.engine.retry(id).await.unwrap(), 1);
    assert!(rig.fake.with(|s| s.actions.contains(&("retry", a))));
    let now = statuses(&rig.engine, id).await;
    assert_eq!((now["a"], now["merge"]), (WorkStatus::Submitted, WorkStatus::Waiting));
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Running);
    end(&rig, a, TaskStatus::Done).await;
    rig.engine.submit_ready().await.unwrap();
    end(&rig, task_of(&rig.engine, id, "merge").await, TaskStatus::Done).await;
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Finished);
}

const BRANCH: &str = "
name: branch
works:
  - {name: probe, outputs: [size], task: {command: 'true', n_jobs: 1}}
  - {name: big, after: [probe], task: {command: 'true', n_jobs: 1}}
  - {name: small, after: [probe], task: {command: 'true', n_jobs: 1}}
  - {name: report, after: [big, small], task: {command: 'true', n_jobs: 1}}
conditions:
  - name: is-big
    if: {output: {work: probe, key: size, op: gt, value: 100}}
    then: [big]
    else: [small]
";

async fn a_condition_on_a_produced_value_picks_the_branch(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.submit_document(native(BRANCH)).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    let probe = task_of(&rig.engine, id, "probe").await;
    rig.fake.with(|s| s.values.insert(probe, BTreeMap::from([("size".to_owned(), Value::Int(7))])));
    end(&rig, probe, TaskStatus::Done).await;
    let now = statuses(&rig.engine, id).await;
    assert_eq!((now["big"], now["small"]), (WorkStatus::Bypassed, WorkStatus::Ready));
    rig.engine.submit_ready().await.unwrap();
    end(&rig, task_of(&rig.engine, id, "small").await, TaskStatus::Done).await;
    rig.engine.submit_ready().await.unwrap();
    end(&rig, task_of(&rig.engine, id, "report").await, TaskStatus::Done).await;
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Finished);
}

const LOOP: &str = "
name: doubling
works:
  - name: grow
    loop:
      max_iterations: 6
      parameters: {x: 1}
      until: {output: {work: double, key: x, op: ge, value: 8}}
      links: {x: double/x}
      works:
        - {name: double, outputs: [x], task: {command: 'echo %{i} %{x}', n_jobs: 1, output_dataset: out}}
";

async fn a_loop_links_parameters_between_iterations(db: TestDb) {
    let mut rig = rig(&db).await;
    let id = rig.engine.submit_document(native(LOOP)).await.unwrap();
    let mut x = 1;
    for iteration in 1..=3 {
        assert_eq!(rig.engine.submit_ready().await.unwrap().submitted, 1, "iteration {iteration}");
        let task = rig.submitted.recv().await.unwrap();
        let spec = rig.fake.with(|s| s.specs[&task].clone());
        assert_eq!(spec.command, format!("echo {iteration} {x}"));
        assert_eq!(spec.output_dataset, format!("doubling.{id}.grow-{iteration}.out"), "each iteration writes its own");
        x *= 2;
        rig.fake.with(|s| s.values.insert(task, BTreeMap::from([("x".to_owned(), Value::Int(x))])));
        end(&rig, task, TaskStatus::Done).await;
    }
    let (workflow, works) = rig.engine.get_workflow(id).await.unwrap();
    assert_eq!(workflow.status, WorkflowStatus::Finished);
    let grow = works.iter().find(|w| w.key == "grow").unwrap();
    assert!(grow.reason.contains("until held after iteration 3"), "{}", grow.reason);
    assert_eq!(works.len(), 4, "the loop node and three iterations of its body");
}

async fn abort_suspend_and_resume(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.submit_document(native(DIAMOND)).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    let gen_task = task_of(&rig.engine, id, "gen").await;
    rig.engine.suspend(id, true).await.unwrap();
    assert!(rig.fake.with(|s| s.actions.contains(&("pause", gen_task))));
    end(&rig, gen_task, TaskStatus::Done).await;
    // Suspended: a and b are ready but nothing is submitted.
    assert_eq!(rig.engine.submit_ready().await.unwrap().submitted, 0);
    assert!(rig.engine.suspend(id, true).await.is_err(), "suspending twice is refused");
    rig.engine.suspend(id, false).await.unwrap();
    assert_eq!(rig.engine.submit_ready().await.unwrap().submitted, 2);
    let a = task_of(&rig.engine, id, "a").await;
    rig.engine.abort(id).await.unwrap();
    assert!(rig.fake.with(|s| s.actions.contains(&("kill", a))));
    let (workflow, works) = rig.engine.get_workflow(id).await.unwrap();
    assert_eq!(workflow.status, WorkflowStatus::Cancelled);
    assert!(works.iter().filter(|w| w.key != "gen").all(|w| w.status == WorkStatus::Cancelled), "{works:?}");
    // A late event of a killed task changes nothing.
    end(&rig, a, TaskStatus::Aborted).await;
    assert_eq!(rig.engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Cancelled);
    assert!(rig.engine.abort(id).await.is_err(), "an ended workflow cannot be aborted");
}

async fn a_restarted_engine_resumes_without_submitting_twice(db: TestDb) {
    let rig1 = rig(&db).await;
    let id = rig1.engine.submit_document(native(DIAMOND)).await.unwrap();
    rig1.engine.submit_ready().await.unwrap();
    let gen_task = task_of(&rig1.engine, id, "gen").await;
    rig1.engine.on_task_status(gen_task, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap();
    // a and b are ready. Simulate a crash after the server took a's task but before idds
    // recorded it: the fake server already holds the task under a's idempotency key.
    let key_a = format!("idds-{id}-a-0");
    let fake = rig1.fake.clone();
    let spec = fake.with(|s| s.specs[&gen_task].clone());
    fake.with(|s| {
        s.by_key.insert(key_a.clone(), 100);
        s.specs.insert(100, spec.clone());
        s.status.insert(100, TaskStatus::Running);
    });
    drop(rig1);
    // Restart: a new engine on the same database and the same server.
    let conn = panda_db::connect_and_migrate::<store::Migrator>(&db.url, Some(4)).await.unwrap();
    let engine = Engine::new(conn.clone(), Outbox::new(conn), fake.clone());
    engine.reconcile().await.unwrap();
    let a = task_of(&engine, id, "a").await;
    assert_eq!(a, 100, "a's task is the one made before the crash, not a second one");
    let b = task_of(&engine, id, "b").await;
    let tasks_before = fake.with(|s| s.specs.len());
    // Events missed while down: the server says b is done; reconciliation applies it.
    fake.with(|s| s.status.insert(b, TaskStatus::Done));
    fake.with(|s| s.status.insert(a, TaskStatus::Done));
    engine.reconcile().await.unwrap();
    engine.reconcile().await.unwrap();
    let merge = task_of(&engine, id, "merge").await;
    assert_eq!(fake.with(|s| s.specs.len()), tasks_before + 1, "only merge was added");
    fake.with(|s| s.status.insert(merge, TaskStatus::Done));
    // The event arrives after reconciliation already applied the state: ignored.
    engine.reconcile().await.unwrap();
    assert_eq!(
        engine.on_task_status(merge, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await.unwrap(),
        Handled::Ignored
    );
    assert_eq!(engine.get_workflow(id).await.unwrap().0.status, WorkflowStatus::Finished);
    let distinct: std::collections::BTreeSet<u64> = fake.with(|s| s.by_key.values().copied().collect());
    assert_eq!(distinct.len(), 4, "one task per work");
}

async fn an_invalid_document_stores_nothing(db: TestDb) {
    let rig = rig(&db).await;
    let error = rig
        .engine
        .submit_document(native("name: w\nworks:\n  - {name: a, after: [b], task: {command: x, n_jobs: 1}}\n  - {name: b, after: [a], task: {command: x, n_jobs: 1}}\n"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("a -> b -> a") || error.contains("b -> a -> b"), "{error}");
    let snake = wire::WorkflowDocument {
        language: wire::WorkflowLanguage::Snakemake as i32,
        text: "rule a:\n    output: \"x\"\n    script: \"s.py\"\n".into(),
        name: "s".into(),
        user: String::new(),
    };
    let error = rig.engine.submit_document(snake).await.unwrap_err().to_string();
    assert!(error.contains("nodes.a") && error.contains("line 3"), "{error}");
    // A task the server would refuse is refused at submission, naming the node and field.
    let error = rig
        .engine
        .submit_document(native("name: w\nworks:\n  - {name: ok, task: {command: x, n_jobs: 1}}\n  - name: later\n    after: [ok]\n    task: {command: 'cat {inputs}', n_jobs: 1}\n"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("nodes.later.task.command") && error.contains("{inputs}"), "{error}");
    assert!(rig.engine.list_workflows(10).await.unwrap().is_empty());
}

async fn watch_graph_and_check_over_the_api(db: TestDb) {
    use futures::StreamExt;
    use panda_proto::idds::v1::workflow_service_server::WorkflowService;
    let rig = rig(&db).await;
    let api = panda_idds::grpc::Api { engine: rig.engine.clone() };
    let id = api
        .submit_workflow(tonic::Request::new(wire::SubmitWorkflowRequest {
            spec: None,
            document: Some(native(DIAMOND)),
        }))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let mut stream = api
        .watch_workflow(tonic::Request::new(wire::WatchWorkflowRequest { workflow_id: id }))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap().workflow.unwrap();
    assert_eq!(first.status, wire::WorkflowStatus::Running as i32);
    let merge = first.works.iter().find(|w| w.key == "merge").unwrap();
    assert_eq!(merge.parents, vec!["a".to_owned(), "b".to_owned()]);
    // Each change is streamed (no polling): the submission of gen shows up next.
    rig.engine.submit_ready().await.unwrap();
    let next = stream.next().await.unwrap().unwrap().workflow.unwrap();
    let gen_work = next.works.iter().find(|w| w.key == "gen").unwrap();
    assert_eq!(gen_work.status, wire::WorkStatus::Submitted as i32);
    let graph = api
        .get_workflow_graph(tonic::Request::new(wire::GetWorkflowGraphRequest {
            workflow_id: id,
            format: wire::GraphFormat::Dot as i32,
        }))
        .await
        .unwrap()
        .into_inner()
        .graph;
    assert!(graph.contains("gen -> a;") && graph.contains("submitted"), "{graph}");
    // Aborting ends the stream with the final state.
    rig.engine.abort(id).await.unwrap();
    let mut last = None;
    while let Some(update) = stream.next().await {
        last = update.unwrap().workflow;
    }
    assert_eq!(last.unwrap().status, wire::WorkflowStatus::Cancelled as i32);
    let bad = wire::CheckWorkflowRequest {
        document: Some(native(
            "name: w\nworks:\n  - {name: a, loop: {works: [{name: s, task: {command: x, n_jobs: 1}}]}}\n",
        )),
        format: 0,
    };
    let status = api.check_workflow(tonic::Request::new(bad)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("nodes.a") && status.message().contains("no exit bound"), "{}", status.message());
    assert!(rig.engine.list_workflows(10).await.unwrap().len() == 1, "check stores nothing");
}

const FILES: &str = "
name: files
works:
  - name: gen
    task:
      command: 'true'
      n_jobs: 3
      jobs: [{outputs: [a]}, {outputs: [b]}, {outputs: [c]}]
  - name: use
    after_files: [gen]
    task:
      command: 'true'
      n_jobs: 3
      jobs: [{inputs: [a], outputs: [a2]}, {inputs: [b, c], outputs: [bc]}, {inputs: [c, /data/ext], outputs: [c2]}]
";

async fn held_jobs_are_released_per_file_across_a_restart(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.submit_document(native(FILES)).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    // The child starts with its parent; its jobs are held.
    rig.engine.submit_ready().await.unwrap();
    let (gen_task, use_task) = (task_of(&rig.engine, id, "gen").await, task_of(&rig.engine, id, "use").await);
    let hold = |task: u64| rig.fake.with(|s| s.specs[&task].hold_jobs);
    assert!(!hold(gen_task) && hold(use_task), "only the file-level child holds its jobs");
    let released = |fake: &FakeBackend| fake.with(|s| s.released.get(&use_task).cloned().unwrap_or_default());
    assert!(released(&rig.fake).is_empty(), "nothing produced yet");
    // gen's job 1 wrote a: use's job 1 runs, while gen still runs.
    rig.fake.with(|s| s.finished.insert(gen_task, vec![1]));
    assert_eq!(rig.engine.on_job_finished(gen_task, 1).await.unwrap(), Handled::Applied);
    assert_eq!(released(&rig.fake), [1]);
    // The same event again releases nothing twice.
    rig.engine.on_job_finished(gen_task, 1).await.unwrap();
    assert_eq!(released(&rig.fake), [1]);
    assert_eq!(statuses(&rig.engine, id).await["gen"], WorkStatus::Submitted, "released before its parent ended");
    // A restarted engine rebuilds the countdown from the server: b alone releases nothing
    // (job 2 also reads c), c releases jobs 2 and 3.
    let fake = rig.fake.clone();
    drop(rig);
    let conn = panda_db::connect_and_migrate::<store::Migrator>(&db.url, Some(4)).await.unwrap();
    let engine = Engine::new(conn.clone(), Outbox::new(conn), fake.clone());
    fake.with(|s| s.finished.insert(gen_task, vec![1, 2]));
    engine.on_job_finished(gen_task, 2).await.unwrap();
    assert_eq!(released(&fake), [1]);
    fake.with(|s| s.finished.insert(gen_task, vec![1, 2, 3]));
    engine.on_job_finished(gen_task, 3).await.unwrap();
    assert_eq!(released(&fake), [1, 2, 3]);
    // Events of tasks that are not works change nothing.
    assert_eq!(engine.on_job_finished(999, 1).await.unwrap(), Handled::Ignored);
}

async fn held_jobs_whose_input_was_never_produced_are_closed(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.submit_document(native(FILES)).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    let (gen_task, use_task) = (task_of(&rig.engine, id, "gen").await, task_of(&rig.engine, id, "use").await);
    // gen's jobs 1 and 2 finish, job 3 fails for good: c is never written.
    rig.fake.with(|s| s.finished.insert(gen_task, vec![1, 2]));
    rig.engine.on_job_finished(gen_task, 1).await.unwrap();
    rig.engine.on_job_finished(gen_task, 2).await.unwrap();
    end(&rig, gen_task, TaskStatus::Finished).await;
    let (released, closed) = rig.fake.with(|s| (s.released[&use_task].clone(), s.closed[&use_task].clone()));
    assert_eq!(released, [1]);
    assert_eq!(closed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [2, 3]);
    assert!(closed[0].1.contains("c (from gen)"), "{}", closed[0].1);
    // The parent's end again (a redelivery, a reconciliation) closes nothing twice.
    rig.engine.on_task_status(gen_task, TaskStatus::Finished, Some(uuid::Uuid::new_v4())).await.unwrap();
    assert_eq!(rig.fake.with(|s| s.closed[&use_task].len()), 2);
}

/// Publishes nothing; remembers routing keys.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

#[tonic::async_trait]
impl panda_bus::Publisher for Recorder {
    async fn publish(&self, events: &[panda_bus::Envelope]) -> Result<(), panda_bus::Error> {
        self.0.lock().unwrap().extend(events.iter().map(|e| e.routing_key.clone()));
        Ok(())
    }
}

/// Routing keys of the events committed so far (drains the outbox).
async fn published(engine: &Engine) -> Vec<String> {
    let recorder = Recorder::default();
    panda_bus::outbox::flush_once(&Outbox::new(engine.db().clone()), &recorder).await.unwrap();
    recorder.0.into_inner().unwrap()
}

async fn every_workflow_state_change_has_its_event(db: TestDb) {
    let rig = rig(&db).await;
    let id = rig.engine.submit_document(native(DIAMOND)).await.unwrap();
    assert_eq!(published(&rig.engine).await, ["workflow.running"]);
    rig.engine.submit_ready().await.unwrap();
    rig.engine.suspend(id, true).await.unwrap();
    rig.engine.suspend(id, false).await.unwrap();
    assert_eq!(published(&rig.engine).await, ["workflow.suspended", "workflow.running"]);
    rig.engine.abort(id).await.unwrap();
    assert_eq!(published(&rig.engine).await, ["workflow.cancelled"], "an abort announces the cancellation");
    // A second workflow ends by itself: one event for its end.
    let id = rig.engine.submit_document(native(DIAMOND)).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    end(&rig, task_of(&rig.engine, id, "gen").await, TaskStatus::Failed).await;
    assert_eq!(published(&rig.engine).await, ["workflow.running", "workflow.failed"]);
}

async fn works_pass_their_split_rules_to_the_server(db: TestDb) {
    let mut rig = rig(&db).await;
    let text = "
name: split
works:
  - name: gen
    task:
      command: 'true'
      n_jobs: 2
      output_dataset: numbers
      split: {max_attempts: 3, scouts: 1}
  - name: read
    after: [gen]
    task:
      command: 'cat {inputs}'
      input_datasets: [numbers]
      split: {gb_per_job: 1.5, max_attempts: 2}
";
    let id = rig.engine.submit_document(native(text)).await.unwrap();
    rig.engine.submit_ready().await.unwrap();
    let gen_task = rig.submitted.recv().await.unwrap();
    let split = rig.fake.with(|s| s.specs[&gen_task].split.unwrap());
    assert_eq!((split.max_attempts, split.scouts, split.gb_per_job), (Some(3), Some(1), None));
    end(&rig, gen_task, TaskStatus::Done).await;
    rig.engine.submit_ready().await.unwrap();
    let read = task_of(&rig.engine, id, "read").await;
    let spec = rig.fake.with(|s| s.specs[&read].clone());
    let split = spec.split.unwrap();
    assert_eq!((split.gb_per_job, split.max_attempts, split.scouts), (Some(1.5), Some(2), None));
    // Rules the server would refuse are refused at submission, naming the work.
    let bad = "name: bad\nworks:\n  - {name: a, task: {command: x, n_jobs: 1, split: {scouts: 99}}}\n";
    let error = rig.engine.submit_document(native(bad)).await.unwrap_err().to_string();
    assert!(error.contains("nodes.a.") && error.contains("scouts"), "{error}");
    let unknown = "name: bad\nworks:\n  - {name: a, task: {command: x, n_jobs: 1, split: {files: 2}}}\n";
    assert!(rig.engine.submit_document(native(unknown)).await.is_err(), "an unknown split key is refused");
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
    dag_runs_in_order_and_events_apply_once,
    a_failed_parent_skips_its_subtree_and_retry_reruns_it,
    a_condition_on_a_produced_value_picks_the_branch,
    a_loop_links_parameters_between_iterations,
    abort_suspend_and_resume,
    a_restarted_engine_resumes_without_submitting_twice,
    an_invalid_document_stores_nothing,
    watch_graph_and_check_over_the_api,
    every_workflow_state_change_has_its_event,
    works_pass_their_split_rules_to_the_server,
    held_jobs_are_released_per_file_across_a_restart,
    held_jobs_whose_input_was_never_produced_are_closed,
);
