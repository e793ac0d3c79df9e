//! A Snakefile subset, parsed in Rust (no Python on the machine): `rule` blocks with `input`,
//! `output`, `params` and `shell` (positional and named items, string literals, `expand()` with
//! list arguments), `{wildcards}` in file patterns, top-level list and string assignments
//! (`SAMPLES = ["a", "b"]`), `workdir:`, and `rule all` (else the first rule) naming the targets.
//! The files needed are resolved backwards from the targets as Snakemake does: each rule becomes
//! one task with one job per wildcard instance, and rules depend on each other per file.
//!
//! Refused, naming the rule and line: `run:`/`script:`/`wrapper:` and unknown directives, input
//! wildcards missing from the output, two rules that can make the same file (ambiguous), targets
//! with unresolved wildcards, and cycles.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Dependency, DependencyLevel, Graph, JobFiles, Node, TaskTemplate};
use super::validate::GraphError;

/// Most jobs one Snakefile may expand to.
pub const MAX_JOBS: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Text(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Clone)]
struct Directive {
    positional: Vec<String>,
    named: Vec<(String, String)>,
}

#[derive(Debug, Default, Clone)]
struct Rule {
    name: String,
    line: u32,
    input: Directive,
    output: Directive,
    params: Directive,
    shell: Option<String>,
}

fn err(rule: &str, line: u32, message: impl Into<String>) -> GraphError {
    GraphError { node: rule.to_owned(), line, message: message.into() }
}

/// Parses a Snakefile into a graph named `name`.
///
/// # Errors
/// Every problem found, each naming the rule and line.
pub fn parse(text: &str, name: &str) -> Result<Graph, Vec<GraphError>> {
    let (rules, workdir, errors) = read_rules(text);
    if !errors.is_empty() {
        return Err(errors);
    }
    build(name, &rules, workdir.as_deref())
}

