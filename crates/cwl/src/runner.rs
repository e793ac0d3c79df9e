//! The `cwl-runner` interface that cwltest drives:
//! `[--outdir DIR] [--quiet] [--parallel N] document.cwl[#id] [job.yml|job.json]`; prints the output object as
//! JSON on stdout; exit 0 on success, 1 on permanent failure, 33 for an unsupported requirement.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::engine::{Engine, Reqs, finish_file, walk_files};
use crate::error::{CwlError, Result};
use crate::exec::{Executor, LocalExecutor};
use crate::fs::{copy_tree, fill_names, path_to_uri};
use crate::load::{Loader, fix_locations, parse_yaml};

/// Parsed command line of the runner.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Where output files go (default: the current directory).
    pub outdir: Option<PathBuf>,
    /// Less logging.
    pub quiet: bool,
    /// The document (`path[#id]`).
    pub document: String,
    /// The input object file, if any.
    pub job: Option<PathBuf>,
    /// Where tools run: `pilot` (the default of `panda cwl-runner`) or `local`.
    pub executor: Option<String>,
    /// A running deployment's server URL (pilot executor); unset: an embedded system.
    pub server: Option<String>,
    /// How many invocations run at once (`--parallel N`); unset: the executor's default (the
    /// number of CPUs for `local`, 32 for `pilot`).
    pub parallel: Option<usize>,
    /// That deployment's idds URL (the run is an idds workflow); unset: `PANDA_IDDS_URL`, else
    /// the server's host on idds's default port.
    pub idds: Option<String>,
}

impl Args {
    /// Whether tools run as local processes (`--executor local`) rather than as jobs.
    pub fn local(&self) -> bool {
        self.executor.as_deref() == Some("local")
    }
}

/// Parses runner arguments (without the program name).
pub fn parse_args(args: &[String]) -> std::result::Result<Args, String> {
    let mut a = Args::default();
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(x) = it.next() {
        if let Some(v) = x.strip_prefix("--outdir=") {
            a.outdir = Some(PathBuf::from(v));
        } else if x == "--outdir" {
            a.outdir = Some(PathBuf::from(it.next().ok_or("--outdir needs a value")?));
        } else if let Some(v) = x.strip_prefix("--executor=") {
            a.executor = Some(check_executor(v)?);
        } else if x == "--executor" {
            a.executor = Some(check_executor(it.next().ok_or("--executor needs a value: pilot or local")?)?);
        } else if let Some(v) = x.strip_prefix("--server=") {
            a.server = Some(v.to_string());
        } else if x == "--server" {
            a.server = Some(it.next().ok_or("--server needs a URL")?.clone());
        } else if let Some(v) = x.strip_prefix("--idds=") {
            a.idds = Some(v.to_string());
        } else if x == "--idds" {
            a.idds = Some(it.next().ok_or("--idds needs a URL")?.clone());
        } else if let Some(v) = x.strip_prefix("--parallel=") {
            a.parallel = Some(check_parallel(v)?);
        } else if x == "--parallel" {
            a.parallel = Some(check_parallel(it.next().ok_or("--parallel needs a number of invocations")?)?);
        } else if x == "--quiet" {
            a.quiet = true;
        } else if x == "--version" {
            return Err("version".into());
        } else if x.starts_with("--") {
            return Err(format!("unknown option {x}"));
        } else {
            pos.push(x.clone());
        }
    }
    match pos.len() {
        1 | 2 => {
            a.document = pos[0].clone();
            a.job = pos.get(1).map(PathBuf::from);
            Ok(a)
        }
        _ => Err(USAGE.into()),
    }
}

/// The runner's usage line.
pub const USAGE: &str = "usage: cwl-runner [--outdir DIR] [--quiet] [--executor pilot|local] [--parallel N] [--server URL [--idds URL]] document.cwl[#id] [job.yml]";

fn check_parallel(v: &str) -> std::result::Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!("--parallel {v}: must be a whole number of invocations from 1 to 10000")),
    }
}

fn check_executor(v: &str) -> std::result::Result<String, String> {
    match v {
        "pilot" | "local" => Ok(v.to_string()),
        other => Err(format!("--executor {other}: must be `pilot` or `local`")),
    }
}

/// Reads an input object file; File/Directory locations are resolved against its directory.
pub fn load_job(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| CwlError::io(path, e))?;
    let mut v = parse_yaml(&text, path)?;
    let dir = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    fix_locations(&mut v, &dir);
    if let Some(ns) = v.get("$namespaces").and_then(Value::as_object).cloned() {
        walk_files(&mut v, &mut |o| {
            if let Some(f) = o.get("format").and_then(Value::as_str)
                && let Some((pre, rest)) = f.split_once(':')
                && let Some(base) = ns.get(pre).and_then(Value::as_str)
            {
                o.insert("format".into(), Value::String(format!("{base}{rest}")));
            }
            Ok(())
        })?;
    }
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(CwlError::Invalid {
            doc: path.display().to_string(),
            line: 1,
            field: "(document)".into(),
            message: "an input object must be a map".into(),
        }),
    }
}

