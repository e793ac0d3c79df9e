//! What the batch-system plugins (`slurm`, `htcondor`) share: the pilot command line, the
//! placeholders every template gets, template files, per-worker log directories, and the
//! bookkeeping of jobs the batch system no longer knows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::WorkerSpec;
use super::template::{Template, TemplateError};

/// Placeholders every batch template may use.
pub const COMMON_PLACEHOLDERS: &[&str] = &[
    "pilot_command",
    "worker_id",
    "queue",
    "work_dir",
    "log_dir",
    "cores",
    "memory_mb",
    "disk_mb",
    "walltime_seconds",
    "walltime_minutes",
    "server_url",
];

/// The pilot's argument vector for a worker: `program` then the worker's settings.
pub fn pilot_args(program: &[String], worker: &WorkerSpec) -> Vec<String> {
    let mut args = program.to_vec();
    args.extend([
        "--server".to_owned(),
        worker.server_url.clone(),
        "--queue".to_owned(),
        worker.queue.clone(),
        "--worker-id".to_owned(),
        worker.worker_id.clone(),
        "--work-dir".to_owned(),
        worker.work_dir.join("pilot").display().to_string(),
        "--cores".to_owned(),
        worker.resources.cores.to_string(),
        "--memory-mb".to_owned(),
        worker.resources.memory_mb.to_string(),
        "--max-jobs".to_owned(),
        worker.max_jobs.to_string(),
    ]);
    if let Some(job_file) = &worker.job_file {
        args.extend(["--job-file".to_owned(), job_file.display().to_string()]);
    }
    if !worker.container_runtimes.is_empty() {
        args.extend(["--container-runtimes".to_owned(), worker.container_runtimes.join(",")]);
    }
    args
}

/// One shell word per argument: plain words stay as they are, others go in single quotes.
pub fn shell_quote(args: &[String]) -> String {
    let word = |arg: &String| {
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '=' | ',' | '+' | '@'));
        if plain { arg.clone() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
    };
    args.iter().map(word).collect::<Vec<_>>().join(" ")
}

/// The values of [`COMMON_PLACEHOLDERS`] for one worker.
pub fn common_values(worker: &WorkerSpec, log_dir: &Path, pilot: &[String]) -> BTreeMap<&'static str, String> {
    let r = &worker.resources;
    BTreeMap::from([
        ("pilot_command", shell_quote(&pilot_args(pilot, worker))),
        ("worker_id", worker.worker_id.clone()),
        ("queue", worker.queue.clone()),
        ("work_dir", worker.work_dir.display().to_string()),
        ("log_dir", log_dir.display().to_string()),
        ("cores", r.cores.to_string()),
        ("memory_mb", r.memory_mb.to_string()),
        ("disk_mb", r.disk_mb.to_string()),
        ("walltime_seconds", r.walltime_seconds.to_string()),
        // Rounded up: a limit must never be shorter than asked. 0 stays 0 (no limit in Slurm).
        ("walltime_minutes", r.walltime_seconds.div_ceil(60).to_string()),
        ("server_url", worker.server_url.clone()),
    ])
}

/// A worker's log directory: `<log_dir>/<queue>/<worker_id>` when the queue sets `log_dir`,
/// else the worker's own directory.
pub fn worker_log_dir(log_dir: Option<&Path>, queue: &str, worker_id: &str, work_dir: &Path) -> PathBuf {
    match log_dir {
        Some(base) => base.join(queue).join(worker_id),
        None => work_dir.to_owned(),
    }
}

/// Creates the worker's directories.
///
/// # Errors
/// A message naming the directory.
pub async fn create_dirs(dirs: &[&Path]) -> Result<(), String> {
    for dir in dirs {
        tokio::fs::create_dir_all(dir).await.map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Removes what a worker left (its directory, its log directory); already gone is fine.
///
/// # Errors
/// A message naming what could not be removed.
pub async fn remove_dirs(dirs: &[&Path]) -> Result<(), String> {
    for dir in dirs {
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", dir.display())),
        }
    }
    Ok(())
}

/// A template as configured: inline text, a file, or the plugin's built-in default.
#[derive(Debug, Clone, Copy)]
pub struct TemplateSource<'a> {
    /// `template:` (inline text).
    pub inline: Option<&'a str>,
    /// `template_file:` as configured.
    pub file: Option<&'a Path>,
    /// The file's text, read when the queue file was loaded.
    pub loaded: Option<&'a str>,
    /// Used when neither is set.
    pub default: &'a str,
}

