//! `panda`: the command line. `panda up` runs every service in this process; the other commands
//! talk to running services over gRPC (`--server-url`, `--idds-url`, `--harvester-url`).

/// Prints a line to stdout; a closed pipe (`panda task list | head`) ends the program quietly
/// instead of panicking.
macro_rules! out {
    () => {
        $crate::render::emit(String::new())
    };
    ($($arg:tt)*) => {
        $crate::render::emit(format!($($arg)*))
    };
}

mod brokerage;
mod code;
mod cwl;
mod cwl_submit;
mod harvester_admin;
mod hpo;
mod logs;
mod render;
mod share;
mod up;
mod workflow;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use panda_client::{HarvesterServiceClient, ServerClient};
use panda_proto::convert::WireEnum;
use panda_proto::harvester::v1 as harvester;
use panda_proto::server::v1 as server;
use panda_runtime::config::Loader;
use panda_types::{JobStatus, TaskStatus};
use render::Format;

/// panda: workload and workflow management for science.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Server URL.
    #[arg(long = "server-url", global = true, env = "PANDA_SERVER_URL", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// idds (workflow engine) URL.
    #[arg(long = "idds-url", global = true, env = "PANDA_IDDS_URL", default_value = "http://127.0.0.1:50054")]
    idds: String,
    /// Harvester URL.
    #[arg(
        long = "harvester-url",
        global = true,
        env = "PANDA_HARVESTER_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    harvester: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every service in this process (embedded: SQLite, in-process bus, local pilots).
    Up {
        /// Config file (TOML); PANDA_* variables override it.
        #[arg(long, env = "PANDA_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (databases, storage, worker directories).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A workflow (YAML) to run once the services are up.
        #[arg(long)]
        workflow: Option<PathBuf>,
        /// Stop the services when the workflow ended (exit code 0 if it finished).
        #[arg(long, requires = "workflow")]
        exit_when_done: bool,
    },
    /// Tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Workflows.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// HPO studies (idds): points, their losses, the best.
    #[command(subcommand)]
    Hpo(hpo::HpoCommand),
    /// Queues known to the server, with their load.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Global shares: the server's share tree, each leaf's target and what it uses now.
    #[command(subcommand)]
    Share(share::ShareCommand),
    /// Harvester workers.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// One harvester's queues and workers (admin): counts per state, logs, kill.
    #[command(subcommand)]
    Harvester(harvester_admin::HarvesterCommand),
    /// Code archives (tar.gz) that tasks unpack into each job's directory.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Runs a pilot (what harvester's local plugin starts); `panda pilot --help` lists its flags.
    #[command(disable_help_flag = true)]
    Pilot {
        /// Pilot flags (see `panda pilot --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Runs a CWL document, each tool a job of an embedded system (or of `--server URL`; `--executor
    /// local` for plain processes): `panda cwl-runner [--outdir DIR] [--quiet] [--executor
    /// pilot|local] [--server URL] doc.cwl[#id] [job.yml]`.
    #[command(name = "cwl-runner", disable_help_flag = true)]
    CwlRunner {
        /// Runner arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Submits a task file (YAML).
    Submit {
        /// The file.
        file: PathBuf,
        /// Code for the jobs: a directory (packed) or a tar.gz, uploaded unless the cache has
        /// it, then named by the task (overrides `code_sha256` in the file).
        #[arg(long)]
        code: Option<PathBuf>,
    },
    /// Lists tasks, newest first.
    List {
        /// Only these states (repeatable).
        #[arg(long)]
        status: Vec<String>,
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only tasks whose name contains this text.
        #[arg(long)]
        name: Option<String>,
        /// Only tasks created within this long, e.g. 30m, 2h, 7days.
        #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One task.
    Show {
        /// Task ID.
        id: u64,
    },
    /// Kills a task.
    Kill {
        /// Task ID.
        id: u64,
    },
    /// Freezes a task: its queued jobs wait until it is resumed.
    Pause {
        /// Task ID.
        id: u64,
    },
    /// Resumes a paused task.
    Resume {
        /// Task ID.
        id: u64,
    },
    /// Follows a task's changes as they happen, until it ends; or, with --user, every change of
    /// a user's tasks until interrupted.
    Watch {
        /// Task ID.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        id: Option<u64>,
        /// Follow this user's tasks instead.
        #[arg(long)]
        user: Option<String>,
    },
    /// Runs an ended task's failed, cancelled and closed jobs again.
    Retry {
        /// Task ID.
        id: u64,
    },
    /// Why JEDI brokered the task's jobs where it did, or why it is pending: each queue dropped
    /// by which filter, and how the chosen queues scored.
    Brokerage {
        /// Task ID.
        id: u64,
    },
    /// Changes the priority of a task and its queued jobs.
    Priority {
        /// Task ID.
        id: u64,
        /// New priority (higher runs first).
        #[arg(allow_hyphen_values = true)]
        priority: i32,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Lists jobs, oldest first.
    List {
        /// Only this task's.
        #[arg(long)]
        task: Option<u64>,
        /// Only these states (repeatable).
        #[arg(long)]
        status: Vec<String>,
        /// Only this queue's.
        #[arg(long)]
        queue: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// One job, with what the pilot reported.
    Show {
        /// Job ID.
        id: u64,
    },
    /// Kills a job.
    Kill {
        /// Job ID.
        id: u64,
    },
    /// Follows a job's transitions as they happen, until it ends.
    Watch {
        /// Job ID.
        id: u64,
    },
    /// Prints a job's stdout (or stderr) as its pilot sent it.
    Logs {
        /// Job ID.
        id: u64,
        /// Standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
        /// Keep printing new output until the job ended.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Uploads a tar.gz, or a directory (packed first); prints the archive's sha256.
    Upload {
        /// A .tar.gz file or a directory.
        path: PathBuf,
        /// Recorded as the uploader.
        #[arg(long, env = "USER", default_value = "anonymous")]
        user: String,
    },
    /// Downloads an archive by sha256 (verified before it is written).
    Download {
        /// The archive's sha256.
        sha256: String,
        /// Where to write it [default: <sha256>.tar.gz] (a positional argument: `-o` is the
        /// output format of every command).
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Lists queues.
    List,
}

#[derive(Subcommand)]
enum WorkerCommand {
    /// Lists workers, newest first.
    List {
        /// Only this queue's.
        #[arg(long)]
        queue: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the effective configuration (defaults, file, environment).
    Show {
        /// Config file (TOML).
        #[arg(long, env = "PANDA_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// A gRPC status as the message a person can act on, anything else with its causes.
fn describe(error: &anyhow::Error) -> String {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return match status.code() {
            tonic::Code::Unavailable => format!("service unavailable ({}); is `panda up` running?", status.message()),
            code => format!("{}: {}", code_name(code), status.message()),
        };
    }
    format!("{error:#}")
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        _ => "error",
    }
}

fn parse_states<S: std::str::FromStr + WireEnum>(values: &[String]) -> anyhow::Result<Vec<i32>>
where
    S::Err: std::fmt::Display,
{
    values.iter().map(|v| v.parse::<S>().map(|s| s.to_wire()).map_err(|e| anyhow::anyhow!("--status: {e}"))).collect()
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let format = cli.output;
    match cli.command {
        Command::Up { config, data_dir, workflow, exit_when_done } => {
            let mut loader = Loader::new(config.as_deref());
            if let Some(dir) = data_dir {
                loader = loader.with_override("data_dir", dir);
            }
            let config = panda_all::AllConfig::load(&loader)?;
            let _telemetry = panda_runtime::telemetry::init("panda", &config.telemetry)?;
            let shutdown = panda_runtime::shutdown::on_signals();
            let code = up::up(config, up::UpOptions { workflow, exit_when_done }, shutdown).await?;
            Ok(code as u8)
        }
        Command::CwlRunner { args } => cwl::cwl_runner(args).await,
        Command::Pilot { args } => {
            // Parsed separately: the pilot has its own `--server` flag.
            use clap::Parser as _;
            let args = panda_pilot::cli::Args::parse_from(std::iter::once("panda pilot".to_owned()).chain(args));
            panda_pilot::cli::main(args).await?;
            Ok(0)
        }
        Command::Config(ConfigCommand::Show { config }) => {
            let config = panda_all::AllConfig::load(&Loader::new(config.as_deref()))?;
            out!("{}", toml::to_string_pretty(&config).context("cannot print the configuration")?.trim_end());
            Ok(0)
        }
        Command::Task(command) => {
            let server = ServerClient::new(&cli.server)?;
            task(server, command, format).await?;
            Ok(0)
        }
        Command::Job(command) => {
            let server = ServerClient::new(&cli.server)?;
            match command {
                JobCommand::List { task, status, queue, limit } => {
                    let statuses = parse_states::<JobStatus>(&status)?;
                    let request = server::ListJobsRequest {
                        task_id: task.unwrap_or(0),
                        statuses,
                        limit,
                        after_job_id: 0,
                        queue: queue.unwrap_or_default(),
                    };
                    let response = server.jobs.clone().list_jobs(request).await?;
                    render::jobs(format, &response.into_inner().jobs);
                }
                JobCommand::Show { id } => {
                    let job =
                        server.jobs.clone().show_job(server::ShowJobRequest { job_id: id }).await?.into_inner().job;
                    render::job(format, &job.context("server answered without a job")?);
                }
                JobCommand::Kill { id } => {
                    let job =
                        server.jobs.clone().kill_job(server::KillJobRequest { job_id: id }).await?.into_inner().job;
                    render::job(format, &job.context("server answered without a job")?);
                }
                JobCommand::Watch { id } => {
                    let request = server::WatchJobRequest { job_id: id };
                    let mut stream = server.jobs.clone().watch_job(request).await?.into_inner();
                    while let Some(update) = stream.message().await? {
                        let job = update.job.context("server answered without a job")?;
                        render::watch_update(format, &server::WatchTaskResponse { task: None, job: Some(job) }, false);
                    }
                }
                JobCommand::Logs { id, stderr, follow } => logs::print(&server, id, stderr, follow).await?,
            }
            Ok(0)
        }
        Command::Cache(command) => {
            let server = ServerClient::new(&cli.server)?;
            match command {
                CacheCommand::Upload { path, user } => code::upload_command(&server, &path, &user, format).await?,
                CacheCommand::Download { sha256, file } => {
                    let file = file.unwrap_or_else(|| PathBuf::from(format!("{sha256}.tar.gz")));
                    code::download_command(&server, &sha256, &file, format).await?
                }
            }
            Ok(0)
        }
        Command::Workflow(command) => Ok(workflow::run(command, &cli.idds, &cli.server, format).await?),
        Command::Hpo(command) => Ok(hpo::run(command, &cli.idds, format).await?),
        Command::Queue(QueueCommand::List) => {
            let server = ServerClient::new(&cli.server)?;
            let response = server.internal.clone().list_queues(server::ListQueuesRequest {}).await?;
            render::queues(format, &response.into_inner().queues);
            Ok(0)
        }
        Command::Share(command) => {
            share::run(&ServerClient::new(&cli.server)?, command, format).await?;
            Ok(0)
        }
        Command::Harvester(command) => {
            harvester_admin::run(&cli.harvester, command, format).await?;
            Ok(0)
        }
        Command::Worker(WorkerCommand::List { queue, limit }) => {
            let mut client = HarvesterServiceClient::new(panda_client::channel(&cli.harvester)?);
            let response =
                client.list_workers(harvester::ListWorkersRequest { queue: queue.unwrap_or_default(), limit }).await?;
            render::workers(format, &response.into_inner().workers);
            Ok(0)
        }
    }
}

async fn task(server: ServerClient, command: TaskCommand, format: Format) -> anyhow::Result<()> {
    let mut tasks = server.tasks.clone();
    match command {
        TaskCommand::Submit { file, code } => {
            let mut spec = panda_client::files::load_task(&file)?;
            if let Some(code) = code {
                let uploader = if spec.user.is_empty() { "anonymous" } else { spec.user.as_str() };
                spec.code_sha256 = code::upload(&server, &code, uploader).await?.sha256;
            }
            let response = tasks
                .submit_task(server::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() })
                .await?;
            let id = response.into_inner().task_id;
            match format {
                Format::Json => out!("{}", serde_json::json!({"task_id": id})),
                Format::Table => out!("task {id} submitted; follow it with: panda task show {id}"),
            }
        }
        TaskCommand::List { status, user, name, since, limit } => {
            let statuses = parse_states::<TaskStatus>(&status)?;
            let created_after = since
                .map(|since| chrono::Utc::now() - chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX))
                .map(panda_proto::convert::timestamp);
            let request = server::ListTasksRequest {
                statuses,
                user: user.unwrap_or_default(),
                limit,
                name_contains: name.unwrap_or_default(),
                created_after,
                ..Default::default()
            };
            let response = tasks.list_tasks(request).await?;
            render::tasks(format, &response.into_inner().tasks);
        }
        TaskCommand::Brokerage { id } => brokerage::show(&server, id, format).await?,
        TaskCommand::Show { id } => {
            let task = tasks.get_task(server::GetTaskRequest { task_id: id }).await?.into_inner().task;
            render::task(format, &task.context("server answered without a task")?);
        }
        TaskCommand::Kill { id } => {
            let task = tasks.kill_task(server::KillTaskRequest { task_id: id }).await?.into_inner().task;
            render::task(format, &task.context("server answered without a task")?);
        }
        TaskCommand::Pause { id } => {
            let task = tasks.pause_task(server::PauseTaskRequest { task_id: id }).await?.into_inner().task;
            render::task(format, &task.context("server answered without a task")?);
        }
        TaskCommand::Watch { id: None, user } => {
            let user = user.context("give a task ID or --user")?;
            let mut stream = tasks.watch_user_tasks(server::WatchUserTasksRequest { user }).await?.into_inner();
            while let Some(update) = stream.message().await? {
                render::watch_update(format, &update, true);
            }
        }
        TaskCommand::Watch { id: Some(id), .. } => {
            let mut stream = tasks.watch_task(server::WatchTaskRequest { task_id: id }).await?.into_inner();
            // A task line only when the task's summary changed, not with every job line.
            let mut last_task = None;
            while let Some(update) = stream.message().await? {
                let summary = update.task.as_ref().map(|t| (t.status, t.job_counts, t.error_diag.clone()));
                let task_changed = summary != last_task;
                last_task = summary;
                render::watch_update(format, &update, task_changed);
            }
        }
        TaskCommand::Retry { id } => {
            let task = tasks.retry_task(server::RetryTaskRequest { task_id: id }).await?.into_inner().task;
            render::task(format, &task.context("server answered without a task")?);
        }
        TaskCommand::Resume { id } => {
            let task = tasks.resume_task(server::ResumeTaskRequest { task_id: id }).await?.into_inner().task;
            render::task(format, &task.context("server answered without a task")?);
        }
        TaskCommand::Priority { id, priority } => {
            let request = server::SetTaskPriorityRequest { task_id: id, priority };
            let task = tasks.set_task_priority(request).await?.into_inner().task;
            render::task(format, &task.context("server answered without a task")?);
        }
    }
    Ok(())
}
