//! Document loading: YAML/JSON, `$import`/`$include`, packed `$graph` documents with `#id`
//! fragments, SchemaDefRequirement, and normalisation of the short forms (map-form inputs,
//! `type?`/`type[]` shorthands, map-form requirements) so the engine sees one shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::{CwlError, Result};
use crate::fs::{path_to_uri, resolve_location};

/// Process classes this runner knows.
pub const CLASSES: &[&str] = &["CommandLineTool", "ExpressionTool", "Workflow", "Operation"];

const PRIMITIVES: &[&str] =
    &["null", "boolean", "int", "long", "float", "double", "string", "File", "Directory", "Any", "stdout", "stderr"];

/// A loaded, normalised process plus the named types it (and its sub-processes) define.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The normalised process object.
    pub process: Value,
    /// Named record/enum types by short name.
    pub schemas: HashMap<String, Value>,
}

/// Loads documents, caching each file's parsed text.
#[derive(Default)]
pub struct Loader {
    texts: HashMap<PathBuf, (String, Value)>,
    schemas: HashMap<String, Value>,
}

/// The last segment of an id: after the last `#`, then after the last `/`.
pub fn short(id: &str) -> String {
    let s = id.rsplit('#').next().unwrap_or(id);
    s.rsplit('/').next().unwrap_or(s).to_string()
}

/// 1-based line of the first occurrence of `key:` in `text` (0 when not found).
pub fn line_of(text: &str, key: &str) -> usize {
    let pat = format!("{key}:");
    let quoted = format!("\"{key}\"");
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&pat) || t.starts_with(&quoted)
        })
        .map(|i| i + 1)
        .unwrap_or(0)
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    graph: Option<&'a Map<String, Value>>,
    namespaces: Map<String, Value>,
    version: String,
}

