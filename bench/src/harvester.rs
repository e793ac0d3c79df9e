//! `panda-bench slurm-workers`: the harvester's Slurm plugin against a real Slurm
//! (`scripts/slurm-up.sh`). Submits N workers whose "pilot" exits at once, then runs monitor cycles
//! until every worker ended, counting the batch commands each cycle ran. Prints submissions per
//! second, the cycles' cost, and the commands per cycle (must stay one `squeue`, plus one `sacct`
//! when jobs left it, whatever N is).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use panda_harvester::plugins::command::{CommandError, CommandOutput, CommandRunner, ProcessRunner};
use panda_harvester::plugins::slurm::{SlurmConfig, SlurmPlugin};
use panda_harvester::plugins::{Monitor, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec};
use panda_types::{Resources, StateMachine};

/// Flags of `slurm-workers`.
#[derive(clap::Args)]
pub struct SlurmArgs {
    /// Workers to submit.
    #[arg(long, default_value_t = 1000)]
    workers: u32,
    /// `sbatch` calls at once.
    #[arg(long, default_value_t = 16)]
    parallelism: u32,
    /// Seconds between monitor cycles.
    #[arg(long, default_value_t = 2)]
    cycle_seconds: u64,
}

/// Runs commands for real and counts them by program name.
#[derive(Default)]
struct Counting {
    calls: Mutex<BTreeMap<String, u32>>,
}

