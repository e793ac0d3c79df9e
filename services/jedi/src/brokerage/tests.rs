use panda_types::Resources;

use super::*;

fn snapshot(queues: Vec<QueueState>) -> Snapshot {
    Snapshot { queues, settings: Settings { stale_after_seconds: 60, queued_per_slot: 2, min_queue_limit: 100 } }
}

fn request(n_jobs: u32) -> Request {
    Request {
        task_id: 1,
        user: "alice".into(),
        n_jobs,
        resources: Resources { cores: 1, ..Default::default() },
        ..Default::default()
    }
}

fn run(snap: &Snapshot, req: &Request) -> Decision {
    broker(snap, req, &mut Vec::new())
}

/// The single queue `q` is dropped by `filter` with `reason` while a plain queue passes.
fn drops(q: QueueState, req: &Request, filter: Filter, reason: Rejection) {
    let snap = snapshot(vec![q, QueueState::online("plain", 10)]);
    let d = run(&snap, req);
    assert_eq!(d.explanation.dropped.len(), 1, "{}", d.explanation);
    let dropped = &d.explanation.dropped[0];
    assert_eq!((dropped.filter, &dropped.reason), (filter, &reason));
    assert!(d.queue_names(&snap).iter().all(|q| *q == "plain"));
}

#[test]
fn task_queue_list_filter() {
    let mut req = request(2);
    req.queues = vec!["plain".into()];
    drops(QueueState::online("other", 10), &req, Filter::TaskQueues, Rejection::NotRequested);
}

#[test]
fn status_filter() {
    let mut q = QueueState::online("off", 10);
    q.status = "brokeroff".into();
    drops(q, &request(1), Filter::Status, Rejection::NotOnline("brokeroff".into()));
}

#[test]
fn heartbeat_filter() {
    let mut q = QueueState::online("stale", 10);
    q.seconds_since_heartbeat = 61;
    drops(q, &request(1), Filter::Heartbeat, Rejection::Stale(61));
}

#[test]
fn resource_filters() {
    let mut req = request(1);
    req.resources = Resources { cores: 8, memory_mb: 4000, disk_mb: 10_000, walltime_seconds: 7200 };
    let with = |r: Resources| {
        let mut q = QueueState::online("small", 10);
        q.max_resources = r;
        q
    };
    let big = Resources { cores: 8, memory_mb: 4000, disk_mb: 10_000, walltime_seconds: 7200 };
    drops(with(Resources { cores: 4, ..big }), &req, Filter::Cores, Rejection::Cores(Shortfall { need: 8, have: 4 }));
    drops(
        with(Resources { memory_mb: 2000, ..big }),
        &req,
        Filter::Memory,
        Rejection::Memory(Shortfall { need: 4000, have: 2000 }),
    );
    drops(
        with(Resources { disk_mb: 1, ..big }),
        &req,
        Filter::Disk,
        Rejection::Disk(Shortfall { need: 10_000, have: 1 }),
    );
    drops(
        with(Resources { walltime_seconds: 3600, ..big }),
        &req,
        Filter::Walltime,
        Rejection::Walltime(Shortfall { need: 7200, have: 3600 }),
    );
    // Exactly enough passes; zero in the queue means unlimited.
    let snap = snapshot(vec![with(big), with(Resources::default())]);
    assert!(run(&snap, &req).explanation.dropped.is_empty());
}

