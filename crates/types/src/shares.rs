//! Global shares: a tree of targets (e.g. production 70 % with simulation 50 and reprocessing 20,
//! analysis 30 %) that decides which work gets the next free slots. Pure.
//!
//! Percentages are normalised among siblings, so a leaf's target is the product of its fractions
//! down the tree. Each free slot goes down the tree, at each level to the child (with work
//! waiting below it) whose usage per target is lowest; a share with no waiting work is skipped,
//! so what it leaves unused flows to its siblings first (the reference, §6.6).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One share as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareDef {
    /// Unique name.
    pub name: String,
    /// Parent share (listed earlier), or none for a top-level share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Percent of its parent, > 0.
    pub percent: f64,
}

impl ShareDef {
    /// A share.
    pub fn new(name: &str, parent: Option<&str>, percent: f64) -> Self {
        Self { name: name.to_owned(), parent: parent.map(str::to_owned), percent }
    }
}

/// A share definition that cannot form a tree; `field` names the bad entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ShareError {
    /// e.g. `shares[2].parent`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    name: String,
    parent: Option<usize>,
    children: Vec<usize>,
    fraction: f64,
}

/// A validated share tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareTree {
    nodes: Vec<Node>,
    top: Vec<usize>,
    /// Node index of each leaf, in definition order.
    leaves: Vec<usize>,
}

