//! Job brokerage: which queue runs each job of a task, and why. A pure function over a
//! [`Snapshot`] (queues, their load, where the task's data is), so tests, the bench and a later
//! simulator run the same code as the service.
//!
//! 1. **Filters**, in order ([`Filter::ALL`]): every candidate queue passes them one by one; the
//!    first one a queue fails is recorded with the reason ([`Rejection`]).
//! 2. **Weight** ([`weight`]): each survivor scores
//!    `(R + 1) / ((queued + assigned + 10) × many_assigned) × locality`, R being the larger of its
//!    running jobs, its pilots and its capacity (the reference's production broker, §6.2).
//! 3. **Assignment**: each job goes to the survivor with the highest weight *counting the jobs
//!    already given to it in this round*, so a task spreads over equal queues in proportion to
//!    their weights.
//!
//! The [`Explanation`] keeps both halves: every dropped queue with its filter and reason, and
//! every chosen queue with the parts of its score and its number of jobs. A task with no
//! survivor gets no jobs and stays pending with that explanation.
//!
//! [`shares`] is the global-share tree (in `panda_types`, since the server dispatches by it too):
//! which work gets the next slots.

mod filters;
pub use panda_types::shares;
pub mod weight;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use panda_types::Resources;

pub use filters::{Filter, Rejection, Shortfall};
pub use weight::Score;

/// Jobs of a queue now, by state group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Held by pilots (sent, starting, running).
    pub running: u32,
    /// Waiting for a pilot (activated).
    pub queued: u32,
    /// Brokered but not yet dispatchable (defined, assigned, throttled).
    pub assigned: u32,
    /// Pilots (harvester workers) the queue's harvester reports as submitted or running.
    pub pilots: u32,
}

/// A queue as brokerage sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueState {
    /// Name.
    pub name: String,
    /// Storage site whose replicas count as local (data locality).
    pub site: String,
    /// `online`, `offline`, `test`, `brokeroff`.
    pub status: String,
    /// Largest job it takes (zero: unlimited).
    pub max_resources: Resources,
    /// CPU architectures its workers have (empty: any).
    pub architectures: Vec<String>,
    /// Container runtimes it offers (empty: none).
    pub containers: Vec<String>,
    /// Software tags installed (release names, CVMFS tags).
    pub software_tags: Vec<String>,
    /// Users who may not run here.
    pub excluded_users: Vec<String>,
    /// Worker slots (harvester's `max_workers`).
    pub capacity: u32,
    /// Jobs and pilots now.
    pub load: Load,
    /// Seconds since its harvester last reported.
    pub seconds_since_heartbeat: u64,
    /// Closed for new work by an operator.
    pub throttled: bool,
}

impl QueueState {
    /// An online queue with no limits, no load and a fresh heartbeat (tests and benches start
    /// from it).
    pub fn online(name: impl Into<String>, capacity: u32) -> Self {
        let name = name.into();
        Self {
            site: name.clone(),
            name,
            status: "online".to_owned(),
            max_resources: Resources::default(),
            architectures: Vec::new(),
            containers: Vec::new(),
            software_tags: Vec::new(),
            excluded_users: Vec::new(),
            capacity,
            load: Load::default(),
            seconds_since_heartbeat: 0,
            throttled: false,
        }
    }
}

/// Brokerage settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A queue whose harvester has not reported for longer is dropped.
    pub stale_after_seconds: u64,
    /// A queue is throttled when its queued jobs exceed `queued_per_slot × R` and this floor.
    pub queued_per_slot: u32,
    /// See `queued_per_slot`.
    pub min_queue_limit: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self { stale_after_seconds: 300, queued_per_slot: 2, min_queue_limit: 1000 }
    }
}

/// What brokerage works on: every queue with its load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The queues.
    pub queues: Vec<QueueState>,
    /// Thresholds.
    pub settings: Settings,
}

/// Where a task's input is: bytes in total and bytes with a replica at each site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataLocality {
    /// Input bytes.
    pub total_bytes: u64,
    /// Input bytes with a replica at each site.
    pub bytes_at_site: BTreeMap<String, u64>,
}

impl DataLocality {
    /// From `(size, sites holding a replica)` per input file.
    pub fn from_files<'a>(files: impl IntoIterator<Item = (u64, &'a [String])>) -> Self {
        let mut locality = Self::default();
        for (size, sites) in files {
            locality.total_bytes += size;
            for site in sites {
                *locality.bytes_at_site.entry(site.clone()).or_default() += size;
            }
        }
        locality
    }

    /// Whether any replica location is known (without any, locality neither filters nor weighs).
    pub fn is_known(&self) -> bool {
        self.total_bytes > 0 && !self.bytes_at_site.is_empty()
    }

    /// Input bytes at `site`.
    pub fn at(&self, site: &str) -> u64 {
        self.bytes_at_site.get(site).copied().unwrap_or(0)
    }
}

