//! Checks a graph before anything is stored: names, dangling and self dependencies, cycles,
//! condition references, loop bounds and links, datasets. Every problem is reported at once,
//! each naming the node (its path, `loop/body-node`) and the source line when known.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::model::{DependencyLevel, Graph, MAX_LOOP_ITERATIONS, NodeKind};

/// Most nodes in a workflow, nested graphs included.
pub const MAX_NODES: usize = 20_000;

/// One problem in a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    /// The node's path, empty for the workflow itself.
    pub node: String,
    /// Source line, 0 when unknown.
    pub line: u32,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.node.is_empty(), self.line) {
            (true, 0) => write!(f, "workflow: {}", self.message),
            (true, line) => write!(f, "workflow (line {line}): {}", self.message),
            (false, 0) => write!(f, "node {:?}: {}", self.node, self.message),
            (false, line) => write!(f, "node {:?} (line {line}): {}", self.node, self.message),
        }
    }
}

/// Validates a whole workflow graph.
///
/// # Errors
/// Every problem found.
pub fn validate(graph: &Graph) -> Result<(), Vec<GraphError>> {
    let mut errors = Vec::new();
    if let Err(e) = panda_types::ids::check_name(&graph.name, 100) {
        errors.push(GraphError { node: String::new(), line: 0, message: format!("name {e}") });
    }
    let count = graph.walk().len();
    if count == 0 {
        errors.push(GraphError { node: String::new(), line: 0, message: "must contain at least one node".into() });
    } else if count > MAX_NODES {
        errors.push(GraphError {
            node: String::new(),
            line: 0,
            message: format!("must have at most {MAX_NODES} nodes (got {count})"),
        });
    }
    check_graph(graph, "", &graph.inputs.keys().cloned().collect(), &mut errors);
    check_datasets(graph, &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn check_graph(graph: &Graph, prefix: &str, params: &BTreeSet<String>, errors: &mut Vec<GraphError>) {
    let path = |name: &str| format!("{prefix}{name}");
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut bad = |message: String| errors.push(GraphError { node: path(&node.name), line: node.line, message });
        if let Err(e) = panda_types::ids::check_name(&node.name, 100) {
            bad(format!("name {e}"));
        } else if names.insert(node.name.as_str(), i).is_some() {
            bad("the name is used by another node of the same graph".into());
        }
    }
    for node in &graph.nodes {
        let mut bad = |message: String| errors.push(GraphError { node: path(&node.name), line: node.line, message });
        let mut seen = BTreeSet::new();
        for dep in &node.after {
            if dep.node == node.name {
                bad("depends on itself".into());
            } else if !names.contains_key(dep.node.as_str()) {
                bad(format!("depends on {:?}, which is not a node of this graph", dep.node));
            } else if !seen.insert(dep.node.as_str()) {
                bad(format!("lists {:?} twice", dep.node));
            }
            if dep.level == DependencyLevel::File
                && let Some(parent) = graph.node(&dep.node)
            {
                match (&parent.kind, &node.kind) {
                    (NodeKind::Task(p), NodeKind::Task(c)) => {
                        let by_dataset = !p.output_dataset.is_empty() && c.input_datasets.contains(&p.output_dataset);
                        let produced: BTreeSet<&String> = p.jobs.iter().flat_map(|j| &j.outputs).collect();
                        let by_file = c.jobs.iter().flat_map(|j| &j.inputs).any(|f| produced.contains(f));
                        if !by_dataset && !by_file {
                            bad(format!(
                                "has a file-level dependency on {:?} but reads none of its output (add its \
                                 output_dataset to input_datasets)",
                                dep.node
                            ));
                        }
                    }
                    _ => bad(format!("a file-level dependency on {:?} needs two task nodes", dep.node)),
                }
            }
        }
        for input in &node.inputs {
            for source in &input.sources {
                if !names.contains_key(source.node.as_str()) {
                    bad(format!(
                        "input {:?} reads {}/{}, and there is no node {:?}",
                        input.name, source.node, source.output, source.node
                    ));
                } else if source.node == node.name {
                    bad(format!("input {:?} reads its own output", input.name));
                }
            }
        }
        if let Some(when) = &node.when {
            for work in when.works() {
                if work == node.name {
                    bad("its condition reads its own result".into());
                } else if !names.contains_key(work) {
                    bad(format!("its condition reads {work:?}, which is not a node of this graph"));
                }
            }
            for param in when.params() {
                if !params.contains(param) && !node.inputs.iter().any(|i| i.name == param) {
                    bad(format!("its condition reads parameter {param:?}, which is not defined"));
                }
            }
        }
        if let Some(scatter) = &node.scatter {
            if scatter.inputs.is_empty() {
                bad("scatter names no input".into());
            }
            for name in &scatter.inputs {
                if !node.inputs.iter().any(|i| &i.name == name) {
                    bad(format!("scatters over {name:?}, which is not one of its inputs"));
                }
            }
        }
        match &node.kind {
            NodeKind::Task(task) => {
                if task.command.trim().is_empty() {
                    bad("task.command is required".into());
                }
                if task.input_datasets.is_empty() && task.n_jobs.is_none() {
                    bad("task needs input_datasets or n_jobs".into());
                }
            }
            NodeKind::Subworkflow(body) => {
                let inner: BTreeSet<String> = params.iter().cloned().chain(body.inputs.keys().cloned()).collect();
                check_graph(body, &format!("{}/", path(&node.name)), &inner, errors);
            }
            NodeKind::Loop(spec) => {
                if spec.max_iterations == 0 {
                    bad(format!(
                        "the loop has no exit bound: set max_iterations (1..={MAX_LOOP_ITERATIONS}); an until condition \
                         alone may never hold"
                    ));
                } else if spec.max_iterations > MAX_LOOP_ITERATIONS {
                    bad(format!("max_iterations must be at most {MAX_LOOP_ITERATIONS} (got {})", spec.max_iterations));
                }
                let body_names: BTreeSet<&str> = spec.body.nodes.iter().map(|n| n.name.as_str()).collect();
                let inner: BTreeSet<String> =
                    params.iter().cloned().chain(spec.body.inputs.keys().cloned()).chain(["i".to_owned()]).collect();
                if let Some(until) = &spec.until {
                    for work in until.works() {
                        if !body_names.contains(work) {
                            bad(format!("its until condition reads {work:?}, which is not a node of the loop body"));
                        }
                    }
                    for param in until.params() {
                        if !inner.contains(param) {
                            bad(format!("its until condition reads parameter {param:?}, which is not defined"));
                        }
                    }
                }
                for link in &spec.links {
                    if !spec.body.inputs.contains_key(&link.param) {
                        bad(format!(
                            "links parameter {:?}, which the loop does not declare (add it to parameters)",
                            link.param
                        ));
                    }
                    if !body_names.contains(link.source.node.as_str()) {
                        bad(format!(
                            "parameter {:?} takes its next value from {:?}, which is not a node of the loop body",
                            link.param, link.source.node
                        ));
                    }
                }
                check_graph(&spec.body, &format!("{}/", path(&node.name)), &inner, errors);
            }
        }
    }
    if errors.is_empty()
        && let Err(cycle) = topological_order(graph)
    {
        let first = graph.node(&cycle[0]).map_or(0, |n| n.line);
        errors.push(GraphError {
            node: path(&cycle[0]),
            line: first,
            message: format!("the dependencies form a cycle: {}", cycle.join(" -> ")),
        });
    }
}

/// Every edge of a graph's level: parent → child, from `after`, input sources and conditions.
pub fn edges(graph: &Graph) -> Vec<(usize, usize)> {
    let index: BTreeMap<&str, usize> = graph.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    let mut out = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut parents = node.hard_parents();
        parents.extend(node.condition_parents());
        parents.sort_unstable();
        parents.dedup();
        out.extend(parents.into_iter().filter_map(|p| index.get(p)).map(|&p| (p, i)));
    }
    out
}

