//! Moving a workflow forward, pure: given the graph and the state of every work instance, decide
//! which works become ready, which are bypassed (condition false) or skipped (a parent failed),
//! when a sub-workflow or loop iteration ends, whether a loop runs again (with its parameter
//! links applied) and how the workflow ends. The engine loads a workflow's instances, calls
//! [`advance`] and writes back what changed, in one transaction.
//!
//! Instance keys: a top-level node is keyed by its name; a node inside a loop or sub-workflow
//! by `<parent key>#<iteration>/<name>` (sub-workflows have the single iteration 1).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::cond::{Facts, Truth};
use super::model::{DependencyLevel, Graph, Node, NodeKind, TaskTemplate, Value};
use super::state::{WorkStatus, WorkflowStatus, workflow_status};

/// One node instance's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Its status.
    pub status: WorkStatus,
    /// Loops: the iteration running (from 1); 0 otherwise.
    pub iteration: u32,
    /// Outputs: counters (`jobs_total`, …) and values it produced; a loop's are its last
    /// iteration's parameters.
    pub outputs: BTreeMap<String, Value>,
    /// Loops: the current iteration's parameters.
    pub params: BTreeMap<String, Value>,
    /// Why it is in its state (bypassed, skipped, how a loop ended).
    pub reason: String,
}

impl Instance {
    /// A new waiting instance.
    pub fn waiting() -> Self {
        Instance {
            status: WorkStatus::Waiting,
            iteration: 0,
            outputs: BTreeMap::new(),
            params: BTreeMap::new(),
            reason: String::new(),
        }
    }
}

/// Every instance of a workflow, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Instances.
    pub works: BTreeMap<String, Instance>,
    /// Keys created or changed since the last [`State::take_changed`].
    changed: BTreeSet<String>,
    /// Counts every change, so [`advance`] knows when a pass changed nothing.
    version: u64,
}

impl State {
    /// State from stored instances.
    pub fn new(works: BTreeMap<String, Instance>) -> Self {
        State { works, changed: BTreeSet::new(), version: 0 }
    }

    /// The instances of a new workflow: one waiting instance per top-level node.
    pub fn initial(graph: &Graph) -> Self {
        let mut state = State::default();
        state.create_scope(graph, "");
        state
    }

    /// Sets a work's status (the engine's entry for task results, retries and resubmissions).
    pub fn set_status(&mut self, key: &str, status: WorkStatus, reason: impl Into<String>) {
        self.set(key, status, reason.into());
    }

    /// Sets a work's outputs (counters and values of its task).
    pub fn set_outputs(&mut self, key: &str, outputs: BTreeMap<String, Value>) {
        if let Some(instance) = self.works.get_mut(key) {
            instance.outputs = outputs;
            self.changed.insert(key.to_owned());
            self.version += 1;
        }
    }

    /// Adds a waiting instance for a top-level node added to a driven workflow (the planner
    /// decides it at its next step). Does nothing when the key exists.
    pub fn add_waiting(&mut self, key: &str) {
        if !self.works.contains_key(key) {
            self.works.insert(key.to_owned(), Instance::waiting());
            self.changed.insert(key.to_owned());
            self.version += 1;
        }
    }

    /// Keys created or changed, and forgets them.
    pub fn take_changed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed)
    }

    fn set(&mut self, key: &str, status: WorkStatus, reason: String) {
        if let Some(instance) = self.works.get_mut(key) {
            debug_assert!(instance.status.can_transition_to(status), "{key}: {:?} -> {status:?}", instance.status);
            instance.status = status;
            instance.reason = reason;
            self.changed.insert(key.to_owned());
            self.version += 1;
        }
    }

    fn create_scope(&mut self, graph: &Graph, scope: &str) {
        for node in &graph.nodes {
            let key = key_in(scope, &node.name);
            self.works.entry(key.clone()).or_insert_with(Instance::waiting);
            self.changed.insert(key);
            self.version += 1;
        }
    }

    /// The top-level works' statuses.
    pub fn top_level<'a>(&'a self, graph: &'a Graph) -> impl Iterator<Item = WorkStatus> + 'a {
        graph.nodes.iter().filter_map(|n| self.works.get(&n.name).map(|i| i.status))
    }
}

