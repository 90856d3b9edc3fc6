//! `skiff`: one binary for the whole cluster. `server`, `node` and `dev` run the
//! daemons; the other subcommands are the user's verbs, spoken to the scheduler's
//! HTTP API through `skiff_api::Client`.
//!
//! Errors from a verb end the process with status 1 and one line on stderr,
//! `error: <what was wrong and what to do>`.

mod commands;
mod output;

use clap::{Parser, Subcommand};
use commands::{daemons, deploy, events, exec, get, image, manage, rollout, secret, token, top, volume};
use skiff_api::tls::CaFingerprint;
use std::path::Path;
use std::process::ExitCode;

/// jemalloc rather than glibc's malloc: at a million replicas a fifth of the
/// scheduler's CPU went to glibc's allocator (`_int_malloc`,
/// `malloc_consolidate`; #7, scenario B).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The address a CLI talks to when nothing else says.
const DEFAULT_SERVER: &str = "https://127.0.0.1:7070";
/// Where `skiff dev` (run in this directory) leaves the URL it serves on.
const DEV_SERVER_URL_FILE: &str = ".skiff/server.url";
/// Where `skiff dev` (run in this directory) leaves its admin API token.
const DEV_TOKEN_FILE: &str = ".skiff/admin-token";
/// Where `skiff dev` (run in this directory) keeps its CA's certificate.
const DEV_CA_FILE: &str = ".skiff/ca.crt";

#[derive(Debug, Parser)]
#[command(name = "skiff", about = "skiff: a workload scheduler for Wasm and containers", version)]
struct Cli {
    /// The scheduler's URL [default: the URL in ./.skiff/server.url, else https://127.0.0.1:7070]
    #[arg(long, global = true, env = "SKIFF_SERVER")]
    server: Option<String>,

    /// The API token, given before the subcommand (skiff --token T get nodes) [default: ./.skiff/admin-token, else ~/.config/skiff/token]
    #[arg(long = "token", env = "SKIFF_TOKEN", hide_env_values = true)]
    api_token: Option<String>,

    /// Trust the server's HTTPS only if its CA has this fingerprint (sha256:HEX, printed by skiff server) [default: that of --ca-file]
    #[arg(long, global = true, env = "SKIFF_CA_FINGERPRINT", value_name = "sha256:HEX")]
    ca_fingerprint: Option<String>,

    /// The server's CA certificate (its DATA_DIR/ca.crt), trusted by its fingerprint [default: ./.skiff/ca.crt, else ~/.config/skiff/ca.crt]
    #[arg(long, global = true, env = "SKIFF_CA_FILE", value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,

