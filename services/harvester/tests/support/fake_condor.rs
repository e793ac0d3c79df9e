//! `fake-condor`: a stand-in for HTCondor's `condor_submit`, `condor_q`, `condor_history` and
//! `condor_rm`, for the htcondor plugin's tests. HTCondor cannot run on the machines this project
//! is developed and tested on (its daemons are not packaged for them), so the plugin is tested
//! against this program, which keeps a schedd's job queue and history in a directory and prints
//! the output formats the HTCondor documentation gives:
//!
//! - `condor_submit [-name S] [-pool P] FILE|-`: "Submitting job(s)..." and one
//!   "N job(s) submitted to cluster C." line per cluster; a new cluster starts when `executable`
//!   changes between `queue` statements, as in HTCondor.
//! - `condor_q [-name S] [-pool P] -json [-attributes A,B] [CLUSTER|CLUSTER.PROC]...` and
//!   `condor_history ... -json [-attributes A,B] [-constraint 'member(ClusterId, {1, 2})'] [-limit N]`:
//!   a JSON array of job ClassAds (ClusterId, ProcId, JobStatus, EnteredCurrentStatus, HoldReason,
//!   ExitCode, ...), nothing at all when no job matches; history newest first.
//! - `condor_rm [-name S] [-pool P] ID...`: "Job C.P marked for removal" (the job moves to the
//!   history as JobStatus 3 with a RemoveReason), or "Job C.P not found" and exit code 1.
//!
//! Nothing runs: tests move jobs along with the admin commands `set ID Attr=JSON...` (JobStatus
//! changes stamp EnteredCurrentStatus, and JobStartDate on the first start, unless given),
//! `retire ID` (to the history) and `next COMMAND CODE STDOUT STDERR` (a canned answer for the
//! next call of COMMAND, for failures and malformed output). Every call is appended to
//! `calls.log`, so tests can count them.
//!
//! Usage: `fake-condor STATE_DIR COMMAND [ARGS...]`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

type Ad = Map<String, Value>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_cluster: i64,
    queue: Vec<Ad>,
    history: Vec<Ad>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Canned {
    code: u8,
    stdout: String,
    stderr: String,
}

/// What a command prints and its exit code.
#[derive(Default)]
struct Answer {
    code: u8,
    stdout: String,
    stderr: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let answer = match args.as_slice() {
        [dir, command, rest @ ..] => run(Path::new(dir), command, rest).unwrap_or_else(|message| Answer {
            code: 2,
            stderr: format!("fake-condor: {message}\n"),
            ..Answer::default()
        }),
        _ => Answer { code: 2, stderr: "usage: fake-condor STATE_DIR COMMAND [ARGS...]\n".into(), ..Answer::default() },
    };
    // Nothing useful can be done if the terminal is gone.
    let _ = std::io::stdout().write_all(answer.stdout.as_bytes());
    let _ = std::io::stderr().write_all(answer.stderr.as_bytes());
    ExitCode::from(answer.code)
}

fn run(dir: &Path, command: &str, args: &[String]) -> Result<Answer, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if command.starts_with("condor_") {
        log_call(dir, command, args)?;
        let canned = dir.join(format!("next-{command}.json"));
        if let Ok(text) = std::fs::read_to_string(&canned) {
            std::fs::remove_file(&canned).map_err(|e| format!("cannot remove {}: {e}", canned.display()))?;
            let canned: Canned = serde_json::from_str(&text).map_err(|e| format!("bad {}: {e}", canned.display()))?;
            return Ok(Answer { code: canned.code, stdout: canned.stdout, stderr: canned.stderr });
        }
    }
    let mut state = load(dir)?;
    let answer = match command {
        "condor_submit" => submit(&mut state, args)?,
        "condor_q" => query(&state.queue, args, false)?,
        "condor_history" => query(&state.history, args, true)?,
        "condor_rm" => remove(&mut state, args),
        "set" => set(&mut state, args)?,
        "retire" => retire(&mut state, args)?,
        "next" => return next(dir, args),
        other => return Err(format!("unknown command {other}")),
    };
    save(dir, &state)?;
    Ok(answer)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "harvester".to_owned())
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn load(dir: &Path) -> Result<State, String> {
    match std::fs::read_to_string(state_file(dir)) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("bad state file: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State { next_cluster: 1, ..State::default() }),
        Err(e) => Err(format!("cannot read the state file: {e}")),
    }
}