/// The key of `node` inside `scope` (empty for the top level).
pub fn key_in(scope: &str, node: &str) -> String {
    if scope.is_empty() { node.to_owned() } else { format!("{scope}/{node}") }
}

/// The instance of `node` inside `scope`, without building its key at the top level (the hot
/// path: every waiting node's parents are looked up on every event).
fn instance<'s>(state: &'s State, scope: &str, node: &str) -> Option<&'s Instance> {
    if scope.is_empty() { state.works.get(node) } else { state.works.get(&key_in(scope, node)) }
}

/// The scope of a loop or sub-workflow instance's iteration.
pub fn scope_of(key: &str, iteration: u32) -> String {
    format!("{key}#{iteration}")
}

struct ScopeFacts<'a> {
    state: &'a State,
    scope: &'a str,
    params: &'a BTreeMap<String, Value>,
}

impl Facts for ScopeFacts<'_> {
    fn status(&self, work: &str) -> Option<WorkStatus> {
        instance(self.state, self.scope, work).map(|i| i.status)
    }

    fn output(&self, work: &str, key: &str) -> Option<Value> {
        instance(self.state, self.scope, work).and_then(|i| i.outputs.get(key).cloned())
    }

    fn param(&self, name: &str) -> Option<Value> {
        self.params.get(name).cloned()
    }
}

/// Moves the workflow as far as it can go now, looking at every node (a new workflow, a
/// reconciliation). Returns the workflow's state when every top-level work is final.
pub fn advance(graph: &Graph, state: &mut State) -> Option<WorkflowStatus> {
    // Each pass can unlock more (a bypass cascades, a loop iteration starts); bounded because
    // every change moves an instance forward in its (acyclic) transition order or adds one.
    loop {
        let before = state.version;
        advance_scope(graph, "", &graph.inputs, state);
        if state.version == before {
            break;
        }
    }
    top_status(graph, state)
}

/// Which top-level nodes to look at again when one changes: its children (through `after`,
/// input links and conditions). Built once per workflow, so an event costs the changed works'
/// children, not the whole graph.
#[derive(Debug, Clone, Default)]
pub struct Index {
    position: HashMap<String, usize>,
    children: Vec<Vec<usize>>,
}

impl Index {
    /// The index of a graph's top level.
    pub fn new(graph: &Graph) -> Self {
        let position: HashMap<String, usize> =
            graph.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        let mut children = vec![Vec::new(); graph.nodes.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            let mut parents = node.hard_parents();
            parents.extend(node.condition_parents());
            parents.sort_unstable();
            parents.dedup();
            for parent in parents {
                if let Some(&p) = position.get(parent) {
                    children[p].push(i);
                }
            }
        }
        Index { position, children }
    }

    /// The top-level node an instance key belongs to (`loop#2/inner` → `loop`).
    fn top_of(&self, key: &str) -> Option<usize> {
        let top = key.split('/').next().unwrap_or(key);
        let top = top.split_once('#').map_or(top, |(name, _)| name);
        self.position.get(top).copied()
    }
}

/// Moves the workflow forward from what changed since the last [`State::take_changed`]: only
/// the changed top-level works (or the loop / sub-workflow holding a changed inner work) and,
/// as they change, their children are looked at. Same result as [`advance`] when every change
/// went through [`State`] (the engine's path); O(changed works and their children) per event.
pub fn advance_changed(graph: &Graph, index: &Index, state: &mut State) -> Option<WorkflowStatus> {
    let n = graph.nodes.len();
    let mut queued = vec![false; n];
    let mut work: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let push = |i: usize, queued: &mut Vec<bool>, work: &mut std::collections::VecDeque<usize>| {
        if !queued[i] {
            queued[i] = true;
            work.push_back(i);
        }
    };
    for key in &state.changed {
        if let Some(i) = index.top_of(key) {
            push(i, &mut queued, &mut work);
            for &child in &index.children[i] {
                push(child, &mut queued, &mut work);
            }
        }
    }
    while let Some(i) = work.pop_front() {
        queued[i] = false;
        let before = state.version;
        step(graph, i, "", &graph.inputs, state);
        if state.version != before {
            // It moved: it may move again (a loop's next iteration), and its children may too.
            push(i, &mut queued, &mut work);
            for &child in &index.children[i] {
                push(child, &mut queued, &mut work);
            }
        }
    }
    top_status(graph, state)
}

