//! The native workflow format (YAML, or JSON, which YAML reads too); the reference is
//! docs/workflow-format.md. Structural mistakes (unknown keys, wrong types) are reported by the
//! YAML reader with their line; semantic ones by [`super::validate`] naming the node and the line
//! where it was written.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::cond::Cond;
use super::model::{
    Dependency, DependencyLevel, Graph, InputLink, LinkMerge, LoopSpec, Node, NodeKind, OutputRef, ParameterLink,
    Scatter, ScatterMethod, TaskTemplate, Value,
};
use super::validate::GraphError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    name: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    parameters: BTreeMap<String, serde_json::Value>,
    works: Vec<WorkFile>,
    #[serde(default)]
    conditions: Vec<ConditionFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkFile {
    name: String,
    /// Task-level parents.
    #[serde(default, alias = "parents")]
    after: Vec<String>,
    /// File-level parents: jobs are held and released per produced file.
    #[serde(default)]
    after_files: Vec<String>,
    #[serde(default)]
    when: Option<serde_json::Value>,
    #[serde(default)]
    inputs: BTreeMap<String, InputFile>,
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    scatter: Vec<String>,
    #[serde(default)]
    scatter_method: Option<ScatterMethod>,
    #[serde(default)]
    task: Option<TaskTemplate>,
    #[serde(default)]
    workflow: Option<SubFile>,
    #[serde(rename = "loop", default)]
    looped: Option<LoopFile>,
    /// A study whose points are evaluated by `task` (docs/hpo.md).
    #[serde(default)]
    hpo: Option<crate::hpo::StudySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputFile {
    /// `node/output`, or a list of them.
    #[serde(default)]
    source: OneOrMany,
    #[serde(default)]
    default: Option<serde_json::Value>,
    #[serde(default)]
    link_merge: LinkMerge,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubFile {
    #[serde(default)]
    parameters: BTreeMap<String, serde_json::Value>,
    works: Vec<WorkFile>,
    #[serde(default)]
    conditions: Vec<ConditionFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopFile {
    /// Required: the bound (validation names the loop when it is missing).
    #[serde(default)]
    max_iterations: u32,
    #[serde(default)]
    until: Option<serde_json::Value>,
    #[serde(default)]
    parameters: BTreeMap<String, serde_json::Value>,
    /// parameter → `node/output` of the body.
    #[serde(default)]
    links: BTreeMap<String, String>,
    works: Vec<WorkFile>,
    #[serde(default)]
    conditions: Vec<ConditionFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionFile {
    name: String,
    #[serde(rename = "if")]
    condition: serde_json::Value,
    #[serde(default, rename = "then")]
    then_works: Vec<String>,
    #[serde(default, rename = "else")]
    else_works: Vec<String>,
}

/// A parsed native workflow: its graph and owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The graph.
    pub graph: Graph,
    /// Owner (empty: the caller).
    pub user: String,
}

/// Parses a native workflow document (YAML or JSON).
///
/// # Errors
/// The reader's message (with line and column) or the conditions' wiring errors, each naming
/// the node; call [`super::validate::validate`] next for the graph rules.
pub fn parse(text: &str) -> Result<Parsed, Vec<GraphError>> {
    let file: WorkflowFile = serde_yaml_ng::from_str(text)
        .map_err(|e| vec![GraphError { node: String::new(), line: 0, message: e.to_string() }])?;
    let lines = LineIndex::new(text);
    let mut errors = Vec::new();
    let graph = build_graph(file.name, file.parameters, file.works, file.conditions, &lines, "", &mut errors);
    if errors.is_empty() { Ok(Parsed { graph, user: file.user }) } else { Err(errors) }
}

fn build_graph(
    name: String,
    parameters: BTreeMap<String, serde_json::Value>,
    works: Vec<WorkFile>,
    conditions: Vec<ConditionFile>,
    lines: &LineIndex,
    prefix: &str,
    errors: &mut Vec<GraphError>,
) -> Graph {
    let mut nodes: Vec<Node> = works.into_iter().map(|w| build_node(w, lines, prefix, errors)).collect();
    for condition in conditions {
        let line = lines.find(&condition.name);
        let Some(cond) = to_cond(&condition.condition, &format!("{prefix}{}", condition.name), line, errors) else {
            continue;
        };
        let targets = condition
            .then_works
            .iter()
            .map(|t| (t, cond.clone()))
            .chain(condition.else_works.iter().map(|t| (t, Cond::Not(Box::new(cond.clone())))));
        if condition.then_works.is_empty() && condition.else_works.is_empty() {
            errors.push(GraphError {
                node: format!("{prefix}{}", condition.name),
                line,
                message: "the condition has neither then nor else works".into(),
            });
        }
        for (target, when) in targets {
            match nodes.iter_mut().find(|n| &n.name == target) {
                Some(node) => {
                    node.when = Some(match node.when.take() {
                        None => when,
                        Some(Cond::All(mut items)) => {
                            items.push(when);
                            Cond::All(items)
                        }
                        Some(other) => Cond::All(vec![other, when]),
                    });
                }
                None => errors.push(GraphError {
                    node: format!("{prefix}{}", condition.name),
                    line,
                    message: format!("the condition's branch names {target:?}, which is not a work of this graph"),
                }),
            }
        }
    }
    Graph {
        name,
        inputs: parameters.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect(),
        nodes,
        outputs: BTreeMap::new(),
        driven: false,
    }
}

fn output_ref(text: &str) -> Option<OutputRef> {
    let (node, output) = text.split_once('/')?;
    (!node.is_empty() && !output.is_empty()).then(|| OutputRef { node: node.to_owned(), output: output.to_owned() })
}

fn build_node(work: WorkFile, lines: &LineIndex, prefix: &str, errors: &mut Vec<GraphError>) -> Node {
    let line = lines.find(&work.name);
    let path = format!("{prefix}{}", work.name);
    let mut bad = |message: String| errors.push(GraphError { node: path.clone(), line, message });
    let kinds =
        usize::from(work.task.is_some()) + usize::from(work.workflow.is_some()) + usize::from(work.looped.is_some());
    if kinds != 1 {
        bad(format!("needs exactly one of task, workflow or loop (has {kinds})"));
    }
    if let Some(hpo) = &work.hpo {
        if work.task.is_none() {
            bad("hpo needs a task: the command that evaluates one point (docs/hpo.md)".into());
        }
        if let Err(crate::hpo::HpoError::Invalid(problems)) = hpo.validate("hpo") {
            for (field, message) in problems {
                bad(format!("{field}: {message}"));
            }
        }
    }
    let kind = if let Some(task) = work.task {
        // A study's point is one job unless the task reads input.
        let n_jobs =
            if work.hpo.is_some() && task.input_datasets.is_empty() { task.n_jobs.or(Some(1)) } else { task.n_jobs };
        NodeKind::Task(Box::new(TaskTemplate {
            name: if task.name.is_empty() { work.name.clone() } else { task.name.clone() },
            n_jobs,
            ..task
        }))
    } else if let Some(sub) = work.workflow {
        let inner = format!("{path}/");
        NodeKind::Subworkflow(Box::new(build_graph(
            work.name.clone(),
            sub.parameters,
            sub.works,
            sub.conditions,
            lines,
            &inner,
            errors,
        )))
    } else if let Some(looped) = work.looped {
        let inner = format!("{path}/");
        let mut links = Vec::new();
        for (param, source) in &looped.links {
            match output_ref(source) {
                Some(source) => links.push(ParameterLink { param: param.clone(), source }),
                None => errors.push(GraphError {
                    node: path.clone(),
                    line,
                    message: format!("link for {param:?} must be <node>/<output> (got {source:?})"),
                }),
            }
        }
        let body =
            build_graph(work.name.clone(), looped.parameters, looped.works, looped.conditions, lines, &inner, errors);
        let until = looped.until.as_ref().and_then(|u| to_cond(u, &path, line, errors));
        NodeKind::Loop(Box::new(LoopSpec { body, until, max_iterations: looped.max_iterations, links }))
    } else {
        NodeKind::Task(Box::default())
    };
    let mut inputs = Vec::new();
    for (name, input) in work.inputs {
        let sources: Vec<String> = match input.source {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        };
        let mut refs = Vec::new();
        for source in sources {
            match output_ref(&source) {
                Some(r) => refs.push(r),
                None => errors.push(GraphError {
                    node: path.clone(),
                    line,
                    message: format!("input {name:?}: source must be <node>/<output> (got {source:?})"),
                }),
            }
        }
        inputs.push(InputLink {
            name,
            sources: refs,
            link_merge: input.link_merge,
            default: input.default.as_ref().map(Value::from_json),
        });
    }
    let after = work
        .after
        .into_iter()
        .map(|node| Dependency { node, level: DependencyLevel::Task })
        .chain(work.after_files.into_iter().map(|node| Dependency { node, level: DependencyLevel::File }))
        .collect();
    let when = work.when.as_ref().and_then(|w| to_cond(w, &path, line, errors));
    let hpo = work.hpo.map(Box::new);
    Node {
        name: work.name,
        kind,
        after,
        inputs,
        outputs: work.outputs,
        when,
        scatter: (!work.scatter.is_empty())
            .then(|| Scatter { inputs: work.scatter, method: work.scatter_method.unwrap_or_default() }),
        line,
        hpo,
    }
}

/// A condition as written (`{all: [...]}`, `{status: {...}}`, ...).
fn to_cond(value: &serde_json::Value, node: &str, line: u32, errors: &mut Vec<GraphError>) -> Option<Cond> {
    match serde_json::from_value::<Cond>(value.clone()) {
        Ok(cond) => Some(cond),
        Err(e) => {
            errors.push(GraphError {
                node: node.to_owned(),
                line,
                message: format!(
                    "invalid condition: {e} (a condition is one of all, any, not, status, count, output, param)"
                ),
            });
            None
        }
    }
}

/// Finds the line where a name was written (`name: x` or `- name: x`), for error messages.
struct LineIndex {
    names: BTreeMap<String, u32>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut names = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
            if let Some(rest) = trimmed.strip_prefix("name:") {
                let value = rest.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
                names.entry(value).or_insert(i as u32 + 1);
            }
        }
        Self { names }
    }

    fn find(&self, name: &str) -> u32 {
        self.names.get(name).copied().unwrap_or(0)
    }
}
