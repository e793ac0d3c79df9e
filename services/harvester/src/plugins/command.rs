//! The edge of the batch plugins: running a batch system's commands (`sbatch`, `condor_q`, ...).
//!
//! Every command is a configurable argument-vector prefix ([`CommandLine`]), so a site can point to
//! its own installation, wrap a call (`[ssh, login-node, squeue]`), or a test can point to a fake.
//! [`CommandRunner`] is the one place where processes are spawned: with a deadline, stdin closed
//! or fed, and the child killed when the call is dropped; tests replace it with a scripted runner.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A command as configured: a program and leading arguments, written in YAML as a string
/// (`squeue`, `/opt/slurm/bin/squeue`) or a list (`[ssh, login1, squeue]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

impl CommandLine {
    /// A bare program name, found on `PATH`.
    pub fn program(name: &str) -> Self {
        Self(vec![name.to_owned()])
    }

    /// The full argument vector with `args` appended.
    pub fn with_args<I, S>(&self, args: I) -> Vec<String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0.iter().cloned().chain(args.into_iter().map(Into::into)).collect()
    }

    /// Why it cannot run, if so.
    pub fn problem(&self) -> Option<&'static str> {
        match self.0.first() {
            None => Some("must name a program"),
            Some(program) if program.trim().is_empty() => Some("must name a program"),
            _ => None,
        }
    }
}

impl schemars::JsonSchema for CommandLine {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CommandLine".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A program (found on PATH, or a path), or a program with leading arguments.",
            "anyOf": [
                { "type": "string", "minLength": 1 },
                { "type": "array", "items": { "type": "string" }, "minItems": 1 }
            ]
        })
    }
}

impl Serialize for CommandLine {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [program] => serializer.serialize_str(program),
            all => all.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CommandVisitor;
        impl<'de> Visitor<'de> for CommandVisitor {
            type Value = CommandLine;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a program (string) or a program with arguments (list of strings)")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<CommandLine, E> {
                Ok(CommandLine(vec![value.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandLine, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<String>()? {
                    parts.push(part);
                }
                Ok(CommandLine(parts))
            }
        }
        deserializer.deserialize_any(CommandVisitor)
    }
}

/// What a finished command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code (`None`: ended by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CommandOutput {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard error and output, trimmed and joined: for diagnostics.
    pub fn text(&self) -> String {
        let (err, out) = (self.stderr.trim(), self.stdout.trim());
        match (err.is_empty(), out.is_empty()) {
            (true, _) => out.to_owned(),
            (false, true) => err.to_owned(),
            (false, false) => format!("{err} {out}"),
        }
    }

    /// "exit code N: <text>", for a failed command.
    pub fn failure(&self) -> String {
        let code = self.code.map_or_else(|| "a signal".to_owned(), |c| format!("exit code {c}"));
        let text = self.text();
        if text.is_empty() { format!("ended with {code} and no output") } else { format!("ended with {code}: {text}") }
    }
}

/// A command could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program is missing or not executable.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading its output or feeding its input failed.
    #[error("{program}: {source}")]
    Io {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It did not end within the deadline (it was killed).
    #[error("{program} did not answer within {timeout:?} (killed)")]
    Timeout {
        /// The program.
        program: String,
        /// The deadline.
        timeout: Duration,
    },
    /// An empty argument vector.
    #[error("no program to run")]
    Empty,
}

impl CommandError {
    /// Whether trying again later may help: a missing program or an empty command will not.
    pub fn is_transient(&self) -> bool {
        match self {
            CommandError::Spawn { source, .. } => {
                !matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied)
            }
            CommandError::Io { .. } | CommandError::Timeout { .. } => true,
            CommandError::Empty => false,
        }
    }
}

/// Runs commands. Cancel-safe: dropping the future kills the child.
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs `argv` with `stdin` fed (or closed) and waits at most `timeout`.
    ///
    /// # Errors
    /// [`CommandError`] when it cannot start, its pipes fail, or it overruns the deadline. A
    /// non-zero exit is not an error here: it is in [`CommandOutput::code`].
    async fn run(&self, argv: &[String], stdin: Option<&str>, timeout: Duration)
    -> Result<CommandOutput, CommandError>;
}

/// Runs commands as child processes (`tokio::process`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRunner;