fn save(dir: &Path, state: &State) -> Result<(), String> {
    let text = serde_json::to_string_pretty(state).map_err(|e| e.to_string())?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write the state file: {e}"))?;
    std::fs::rename(&tmp, state_file(dir)).map_err(|e| format!("cannot replace the state file: {e}"))
}

fn log_call(dir: &Path, command: &str, args: &[String]) -> Result<(), String> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("calls.log"))
        .map_err(|e| format!("cannot open calls.log: {e}"))?;
    writeln!(log, "{command} {}", args.join(" ")).map_err(|e| format!("cannot write calls.log: {e}"))
}

/// Splits `-name S -pool P` (ignored: one fake schedd) from the other arguments.
fn without_location(args: &[String]) -> Vec<String> {
    let mut rest = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "-name" || arg == "-pool" {
            iter.next();
        } else {
            rest.push(arg.clone());
        }
    }
    rest
}

/// A submit file value as a ClassAd value: quoted strings, integers, booleans, else text.
fn classad_value(raw: &str) -> Value {
    let raw = raw.trim();
    if let Some(text) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Value::String(text.to_owned());
    }
    if let Ok(n) = raw.parse::<i64>() {
        return Value::from(n);
    }
    match raw.to_ascii_lowercase().as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(raw.to_owned()),
    }
}

fn submit(state: &mut State, args: &[String]) -> Result<Answer, String> {
    let rest = without_location(args);
    let text = match rest.last().map(String::as_str) {
        None | Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read stdin: {e}"))?;
            text
        }
        Some(file) => std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?,
    };
    let error = |message: String| Answer { code: 1, stderr: format!("\nERROR: {message}\n"), ..Answer::default() };
    let mut commands: BTreeMap<String, String> = BTreeMap::new();
    let mut custom: BTreeMap<String, Value> = BTreeMap::new();
    let mut jobs: Vec<Ad> = Vec::new();
    let mut clusters: Vec<(i64, i64)> = Vec::new();
    let mut cluster_executable: Option<String> = None;
    let mut next_cluster = state.next_cluster;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("queue")) {
            let count: i64 = match words.next() {
                None => 1,
                Some(n) => match n.parse() {
                    Ok(n) => n,
                    Err(_) => return Ok(error(format!("on Line {} of submit file: bad queue count {n}", i + 1))),
                },
            };
            let Some(executable) = commands.get("executable").cloned() else {
                return Ok(error("Executable file not specified".to_owned()));
            };
            if cluster_executable.as_deref() != Some(executable.as_str()) {
                clusters.push((next_cluster, 0));
                next_cluster += 1;
                cluster_executable = Some(executable.clone());
            }
            for _ in 0..count {
                let Some((cluster, procs)) = clusters.last_mut() else { return Err("no cluster".to_owned()) };
                let mut ad = Ad::new();
                ad.insert("ClusterId".into(), Value::from(*cluster));
                ad.insert("ProcId".into(), Value::from(*procs));
                ad.insert("JobStatus".into(), Value::from(1));
                ad.insert("EnteredCurrentStatus".into(), Value::from(now()));
                ad.insert("QDate".into(), Value::from(now()));
                ad.insert("Owner".into(), Value::String(user()));
                ad.insert("JobUniverse".into(), Value::from(5));
                ad.insert("Cmd".into(), Value::String(executable.clone()));
                for (command, attribute) in [
                    ("arguments", "Arguments"),
                    ("initialdir", "Iwd"),
                    ("output", "Out"),
                    ("error", "Err"),
                    ("log", "UserLog"),
                    ("request_cpus", "RequestCpus"),
                    ("request_memory", "RequestMemory"),
                ] {
                    if let Some(value) = commands.get(command) {
                        ad.insert(attribute.into(), classad_value(value));
                    }
                }
                for (name, value) in &custom {
                    ad.insert(name.clone(), value.clone());
                }
                jobs.push(ad);
                *procs += 1;
            }
        } else if let Some((key, value)) = line.split_once('=') {
            let key = key.trim();
            if let Some(name) = key.strip_prefix('+').or_else(|| key.strip_prefix("MY.")) {
                custom.insert(name.to_owned(), classad_value(value));
            } else {
                commands.insert(key.to_ascii_lowercase(), value.trim().to_owned());
            }
        } else {
            return Ok(error(format!("on Line {} of submit file: Parse error: {line}", i + 1)));
        }
    }
    if jobs.is_empty() {
        return Ok(error("no queue statement: nothing submitted".to_owned()));
    }
    state.next_cluster = next_cluster;
    state.queue.extend(jobs);
    let mut stdout = format!("Submitting job(s){}\n", ".".repeat(clusters.iter().map(|c| c.1).sum::<i64>() as usize));
    for (cluster, procs) in clusters {
        stdout.push_str(&format!("{procs} job(s) submitted to cluster {cluster}.\n"));
    }
    Ok(Answer { code: 0, stdout, stderr: String::new() })
}