impl ShareTree {
    /// Builds the tree.
    ///
    /// # Errors
    /// [`ShareError`] naming the entry: empty or repeated names, a parent not listed before its
    /// child, a percent that is not a positive number.
    pub fn new(defs: &[ShareDef]) -> Result<Self, ShareError> {
        let bad =
            |i: usize, field: &str, message: String| ShareError { field: format!("shares[{i}].{field}"), message };
        if defs.is_empty() {
            return Err(ShareError { field: "shares".into(), message: "must list at least one share".into() });
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(defs.len());
        for (i, def) in defs.iter().enumerate() {
            if def.name.is_empty() {
                return Err(bad(i, "name", "must not be empty".into()));
            }
            if nodes.iter().any(|n| n.name == def.name) {
                return Err(bad(i, "name", format!("{:?} is listed twice", def.name)));
            }
            if !(def.percent.is_finite() && def.percent > 0.0) {
                return Err(bad(i, "percent", format!("must be a positive number (got {})", def.percent)));
            }
            let parent =
                match &def.parent {
                    None => None,
                    Some(p) => Some(nodes.iter().position(|n| n.name == *p).ok_or_else(|| {
                        bad(i, "parent", format!("{p:?} is not a share listed before {:?}", def.name))
                    })?),
                };
            nodes.push(Node { name: def.name.clone(), parent, children: Vec::new(), fraction: def.percent });
            if let Some(p) = parent {
                nodes[p].children.push(i);
            }
        }
        let top: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].parent.is_none()).collect();
        let normalise = |nodes: &mut Vec<Node>, group: &[usize]| {
            let sum: f64 = group.iter().map(|&i| nodes[i].fraction).sum();
            for &i in group {
                nodes[i].fraction /= sum;
            }
        };
        normalise(&mut nodes, &top);
        for i in 0..nodes.len() {
            let children = nodes[i].children.clone();
            if !children.is_empty() {
                normalise(&mut nodes, &children);
            }
        }
        let leaves = (0..nodes.len()).filter(|&i| nodes[i].children.is_empty()).collect();
        Ok(Self { nodes, top, leaves })
    }

    /// Leaf names, in definition order (the order of every per-leaf slice).
    pub fn leaves(&self) -> Vec<&str> {
        self.leaves.iter().map(|&i| self.nodes[i].name.as_str()).collect()
    }

    /// A tree of one share holding every slot.
    pub fn single(name: &str) -> Self {
        Self {
            nodes: vec![Node { name: name.to_owned(), parent: None, children: Vec::new(), fraction: 1.0 }],
            top: vec![0],
            leaves: vec![0],
        }
    }

    /// The parent share of a leaf, if it is not a top-level share.
    pub fn parent(&self, leaf: usize) -> Option<&str> {
        self.nodes[self.leaves[leaf]].parent.map(|p| self.nodes[p].name.as_str())
    }

    /// Position of a leaf by name.
    pub fn leaf(&self, name: &str) -> Option<usize> {
        self.leaves.iter().position(|&i| self.nodes[i].name == name)
    }

    /// A leaf's target fraction of all slots (the product of its normalised percents).
    pub fn target(&self, leaf: usize) -> f64 {
        let mut node = Some(self.leaves[leaf]);
        let mut fraction = 1.0;
        while let Some(i) = node {
            fraction *= self.nodes[i].fraction;
            node = self.nodes[i].parent;
        }
        fraction
    }

    /// Per node: the sum of `per_leaf` over the leaves below it.
    fn subtree_sums(&self, per_leaf: &[u64]) -> Vec<u64> {
        let mut sums = vec![0u64; self.nodes.len()];
        for (leaf, &node) in self.leaves.iter().enumerate() {
            let value = per_leaf.get(leaf).copied().unwrap_or(0);
            let mut n = Some(node);
            while let Some(i) = n {
                sums[i] += value;
                n = self.nodes[i].parent;
            }
        }
        sums
    }

    /// Hands out `slots` free slots: to each leaf at most its `demand` (jobs waiting), each slot to
    /// the most under-target share with work, given the slots each leaf uses now (`running`).
    /// Returns the slots per leaf.
    pub fn allocate(&self, slots: u64, running: &[u64], demand: &[u64]) -> Vec<u64> {
        let mut usage = self.subtree_sums(running);
        let mut waiting = self.subtree_sums(demand);
        let mut given = vec![0u64; self.leaves.len()];
        let leaf_of: Vec<Option<usize>> =
            (0..self.nodes.len()).map(|n| self.leaves.iter().position(|&l| l == n)).collect();
        for _ in 0..slots {
            let Some(mut node) = self.pick(&self.top, &usage, &waiting) else { break };
            while !self.nodes[node].children.is_empty() {
                match self.pick(&self.nodes[node].children, &usage, &waiting) {
                    Some(child) => node = child,
                    None => break,
                }
            }
            let Some(leaf) = leaf_of[node] else { break };
            given[leaf] += 1;
            let mut n = Some(node);
            while let Some(i) = n {
                usage[i] += 1;
                waiting[i] -= 1;
                n = self.nodes[i].parent;
            }
        }
        given
    }

    fn pick(&self, group: &[usize], usage: &[u64], waiting: &[u64]) -> Option<usize> {
        group.iter().copied().filter(|&i| waiting[i] > 0).min_by(|&a, &b| {
            (usage[a] as f64 / self.nodes[a].fraction).total_cmp(&(usage[b] as f64 / self.nodes[b].fraction))
        })
    }

    /// Leaves ordered most under-target first (siblings by usage per target, recursively): the
    /// order in which work of each share is generated and dispatched.
    pub fn order(&self, running: &[u64]) -> Vec<usize> {
        let usage = self.subtree_sums(running);
        let mut out = Vec::with_capacity(self.leaves.len());
        self.order_group(&self.top, &usage, &mut out);
        out
    }

    fn order_group(&self, group: &[usize], usage: &[u64], out: &mut Vec<usize>) {
        let mut sorted = group.to_vec();
        sorted.sort_by(|&a, &b| {
            (usage[a] as f64 / self.nodes[a].fraction).total_cmp(&(usage[b] as f64 / self.nodes[b].fraction))
        });
        for node in sorted {
            if self.nodes[node].children.is_empty() {
                if let Some(leaf) = self.leaves.iter().position(|&l| l == node) {
                    out.push(leaf);
                }
            } else {
                self.order_group(&self.nodes[node].children, usage, out);
            }
        }
    }
}