impl Ctx<'_> {
    fn invalid(&self, field: &str, message: impl Into<String>) -> CwlError {
        CwlError::Invalid {
            doc: self.path.display().to_string(),
            line: line_of(self.text, field),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl Loader {
    /// A new loader.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&mut self, path: &Path) -> Result<(String, Value)> {
        if let Some(hit) = self.texts.get(path) {
            return Ok(hit.clone());
        }
        let text = std::fs::read_to_string(path).map_err(|e| CwlError::io(path, e))?;
        let mut value = parse_yaml(&text, path)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        resolve_imports(&mut value, &dir, 0)?;
        self.texts.insert(path.to_path_buf(), (text.clone(), value.clone()));
        Ok((text, value))
    }

    /// Loads `reference` (`path` or `path#id`) and normalises the process it names.
    pub fn load(&mut self, reference: &str) -> Result<Loaded> {
        let process = self.load_process(reference, None)?;
        Ok(Loaded { process, schemas: self.schemas.clone() })
    }

    fn load_process(&mut self, reference: &str, base: Option<&Path>) -> Result<Value> {
        let (file, frag) = match reference.split_once('#') {
            Some((f, fr)) => (f.to_string(), Some(fr.to_string())),
            None => (reference.to_string(), None),
        };
        let file = file.strip_prefix("file://").map(|s| s.to_string()).unwrap_or(file);
        let path = match base {
            Some(b) if !Path::new(&file).is_absolute() => b.join(&file),
            _ => PathBuf::from(&file),
        };
        let path = std::fs::canonicalize(&path).map_err(|e| CwlError::io(&path, e))?;
        let (text, doc) = self.read(&path)?;
        let version = doc.get("cwlVersion").and_then(Value::as_str).unwrap_or("v1.2").to_string();
        let mut namespaces = doc.get("$namespaces").and_then(Value::as_object).cloned().unwrap_or_default();
        if let Some(graph) = doc.get("$graph") {
            let Some(items) = graph.as_array() else {
                return Err(Ctx { path: &path, text: &text, graph: None, namespaces, version: version.clone() }
                    .invalid("$graph", "must be a list"));
            };
            let mut by_id = Map::new();
            for item in items {
                if let Some(id) = item.get("id").and_then(Value::as_str) {
                    by_id.insert(short_frag(id), item.clone());
                }
            }
            let want = frag.clone().unwrap_or_else(|| "main".to_string());
            let chosen = match by_id.get(&want) {
                Some(p) => p.clone(),
                None if frag.is_none() && items.len() == 1 => items[0].clone(),
                None => {
                    return Err(Ctx { path: &path, text: &text, graph: None, namespaces, version: version.clone() }
                        .invalid("$graph", format!("no process with id `#{want}`")));
                }
            };
            let ctx = Ctx { path: &path, text: &text, graph: Some(&by_id), namespaces, version: version.clone() };
            return self.normalize_process(chosen, &ctx);
        }
        if let Some(ns) = doc.get("$namespaces").and_then(Value::as_object) {
            namespaces = ns.clone();
        }
        let ctx = Ctx { path: &path, text: &text, graph: None, namespaces, version: version.clone() };
        let mut chosen = doc.clone();
        if let Some(fr) = frag {
            let id = doc.get("id").and_then(Value::as_str).map(short_frag);
            if id.as_deref() != Some(fr.as_str()) && id.is_some() {
                return Err(ctx.invalid("id", format!("no process with id `#{fr}`")));
            }
            chosen = doc;
        }
        self.normalize_process(chosen, &ctx)
    }

    fn normalize_process(&mut self, mut p: Value, ctx: &Ctx) -> Result<Value> {
        let Some(obj) = p.as_object_mut() else {
            return Err(ctx.invalid("class", "a process must be an object"));
        };
        let class = obj.get("class").and_then(Value::as_str).unwrap_or("").to_string();
        if !CLASSES.contains(&class.as_str()) {
            return Err(ctx.invalid("class", format!("unknown process class `{class}`")));
        }
        if let Some(v) = obj.get("cwlVersion").and_then(Value::as_str)
            && !matches!(
                v,
                "v1.0"
                    | "v1.1"
                    | "v1.2"
                    | "v1.1.0-dev1"
                    | "v1.2.0-dev1"
                    | "v1.2.0-dev2"
                    | "v1.2.0-dev3"
                    | "v1.2.0-dev4"
                    | "v1.2.0-dev5"
            )
        {
            return Err(ctx.invalid("cwlVersion", format!("unsupported CWL version `{v}`")));
        }
        let version = obj.get("cwlVersion").and_then(Value::as_str).unwrap_or(&ctx.version).to_string();
        let pre12 = version == "v1.0" || version.starts_with("v1.1");
        if pre12 {
            let steps_with_when = obj
                .get("steps")
                .map(|st| to_list(Some(st.clone()), "run"))
                .unwrap_or_default()
                .iter()
                .any(|st| st.get("when").is_some());
            if steps_with_when {
                return Err(ctx.invalid("when", format!("`when` needs cwlVersion v1.2 (this document is {version})")));
            }
            for key in ["requirements", "hints"] {
                for r in to_list(obj.get(key).cloned(), "class") {
                    if r.get("class").and_then(Value::as_str) == Some("ResourceRequirement") {
                        for f in ["coresMin", "coresMax", "ramMin", "ramMax"] {
                            if r.get(f).and_then(Value::as_f64).is_some_and(|x| x.fract() != 0.0) {
                                return Err(ctx.invalid(
                                    f,
                                    format!("fractional values need cwlVersion v1.2 (this document is {version})"),
                                ));
                            }
                        }
                    }
                }
            }
        }
        if version == "v1.0" {
            for key in ["inputs", "outputs"] {
                for param in to_list(obj.get(key).cloned(), "type") {
                    if let Some(Value::Array(sf)) = param.get("secondaryFiles")
                        && sf.iter().any(Value::is_object)
                    {
                        return Err(
                            ctx.invalid("secondaryFiles", "secondaryFiles objects need cwlVersion v1.1 or later")
                        );
                    }
                }
            }
        }
        let pid = obj.get("id").and_then(Value::as_str).map(short_frag).unwrap_or_default();
        let dir = ctx.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        obj.insert("__doc".into(), Value::String(ctx.path.display().to_string()));
        obj.insert("__base".into(), Value::String(dir.display().to_string()));
        for key in ["requirements", "hints"] {
            let list = to_list(obj.remove(key), "class");
            let mut out = Vec::new();
            for mut r in list {
                if !r.is_object() {
                    return Err(ctx.invalid(key, "each entry must be an object"));
                }
                if r.get("class").and_then(Value::as_str).is_none() && key == "requirements" {
                    return Err(ctx.invalid(key, "each requirement needs a `class`"));
                }
                if r.get("class").and_then(Value::as_str) == Some("SchemaDefRequirement")
                    && let Some(types) = r.get("types").and_then(Value::as_array).cloned()
                {
                    let mut normed = Vec::new();
                    for t in flatten(types) {
                        normed.push(self.norm_type(&t, ctx)?);
                    }
                    r["types"] = Value::Array(normed);
                }
                fix_locations(&mut r, &dir);
                out.push(r);
            }
            obj.insert(key.into(), Value::Array(out));
        }
        for key in ["inputs", "outputs"] {
            let Some(raw) = obj.remove(key) else {
                if class == "Workflow"
                    || class == "CommandLineTool"
                    || class == "ExpressionTool"
                    || class == "Operation"
                {
                    return Err(ctx.invalid(key, format!("a {class} needs `{key}`")));
                }
                continue;
            };
            if !(raw.is_array() || raw.is_object()) {
                return Err(ctx.invalid(key, "must be a list or a map"));
            }
            let list = to_list(Some(raw), "type");
            let mut out = Vec::new();
            for mut param in list {
                let Some(po) = param.as_object_mut() else {
                    return Err(ctx.invalid(key, "each parameter must be an object"));
                };
                let Some(id) = po.get("id").and_then(Value::as_str).map(short) else {
                    return Err(ctx.invalid(key, "each parameter needs an `id`"));
                };
                po.insert("id".into(), Value::String(id.clone()));
                match po.get("type") {
                    Some(t) => {
                        let t = self.norm_type(t, ctx)?;
                        po.insert("type".into(), t);
                    }
                    None if class != "Workflow" || key == "inputs" => {
                        return Err(ctx.invalid(&id, "parameter needs a `type`"));
                    }
                    None => {}
                }
                if let Some(d) = po.get_mut("default") {
                    fix_locations(d, &dir);
                }
                if let Some(src) = po.remove("outputSource") {
                    po.insert("outputSource".into(), norm_sources(&src, &pid));
                }
                if let Some(f) = po.get("format").cloned() {
                    po.insert("format".into(), expand_ns(&f, &ctx.namespaces));
                }
                if let Some(sf) = po.remove("secondaryFiles") {
                    po.insert("secondaryFiles".into(), norm_secondary(&sf));
                }
                out.push(param);
            }
            obj.insert(key.into(), Value::Array(out));
        }
        if class == "Workflow" {
            let Some(raw) = obj.remove("steps") else {
                return Err(ctx.invalid("steps", "a Workflow needs `steps`"));
            };
            let list = to_list(Some(raw), "run");
            let mut steps = Vec::new();
            for mut step in list {
                let Some(so) = step.as_object_mut() else {
                    return Err(ctx.invalid("steps", "each step must be an object"));
                };
                let Some(sid) = so.get("id").and_then(Value::as_str).map(short) else {
                    return Err(ctx.invalid("steps", "each step needs an `id`"));
                };
                so.insert("id".into(), Value::String(sid.clone()));
                let ins = to_list(so.remove("in"), "source");
                let mut nin = Vec::new();
                for mut i in ins {
                    let Some(io) = i.as_object_mut() else {
                        return Err(ctx.invalid("in", "each step input must be an object"));
                    };
                    let Some(iid) = io.get("id").and_then(Value::as_str).map(short) else {
                        return Err(ctx.invalid("in", format!("step `{sid}`: each input needs an `id`")));
                    };
                    io.insert("id".into(), Value::String(iid));
                    if let Some(src) = io.remove("source") {
                        io.insert("source".into(), norm_sources(&src, &pid));
                    }
                    if let Some(d) = io.get_mut("default") {
                        fix_locations(d, &dir);
                    }
                    nin.push(i);
                }
                so.insert("in".into(), Value::Array(nin));
                let outs: Vec<Value> = so
                    .remove("out")
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| match o {
                        Value::String(s) => Value::String(short(&s)),
                        Value::Object(m) => {
                            Value::String(m.get("id").and_then(Value::as_str).map(short).unwrap_or_default())
                        }
                        other => other,
                    })
                    .collect();
                so.insert("out".into(), Value::Array(outs));
                if let Some(sc) = so.remove("scatter") {
                    let list: Vec<Value> = match sc {
                        Value::String(s) => vec![Value::String(short(&s))],
                        Value::Array(a) => {
                            a.iter().filter_map(Value::as_str).map(|s| Value::String(short(s))).collect()
                        }
                        _ => vec![],
                    };
                    so.insert("scatter".into(), Value::Array(list));
                }
                for key in ["requirements", "hints"] {
                    let list = to_list(so.remove(key), "class");
                    let mut list2 = Vec::new();
                    for mut r in list {
                        fix_locations(&mut r, &dir);
                        list2.push(r);
                    }
                    so.insert(key.into(), Value::Array(list2));
                }
                let run = match so.remove("run") {
                    Some(Value::String(r)) => {
                        if let Some(frag) = r.strip_prefix('#') {
                            match ctx.graph.and_then(|g| g.get(frag)) {
                                Some(p) => self.normalize_process(p.clone(), ctx)?,
                                None => {
                                    return Err(
                                        ctx.invalid("run", format!("step `{sid}`: no process `{r}` in this document"))
                                    );
                                }
                            }
                        } else {
                            self.load_process(&r, Some(&dir))?
                        }
                    }
                    Some(p @ Value::Object(_)) => self.normalize_process(p, ctx)?,
                    _ => return Err(ctx.invalid("run", format!("step `{sid}` needs `run`"))),
                };
                so.insert("run".into(), run);
                steps.push(step);
            }
            obj.insert("steps".into(), Value::Array(steps));
        }
        if class == "CommandLineTool" {
            for key in ["baseCommand"] {
                if let Some(Value::String(s)) = obj.get(key).cloned() {
                    obj.insert(key.into(), json!([s]));
                }
            }
        }
        Ok(p)
    }

    fn norm_type(&mut self, t: &Value, ctx: &Ctx) -> Result<Value> {
        Ok(match t {
            Value::String(s) => {
                if let Some(inner) = s.strip_suffix('?') {
                    json!(["null", self.norm_type(&Value::String(inner.into()), ctx)?])
                } else if let Some(inner) = s.strip_suffix("[]") {
                    json!({"type": "array", "items": self.norm_type(&Value::String(inner.into()), ctx)?})
                } else if PRIMITIVES.contains(&s.as_str()) {
                    Value::String(s.clone())
                } else if let Some(x) = s
                    .strip_prefix("https://w3id.org/cwl/salad#")
                    .or(s.strip_prefix("http://www.w3.org/2001/XMLSchema#"))
                {
                    Value::String(x.to_string())
                } else {
                    Value::String(short(s))
                }
            }
            Value::Array(a) => {
                let mut out = Vec::new();
                for x in a {
                    out.push(self.norm_type(x, ctx)?);
                }
                Value::Array(out)
            }
            Value::Object(o) => {
                let mut o = o.clone();
                if let Some(Value::String(imp)) = o.get("$import").cloned() {
                    // A type brought in from another file.
                    let dir = ctx.path.parent().unwrap_or(Path::new("."));
                    let (file, frag) = imp.split_once('#').unwrap_or((imp.as_str(), ""));
                    let p = dir.join(file);
                    let (_, doc) = self.read(&p)?;
                    let list = doc.as_array().cloned().unwrap_or_else(|| vec![doc.clone()]);
                    for item in &list {
                        self.norm_type(item, ctx)?;
                    }
                    return Ok(Value::String(if frag.is_empty() { short(file) } else { short(frag) }));
                }
                let kind = o.get("type").and_then(Value::as_str).unwrap_or("").to_string();
                match kind.as_str() {
                    "array" => {
                        let items = o.get("items").cloned().unwrap_or(Value::Null);
                        o.insert("items".into(), self.norm_type(&items, ctx)?);
                    }
                    "record" => {
                        let fields = to_list(o.remove("fields"), "type");
                        let mut out = Vec::new();
                        for mut f in fields {
                            let name =
                                f.get("name").or(f.get("id")).and_then(Value::as_str).map(short).unwrap_or_default();
                            if let Some(fo) = f.as_object_mut() {
                                fo.insert("name".into(), Value::String(name));
                                let ft = fo.get("type").cloned().unwrap_or(Value::Null);
                                fo.insert("type".into(), self.norm_type(&ft, ctx)?);
                                if let Some(sf) = fo.remove("secondaryFiles") {
                                    fo.insert("secondaryFiles".into(), norm_secondary(&sf));
                                }
                            }
                            out.push(f);
                        }
                        o.insert("fields".into(), Value::Array(out));
                    }
                    "enum" => {
                        let syms: Vec<Value> = o
                            .get("symbols")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .filter_map(Value::as_str)
                            .map(|s| Value::String(short(s)))
                            .collect();
                        o.insert("symbols".into(), Value::Array(syms));
                    }
                    "" => return Err(ctx.invalid("type", "a type object needs `type`")),
                    other if PRIMITIVES.contains(&other) => {}
                    other => return Err(ctx.invalid("type", format!("unknown type `{other}`"))),
                }
                if let Some(name) = o.get("name").and_then(Value::as_str).map(short) {
                    o.insert("name".into(), Value::String(name.clone()));
                    self.schemas.insert(name, Value::Object(o.clone()));
                }
                Value::Object(o)
            }
            Value::Null => return Err(ctx.invalid("type", "missing type")),
            other => return Err(ctx.invalid("type", format!("invalid type `{other}`"))),
        })
    }
}

