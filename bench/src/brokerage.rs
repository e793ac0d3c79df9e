//! `panda-bench brokerage`: the brokerage core (the same `panda_jedi::brokerage` code JEDI runs)
//! over an in-memory snapshot: many tasks' jobs onto many queues in one cycle, through every
//! filter, the weight and the share ordering. Prints jobs per second and the time per filter.

use std::time::Instant;

use panda_jedi::brokerage::shares::{ShareDef, ShareTree};
use panda_jedi::brokerage::{self, DataLocality, Filter, Load, QueueState, Request, Settings, Snapshot, Timings};
use panda_types::Resources;

#[derive(clap::Args)]
pub struct BrokerageArgs {
    /// Jobs to broker in total.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: u64,
    /// Queues in the snapshot.
    #[arg(long, default_value_t = 1_000)]
    queues: u32,
    /// Tasks the jobs belong to (each brokered as one request).
    #[arg(long, default_value_t = 1_000)]
    tasks: u32,
}

/// A small deterministic generator (xorshift), so every run brokers the same snapshot.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ARCHS: [&str; 2] = ["x86_64", "aarch64"];
const TAGS: [&str; 4] = ["root-6.30", "gcc-13", "geant4-11", "python-3.12"];

fn snapshot(n: u32, rng: &mut Rng) -> Snapshot {
    let queues = (0..n)
        .map(|i| {
            let mut q = QueueState::online(format!("queue-{i:04}"), 50 + rng.below(2000) as u32);
            q.site = format!("site-{:03}", i / 4);
            // A few offline, a few silent, a few closed: every filter has work to do.
            if rng.below(50) == 0 {
                q.status = "offline".into();
            }
            q.seconds_since_heartbeat = if rng.below(40) == 0 { 3600 } else { rng.below(120) };
            q.throttled = rng.below(100) == 0;
            q.max_resources = Resources {
                cores: [1, 8, 16, 64][rng.below(4) as usize],
                memory_mb: 2000 * (1 + rng.below(32)),
                disk_mb: 10_000 * (1 + rng.below(20)),
                walltime_seconds: 3600 * (1 + rng.below(72)),
            };
            q.architectures = vec![ARCHS[(rng.below(10) / 9) as usize].to_owned()];
            if rng.below(2) == 0 {
                q.containers = vec!["apptainer".into()];
            }
            q.software_tags = TAGS.iter().filter(|_| rng.below(4) != 0).map(|t| (*t).to_owned()).collect();
            if rng.below(200) == 0 {
                q.excluded_users = vec!["user-7".into()];
            }
            q.load = Load {
                running: rng.below(u64::from(q.capacity)) as u32,
                queued: rng.below(2000) as u32,
                assigned: rng.below(200) as u32,
                pilots: rng.below(u64::from(q.capacity)) as u32,
            };
            q
        })
        .collect();
    Snapshot { queues, settings: Settings { stale_after_seconds: 600, queued_per_slot: 4, min_queue_limit: 5000 } }
}

fn requests(args: &BrokerageArgs, queues: u32, rng: &mut Rng) -> Vec<(usize, Request)> {
    let per_task = args.jobs / u64::from(args.tasks.max(1));
    let mut left = args.jobs;
    (0..args.tasks)
        .map(|t| {
            let n_jobs = if t + 1 == args.tasks { left } else { per_task.min(left) };
            left -= n_jobs;
            // Inputs at a few sites (or none known).
            let sites: Vec<Vec<String>> = (0..rng.below(4))
                .map(|_| vec![format!("site-{:03}", rng.below(u64::from(queues / 4).max(1)))])
                .collect();
            let input = if rng.below(3) == 0 {
                DataLocality::default()
            } else {
                DataLocality::from_files(sites.iter().map(|s| (1_000_000_000u64, s.as_slice())))
            };
            let request = Request {
                task_id: u64::from(t) + 1,
                user: format!("user-{}", rng.below(20)),
                resources: Resources {
                    cores: [1, 1, 8][rng.below(3) as usize],
                    memory_mb: 2000 * (1 + rng.below(4)),
                    disk_mb: 10_000,
                    walltime_seconds: 3600 * (1 + rng.below(24)),
                },
                architecture: (rng.below(5) == 0).then(|| "x86_64".to_owned()),
                container: (rng.below(4) == 0).then(|| "apptainer".to_owned()),
                container_image: None,
                software_tags: TAGS.iter().filter(|_| rng.below(3) == 0).map(|t| (*t).to_owned()).collect(),
                queues: Vec::new(),
                excluded_queues: (0..rng.below(3))
                    .map(|_| format!("queue-{:04}", rng.below(u64::from(queues))))
                    .collect(),
                input,
                n_jobs: n_jobs as u32,
            };
            ((t % 3) as usize, request)
        })
        .collect()
}

pub fn run(args: BrokerageArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.queues > 0 && args.tasks > 0 && args.jobs > 0,
        "--jobs, --queues and --tasks must be at least 1"
    );
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let snapshot = snapshot(args.queues, &mut rng);
    let tasks = requests(&args, args.queues, &mut rng);
    let shares = ShareTree::new(&[
        ShareDef::new("production", None, 70.0),
        ShareDef::new("analysis", None, 30.0),
        ShareDef::new("simulation", Some("production"), 50.0),
        ShareDef::new("reprocessing", Some("production"), 20.0),
    ])?;
    let mut timings = Timings::default();
    let started = Instant::now();
    let decisions = brokerage::broker_cycle(&snapshot, &shares, &[0, 0, 0], &tasks, Some(&mut timings));
    let elapsed = started.elapsed();
    let brokered: u64 = decisions.iter().map(|(_, d)| d.assignments.len() as u64).sum();
    let pending = decisions.iter().filter(|(_, d)| d.explanation.is_pending()).count();
    let requested: u64 = tasks.iter().map(|(_, r)| u64::from(r.n_jobs)).sum();
    let mut used = vec![0u64; snapshot.queues.len()];
    for (_, d) in &decisions {
        for &q in &d.assignments {
            used[q as usize] += 1;
        }
    }
    println!(
        "brokerage: {} tasks, {requested} jobs, {} queues (one cycle, in memory)",
        tasks.len(),
        snapshot.queues.len()
    );
    println!(
        "  brokered          {brokered} jobs onto {} queues; {pending} tasks pending (explained)",
        used.iter().filter(|&&n| n > 0).count()
    );
    println!("  total             {:.3} s", elapsed.as_secs_f64());
    println!("  throughput        {:.0} jobs/s", requested as f64 / elapsed.as_secs_f64());
    println!("  time per step (summed over tasks):");
    for (filter, spent) in Filter::ALL.iter().zip(timings.filters) {
        println!("    filter {:<14} {:>9.3} ms", filter.as_str(), spent.as_secs_f64() * 1000.0);
    }
    println!("    weigh                 {:>9.3} ms", timings.weigh.as_secs_f64() * 1000.0);
    println!("    assign                {:>9.3} ms", timings.assign.as_secs_f64() * 1000.0);
    let per_leaf: Vec<u64> = shares
        .leaves()
        .iter()
        .enumerate()
        .map(|(leaf, _)| tasks.iter().filter(|(l, _)| *l == leaf).count() as u64)
        .collect();
    println!("  tasks per share leaf {:?}: {per_leaf:?}", shares.leaves());
    Ok(())
}
