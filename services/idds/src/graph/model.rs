//! The internal workflow graph every language compiles to. It carries what the task engine runs
//! today (tasks, task-level and file-level dependencies, conditions, loops, sub-workflows) and
//! what a CWL runner needs on top (step input/output links, scatter, `when`, File and Directory
//! values), so front ends differ only in parsing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cond::Cond;

/// A value flowing between nodes: loop parameters, work outputs, CWL step inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Value {
    /// No value (a skipped step's output in CWL).
    Null,
    /// true / false.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A real number.
    Float(f64),
    /// Text.
    String(String),
    /// A file (CWL `File`): where it is and what is known about it.
    File(FileValue),
    /// A directory (CWL `Directory`).
    Directory(DirectoryValue),
    /// A list.
    List(Vec<Value>),
    /// A record.
    Map(BTreeMap<String, Value>),
}

/// A CWL `File` value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileValue {
    /// URI or path.
    pub location: String,
    /// Base name.
    pub basename: String,
    /// Size in bytes when known.
    pub size: Option<u64>,
    /// `sha1$...` when known.
    pub checksum: Option<String>,
    /// Files that travel with it.
    pub secondary_files: Vec<FileValue>,
}

/// A CWL `Directory` value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryValue {
    /// URI or path.
    pub location: String,
    /// Base name.
    pub basename: String,
    /// Its entries when listed.
    pub listing: Vec<Value>,
}

impl Value {
    /// A number, for comparisons between integers and reals.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The text put into a command for a `%{name}` placeholder.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::String(s) => s.clone(),
            Value::File(f) => f.location.clone(),
            Value::Directory(d) => d.location.clone(),
            Value::List(items) => items.iter().map(Value::to_text).collect::<Vec<_>>().join(" "),
            Value::Map(_) => serde_json::to_string(self).unwrap_or_default(),
        }
    }

    /// From plain JSON (numbers, strings, booleans, arrays, objects; a `class: File` object is a
    /// file, `class: Directory` a directory, as in CWL input objects).
    pub fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(items) => Value::List(items.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(map) => {
                let text = |key: &str| map.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                let location = if map.contains_key("location") { text("location") } else { text("path") };
                match map.get("class").and_then(|c| c.as_str()) {
                    Some("File") => Value::File(FileValue {
                        basename: text("basename"),
                        size: map.get("size").and_then(serde_json::Value::as_u64),
                        checksum: map.get("checksum").and_then(|v| v.as_str()).map(str::to_owned),
                        location,
                        secondary_files: Vec::new(),
                    }),
                    Some("Directory") => {
                        Value::Directory(DirectoryValue { basename: text("basename"), location, listing: Vec::new() })
                    }
                    _ => Value::Map(map.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect()),
                }
            }
        }
    }
}

/// A whole workflow (or a loop body, or a sub-workflow).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Name ([A-Za-z0-9._-]).
    pub name: String,
    /// Inputs with their values (CWL workflow inputs; loop parameters of a loop body).
    pub inputs: BTreeMap<String, Value>,
    /// The nodes, in the order written.
    pub nodes: Vec<Node>,
    /// Workflow outputs: name → a node's output (CWL `outputSource`).
    pub outputs: BTreeMap<String, OutputRef>,
    /// A driven workflow: its driver adds nodes while it runs (AddWork), and it ends only when
    /// the driver closes it (or it is aborted), not when its nodes have ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub driven: bool,
}

/// `node/output`: one output of one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutputRef {
    /// The producing node.
    pub node: String,
    /// Its output's name.
    pub output: String,
}

/// Where a node input gets its value (CWL step `in`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputLink {
    /// The input's name.
    pub name: String,
    /// Upstream outputs (several: CWL `MultipleInputFeatureRequirement`).
    pub sources: Vec<OutputRef>,
    /// How several sources combine (`merge_nested` is CWL's default).
    pub link_merge: LinkMerge,
    /// Used when there is no source or every source is null.
    pub default: Option<Value>,
}

/// CWL `linkMerge`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMerge {
    /// One list entry per source.
    #[default]
    MergeNested,
    /// Lists concatenated.
    MergeFlattened,
}

/// CWL `scatterMethod`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScatterMethod {
    /// Element-wise (the default with one input).
    #[default]
    Dotproduct,
    /// Every combination, results nested per input.
    NestedCrossproduct,
    /// Every combination, results flat.
    FlatCrossproduct,
}

/// A node runs once per element of these inputs (CWL `scatter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scatter {
    /// Input names (each must be a list at run time).
    pub inputs: Vec<String>,
    /// How several inputs combine.
    pub method: ScatterMethod,
}

/// How a child depends on a parent work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyLevel {
    /// The child starts when the parent finished (the reference's `is_processed`).
    #[default]
    Task,
    /// The child's jobs are created held and each is released as soon as the parent produced
    /// the file it reads (Rubin's job-level DAG, the data carousel).
    File,
}

/// A task-level edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The parent node.
    pub node: String,
    /// Task or file level.
    pub level: DependencyLevel,
}

/// One node of a graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique in its graph.
    pub name: String,
    /// What it runs.
    pub kind: NodeKind,
    /// Nodes it waits for (N×M: any number of parents and children).
    pub after: Vec<Dependency>,
    /// Step inputs (CWL `in`).
    pub inputs: Vec<InputLink>,
    /// Output names it produces (CWL `out`; task works always have `status`, `jobs_*`).
    pub outputs: Vec<String>,
    /// Runs only if this holds once its inputs are known; otherwise it is bypassed (CWL `when`,
    /// a branch of an iDDS condition).
    pub when: Option<Cond>,
    /// Runs once per element (CWL `scatter`).
    pub scatter: Option<Scatter>,
    /// Where in the source it was written (line, 1-based; 0 when unknown), for error messages.
    pub line: u32,
    /// A task node with a study: the task is the evaluation of one point (docs/hpo.md); idds
    /// runs the study and the node ends with the best point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpo: Option<Box<crate::hpo::StudySpec>>,
}