fn flatten(v: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for x in v {
        match x {
            Value::Array(a) => out.extend(flatten(a)),
            other => out.push(other),
        }
    }
    out
}

fn short_frag(id: &str) -> String {
    id.rsplit('#').next().unwrap_or(id).to_string()
}

/// Normalises a `source`/`outputSource` to `input` or `step/output` relative to process `pid`.
fn norm_sources(v: &Value, pid: &str) -> Value {
    let one = |s: &str| -> Value {
        let mut s = s.rsplit('#').next().unwrap_or(s).to_string();
        if !pid.is_empty() && s.starts_with(&format!("{pid}/")) {
            s = s[pid.len() + 1..].to_string();
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 2 {
            s = parts[parts.len() - 2..].join("/");
        }
        Value::String(s)
    };
    match v {
        Value::String(s) => one(s),
        Value::Array(a) => Value::Array(a.iter().filter_map(Value::as_str).map(one).collect()),
        other => other.clone(),
    }
}

fn norm_secondary(v: &Value) -> Value {
    let one = |x: &Value| -> Value {
        match x {
            Value::String(s) => {
                if let Some(p) = s.strip_suffix('?') {
                    json!({"pattern": p, "required": false})
                } else {
                    json!({"pattern": s})
                }
            }
            other => other.clone(),
        }
    };
    match v {
        Value::Array(a) => Value::Array(a.iter().map(one).collect()),
        other => Value::Array(vec![one(other)]),
    }
}

fn expand_ns(v: &Value, ns: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) => {
            if let Some((pre, rest)) = s.split_once(':')
                && let Some(base) = ns.get(pre).and_then(Value::as_str)
            {
                return Value::String(format!("{base}{rest}"));
            }
            v.clone()
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| expand_ns(x, ns)).collect()),
        other => other.clone(),
    }
}