    /// The namespace to act in [default: default]; for `token create`, the one the token is scoped to [default: every one]
    #[arg(short = 'n', long, global = true, env = "SKIFF_NAMESPACE", value_name = "NS")]
    namespace: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scheduler (control plane)
    Server(daemons::ServerArgs),
    /// Run a node daemon that joins a scheduler and runs replicas
    Node(daemons::NodeArgs),
    /// Run a scheduler and a node in one process, for development
    Dev(daemons::DevArgs),
    /// Upload a .wasm file and create or update a deployment running it
    Deploy(deploy::DeployArgs),
    /// Create or update the deployments of a YAML manifest
    Apply(deploy::ApplyArgs),
    /// List nodes, deployments or replicas
    Get(get::GetArgs),
    /// Show a deployment or a node in detail, with its replicas and events
    Describe(get::DescribeArgs),
    /// Set a deployment's replica count
    Scale(manage::ScaleArgs),
    /// Delete a deployment and stop its replicas
    #[command(visible_alias = "rm")]
    Delete(manage::DeleteArgs),
    /// Print the logs of a deployment's replicas, or of a job's runs (job/NAME)
    Logs(manage::LogsArgs),
    /// Run a command in a container replica (`skiff exec -it R -- sh` for a shell); exits with its code
    Exec(exec::ExecArgs),
    /// Forward a local TCP port to a replica's port (LOCAL:REMOTE), through the scheduler
    PortForward(exec::PortForwardArgs),
    /// Run a .wasm file or an image once, streaming its output; exits with its status
    Run(commands::run::RunArgs),
    /// Start a cron's job now
    Cron(commands::job::CronArgs),
    /// Show each replica's cpu and memory now, busiest first
    Top(top::TopArgs),
    /// Print what the controllers decided and why; -f follows
    Events(events::EventsArgs),
    /// Import and list OCI images for container deployments
    Image(image::ImageArgs),
    /// Create, list and delete secrets
    Secret(secret::SecretArgs),
    /// Log in to private registries the nodes pull images from
    Registry(commands::registry::RegistryArgs),
    /// Follow, undo, pause and resume rolling updates
    Rollout(rollout::RolloutArgs),
    /// Spread deployments' replicas over the nodes again, once (one replica at a
    /// time per deployment, the replacement first)
    Rebalance(commands::node::RebalanceArgs),
    /// List and delete named volumes
    Volume(volume::VolumeArgs),
    /// Create, list and revoke API tokens
    Token(token::TokenArgs),
    /// Create, list, describe and remove namespaces, and set their quotas
    #[command(visible_alias = "ns")]
    Namespace(commands::namespace::NamespaceArgs),
    /// Print skiff's version
    Version,
}

impl Command {
    fn is_daemon(&self) -> bool {
        matches!(self, Command::Server(_) | Command::Dev(_)) || matches!(self, Command::Node(a) if a.action.is_none())
    }
}

/// The scheduler URL to use: the flag or `SKIFF_SERVER`, else what `skiff dev`
/// wrote in the current directory, else the default.
fn resolve_server(flag: Option<String>) -> String {
    if let Some(url) = flag.filter(|u| !u.trim().is_empty()) {
        return url.trim().to_string();
    }
    if let Ok(text) = std::fs::read_to_string(Path::new(DEV_SERVER_URL_FILE)) {
        let url = text.trim();
        if !url.is_empty() {
            return url.to_string();
        }
    }
    DEFAULT_SERVER.to_string()
}

/// The API token to send: the flag or `SKIFF_TOKEN`, else what `skiff dev` wrote
/// in the current directory, else `~/.config/skiff/token`.
fn resolve_token(flag: Option<String>) -> Option<String> {
    if let Some(t) = flag.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        return Some(t);
    }
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/skiff/token"));
    [Some(Path::new(DEV_TOKEN_FILE).to_path_buf()), home]
        .into_iter()
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())
}

/// The CA fingerprint given by `--ca-fingerprint`, else `--ca-file` (or their env
/// variables), if any.
fn explicit_ca(fingerprint: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<CaFingerprint>> {
    use anyhow::Context;
    if let Some(fp) = fingerprint.map(str::trim).filter(|f| !f.is_empty()) {
        return Ok(Some(fp.parse().context("--ca-fingerprint")?));
    }
    match file {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
            Ok(Some(CaFingerprint::of_pem(&pem).with_context(|| format!("the CA file {}", path.display()))?))
        }
        None => Ok(None),
    }
}