impl Counting {
    fn take(&self) -> BTreeMap<String, u32> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

#[async_trait]
impl CommandRunner for Counting {
    async fn run(
        &self,
        argv: &[String],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> Result<CommandOutput, CommandError> {
        let program = argv.first().map(|p| p.rsplit('/').next().unwrap_or(p).to_owned()).unwrap_or_default();
        *self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(program).or_default() += 1;
        ProcessRunner.run(argv, stdin, timeout).await
    }
}

/// Runs the benchmark.
///
/// # Errors
/// Slurm refused submissions, or workers did not end within 30 minutes.
pub async fn run(args: SlurmArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("panda-bench-slurm").tempdir_in(std::env::temp_dir())?;
    let counting = Arc::new(Counting::default());
    let config = SlurmConfig {
        pilot_command: Some(vec!["/bin/true".into()]),
        submit_parallelism: args.parallelism,
        command_timeout: Duration::from_secs(120),
        ..SlurmConfig::default()
    };
    let plugin = SlurmPlugin::new("bench", config, vec![], counting.clone());
    let specs: Vec<WorkerSpec> = (1..=args.workers)
        .map(|id| WorkerSpec {
            worker_id: id.to_string(),
            queue: "bench".into(),
            work_dir: dir.path().join(id.to_string()),
            resources: Resources { cores: 1, memory_mb: 10, disk_mb: 0, walltime_seconds: 600 },
            max_jobs: 1,
            server_url: "http://127.0.0.1:1".into(),
            job_file: None,
            container_runtimes: Vec::new(),
        })
        .collect();
    let started = Instant::now();
    let outcomes = plugin.submit(&specs).await;
    let submit_time = started.elapsed();
    let mut workers = Vec::new();
    let mut failed = Vec::new();
    for (spec, outcome) in specs.iter().zip(outcomes) {
        match outcome {
            SubmitOutcome::Submitted { batch_id } => {
                workers.push(WorkerRef { worker_id: spec.worker_id.clone(), batch_id, work_dir: spec.work_dir.clone() })
            }
            SubmitOutcome::Temporary(diag) | SubmitOutcome::Permanent(diag) => failed.push(diag),
        }
    }
    let submit_calls = counting.take();
    println!(
        "submitted {} workers in {:.2} s: {:.0} submissions/s ({} failed; commands: {submit_calls:?})",
        workers.len(),
        submit_time.as_secs_f64(),
        workers.len() as f64 / submit_time.as_secs_f64(),
        failed.len()
    );
    if let Some(diag) = failed.first() {
        println!("first failure: {diag}");
    }
    let give_up = Instant::now() + Duration::from_secs(1800);
    let mut cycle = 0;
    let mut live = workers.clone();
    while !live.is_empty() {
        anyhow::ensure!(Instant::now() < give_up, "{} workers still live after 30 minutes", live.len());
        tokio::time::sleep(Duration::from_secs(args.cycle_seconds)).await;
        cycle += 1;
        let t = Instant::now();
        let states = plugin.check(&live).await;
        let cost = t.elapsed();
        let calls = counting.take();
        let mut ended = 0;
        let mut unknown = 0;
        let mut next = Vec::new();
        for (worker, state) in live.into_iter().zip(states) {
            match state {
                Ok(state) if state.status.is_final() => ended += 1,
                Ok(_) => next.push(worker),
                Err(_) => {
                    unknown += 1;
                    next.push(worker);
                }
            }
        }
        println!(
            "cycle {cycle}: {} workers checked in {:.3} s, commands {calls:?}; {ended} ended, {unknown} unknown, {} live",
            ended + next.len(),
            cost.as_secs_f64(),
            next.len()
        );
        live = next;
    }
    println!("all {} workers ended after {:.1} s", workers.len(), started.elapsed().as_secs_f64());
    for result in plugin.kill(&workers).await {
        if let Err(diag) = result {
            println!("scancel: {diag}");
            break;
        }
    }
    Ok(())
}

/// Flags of `local-pilots`.
#[derive(clap::Args)]
pub struct LocalArgs {
    /// The pilot program (e.g. target/release/panda-pilot).
    #[arg(long)]
    pilot: String,
    /// No-op jobs to run.
    #[arg(long, default_value_t = 1000)]
    jobs: u32,
    /// Local pilots at once (the harvester's `local_workers`).
    #[arg(long, default_value_t = 8)]
    pilots: u32,
}

/// `panda-bench local-pilots`: every service in this process (embedded: SQLite, in-process bus),
/// a task of N no-op jobs (`true`), run by local pilot processes that the harvester starts; prints
/// jobs per second from submission to the task's end.
///
/// # Errors
/// The services do not start, or the task does not end within 30 minutes.
pub async fn local_pilots(args: LocalArgs) -> anyhow::Result<()> {
    use panda_proto::common::v1::TaskStatus;
    use panda_proto::server::v1 as wire;
    let dir = tempfile::Builder::new().prefix("panda-bench-local").tempdir_in(std::env::temp_dir())?;
    let mut config = panda_all::AllConfig::ephemeral(dir.path().to_owned());
    config.harvester.local_workers = args.pilots;
    config.harvester.cycle_interval = Duration::from_millis(200);
    config.server.heartbeat_interval = Duration::from_secs(5);
    let cluster = panda_all::Cluster::start(config, vec![args.pilot.clone()]).await?;
    let server = panda_client::ServerClient::new(&cluster.server_url)?;
    let spec = wire::TaskSpec {
        name: "bench-noop".into(),
        command: "true".into(),
        n_jobs: Some(args.jobs),
        ..Default::default()
    };
    let started = Instant::now();
    let task_id = server
        .tasks
        .clone()
        .submit_task(wire::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() })
        .await?
        .into_inner()
        .task_id;
    let give_up = started + Duration::from_secs(1800);
    let end = loop {
        anyhow::ensure!(Instant::now() < give_up, "task {task_id} did not end within 30 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let task = server.tasks.clone().get_task(wire::GetTaskRequest { task_id }).await?.into_inner().task;
        let status = task.map(|t| t.status).unwrap_or_default();
        if [TaskStatus::Done, TaskStatus::Finished, TaskStatus::Failed, TaskStatus::Broken, TaskStatus::Aborted]
            .iter()
            .any(|s| *s as i32 == status)
        {
            break status;
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} no-op jobs through {} local pilots: task ended {} after {elapsed:.1} s: {:.1} jobs/s end to end",
        args.jobs,
        args.pilots,
        TaskStatus::try_from(end).map(|s| s.as_str_name()).unwrap_or("?"),
        f64::from(args.jobs) / elapsed
    );
    cluster.stop().await?;
    Ok(())
}