/// The workflow's state when every top-level work is final. Looks from the end: in a DAG the
/// last nodes written are usually the last to end, so a running workflow answers at once.
fn top_status(graph: &Graph, state: &State) -> Option<WorkflowStatus> {
    if graph.nodes.iter().rev().any(|n| state.works.get(&n.name).is_some_and(|i| !i.status.is_final())) {
        return None;
    }
    workflow_status(state.top_level(graph))
}

fn advance_scope(graph: &Graph, scope: &str, params: &BTreeMap<String, Value>, state: &mut State) {
    // Written order, not a topological one: the caller repeats passes until nothing changes, and
    // sorting on every event would cost more than the extra pass a back reference needs.
    for i in 0..graph.nodes.len() {
        step(graph, i, scope, params, state);
    }
}

/// Looks at one node of a scope: decides a waiting one, moves a running loop or sub-workflow.
fn step(graph: &Graph, i: usize, scope: &str, params: &BTreeMap<String, Value>, state: &mut State) {
    let node = &graph.nodes[i];
    // Ended nodes are the common case on a big graph: skip them before building a key.
    match instance(state, scope, &node.name).map(|i| i.status) {
        Some(WorkStatus::Waiting | WorkStatus::Submitted) => {}
        _ => return,
    }
    let key = key_in(scope, &node.name);
    let Some(instance) = state.works.get(&key) else { return };
    match instance.status {
        WorkStatus::Waiting => decide(node, &key, scope, params, state),
        WorkStatus::Submitted => match &node.kind {
            NodeKind::Task(_) => {}
            NodeKind::Subworkflow(body) => {
                let inner = scope_of(&key, 1);
                let mut inner_params = params.clone();
                inner_params.extend(body.inputs.clone());
                advance_scope(body, &inner, &inner_params, state);
                if let Some(end) = scope_status(body, &inner, state) {
                    let outputs = scope_outputs(body, &inner, state);
                    finish_composite(state, &key, end, outputs, String::new());
                }
            }
            NodeKind::Loop(spec) => {
                let iteration = instance.iteration.max(1);
                let mut loop_params = params.clone();
                loop_params.extend(instance.params.clone());
                loop_params.insert("i".into(), Value::Int(i64::from(iteration)));
                let inner = scope_of(&key, iteration);
                advance_scope(&spec.body, &inner, &loop_params, state);
                let Some(end) = scope_status(&spec.body, &inner, state) else { return };
                if end != WorkflowStatus::Finished {
                    let outputs = scope_outputs(&spec.body, &inner, state);
                    let reason = format!("iteration {iteration} ended {}", end.as_str());
                    finish_composite(state, &key, end, outputs, reason);
                    return;
                }
                let facts = ScopeFacts { state, scope: &inner, params: &loop_params };
                let done = spec.until.as_ref().map(|c| c.eval(&facts) == Truth::True);
                let mut outputs = scope_outputs(&spec.body, &inner, state);
                outputs.extend(loop_params.iter().map(|(k, v)| (format!("param.{k}"), v.clone())));
                if done == Some(true) {
                    let reason = format!("until held after iteration {iteration}");
                    finish_composite(state, &key, WorkflowStatus::Finished, outputs, reason);
                } else if iteration >= spec.max_iterations {
                    let reason = format!("max_iterations ({}) reached", spec.max_iterations);
                    finish_composite(state, &key, WorkflowStatus::Finished, outputs, reason);
                } else {
                    // Parameter links: iteration i's outputs become iteration i+1's parameters.
                    let mut next = instance_params(state, &key);
                    for link in &spec.links {
                        let value = facts_output(state, &inner, &link.source.node, &link.source.output);
                        next.insert(link.param.clone(), value.unwrap_or(Value::Null));
                    }
                    let next_iteration = iteration + 1;
                    if let Some(instance) = state.works.get_mut(&key) {
                        instance.iteration = next_iteration;
                        instance.params = next;
                        instance.reason = format!("iteration {next_iteration}");
                    }
                    state.changed.insert(key.clone());
                    state.version += 1;
                    state.create_scope(&spec.body, &scope_of(&key, next_iteration));
                }
            }
        },
        _ => {}
    }
}

fn instance_params(state: &State, key: &str) -> BTreeMap<String, Value> {
    state.works.get(key).map(|i| i.params.clone()).unwrap_or_default()
}