/// What a node runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeKind {
    /// One server task.
    Task(Box<TaskTemplate>),
    /// A nested graph, run once (CWL sub-workflow).
    Subworkflow(Box<Graph>),
    /// A nested graph repeated until a condition holds or a bound is reached.
    Loop(Box<LoopSpec>),
}

/// A task as written; `%{name}` placeholders in the command take loop parameters and inputs
/// (`%{i}` is the iteration, from 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskTemplate {
    /// Task name (default: the node's name).
    pub name: String,
    /// Shell command per job (the server's placeholders `{inputs}` `{output}` `{index}` stay).
    pub command: String,
    /// Input datasets (workflow-local names are scoped per workflow run).
    pub input_datasets: Vec<String>,
    /// Files per job.
    pub files_per_job: Option<u32>,
    /// Jobs for a task without input.
    pub n_jobs: Option<u32>,
    /// Output dataset.
    pub output_dataset: String,
    /// Cores per job (0: default).
    pub cores: u32,
    /// Memory per job in MB (0: default).
    pub memory_mb: u64,
    /// Walltime per job in seconds (0: default).
    pub walltime_seconds: u64,
    /// Priority.
    pub priority: i32,
    /// Payload environment.
    pub environment: BTreeMap<String, String>,
    /// Allowed queues.
    pub queues: Vec<String>,
    /// Code archive.
    pub code_sha256: String,
    /// Container image every job runs in (empty: none); the server checks it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container_image: String,
    /// JEDI's splitting, scouting and retry rules (as in a task file's `split:`), passed to the
    /// server as written; the server validates them (at submission of the workflow, too).
    pub split: Option<SplitTemplate>,
    /// Per-job files, when the front end knows them (Snakemake): job `i` (from 1) reads
    /// `jobs[i-1].inputs` and writes `jobs[i-1].outputs`. File-level release matches these.
    pub jobs: Vec<JobFiles>,
}

/// `split:` of a task: the server's `SplitRules`, field for field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitTemplate {
    /// Events per job.
    pub events_per_job: Option<u64>,
    /// Input gigabytes per job.
    pub gb_per_job: Option<f64>,
    /// Target walltime per job, seconds.
    pub walltime_target_seconds: Option<u64>,
    /// Preset time per event, seconds.
    pub seconds_per_event: Option<f64>,
    /// Merge jobs over this many output files each.
    pub merge_files_per_job: Option<u32>,
    /// Scout jobs run first.
    pub scouts: Option<u32>,
    /// Attempts per input file.
    pub max_attempts: Option<u32>,
}

/// The files one job reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobFiles {
    /// Files read.
    pub inputs: Vec<String>,
    /// Files written.
    pub outputs: Vec<String>,
}

/// A loop: its body runs, then `until` is checked over the body's results; if it does not hold
/// and fewer than `max_iterations` ran, the body runs again with parameters updated by `links`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopSpec {
    /// The repeated sub-workflow; its `inputs` are the loop parameters' initial values.
    pub body: Graph,
    /// Exit condition over the body's works (and `param` references); `None`: run
    /// `max_iterations` times.
    pub until: Option<Cond>,
    /// The bound every loop must have.
    pub max_iterations: u32,
    /// Parameter links: next iteration's parameter ← this iteration's output.
    pub links: Vec<ParameterLink>,
}

/// `param` of iteration i+1 takes `source` of iteration i.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterLink {
    /// The loop parameter.
    pub param: String,
    /// A body node's output.
    pub source: OutputRef,
}

/// Most iterations a loop may declare.
pub const MAX_LOOP_ITERATIONS: u32 = 1000;

impl Graph {
    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every node in this graph and its nested graphs, with its path (`loop/body-node`).
    pub fn walk(&self) -> Vec<(String, &Node)> {
        let mut out = Vec::new();
        self.walk_into("", &mut out);
        out
    }

    fn walk_into<'a>(&'a self, prefix: &str, out: &mut Vec<(String, &'a Node)>) {
        for node in &self.nodes {
            let path = format!("{prefix}{}", node.name);
            out.push((path.clone(), node));
            match &node.kind {
                NodeKind::Task(_) => {}
                NodeKind::Subworkflow(graph) => graph.walk_into(&format!("{path}/"), out),
                NodeKind::Loop(spec) => spec.body.walk_into(&format!("{path}/"), out),
            }
        }
    }
}

impl Node {
    /// A task node with no dependencies (builder for tests and front ends).
    pub fn task(name: &str, task: TaskTemplate) -> Node {
        Node {
            name: name.to_owned(),
            kind: NodeKind::Task(Box::new(task)),
            after: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            when: None,
            scatter: None,
            line: 0,
            hpo: None,
        }
    }

    /// Every node this one waits for until it finished successfully: `after` and input sources.
    pub fn hard_parents(&self) -> Vec<&str> {
        let mut parents: Vec<&str> = self.after.iter().map(|d| d.node.as_str()).collect();
        for input in &self.inputs {
            parents.extend(input.sources.iter().map(|s| s.node.as_str()));
        }
        parents.sort_unstable();
        parents.dedup();
        parents
    }

    /// Nodes its `when` reads: they must have ended (in any state) before it is decided.
    pub fn condition_parents(&self) -> Vec<&str> {
        let mut parents = self.when.as_ref().map(Cond::works).unwrap_or_default();
        parents.sort_unstable();
        parents.dedup();
        parents
    }
}