impl TemplateSource<'_> {
    /// The text to parse.
    pub fn text(&self) -> &str {
        self.loaded.or(self.inline).unwrap_or(self.default)
    }

    /// The key to name in messages.
    pub fn key(&self) -> &'static str {
        if self.file.is_some() { "template_file" } else { "template" }
    }

    /// Parses the template; problems as `key: ...`.
    ///
    /// # Errors
    /// Every problem found, as `key: message`.
    pub fn parse(&self, known: &[&str]) -> Result<Template, Vec<String>> {
        if self.inline.is_some() && self.file.is_some() {
            return Err(vec!["template: set either template or template_file, not both".to_owned()]);
        }
        if let Some(file) = self.file
            && self.loaded.is_none()
        {
            return Err(vec![format!("template_file: {} was not read", file.display())]);
        }
        Template::parse(self.text(), known).map_err(|e: TemplateError| match self.file {
            Some(file) => vec![format!("template_file: {} {e}", file.display())],
            None => vec![format!("{}: {e}", self.key())],
        })
    }
}

/// Reads a template file, relative to the queue file's directory; returns the absolute path and text.
///
/// # Errors
/// `template_file: ...` naming the file.
pub fn read_template_file(base_dir: &Path, file: &Path) -> Result<(PathBuf, String), String> {
    let path = base_dir.join(file);
    let path = std::path::absolute(&path).unwrap_or(path);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("template_file: cannot read {}: {e}", path.display()))?;
    Ok((path, text))
}

/// Remembers since when the batch system has not known a job, so a worker is declared lost only
/// after `lost_after` (a job between `squeue` and accounting, or a lagging history, is not lost).
/// Kept in memory: after a restart the grace period starts again, which only delays the verdict.
#[derive(Debug, Default)]
pub struct Unseen {
    since: Mutex<HashMap<String, Instant>>,
}

impl Unseen {
    /// The job was seen: forget it.
    pub fn seen(&self, batch_id: &str) {
        self.lock().remove(batch_id);
    }

    /// The job was not seen; whether it has been missing for `lost_after` or longer (then it is
    /// forgotten: its worker ends and is not asked about again).
    pub fn lost(&self, batch_id: &str, lost_after: Duration) -> bool {
        let now = Instant::now();
        let mut since = self.lock();
        let lost = now.duration_since(*since.entry(batch_id.to_owned()).or_insert(now)) >= lost_after;
        if lost {
            since.remove(batch_id);
        }
        lost
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic while holding this map cannot leave it inconsistent: take it over.
        self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote(&args(&["/usr/bin/panda-pilot", "--cores", "4"])), "/usr/bin/panda-pilot --cores 4");
        assert_eq!(shell_quote(&args(&["sh", "-c", "echo 'hi' $X", ""])), r"sh -c 'echo '\''hi'\'' $X' ''");
        assert_eq!(shell_quote(&args(&["http://127.0.0.1:50051"])), "http://127.0.0.1:50051");
    }

    #[test]
    fn walltime_minutes_round_up() {
        let mut worker = WorkerSpec {
            worker_id: "7".into(),
            queue: "q".into(),
            work_dir: "/w/q/7".into(),
            resources: panda_types::Resources { cores: 2, memory_mb: 1000, disk_mb: 0, walltime_seconds: 61 },
            max_jobs: 1,
            server_url: "http://s:1".into(),
            job_file: None,
            container_runtimes: Vec::new(),
        };
        let values = common_values(&worker, Path::new("/logs/q/7"), &args(&["pilot"]));
        assert_eq!(values["walltime_minutes"], "2");
        assert_eq!(values["log_dir"], "/logs/q/7");
        assert!(values["pilot_command"].starts_with("pilot --server http://s:1 --queue q --worker-id 7"));
        assert!(!values["pilot_command"].contains("--job-file"), "pull mode: no job file");
        worker.resources.walltime_seconds = 0;
        assert_eq!(common_values(&worker, Path::new("/l"), &[])["walltime_minutes"], "0");
        // Push mode: the pilot is told where its jobs are.
        worker.job_file = Some("/w/q/7/jobs.json".into());
        assert!(
            common_values(&worker, Path::new("/l"), &args(&["pilot"]))["pilot_command"]
                .ends_with(" --job-file /w/q/7/jobs.json")
        );
        // The queue's container runtimes: the pilot looks for them first.
        worker.container_runtimes = vec!["podman".into(), "apptainer".into()];
        assert!(
            common_values(&worker, Path::new("/l"), &args(&["pilot"]))["pilot_command"]
                .ends_with(" --container-runtimes podman,apptainer")
        );
    }

    #[test]
    fn a_job_is_lost_only_after_the_grace_period() {
        let unseen = Unseen::default();
        assert!(!unseen.lost("1", Duration::from_secs(60)));
        assert!(unseen.lost("1", Duration::ZERO));
        assert!(unseen.lock().is_empty(), "a lost job is forgotten");
        assert!(!unseen.lost("2", Duration::from_secs(60)));
        unseen.seen("2");
        assert!(unseen.lock().is_empty(), "a job seen again is forgotten");
    }
}