fn facts_output(state: &State, scope: &str, node: &str, output: &str) -> Option<Value> {
    state.works.get(&key_in(scope, node)).and_then(|i| i.outputs.get(output).cloned())
}

fn scope_status(graph: &Graph, scope: &str, state: &State) -> Option<WorkflowStatus> {
    workflow_status(graph.nodes.iter().filter_map(|n| state.works.get(&key_in(scope, &n.name)).map(|i| i.status)))
}

/// A nested graph's outputs: `<node>.<output>` for every node's outputs.
fn scope_outputs(graph: &Graph, scope: &str, state: &State) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for node in &graph.nodes {
        if let Some(instance) = state.works.get(&key_in(scope, &node.name)) {
            for (k, v) in &instance.outputs {
                out.insert(format!("{}.{k}", node.name), v.clone());
            }
        }
    }
    out
}

fn finish_composite(
    state: &mut State,
    key: &str,
    end: WorkflowStatus,
    outputs: BTreeMap<String, Value>,
    reason: String,
) {
    let status = match end {
        WorkflowStatus::Finished => WorkStatus::Finished,
        WorkflowStatus::SubFinished => WorkStatus::SubFinished,
        WorkflowStatus::Cancelled => WorkStatus::Cancelled,
        _ => WorkStatus::Failed,
    };
    if let Some(instance) = state.works.get_mut(key) {
        instance.outputs = outputs;
    }
    state.set(key, status, reason);
}

/// Decides a waiting node: skip it, bypass it, start it, or leave it waiting.
fn decide(node: &Node, key: &str, scope: &str, params: &BTreeMap<String, Value>, state: &mut State) {
    let status_of = |name: &str| instance(state, scope, name).map(|i| i.status);
    let mut all_bypassed = true;
    let mut hard = node.hard_parents();
    hard.sort_unstable();
    for parent in &hard {
        let Some(status) = status_of(parent) else { return };
        let file_level = node.after.iter().any(|d| d.node == *parent && d.level == DependencyLevel::File);
        match status {
            WorkStatus::Failed | WorkStatus::SubFinished | WorkStatus::Skipped | WorkStatus::Cancelled => {
                state.set(key, WorkStatus::Skipped, format!("parent {parent} ended {}", status.as_str()));
                return;
            }
            WorkStatus::Finished => all_bypassed = false,
            WorkStatus::Bypassed => {}
            // A file-level child starts with its parent: its jobs wait held for their files.
            WorkStatus::Submitted if file_level => all_bypassed = false,
            _ => return,
        }
    }
    for parent in node.condition_parents() {
        match status_of(parent) {
            Some(status) if status.is_final() => {}
            _ => return,
        }
    }
    if !hard.is_empty() && all_bypassed {
        state.set(key, WorkStatus::Bypassed, "every parent was bypassed".into());
        return;
    }
    if let Some(when) = &node.when {
        let facts = ScopeFacts { state, scope, params };
        match when.eval(&facts) {
            Truth::True => {}
            Truth::False => {
                state.set(key, WorkStatus::Bypassed, "its condition is false".into());
                return;
            }
            Truth::Pending => return,
        }
    }
    match &node.kind {
        NodeKind::Task(_) => state.set(key, WorkStatus::Ready, String::new()),
        NodeKind::Subworkflow(body) => {
            state.set(key, WorkStatus::Submitted, String::new());
            state.create_scope(body, &scope_of(key, 1));
        }
        NodeKind::Loop(spec) => {
            if let Some(instance) = state.works.get_mut(key) {
                instance.iteration = 1;
                instance.params = spec.body.inputs.clone();
            }
            state.set(key, WorkStatus::Submitted, "iteration 1".into());
            state.create_scope(&spec.body, &scope_of(key, 1));
        }
    }
}

