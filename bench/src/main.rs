//! `panda-bench`: benchmarks that drive a real server over gRPC.
//!
//! `panda-bench dispatch` starts a server in this process (SQLite in a temporary directory, or a
//! fresh database on a PostgreSQL server), preloads activated jobs (and, optionally, ended ones
//! as history) with bulk SQL, then lets many simulated pilots take jobs with `GetJob` and report
//! them finished with `UpdateJob`, all at once, until the queue is empty. It prints dispatches per
//! second, GetJob and UpdateJob latency percentiles, and how many jobs were handed out twice
//! (must be 0).

mod brokerage;
mod harvester;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use panda_client::ServerClient;
use panda_proto::common::v1::JobStatus;
use panda_proto::server::v1 as wire;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "Benchmarks that drive real panda services")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Job dispatch: many pilots taking and finishing preloaded jobs.
    Dispatch(DispatchArgs),
    /// Harvester's Slurm plugin: submit and track many workers on a real Slurm.
    SlurmWorkers(harvester::SlurmArgs),
    /// End to end: no-op jobs through local pilots started by the harvester.
    LocalPilots(harvester::LocalArgs),
    /// The brokerage core: many tasks' jobs onto many queues, in memory.
    Brokerage(brokerage::BrokerageArgs),
}

#[derive(clap::Args)]
struct DispatchArgs {
    /// A PostgreSQL server (e.g. postgres://postgres@127.0.0.1:5432/postgres) on which a fresh
    /// database is created and dropped; unset: SQLite in a temporary directory (embedded).
    #[arg(long)]
    postgres: Option<String>,
    /// Activated jobs to dispatch.
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Ended jobs already in the table (history the dispatch query must not slow down on).
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// Simulated pilots calling at once.
    #[arg(long, default_value_t = 100)]
    pilots: usize,
    /// Jobs per GetJob call.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// gRPC connections the pilots share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Report each GetJob's jobs with one UpdateJobs call instead of one UpdateJob per job.
    #[arg(long)]
    bulk_updates: bool,
    /// The server's `group_commit.workers` (0: its default for the database).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// The server's `group_commit.max_batch`.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Dispatch(args) => dispatch(args).await,
        Command::SlurmWorkers(args) => harvester::run(args).await,
        Command::LocalPilots(args) => harvester::local_pilots(args).await,
        Command::Brokerage(args) => brokerage::run(args),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn dispatch(args: DispatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.pilots > 0 && args.connections > 0 && args.batch > 0,
        "--pilots, --connections and --batch must be at least 1"
    );
    let dir = std::env::temp_dir().join(format!("panda-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let test_db = match &args.postgres {
        Some(url) => Some(panda_db::TestDb::postgres_on(url).await),
        None => None,
    };
    let url = match &test_db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}?mode=rwc", dir.join("server.db").display()),
    };
    let backend_name = if test_db.is_some() { "postgresql" } else { "sqlite (embedded)" };

    // The server, as in production, on an ephemeral loopback port.
    let listeners = panda_runtime::Listeners::ephemeral().await?;
    let server_url = format!("http://{}", listeners.grpc.local_addr()?);
    let mut config = panda_server::Config::default();
    config.database.url = Some(url.clone());
    config.database.max_connections = Some(32);
    config.group_commit.workers = args.workers;
    config.group_commit.max_batch = args.max_batch;
    let shutdown = CancellationToken::new();
    let deps = panda_server::Deps { data_dir: dir.clone(), bus: panda_bus::Bus::memory() };
    let server = tokio::spawn(panda_server::run(config, deps, listeners, shutdown.clone()));

    // One running task, then the jobs in bulk.
    let client = ServerClient::new(&server_url)?;
    let spec = wire::TaskSpec { name: "bench".into(), command: "true".into(), n_jobs: Some(1), ..Default::default() };
    let task_id =
        panda_client::retry(50, false, || {
            let mut tasks = client.tasks.clone();
            let spec = spec.clone();
            async move {
                tasks.submit_task(wire::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() }).await
            }
        })
        .await?
        .into_inner()
        .task_id;
    let seed = wire::NewJob { job_index: 0, queue: "bench-seed".into(), command: "true".into(), ..Default::default() };
    client
        .internal
        .clone()
        .insert_jobs(wire::InsertJobsRequest {
            task_id,
            jobs: vec![seed],
            scouting: false,
            merge: false,
            more: false,
            input_open: false,
        })
        .await?;
    let db = panda_db::connect(&url, Some(2)).await?;
    let started = Instant::now();
    preload(&db, task_id, "activated", args.jobs).await?;
    preload(&db, task_id, "finished", args.history).await?;
    if db.get_database_backend() == DbBackend::Postgres {
        // Bulk-loaded rows have no planner statistics yet; autovacuum would gather them in
        // production, a benchmark must not measure a planner that guesses.
        db.execute_unprepared("ANALYZE jobs").await?;
    }
    println!(
        "{backend_name}: preloaded {} activated and {} ended jobs in {:.1}s",
        args.jobs,
        args.history,
        started.elapsed().as_secs_f64()
    );

    let channels: Vec<ServerClient> =
        (0..args.connections).map(|_| ServerClient::new(&server_url)).collect::<Result<_, _>>()?;
    let cpu_before = thread_cpu();
    let started = Instant::now();
    let mut pilots = Vec::with_capacity(args.pilots);
    for pilot in 0..args.pilots {
        let client = channels[pilot % channels.len()].clone();
        let (batch, bulk) = (args.batch, args.bulk_updates);
        pilots.push(tokio::spawn(async move { run_pilot(client, pilot, batch, bulk).await }));
    }
    let (mut ids, mut get_latency, mut update_latency) = (Vec::new(), Vec::new(), Vec::new());
    for pilot in pilots {
        let outcome = pilot.await?.context("a simulated pilot failed")?;
        ids.extend(outcome.ids);
        get_latency.extend(outcome.get_latency);
        update_latency.extend(outcome.update_latency);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_by_thread_kind(&cpu_before, &thread_cpu());
    let unique: HashSet<u64> = ids.iter().copied().collect();
    get_latency.sort();
    update_latency.sort();
    println!(
        "{backend_name}: {} pilots, GetJob n={}, {}: {} jobs dispatched and finished in {elapsed:.2}s = {:.0} dispatches/s",
        args.pilots,
        args.batch,
        if args.bulk_updates { "one UpdateJobs per GetJob" } else { "one UpdateJob per job" },
        ids.len(),
        ids.len() as f64 / elapsed
    );
    println!(
        "  GetJob    p50 {:.2} ms  p99 {:.2} ms  ({} calls)",
        percentile(&get_latency, 0.5),
        percentile(&get_latency, 0.99),
        get_latency.len()
    );
    println!(
        "  {} p50 {:.2} ms  p99 {:.2} ms  ({} calls)",
        if args.bulk_updates { "UpdateJobs" } else { "UpdateJob " },
        percentile(&update_latency, 0.5),
        percentile(&update_latency, 0.99),
        update_latency.len()
    );
    println!(
        "  duplicates: {} (must be 0); missing: {}",
        ids.len() - unique.len(),
        args.jobs.saturating_sub(unique.len() as u64)
    );

    // CPU time per job by thread kind, this process only (the bench's pilots, the server and, when
    // embedded, SQLite's one connection thread). Unlike dispatches/s it barely moves with what else
    // runs on the machine, and the busiest single thread is what bounds the embedded figure.
    if !cpu.is_empty() {
        let per_job = |secs: f64| secs * 1e6 / ids.len().max(1) as f64;
        let parts: Vec<String> =
            cpu.iter().map(|(kind, secs)| format!("{kind} {:.1} µs ({secs:.1} s)", per_job(*secs))).collect();
        println!("  CPU per job by thread: {}", parts.join(", "));
    }

    shutdown.cancel();
    server.await??;
    drop(test_db);
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(ids.len() == unique.len(), "a job was dispatched twice");
    Ok(())
}