/// Map form (`{id: value}`) to list form (`[{id, ...}]`); a non-object value goes under `key`.
pub fn to_list(v: Option<Value>, key: &str) -> Vec<Value> {
    match v {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a,
        Some(Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| {
                let id_key = if key == "class" { "class" } else { "id" };
                match v {
                    Value::Object(mut o) => {
                        o.insert(id_key.into(), Value::String(k));
                        Value::Object(o)
                    }
                    other => {
                        let mut o = Map::new();
                        o.insert(id_key.into(), Value::String(k));
                        if !other.is_null() {
                            o.insert(key.into(), other);
                        }
                        Value::Object(o)
                    }
                }
            })
            .collect(),
        Some(other) => vec![other],
    }
}

/// Makes relative `location`/`path` of File/Directory literals absolute `file://` URIs.
pub fn fix_locations(v: &mut Value, dir: &Path) {
    match v {
        Value::Object(o) => {
            let is_file = matches!(o.get("class").and_then(Value::as_str), Some("File" | "Directory"));
            if is_file {
                let loc = o.get("location").or(o.get("path")).and_then(Value::as_str).map(str::to_string);
                if let Some(loc) = loc
                    && !crate::expr::has_expr(&loc)
                {
                    let p = resolve_location(&loc, dir);
                    o.insert("location".into(), Value::String(path_to_uri(&p)));
                    o.remove("path");
                }
            }
            for (_, x) in o.iter_mut() {
                fix_locations(x, dir);
            }
        }
        Value::Array(a) => {
            for x in a {
                fix_locations(x, dir);
            }
        }
        _ => {}
    }
}