#[async_trait]
impl CommandRunner for ProcessRunner {
    async fn run(
        &self,
        argv: &[String],
        stdin: Option<&str>,
        timeout: Duration,
    ) -> Result<CommandOutput, CommandError> {
        let (program, args) = argv.split_first().ok_or(CommandError::Empty)?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CommandError::Spawn { program: program.clone(), source })?;
        let io = |source| CommandError::Io { program: program.clone(), source };
        let run = async {
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // A command may fail and exit before reading its input (condor_submit that cannot
                // reach the schedd): its exit code and stderr say why, not our broken pipe.
                match pipe.write_all(text.as_bytes()).await {
                    Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => return Err(io(error)),
                    _ => {}
                }
                // Dropping the pipe closes it, so the child sees the end of its input.
            }
            child.wait_with_output().await.map_err(io)
        };
        let output = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| CommandError::Timeout { program: program.clone(), timeout })??;
        Ok(CommandOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// A scripted [`CommandRunner`] for unit tests: answers calls in order and checks each argument
/// vector exactly.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    /// A scripted answer.
    pub enum Reply {
        /// The command ran.
        Output(CommandOutput),
        /// The program does not exist.
        Missing,
        /// It overran its deadline.
        Timeout,
    }

    /// Exit code 0 with this standard output.
    pub fn ok(stdout: &str) -> Reply {
        Reply::Output(CommandOutput { code: Some(0), stdout: stdout.to_owned(), stderr: String::new() })
    }

    /// This exit code and standard error.
    pub fn fail(code: i32, stderr: &str) -> Reply {
        Reply::Output(CommandOutput { code: Some(code), stdout: String::new(), stderr: stderr.to_owned() })
    }

    /// Expected calls and their answers, and the calls made (argument vector, stdin).
    #[derive(Default)]
    pub struct Scripted {
        script: Mutex<VecDeque<(Vec<String>, Reply)>>,
        /// Calls made so far.
        pub calls: Mutex<Vec<(Vec<String>, Option<String>)>>,
    }

    impl Scripted {
        /// Expects `argv` next, answered with `reply`.
        pub fn expect(&self, argv: &[&str], reply: Reply) -> &Self {
            let argv = argv.iter().map(|s| (*s).to_owned()).collect();
            self.script.lock().unwrap().push_back((argv, reply));
            self
        }

        /// Panics if expected calls were not made.
        pub fn done(&self) {
            let left: Vec<Vec<String>> = self.script.lock().unwrap().iter().map(|(argv, _)| argv.clone()).collect();
            assert!(left.is_empty(), "expected calls not made: {left:?}");
        }
    }

    #[async_trait]
    impl CommandRunner for Scripted {
        async fn run(
            &self,
            argv: &[String],
            stdin: Option<&str>,
            timeout: Duration,
        ) -> Result<CommandOutput, CommandError> {
            self.calls.lock().unwrap().push((argv.to_vec(), stdin.map(str::to_owned)));
            let (expected, reply) =
                self.script.lock().unwrap().pop_front().unwrap_or_else(|| panic!("unexpected call {argv:?}"));
            assert_eq!(argv, expected.as_slice(), "unexpected argument vector");
            let program = argv[0].clone();
            match reply {
                Reply::Output(output) => Ok(output),
                Reply::Missing => Err(CommandError::Spawn { program, source: std::io::ErrorKind::NotFound.into() }),
                Reply::Timeout => Err(CommandError::Timeout { program, timeout }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn output_stdin_and_exit_code_are_kept() {
        let out = ProcessRunner
            .run(&argv(&["/bin/sh", "-c", "cat; echo oops >&2; exit 3"]), Some("hello"), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out, CommandOutput { code: Some(3), stdout: "hello".into(), stderr: "oops\n".into() });
        assert_eq!(out.failure(), "ended with exit code 3: oops hello");
    }

    #[tokio::test]
    async fn a_command_that_exits_without_reading_its_input_reports_its_own_failure() {
        // Far more input than a pipe buffers, so the write meets the closed pipe.
        let input = "x".repeat(1 << 20);
        let out = ProcessRunner
            .run(&argv(&["/bin/sh", "-c", "echo 'no schedd' >&2; exit 1"]), Some(&input), Duration::from_secs(10))
            .await
            .expect("the exit code and stderr, not a broken pipe");
        assert_eq!((out.code, out.stderr.as_str()), (Some(1), "no schedd\n"));
    }

    #[tokio::test]
    async fn a_missing_program_is_permanent_and_a_timeout_transient() {
        let missing = ProcessRunner.run(&argv(&["/nonexistent/sbatch"]), None, Duration::from_secs(5)).await;
        let error = missing.unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(error.to_string().contains("/nonexistent/sbatch"), "{error}");

        let slow = ProcessRunner.run(&argv(&["/bin/sleep", "5"]), None, Duration::from_millis(100)).await;
        let error = slow.unwrap_err();
        assert!(error.is_transient() && matches!(error, CommandError::Timeout { .. }), "{error}");
    }

    #[test]
    fn command_lines_read_a_string_or_a_list() {
        let one: CommandLine = serde_yaml_ng::from_str("/opt/slurm/bin/squeue").unwrap();
        assert_eq!(one, CommandLine(argv(&["/opt/slurm/bin/squeue"])));
        let many: CommandLine = serde_yaml_ng::from_str("[ssh, login1, squeue]").unwrap();
        assert_eq!(many.with_args(["-h"]), argv(&["ssh", "login1", "squeue", "-h"]));
        assert_eq!(serde_yaml_ng::to_string(&one).unwrap().trim(), "/opt/slurm/bin/squeue");
        assert_eq!(CommandLine(vec![]).problem(), Some("must name a program"));
    }
}
