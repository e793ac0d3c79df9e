//! Runs processes: CommandLineTool (through an [`Executor`]), ExpressionTool, Workflow (step
//! links, linkMerge, pickValue, `when`, scatter, subworkflows, step valueFrom).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::error::{CwlError, Result};
use crate::exec::{Executor, JobSpec, Stage};
use crate::expr::{Scope, eval_value, has_expr};
use crate::fs::{checksum, fill_names, listing, load_contents, path_to_uri, split_name, uri_to_path};
use crate::types::{Schemas, class_of, conform, is_optional, matches, resolve};

/// Requirement classes this runner implements (others as requirements exit 33).
pub const SUPPORTED: &[&str] = &[
    "InlineJavascriptRequirement",
    "SchemaDefRequirement",
    "InitialWorkDirRequirement",
    "EnvVarRequirement",
    "ShellCommandRequirement",
    "ResourceRequirement",
    "SubworkflowFeatureRequirement",
    "ScatterFeatureRequirement",
    "MultipleInputFeatureRequirement",
    "StepInputExpressionRequirement",
    "LoadListingRequirement",
    "WorkReuse",
    "NetworkAccess",
    "InplaceUpdateRequirement",
    "ToolTimeLimit",
    "SoftwareRequirement",
];

/// Requirements and hints in force, least specific first.
#[derive(Debug, Clone, Default)]
pub struct Reqs {
    reqs: Vec<Value>,
    hints: Vec<Value>,
    /// `cwl:requirements` of the input object: these win over the documents'.
    pub overrides: Vec<Value>,
}

impl Reqs {
    /// The most specific requirement of `class`, else the most specific hint.
    pub fn get(&self, class: &str) -> Option<&Value> {
        let by = |v: &&Value| v.get("class").and_then(Value::as_str) == Some(class);
        self.overrides
            .iter()
            .rev()
            .find(by)
            .or_else(|| self.reqs.iter().rev().find(by))
            .or_else(|| self.hints.iter().rev().find(by))
    }

    /// Adds an object's `hints` and `requirements`.
    pub fn with(&self, obj: &Value) -> Reqs {
        let mut r = self.clone();
        if let Some(h) = obj.get("hints").and_then(Value::as_array) {
            r.hints.extend(h.iter().cloned());
        }
        if let Some(q) = obj.get("requirements").and_then(Value::as_array) {
            r.reqs.extend(q.iter().cloned());
        }
        r
    }
}

/// Runs processes with one executor.
pub struct Engine<'a> {
    /// Named types.
    pub schemas: Schemas,
    /// Where tools run.
    pub exec: &'a dyn Executor,
    /// Scratch dir for File literals.
    pub scratch: PathBuf,
    counter: AtomicU64,
    /// Work-dir paths that are in-place links (their targets are outputs).
    links: std::sync::Mutex<Vec<PathBuf>>,
    /// Every invocation key given so far (keys are unique in the run).
    used: std::sync::Mutex<HashSet<String>>,
    /// At most this many invocations run at once.
    parallel: usize,
    /// Invocations running now (bounded by `parallel`), and the condition their end signals.
    running: std::sync::Mutex<usize>,
    slot_freed: std::sync::Condvar,
    /// Set when an invocation failed: nothing new starts, the executor's live jobs are killed.
    cancelled: std::sync::atomic::AtomicBool,
}

/// Where a thread of the engine is in the run: the step path (step ids and scatter indexes),
/// the keys of the invocations feeding what runs now, and the keys of the invocations this
/// thread gave (a forked thread hands its own back to its parent). Thread-local, since steps and
/// scatter elements run on threads of their own.
#[derive(Debug, Default, Clone)]
struct Trail {
    path: Vec<String>,
    feeding: BTreeSet<String>,
    ran: Vec<String>,
}

thread_local! {
    static TRAIL: std::cell::RefCell<Trail> = std::cell::RefCell::new(Trail::default());
}

/// Stack of the engine's threads: expressions (QuickJS) and deep documents recurse.
const THREAD_STACK: usize = 16 * 1024 * 1024;

/// `[A-Za-z0-9._-]` only.
fn key_part(text: &str) -> String {
    let clean: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let clean = clean.trim_matches('_').to_owned();
    if clean.is_empty() { "step".to_owned() } else { clean }
}

fn s<'v>(v: &'v Value, k: &str) -> Option<&'v str> {
    v.get(k).and_then(Value::as_str)
}

fn arr<'v>(v: &'v Value, k: &str) -> &'v [Value] {
    v.get(k).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn failed(msg: impl Into<String>) -> CwlError {
    CwlError::Failed(msg.into())
}