/// Splits the file into rules (raw directive texts parsed into items).
fn read_rules(text: &str) -> (Vec<Rule>, Option<String>, Vec<GraphError>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut vars: BTreeMap<String, Item> = BTreeMap::new();
    let mut rules: Vec<Rule> = Vec::new();
    let mut errors = Vec::new();
    let mut workdir = None;
    let mut i = 0;
    while i < lines.len() {
        let line = strip_comment(lines[i]);
        let number = i as u32 + 1;
        if line.trim().is_empty() {
            i += 1;
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            errors.push(err("", number, "unexpected indented line outside a rule"));
            i += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("rule ") {
            let Some(rule_name) = rest.trim().strip_suffix(':').map(str::trim) else {
                errors.push(err("", number, "a rule line reads `rule NAME:`"));
                i += 1;
                continue;
            };
            let mut rule = Rule { name: rule_name.to_owned(), line: number, ..Rule::default() };
            i += 1;
            // Directives: indented `key:` lines, each with its value on the line or below.
            while i < lines.len() {
                let raw = strip_comment(lines[i]);
                if raw.trim().is_empty() {
                    i += 1;
                    continue;
                }
                if !raw.starts_with(char::is_whitespace) {
                    break;
                }
                let at = i as u32 + 1;
                let indent = raw.len() - raw.trim_start().len();
                let Some((key, first)) = raw.trim().split_once(':') else {
                    errors.push(err(rule_name, at, format!("expected `directive: value`, got {:?}", raw.trim())));
                    i += 1;
                    continue;
                };
                let mut value = first.trim().to_owned();
                i += 1;
                // A triple-quoted string may span lines; otherwise continuation lines are indented deeper.
                while i < lines.len() {
                    let next = lines[i];
                    let open_triple = value.matches("\"\"\"").count() % 2 == 1;
                    let deeper = next.len() - next.trim_start().len() > indent && !next.trim().is_empty();
                    if open_triple || deeper {
                        value.push('\n');
                        value.push_str(if open_triple { next } else { strip_comment(next).trim() });
                        i += 1;
                    } else {
                        break;
                    }
                }
                let key = key.trim();
                let parsed = match key {
                    "input" | "output" | "params" => match parse_directive(&value, &vars) {
                        Ok(d) => d,
                        Err(message) => {
                            errors.push(err(rule_name, at, format!("{key}: {message}")));
                            continue;
                        }
                    },
                    "shell" => match parse_directive(&value, &vars) {
                        Ok(d) if d.positional.len() == 1 && d.named.is_empty() => {
                            rule.shell = d.positional.into_iter().next();
                            continue;
                        }
                        Ok(_) => {
                            errors.push(err(rule_name, at, "shell: must be one string"));
                            continue;
                        }
                        Err(message) => {
                            errors.push(err(rule_name, at, format!("shell: {message}")));
                            continue;
                        }
                    },
                    "run" | "script" | "wrapper" | "notebook" | "cwl" => {
                        errors.push(err(
                            rule_name,
                            at,
                            format!("`{key}:` is not supported; rules run shell commands only (use shell:)"),
                        ));
                        continue;
                    }
                    other => {
                        errors.push(err(
                            rule_name,
                            at,
                            format!("directive `{other}:` is not supported (supported: input, output, params, shell)"),
                        ));
                        continue;
                    }
                };
                match key {
                    "input" => rule.input = parsed,
                    "output" => rule.output = parsed,
                    _ => rule.params = parsed,
                }
            }
            if rules.iter().any(|r| r.name == rule.name) {
                errors.push(err(&rule.name, rule.line, "a rule of this name is already defined"));
            }
            rules.push(rule);
            continue;
        }
        if let Some(rest) = line.strip_prefix("workdir:") {
            match parse_directive(rest, &vars) {
                Ok(d) if d.positional.len() == 1 => workdir = d.positional.into_iter().next(),
                _ => errors.push(err("", number, "workdir: must be one string")),
            }
            i += 1;
            continue;
        }
        if let Some((name, value)) = line.split_once('=')
            && is_identifier(name.trim())
        {
            // Assignments may span lines until brackets close.
            let mut value = value.trim().to_owned();
            i += 1;
            while value.matches('[').count() > value.matches(']').count() && i < lines.len() {
                value.push(' ');
                value.push_str(strip_comment(lines[i]).trim());
                i += 1;
            }
            match parse_value(&value, &vars) {
                Ok(item) => {
                    vars.insert(name.trim().to_owned(), item);
                }
                Err(message) => errors.push(err("", number, format!("{}: {message}", name.trim()))),
            }
            continue;
        }
        errors.push(err(
            "",
            number,
            format!("unsupported statement {:?} (the subset: rule, workdir, NAME = [..])", line.trim()),
        ));
        i += 1;
    }
    (rules, workdir, errors)
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !text.starts_with(|c: char| c.is_ascii_digit())
}

/// Drops a `#` comment that is not inside a string.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Splits at top-level commas (outside strings and brackets).
fn split_top(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (i, c) = chars[k];
        if let Some(q) = quote {
            if text[i..].starts_with("\"\"\"") && q == 'T' {
                quote = None;
                k += 3;
                continue;
            }
            if c == q && q != 'T' {
                quote = None;
            }
        } else if text[i..].starts_with("\"\"\"") {
            quote = Some('T');
            k += 3;
            continue;
        } else {
            match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(text[start..i].trim().to_owned());
                    start = i + 1;
                }
                _ => {}
            }
        }
        k += 1;
    }
    let last = text[start..].trim();
    if !last.is_empty() {
        parts.push(last.to_owned());
    }
    parts
}

fn parse_directive(text: &str, vars: &BTreeMap<String, Item>) -> Result<Directive, String> {
    let mut directive = Directive::default();
    for part in split_top(text) {
        if let Some((key, value)) = part.split_once('=')
            && is_identifier(key.trim())
            && !key.contains('"')
        {
            match parse_value(value.trim(), vars)? {
                Item::Text(t) => directive.named.push((key.trim().to_owned(), t)),
                Item::List(items) => directive.named.push((key.trim().to_owned(), items.join(" "))),
            }
        } else {
            match parse_value(&part, vars)? {
                Item::Text(t) => directive.positional.push(t),
                Item::List(items) => directive.positional.extend(items),
            }
        }
    }
    Ok(directive)
}

fn parse_value(text: &str, vars: &BTreeMap<String, Item>) -> Result<Item, String> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix("\"\"\"").and_then(|t| t.strip_suffix("\"\"\"")) {
        return Ok(Item::Text(inner.trim().to_owned()));
    }
    if text.len() >= 2
        && ((text.starts_with('"') && text.ends_with('"')) || (text.starts_with('\'') && text.ends_with('\'')))
    {
        return Ok(Item::Text(text[1..text.len() - 1].to_owned()));
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let mut items = Vec::new();
        for part in split_top(inner) {
            match parse_value(&part, vars)? {
                Item::Text(t) => items.push(t),
                Item::List(more) => items.extend(more),
            }
        }
        return Ok(Item::List(items));
    }
    if let Some(inner) = text.strip_prefix("expand(").and_then(|t| t.strip_suffix(')')) {
        return expand(inner, vars);
    }
    if text.parse::<f64>().is_ok() {
        return Ok(Item::Text(text.to_owned()));
    }
    if let Some(value) = vars.get(text) {
        return Ok(value.clone());
    }
    Err(format!("cannot read {text:?} (the subset reads strings, numbers, lists, expand() and names assigned above)"))
}