impl fmt::Display for ShareTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (leaf, name) in self.leaves().iter().enumerate() {
            writeln!(f, "{name}: {:.1}%", self.target(leaf) * 100.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> ShareTree {
        ShareTree::new(&[
            ShareDef::new("production", None, 70.0),
            ShareDef::new("analysis", None, 30.0),
            ShareDef::new("simulation", Some("production"), 50.0),
            ShareDef::new("reprocessing", Some("production"), 20.0),
        ])
        .unwrap()
    }

    #[test]
    fn single_is_one_leaf_with_everything() {
        let t = ShareTree::single("default");
        assert_eq!(t.leaves(), vec!["default"]);
        assert_eq!(t.target(0), 1.0);
        assert_eq!(t.parent(0), None);
        assert_eq!(t, ShareTree::new(&[ShareDef::new("default", None, 100.0)]).unwrap());
    }

    #[test]
    fn targets_are_normalised_products() {
        let t = tree();
        assert_eq!(t.leaves(), vec!["analysis", "simulation", "reprocessing"]);
        assert_eq!((t.parent(0), t.parent(1)), (None, Some("production")));
        let targets: Vec<f64> = (0..3).map(|l| t.target(l)).collect();
        assert!((targets[0] - 0.30).abs() < 1e-9);
        assert!((targets[1] - 0.50).abs() < 1e-9, "{targets:?}");
        assert!((targets[2] - 0.20).abs() < 1e-9);
    }

    #[test]
    fn bad_definitions_name_the_entry() {
        let e = ShareTree::new(&[ShareDef::new("a", Some("b"), 10.0)]).unwrap_err();
        assert_eq!(e.field, "shares[0].parent");
        let e = ShareTree::new(&[ShareDef::new("a", None, 10.0), ShareDef::new("a", None, 5.0)]).unwrap_err();
        assert_eq!(e.field, "shares[1].name");
        let e = ShareTree::new(&[ShareDef::new("a", None, 0.0)]).unwrap_err();
        assert_eq!(e.field, "shares[0].percent");
        let e = ShareTree::new(&[ShareDef::new("a", None, f64::NAN)]).unwrap_err();
        assert_eq!(e.field, "shares[0].percent");
        assert_eq!(ShareTree::new(&[]).unwrap_err().field, "shares");
    }

    #[test]
    fn free_slots_follow_targets_from_empty() {
        let t = tree();
        let given = t.allocate(1000, &[0, 0, 0], &[u64::MAX / 4; 3]);
        assert_eq!(given, vec![300, 500, 200]);
    }

    #[test]
    fn unused_share_flows_to_siblings_first() {
        let t = tree();
        // Reprocessing has no work: simulation (its sibling) takes production's whole 70 %.
        let given = t.allocate(1000, &[0, 0, 0], &[10_000, 10_000, 0]);
        assert_eq!(given, vec![300, 700, 0]);
        // Only 50 analysis jobs wait: the rest goes to production.
        let given = t.allocate(1000, &[0, 0, 0], &[50, 10_000, 10_000]);
        assert_eq!(given[0], 50);
        assert_eq!(given[1] + given[2], 950);
    }

    #[test]
    fn order_puts_the_most_under_target_first() {
        let t = tree();
        // Analysis far above target, reprocessing far below.
        assert_eq!(t.order(&[600, 300, 10]), vec![2, 1, 0]);
        assert_eq!(t.order(&[0, 500, 200]), vec![0, 1, 2]);
    }

    /// Under contention (every share always has work, jobs of different lengths end at
    /// different rates), the running mix converges to the targets whatever it started from.
    #[test]
    fn shares_converge_to_targets_under_contention() {
        let t = tree();
        let capacity = 2000u64;
        // Start far off: analysis holds everything.
        let mut running: Vec<Vec<u32>> = vec![vec![0; 2000], Vec::new(), Vec::new()];
        // Job lengths in steps per share: analysis short, simulation long.
        let lengths = [3u32, 17, 7];
        let mut seed = 12345u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _step in 0..400 {
            for (share, jobs) in running.iter_mut().enumerate() {
                for age in jobs.iter_mut() {
                    *age += 1;
                }
                // A job ends after its length, give or take.
                let length = lengths[share];
                jobs.retain(|&age| age < length + (next() % 3) as u32);
            }
            let used: u64 = running.iter().map(|j| j.len() as u64).sum();
            let counts: Vec<u64> = running.iter().map(|j| j.len() as u64).collect();
            let given = t.allocate(capacity - used, &counts, &[u64::MAX / 4; 3]);
            for (share, n) in given.into_iter().enumerate() {
                running[share].extend(std::iter::repeat_n(0, n as usize));
            }
        }
        let total: f64 = running.iter().map(|j| j.len() as f64).sum();
        for (leaf, jobs) in running.iter().enumerate() {
            let got = jobs.len() as f64 / total;
            assert!(
                (got - t.target(leaf)).abs() < 0.03,
                "{}: {got:.3} vs target {:.3}",
                t.leaves()[leaf],
                t.target(leaf)
            );
        }
    }
}
