//! The brokerage filters, in the order they run. Each drops a queue with a typed reason.

use std::fmt;

use super::{QueueState, Request, Settings};

/// One filter. [`Filter::ALL`] is their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// The task's queue list (`task.queues`).
    TaskQueues,
    /// Status `online`.
    Status,
    /// A recent harvester heartbeat.
    Heartbeat,
    /// Enough cores.
    Cores,
    /// Enough memory.
    Memory,
    /// Enough scratch disk.
    Disk,
    /// A long enough walltime.
    Walltime,
    /// The CPU architecture the task needs.
    Architecture,
    /// The container runtime the task needs (`requirements.container`), or any runtime for a task
    /// with a container image.
    Container,
    /// Every software tag the task needs.
    Software,
    /// Some of the task's input already at the queue's site (when replicas are known).
    DataLocality,
    /// Excluded by the task, or the task's user excluded by the queue.
    Exclusion,
    /// Closed by an operator, or too many jobs already queued for its slots.
    Throttled,
}

impl Filter {
    /// Every filter, in the order they run.
    pub const ALL: [Filter; 13] = [
        Filter::TaskQueues,
        Filter::Status,
        Filter::Heartbeat,
        Filter::Cores,
        Filter::Memory,
        Filter::Disk,
        Filter::Walltime,
        Filter::Architecture,
        Filter::Container,
        Filter::Software,
        Filter::DataLocality,
        Filter::Exclusion,
        Filter::Throttled,
    ];