/// CPU seconds (user + system) of each live thread of this process, by thread id, with its name;
/// empty where `/proc` is not there.
fn thread_cpu() -> HashMap<u64, (String, f64)> {
    // USER_HZ: the /proc ABI counts in hundredths of a second on every Linux architecture we run.
    const TICKS_PER_SECOND: f64 = 100.0;
    let mut threads = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else { return threads };
    for entry in entries.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u64>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ...`: the name may hold spaces and parentheses, the fields follow the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 3 of stat(5), utime 14 and stime 15.
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        threads.insert(tid, (name, (ticks(14) + ticks(15)) / TICKS_PER_SECOND));
    }
    threads
}

/// The CPU each kind of thread (its name without trailing digits) used between two readings,
/// busiest first.
fn cpu_by_thread_kind(before: &HashMap<u64, (String, f64)>, after: &HashMap<u64, (String, f64)>) -> Vec<(String, f64)> {
    let mut kinds: HashMap<String, f64> = HashMap::new();
    for (tid, (name, secs)) in after {
        let earlier = before.get(tid).map_or(0.0, |(_, s)| *s);
        let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '.').to_owned();
        *kinds.entry(kind).or_default() += secs - earlier;
    }
    let mut kinds: Vec<(String, f64)> = kinds.into_iter().filter(|(_, secs)| *secs >= 0.05).collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    kinds
}

struct PilotOutcome {
    ids: Vec<u64>,
    get_latency: Vec<Duration>,
    update_latency: Vec<Duration>,
}

/// Takes jobs until none are left and reports each finished (the server walks it through
/// starting, holding and finished in one transaction).
async fn run_pilot(client: ServerClient, pilot: usize, batch: u32, bulk: bool) -> anyhow::Result<PilotOutcome> {
    let mut outcome = PilotOutcome { ids: Vec::new(), get_latency: Vec::new(), update_latency: Vec::new() };
    let node = format!("bench-{pilot}");
    loop {
        let request =
            wire::GetJobRequest { queue: "bench".into(), node: node.clone(), n_jobs: batch, ..Default::default() };
        let t0 = Instant::now();
        let jobs = client.pilot.clone().get_job(request).await?.into_inner().jobs;
        outcome.get_latency.push(t0.elapsed());
        if jobs.is_empty() {
            return Ok(outcome);
        }
        let updates: Vec<wire::UpdateJobRequest> = jobs
            .into_iter()
            .map(|job| {
                outcome.ids.push(job.job_id);
                wire::UpdateJobRequest {
                    job_id: job.job_id,
                    lease_token: job.lease_token,
                    status: JobStatus::Finished as i32,
                    exit_code: Some(0),
                    node: node.clone(),
                    ..Default::default()
                }
            })
            .collect();
        if bulk {
            let t0 = Instant::now();
            let results = client.pilot.clone().update_jobs(wire::UpdateJobsRequest { updates }).await?.into_inner();
            outcome.update_latency.push(t0.elapsed());
            if let Some(refused) = results.results.iter().find(|r| r.code != 0) {
                anyhow::bail!("job {} report refused: {}", refused.job_id, refused.message);
            }
        } else {
            for update in updates {
                let t0 = Instant::now();
                client.pilot.clone().update_job(update).await?;
                outcome.update_latency.push(t0.elapsed());
            }
        }
    }
}

/// Bulk-inserts `n` jobs of `task_id` in `status` on queue `bench`.
async fn preload(db: &sea_orm::DatabaseConnection, task_id: u64, status: &str, n: u64) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let columns = "task_id, job_index, status, queue, attempt_nr, command, environment_json, input_files_json, \
                   output_files_json, cores, memory_mb, disk_mb, walltime_seconds, priority, error_code, error_diag, \
                   stdout_tail, stderr_tail, cpu_time_seconds, wall_time_seconds, max_rss_kb, node, worker_id, \
                   created_at, modified_at, superseded";
    let values = |task: &str, index: &str, status: &str, now: &str| {
        format!(
            "{task}, {index}, '{status}', 'bench', 1, 'true', '{{}}', '[]', '[]', 1, 0, 0, 0, 0, 0, '', '', '', 0, 0, 0, \
             '', '', {now}, {now}, false"
        )
    };
    let backend = db.get_database_backend();
    let now = sea_orm::Value::from(chrono_now());
    let statement = match backend {
        DbBackend::Postgres => Statement::from_sql_and_values(
            backend,
            format!(
                "INSERT INTO jobs ({columns}) SELECT {} FROM generate_series(1, $3) AS g",
                values("$1", "g", status, "$2")
            ),
            [sea_orm::Value::from(task_id as i64), now, sea_orm::Value::from(n as i64)],
        ),
        _ => Statement::from_sql_and_values(
            backend,
            format!(
                "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < ?) \
                 INSERT INTO jobs ({columns}) SELECT {} FROM s",
                values("?", "g", status, "?")
            ),
            [sea_orm::Value::from(n as i64), sea_orm::Value::from(task_id as i64), now.clone(), now],
        ),
    };
    db.execute_raw(statement).await.with_context(|| format!("preloading {n} {status} jobs"))?;
    Ok(())
}

fn chrono_now() -> sea_orm::prelude::ChronoDateTimeUtc {
    sea_orm::prelude::ChronoDateTimeUtc::from(std::time::SystemTime::now())
}
