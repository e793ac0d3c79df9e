//! The real service binaries as separate processes on PostgreSQL and RabbitMQ: a fresh database
//! per service and a unique exchange per run, so runs never collide. Build the binaries first
//! (`cargo build --bins`); `.ci/run` does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use panda_client::{ServerClient, WorkflowServiceClient};
use panda_db::TestDb;
use panda_integration_tests::await_condition;
use panda_proto::idds::v1 as idds;

/// The directory holding this build's binaries (`target/<profile>`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` before the process tests", path.display());
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const SERVICES: [&str; 4] = ["panda-server", "panda-jedi", "panda-harvester", "panda-idds"];

/// Four service processes with their environment; kills them when dropped, so a failed test
/// leaves nothing running, and removes the run's queues and exchange from the broker.
struct Deployment {
    dir: tempfile::TempDir,
    env: Vec<(String, Vec<(String, String)>)>,
    running: Vec<(String, Child)>,
    amqp: String,
    exchange: String,
    server_url: String,
    idds_url: String,
    _databases: Vec<TestDb>,
}

impl Deployment {
    async fn new() -> Self {
        let amqp = std::env::var("PANDA_TEST_AMQP_URL").expect("PANDA_TEST_AMQP_URL names a RabbitMQ broker");
        let (server_db, harvester_db, idds_db) =
            (TestDb::postgres_from_env().await, TestDb::postgres_from_env().await, TestDb::postgres_from_env().await);
        let dir = tempfile::tempdir().unwrap();
        let exchange = format!("panda.test.{}", uuid::Uuid::new_v4().simple());
        let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
        let server_url = format!("http://127.0.0.1:{}", ports[0]);
        let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
        let common = vec![
            ("PANDA_DATA_DIR".to_owned(), dir.path().display().to_string()),
            ("PANDA_BUS__URL".to_owned(), amqp.clone()),
            ("PANDA_BUS__EXCHANGE".to_owned(), exchange.clone()),
            ("PANDA_TELEMETRY__FORMAT".to_owned(), "pretty".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        let with = |extra: Vec<(&str, String)>| {
            let mut env = common.clone();
            env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
            env
        };
        let env = vec![
            (
                "panda-server".to_owned(),
                with(vec![
                    ("PANDA_SERVER__LISTEN_ADDR", addr(0)),
                    ("PANDA_SERVER__ADMIN_ADDR", addr(1)),
                    ("PANDA_SERVER__DATABASE__URL", server_db.url.clone()),
                    ("PANDA_SERVER__HEARTBEAT_INTERVAL", "1s".into()),
                    ("PANDA_SERVER__LOST_HEARTBEAT_AFTER", "30s".into()),
                ]),
            ),
            (
                "panda-jedi".to_owned(),
                with(vec![
                    ("PANDA_JEDI__LISTEN_ADDR", addr(2)),
                    ("PANDA_JEDI__ADMIN_ADDR", addr(3)),
                    ("PANDA_JEDI__SERVER_URL", server_url.clone()),
                    ("PANDA_JEDI__SWEEP_INTERVAL", "1s".into()),
                ]),
            ),
            (
                "panda-harvester".to_owned(),
                with(vec![
                    ("PANDA_HARVESTER__LISTEN_ADDR", addr(4)),
                    ("PANDA_HARVESTER__ADMIN_ADDR", addr(5)),
                    ("PANDA_HARVESTER__SERVER_URL", server_url.clone()),
                    ("PANDA_HARVESTER__DATABASE__URL", harvester_db.url.clone()),
                    ("PANDA_HARVESTER__CYCLE_INTERVAL", "300ms".into()),
                ]),
            ),
            (
                "panda-idds".to_owned(),
                with(vec![
                    ("PANDA_IDDS__LISTEN_ADDR", addr(6)),
                    ("PANDA_IDDS__ADMIN_ADDR", addr(7)),
                    ("PANDA_IDDS__SERVER_URL", server_url.clone()),
                    ("PANDA_IDDS__DATABASE__URL", idds_db.url.clone()),
                ]),
            ),
        ];
        Self {
            idds_url: format!("http://{}", addr(6)),
            server_url,
            dir,
            env,
            running: Vec::new(),
            amqp,
            exchange,
            _databases: vec![server_db, harvester_db, idds_db],
        }
    }

    fn start(&mut self, name: &str) {
        let env = self.env.iter().find(|(n, _)| n == name).map(|(_, e)| e.clone()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(binary(name))
            .envs(env)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.running.push((name.to_owned(), child));
    }

    fn start_all(&mut self) {
        for name in SERVICES {
            self.start(name);
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    fn crash(&mut self, name: &str) {
        let position = self.running.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut child) = self.running.remove(position);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn logs(&self) -> String {
        SERVICES
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!("--- {name} (last lines) ---\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect()
    }

    #[allow(clippy::disallowed_methods)] // Drop cannot await
    fn stop_all(&mut self) {
        for (_, child) in &mut self.running {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for (_, child) in &mut self.running {
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.running.clear();
    }

    /// Stops everything and removes the run's broker objects (after the services stopped, or
    /// their consumers would declare the queues again).
    async fn finish(mut self) {
        self.stop_all();
        let config = panda_bus::BusConfig {
            url: Some(self.amqp.clone()),
            exchange: self.exchange.clone(),
            ..Default::default()
        };
        let bus = panda_bus::Bus::connect(&config).await.expect("RabbitMQ answers");
        let queues = [bus.queue_name("jedi", "tasks"), bus.queue_name("idds", "tasks")];
        bus.remove(&queues).await.expect("test queues removed");
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Runs `body`; on failure prints the services' logs before failing.
async fn with_logs<F: std::future::Future<Output = ()> + Send + 'static>(deployment: Deployment, body: F) {
    let result = tokio::spawn(body).await;
    if let Err(error) = result {
        eprintln!("{}", deployment.logs());
        drop(deployment);
        std::panic::resume_unwind(error.into_panic());
    }
    deployment.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and RabbitMQ: set PANDA_TEST_DATABASE_URL and PANDA_TEST_AMQP_URL"]
async fn example_workflow_across_service_processes_on_postgres_and_rabbitmq() {
    let mut deployment = Deployment::new().await;
    deployment.start_all();
    let (server_url, idds_url) = (deployment.server_url.clone(), deployment.idds_url.clone());
    with_logs(deployment, async move {
        crate::checks::run_example_workflow(&server_url, &idds_url, Duration::from_secs(240)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and RabbitMQ: set PANDA_TEST_DATABASE_URL and PANDA_TEST_AMQP_URL"]
async fn crashed_services_restart_and_lose_nothing() {
    let mut deployment = Deployment::new().await;
    deployment.start_all();
    let (server_url, idds_url) = (deployment.server_url.clone(), deployment.idds_url.clone());
    // Jobs that take a while, so the crashes happen while work is in flight.
    let spec = panda_client::files::parse_workflow(
        "name: slow\nworks:\n  - name: a\n    task: { n_jobs: 4, command: 'sleep 2; echo {index} > {output}', output_dataset: a }\n  \
         - name: b\n    parents: [a]\n    task: { input_datasets: [a], files_per_job: 2, command: 'sleep 1; cat {inputs} > {output}', output_dataset: b }\n",
    )
    .unwrap();
    let workflows = WorkflowServiceClient::new(panda_client::channel(&idds_url).unwrap());
    let workflow_id = panda_client::retry(50, false, || {
        let mut workflows = workflows.clone();
        let spec = spec.clone();
        async move { workflows.submit_workflow(idds::SubmitWorkflowRequest { spec: Some(spec), document: None }).await }
    })
    .await
    .unwrap()
    .into_inner()
    .workflow_id;
    let server = ServerClient::new(&server_url).unwrap();
    // Wait until jobs run, then crash every service and start them again, one by one.
    await_condition(Duration::from_secs(60), "jobs to run", || {
        let server = server.clone();
        async move {
            let tasks = server
                .tasks
                .clone()
                .list_tasks(panda_proto::server::v1::ListTasksRequest::default())
                .await
                .ok()?
                .into_inner()
                .tasks;
            tasks.iter().any(|t| t.job_counts.is_some_and(|c| c.running > 0)).then_some(())
        }
    })
    .await;
    for name in SERVICES {
        deployment.crash(name);
        tokio::time::sleep(Duration::from_millis(500)).await;
        deployment.start(name);
    }
    with_logs(deployment, async move {
        let workflow = await_condition(Duration::from_secs(180), "the workflow to end after the crashes", || {
            let mut workflows = workflows.clone();
            async move {
                let workflow = workflows
                    .get_workflow(idds::GetWorkflowRequest { workflow_id })
                    .await
                    .ok()?
                    .into_inner()
                    .workflow?;
                (workflow.status != idds::WorkflowStatus::Running as i32).then_some(workflow)
            }
        })
        .await;
        assert_eq!(workflow.status, idds::WorkflowStatus::Finished as i32, "{workflow:?}");
        // Exactly one task per work (no duplicate submission), each job finished once.
        let tasks = server
            .tasks
            .clone()
            .list_tasks(panda_proto::server::v1::ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert_eq!(tasks.len(), 2, "one task per work: {tasks:?}");
        for work in &workflow.works {
            let jobs = panda_integration_tests::jobs_of(&server, work.task_id).await;
            assert_eq!(jobs.len(), if work.name == "a" { 4 } else { 2 });
            for job in jobs {
                assert_eq!(job.status, panda_proto::common::v1::JobStatus::Finished as i32, "{job:?}");
            }
        }
    })
    .await;
}

/// Server replicas as separate processes, killed when dropped.
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and RabbitMQ: set PANDA_TEST_DATABASE_URL and PANDA_TEST_AMQP_URL"]
async fn two_server_replicas_on_one_database_dispatch_each_job_once() {
    use panda_proto::common::v1::{JobStatus, TaskStatus};
    use panda_proto::server::v1 as wire;

    let amqp = std::env::var("PANDA_TEST_AMQP_URL").expect("PANDA_TEST_AMQP_URL names a RabbitMQ broker");
    let db = TestDb::postgres_from_env().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = format!("panda.test.{}", uuid::Uuid::new_v4().simple());
    let mut urls = Vec::new();
    let mut replicas = Replicas(Vec::new());
    for replica in 0..2 {
        let (grpc, admin) = (free_port(), free_port());
        let data_dir = dir.path().join(format!("replica-{replica}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let log = std::fs::File::create(data_dir.join("server.log")).unwrap();
        let child = Command::new(binary("panda-server"))
            .env("PANDA_DATA_DIR", &data_dir)
            .env("PANDA_BUS__URL", &amqp)
            .env("PANDA_BUS__EXCHANGE", &exchange)
            .env("PANDA_SERVER__LISTEN_ADDR", format!("127.0.0.1:{grpc}"))
            .env("PANDA_SERVER__ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("PANDA_SERVER__DATABASE__URL", &db.url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        replicas.0.push(child);
        urls.push(format!("http://127.0.0.1:{grpc}"));
    }
    let a = ServerClient::new(&urls[0]).unwrap();
    let b = ServerClient::new(&urls[1]).unwrap();
    let n_jobs = 600;
    let spec =
        wire::TaskSpec { name: "replicated".into(), command: "true".into(), n_jobs: Some(1), ..Default::default() };
    let task_id =
        panda_client::retry(100, false, || {
            let mut tasks = a.tasks.clone();
            let spec = spec.clone();
            async move {
                tasks.submit_task(wire::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() }).await
            }
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    // Replica B is up too before the pilots start.
    panda_client::retry(100, false, || {
        let mut tasks = b.tasks.clone();
        async move { tasks.get_task(wire::GetTaskRequest { task_id }).await }
    })
    .await
    .unwrap();
    // A watch on replica B follows changes made through replica A (through the bus).
    let mut watch = b.tasks.clone().watch_task(wire::WatchTaskRequest { task_id }).await.unwrap().into_inner();
    let jobs: Vec<wire::NewJob> = (1..=n_jobs)
        .map(|i| wire::NewJob { job_index: i, queue: "q".into(), command: "true".into(), ..Default::default() })
        .collect();
    a.internal
        .clone()
        .insert_jobs(wire::InsertJobsRequest {
            task_id,
            jobs,
            scouting: false,
            merge: false,
            more: false,
            input_open: false,
        })
        .await
        .unwrap();

    // Pilots take jobs from one replica and report through the other.
    let mut pilots = Vec::new();
    for pilot in 0..40u32 {
        let (take, report) = if pilot % 2 == 0 { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
        pilots.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let request = wire::GetJobRequest {
                    queue: "q".into(),
                    node: format!("p{pilot}"),
                    n_jobs: 1 + pilot % 3,
                    ..Default::default()
                };
                let jobs = take.pilot.clone().get_job(request).await.unwrap().into_inner().jobs;
                if jobs.is_empty() {
                    return got;
                }
                for job in jobs {
                    let update = wire::UpdateJobRequest {
                        job_id: job.job_id,
                        lease_token: job.lease_token,
                        status: JobStatus::Finished as i32,
                        exit_code: Some(0),
                        ..Default::default()
                    };
                    report.pilot.clone().update_job(update).await.unwrap();
                    got.push(job.job_id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for pilot in pilots {
        all.extend(pilot.await.unwrap());
    }
    let unique: std::collections::HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a job was dispatched twice across the replicas");
    assert_eq!(all.len(), n_jobs as usize, "every job was dispatched");

    let mut finished_seen = std::collections::HashSet::new();
    let mut last_status = 0;
    let follow = async {
        while let Some(update) = watch.message().await.unwrap() {
            if let Some(job) = update.job.filter(|j| j.status == JobStatus::Finished as i32) {
                finished_seen.insert(job.job_id);
            }
            last_status = update.task.unwrap().status;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), follow).await.expect("replica B's watch ends with the task");
    assert_eq!(last_status, TaskStatus::Done as i32);
    assert_eq!(finished_seen.len(), n_jobs as usize, "replica B's watch saw every job finish");
    drop(replicas);
    let config = panda_bus::BusConfig { url: Some(amqp), exchange, ..Default::default() };
    panda_bus::Bus::connect(&config).await.unwrap().remove(&[]).await.unwrap();
}
