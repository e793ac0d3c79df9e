//! The workflow graph, pure: validation of a submitted DAG (names, parents, cycles, datasets),
//! and the rules that move it forward (which works are ready, which are skipped, how the
//! workflow ends). No I/O: the service applies what these functions decide.

use std::collections::{BTreeMap, BTreeSet};

use panda_types::FieldError;
use panda_types::spec::TaskSpecDraft;

/// State of one work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkStatus {
    /// Waiting for its parents.
    Waiting,
    /// Parents finished; its task is being submitted.
    Ready,
    /// Its task exists.
    Submitted,
    /// Its task is done (every job finished).
    Finished,
    /// Its task finished partly.
    SubFinished,
    /// Its task failed, broke or was aborted.
    Failed,
    /// Never ran: a parent did not finish.
    Skipped,
}

impl WorkStatus {
    /// Final states.
    pub fn is_final(self) -> bool {
        matches!(self, WorkStatus::Finished | WorkStatus::SubFinished | WorkStatus::Failed | WorkStatus::Skipped)
    }

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkStatus::Waiting => "waiting",
            WorkStatus::Ready => "ready",
            WorkStatus::Submitted => "submitted",
            WorkStatus::Finished => "finished",
            WorkStatus::SubFinished => "subfinished",
            WorkStatus::Failed => "failed",
            WorkStatus::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "waiting" => WorkStatus::Waiting,
            "ready" => WorkStatus::Ready,
            "submitted" => WorkStatus::Submitted,
            "finished" => WorkStatus::Finished,
            "subfinished" => WorkStatus::SubFinished,
            "failed" => WorkStatus::Failed,
            "skipped" => WorkStatus::Skipped,
            _ => return None,
        })
    }

    /// What a work becomes when its task reaches `task_status` (the reference's task →
    /// processing → transform mapping); `None` while the task is still active.
    pub fn from_task_status(task_status: panda_types::TaskStatus) -> Option<Self> {
        use panda_types::TaskStatus::*;
        match task_status {
            Done => Some(WorkStatus::Finished),
            Finished => Some(WorkStatus::SubFinished),
            Failed | Broken | Aborted => Some(WorkStatus::Failed),
            _ => None,
        }
    }
}

/// State of a whole workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowStatus {
    /// Works still to run.
    Running,
    /// Every work finished.
    Finished,
    /// Some works finished.
    SubFinished,
    /// No work finished.
    Failed,
}

impl WorkflowStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "running",
            WorkflowStatus::Finished => "finished",
            WorkflowStatus::SubFinished => "subfinished",
            WorkflowStatus::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => WorkflowStatus::Running,
            "finished" => WorkflowStatus::Finished,
            "subfinished" => WorkflowStatus::SubFinished,
            "failed" => WorkflowStatus::Failed,
            _ => return None,
        })
    }
}

/// One node as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkDraft {
    /// Unique in the workflow.
    pub name: String,
    /// Works it waits for.
    pub parents: Vec<String>,
    /// Its task, with workflow-local dataset names.
    pub task: TaskSpecDraft,
}

/// Checks a DAG and returns its works in a topological order.
///
/// # Errors
/// Every problem, each naming the work (`works[i]` and its name) and field.
pub fn validate(works: &[WorkDraft]) -> Result<Vec<usize>, Vec<FieldError>> {
    let mut errors = Vec::new();
    if works.is_empty() {
        errors.push(FieldError::new("works", "must contain at least one work"));
        return Err(errors);
    }
    if works.len() > 10_000 {
        errors.push(FieldError::new("works", format!("must have at most 10000 works (got {})", works.len())));
        return Err(errors);
    }
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, work) in works.iter().enumerate() {
        if let Err(e) = panda_types::ids::check_name(&work.name, 100) {
            errors.push(FieldError::new(format!("works[{i}].name"), e));
        } else if index.insert(work.name.as_str(), i).is_some() {
            errors
                .push(FieldError::new(format!("works[{i}].name"), format!("{:?} is used by another work", work.name)));
        }
    }
    for (i, work) in works.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for parent in &work.parents {
            if parent == &work.name {
                errors.push(FieldError::new(
                    format!("works[{i}].parents"),
                    format!("work {:?} cannot depend on itself", work.name),
                ));
            } else if !index.contains_key(parent.as_str()) {
                errors.push(FieldError::new(
                    format!("works[{i}].parents"),
                    format!("work {:?} depends on {parent:?}, which is not a work of this workflow", work.name),
                ));
            } else if !seen.insert(parent) {
                errors.push(FieldError::new(format!("works[{i}].parents"), format!("{parent:?} is listed twice")));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let order = match topological_order(works, &index) {
        Ok(order) => order,
        Err(cycle) => {
            errors.push(FieldError::new(
                "works",
                format!("the dependencies form a cycle through {}", cycle.join(" -> ")),
            ));
            return Err(errors);
        }
    };
    // Dataset rules: one producer per output; an input produced in the workflow must come from
    // an ancestor, or the consumer could start before its data exists.
    let mut producers: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, work) in works.iter().enumerate() {
        let output = work.task.output_dataset.as_str();
        if !output.is_empty()
            && let Some(other) = producers.insert(output, i)
        {
            errors.push(FieldError::new(
                format!("works[{i}].task.output_dataset"),
                format!("{output:?} is also produced by work {:?}", works[other].name),
            ));
        }
    }
    let ancestors = ancestors(works, &index, &order);
    for (i, work) in works.iter().enumerate() {
        for (k, input) in work.task.input_datasets.iter().enumerate() {
            let input = input.as_str();
            let Some(&producer) = producers.get(input) else { continue };
            if ancestors[i].contains(&producer) {
                continue;
            }
            errors.push(FieldError::new(
                format!("works[{i}].task.input_datasets[{k}]"),
                format!(
                    "{input:?} is produced by work {:?}, which work {:?} does not depend on; add it to parents",
                    works[producer].name, work.name
                ),
            ));
        }
        if let Err(field_errors) = work.task.clone().validate() {
            errors.extend(
                field_errors.into_iter().map(|e| FieldError::new(format!("works[{i}].{}", e.field), e.message)),
            );
        }
    }
    if errors.is_empty() { Ok(order) } else { Err(errors) }
}