/// Finds the node an instance key stands for, and the parameters its scope sees (for
/// rendering its task).
pub fn resolve<'g>(graph: &'g Graph, state: &State, key: &str) -> Option<(&'g Node, BTreeMap<String, Value>)> {
    let mut params = graph.inputs.clone();
    let mut current = graph;
    let mut parts = key.split('/').peekable();
    let mut prefix = String::new();
    while let Some(part) = parts.next() {
        let (name, iteration) = match part.split_once('#') {
            Some((name, iteration)) => (name, Some(iteration.parse::<u32>().ok()?)),
            None => (part, None),
        };
        let node = current.node(name)?;
        let node_key = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        if parts.peek().is_none() {
            return iteration.is_none().then_some((node, params));
        }
        let iteration = iteration?;
        match &node.kind {
            NodeKind::Task(_) => return None,
            NodeKind::Subworkflow(body) => {
                params.extend(body.inputs.clone());
                current = body;
            }
            NodeKind::Loop(spec) => {
                // Parameters of this iteration: the current ones if it is the running iteration;
                // earlier iterations' are not kept (their tasks were rendered when they started).
                if let Some(instance) = state.works.get(&node_key) {
                    params.extend(instance.params.clone());
                }
                params.insert("i".into(), Value::Int(i64::from(iteration)));
                current = &spec.body;
            }
        }
        prefix = format!("{node_key}#{iteration}");
    }
    None
}

/// The task of a ready instance: `%{name}` placeholders replaced by the scope's parameters
/// (and `%{i}`, the loop iteration); datasets produced inside the workflow are scoped with
/// `dataset_prefix` and, inside loops, the iteration, so each iteration writes its own.
pub fn render_task(template: &TaskTemplate, params: &BTreeMap<String, Value>, key: &str) -> TaskTemplate {
    let substitute = |text: &str| {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("%{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find('}') {
                Some(end) if params.contains_key(&after[..end]) => {
                    out.push_str(&params[&after[..end]].to_text());
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push_str("%{");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    };
    let mut task = template.clone();
    task.command = substitute(&task.command);
    task.environment = task.environment.iter().map(|(k, v)| (k.clone(), substitute(v))).collect();
    let scope = key.rsplit_once('/').map(|(scope, _)| scope.replace(['#', '/'], "-"));
    if let Some(scope) = scope {
        // Inside a loop or sub-workflow, names are per iteration (parents outside keep theirs:
        // the engine scopes only datasets produced in the same body).
        task.name = format!("{}.{scope}", task.name);
    }
    task
}

/// Reopens what a retry can rerun: failed and subfinished works (tasks: the returned keys, whose
/// tasks the engine retries on the server) and the works their failure skipped.
pub fn retry(graph: &Graph, state: &mut State, has_task: impl Fn(&str) -> bool) -> Vec<String> {
    let mut tasks = Vec::new();
    let keys: Vec<String> = state.works.keys().cloned().collect();
    for key in keys {
        let Some(instance) = state.works.get(&key) else { continue };
        let status = instance.status;
        let is_task = resolve(graph, state, &key).is_some_and(|(n, _)| matches!(n.kind, NodeKind::Task(_)));
        match status {
            WorkStatus::Failed | WorkStatus::SubFinished => {
                // Tasks: the engine retries the task on the server (or resubmits one the server
                // refused, which has no task); loops and sub-workflows resume their body.
                if is_task && !has_task(&key) {
                    state.set(&key, WorkStatus::Ready, "resubmitted".into());
                } else {
                    state.set(&key, WorkStatus::Submitted, "retried".into());
                    if is_task {
                        tasks.push(key);
                    }
                }
            }
            WorkStatus::Skipped => state.set(&key, WorkStatus::Waiting, String::new()),
            _ => {}
        }
    }
    tasks
}

/// Cancels every unfinished instance; returns the keys of tasks that were running (the engine
/// kills them on the server).
pub fn abort(graph: &Graph, state: &mut State) -> Vec<String> {
    abort_because(graph, state, "workflow aborted")
}

/// [`abort`] with the reason the cancelled works keep.
pub fn abort_because(graph: &Graph, state: &mut State, reason: &str) -> Vec<String> {
    let mut running = Vec::new();
    let keys: Vec<String> = state.works.keys().cloned().collect();
    for key in keys {
        let Some(instance) = state.works.get(&key) else { continue };
        if instance.status.is_final() {
            continue;
        }
        let is_task = resolve(graph, state, &key).is_some_and(|(n, _)| matches!(n.kind, NodeKind::Task(_)));
        if instance.status == WorkStatus::Submitted && is_task {
            running.push(key.clone());
        }
        state.set(&key, WorkStatus::Cancelled, reason.into());
    }
    running
}