/// What one task asks of brokerage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// The task (for the explanation).
    pub task_id: u64,
    /// Owner (queue exclusions).
    pub user: String,
    /// Per job.
    pub resources: Resources,
    /// Required CPU architecture.
    pub architecture: Option<String>,
    /// Required container runtime.
    pub container: Option<String>,
    /// The image the jobs run in (the queue must declare a container runtime).
    pub container_image: Option<String>,
    /// Required software tags (all of them).
    pub software_tags: Vec<String>,
    /// Only these queues (empty: any).
    pub queues: Vec<String>,
    /// Never these queues.
    pub excluded_queues: Vec<String>,
    /// Where the input is.
    pub input: DataLocality,
    /// Jobs to place.
    pub n_jobs: u32,
}

/// A queue a filter dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    /// The queue.
    pub queue: String,
    /// The first filter it failed.
    pub filter: Filter,
    /// Why.
    pub reason: Rejection,
}

/// A queue that passed every filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    /// The queue.
    pub queue: String,
    /// Its score before this round's jobs.
    pub score: Score,
    /// Jobs it got in this round.
    pub jobs: u32,
}

/// Why each queue was dropped or chosen for one task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explanation {
    /// The task.
    pub task_id: u64,
    /// Jobs brokered.
    pub n_jobs: u32,
    /// Dropped queues, in snapshot order.
    pub dropped: Vec<Dropped>,
    /// Survivors, best initial weight first.
    pub chosen: Vec<Chosen>,
}

impl Explanation {
    /// No queue passed the filters: the task stays pending.
    pub fn is_pending(&self) -> bool {
        self.chosen.is_empty()
    }

    /// The survivor with the most jobs (ties: the higher weight).
    pub fn winner(&self) -> Option<&Chosen> {
        self.chosen.iter().max_by(|a, b| a.jobs.cmp(&b.jobs).then(b.score.weight.total_cmp(&a.score.weight)))
    }

    /// Queues dropped by each filter, in filter order (filters that dropped none left out).
    pub fn dropped_per_filter(&self) -> Vec<(Filter, usize)> {
        Filter::ALL
            .iter()
            .map(|f| (*f, self.dropped.iter().filter(|d| d.filter == *f).count()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// One line: the pending reason, or the winner with how it scored.
    pub fn summary(&self) -> String {
        if self.chosen.is_empty() {
            if self.dropped.is_empty() {
                return "no queue can run this task: no queue is registered (is a harvester running?)".to_owned();
            }
            let mut text = "no queue can run this task: ".to_owned();
            for (i, d) in self.dropped.iter().take(20).enumerate() {
                if i > 0 {
                    text.push_str("; ");
                }
                let _ = write!(text, "{}: {} ({} filter)", d.queue, d.reason, d.filter);
            }
            if self.dropped.len() > 20 {
                let _ = write!(text, "; and {} more queues", self.dropped.len() - 20);
            }
            return text;
        }
        let mut text = String::new();
        if let Some(w) = self.winner() {
            let _ = write!(
                text,
                "{} jobs on {} queues; most to {} ({} jobs, {})",
                self.n_jobs,
                self.chosen.iter().filter(|c| c.jobs > 0).count(),
                w.queue,
                w.jobs,
                w.score
            );
        }
        let per_filter = self.dropped_per_filter();
        if !per_filter.is_empty() {
            text.push_str("; dropped:");
            for (f, n) in per_filter {
                let _ = write!(text, " {f} {n}");
            }
        }
        text
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "task {}: {}", self.task_id, self.summary())?;
        for c in &self.chosen {
            writeln!(f, "  chosen  {:<24} jobs {:<6} {}", c.queue, c.jobs, c.score)?;
        }
        for d in &self.dropped {
            writeln!(f, "  dropped {:<24} by {:<12} {}", d.queue, d.filter.to_string(), d.reason)?;
        }
        Ok(())
    }
}

/// The outcome for one task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Index into [`Snapshot::queues`] for each job, in job order (empty when pending).
    pub assignments: Vec<u32>,
    /// Why.
    pub explanation: Explanation,
}

impl Decision {
    /// Queue name of each job.
    pub fn queue_names<'a>(&self, snapshot: &'a Snapshot) -> Vec<&'a str> {
        self.assignments.iter().map(|&i| snapshot.queues[i as usize].name.as_str()).collect()
    }
}

/// Time spent in each filter, the weighing and the assignment (the bench prints it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Per filter, in [`Filter::ALL`] order.
    pub filters: [Duration; Filter::ALL.len()],
    /// Scoring survivors.
    pub weigh: Duration,
    /// Giving each job its queue.
    pub assign: Duration,
}

/// Brokers one task. `taken` carries jobs already given to each queue earlier in the same cycle
/// (index = queue index; grown as needed), so consecutive tasks see each other's jobs.
pub fn broker(snapshot: &Snapshot, request: &Request, taken: &mut Vec<u32>) -> Decision {
    broker_inner(snapshot, request, taken, None)
}

/// [`broker`], adding the time spent per step to `timings`.
pub fn broker_timed(snapshot: &Snapshot, request: &Request, taken: &mut Vec<u32>, timings: &mut Timings) -> Decision {
    broker_inner(snapshot, request, taken, Some(timings))
}

