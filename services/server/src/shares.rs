//! Global shares in the dispatcher: the configured share tree (`[server.shares]`), each leaf's
//! usage kept in memory, and the order in which a pilot's request is served from the shares.
//!
//! Usage (jobs held by pilots per leaf, activated jobs per queue and leaf) is replaced by a count
//! from the database every `refresh_interval` and adjusted in between by what this replica
//! dispatches and what its pilots end, so a GetJob costs no count query. Another replica's
//! dispatches show up at the next refresh. With one leaf nothing is kept and dispatch claims as
//! before, without a share filter.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use panda_types::shares::{ShareDef, ShareError, ShareTree};
use serde::{Deserialize, Serialize};

use crate::store::ShareCount;

/// `[server.shares]`: the global-share tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The shares, parents before their children (`name`, `parent`, `percent` of the parent;
    /// percentages are normalised among siblings). Jobs are dispatched from leaves.
    pub tree: Vec<ShareDef>,
    /// The leaf of tasks submitted without a share.
    pub default: String,
    /// How often usage is counted again from the database (between counts it is kept up to date
    /// with this replica's dispatches and job ends).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tree: vec![ShareDef::new("default", None, 100.0)],
            default: "default".to_owned(),
            refresh_interval: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// The validated tree and the default leaf's position.
    ///
    /// # Errors
    /// A message naming the bad key: `server.shares.tree[2].parent: ...`,
    /// `server.shares.default = "x": ...`.
    pub fn build(&self) -> Result<(ShareTree, usize), String> {
        let tree = ShareTree::new(&self.tree).map_err(|ShareError { field, message }| {
            let field = field.strip_prefix("shares").unwrap_or(&field);
            format!("server.shares.tree{field}: {message}")
        })?;
        let default = tree.leaf(&self.default).ok_or_else(|| {
            format!(
                "server.shares.default = {:?}: must name a leaf share (one without children); leaves: {}",
                self.default,
                tree.leaves().join(", ")
            )
        })?;
        Ok((tree, default))
    }
}

/// One leaf's usage, as ListShares shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareUsage {
    /// Leaf name.
    pub name: String,
    /// Parent share, if any.
    pub parent: Option<String>,
    /// Target fraction of all slots (0..=1).
    pub target: f64,
    /// Jobs held by pilots.
    pub running: u64,
    /// Activated jobs.
    pub queued: u64,
}

#[derive(Debug, Default)]
struct Usage {
    /// Held jobs per leaf.
    running: Vec<u64>,
    /// Activated jobs per queue, per leaf.
    queued: HashMap<String, Vec<u64>>,
}

/// The share tree with its usage. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Shares {
    tree: ShareTree,
    default: usize,
    usage: Mutex<Usage>,
}

impl Shares {
    /// Shares over a validated tree with its default leaf.
    pub fn new(tree: ShareTree, default: usize) -> Self {
        let leaves = tree.leaves().len();
        let usage = Usage { running: vec![0; leaves], queued: HashMap::new() };
        Self { tree, default, usage: Mutex::new(usage) }
    }

    /// One leaf, `default`: dispatch ignores shares.
    pub fn single() -> Self {
        Self::new(ShareTree::single("default"), 0)
    }

    /// Whether the tree has one leaf (then dispatch claims without a share filter).
    pub fn is_single(&self) -> bool {
        self.tree.leaves().len() == 1
    }

    /// The tree.
    pub fn tree(&self) -> &ShareTree {
        &self.tree
    }

    /// The default leaf's name.
    pub fn default_name(&self) -> &str {
        self.tree.leaves()[self.default]
    }

    /// The share a task gets: `requested`, or the default leaf when empty.
    ///
    /// # Errors
    /// What is wrong with `requested` (not a leaf of the tree), for `task.share`.
    pub fn resolve(&self, requested: &str) -> Result<String, String> {
        if requested.is_empty() {
            return Ok(self.default_name().to_owned());
        }
        if self.tree.leaf(requested).is_some() {
            return Ok(requested.to_owned());
        }
        Err(format!(
            "{requested:?} is not a share jobs can use; the leaf shares are: {} (panda share list)",
            self.tree.leaves().join(", ")
        ))
    }