fn id_of(ad: &Ad) -> (i64, i64) {
    let number = |key: &str| ad.get(key).and_then(Value::as_i64).unwrap_or(-1);
    (number("ClusterId"), number("ProcId"))
}

/// `CLUSTER` or `CLUSTER.PROC`.
fn matches_id(ad: &Ad, id: &str) -> bool {
    let (cluster, proc) = id_of(ad);
    match id.split_once('.') {
        Some((c, p)) => c.parse() == Ok(cluster) && p.parse() == Ok(proc),
        None => id.parse() == Ok(cluster),
    }
}

/// The one constraint form the fake understands: `member(ClusterId, {1, 2})`.
fn constraint_clusters(expr: &str) -> Result<Vec<i64>, String> {
    let unsupported = || format!("unsupported constraint (the fake knows member(ClusterId, {{...}})): {expr}");
    let inner = expr.trim().strip_prefix("member(ClusterId,").ok_or_else(unsupported)?;
    let list = inner.trim().strip_prefix('{').and_then(|r| r.split_once('}')).ok_or_else(unsupported)?.0;
    list.split(',').map(|n| n.trim().parse().map_err(|_| unsupported())).collect()
}

fn query(ads: &[Ad], args: &[String], history: bool) -> Result<Answer, String> {
    let mut json = false;
    let mut attributes: Option<Vec<String>> = None;
    let mut clusters: Option<Vec<i64>> = None;
    let mut limit = usize::MAX;
    let mut ids = Vec::new();
    let rest = without_location(args);
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-json" => json = true,
            "-attributes" | "-af" => {
                attributes = iter.next().map(|a| a.split(',').map(|s| s.trim().to_owned()).collect());
            }
            "-constraint" => clusters = Some(constraint_clusters(iter.next().map_or("", String::as_str))?),
            "-limit" | "-match" => limit = iter.next().and_then(|n| n.parse().ok()).ok_or("-limit needs a number")?,
            other if other.starts_with('-') => return Err(format!("option {other} is not supported by the fake")),
            id => ids.push(id.to_owned()),
        }
    }
    if !json {
        return Err("the fake only prints -json".to_owned());
    }
    let ordered: Vec<&Ad> = if history { ads.iter().rev().collect() } else { ads.iter().collect() };
    let selected: Vec<Value> = ordered
        .into_iter()
        .filter(|ad| ids.is_empty() || ids.iter().any(|id| matches_id(ad, id)))
        .filter(|ad| clusters.as_ref().is_none_or(|c| c.contains(&id_of(ad).0)))
        .take(limit)
        .map(|ad| match &attributes {
            Some(names) => Value::Object(
                ad.iter().filter(|(k, _)| names.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
            ),
            None => Value::Object(ad.clone()),
        })
        .collect();
    if selected.is_empty() {
        return Ok(Answer::default());
    }
    let stdout = serde_json::to_string_pretty(&selected).map_err(|e| e.to_string())? + "\n";
    Ok(Answer { code: 0, stdout, stderr: String::new() })
}