#[derive(PartialEq)]
struct Slot {
    weight: f64,
    index: u32,
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Slot {
    // Highest weight first; equal weights: the queue listed first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.weight.total_cmp(&other.weight).then_with(|| other.index.cmp(&self.index))
    }
}

fn broker_inner(
    snapshot: &Snapshot,
    request: &Request,
    taken: &mut Vec<u32>,
    mut timings: Option<&mut Timings>,
) -> Decision {
    if taken.len() < snapshot.queues.len() {
        taken.resize(snapshot.queues.len(), 0);
    }
    let mut candidates: Vec<u32> = (0..snapshot.queues.len() as u32).collect();
    let mut dropped = Vec::new();
    for (i, filter) in Filter::ALL.iter().enumerate() {
        let started = timings.as_ref().map(|_| Instant::now());
        candidates.retain(|&q| {
            let queue = &snapshot.queues[q as usize];
            match filter.check(queue, request, &snapshot.settings, taken[q as usize]) {
                Ok(()) => true,
                Err(reason) => {
                    dropped.push((q, *filter, reason));
                    false
                }
            }
        });
        if let (Some(t), Some(s)) = (timings.as_deref_mut(), started) {
            t.filters[i] += s.elapsed();
        }
    }
    dropped.sort_unstable_by_key(|d| d.0);
    let dropped = dropped
        .into_iter()
        .map(|(q, filter, reason)| Dropped { queue: snapshot.queues[q as usize].name.clone(), filter, reason })
        .collect();
    let started = timings.as_ref().map(|_| Instant::now());
    let mut chosen: Vec<(u32, Score)> = candidates
        .iter()
        .map(|&q| (q, weight::score(&snapshot.queues[q as usize], &request.input, taken[q as usize])))
        .collect();
    if let (Some(t), Some(s)) = (timings.as_deref_mut(), started) {
        t.weigh += s.elapsed();
    }
    let started = timings.as_ref().map(|_| Instant::now());
    let mut assignments = Vec::new();
    let mut jobs = vec![0u32; chosen.len()];
    if !chosen.is_empty() {
        assignments.reserve(request.n_jobs as usize);
        let mut heap: BinaryHeap<Slot> =
            chosen.iter().enumerate().map(|(i, (_, s))| Slot { weight: s.weight, index: i as u32 }).collect();
        for _ in 0..request.n_jobs {
            let Some(mut best) = heap.pop() else { break };
            let (q, score) = &chosen[best.index as usize];
            jobs[best.index as usize] += 1;
            taken[*q as usize] += 1;
            assignments.push(*q);
            best.weight = score.with_more_jobs(jobs[best.index as usize]);
            heap.push(best);
        }
    }
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by(|&a, &b| chosen[b].1.weight.total_cmp(&chosen[a].1.weight).then(a.cmp(&b)));
    let chosen = order
        .into_iter()
        .map(|i| {
            let (q, score) = std::mem::take(&mut chosen[i]);
            Chosen { queue: snapshot.queues[q as usize].name.clone(), score, jobs: jobs[i] }
        })
        .collect();
    if let (Some(t), Some(s)) = (timings, started) {
        t.assign += s.elapsed();
    }
    Decision {
        assignments,
        explanation: Explanation { task_id: request.task_id, n_jobs: request.n_jobs, dropped, chosen },
    }
}

/// Brokers several tasks in one cycle, taking the next task always from the share most under its
/// target (counting the jobs given so far in the cycle), so the shares decide which work gets the
/// free slots first. `running` is the jobs each leaf of `shares` holds now; `tasks` pairs each
/// request with its leaf. Returns `(task position, decision)` in the order they were brokered.
pub fn broker_cycle(
    snapshot: &Snapshot,
    shares: &shares::ShareTree,
    running: &[u64],
    tasks: &[(usize, Request)],
    mut timings: Option<&mut Timings>,
) -> Vec<(usize, Decision)> {
    let n_leaves = shares.leaves().len();
    let mut waiting: Vec<std::collections::VecDeque<usize>> = vec![std::collections::VecDeque::new(); n_leaves];
    for (i, (leaf, _)) in tasks.iter().enumerate() {
        if let Some(q) = waiting.get_mut(*leaf) {
            q.push_back(i);
        }
    }
    let mut usage: Vec<u64> = (0..n_leaves).map(|l| running.get(l).copied().unwrap_or(0)).collect();
    let mut taken = vec![0u32; snapshot.queues.len()];
    let mut out = Vec::with_capacity(tasks.len());
    while let Some(leaf) = shares.order(&usage).into_iter().find(|&l| !waiting[l].is_empty()) {
        let Some(i) = waiting[leaf].pop_front() else { break };
        let decision = broker_inner(snapshot, &tasks[i].1, &mut taken, timings.as_deref_mut());
        usage[leaf] += decision.assignments.len() as u64;
        out.push((i, decision));
    }
    out
}

#[cfg(test)]
mod tests;