    /// A stored share name's leaf: unknown names (jobs from before shares, or from a tree that
    /// has changed since) count as the default leaf.
    fn leaf_of(&self, name: &str) -> usize {
        self.tree.leaf(name).unwrap_or(self.default)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        // Usage is plain counters: a panic elsewhere cannot leave it inconsistent.
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the usage with a fresh count from the database.
    pub fn replace(&self, counts: &[ShareCount]) {
        let leaves = self.tree.leaves().len();
        let mut fresh = Usage { running: vec![0; leaves], queued: HashMap::new() };
        for count in counts {
            let leaf = self.leaf_of(&count.share);
            if count.queued {
                fresh.queued.entry(count.queue.clone()).or_insert_with(|| vec![0; leaves])[leaf] += count.n;
            } else {
                fresh.running[leaf] += count.n;
            }
        }
        *self.lock() = fresh;
    }

    /// How to serve `wanted` jobs from `queue`: the shares to claim from, most under target
    /// first, with how many each. Slots go one by one to the share furthest under its target
    /// among those with activated jobs on the queue (as last counted); a share's claim may come
    /// back short, so the caller then tries the rest of the queue without a share filter.
    pub fn plan(&self, queue: &str, wanted: u64) -> Vec<(String, u64)> {
        let usage = self.lock();
        let Some(demand) = usage.queued.get(queue) else { return Vec::new() };
        let given = self.tree.allocate(wanted, &usage.running, demand);
        let names = self.tree.leaves();
        self.tree
            .order(&usage.running)
            .into_iter()
            .filter(|&leaf| given[leaf] > 0)
            .map(|leaf| (names[leaf].to_owned(), given[leaf]))
            .collect()
    }

    /// Records dispatched jobs: (queue, share name as stored on the job) each.
    pub fn dispatched<'a>(&self, jobs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let jobs: Vec<(&str, usize)> = jobs.into_iter().map(|(q, s)| (q, self.leaf_of(s))).collect();
        let mut usage = self.lock();
        for (queue, leaf) in jobs {
            usage.running[leaf] += 1;
            if let Some(queued) = usage.queued.get_mut(queue) {
                queued[leaf] = queued[leaf].saturating_sub(1);
            }
        }
    }