    /// Stable name (API, CLI, bench).
    pub fn as_str(self) -> &'static str {
        match self {
            Filter::TaskQueues => "task_queues",
            Filter::Status => "status",
            Filter::Heartbeat => "heartbeat",
            Filter::Cores => "cores",
            Filter::Memory => "memory",
            Filter::Disk => "disk",
            Filter::Walltime => "walltime",
            Filter::Architecture => "architecture",
            Filter::Container => "container",
            Filter::Software => "software",
            Filter::DataLocality => "data_locality",
            Filter::Exclusion => "exclusion",
            Filter::Throttled => "throttled",
        }
    }

    /// Checks one queue. `taken` is the jobs this cycle already gave it.
    ///
    /// # Errors
    /// Why the queue cannot take the task's jobs.
    pub fn check(
        self,
        queue: &QueueState,
        request: &Request,
        settings: &Settings,
        taken: u32,
    ) -> Result<(), Rejection> {
        let short = |need: u64, have: u64| (have != 0 && need > have).then_some(Shortfall { need, have });
        let need = &request.resources;
        let have = &queue.max_resources;
        match self {
            Filter::TaskQueues => {
                if !request.queues.is_empty() && !request.queues.contains(&queue.name) {
                    return Err(Rejection::NotRequested);
                }
            }
            Filter::Status => {
                if queue.status != "online" {
                    return Err(Rejection::NotOnline(queue.status.clone()));
                }
            }
            Filter::Heartbeat => {
                if queue.seconds_since_heartbeat > settings.stale_after_seconds {
                    return Err(Rejection::Stale(queue.seconds_since_heartbeat));
                }
            }
            Filter::Cores => {
                if let Some(s) = short(u64::from(need.cores.max(1)), u64::from(have.cores)) {
                    return Err(Rejection::Cores(s));
                }
            }
            Filter::Memory => {
                if let Some(s) = short(need.memory_mb, have.memory_mb) {
                    return Err(Rejection::Memory(s));
                }
            }
            Filter::Disk => {
                if let Some(s) = short(need.disk_mb, have.disk_mb) {
                    return Err(Rejection::Disk(s));
                }
            }
            Filter::Walltime => {
                if let Some(s) = short(need.walltime_seconds, have.walltime_seconds) {
                    return Err(Rejection::Walltime(s));
                }
            }
            Filter::Architecture => {
                if let Some(arch) = &request.architecture
                    && !queue.architectures.is_empty()
                    && !queue.architectures.contains(arch)
                {
                    return Err(Rejection::Architecture { need: arch.clone(), have: queue.architectures.join(",") });
                }
            }
            Filter::Container => {
                if let Some(runtime) = &request.container {
                    if !queue.containers.contains(runtime) {
                        return Err(Rejection::Container { need: runtime.clone(), have: queue.containers.clone() });
                    }
                } else if let Some(image) = &request.container_image
                    && queue.containers.is_empty()
                {
                    return Err(Rejection::NoContainerRuntime { image: image.clone() });
                }
            }
            Filter::Software => {
                if let Some(missing) = request.software_tags.iter().find(|t| !queue.software_tags.contains(t)) {
                    return Err(Rejection::Software(missing.clone()));
                }
            }
            Filter::DataLocality => {
                if request.input.is_known() && request.input.at(&queue.site) == 0 {
                    return Err(Rejection::NoLocalData {
                        site: queue.site.clone(),
                        total_bytes: request.input.total_bytes,
                    });
                }
            }
            Filter::Exclusion => {
                if request.excluded_queues.contains(&queue.name) {
                    return Err(Rejection::ExcludedByTask);
                }
                if queue.excluded_users.contains(&request.user) {
                    return Err(Rejection::UserExcluded(request.user.clone()));
                }
            }
            Filter::Throttled => {
                if queue.throttled {
                    return Err(Rejection::Closed);
                }
                let slots = queue.load.running.max(queue.load.pilots).max(queue.capacity);
                let limit = settings.queued_per_slot.saturating_mul(slots).max(settings.min_queue_limit);
                let queued = queue.load.queued.saturating_add(queue.load.assigned).saturating_add(taken);
                if queued >= limit {
                    return Err(Rejection::TooManyQueued { queued, limit });
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a queue was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not in the task's queue list.
    NotRequested,
    /// Status is not online.
    NotOnline(String),
    /// Its harvester has not reported for this many seconds.
    Stale(u64),
    /// Too few cores.
    Cores(Shortfall),
    /// Too little memory (MB).
    Memory(Shortfall),
    /// Too little disk (MB).
    Disk(Shortfall),
    /// Too short a walltime (seconds).
    Walltime(Shortfall),
    /// Other CPU architectures.
    Architecture {
        /// Asked for.
        need: String,
        /// Offered, comma separated.
        have: String,
    },
    /// The container runtime the task names is not among the queue's.
    Container {
        /// Asked for.
        need: String,
        /// Offered.
        have: Vec<String>,
    },
    /// The task runs in a container image and the queue declares no container runtime.
    NoContainerRuntime {
        /// The task's image.
        image: String,
    },
    /// A software tag is missing.
    Software(String),
    /// None of the input is at the queue's site.
    NoLocalData {
        /// The queue's site.
        site: String,
        /// The task's input bytes.
        total_bytes: u64,
    },
    /// The task excludes the queue.
    ExcludedByTask,
    /// The queue excludes the task's user.
    UserExcluded(String),
    /// Closed by an operator.
    Closed,
    /// Too many jobs waiting already.
    TooManyQueued {
        /// Queued, assigned and given this cycle.
        queued: u32,
        /// The limit.
        limit: u32,
    },
}

/// A resource the job needs more of than the queue offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// What the job asks for.
    pub need: u64,
    /// What the queue offers.
    pub have: u64,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotRequested => write!(f, "not in task.queues"),
            Rejection::NotOnline(status) => write!(f, "status is {status}"),
            Rejection::Stale(seconds) => write!(f, "no harvester heartbeat for {seconds}s"),
            Rejection::Cores(Shortfall { need, have }) => write!(f, "needs {need} cores, queue offers {have}"),
            Rejection::Memory(Shortfall { need, have }) => write!(f, "needs {need} MB memory, queue offers {have}"),
            Rejection::Disk(Shortfall { need, have }) => write!(f, "needs {need} MB disk, queue offers {have}"),
            Rejection::Walltime(Shortfall { need, have }) => {
                write!(f, "needs {need}s walltime, queue offers {have}s")
            }
            Rejection::Architecture { need, have } => write!(f, "needs architecture {need}, queue has {have}"),
            Rejection::Container { need, have } if have.is_empty() => {
                write!(f, "needs container runtime {need}, queue declares none")
            }
            Rejection::Container { need, have } => {
                write!(f, "needs container runtime {need}, queue offers {}", have.join(","))
            }
            Rejection::NoContainerRuntime { image } => {
                write!(f, "runs in container image {image}, queue declares no container runtime")
            }
            Rejection::Software(tag) => write!(f, "needs software {tag}, not installed"),
            Rejection::NoLocalData { site, total_bytes } => {
                write!(f, "none of the task's {total_bytes} input bytes has a replica at site {site}")
            }
            Rejection::ExcludedByTask => write!(f, "in task.excluded_queues"),
            Rejection::UserExcluded(user) => write!(f, "queue excludes user {user}"),
            Rejection::Closed => write!(f, "closed for new work by an operator"),
            Rejection::TooManyQueued { queued, limit } => write!(f, "{queued} jobs queued, limit {limit}"),
        }
    }
}