/// Parses YAML (or JSON) text into a JSON value, naming the document and line on error.
pub fn parse_yaml(text: &str, path: &Path) -> Result<Value> {
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| CwlError::Invalid {
        doc: path.display().to_string(),
        line: e.location().map(|l| l.line()).unwrap_or(0),
        field: "(document)".into(),
        message: format!("invalid YAML: {e}"),
    })
}

fn resolve_imports(v: &mut Value, dir: &Path, depth: usize) -> Result<()> {
    if depth > 50 {
        return Err(CwlError::Failed("$import nesting too deep".into()));
    }
    match v {
        Value::Object(o) => {
            if o.len() == 1 {
                if let Some(Value::String(f)) = o.get("$import") {
                    let p = dir.join(f.split('#').next().unwrap_or(f));
                    let text = std::fs::read_to_string(&p).map_err(|e| CwlError::io(&p, e))?;
                    let mut nv = parse_yaml(&text, &p)?;
                    resolve_imports(&mut nv, p.parent().unwrap_or(dir), depth + 1)?;
                    *v = nv;
                    return Ok(());
                }
                if let Some(Value::String(f)) = o.get("$include") {
                    let p = dir.join(f);
                    let text = std::fs::read_to_string(&p).map_err(|e| CwlError::io(&p, e))?;
                    *v = Value::String(text);
                    return Ok(());
                }
            }
            for (_, x) in o.iter_mut() {
                resolve_imports(x, dir, depth)?;
            }
        }
        Value::Array(a) => {
            for x in a {
                resolve_imports(x, dir, depth)?;
            }
        }
        _ => {}
    }
    Ok(())
}