#[test]
fn architecture_container_and_software_filters() {
    let mut req = request(1);
    req.architecture = Some("aarch64".into());
    let mut q = QueueState::online("x86", 10);
    q.architectures = vec!["x86_64".into()];
    drops(q, &req, Filter::Architecture, Rejection::Architecture { need: "aarch64".into(), have: "x86_64".into() });

    let mut req = request(1);
    req.container = Some("apptainer".into());
    let mut with_runtime = QueueState::online("plain", 10);
    with_runtime.containers = vec!["apptainer".into()];
    let snap = snapshot(vec![QueueState::online("bare", 10), with_runtime]);
    let d = run(&snap, &req);
    assert_eq!(d.explanation.dropped[0].reason, Rejection::Container { need: "apptainer".into(), have: vec![] });
    assert_eq!(d.explanation.dropped[0].reason.to_string(), "needs container runtime apptainer, queue declares none");
    assert_eq!(d.queue_names(&snap), vec!["plain"]);

    let mut req = request(1);
    req.software_tags = vec!["root-6.30".into(), "gcc-13".into()];
    let mut partial = QueueState::online("partial", 10);
    partial.software_tags = vec!["root-6.30".into()];
    let mut full = QueueState::online("full", 10);
    full.software_tags = vec!["gcc-13".into(), "root-6.30".into()];
    let snap = snapshot(vec![partial, full]);
    let d = run(&snap, &req);
    assert_eq!(d.explanation.dropped[0].filter, Filter::Software);
    assert_eq!(d.explanation.dropped[0].reason, Rejection::Software("gcc-13".into()));
    assert_eq!(d.queue_names(&snap), vec!["full"]);
}

/// A task with a container image goes only to queues declaring a container runtime; with
/// `requirements.container` too, only to queues declaring that one. The explanation names why.
#[test]
fn container_image_needs_a_declared_runtime() {
    let queue = |name: &str, runtimes: &[&str]| {
        let mut q = QueueState::online(name, 10);
        q.containers = runtimes.iter().map(|r| (*r).to_owned()).collect();
        q
    };
    let snap = snapshot(vec![queue("bare", &[]), queue("pod", &["podman"]), queue("hpc", &["apptainer", "podman"])]);
    let dropped = |d: &Decision| {
        d.explanation.dropped.iter().map(|x| (x.queue.clone(), x.filter, x.reason.to_string())).collect::<Vec<_>>()
    };

    // An image, no runtime named: any declared runtime will do.
    let mut req = request(4);
    req.container_image = Some("docker://python:3.11-slim".into());
    let d = run(&snap, &req);
    assert_eq!(
        dropped(&d),
        [(
            "bare".to_owned(),
            Filter::Container,
            "runs in container image docker://python:3.11-slim, queue declares no container runtime".to_owned()
        )]
    );
    assert_eq!(
        d.explanation.dropped[0].reason,
        Rejection::NoContainerRuntime { image: "docker://python:3.11-slim".into() }
    );
    let mut chosen = d.queue_names(&snap);
    chosen.sort();
    chosen.dedup();
    assert_eq!(chosen, ["hpc", "pod"]);

    // An image and a runtime: that runtime.
    req.container = Some("apptainer".into());
    let d = run(&snap, &req);
    assert_eq!(
        dropped(&d),
        [
            ("bare".to_owned(), Filter::Container, "needs container runtime apptainer, queue declares none".to_owned()),
            ("pod".to_owned(), Filter::Container, "needs container runtime apptainer, queue offers podman".to_owned()),
        ]
    );
    assert_eq!(d.queue_names(&snap), ["hpc"; 4], "every job to the queue with apptainer");

    // No image, no runtime: the filter lets every queue through.
    let d = run(&snap, &request(4));
    assert!(d.explanation.dropped.is_empty(), "{:?}", d.explanation.dropped);

    // No queue declares the runtime: nowhere, with every reason.
    let snap = snapshot(vec![queue("bare", &[])]);
    let mut req = request(1);
    req.container_image = Some("/images/a.sif".into());
    let d = run(&snap, &req);
    assert!(d.queue_names(&snap).is_empty());
    assert_eq!(d.explanation.dropped[0].filter, Filter::Container);
}