    /// Records held jobs that ended (share names as stored on the jobs).
    pub fn ended<'a>(&self, shares: impl IntoIterator<Item = &'a str>) {
        let leaves: Vec<usize> = shares.into_iter().map(|s| self.leaf_of(s)).collect();
        let mut usage = self.lock();
        for leaf in leaves {
            usage.running[leaf] = usage.running[leaf].saturating_sub(1);
        }
    }

    /// Every leaf with its target and usage, in definition order.
    pub fn usage(&self) -> Vec<ShareUsage> {
        let usage = self.lock();
        self.tree
            .leaves()
            .into_iter()
            .enumerate()
            .map(|(leaf, name)| ShareUsage {
                name: name.to_owned(),
                parent: self.tree.parent(leaf).map(str::to_owned),
                target: self.tree.target(leaf),
                running: usage.running[leaf],
                queued: usage.queued.values().map(|q| q[leaf]).sum(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tree: &[(&str, Option<&str>, f64)], default: &str) -> Config {
        Config {
            tree: tree.iter().map(|(n, p, v)| ShareDef::new(n, *p, *v)).collect(),
            default: default.to_owned(),
            ..Config::default()
        }
    }

    fn shares() -> Shares {
        let (tree, default) =
            config(&[("production", None, 75.0), ("analysis", None, 25.0)], "analysis").build().expect("valid");
        Shares::new(tree, default)
    }

    fn count(queue: &str, share: &str, queued: bool, n: u64) -> ShareCount {
        ShareCount { queue: queue.to_owned(), share: share.to_owned(), queued, n }
    }

    #[test]
    fn the_default_config_is_one_leaf() {
        let (tree, default) = Config::default().build().expect("valid");
        let shares = Shares::new(tree, default);
        assert!(shares.is_single());
        assert_eq!(shares.resolve(""), Ok("default".to_owned()));
    }

    #[test]
    fn bad_trees_name_the_key() {
        let e = config(&[("a", Some("b"), 10.0)], "a").build().unwrap_err();
        assert!(e.starts_with("server.shares.tree[0].parent: \"b\" is not a share"), "{e}");
        let e = config(&[("a", None, -1.0)], "a").build().unwrap_err();
        assert!(e.starts_with("server.shares.tree[0].percent: must be a positive number"), "{e}");
        let e = config(&[], "a").build().unwrap_err();
        assert!(e.starts_with("server.shares.tree: must list at least one share"), "{e}");
        let e = config(&[("prod", None, 50.0), ("mc", Some("prod"), 100.0), ("user", None, 50.0)], "prod")
            .build()
            .unwrap_err();
        assert_eq!(
            e,
            "server.shares.default = \"prod\": must name a leaf share (one without children); leaves: mc, user"
        );
        let e = config(&[("a", None, 1.0)], "nope").build().unwrap_err();
        assert!(e.starts_with("server.shares.default = \"nope\""), "{e}");
    }

    #[test]
    fn resolve_defaults_and_refuses_unknown_shares() {
        let shares = shares();
        assert_eq!(shares.resolve(""), Ok("analysis".to_owned()));
        assert_eq!(shares.resolve("production"), Ok("production".to_owned()));
        let e = shares.resolve("express").unwrap_err();
        assert_eq!(
            e,
            "\"express\" is not a share jobs can use; the leaf shares are: production, analysis (panda share list)"
        );
    }

    #[test]
    fn plan_serves_the_share_furthest_under_target_first() {
        let shares = shares();
        shares.replace(&[
            count("q", "production", false, 30),
            count("q", "analysis", false, 10),
            count("q", "production", true, 100),
            count("q", "analysis", true, 100),
        ]);
        // 40 running, 30 vs 10 is 75/25 exactly: 4 new slots split 3:1, production first.
        assert_eq!(shares.plan("q", 4), vec![("production".to_owned(), 3), ("analysis".to_owned(), 1)]);
        // Analysis under target: it comes first.
        shares.replace(&[
            count("q", "production", false, 60),
            count("q", "production", true, 100),
            count("q", "analysis", true, 100),
        ]);
        assert_eq!(shares.plan("q", 1), vec![("analysis".to_owned(), 1)]);
        // A queue with no activated jobs counted: nothing planned (the caller claims unfiltered).
        assert_eq!(shares.plan("other", 5), Vec::<(String, u64)>::new());
    }

    #[test]
    fn a_share_without_jobs_on_the_queue_leaves_its_slots_to_the_others() {
        let shares = shares();
        shares.replace(&[count("q", "production", true, 100), count("elsewhere", "analysis", true, 100)]);
        assert_eq!(shares.plan("q", 8), vec![("production".to_owned(), 8)]);
    }

    #[test]
    fn dispatches_and_ends_move_usage_between_counts() {
        let shares = shares();
        shares.replace(&[count("q", "analysis", true, 2), count("q", "", true, 1)]);
        // Jobs from before shares ("") count as the default leaf, analysis.
        assert_eq!(shares.usage()[1].queued, 3);
        shares.dispatched([("q", "analysis"), ("q", "")]);
        let usage = shares.usage();
        assert_eq!((usage[1].running, usage[1].queued), (2, 1));
        shares.ended(["analysis", "analysis", "analysis"]);
        assert_eq!(shares.usage()[1].running, 0, "never below zero");
        assert_eq!(shares.usage()[0].target, 0.75);
    }
}
