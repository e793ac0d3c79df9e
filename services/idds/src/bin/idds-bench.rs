//! idds benchmarks (figures, not tests):
//!
//! - `idds-bench dag`: a 1,000-node DAG (10 layers × 100 works, each depending on 3 random works
//!   of the layer before, fixed seed) of no-op works, run by the engine on its own database
//!   (SQLite by default) with an in-process server that finishes each task the moment it is
//!   submitted. The works take no time, so the makespan is the engine's overhead; printed per node.
//! - `idds-bench release`: a workflow whose downstream work has 10,000 held jobs, each reading
//!   2 random files of an upstream work's 10,000 jobs; the upstream jobs' `job.finished` events
//!   go through the engine (its database lookup, the countdown, the release call), one by one;
//!   prints releases per second.
//!
//! Run: `cargo run --release -p panda-idds --bin idds-bench -- dag` (or `release`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use panda_bus::outbox::Outbox;
use panda_idds::backend::FakeBackend;
use panda_idds::graph::WorkflowStatus;
use panda_idds::{Engine, store};
use panda_proto::idds::v1 as wire;
use panda_types::TaskStatus;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The 1,000-node DAG of no-op works.
    Dag {
        /// Layers.
        #[arg(long, default_value_t = 10)]
        layers: usize,
        /// Works per layer.
        #[arg(long, default_value_t = 100)]
        width: usize,
        /// Parents of each work in the layer before.
        #[arg(long, default_value_t = 3)]
        parents: usize,
        /// Random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Database URL (default: a temporary SQLite file).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Held jobs released file by file.
    Release {
        /// Held jobs.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Upstream files each job reads.
        #[arg(long, default_value_t = 2)]
        files_per_job: usize,
        /// Random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Dag { layers, width, parents, seed, database_url } => {
            dag(layers, width, parents, seed, database_url).await
        }
        Command::Release { jobs, files_per_job, seed } => release(jobs, files_per_job, seed).await,
    }
}

fn dag_document(layers: usize, width: usize, parents: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::from("name: bench-dag\nworks:\n");
    for layer in 0..layers {
        for i in 0..width {
            let after = if layer == 0 {
                String::new()
            } else {
                let picked: BTreeSet<usize> = sample(&mut rng, width, parents.min(width)).into_iter().collect();
                let names: Vec<String> = picked.iter().map(|p| format!("w{}-{p}", layer - 1)).collect();
                format!(", after: [{}]", names.join(", "))
            };
            text.push_str(&format!("  - {{name: w{layer}-{i}{after}, task: {{command: 'true', n_jobs: 1}}}}\n"));
        }
    }
    text
}

async fn dag(layers: usize, width: usize, parents: usize, seed: u64, url: Option<String>) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let url = url.unwrap_or_else(|| format!("sqlite://{}?mode=rwc", temp.path().join("idds.db").display()));
    let db = panda_db::connect_and_migrate::<store::Migrator>(&url, Some(4)).await?;
    let (fake, mut submitted) = FakeBackend::new();
    let fake = Arc::new(fake);
    let engine = Engine::new(db.clone(), Outbox::new(db), fake.clone());
    let text = dag_document(layers, width, parents, seed);
    let nodes = layers * width;

    // The "server": every task finishes the moment it is submitted, and its event is delivered
    // at once (as the bus would).
    let finisher = {
        let engine = engine.clone();
        let fake = fake.clone();
        tokio::spawn(async move {
            while let Some(task_id) = submitted.recv().await {
                fake.with(|s| s.status.insert(task_id, TaskStatus::Done));
                if let Err(error) = engine.on_task_status(task_id, TaskStatus::Done, Some(uuid::Uuid::new_v4())).await {
                    eprintln!("event failed: {error}");
                }
            }
        })
    };
    let submitter = {
        let engine = engine.clone();
        tokio::spawn(async move {
            loop {
                engine.wake.notified().await;
                if let Err(error) = engine.submit_ready().await {
                    eprintln!("submission failed: {error}");
                }
            }
        })
    };
    let mut changes = engine.subscribe();
    let started = Instant::now();
    let document = wire::WorkflowDocument {
        language: wire::WorkflowLanguage::Native as i32,
        text,
        name: String::new(),
        user: "bench".into(),
    };
    let id = engine.submit_document(document).await.context("submitting the DAG")?;
    let accepted = started.elapsed();
    loop {
        // A lagging receiver only means several changes came at once: look at the state anyway.
        let changed = match changes.recv().await {
            Ok(changed) => changed,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => id,
            Err(error) => return Err(error.into()),
        };
        if changed == id {
            // The workflow row alone: reading its 1,000 works on every change would be the
            // harness's cost, not the engine's.
            let status = store::get_workflow(engine.db(), id).await?.context("the workflow vanished")?.status;
            if status != WorkflowStatus::Running {
                anyhow::ensure!(status == WorkflowStatus::Finished, "the DAG ended {}", status.as_str());
                break;
            }
        }
    }
    let makespan = started.elapsed();
    submitter.abort();
    finisher.abort();
    let tasks = fake.with(|s| s.specs.len());
    anyhow::ensure!(tasks == nodes, "{tasks} tasks for {nodes} works");
    println!("dag: {layers} layers x {width} works, {parents} parents each (seed {seed}), {nodes} no-op works");
    println!("  submission (parse, validate, store): {:.1} ms", accepted.as_secs_f64() * 1e3);
    println!("  makespan: {:.1} ms (works take no time: all of it is engine overhead)", makespan.as_secs_f64() * 1e3);
    println!("  engine overhead per node: {:.3} ms (target <= 2 ms)", makespan.as_secs_f64() * 1e3 / nodes as f64);
    Ok(())
}