#[test]
fn data_locality_filter_and_weight() {
    let sites = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (a, b) = (sites(&["site-a"]), sites(&["site-a", "site-b"]));
    let mut req = request(30);
    req.input = DataLocality::from_files([(100, a.as_slice()), (300, b.as_slice())]);
    let mut qa = QueueState::online("qa", 10);
    qa.site = "site-a".into();
    let mut qb = QueueState::online("qb", 10);
    qb.site = "site-b".into();
    let mut qc = QueueState::online("qc", 10);
    qc.site = "site-c".into();
    let snap = snapshot(vec![qa, qb, qc]);
    let d = run(&snap, &req);
    assert_eq!(d.explanation.dropped.len(), 1);
    assert_eq!(d.explanation.dropped[0].queue, "qc");
    assert_eq!(d.explanation.dropped[0].reason, Rejection::NoLocalData { site: "site-c".into(), total_bytes: 400 });
    // qa holds all 400 bytes (locality 2), qb 300 (1.75): qa scores higher and gets more jobs.
    let qa = d.explanation.chosen.iter().find(|c| c.queue == "qa").unwrap();
    let qb = d.explanation.chosen.iter().find(|c| c.queue == "qb").unwrap();
    assert!((qa.score.locality - 2.0).abs() < 1e-9 && (qb.score.locality - 1.75).abs() < 1e-9);
    assert!(qa.jobs > qb.jobs, "{}", d.explanation);
    assert_eq!(qa.jobs + qb.jobs, 30);
}

#[test]
fn unknown_replicas_do_not_filter() {
    let mut req = request(1);
    req.input = DataLocality::from_files([(100, &[][..])]);
    let snap = snapshot(vec![QueueState::online("q", 1)]);
    assert!(run(&snap, &req).explanation.dropped.is_empty());
}

#[test]
fn exclusion_filter() {
    let mut req = request(1);
    req.excluded_queues = vec!["bad".into()];
    drops(QueueState::online("bad", 10), &req, Filter::Exclusion, Rejection::ExcludedByTask);
    let mut q = QueueState::online("strict", 10);
    q.excluded_users = vec!["alice".into()];
    drops(q, &request(1), Filter::Exclusion, Rejection::UserExcluded("alice".into()));
}

#[test]
fn throttled_filter() {
    let mut closed = QueueState::online("closed", 10);
    closed.throttled = true;
    drops(closed, &request(1), Filter::Throttled, Rejection::Closed);
    // capacity 100 → limit max(2 × 100, 100) = 200 queued.
    let mut full = QueueState::online("full", 100);
    full.load = Load { queued: 150, assigned: 50, ..Load::default() };
    drops(full, &request(1), Filter::Throttled, Rejection::TooManyQueued { queued: 200, limit: 200 });
}

#[test]
fn jobs_of_earlier_tasks_in_a_cycle_count_for_throttling() {
    let snap = snapshot(vec![QueueState::online("q", 10)]); // limit max(20, 100) = 100
    let mut taken = Vec::new();
    let first = broker(&snap, &request(100), &mut taken);
    assert_eq!(first.assignments.len(), 100);
    let second = broker(&snap, &request(1), &mut taken);
    assert!(second.explanation.is_pending());
    assert_eq!(second.explanation.dropped[0].reason, Rejection::TooManyQueued { queued: 100, limit: 100 });
}

#[test]
fn the_first_failing_filter_is_the_one_recorded() {
    // Offline and too small: status runs first.
    let mut q = QueueState::online("q", 10);
    q.status = "offline".into();
    q.max_resources.cores = 1;
    let mut req = request(1);
    req.resources.cores = 4;
    let d = run(&snapshot(vec![q]), &req);
    assert_eq!(d.explanation.dropped[0].filter, Filter::Status);
}

#[test]
fn weight_prefers_capacity_and_penalises_waiting_work() {
    let mut idle_big = QueueState::online("big", 100);
    idle_big.load = Load { running: 50, queued: 0, ..Load::default() };
    let mut busy_small = QueueState::online("small", 10);
    busy_small.load = Load { running: 10, queued: 30, ..Load::default() };
    let d = run(&snapshot(vec![busy_small, idle_big]), &request(1));
    assert_eq!(d.explanation.winner().unwrap().queue, "big");
    let big = &d.explanation.chosen[0];
    // (100 + 1) / ((0 + 0 + 0 + 10) × 1) × 1
    assert!((big.score.weight - 10.1).abs() < 1e-9, "{}", big.score);
}