/// The graph's nodes in an order where parents come first.
///
/// # Errors
/// The names along a cycle, first repeated at the end.
pub fn topological_order(graph: &Graph) -> Result<Vec<usize>, Vec<String>> {
    let n = graph.nodes.len();
    let edges = edges(graph);
    let mut indegree = vec![0usize; n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(p, c) in &edges {
        indegree[c] += 1;
        children[p].push(c);
        parents[c].push(p);
    }
    let mut ready: Vec<usize> = (0..n).rev().filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &child in &children[i] {
            indegree[child] -= 1;
            if indegree[child] == 0 {
                ready.push(child);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk parents among the unplaced nodes until one repeats: that is a cycle to report.
    let mut path = Vec::new();
    let mut at = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
    let mut visited = BTreeSet::new();
    while visited.insert(at) {
        path.push(at);
        at = parents[at].iter().copied().find(|&p| indegree[p] > 0).unwrap_or(at);
    }
    let start = path.iter().position(|&i| i == at).unwrap_or(0);
    // Parent links walked backwards: reversed, they read parent -> child, closing on the first.
    let mut cycle: Vec<String> = path[start..].iter().rev().map(|&i| graph.nodes[i].name.clone()).collect();
    cycle.push(cycle[0].clone());
    Err(cycle)
}

/// Dataset rules at the top level: one producer per output; an input produced in the workflow
/// must come from an ancestor, or the consumer could start before its data exists.
fn check_datasets(graph: &Graph, errors: &mut Vec<GraphError>) {
    if !errors.is_empty() {
        return;
    }
    let Ok(order) = topological_order(graph) else { return };
    let mut producers: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if let NodeKind::Task(task) = &node.kind
            && !task.output_dataset.is_empty()
            && let Some(other) = producers.insert(task.output_dataset.as_str(), i)
        {
            errors.push(GraphError {
                node: node.name.clone(),
                line: node.line,
                message: format!(
                    "output_dataset {:?} is also produced by {:?}",
                    task.output_dataset, graph.nodes[other].name
                ),
            });
        }
    }
    let index: BTreeMap<&str, usize> = graph.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    let mut ancestors: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); graph.nodes.len()];
    for &i in &order {
        let mut set = BTreeSet::new();
        for parent in graph.nodes[i].hard_parents() {
            if let Some(&p) = index.get(parent) {
                set.insert(p);
                set.extend(ancestors[p].iter().copied());
            }
        }
        ancestors[i] = set;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        let NodeKind::Task(task) = &node.kind else { continue };
        for input in &task.input_datasets {
            let Some(&producer) = producers.get(input.as_str()) else { continue };
            if !ancestors[i].contains(&producer) {
                errors.push(GraphError {
                    node: node.name.clone(),
                    line: node.line,
                    message: format!(
                        "reads {input:?}, produced by {:?}, which it does not depend on; add it to after",
                        graph.nodes[producer].name
                    ),
                });
            }
        }
    }
}