impl<'a> Engine<'a> {
    /// An engine running tools on `exec`, writing File literals under `scratch`.
    pub fn new(schemas: Schemas, exec: &'a dyn Executor, scratch: PathBuf) -> Self {
        Self {
            schemas,
            exec,
            scratch,
            counter: AtomicU64::new(0),
            links: std::sync::Mutex::new(Vec::new()),
            used: std::sync::Mutex::new(HashSet::new()),
            parallel: 1,
            running: std::sync::Mutex::new(0),
            slot_freed: std::sync::Condvar::new(),
            cancelled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs up to `n` invocations at once (at least 1): ready steps and scatter elements run
    /// concurrently, each invocation holding one of the `n` slots while its executor runs it.
    pub fn with_parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    fn with_trail<R>(&self, f: impl FnOnce(&mut Trail) -> R) -> R {
        TRAIL.with(|t| f(&mut t.borrow_mut()))
    }

    /// This thread's trail for a thread forked from it: same path and feeding, no invocations.
    fn fork_trail(&self) -> Trail {
        self.with_trail(|t| Trail { path: t.path.clone(), feeding: t.feeding.clone(), ran: Vec::new() })
    }

    /// Runs `f` on a forked thread's trail; returns its result and the invocations it gave.
    fn in_fork<R>(&self, trail: Trail, f: impl FnOnce() -> R) -> (R, Vec<String>) {
        self.with_trail(|t| *t = trail);
        let r = f();
        let ran = self.with_trail(|t| std::mem::take(&mut t.ran));
        (r, ran)
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// An invocation failed: the run fails, so nothing new starts and the executor stops what
    /// it runs (the local executor kills its processes, the pilot executor its tasks).
    fn abort(&self) {
        if !self.cancelled.swap(true, Ordering::SeqCst) {
            self.exec.cancel();
        }
        let _guard = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.slot_freed.notify_all();
    }

    /// Waits for one of the `parallel` slots; none is given once the run is cancelled.
    fn slot(&self) -> Result<Slot<'_, 'a>> {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if self.is_cancelled() {
                return Err(CwlError::Cancelled);
            }
            if *running < self.parallel {
                *running += 1;
                return Ok(Slot(self));
            }
            running = self.slot_freed.wait(running).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Runs `f(0..n)` (scatter elements) on up to `parallel` threads, each element one level
    /// deeper in the step path; the results are in index order whatever order they end in. The
    /// first failure stops the rest (the run is aborted) and is returned once every thread ended.
    fn run_indexed<T: Send>(&self, n: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
        let workers = self.parallel.min(n);
        if workers <= 1 {
            return (0..n).map(|k| self.nested(k.to_string(), || f(k))).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Result<T>>>> = (0..n).map(|_| std::sync::Mutex::new(None)).collect();
        let base = self.fork_trail();
        let mut gave = Vec::new();
        let mut broken: Option<CwlError> = None;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let trail = base.clone();
                    let (next, results, f) = (&next, &results, &f);
                    std::thread::Builder::new().stack_size(THREAD_STACK).spawn_scoped(scope, move || {
                        self.in_fork(trail, || {
                            while !self.is_cancelled() {
                                let k = next.fetch_add(1, Ordering::SeqCst);
                                if k >= n {
                                    break;
                                }
                                let r = self.nested(k.to_string(), || f(k));
                                if r.is_err() {
                                    self.abort();
                                }
                                if let Ok(mut slot) = results[k].lock() {
                                    *slot = Some(r);
                                }
                            }
                        })
                    })
                })
                .collect();
            for h in handles {
                match h
                    .map_err(|e| failed(format!("cannot start a thread: {e}")))
                    .and_then(|h| h.join().map_err(|_| failed("a thread running scatter elements panicked")))
                {
                    Ok(((), ran)) => gave.extend(ran),
                    Err(e) => {
                        self.abort();
                        broken.get_or_insert(e);
                    }
                }
            }
        });
        self.with_trail(|t| t.ran.extend(gave));
        let mut out = Vec::with_capacity(n);
        let mut first_err: Option<CwlError> = broken;
        for cell in results {
            match cell.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) => keep_first(&mut first_err, e),
                None => keep_first(&mut first_err, CwlError::Cancelled),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Runs `f` one level deeper in the step path (a step, a scatter element), restoring the
    /// path afterwards whatever `f` returns.
    fn nested<R>(&self, part: String, f: impl FnOnce() -> R) -> R {
        self.with_trail(|t| t.path.push(part));
        let result = f();
        self.with_trail(|t| t.path.pop());
        result
    }

    /// A new invocation's key (the step path, made unique in the run) and its parents.
    fn next_key(&self, tool: &str) -> (String, Vec<String>) {
        let mut base = self.with_trail(|t| if t.path.is_empty() { key_part(tool) } else { t.path.join(".") });
        if base.len() > 90 {
            let cut = base.len() - 90;
            base = base[cut..].trim_start_matches(['.', '_', '-']).to_owned();
        }
        let key = {
            let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut key = base.clone();
            let mut n = 2;
            while used.contains(&key) {
                key = format!("{base}.{n}");
                n += 1;
            }
            used.insert(key.clone());
            key
        };
        self.with_trail(|t| {
            t.ran.push(key.clone());
            (key, t.feeding.iter().cloned().collect())
        })
    }

    fn scope(&self, reqs: &Reqs, inputs: &Value) -> Scope {
        let js = reqs.get("InlineJavascriptRequirement");
        let lib = js
            .map(|j| arr(j, "expressionLib").iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        Scope { inputs: inputs.clone(), this: Value::Null, runtime: Value::Null, lib, js: js.is_some() }
    }

    fn name(p: &Value) -> String {
        format!("{}#{}", s(p, "__doc").unwrap_or("?"), s(p, "id").unwrap_or(""))
    }

    /// Runs a process on an input object, returning its output object.
    pub fn run(&self, p: &Value, job: &Map<String, Value>, parent: &Reqs) -> Result<Map<String, Value>> {
        let saved = self.with_trail(std::mem::take);
        let out = self.run_inner(p, job, parent, true);
        self.with_trail(|t| *t = saved);
        out
    }

    /// `top`: the input object came from the user, so secondaryFiles are looked for on disk;
    /// inside a workflow they must have been passed along.
    fn run_inner(&self, p: &Value, job: &Map<String, Value>, parent: &Reqs, top: bool) -> Result<Map<String, Value>> {
        let reqs = parent.with(p);
        for r in arr(p, "requirements") {
            let class = s(r, "class").unwrap_or("");
            if class == "DockerRequirement" {
                return Err(CwlError::Unsupported(format!(
                    "{}: DockerRequirement (no container runtime here)",
                    Self::name(p)
                )));
            }
            if !SUPPORTED.contains(&class) {
                return Err(CwlError::Unsupported(format!("{}: {class}", Self::name(p))));
            }
        }
        let base = PathBuf::from(s(p, "__base").unwrap_or("."));
        let inputs = self.fill_inputs(p, job, &reqs, &base, top)?;
        match s(p, "class") {
            Some("CommandLineTool") => self.run_tool(p, inputs, &reqs),
            Some("ExpressionTool") => self.run_expression_tool(p, inputs, &reqs),
            Some("Workflow") => self.run_workflow(p, inputs, &reqs),
            other => Err(CwlError::Unsupported(format!("process class {other:?}"))),
        }
    }

    fn fill_inputs(
        &self,
        p: &Value,
        job: &Map<String, Value>,
        reqs: &Reqs,
        base: &Path,
        top: bool,
    ) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        let mut defaulted: Vec<String> = Vec::new();
        let ll = reqs.get("LoadListingRequirement").and_then(|r| s(r, "loadListing")).map(str::to_string);
        for param in arr(p, "inputs") {
            let id = s(param, "id").unwrap_or("").to_string();
            let t = param.get("type").cloned().unwrap_or(json!("Any"));
            let mut v = job.get(&id).cloned().unwrap_or(Value::Null);
            if v.is_null()
                && let Some(d) = param.get("default")
            {
                v = d.clone();
                defaulted.push(id.clone());
            }
            if v.is_null() && !is_optional(&t, &self.schemas) {
                return Err(CwlError::Input { field: id, message: format!("missing required input of type {t}") });
            }
            let mut v = conform(&t, v, &self.schemas, base, &id)?;
            check_formats(param.get("format"), &t, &v, &self.schemas, &id)?;
            let load = param.get("loadContents").and_then(Value::as_bool).unwrap_or(false)
                || param
                    .get("inputBinding")
                    .and_then(|b| b.get("loadContents"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            let pll = s(param, "loadListing").map(str::to_string).or(ll.clone());
            let sf = arr(param, "secondaryFiles").to_vec();
            walk_top_files(&mut v, &mut |o| {
                if load
                    && class_of(&Value::Object(o.clone())) == Some("File")
                    && !o.contains_key("contents")
                    && let Some(path) = o.get("path").and_then(Value::as_str)
                {
                    o.insert("contents".into(), Value::String(load_contents(Path::new(path))?));
                }
                if o.get("class").and_then(Value::as_str) == Some("Directory")
                    && !o.contains_key("listing")
                    && let Some(mode) = pll.as_deref()
                    && mode != "no_listing"
                    && let Some(path) = o.get("path").and_then(Value::as_str)
                {
                    o.insert("listing".into(), Value::Array(listing(Path::new(path), mode == "deep_listing", false)?));
                }
                Ok(())
            })?;
            let _ = &sf;
            out.insert(id, v);
        }
        // secondaryFiles expressions see the whole input object.
        let scope = self.scope(reqs, &Value::Object(out.clone()));
        for param in arr(p, "inputs") {
            let id = s(param, "id").unwrap_or("").to_string();
            let t = param.get("type").cloned().unwrap_or(json!("Any"));
            if let Some(v) = out.get_mut(&id) {
                self.discover(&t, arr(param, "secondaryFiles"), v, &scope, top || defaulted.contains(&id))?;
            }
        }
        Ok(out)
    }

    /// Adds secondaryFiles to the Files of `v`, following the type into records and arrays.
    fn discover(&self, t: &Value, sf: &[Value], v: &mut Value, scope: &Scope, top: bool) -> Result<()> {
        let t = resolve(t, &self.schemas).clone();
        match v {
            Value::Array(a) => {
                let members: Vec<Value> = match &t {
                    Value::Array(m) => m.clone(),
                    other => vec![other.clone()],
                };
                let items = members
                    .iter()
                    .find_map(|m| resolve(m, &self.schemas).get("items").cloned())
                    .unwrap_or(json!("Any"));
                for x in a {
                    self.discover(&items, sf, x, scope, top)?;
                }
            }
            Value::Object(o) if matches!(o.get("class").and_then(Value::as_str), Some("File")) && !sf.is_empty() => {
                self.add_secondary(o, sf, scope, true, top)?;
            }
            Value::Object(o) if !o.contains_key("class") => {
                let members: Vec<Value> = match &t {
                    Value::Array(m) => m.clone(),
                    other => vec![other.clone()],
                };
                for m in members {
                    let m = resolve(&m, &self.schemas).clone();
                    if m.get("type").and_then(Value::as_str) == Some("record") {
                        for f in arr(&m, "fields") {
                            let name = s(f, "name").unwrap_or("");
                            let ft = f.get("type").cloned().unwrap_or(Value::Null);
                            if let Some(fv) = o.get_mut(name) {
                                self.discover(&ft, arr(f, "secondaryFiles"), fv, scope, top)?;
                            }
                        }
                        break;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn add_secondary(
        &self,
        o: &mut Map<String, Value>,
        patterns: &[Value],
        scope: &Scope,
        must_exist: bool,
        search: bool,
    ) -> Result<()> {
        let Some(path) = o.get("path").and_then(Value::as_str).map(PathBuf::from) else { return Ok(()) };
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut have: Vec<Value> = o.get("secondaryFiles").and_then(Value::as_array).cloned().unwrap_or_default();
        for pat in patterns {
            let required = pat.get("required").map(|r| r.as_bool().unwrap_or(true)).unwrap_or(true);
            let pattern = pat.get("pattern").cloned().unwrap_or(Value::Null);
            let mut sc = scope.clone();
            sc.this = Value::Object(o.clone());
            let is_expr = pattern.as_str().is_some_and(has_expr);
            let evaluated = eval_value(&pattern, &sc).map_err(|e| CwlError::expr("secondaryFiles", e))?;
            let list = match evaluated {
                Value::Array(a) => a,
                Value::Null => vec![],
                other => vec![other],
            };
            for item in list {
                let mut fo = match item {
                    Value::String(pat) => {
                        let base = o.get("basename").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| {
                            path.file_name().map(|b| b.to_string_lossy().to_string()).unwrap_or_default()
                        });
                        let name = if is_expr { pat.clone() } else { secondary_name(&base, &pat) };
                        if !search {
                            let listed =
                                have.iter().any(|h| h.get("basename").and_then(Value::as_str) == Some(name.as_str()));
                            if !listed && required {
                                return Err(failed(format!(
                                    "missing required secondary file {name} of {base}: the step's source does not carry it"
                                )));
                            }
                            continue;
                        }
                        let p = dir.join(&name);
                        let mut m = Map::new();
                        m.insert("class".into(), json!(if p.is_dir() { "Directory" } else { "File" }));
                        m.insert("location".into(), Value::String(path_to_uri(&p)));
                        m
                    }
                    Value::Object(m) => m,
                    _ => continue,
                };
                let given = fo.get("basename").and_then(Value::as_str).map(str::to_string);
                fill_names(&mut fo, &dir);
                if let Some(b) = given {
                    let (r, x) = split_name(&b);
                    fo.insert("basename".into(), json!(b));
                    fo.insert("nameroot".into(), json!(r));
                    fo.insert("nameext".into(), json!(x));
                }
                let exists = fo.get("path").and_then(Value::as_str).is_some_and(|p| Path::new(p).exists())
                    || fo.contains_key("contents");
                if !exists {
                    if required && must_exist {
                        return Err(failed(format!(
                            "missing required secondary file {} of {}",
                            fo.get("path").and_then(Value::as_str).unwrap_or("?"),
                            path.display()
                        )));
                    }
                    continue;
                }
                let loc = fo.get("location").cloned();
                if !have.iter().any(|h| h.get("location") == loc.as_ref()) {
                    have.push(Value::Object(fo));
                }
            }
        }
        o.insert("secondaryFiles".into(), Value::Array(have));
        Ok(())
    }

    fn runtime(&self, reqs: &Reqs, inputs: &Value, outdir: &str, tmpdir: &str) -> Result<Value> {
        let mut rt =
            json!({"outdir": outdir, "tmpdir": tmpdir, "cores": 1, "ram": 256, "outdirSize": 1024, "tmpdirSize": 1024});
        if let Some(r) = reqs.get("ResourceRequirement") {
            let scope = self.scope(reqs, inputs);
            for (key, min, max) in [
                ("cores", "coresMin", "coresMax"),
                ("ram", "ramMin", "ramMax"),
                ("outdirSize", "outdirMin", "outdirMax"),
                ("tmpdirSize", "tmpdirMin", "tmpdirMax"),
            ] {
                let v = match (r.get(min), r.get(max)) {
                    (Some(m), _) => Some(m),
                    (None, Some(m)) => Some(m),
                    _ => None,
                };
                if let Some(v) = v {
                    let v =
                        eval_value(v, &scope).map_err(|e| CwlError::expr(format!("ResourceRequirement.{min}"), e))?;
                    if let Some(f) = v.as_f64() {
                        rt[key] = json!(f.ceil() as i64);
                    }
                }
            }
        }
        Ok(rt)
    }

    fn materialize_literals(&self, v: &mut Value) -> Result<()> {
        walk_files(v, &mut |o| {
            if !o.contains_key("location") && !o.contains_key("path") {
                let n = self.counter.fetch_add(1, Ordering::SeqCst);
                let dir = self.scratch.join(format!("lit{n}"));
                std::fs::create_dir_all(&dir).map_err(|e| CwlError::io(&dir, e))?;
                let base = o
                    .get("basename")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("literal{n}"));
                let p = dir.join(&base);
                if o.get("class").and_then(Value::as_str) == Some("File") {
                    let c = o.get("contents").and_then(Value::as_str).unwrap_or("");
                    std::fs::write(&p, c).map_err(|e| CwlError::io(&p, e))?;
                } else {
                    std::fs::create_dir_all(&p).map_err(|e| CwlError::io(&p, e))?;
                    if let Some(Value::Array(ls)) = o.get_mut("listing") {
                        for x in ls.iter_mut() {
                            let mut one = x.clone();
                            self.materialize_literals(&mut one)?;
                            if let Some(src) = one.get("path").and_then(Value::as_str) {
                                let name = one.get("basename").and_then(Value::as_str).unwrap_or("x");
                                crate::fs::copy_tree(Path::new(src), &p.join(name))?;
                            }
                        }
                    }
                }
                o.insert("location".into(), Value::String(path_to_uri(&p)));
                fill_names(o, &dir);
                // Listing entries now live under the new directory.
                if o.get("class").and_then(Value::as_str) == Some("Directory") {
                    o.insert("listing".into(), Value::Array(listing(&p, true, false)?));
                }
            }
            Ok(())
        })
    }

    /// Links each input File/Directory (with its secondaryFiles beside it) into its own staging
    /// directory under its `basename`, so paths match basenames the way tools expect.
    fn stage_inputs(&self, inputs: &mut Map<String, Value>) -> Result<()> {
        fn retarget(v: &mut Value, old: &str, new: &str) {
            if let Value::Object(o) = v {
                if let Some(p) = o.get("path").and_then(Value::as_str)
                    && let Some(rest) = p.strip_prefix(old)
                {
                    let np = format!("{new}{rest}");
                    o.insert("path".into(), Value::String(np.clone()));
                    if let Some(parent) = Path::new(&np).parent() {
                        o.insert("dirname".into(), Value::String(parent.display().to_string()));
                    }
                }
                for k in ["listing", "secondaryFiles"] {
                    if let Some(Value::Array(a)) = o.get_mut(k) {
                        for x in a {
                            retarget(x, old, new);
                        }
                    }
                }
            }
        }
        let mut top = |o: &mut Map<String, Value>| -> Result<()> {
            let Some(path) = o.get("path").and_then(Value::as_str).map(str::to_string) else { return Ok(()) };
            let n = self.counter.fetch_add(1, Ordering::SeqCst);
            let dir = self.scratch.join(format!("stg{n}"));
            std::fs::create_dir_all(&dir).map_err(|e| CwlError::io(&dir, e))?;
            let base = o.get("basename").and_then(Value::as_str).unwrap_or("x").to_string();
            let target = dir.join(&base);
            std::os::unix::fs::symlink(&path, &target).map_err(|e| CwlError::io(&target, e))?;
            let t = target.display().to_string();
            let mut me = Value::Object(std::mem::take(o));
            if let Value::Object(m) = &mut me {
                if let Some(Value::Array(ls)) = m.get_mut("listing") {
                    for x in ls {
                        retarget(x, &path, &t);
                    }
                }
                m.insert("path".into(), Value::String(t));
                m.insert("dirname".into(), Value::String(dir.display().to_string()));
                if let Some(Value::Array(sf)) = m.get_mut("secondaryFiles") {
                    for x in sf {
                        if let Value::Object(xo) = x
                            && let Some(sp) = xo.get("path").and_then(Value::as_str).map(str::to_string)
                        {
                            let sb = xo.get("basename").and_then(Value::as_str).unwrap_or("x").to_string();
                            let st = dir.join(&sb);
                            if !st.exists() {
                                std::os::unix::fs::symlink(&sp, &st).map_err(|e| CwlError::io(&st, e))?;
                            }
                            let stt = st.display().to_string();
                            let mut xv = Value::Object(std::mem::take(xo));
                            retarget(&mut xv, &sp, &stt);
                            *x = xv;
                        }
                    }
                }
                *o = std::mem::take(m);
            }
            Ok(())
        };
        for (_, v) in inputs.iter_mut() {
            walk_top_files(v, &mut top)?;
        }
        Ok(())
    }

    fn run_tool(&self, p: &Value, mut inputs: Map<String, Value>, reqs: &Reqs) -> Result<Map<String, Value>> {
        let name = Self::name(p);
        let mut iv = Value::Object(inputs.clone());
        self.materialize_literals(&mut iv)?;
        if let Value::Object(m) = iv {
            inputs = m;
        }
        self.stage_inputs(&mut inputs)?;
        let dirs = self.exec.allocate()?;
        let outdir = dirs.outdir.display().to_string();
        let tmpdir = dirs.tmpdir.display().to_string();
        let mut inputs_v = Value::Object(inputs.clone());
        let runtime = self.runtime(reqs, &inputs_v, &outdir, &tmpdir)?;
        let mut scope = self.scope(reqs, &inputs_v);
        scope.runtime = runtime.clone();
        let ctx = |f: &str| format!("{name}: {f}");

        // InitialWorkDirRequirement
        let mut stage = Vec::new();
        let inplace = reqs
            .get("InplaceUpdateRequirement")
            .and_then(|r| r.get("inplaceUpdate"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(iwd) = reqs.get("InitialWorkDirRequirement") {
            let mut renames: Vec<(String, String)> = Vec::new();
            let listing_v = match iwd.get("listing") {
                Some(Value::String(e)) => eval_value(&Value::String(e.clone()), &scope)
                    .map_err(|e| CwlError::expr(ctx("InitialWorkDirRequirement.listing"), e))?,
                Some(v) => v.clone(),
                None => Value::Array(vec![]),
            };
            let entries = match listing_v {
                Value::Array(a) => a,
                Value::Null => vec![],
                other => vec![other],
            };
            for entry in entries {
                self.stage_entry(entry, &scope, &dirs.outdir, inplace, &mut stage, &mut renames, &ctx)?;
            }
            // Inputs staged into the work dir are seen at their new paths.
            if !renames.is_empty() {
                walk_files(&mut inputs_v, &mut |o| {
                    if let Some(loc) = o.get("location").and_then(Value::as_str).map(str::to_string)
                        && let Some((_, new)) = renames.iter().find(|(old, _)| *old == loc)
                    {
                        o.insert("location".into(), Value::String(path_to_uri(Path::new(new))));
                        o.insert("path".into(), Value::String(new.clone()));
                        let dir = Path::new(new).parent().unwrap_or(Path::new("/")).to_path_buf();
                        fill_names(o, &dir);
                    }
                    Ok(())
                })?;
                scope.inputs = inputs_v.clone();
            }
        }

        // Command line.
        let mut bindings: Vec<Binding> = Vec::new();
        for (i, a) in arr(p, "arguments").iter().enumerate() {
            match a {
                Value::Object(b) => {
                    let pos = self.position(b.get("position"), &scope, &Value::Null, &ctx)?;
                    let mut sc = scope.clone();
                    sc.this = Value::Null;
                    let datum = match b.get("valueFrom") {
                        Some(vf) => eval_value(vf, &sc).map_err(|e| CwlError::expr(ctx("arguments"), e))?,
                        None => Value::Null,
                    };
                    bindings.push((vec![Key::Int(pos), Key::Int(i as i64)], gen_arg(b, &datum, true)));
                }
                other => {
                    let datum = eval_value(other, &scope).map_err(|e| CwlError::expr(ctx("arguments"), e))?;
                    bindings.push((vec![Key::Int(0), Key::Int(i as i64)], vec![(to_str(&datum), true)]));
                }
            }
        }
        for param in arr(p, "inputs") {
            let id = s(param, "id").unwrap_or("");
            let t = param.get("type").cloned().unwrap_or(Value::Null);
            let v = inputs_v.get(id).cloned().unwrap_or(Value::Null);
            self.bind_input(
                &t,
                param.get("inputBinding"),
                &v,
                vec![],
                Key::Str(id.to_string()),
                &scope,
                &mut bindings,
                &ctx,
            )?;
        }
        bindings.sort_by(|a, b| a.0.cmp(&b.0));
        let mut argv: Vec<(String, bool)> = arr(p, "baseCommand").iter().map(|x| (to_str(x), true)).collect();
        for (_, args) in bindings {
            argv.extend(args);
        }
        let command = if reqs.get("ShellCommandRequirement").is_some() {
            let line: Vec<String> = argv.iter().map(|(a, q)| if *q { shell_quote(a) } else { a.clone() }).collect();
            vec!["/bin/sh".to_string(), "-c".to_string(), line.join(" ")]
        } else {
            argv.into_iter().map(|(a, _)| a).collect()
        };

        // Streams.
        let eval_name = |k: &str| -> Result<Option<String>> {
            match p.get(k) {
                Some(v) => {
                    let r = eval_value(v, &scope).map_err(|e| CwlError::expr(ctx(k), e))?;
                    match r {
                        Value::Null => Ok(None),
                        Value::String(s) => Ok(Some(s)),
                        other => Ok(Some(to_str(&other))),
                    }
                }
                None => Ok(None),
            }
        };
        let stdin = eval_name("stdin")?.map(|s| crate::fs::uri_to_path(&s));
        let mut stdout = eval_name("stdout")?;
        let mut stderr = eval_name("stderr")?;
        for o in arr(p, "outputs") {
            match o.get("type").and_then(Value::as_str) {
                Some("stdout") if stdout.is_none() => {
                    stdout = Some(format!("stdout-{}", self.counter.fetch_add(1, Ordering::SeqCst)))
                }
                Some("stderr") if stderr.is_none() => {
                    stderr = Some(format!("stderr-{}", self.counter.fetch_add(1, Ordering::SeqCst)))
                }
                _ => {}
            }
        }
        for n in [&stdout, &stderr].into_iter().flatten() {
            if n.starts_with('/') || n.split('/').any(|c| c == "..") {
                return Err(failed(format!(
                    "{name}: stdout/stderr `{n}` must be a relative path inside the output directory"
                )));
            }
        }

        // Environment.
        let mut env = BTreeMap::new();
        env.insert("HOME".to_string(), outdir.clone());
        env.insert("TMPDIR".to_string(), tmpdir.clone());
        env.insert("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()));
        if let Some(ev) = reqs.get("EnvVarRequirement") {
            let defs = crate::load::to_list(ev.get("envDef").cloned(), "envValue");
            for d in defs {
                let k = s(&d, "envName").or(s(&d, "id")).unwrap_or("").to_string();
                let v = d.get("envValue").cloned().unwrap_or(Value::Null);
                let v = eval_value(&v, &scope).map_err(|e| CwlError::expr(ctx("EnvVarRequirement"), e))?;
                env.insert(k, to_str(&v));
            }
        }
        let timeout = match reqs.get("ToolTimeLimit").and_then(|t| t.get("timelimit")) {
            Some(v) => {
                let v = eval_value(v, &scope).map_err(|e| CwlError::expr(ctx("ToolTimeLimit"), e))?;
                match v.as_i64() {
                    Some(n) if n < 0 => return Err(failed(format!("{name}: timelimit must be >= 0"))),
                    Some(0) | None => None,
                    Some(n) => Some(Duration::from_secs(n as u64)),
                }
            }
            None => None,
        };
        let success: Vec<i64> = match p.get("successCodes").and_then(Value::as_array) {
            Some(a) => a.iter().filter_map(Value::as_i64).collect(),
            None => vec![0],
        };
        let perm: Vec<i64> = arr(p, "permanentFailCodes").iter().filter_map(Value::as_i64).collect();
        let temp: Vec<i64> = arr(p, "temporaryFailCodes").iter().filter_map(Value::as_i64).collect();
        let (key, parents) = self.next_key(s(p, "id").unwrap_or("tool"));
        let job = JobSpec {
            success_codes: success
                .iter()
                .filter(|c| **c != 0 && !perm.contains(c) && !temp.contains(c))
                .filter_map(|c| i32::try_from(*c).ok())
                .collect(),
            key,
            parents,
            name: name.clone(),
            command,
            env,
            stage,
            stdin,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            timeout,
            cores: runtime.get("cores").and_then(Value::as_u64).and_then(|c| u32::try_from(c).ok()).unwrap_or(1).max(1),
            ram_mb: reqs
                .get("ResourceRequirement")
                .filter(|r| r.get("ramMin").is_some() || r.get("ramMax").is_some())
                .and_then(|_| runtime.get("ram").and_then(Value::as_u64)),
        };
        if let Ok(mut links) = self.links.lock() {
            // Work dirs differ per invocation, so the links of all of them can be kept.
            links.extend(job.stage.iter().filter_map(|st| match st {
                Stage::Link { target, .. } => Some(dirs.outdir.join(target)),
                _ => None,
            }));
        }
        let outcome = {
            let _slot = self.slot()?;
            self.exec.run(&dirs, &job)
        };
        // Stopped because another invocation failed: that failure is the run's.
        let stopped = self.is_cancelled()
            && match &outcome {
                Err(_) => true,
                Ok(o) => o.timed_out || !success.contains(&(o.exit_code as i64)),
            };
        if stopped {
            return Err(CwlError::Cancelled);
        }
        let outcome = outcome?;
        if outcome.timed_out {
            return Err(failed(format!("{name}: killed after the time limit")));
        }
        let code = outcome.exit_code;
        if !success.contains(&(code as i64)) || perm.contains(&(code as i64)) || temp.contains(&(code as i64)) {
            return Err(failed(format!("{name}: command {:?} exited with code {code}", job.command)));
        }
        scope.runtime["exitCode"] = json!(code);
        self.collect_outputs(p, &dirs.outdir, &scope, stdout.as_deref(), stderr.as_deref())
    }

    #[allow(clippy::too_many_arguments)]
    fn stage_entry(
        &self,
        entry: Value,
        scope: &Scope,
        outdir: &Path,
        inplace: bool,
        stage: &mut Vec<Stage>,
        renames: &mut Vec<(String, String)>,
        ctx: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        let entry = match entry {
            Value::String(e) => {
                eval_value(&Value::String(e), scope).map_err(|e| CwlError::expr(ctx("InitialWorkDirRequirement"), e))?
            }
            other => other,
        };
        match entry {
            Value::Null => Ok(()),
            Value::Array(a) => {
                for x in a {
                    self.stage_entry(x, scope, outdir, inplace, stage, renames, ctx)?;
                }
                Ok(())
            }
            Value::Object(o) if o.contains_key("class") => {
                self.stage_file(&o, None, (false, inplace), outdir, stage, renames)
            }
            Value::Object(o) => {
                let writable = o.get("writable").and_then(Value::as_bool).unwrap_or(false);
                let ename = match o.get("entryname") {
                    Some(n) => Some(to_str(&eval_value(n, scope).map_err(|e| CwlError::expr(ctx("entryname"), e))?)),
                    None => None,
                };
                if let Some(n) = &ename
                    && (n.starts_with('/') || n.split('/').any(|c| c == ".."))
                    && !n.starts_with(&outdir.display().to_string())
                {
                    return Err(failed(format!("entryname `{n}` must stay inside the output directory")));
                }
                let raw = o.get("entry").cloned().unwrap_or(Value::Null);
                let is_expr = matches!(&raw, Value::String(s) if crate::expr::scan(s.trim(), scope.js).map(|v| v.len() == 1 && !matches!(v[0], crate::expr::Segment::Text(_))).unwrap_or(false));
                let val = match &raw {
                    Value::String(text) => crate::expr::interpolate_exact(text, scope),
                    other => Ok(other.clone()),
                }
                .map_err(|e| CwlError::expr(ctx("entry"), e))?;
                match val {
                    Value::Object(fo) if fo.contains_key("class") => {
                        self.stage_file(&fo, ename.as_deref(), (writable, inplace), outdir, stage, renames)
                    }
                    Value::Array(a) if a.iter().all(|x| class_of(x).is_some()) && !a.is_empty() => {
                        for x in a {
                            if let Value::Object(fo) = x {
                                self.stage_file(&fo, None, (writable, inplace), outdir, stage, renames)?;
                            }
                        }
                        Ok(())
                    }
                    Value::Null => Ok(()),
                    other => {
                        let contents = match other {
                            Value::String(s) => s,
                            v if is_expr => py_json(&v),
                            v => to_str(&v),
                        };
                        let Some(n) = ename else {
                            return Err(failed("InitialWorkDirRequirement: a string entry needs `entryname`"));
                        };
                        stage.push(Stage::Write { contents, target: PathBuf::from(n) });
                        Ok(())
                    }
                }
            }
            other => Err(failed(format!("InitialWorkDirRequirement: cannot stage {other}"))),
        }
    }

    fn stage_file(
        &self,
        fo: &Map<String, Value>,
        name: Option<&str>,
        (writable, inplace): (bool, bool),
        outdir: &Path,
        stage: &mut Vec<Stage>,
        renames: &mut Vec<(String, String)>,
    ) -> Result<()> {
        let from_loc = fo
            .get("path")
            .or(fo.get("location"))
            .and_then(Value::as_str)
            .and_then(|l| uri_to_path(l).file_name().map(|n| n.to_string_lossy().to_string()));
        let base = name
            .map(str::to_string)
            .or(fo.get("basename").and_then(Value::as_str).map(str::to_string))
            .or(from_loc)
            .unwrap_or_else(|| "entry".into());
        let target = PathBuf::from(&base);
        match fo.get("path").and_then(Value::as_str).or(fo.get("location").and_then(Value::as_str)) {
            Some(src) => {
                let src = uri_to_path(src);
                if writable && inplace {
                    stage.push(Stage::Link {
                        source: std::fs::canonicalize(&src).unwrap_or(src),
                        target: target.clone(),
                    });
                } else {
                    stage.push(Stage::Copy { source: src, target: target.clone(), writable: true });
                }
                let parent = target.parent().map(Path::to_path_buf).unwrap_or_default();
                for sf in fo.get("secondaryFiles").and_then(Value::as_array).cloned().unwrap_or_default() {
                    if let Some(sp) = sf.get("path").or(sf.get("location")).and_then(Value::as_str) {
                        let sn = sf.get("basename").and_then(Value::as_str).unwrap_or("x");
                        stage.push(Stage::Copy { source: uri_to_path(sp), target: parent.join(sn), writable: true });
                    }
                }
            }
            None if fo.get("class").and_then(Value::as_str) == Some("File") => {
                let contents = fo.get("contents").and_then(Value::as_str).unwrap_or("").to_string();
                stage.push(Stage::Write { contents, target: target.clone() });
            }
            None => {
                stage.push(Stage::Mkdir { target: target.clone() });
                for x in fo.get("listing").and_then(Value::as_array).cloned().unwrap_or_default() {
                    if let Value::Object(xo) = x {
                        let n = xo.get("basename").and_then(Value::as_str).unwrap_or("x");
                        self.stage_file(
                            &xo,
                            Some(&format!("{base}/{n}")),
                            (writable, inplace),
                            outdir,
                            stage,
                            renames,
                        )?;
                    }
                }
            }
        }
        if let Some(loc) = fo.get("location").and_then(Value::as_str) {
            let abs = if target.is_absolute() { target.clone() } else { outdir.join(&target) };
            renames.push((loc.to_string(), abs.display().to_string()));
        }
        Ok(())
    }

    fn position(&self, pos: Option<&Value>, scope: &Scope, this: &Value, ctx: &dyn Fn(&str) -> String) -> Result<i64> {
        match pos {
            None => Ok(0),
            Some(Value::Number(n)) => Ok(n.as_i64().unwrap_or(0)),
            Some(v) => {
                let mut sc = scope.clone();
                sc.this = this.clone();
                let r = eval_value(v, &sc).map_err(|e| CwlError::expr(ctx("position"), e))?;
                Ok(r.as_i64().unwrap_or(0))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn bind_input(
        &self,
        t: &Value,
        binding: Option<&Value>,
        v: &Value,
        lead: Vec<Key>,
        tail: Key,
        scope: &Scope,
        out: &mut Vec<Binding>,
        ctx: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        let t = resolve(t, &self.schemas).clone();
        // Unions: bind with the member that matches.
        if let Value::Array(members) = &t {
            if v.is_null() {
                return Ok(());
            }
            if let Some(m) = members.iter().find(|m| matches(m, v, &self.schemas)) {
                return self.bind_input(m, binding, v, lead, tail, scope, out, ctx);
            }
            return Ok(());
        }
        let mut my_key = lead.clone();
        if let Some(b) = binding.and_then(Value::as_object) {
            my_key.push(Key::Int(self.position(b.get("position"), scope, v, ctx)?));
            my_key.push(tail.clone());
            let datum = match b.get("valueFrom") {
                Some(vf) => {
                    let mut sc = scope.clone();
                    sc.this = v.clone();
                    eval_value(vf, &sc).map_err(|e| CwlError::expr(ctx("valueFrom"), e))?
                }
                None => v.clone(),
            };
            let args = gen_arg(b, &datum, b.contains_key("valueFrom"));
            out.push((my_key.clone(), args));
        } else {
            my_key.push(Key::Int(0));
            my_key.push(tail.clone());
        }
        if let Value::Object(to) = &t {
            match to.get("type").and_then(Value::as_str) {
                Some("array") => {
                    let items = to.get("items").cloned().unwrap_or(Value::Null);
                    let item_binding = to.get("inputBinding").cloned().or_else(|| {
                        binding
                            .filter(|b| b.get("itemSeparator").is_none() && b.get("valueFrom").is_none())
                            .map(|_| json!({}))
                    });
                    if let Some(a) = v.as_array() {
                        for (n, x) in a.iter().enumerate() {
                            let mut l = my_key.clone();
                            l.push(Key::Int(n as i64));
                            self.bind_input(&items, item_binding.as_ref(), x, l, tail.clone(), scope, out, ctx)?;
                        }
                    }
                }
                Some("record") => {
                    if binding.is_some_and(|b| b.get("valueFrom").is_some()) {
                        return Ok(());
                    }
                    if let Some(o) = v.as_object() {
                        for f in to.get("fields").and_then(Value::as_array).cloned().unwrap_or_default() {
                            let fname = s(&f, "name").unwrap_or("").to_string();
                            let ft = f.get("type").cloned().unwrap_or(Value::Null);
                            let fv = o.get(&fname).cloned().unwrap_or(Value::Null);
                            let l = if binding.is_some() { my_key.clone() } else { lead.clone() };
                            self.bind_input(&ft, f.get("inputBinding"), &fv, l, Key::Str(fname), scope, out, ctx)?;
                        }
                    }
                }
                _ => {
                    if to.contains_key("inputBinding") && binding.is_none() {
                        return self.bind_input(
                            &Value::String(to.get("type").and_then(Value::as_str).unwrap_or("Any").into()),
                            to.get("inputBinding"),
                            v,
                            lead,
                            tail,
                            scope,
                            out,
                            ctx,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn collect_outputs(
        &self,
        p: &Value,
        outdir: &Path,
        scope: &Scope,
        stdout: Option<&str>,
        stderr: Option<&str>,
    ) -> Result<Map<String, Value>> {
        let name = Self::name(p);
        let cwl_json = outdir.join("cwl.output.json");
        if cwl_json.exists() {
            let text = std::fs::read_to_string(&cwl_json).map_err(|e| CwlError::io(&cwl_json, e))?;
            let mut v: Value =
                serde_json::from_str(&text).map_err(|e| failed(format!("{}: {e}", cwl_json.display())))?;
            walk_files(&mut v, &mut |o| {
                fill_names(o, outdir);
                finish_file(o)
            })?;
            let mut out = Map::new();
            let obj = v.as_object().cloned().unwrap_or_default();
            for param in arr(p, "outputs") {
                let id = s(param, "id").unwrap_or("").to_string();
                let val = obj.get(&id).cloned().unwrap_or(Value::Null);
                let t = param.get("type").cloned().unwrap_or(json!("Any"));
                let val =
                    conform(&t, val, &self.schemas, outdir, &id).map_err(|e| failed(format!("{name}: output {e}")))?;
                out.insert(id, val);
            }
            return Ok(out);
        }
        let mut out = Map::new();
        for param in arr(p, "outputs") {
            let id = s(param, "id").unwrap_or("").to_string();
            let t = param.get("type").cloned().unwrap_or(json!("Any"));
            let v = self.collect_one(&t, param, outdir, scope, stdout, stderr, &name)?;
            let v = conform(&t, v, &self.schemas, outdir, &id).map_err(|e| failed(format!("{name}: output {e}")))?;
            out.insert(id, v);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn collect_one(
        &self,
        t: &Value,
        param: &Value,
        outdir: &Path,
        scope: &Scope,
        stdout: Option<&str>,
        stderr: Option<&str>,
        name: &str,
    ) -> Result<Value> {
        let ctx = |f: &str| format!("{name}: output {}: {f}", s(param, "id").or(s(param, "name")).unwrap_or(""));
        let rt = resolve(t, &self.schemas).clone();
        let binding = param.get("outputBinding").cloned().unwrap_or(Value::Null);
        let glob_v = match rt.as_str() {
            Some("stdout") => stdout.map(|s| json!(s)),
            Some("stderr") => stderr.map(|s| json!(s)),
            _ => binding.get("glob").cloned(),
        };
        if binding.is_null()
            && glob_v.is_none()
            && let Some(to) = rt.as_object()
            && to.get("type").and_then(Value::as_str) == Some("record")
        {
            let mut rec = Map::new();
            for f in to.get("fields").and_then(Value::as_array).cloned().unwrap_or_default() {
                let ft = f.get("type").cloned().unwrap_or(Value::Null);
                let fname = s(&f, "name").unwrap_or("").to_string();
                rec.insert(fname, self.collect_one(&ft, &f, outdir, scope, stdout, stderr, name)?);
            }
            return Ok(Value::Object(rec));
        }
        let mut files: Vec<Value> = Vec::new();
        let mut globbed = false;
        if let Some(g) = glob_v {
            globbed = true;
            let g = eval_value(&g, scope).map_err(|e| CwlError::expr(ctx("glob"), e))?;
            let pats: Vec<String> = match g {
                Value::Array(a) => a.iter().map(to_str).collect(),
                Value::Null => vec![],
                other => vec![to_str(&other)],
            };
            let want_dir = type_wants(&rt, "Directory", &self.schemas);
            let want_file = type_wants(&rt, "File", &self.schemas) || !want_dir;
            for pat in pats {
                let full = if pat.starts_with('/') { pat.clone() } else { format!("{}/{}", outdir.display(), pat) };
                let mut hits: Vec<PathBuf> = glob::glob(&full)
                    .map_err(|e| failed(format!("{}: bad glob `{pat}`: {e}", ctx("glob"))))?
                    .filter_map(|r| r.ok())
                    .collect();
                hits.sort();
                let real_out = std::fs::canonicalize(outdir).unwrap_or_else(|_| outdir.to_path_buf());
                for mut h in hits {
                    let linked = self.links.lock().map(|l| l.contains(&h)).unwrap_or(false);
                    if h.is_symlink() && linked {
                        h = std::fs::canonicalize(&h).map_err(|e| CwlError::io(&h, e))?;
                    } else if h.is_symlink() && std::fs::canonicalize(&h).is_ok_and(|r| !r.starts_with(&real_out)) {
                        return Err(failed(format!(
                            "{}: {} is a symlink to outside the output directory",
                            ctx("glob"),
                            h.display()
                        )));
                    }
                    let is_dir = h.is_dir();
                    if binding.get("outputEval").is_none() && ((is_dir && !want_dir) || (!is_dir && !want_file)) {
                        return Err(failed(format!(
                            "{}: {} is a {}, the output type wants {}",
                            ctx("glob"),
                            h.display(),
                            if is_dir { "directory" } else { "file" },
                            if is_dir { "a File" } else { "a Directory" }
                        )));
                    }
                    let mut o = Map::new();
                    o.insert("class".into(), json!(if is_dir { "Directory" } else { "File" }));
                    o.insert("location".into(), Value::String(path_to_uri(&h)));
                    fill_names(&mut o, outdir);
                    if !is_dir
                        && (binding.get("loadContents").and_then(Value::as_bool).unwrap_or(false)
                            || param.get("loadContents").and_then(Value::as_bool).unwrap_or(false))
                    {
                        o.insert("contents".into(), Value::String(load_contents(&h)?));
                    }
                    finish_file(&mut o)?;
                    files.push(Value::Object(o));
                }
            }
        }
        let mut v = Value::Array(files);
        if let Some(oe) = binding.get("outputEval") {
            let mut sc = scope.clone();
            sc.this = v.clone();
            v = eval_value(oe, &sc).map_err(|e| CwlError::expr(ctx("outputEval"), e))?;
        } else if globbed && !type_is_array(&rt, &self.schemas) {
            v = match v {
                Value::Array(mut a) if a.len() == 1 => a.remove(0),
                Value::Array(a) if a.is_empty() => Value::Null,
                other => other,
            };
        } else if !globbed {
            v = Value::Null;
        }
        let sf = arr(param, "secondaryFiles").to_vec();
        let fmt = param.get("format").cloned();
        let mut sc = scope.clone();
        walk_top_files(&mut v, &mut |o| {
            fill_names(o, outdir);
            if o.get("path").is_some() {
                finish_file(o)?;
            }
            if !sf.is_empty() && o.get("class").and_then(Value::as_str) == Some("File") {
                self.add_secondary(o, &sf, &sc, false, true)?;
                if let Some(Value::Array(list)) = o.get_mut("secondaryFiles") {
                    for x in list.iter_mut() {
                        if let Value::Object(xo) = x {
                            finish_file(xo)?;
                        }
                    }
                }
            }
            if let Some(f) = &fmt {
                sc.this = Value::Object(o.clone());
                let fv = eval_value(f, &sc).map_err(|e| CwlError::expr("format", e))?;
                o.insert("format".into(), fv);
            }
            Ok(())
        })?;
        Ok(v)
    }

    fn run_expression_tool(&self, p: &Value, inputs: Map<String, Value>, reqs: &Reqs) -> Result<Map<String, Value>> {
        let name = Self::name(p);
        let scope = self.scope(reqs, &Value::Object(inputs));
        let e = p.get("expression").cloned().unwrap_or(Value::Null);
        let v = eval_value(&e, &scope).map_err(|e| CwlError::expr(format!("{name}: expression"), e))?;
        let Value::Object(obj) = v else {
            return Err(failed(format!("{name}: expression must return an object, got {v}")));
        };
        let base = PathBuf::from(s(p, "__base").unwrap_or("."));
        let mut out = Map::new();
        for param in arr(p, "outputs") {
            let id = s(param, "id").unwrap_or("").to_string();
            let t = param.get("type").cloned().unwrap_or(json!("Any"));
            let mut val = obj.get(&id).cloned().unwrap_or(Value::Null);
            walk_files(&mut val, &mut |o| {
                if o.contains_key("location") || o.contains_key("path") {
                } else if let Some(b) = o.get("basename").and_then(Value::as_str).map(str::to_string) {
                    let (r, x) = split_name(&b);
                    o.insert("nameroot".into(), json!(r));
                    o.insert("nameext".into(), json!(x));
                }
                Ok(())
            })?;
            let val = conform(&t, val, &self.schemas, &base, &id).map_err(|e| failed(format!("{name}: output {e}")))?;
            out.insert(id, val);
        }
        Ok(out)
    }

    fn run_workflow(&self, p: &Value, inputs: Map<String, Value>, reqs: &Reqs) -> Result<Map<String, Value>> {
        let name = Self::name(p);
        let mut state: HashMap<String, Value> = inputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // The invocations behind each value: the workflow's inputs come from what fed the
        // workflow; a step's outputs from the invocations it ran (or, running none, from what
        // fed it).
        let inherited = self.with_trail(|t| t.feeding.clone());
        let mut made_by: HashMap<String, BTreeSet<String>> =
            inputs.keys().map(|k| (k.clone(), inherited.clone())).collect();
        let steps = arr(p, "steps").to_vec();
        let mut started = vec![false; steps.len()];
        let mut done = vec![false; steps.len()];
        let mut first_err: Option<CwlError> = None;
        // Every step whose sources are all there runs at once, on a thread of its own (its
        // invocations wait for the engine's slots); each end may make more steps ready. A failure
        // aborts the run, and the steps still running are awaited before it is returned.
        type Ended = (usize, Result<Map<String, Value>>, Vec<String>, BTreeSet<String>);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<Ended>();
            let mut running = 0usize;
            loop {
                if first_err.is_none() && !self.is_cancelled() {
                    for (i, step) in steps.iter().enumerate() {
                        if started[i] {
                            continue;
                        }
                        let ready = arr(step, "in")
                            .iter()
                            .all(|inp| sources(inp, "source").iter().all(|src| state.contains_key(src)));
                        if !ready {
                            continue;
                        }
                        started[i] = true;
                        let sid = s(step, "id").unwrap_or("");
                        let feeding: BTreeSet<String> = arr(step, "in")
                            .iter()
                            .flat_map(|inp| sources(inp, "source"))
                            .flat_map(|src| made_by.get(&src).cloned().unwrap_or_default())
                            .collect();
                        let mut trail = self.fork_trail();
                        trail.feeding = feeding.clone();
                        let state_now = state.clone();
                        let tx = tx.clone();
                        let name = &name;
                        let spawned =
                            std::thread::Builder::new().stack_size(THREAD_STACK).spawn_scoped(scope, move || {
                                let (outs, ran) = self.in_fork(trail, || {
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        self.nested(key_part(sid), || self.run_step(step, &state_now, reqs, name))
                                    }))
                                    .unwrap_or_else(|_| Err(failed(format!("{name}: step `{sid}` panicked"))))
                                });
                                let _ = tx.send((i, outs, ran, feeding));
                            });
                        match spawned {
                            Ok(_) => running += 1,
                            Err(e) => {
                                self.abort();
                                keep_first(&mut first_err, failed(format!("{name}: cannot start a thread: {e}")));
                            }
                        }
                    }
                }
                if running == 0 {
                    break;
                }
                // This side keeps a sender, so this waits for the next step to end.
                let Ok((i, outs, ran, feeding)) = rx.recv() else { break };
                running -= 1;
                self.with_trail(|t| t.ran.extend(ran.iter().cloned()));
                match outs {
                    Err(e) => {
                        self.abort();
                        keep_first(&mut first_err, e);
                    }
                    Ok(outs) => {
                        let sid = s(&steps[i], "id").unwrap_or("");
                        let produced: BTreeSet<String> =
                            if ran.is_empty() { feeding } else { ran.into_iter().collect() };
                        for o in arr(&steps[i], "out").iter().filter_map(Value::as_str) {
                            state.insert(format!("{sid}/{o}"), outs.get(o).cloned().unwrap_or(Value::Null));
                            made_by.insert(format!("{sid}/{o}"), produced.clone());
                        }
                        done[i] = true;
                    }
                }
            }
        });
        if let Some(e) = first_err {
            return Err(e);
        }
        if !done.iter().all(|d| *d) {
            let stuck: Vec<&str> =
                steps.iter().zip(&done).filter(|(_, d)| !**d).filter_map(|(s2, _)| s(s2, "id")).collect();
            return Err(failed(format!("{name}: steps {stuck:?} wait for sources that no step produces")));
        }
        let mut out = Map::new();
        for param in arr(p, "outputs") {
            let id = s(param, "id").unwrap_or("").to_string();
            let srcs = sources(param, "outputSource");
            let v = merge(param, &srcs, &state).map_err(|e| failed(format!("{name}: output `{id}`: {e}")))?;
            let v = pick(param, v).map_err(|e| failed(format!("{name}: output `{id}`: {e}")))?;
            let t = param.get("type").cloned().unwrap_or(json!("Any"));
            let v = conform(&t, v, &self.schemas, Path::new("/"), &id)
                .map_err(|e| failed(format!("{name}: output {e}")))?;
            out.insert(id, v);
        }
        Ok(out)
    }

    fn run_step(
        &self,
        step: &Value,
        state: &HashMap<String, Value>,
        reqs: &Reqs,
        wf: &str,
    ) -> Result<Map<String, Value>> {
        let sid = s(step, "id").unwrap_or("").to_string();
        let ctx = |f: &str| format!("{wf}: step `{sid}`: {f}");
        let step_reqs = reqs.with(step);
        let run = step.get("run").cloned().unwrap_or(Value::Null);
        let mut vals = Map::new();
        for inp in arr(step, "in") {
            let id = s(inp, "id").unwrap_or("").to_string();
            let srcs = sources(inp, "source");
            let mut v =
                if srcs.is_empty() { Value::Null } else { merge(inp, &srcs, state).map_err(|e| failed(ctx(&e)))? };
            v = pick(inp, v).map_err(|e| failed(ctx(&e)))?;
            if inp.get("loadContents").and_then(Value::as_bool).unwrap_or(false) {
                walk_top_files(&mut v, &mut |o| {
                    if let Some(p) = o.get("path").and_then(Value::as_str).map(PathBuf::from) {
                        o.insert("contents".into(), Value::String(load_contents(&p)?));
                    }
                    Ok(())
                })?;
            }
            if v.is_null()
                && let Some(d) = inp.get("default")
            {
                v = d.clone();
                let base = PathBuf::from(s(&run, "__base").unwrap_or("/"));
                walk_files(&mut v, &mut |o| {
                    fill_names(o, &base);
                    Ok(())
                })?;
            }
            vals.insert(id, v);
        }
        let scatter: Vec<String> = arr(step, "scatter").iter().filter_map(Value::as_str).map(str::to_string).collect();
        let method = s(step, "scatterMethod").unwrap_or("dotproduct").to_string();
        let run_one = |job: Map<String, Value>| -> Result<Option<Map<String, Value>>> {
            // valueFrom, evaluated after scattering, sees the other inputs before valueFrom.
            let mut job2 = job.clone();
            let has_vf = arr(step, "in").iter().any(|i| i.get("valueFrom").is_some());
            if has_vf {
                let scope0 = self.scope(&step_reqs, &Value::Object(job.clone()));
                for inp in arr(step, "in") {
                    if let Some(vf) = inp.get("valueFrom") {
                        let id = s(inp, "id").unwrap_or("");
                        let mut sc = scope0.clone();
                        sc.this = job.get(id).cloned().unwrap_or(Value::Null);
                        let v = eval_value(vf, &sc).map_err(|e| CwlError::expr(ctx("valueFrom"), e))?;
                        job2.insert(id.to_string(), v);
                    }
                }
            }
            if let Some(w) = step.get("when") {
                let sc = self.scope(&step_reqs, &Value::Object(job2.clone()));
                let c = eval_value(w, &sc).map_err(|e| CwlError::expr(ctx("when"), e))?;
                match c {
                    Value::Bool(true) => {}
                    Value::Bool(false) => return Ok(None),
                    other => return Err(failed(ctx(&format!("`when` must evaluate to true or false, got {other}")))),
                }
            }
            let out = self.run_inner(&run, &job2, &step_reqs, false)?;
            Ok(Some(out))
        };
        let outs: Vec<String> = arr(step, "out").iter().filter_map(Value::as_str).map(str::to_string).collect();
        let nulls = || outs.iter().map(|o| (o.clone(), Value::Null)).collect::<Map<String, Value>>();
        if scatter.is_empty() {
            return Ok(run_one(vals)?.unwrap_or_else(nulls));
        }
        for sname in &scatter {
            if !vals.get(sname).is_some_and(Value::is_array) {
                return Err(failed(ctx(&format!("scatter input `{sname}` is not an array"))));
            }
        }
        let lists: Vec<Vec<Value>> =
            scatter.iter().map(|n| vals.get(n).and_then(Value::as_array).cloned().unwrap_or_default()).collect();
        let collect = |results: Vec<Option<Map<String, Value>>>| -> Map<String, Value> {
            outs.iter()
                .map(|o| {
                    (
                        o.clone(),
                        Value::Array(
                            results
                                .iter()
                                .map(|r| r.as_ref().and_then(|m| m.get(o).cloned()).unwrap_or(Value::Null))
                                .collect(),
                        ),
                    )
                })
                .collect()
        };
        match method.as_str() {
            "dotproduct" => {
                let n = lists[0].len();
                if lists.iter().any(|l| l.len() != n) {
                    return Err(failed(ctx("dotproduct scatter needs arrays of equal length")));
                }
                let results = self.run_indexed(n, |k| {
                    let mut job = vals.clone();
                    for (sname, list) in scatter.iter().zip(&lists) {
                        job.insert(sname.clone(), list[k].clone());
                    }
                    run_one(job)
                })?;
                Ok(collect(results))
            }
            "flat_crossproduct" | "nested_crossproduct" => {
                let mut combos: Vec<Vec<usize>> = vec![vec![]];
                for l in &lists {
                    let mut next = Vec::new();
                    for c in &combos {
                        for k in 0..l.len() {
                            let mut c2 = c.clone();
                            c2.push(k);
                            next.push(c2);
                        }
                    }
                    combos = next;
                }
                let results = self.run_indexed(combos.len(), |k| {
                    let mut job = vals.clone();
                    for (j, sname) in scatter.iter().enumerate() {
                        job.insert(sname.clone(), lists[j][combos[k][j]].clone());
                    }
                    run_one(job)
                })?;
                let flat = collect(results);
                if method == "flat_crossproduct" {
                    return Ok(flat);
                }
                let dims: Vec<usize> = lists.iter().map(Vec::len).collect();
                Ok(flat.into_iter().map(|(k, v)| (k, nest(v.as_array().cloned().unwrap_or_default(), &dims))).collect())
            }
            other => Err(failed(ctx(&format!("unknown scatterMethod `{other}`")))),
        }
    }
}

/// One of the engine's `parallel` slots, given back on drop.
struct Slot<'e, 'a>(&'e Engine<'a>);

impl Drop for Slot<'_, '_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *running = running.saturating_sub(1);
        self.0.slot_freed.notify_one();
    }
}

/// Keeps the error that says what went wrong: the first one that is not a [`CwlError::Cancelled`]
/// (an invocation stopped because another failed).
fn keep_first(first: &mut Option<CwlError>, e: CwlError) {
    match first {
        None => *first = Some(e),
        Some(CwlError::Cancelled) if !matches!(e, CwlError::Cancelled) => *first = Some(e),
        Some(_) => {}
    }
}

fn same_vocabulary(a: &str, b: &str) -> bool {
    let base = |s: &str| s.rfind(['/', '#', ':']).map(|i| s[..i].to_string()).unwrap_or_default();
    base(a) == base(b)
}

/// Checks File formats against a parameter's `format` (exact match within one vocabulary;
/// formats from different vocabularies are not compared, as no ontology is loaded).
fn check_formats(fmt: Option<&Value>, t: &Value, v: &Value, schemas: &Schemas, field: &str) -> Result<()> {
    let t = resolve(t, schemas);
    match v {
        Value::Array(a) => {
            let items = t.get("items").unwrap_or(t);
            for x in a {
                check_formats(fmt, items, x, schemas, field)?;
            }
        }
        Value::Object(o) if class_of(v) == Some("File") => {
            let allowed: Vec<&str> = match fmt {
                Some(Value::String(f)) if !has_expr(f) => vec![f.as_str()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).filter(|f| !has_expr(f)).collect(),
                _ => vec![],
            };
            if let Some(have) = o.get("format").and_then(Value::as_str)
                && !allowed.is_empty()
                && !allowed.contains(&have)
                && allowed.iter().all(|a| same_vocabulary(a, have))
            {
                return Err(CwlError::Input {
                    field: field.into(),
                    message: format!("file format {have} is not one of {allowed:?}"),
                });
            }
        }
        Value::Object(o) => {
            let members: Vec<&Value> = match t {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for m in members {
                let m = resolve(m, schemas);
                if m.get("type").and_then(Value::as_str) == Some("record") {
                    for f in m.get("fields").and_then(Value::as_array).cloned().unwrap_or_default() {
                        let name = s(&f, "name").unwrap_or("");
                        if let Some(fv) = o.get(name) {
                            let ft = f.get("type").cloned().unwrap_or(Value::Null);
                            check_formats(f.get("format"), &ft, fv, schemas, &format!("{field}.{name}"))?;
                        }
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn nest(flat: Vec<Value>, dims: &[usize]) -> Value {
    if dims.len() <= 1 {
        return Value::Array(flat);
    }
    let inner: usize = dims[1..].iter().product();
    if inner == 0 {
        return Value::Array((0..dims[0]).map(|_| nest(vec![], &dims[1..])).collect());
    }
    Value::Array(flat.chunks(inner).map(|c| nest(c.to_vec(), &dims[1..])).collect())
}

fn sources(v: &Value, key: &str) -> Vec<String> {
    match v.get(key) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => vec![],
    }
}

fn merge(param: &Value, srcs: &[String], state: &HashMap<String, Value>) -> std::result::Result<Value, String> {
    let get = |k: &String| state.get(k).cloned().ok_or_else(|| format!("unknown source `{k}`"));
    let multi = param.get("linkMerge").is_some();
    if srcs.len() == 1 && !multi {
        return get(&srcs[0]);
    }
    let method = s(param, "linkMerge").unwrap_or("merge_nested");
    let mut out = Vec::new();
    for k in srcs {
        let v = get(k)?;
        match (method, v) {
            ("merge_flattened", Value::Array(a)) => out.extend(a),
            (_, v) => out.push(v),
        }
    }
    Ok(Value::Array(out))
}

fn pick(param: &Value, v: Value) -> std::result::Result<Value, String> {
    let Some(method) = s(param, "pickValue") else { return Ok(v) };
    let Value::Array(a) = v else { return Ok(v) };
    let non_null: Vec<Value> = a.into_iter().filter(|x| !x.is_null()).collect();
    match method {
        "first_non_null" => {
            non_null.into_iter().next().ok_or_else(|| "pickValue first_non_null: all values are null".to_string())
        }
        "the_only_non_null" => {
            if non_null.len() == 1 {
                Ok(non_null.into_iter().next().unwrap_or(Value::Null))
            } else {
                Err(format!("pickValue the_only_non_null: {} values are not null", non_null.len()))
            }
        }
        "all_non_null" => Ok(Value::Array(non_null)),
        other => Err(format!("unknown pickValue `{other}`")),
    }
}

/// One binding's sort key and the arguments it produces (text, shell-quote?).
type Binding = (Vec<Key>, Vec<(String, bool)>);

/// Sort key of a command-line binding (numbers sort before names, as the reference does).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Int(i64),
    Str(String),
}

/// JSON text the way the reference runner writes it (Python's `json.dumps`: `", "` and `": "`).
pub fn py_json(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(py_json).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, x)| format!("{}: {}", Value::String(k.clone()), py_json(x)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// A number as decimal text, never in exponent notation.
pub fn num_str(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    match n.as_f64() {
        Some(f) => format!("{f}"),
        None => n.to_string(),
    }
}

/// Text form of a value on the command line.
pub fn to_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => num_str(n),
        Value::Object(o) if o.contains_key("class") => {
            o.get("path").or(o.get("location")).and_then(Value::as_str).unwrap_or("").to_string()
        }
        other => other.to_string(),
    }
}

/// The arguments one binding produces (`(text, shell-quote?)`).
fn gen_arg(b: &Map<String, Value>, datum: &Value, value_from: bool) -> Vec<(String, bool)> {
    let prefix = b.get("prefix").and_then(Value::as_str);
    let sep = b.get("separate").and_then(Value::as_bool).unwrap_or(true);
    let quote = b.get("shellQuote").and_then(Value::as_bool).unwrap_or(true);
    let item_sep = b.get("itemSeparator").and_then(Value::as_str);
    let vals: Vec<String> = match datum {
        Value::Array(a) => {
            if let Some(is) = item_sep {
                if a.is_empty() {
                    return vec![];
                }
                vec![a.iter().map(to_str).collect::<Vec<_>>().join(is)]
            } else if value_from {
                let mut out: Vec<(String, bool)> = prefix.map(|p| (p.to_string(), quote)).into_iter().collect();
                out.extend(a.iter().map(|x| (to_str(x), quote)));
                return out;
            } else if let (Some(p), false) = (prefix, a.is_empty()) {
                return vec![(p.to_string(), quote)];
            } else {
                return vec![];
            }
        }
        Value::Object(o) if o.contains_key("class") => vec![to_str(datum)],
        Value::Object(_) => return prefix.map(|p| vec![(p.to_string(), quote)]).unwrap_or_default(),
        Value::Bool(true) => return prefix.map(|p| vec![(p.to_string(), quote)]).unwrap_or_default(),
        Value::Bool(false) | Value::Null => return vec![],
        other => vec![to_str(other)],
    };
    let mut out = Vec::new();
    for v in vals {
        match prefix {
            Some(p) if sep => {
                out.push((p.to_string(), quote));
                out.push((v, quote));
            }
            Some(p) => out.push((format!("{p}{v}"), quote)),
            None => out.push((v, quote)),
        }
    }
    out
}

/// POSIX shell quoting.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// Secondary file name from a pattern: each leading `^` strips one extension.
pub fn secondary_name(base: &str, pattern: &str) -> String {
    let mut b = base.to_string();
    let mut p = pattern;
    while let Some(rest) = p.strip_prefix('^') {
        if let Some(i) = b.rfind('.') {
            b.truncate(i);
        }
        p = rest;
    }
    format!("{b}{p}")
}

fn type_is_array(t: &Value, schemas: &Schemas) -> bool {
    match resolve(t, schemas) {
        Value::Object(o) => o.get("type").and_then(Value::as_str) == Some("array"),
        Value::Array(a) => {
            a.iter().any(|x| type_is_array(x, schemas))
                && !a.iter().any(|x| matches!(resolve(x, schemas).as_str(), Some("File" | "Directory")))
        }
        _ => false,
    }
}

fn type_wants(t: &Value, class: &str, schemas: &Schemas) -> bool {
    match resolve(t, schemas) {
        Value::String(s) => s == class || s == "Any",
        Value::Object(o) => o.get("items").is_some_and(|i| type_wants(i, class, schemas)),
        Value::Array(a) => a.iter().any(|x| type_wants(x, class, schemas)),
        _ => false,
    }
}

/// Adds checksum and size to a File, listing to a Directory (outputs).
pub fn finish_file(o: &mut Map<String, Value>) -> Result<()> {
    let Some(path) = o.get("path").and_then(Value::as_str).map(PathBuf::from) else { return Ok(()) };
    match o.get("class").and_then(Value::as_str) {
        Some("File") if path.is_file() => {
            let (c, sz) = checksum(&path)?;
            o.insert("checksum".into(), json!(c));
            o.insert("size".into(), json!(sz));
        }
        Some("Directory") if path.is_dir() => {
            o.insert("listing".into(), Value::Array(listing(&path, true, true)?));
        }
        _ => {}
    }
    Ok(())
}

/// Calls `f` on the outermost File/Directory objects inside `v` (not their listings).
pub fn walk_top_files(v: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>) -> Result<()>) -> Result<()> {
    match v {
        Value::Object(o) if matches!(o.get("class").and_then(Value::as_str), Some("File" | "Directory")) => f(o),
        Value::Object(o) => {
            for (_, x) in o.iter_mut() {
                walk_top_files(x, f)?;
            }
            Ok(())
        }
        Value::Array(a) => {
            for x in a {
                walk_top_files(x, f)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Calls `f` on every File/Directory object inside `v` (outermost first, then its listing and
/// secondaryFiles).
pub fn walk_files(v: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>) -> Result<()>) -> Result<()> {
    match v {
        Value::Object(o) => {
            if matches!(o.get("class").and_then(Value::as_str), Some("File" | "Directory")) {
                f(o)?;
                for k in ["secondaryFiles", "listing"] {
                    if let Some(x) = o.get_mut(k) {
                        walk_files(x, f)?;
                    }
                }
            } else {
                for (_, x) in o.iter_mut() {
                    walk_files(x, f)?;
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                walk_files(x, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}