#[test]
fn pilots_count_as_slots_and_many_assigned_penalises() {
    let mut q = QueueState::online("q", 1);
    q.load = Load { running: 0, queued: 10, assigned: 40, pilots: 30 };
    let s = weight::score(&q, &DataLocality::default(), 0);
    assert_eq!(s.slots, 30);
    assert!((s.many_assigned - 2.0).abs() < 1e-9);
    assert!((s.weight - 31.0 / (60.0 * 2.0)).abs() < 1e-9);
}

#[test]
fn jobs_spread_in_proportion_to_weight() {
    // Equal queues share equally; a queue with twice the slots gets about twice the jobs.
    let snap = snapshot(vec![QueueState::online("a", 100), QueueState::online("b", 100), QueueState::online("c", 200)]);
    let d = run(&snap, &request(400));
    let jobs = |name: &str| d.explanation.chosen.iter().find(|c| c.queue == name).unwrap().jobs;
    assert_eq!(jobs("a") + jobs("b") + jobs("c"), 400);
    assert!(jobs("a").abs_diff(jobs("b")) <= 1);
    let ratio = f64::from(jobs("c")) / f64::from(jobs("a"));
    assert!((1.8..2.2).contains(&ratio), "ratio {ratio}: {}", d.explanation);
}

#[test]
fn no_queue_leaves_the_task_pending_with_every_reason() {
    let mut off = QueueState::online("off", 10);
    off.status = "offline".into();
    let mut small = QueueState::online("small", 10);
    small.max_resources.memory_mb = 1000;
    let mut req = request(5);
    req.resources.memory_mb = 2000;
    let d = run(&snapshot(vec![off, small]), &req);
    assert!(d.explanation.is_pending());
    assert!(d.assignments.is_empty());
    let text = d.explanation.summary();
    assert!(text.contains("off: status is offline (status filter)"), "{text}");
    assert!(text.contains("small: needs 2000 MB memory, queue offers 1000 (memory filter)"), "{text}");
    let none = run(&snapshot(vec![]), &req);
    assert!(none.explanation.summary().contains("harvester"));
}

#[test]
fn explanation_names_the_winner_and_counts_drops() {
    let mut off = QueueState::online("off", 10);
    off.status = "offline".into();
    let snap = snapshot(vec![off, QueueState::online("a", 10)]);
    let d = run(&snap, &request(3));
    let text = d.explanation.summary();
    assert!(text.contains("most to a (3 jobs, weight"), "{text}");
    assert!(text.contains("dropped: status 1"), "{text}");
    assert_eq!(d.explanation.dropped_per_filter(), vec![(Filter::Status, 1)]);
}

#[test]
fn timed_and_untimed_decide_the_same() {
    let snap = snapshot((0..20).map(|i| QueueState::online(format!("q{i}"), 5 + i)).collect());
    let mut timings = Timings::default();
    let a = broker_timed(&snap, &request(50), &mut Vec::new(), &mut timings);
    let b = run(&snap, &request(50));
    assert_eq!(a, b);
}

#[test]
fn a_cycle_brokers_the_most_under_target_share_first() {
    let shares = shares::ShareTree::new(&[
        shares::ShareDef::new("production", None, 75.0),
        shares::ShareDef::new("analysis", None, 25.0),
    ])
    .unwrap();
    let snap = snapshot(vec![QueueState::online("q", 10_000)]);
    let tasks: Vec<(usize, Request)> = (0..16).map(|i| (i % 2, Request { task_id: i as u64, ..request(10) })).collect();
    let order = broker_cycle(&snap, &shares, &[0, 0], &tasks, None);
    assert_eq!(order.len(), 16);
    let first8: Vec<usize> = order.iter().take(8).map(|(i, _)| tasks[*i].0).collect();
    assert_eq!(first8.iter().filter(|&&l| l == 0).count(), 6, "{first8:?}");
    // Analysis far below its target at the start of the cycle goes first.
    let order = broker_cycle(&snap, &shares, &[1000, 0], &tasks, None);
    assert!(order.iter().take(8).all(|(i, _)| tasks[*i].0 == 1));
}