/// `expand("pattern", a=[..], b=NAME)`: every combination (Snakemake's default product).
fn expand(inner: &str, vars: &BTreeMap<String, Item>) -> Result<Item, String> {
    let parts = split_top(inner);
    let Some((pattern, rest)) = parts.split_first() else { return Err("expand() needs a pattern".into()) };
    let Item::Text(pattern) = parse_value(pattern, vars)? else {
        return Err("expand()'s first argument must be a string".into());
    };
    let mut combos: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for arg in rest {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(format!("expand() arguments read name=list (got {arg:?})"));
        };
        let values = match parse_value(value, vars)? {
            Item::Text(t) => vec![t],
            Item::List(items) => items,
        };
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(key.trim().to_owned(), v.clone());
                    c
                })
            })
            .collect();
    }
    Ok(Item::List(combos.iter().map(|c| fill(&pattern, c)).collect()))
}

/// Fills `{name}` in a pattern; unknown names stay.
fn fill(pattern: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) if values.contains_key(after[..end].trim()) => {
                out.push_str(&values[after[..end].trim()]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Wildcard names in a pattern.
fn wildcards(pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = after[..end].split(',').next().unwrap_or_default().trim().to_owned();
        if !out.contains(&name) {
            out.push(name);
        }
        rest = &after[end + 1..];
    }
    out
}

/// Matches a file against an output pattern, giving the wildcard values (each non-empty and
/// consistent when a wildcard repeats).
fn matches(pattern: &str, file: &str) -> Option<BTreeMap<String, String>> {
    enum Seg {
        Lit(String),
        Wild(String),
    }
    let mut segs = Vec::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            segs.push(Seg::Lit(rest[..start].to_owned()));
        }
        let after = &rest[start + 1..];
        let end = after.find('}')?;
        segs.push(Seg::Wild(after[..end].split(',').next().unwrap_or_default().trim().to_owned()));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        segs.push(Seg::Lit(rest.to_owned()));
    }
    fn go(segs: &[Seg], file: &str, bound: &mut BTreeMap<String, String>) -> bool {
        match segs.split_first() {
            None => file.is_empty(),
            Some((Seg::Lit(lit), tail)) => file.strip_prefix(lit.as_str()).is_some_and(|r| go(tail, r, bound)),
            Some((Seg::Wild(name), tail)) => {
                if let Some(value) = bound.get(name).cloned() {
                    return file.strip_prefix(value.as_str()).is_some_and(|r| go(tail, r, bound));
                }
                for end in (1..=file.len()).filter(|&e| file.is_char_boundary(e)) {
                    bound.insert(name.clone(), file[..end].to_owned());
                    if go(tail, &file[end..], bound) {
                        return true;
                    }
                    bound.remove(name);
                }
                false
            }
        }
    }
    let mut bound = BTreeMap::new();
    go(&segs, file, &mut bound).then_some(bound)
}

#[derive(Debug, Clone)]
struct Job {
    inputs: Vec<String>,
    outputs: Vec<String>,
    wildcards: BTreeMap<String, String>,
}

