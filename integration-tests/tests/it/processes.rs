//! The real service binaries as separate processes on PostgreSQL and RabbitMQ: a fresh database
//! per service and a unique exchange per run, so runs never collide. Build the binaries first
//! (`cargo build --bins`); `.ci/run` does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use panda_db::TestDb;

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

/// Kills its processes when dropped, so a failed test leaves nothing running.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    #[allow(clippy::disallowed_methods)] // Drop cannot await
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for (_, child) in &mut self.0 {
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and RabbitMQ: set PANDA_TEST_DATABASE_URL and PANDA_TEST_AMQP_URL"]
async fn example_workflow_across_service_processes_on_postgres_and_rabbitmq() {
    let amqp = std::env::var("PANDA_TEST_AMQP_URL").expect("PANDA_TEST_AMQP_URL names a RabbitMQ broker");
    let server_db = TestDb::postgres_from_env().await;
    let harvester_db = TestDb::postgres_from_env().await;
    let idds_db = TestDb::postgres_from_env().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = format!("panda.test.{}", uuid::Uuid::new_v4().simple());
    let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let server_url = format!("http://127.0.0.1:{}", ports[0]);
    let idds_url = format!("http://127.0.0.1:{}", ports[6]);
    let common = [
        ("PANDA_DATA_DIR", dir.path().display().to_string()),
        ("PANDA_BUS__URL", amqp.clone()),
        ("PANDA_BUS__EXCHANGE", exchange.clone()),
        ("PANDA_TELEMETRY__FORMAT", "pretty".into()),
        ("RUST_LOG", "info".into()),
    ];
    let services: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "panda-server",
            vec![
                ("PANDA_SERVER__LISTEN_ADDR".into(), format!("127.0.0.1:{}", ports[0])),
                ("PANDA_SERVER__ADMIN_ADDR".into(), format!("127.0.0.1:{}", ports[1])),
                ("PANDA_SERVER__DATABASE__URL".into(), server_db.url.clone()),
                ("PANDA_SERVER__HEARTBEAT_INTERVAL".into(), "2s".into()),
            ],
        ),
        (
            "panda-jedi",
            vec![
                ("PANDA_JEDI__LISTEN_ADDR".into(), format!("127.0.0.1:{}", ports[2])),
                ("PANDA_JEDI__ADMIN_ADDR".into(), format!("127.0.0.1:{}", ports[3])),
                ("PANDA_JEDI__SERVER_URL".into(), server_url.clone()),
                ("PANDA_JEDI__SWEEP_INTERVAL".into(), "1s".into()),
            ],
        ),
        (
            "panda-harvester",
            vec![
                ("PANDA_HARVESTER__LISTEN_ADDR".into(), format!("127.0.0.1:{}", ports[4])),
                ("PANDA_HARVESTER__ADMIN_ADDR".into(), format!("127.0.0.1:{}", ports[5])),
                ("PANDA_HARVESTER__SERVER_URL".into(), server_url.clone()),
                ("PANDA_HARVESTER__DATABASE__URL".into(), harvester_db.url.clone()),
                ("PANDA_HARVESTER__CYCLE_INTERVAL".into(), "300ms".into()),
            ],
        ),
        (
            "panda-idds",
            vec![
                ("PANDA_IDDS__LISTEN_ADDR".into(), format!("127.0.0.1:{}", ports[6])),
                ("PANDA_IDDS__ADMIN_ADDR".into(), format!("127.0.0.1:{}", ports[7])),
                ("PANDA_IDDS__SERVER_URL".into(), server_url.clone()),
                ("PANDA_IDDS__DATABASE__URL".into(), idds_db.url.clone()),
            ],
        ),
    ];
    let mut processes = Processes(Vec::new());
    for (name, env) in services {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(binary(name))
            .envs(common.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .envs(env)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        processes.0.push((name.to_owned(), child));
    }
    let result = tokio::spawn(async move {
        crate::checks::run_example_workflow(&server_url, &idds_url, Duration::from_secs(240)).await
    })
    .await;
    // Stop the services before removing the queues, or their consumers would declare them again.
    drop(processes);
    // Remove this run's queues and exchange from the broker.
    let config = panda_bus::BusConfig { url: Some(amqp), exchange, ..Default::default() };
    let bus = panda_bus::Bus::connect(&config).await.expect("RabbitMQ answers");
    let queues = [bus.queue_name("jedi", "tasks"), bus.queue_name("idds", "tasks")];
    bus.remove(&queues).await.expect("test queues removed");
    // Print the services' logs when the run failed, then fail.
    if result.is_err() {
        for name in ["panda-server", "panda-jedi", "panda-harvester", "panda-idds"] {
            let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {name} (last lines) ---\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        panic!("the workflow did not finish across processes: {result:?}");
    }
}
