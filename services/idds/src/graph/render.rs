//! The graph as text (for a terminal), Graphviz DOT and Mermaid, with each work's state when
//! known. Nested graphs (loops, sub-workflows) are drawn as clusters / subgraphs.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::model::{DependencyLevel, Graph, Node, NodeKind};
use super::validate::topological_order;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Indented text, parents first.
    Text,
    /// Graphviz.
    Dot,
    /// Mermaid `flowchart`.
    Mermaid,
}

/// What to print next to a node: its state (by node path, `loop/body-node`).
pub type Labels = BTreeMap<String, String>;

/// Renders the graph.
pub fn render(graph: &Graph, format: Format, labels: &Labels) -> String {
    let mut out = String::new();
    match format {
        Format::Text => {
            let _ = writeln!(out, "workflow {}", graph.name);
            text(graph, "", 1, labels, &mut out);
        }
        Format::Dot => {
            let _ = writeln!(out, "digraph {:?} {{\n  rankdir=TB;\n  node [shape=box];", graph.name);
            dot(graph, "", labels, &mut out);
            out.push_str("}\n");
        }
        Format::Mermaid => {
            out.push_str("flowchart TD\n");
            mermaid(graph, "", labels, &mut out);
        }
    }
    out
}

fn kind(node: &Node) -> String {
    match &node.kind {
        NodeKind::Task(_) => "task".into(),
        NodeKind::Subworkflow(_) => "workflow".into(),
        NodeKind::Loop(spec) => format!("loop, at most {} iterations", spec.max_iterations),
    }
}

fn ordered(graph: &Graph) -> Vec<&Node> {
    let order = topological_order(graph).unwrap_or_else(|_| (0..graph.nodes.len()).collect());
    order.into_iter().map(|i| &graph.nodes[i]).collect()
}

fn text(graph: &Graph, prefix: &str, depth: usize, labels: &Labels, out: &mut String) {
    let indent = "  ".repeat(depth);
    for node in ordered(graph) {
        let path = format!("{prefix}{}", node.name);
        let _ = write!(out, "{indent}{} [{}]", node.name, kind(node));
        if let Some(label) = labels.get(&path) {
            let _ = write!(out, " {label}");
        }
        let parents: Vec<String> = node
            .after
            .iter()
            .map(|d| match d.level {
                DependencyLevel::Task => d.node.clone(),
                DependencyLevel::File => format!("{} (per file)", d.node),
            })
            .chain(node.inputs.iter().flat_map(|i| i.sources.iter().map(|s| format!("{}/{}", s.node, s.output))))
            .collect();
        if !parents.is_empty() {
            let _ = write!(out, " <- {}", parents.join(", "));
        }
        if node.when.is_some() {
            out.push_str(" (conditional)");
        }
        out.push('\n');
        match &node.kind {
            NodeKind::Task(_) => {}
            NodeKind::Subworkflow(body) => text(body, &format!("{path}/"), depth + 1, labels, out),
            NodeKind::Loop(spec) => text(&spec.body, &format!("{path}/"), depth + 1, labels, out),
        }
    }
}

fn id(path: &str) -> String {
    path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn label_of(node: &Node, path: &str, labels: &Labels) -> String {
    match labels.get(path) {
        Some(label) => format!("{}\\n{label}", node.name),
        None => node.name.clone(),
    }
}

fn dot(graph: &Graph, prefix: &str, labels: &Labels, out: &mut String) {
    for node in &graph.nodes {
        let path = format!("{prefix}{}", node.name);
        match body_of(node) {
            None => {
                let _ = writeln!(out, "  {} [label=\"{}\"];", id(&path), label_of(node, &path, labels));
            }
            Some(inner) => {
                let _ = writeln!(
                    out,
                    "  subgraph cluster_{} {{\n  label=\"{} ({})\";\n  {} [label=\"{}\", shape=ellipse];",
                    id(&path),
                    node.name,
                    kind(node),
                    id(&path),
                    label_of(node, &path, labels)
                );
                dot(inner, &format!("{path}/"), labels, out);
                out.push_str("  }\n");
            }
        }
    }
    for node in &graph.nodes {
        let path = format!("{prefix}{}", node.name);
        for dep in &node.after {
            let style = if dep.level == DependencyLevel::File { " [style=dashed, label=\"per file\"]" } else { "" };
            let _ = writeln!(out, "  {} -> {}{style};", id(&format!("{prefix}{}", dep.node)), id(&path));
        }
        for input in &node.inputs {
            for source in &input.sources {
                let _ = writeln!(
                    out,
                    "  {} -> {} [label=\"{}\"];",
                    id(&format!("{prefix}{}", source.node)),
                    id(&path),
                    input.name
                );
            }
        }
        if let Some(when) = &node.when {
            for work in when.works() {
                let _ = writeln!(
                    out,
                    "  {} -> {} [style=dotted, label=\"if\"];",
                    id(&format!("{prefix}{work}")),
                    id(&path)
                );
            }
        }
    }
}

fn body_of(node: &Node) -> Option<&Graph> {
    match &node.kind {
        NodeKind::Task(_) => None,
        NodeKind::Subworkflow(body) => Some(body),
        NodeKind::Loop(spec) => Some(&spec.body),
    }
}

fn mermaid(graph: &Graph, prefix: &str, labels: &Labels, out: &mut String) {
    for node in &graph.nodes {
        let path = format!("{prefix}{}", node.name);
        let label = match labels.get(&path) {
            Some(l) => format!("{}<br/>{l}", node.name),
            None => node.name.clone(),
        };
        match body_of(node) {
            None => {
                let _ = writeln!(out, "  {}[\"{label}\"]", id(&path));
            }
            Some(body) => {
                let _ = writeln!(out, "  subgraph {}_body [\"{} ({})\"]", id(&path), node.name, kind(node));
                let _ = writeln!(out, "  {}([\"{label}\"])", id(&path));
                mermaid(body, &format!("{path}/"), labels, out);
                out.push_str("  end\n");
            }
        }
    }
    for node in &graph.nodes {
        let path = format!("{prefix}{}", node.name);
        for dep in &node.after {
            let arrow = if dep.level == DependencyLevel::File { "-.->|per file|" } else { "-->" };
            let _ = writeln!(out, "  {} {arrow} {}", id(&format!("{prefix}{}", dep.node)), id(&path));
        }
        for input in &node.inputs {
            for source in &input.sources {
                let _ =
                    writeln!(out, "  {} -->|{}| {}", id(&format!("{prefix}{}", source.node)), input.name, id(&path));
            }
        }
        if let Some(when) = &node.when {
            for work in when.works() {
                let _ = writeln!(out, "  {} -.->|if| {}", id(&format!("{prefix}{work}")), id(&path));
            }
        }
    }
}