fn build(name: &str, rules: &[Rule], workdir: Option<&str>) -> Result<Graph, Vec<GraphError>> {
    let mut errors = Vec::new();
    if rules.is_empty() {
        return Err(vec![err("", 0, "the Snakefile defines no rule")]);
    }
    for rule in rules {
        let outputs: Vec<&String> =
            rule.output.positional.iter().chain(rule.output.named.iter().map(|(_, v)| v)).collect();
        let out_wildcards: BTreeSet<String> = outputs.iter().flat_map(|o| wildcards(o)).collect();
        for input in rule.input.positional.iter().chain(rule.input.named.iter().map(|(_, v)| v)) {
            if rule.name == "all" {
                break;
            }
            for w in wildcards(input) {
                if !out_wildcards.contains(&w) {
                    errors.push(err(
                        &rule.name,
                        rule.line,
                        format!("wildcard {{{w}}} in input {input:?} is ambiguous: no output of the rule defines it"),
                    ));
                }
            }
        }
        if rule.name != "all" && rule.shell.is_none() {
            errors.push(err(&rule.name, rule.line, "the rule has no shell: command"));
        }
        if rule.name != "all" && outputs.is_empty() {
            errors.push(err(&rule.name, rule.line, "the rule has no output"));
        }
        let mut seen = BTreeSet::new();
        for o in &outputs {
            let ws = wildcards(o);
            for w in &ws {
                seen.insert(w.clone());
            }
        }
        for o in &outputs {
            let here: BTreeSet<String> = wildcards(o).into_iter().collect();
            if here != seen {
                errors.push(err(
                    &rule.name,
                    rule.line,
                    format!("output {o:?} does not use every wildcard of the rule's outputs ({seen:?})"),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let target_rule = rules.iter().find(|r| r.name == "all").unwrap_or(&rules[0]);
    let targets: Vec<String> = if target_rule.name == "all" {
        target_rule.input.positional.iter().chain(target_rule.input.named.iter().map(|(_, v)| v)).cloned().collect()
    } else {
        target_rule.output.positional.clone()
    };
    for t in &targets {
        if !wildcards(t).is_empty() {
            errors.push(err(
                &target_rule.name,
                target_rule.line,
                format!("target {t:?} has unresolved wildcards; name concrete files (expand() helps)"),
            ));
        }
    }
    if targets.is_empty() {
        errors.push(err(&target_rule.name, target_rule.line, "no target files: give rule all an input"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Resolve backwards from the targets: which rule makes each needed file.
    let mut jobs: BTreeMap<usize, Vec<Job>> = BTreeMap::new();
    let mut producer_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut stack: Vec<(String, Vec<String>)> = targets.iter().map(|t| (t.clone(), Vec::new())).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut count = 0usize;
    while let Some((file, chain)) = stack.pop() {
        if done.contains(&file) {
            continue;
        }
        let candidates: Vec<(usize, BTreeMap<String, String>)> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.name != "all")
            .filter_map(|(k, r)| {
                r.output
                    .positional
                    .iter()
                    .chain(r.output.named.iter().map(|(_, v)| v))
                    .find_map(|o| matches(o, &file))
                    .map(|w| (k, w))
            })
            .collect();
        match candidates.len() {
            0 => {
                done.insert(file);
                continue;
            }
            1 => {}
            _ => {
                let names: Vec<String> =
                    candidates.iter().map(|(k, _)| format!("{} (line {})", rules[*k].name, rules[*k].line)).collect();
                let first = &rules[candidates[0].0];
                return Err(vec![err(
                    &first.name,
                    first.line,
                    format!("ambiguous: file {file:?} can be made by rules {}", names.join(" and ")),
                )]);
            }
        }
        let (k, values) = candidates.into_iter().next().expect("one candidate");
        let rule = &rules[k];
        if chain.contains(&rule.name) {
            return Err(vec![err(&rule.name, rule.line, format!("cycle: {} -> {}", chain.join(" -> "), rule.name))]);
        }
        let outputs: Vec<String> = rule
            .output
            .positional
            .iter()
            .chain(rule.output.named.iter().map(|(_, v)| v))
            .map(|o| fill(o, &values))
            .collect();
        let inputs: Vec<String> = rule
            .input
            .positional
            .iter()
            .chain(rule.input.named.iter().map(|(_, v)| v))
            .map(|o| fill(o, &values))
            .collect();
        for o in &outputs {
            done.insert(o.clone());
            producer_of.insert(o.clone(), k);
        }
        count += 1;
        if count > MAX_JOBS {
            return Err(vec![err(&rule.name, rule.line, format!("the workflow expands to more than {MAX_JOBS} jobs"))]);
        }
        let mut next_chain = chain.clone();
        next_chain.push(rule.name.clone());
        for input in &inputs {
            stack.push((input.clone(), next_chain.clone()));
        }
        jobs.entry(k).or_default().push(Job { inputs, outputs, wildcards: values });
    }
    // Rule-level cycles that file resolution did not meet (a rule reading what a later job of
    // itself writes) are caught by graph validation.
    let mut nodes = Vec::new();
    for (k, rule_jobs) in &jobs {
        let rule = &rules[*k];
        let mut parents: BTreeSet<usize> = BTreeSet::new();
        for job in rule_jobs {
            for input in &job.inputs {
                if let Some(&p) = producer_of.get(input)
                    && p != *k
                {
                    parents.insert(p);
                }
            }
        }
        let mut sorted = rule_jobs.clone();
        sorted.sort_by(|a, b| a.outputs.cmp(&b.outputs));
        let mut command = String::new();
        if let Some(dir) = workdir {
            command.push_str(&format!("mkdir -p {} && cd {} && ", shell_quote(dir), shell_quote(dir)));
        }
        command.push_str("case {index} in\n");
        for (n, job) in sorted.iter().enumerate() {
            let shell = format_shell(rule.shell.as_deref().unwrap_or_default(), rule, job);
            // Output directories exist before the command runs, as Snakemake makes them.
            let dirs: BTreeSet<String> =
                job.outputs.iter().filter_map(|o| o.rsplit_once('/').map(|(d, _)| d.to_owned())).collect();
            let mkdir = if dirs.is_empty() {
                String::new()
            } else {
                format!("mkdir -p {} && ", dirs.iter().map(|d| shell_quote(d)).collect::<Vec<_>>().join(" "))
            };
            command.push_str(&format!("{}) {mkdir}{} ;;\n", n + 1, escape_braces(&shell)));
        }
        command.push_str("esac");
        let task = TaskTemplate {
            name: format!("{name}.{}", rule.name),
            command,
            n_jobs: Some(sorted.len() as u32),
            jobs: sorted.iter().map(|j| JobFiles { inputs: j.inputs.clone(), outputs: j.outputs.clone() }).collect(),
            ..TaskTemplate::default()
        };
        let mut node = Node::task(&rule.name, task);
        node.line = rule.line;
        node.after = parents
            .into_iter()
            .map(|p| Dependency { node: rules[p].name.clone(), level: DependencyLevel::File })
            .collect();
        node.outputs = vec!["files".into()];
        nodes.push(node);
    }
    Ok(Graph { name: name.to_owned(), inputs: BTreeMap::new(), nodes, outputs: BTreeMap::new(), driven: false })
}

fn shell_quote(text: &str) -> String {
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The server fills `{index}`-style placeholders in commands; literal braces are doubled.
fn escape_braces(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

/// Snakemake's shell formatting: `{input}`, `{input[0]}`, `{input.name}`, `{output…}`,
/// `{params.name}`, `{wildcards.name}`, `{threads}`; `{{`/`}}` are literal braces.
fn format_shell(shell: &str, rule: &Rule, job: &Job) -> String {
    let n_in = rule.input.positional.len();
    let n_out = rule.output.positional.len();
    let positional_in = &job.inputs[..n_in.min(job.inputs.len())];
    let positional_out = &job.outputs[..n_out.min(job.outputs.len())];
    let named_in: BTreeMap<&str, &str> = rule
        .input
        .named
        .iter()
        .map(|(k, _)| k.as_str())
        .zip(job.inputs[n_in.min(job.inputs.len())..].iter().map(String::as_str))
        .collect();
    let named_out: BTreeMap<&str, &str> = rule
        .output
        .named
        .iter()
        .map(|(k, _)| k.as_str())
        .zip(job.outputs[n_out.min(job.outputs.len())..].iter().map(String::as_str))
        .collect();
    let mut out = String::new();
    let mut rest = shell;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{{") {
            out.push('{');
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix("}}") {
            out.push('}');
            rest = r;
            continue;
        }
        if rest.starts_with('{')
            && let Some(end) = rest.find('}')
        {
            let expr = &rest[1..end];
            let value = match expr {
                "input" => Some(job.inputs.join(" ")),
                "output" => Some(job.outputs.join(" ")),
                "threads" => Some("1".to_owned()),
                "params" => Some(rule.params.positional.join(" ")),
                _ => {
                    let index = |list: &[String], text: &str| {
                        text.strip_prefix('[')
                            .and_then(|t| t.strip_suffix(']'))
                            .and_then(|t| t.parse::<usize>().ok())
                            .and_then(|i| list.get(i).cloned())
                    };
                    if let Some(r) = expr.strip_prefix("input") {
                        r.strip_prefix('.')
                            .and_then(|n| named_in.get(n).map(|s| (*s).to_owned()))
                            .or_else(|| index(positional_in, r))
                    } else if let Some(r) = expr.strip_prefix("output") {
                        r.strip_prefix('.')
                            .and_then(|n| named_out.get(n).map(|s| (*s).to_owned()))
                            .or_else(|| index(positional_out, r))
                    } else if let Some(n) = expr.strip_prefix("params.") {
                        rule.params.named.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                    } else if let Some(n) = expr.strip_prefix("wildcards.") {
                        job.wildcards.get(n).cloned()
                    } else {
                        None
                    }
                }
            };
            if let Some(value) = value {
                out.push_str(&value);
                rest = &rest[end + 1..];
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}