fn remove(state: &mut State, args: &[String]) -> Answer {
    let mut answer = Answer::default();
    for id in without_location(args) {
        let (gone, kept): (Vec<Ad>, Vec<Ad>) =
            std::mem::take(&mut state.queue).into_iter().partition(|ad| matches_id(ad, &id));
        state.queue = kept;
        if gone.is_empty() {
            answer.stderr.push_str(&format!("Job {id} not found\n"));
            answer.code = 1;
        }
        for mut ad in gone {
            let (cluster, proc) = id_of(&ad);
            ad.insert("JobStatus".into(), Value::from(3));
            ad.insert("EnteredCurrentStatus".into(), Value::from(now()));
            ad.insert("RemoveReason".into(), Value::String(format!("via condor_rm (by user {})", user())));
            if let Some(hold) = ad.remove("HoldReason") {
                ad.insert("LastHoldReason".into(), hold);
            }
            state.history.push(ad);
            answer.stdout.push_str(&format!("Job {cluster}.{proc} marked for removal\n"));
        }
    }
    answer
}

fn find<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Ad, String> {
    state
        .queue
        .iter_mut()
        .find(|ad| matches_id(ad, id) && id.contains('.'))
        .ok_or_else(|| format!("no job {id} in the queue"))
}

fn set(state: &mut State, args: &[String]) -> Result<Answer, String> {
    let (id, assignments) = args.split_first().ok_or("usage: set CLUSTER.PROC Attr=JSON...")?;
    let ad = find(state, id)?;
    let mut given = Ad::new();
    for assignment in assignments {
        let (name, value) = assignment.split_once('=').ok_or_else(|| format!("not Attr=JSON: {assignment}"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        given.insert(name.to_owned(), value);
    }
    if let Some(status) = given.get("JobStatus").and_then(Value::as_i64) {
        if !given.contains_key("EnteredCurrentStatus") {
            ad.insert("EnteredCurrentStatus".into(), Value::from(now()));
        }
        if status == 2 && !ad.contains_key("JobStartDate") && !given.contains_key("JobStartDate") {
            ad.insert("JobStartDate".into(), Value::from(now()));
        }
    }
    ad.extend(given);
    Ok(Answer::default())
}

fn retire(state: &mut State, args: &[String]) -> Result<Answer, String> {
    let id = args.first().ok_or("usage: retire CLUSTER.PROC")?;
    find(state, id)?;
    let position = state.queue.iter().position(|ad| matches_id(ad, id)).ok_or("job vanished")?;
    let mut ad = state.queue.remove(position);
    ad.insert("CompletionDate".into(), Value::from(now()));
    state.history.push(ad);
    Ok(Answer::default())
}

fn next(dir: &Path, args: &[String]) -> Result<Answer, String> {
    let [command, code, stdout, stderr] = args else { return Err("usage: next COMMAND CODE STDOUT STDERR".into()) };
    let code = code.parse().map_err(|_| format!("bad exit code {code}"))?;
    let canned = Canned { code, stdout: stdout.clone(), stderr: stderr.clone() };
    let text = serde_json::to_string(&canned).map_err(|e| e.to_string())?;
    let file = dir.join(format!("next-{command}.json"));
    std::fs::write(&file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(Answer::default())
}
