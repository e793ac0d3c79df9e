//! File-level (job-level) release, pure: a downstream task's jobs are created held, each waiting
//! for the upstream files it reads; when a file is produced, every job whose last missing file it
//! was is released at once (per file, not per dataset). A countdown per job and an index from
//! file to jobs make each production O(jobs reading it) (the reference pages through dependency
//! rows in SQL instead). Reporting a file twice releases nothing twice.

use std::collections::{BTreeSet, HashMap};

use super::model::{DependencyLevel, Node, NodeKind, TaskTemplate};

/// Whether a node's jobs are created held and released per file: a task with file-level
/// parents that declares its jobs' files (Snakemake rules; native `jobs:`). A file-level child
/// without per-job files reads its parents' datasets and starts once they are closed.
pub fn holds(node: &Node) -> bool {
    matches!(&node.kind, NodeKind::Task(t) if !t.jobs.is_empty())
        && node.after.iter().any(|d| d.level == DependencyLevel::File)
}

/// The names of a node's file-level parents.
pub fn file_parents(node: &Node) -> impl Iterator<Item = &str> {
    node.after.iter().filter(|d| d.level == DependencyLevel::File).map(|d| d.node.as_str())
}

/// The files each job of `child` waits for: its inputs that some job of `parents` writes
/// (other inputs exist before the workflow runs).
pub fn awaited(child: &TaskTemplate, parents: &[&TaskTemplate]) -> Vec<Vec<String>> {
    let produced: BTreeSet<&String> = parents.iter().flat_map(|p| p.jobs.iter().flat_map(|j| &j.outputs)).collect();
    child.jobs.iter().map(|j| j.inputs.iter().filter(|f| produced.contains(f)).cloned().collect()).collect()
}

/// What happened to a held job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobHold {
    /// Waits for this many more files.
    Held(u32),
    /// Every input exists: it may run.
    Released,
    /// An input can never be produced (its producer failed): the job will not run.
    Missing,
}

/// The held jobs of one downstream task.
#[derive(Debug, Clone, Default)]
pub struct HeldJobs {
    jobs: Vec<JobHold>,
    readers: HashMap<String, Vec<u32>>,
    seen: HashMap<String, bool>,
}

/// Counts of a task's held jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReleaseCounts {
    /// Still held.
    pub held: u32,
    /// Released.
    pub released: u32,
    /// Never to run.
    pub missing: u32,
}

impl HeldJobs {
    /// Jobs by index, each with the upstream files it reads. A job reading nothing from upstream
    /// is released at once.
    pub fn new(inputs: &[Vec<String>]) -> Self {
        let mut readers: HashMap<String, Vec<u32>> = HashMap::new();
        let mut jobs = Vec::with_capacity(inputs.len());
        for (index, files) in inputs.iter().enumerate() {
            let mut files: Vec<&String> = files.iter().collect();
            files.sort_unstable();
            files.dedup();
            for file in &files {
                readers.entry((*file).clone()).or_default().push(index as u32);
            }
            jobs.push(if files.is_empty() { JobHold::Released } else { JobHold::Held(files.len() as u32) });
        }
        HeldJobs { jobs, readers, seen: HashMap::new() }
    }

    /// Jobs released without waiting (no upstream input).
    pub fn released_at_start(&self) -> Vec<u32> {
        (0..self.jobs.len() as u32).filter(|&i| self.jobs[i as usize] == JobHold::Released).collect()
    }

    /// A file was produced: the jobs it releases (each job once, ever).
    pub fn produced(&mut self, file: &str) -> Vec<u32> {
        if self.seen.insert(file.to_owned(), true).is_some() {
            return Vec::new();
        }
        let mut released = Vec::new();
        for &job in self.readers.get(file).map(Vec::as_slice).unwrap_or_default() {
            if let JobHold::Held(n) = self.jobs[job as usize] {
                self.jobs[job as usize] = if n == 1 {
                    released.push(job);
                    JobHold::Released
                } else {
                    JobHold::Held(n - 1)
                };
            }
        }
        released
    }

    /// A file will never be produced: the held jobs reading it will not run.
    pub fn lost(&mut self, file: &str) -> Vec<u32> {
        if self.seen.insert(file.to_owned(), false).is_some() {
            return Vec::new();
        }
        let mut missing = Vec::new();
        for &job in self.readers.get(file).map(Vec::as_slice).unwrap_or_default() {
            if matches!(self.jobs[job as usize], JobHold::Held(_)) {
                self.jobs[job as usize] = JobHold::Missing;
                missing.push(job);
            }
        }
        missing
    }

    /// A job's hold.
    pub fn job(&self, index: u32) -> Option<JobHold> {
        self.jobs.get(index as usize).copied()
    }

    /// Counts.
    pub fn counts(&self) -> ReleaseCounts {
        let mut counts = ReleaseCounts::default();
        for job in &self.jobs {
            match job {
                JobHold::Held(_) => counts.held += 1,
                JobHold::Released => counts.released += 1,
                JobHold::Missing => counts.missing += 1,
            }
        }
        counts
    }
}