async fn release(jobs: usize, files_per_job: usize, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    // Upstream job i writes one file; each held downstream job reads `files_per_job` random ones.
    let file = |i: usize| format!("upstream/out.{i:06}");
    let parent: Vec<serde_json::Value> = (0..jobs).map(|i| serde_json::json!({"outputs": [file(i)]})).collect();
    let child: Vec<serde_json::Value> = (0..jobs)
        .map(|i| {
            let inputs: Vec<String> = (0..files_per_job).map(|_| file(rng.random_range(0..jobs))).collect();
            serde_json::json!({"inputs": inputs, "outputs": [format!("downstream/out.{i:06}")]})
        })
        .collect();
    let document = serde_json::json!({
        "name": "bench-release",
        "works": [
            {"name": "gen", "task": {"command": "true", "n_jobs": jobs, "jobs": parent}},
            {"name": "use", "after_files": ["gen"], "task": {"command": "true", "n_jobs": jobs, "jobs": child}},
        ],
    });
    let temp = tempfile::tempdir()?;
    let url = format!("sqlite://{}?mode=rwc", temp.path().join("idds.db").display());
    let db = panda_db::connect_and_migrate::<store::Migrator>(&url, Some(4)).await?;
    let (fake, _submitted) = FakeBackend::new();
    let fake = Arc::new(fake);
    let engine = Engine::new(db.clone(), Outbox::new(db), fake.clone());
    let started = Instant::now();
    let id = engine
        .submit_document(wire::WorkflowDocument {
            language: wire::WorkflowLanguage::Native as i32,
            text: document.to_string(),
            name: String::new(),
            user: "bench".into(),
        })
        .await
        .context("submitting the workflow")?;
    engine.submit_ready().await?;
    engine.submit_ready().await?;
    let accepted = started.elapsed();
    let works = engine.get_workflow(id).await?.1;
    let task = |key: &str| works.iter().find(|w| w.key == key).and_then(|w| w.task_id);
    let (Some(gen_task), Some(use_task)) = (task("gen"), task("use")) else {
        anyhow::bail!("the works were not submitted: {works:?}");
    };
    let started = Instant::now();
    for index in 1..=jobs as u32 {
        engine.on_job_finished(gen_task, index).await?;
    }
    let elapsed = started.elapsed();
    let released = fake.with(|s| s.released.get(&use_task).map_or(0, Vec::len));
    anyhow::ensure!(released == jobs, "{released} of {jobs} jobs released");
    println!(
        "release: {jobs} held jobs, {files_per_job} upstream files each, {jobs} upstream jobs finishing one by one"
    );
    println!(
        "  submission with both works' job files (parse, validate, store, submit): {:.1} ms",
        accepted.as_secs_f64() * 1e3
    );
    println!(
        "  {jobs} job.finished events -> {released} releases in {:.1} ms: {:.0} releases/s, {:.0} events/s",
        elapsed.as_secs_f64() * 1e3,
        released as f64 / elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  (through the engine and its database; the server is the in-process fake, whose release is a map update)"
    );
    Ok(())
}