/// The CA the CLI trusts: the flags, else the CA of the `skiff dev` run in the
/// current directory, else `~/.config/skiff/ca.crt` (as the token is found).
fn resolve_ca(fingerprint: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<CaFingerprint>> {
    if let Some(ca) = explicit_ca(fingerprint, file)? {
        return Ok(Some(ca));
    }
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/skiff/ca.crt"));
    for path in [Some(Path::new(DEV_CA_FILE).to_path_buf()), home].into_iter().flatten() {
        if path.exists() {
            return explicit_ca(None, Some(&path));
        }
    }
    Ok(None)
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// Clap's usage errors span several lines; skiff promises one. Keeps what was wrong
/// and drops the usage block and tips.
fn one_line_usage_error(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Usage:")
                && !l.starts_with("For more information")
                && !l.starts_with("tip:")
        })
        .collect();
    let mut line = parts.join(" ");
    if !line.starts_with("error:") {
        line = format!("error: {line}");
    }
    format!("{line} (see skiff --help)")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                };
            }
            eprintln!("{}", one_line_usage_error(&e));
            return ExitCode::FAILURE;
        }
    };

    init_logging(if cli.command.is_daemon() { "info" } else { "warn" });
    if cli.command.is_daemon() {
        daemons::raise_fd_limit();
    }

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.command.is_daemon() {
        // The scheduler's handlers wait on its state lock; with one worker per
        // core, a few waiting handlers stop the accept loop and heartbeats queue
        // up in the kernel until live nodes miss their grace period.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        builder.worker_threads((cores * 4).max(8));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    let daemon = cli.command.is_daemon();
    let result = runtime.block_on(run(cli));
    // Dropping a runtime waits for its blocking threads, and a guest may be running
    // in one: a daemon gives them a moment to finish, a verb does not wait at all.
    if daemon {
        runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    } else {
        runtime.shutdown_background();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, "doing x: because y", skipping a cause
/// whose text its parent already shows (many errors print their source too).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = resolve_server(cli.server);
    let token = resolve_token(cli.api_token);
    let (ca_flag, ca_file) = (cli.ca_fingerprint.as_deref(), cli.ca_file.as_deref());
    let namespace = cli.namespace.clone();
    let ca = if cli.command.is_daemon() { explicit_ca(ca_flag, ca_file)? } else { resolve_ca(ca_flag, ca_file)? };
    let client = |server: &str| {
        let c = skiff_api::Client::new(server);
        let c = match ca {
            Some(ca) => c.with_ca(ca),
            None => c,
        };
        let c = match &namespace {
            Some(ns) => c.with_namespace(ns),
            None => c,
        };
        match &token {
            Some(t) => c.with_token(t),
            None => c,
        }
    };
    match cli.command {
        Command::Server(mut args) => match args.action.take() {
            Some(action) => daemons::server_action(action).await,
            None => daemons::server(args).await,
        },
        Command::Node(mut args) => match args.action.take() {
            Some(action) => daemons::node_action(action, &client(&server)).await,
            None => daemons::node(args, server, ca).await,
        },
        Command::Dev(args) => daemons::dev(args).await,
        Command::Deploy(args) => deploy::deploy(args, &client(&server)).await,
        Command::Apply(args) => deploy::apply(args, &client(&server)).await,
        Command::Get(args) => get::get(args, &client(&server)).await,
        Command::Describe(args) => get::describe(args, &client(&server)).await,
        Command::Scale(args) => manage::scale(args, &client(&server)).await,
        Command::Delete(args) => manage::delete(args, &client(&server)).await,
        Command::Logs(args) => manage::logs(args, &client(&server)).await,
        Command::Exec(args) => exec::exec(args, &client(&server)).await,
        Command::PortForward(args) => exec::port_forward(args, &client(&server)).await,
        Command::Run(args) => commands::run::run(args, &client(&server)).await,
        Command::Cron(args) => commands::job::cron(args, &client(&server)).await,
        Command::Top(args) => top::top(args, &client(&server)).await,
        Command::Events(args) => events::events(args, &client(&server)).await,
        Command::Image(args) => image::image(args, &client(&server)).await,
        Command::Secret(args) => secret::secret(args, &client(&server)).await,
        Command::Registry(args) => commands::registry::registry(args, &client(&server)).await,
        Command::Rollout(args) => rollout::rollout(args, &client(&server)).await,
        Command::Rebalance(args) => commands::node::rebalance(args, &client(&server)).await,
        Command::Volume(args) => volume::volume(args, &client(&server)).await,
        Command::Token(args) => token::token(args, &client(&server), namespace.clone()).await,
        Command::Namespace(args) => commands::namespace::namespace(args, &client(&server)).await,
        Command::Version => {
            println!("skiff {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