fn topological_order(works: &[WorkDraft], index: &BTreeMap<&str, usize>) -> Result<Vec<usize>, Vec<String>> {
    let mut indegree: Vec<usize> = works.iter().map(|w| w.parents.len()).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); works.len()];
    for (i, work) in works.iter().enumerate() {
        for parent in &work.parents {
            children[index[parent.as_str()]].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..works.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(works.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &child in &children[i] {
            indegree[child] -= 1;
            if indegree[child] == 0 {
                ready.push(child);
            }
        }
    }
    if order.len() == works.len() {
        return Ok(order);
    }
    // Walk parents among the unplaced works until one repeats: that is a cycle to report.
    let mut path = Vec::new();
    let mut at = (0..works.len()).find(|&i| indegree[i] > 0).unwrap_or(0);
    let mut visited = BTreeSet::new();
    while visited.insert(at) {
        path.push(at);
        at = works[at].parents.iter().map(|p| index[p.as_str()]).find(|&p| indegree[p] > 0).unwrap_or(at);
    }
    let start = path.iter().position(|&i| i == at).unwrap_or(0);
    let mut cycle: Vec<String> = path[start..].iter().rev().map(|&i| works[i].name.clone()).collect();
    cycle.push(works[at].name.clone());
    Err(cycle)
}

fn ancestors(works: &[WorkDraft], index: &BTreeMap<&str, usize>, order: &[usize]) -> Vec<BTreeSet<usize>> {
    let mut result: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); works.len()];
    for &i in order {
        let mut set = BTreeSet::new();
        for parent in &works[i].parents {
            let p = index[parent.as_str()];
            set.insert(p);
            set.extend(result[p].iter().copied());
        }
        result[i] = set;
    }
    result
}

/// What to change in a workflow after a work's state changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Advance {
    /// Works (by name) whose parents all finished: submit them.
    pub ready: Vec<String>,
    /// Works that can never run because a parent did not finish.
    pub skipped: Vec<String>,
}

/// Applies the DAG rule: a work runs when all its parents finished; when a parent ends any other
/// way, the work and everything below it is skipped.
pub fn advance(works: &BTreeMap<String, (WorkStatus, Vec<String>)>) -> Advance {
    let mut status: BTreeMap<&str, WorkStatus> = works.iter().map(|(n, (s, _))| (n.as_str(), *s)).collect();
    let mut result = Advance::default();
    // Skips cascade, so repeat until nothing changes (bounded by the number of works).
    loop {
        let mut changed = false;
        for (name, (_, parents)) in works {
            if status[name.as_str()] != WorkStatus::Waiting {
                continue;
            }
            let parent_states: Vec<WorkStatus> =
                parents.iter().filter_map(|p| status.get(p.as_str()).copied()).collect();
            if parent_states.iter().any(|s| s.is_final() && *s != WorkStatus::Finished) {
                status.insert(name, WorkStatus::Skipped);
                result.skipped.push(name.clone());
                changed = true;
            } else if parent_states.iter().all(|s| *s == WorkStatus::Finished) {
                status.insert(name, WorkStatus::Ready);
                result.ready.push(name.clone());
                changed = true;
            }
        }
        if !changed {
            return result;
        }
    }
}

/// The workflow's state from its works' states.
pub fn workflow_status(works: impl IntoIterator<Item = WorkStatus>) -> WorkflowStatus {
    let (mut total, mut finished, mut any_finished) = (0, 0, false);
    for status in works {
        if !status.is_final() {
            return WorkflowStatus::Running;
        }
        total += 1;
        if status == WorkStatus::Finished {
            finished += 1;
        }
        any_finished |= matches!(status, WorkStatus::Finished | WorkStatus::SubFinished);
    }
    if finished == total {
        WorkflowStatus::Finished
    } else if any_finished {
        WorkflowStatus::SubFinished
    } else {
        WorkflowStatus::Failed
    }
}

/// The dataset name a workflow-local name stands for: datasets produced inside the workflow are
/// scoped to it (`<workflow>.<id>.<name>`), so the same workflow can run twice; names of
/// datasets produced elsewhere are kept.
pub fn scoped_dataset(local: &str, produced_here: &BTreeSet<String>, workflow_name: &str, workflow_id: u64) -> String {
    if local.is_empty() || !produced_here.contains(local) {
        local.to_owned()
    } else {
        format!("{workflow_name}.{workflow_id}.{local}")
    }
}

#[cfg(test)]
mod tests;