/// Runs a document with the given executor and copies the output files into `outdir`.
pub fn run_with(args: &Args, exec: &dyn Executor, scratch: &Path) -> Result<Value> {
    let mut loader = Loader::new();
    let loaded = loader.load(&args.document)?;
    let job = match &args.job {
        Some(j) => load_job(j)?,
        None => Map::new(),
    };
    let parallel = args.parallel.unwrap_or_else(|| exec.default_parallel());
    let engine = Engine::new(loaded.schemas, exec, scratch.to_path_buf()).with_parallel(parallel);
    let mut job = job;
    let mut reqs = Reqs::default();
    if let Some(r) = job.remove("cwl:requirements") {
        reqs.overrides = crate::load::to_list(Some(r), "class");
    }
    let out = engine.run(&loaded.process, &job, &reqs)?;
    let outdir = match &args.outdir {
        Some(d) => d.clone(),
        None => std::env::current_dir().map_err(|e| CwlError::io(".", e))?,
    };
    std::fs::create_dir_all(&outdir).map_err(|e| CwlError::io(&outdir, e))?;
    let outdir = std::fs::canonicalize(&outdir).map_err(|e| CwlError::io(&outdir, e))?;
    let mut v = Value::Object(out);
    relocate(&mut v, &outdir)?;
    Ok(v)
}

fn unique(dir: &Path, base: &str) -> PathBuf {
    let mut p = dir.join(base);
    let mut n = 2;
    while p.exists() || p.symlink_metadata().is_ok() {
        p = dir.join(format!("{base}_{n}"));
        n += 1;
    }
    p
}

/// Copies every File/Directory of an output object into `outdir`, rewriting locations.
pub fn relocate(v: &mut Value, outdir: &Path) -> Result<()> {
    walk_top(v, &mut |o| {
        let base = o.get("basename").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| "output".into());
        let target = unique(outdir, &base);
        match o.get("path").and_then(Value::as_str).map(PathBuf::from) {
            Some(src) if src.exists() => copy_tree(&src, &target)?,
            _ => {
                if o.get("class").and_then(Value::as_str) == Some("File") {
                    let c = o.get("contents").and_then(Value::as_str).unwrap_or("");
                    std::fs::write(&target, c).map_err(|e| CwlError::io(&target, e))?;
                } else {
                    std::fs::create_dir_all(&target).map_err(|e| CwlError::io(&target, e))?;
                    if let Some(Value::Array(ls)) = o.get_mut("listing") {
                        for x in ls.iter_mut() {
                            let mut one = x.clone();
                            relocate(&mut one, &target)?;
                            *x = one;
                        }
                    }
                }
            }
        }
        o.insert("location".into(), Value::String(path_to_uri(&target)));
        o.remove("path");
        o.remove("dirname");
        fill_names(o, outdir);
        o.remove("dirname");
        finish_file(o)?;
        if let Some(Value::Array(sf)) = o.get_mut("secondaryFiles") {
            for x in sf.iter_mut() {
                relocate(x, outdir)?;
            }
        }
        if o.get("class").and_then(Value::as_str) == Some("Directory") {
            walk_files(o.get_mut("listing").unwrap_or(&mut Value::Null), &mut |x| {
                x.remove("dirname");
                Ok(())
            })?;
        }
        Ok(())
    })
}

fn walk_top(v: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>) -> Result<()>) -> Result<()> {
    match v {
        Value::Object(o) if matches!(o.get("class").and_then(Value::as_str), Some("File" | "Directory")) => f(o),
        Value::Object(o) => {
            for (_, x) in o.iter_mut() {
                walk_top(x, f)?;
            }
            Ok(())
        }
        Value::Array(a) => {
            for x in a {
                walk_top(x, f)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The runner's main: returns the exit code; prints the output object on stdout and errors on
/// stderr.
pub fn main_with_args(args: &[String]) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(v) if v == "version" => {
            println!("panda cwl-runner {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let scratch = match tempfile::Builder::new().prefix("panda-cwl-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot create a scratch directory: {e}");
            return 1;
        }
    };
    let exec = LocalExecutor::new(scratch.path().join("jobs"));
    match run_with(&args, &exec, scratch.path()) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(e) => {
            eprintln!("cwl-runner: {e}");
            e.exit_code()
        }
    }
}
