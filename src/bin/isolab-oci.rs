//! `isolab-oci`: the lab's runtime behind the OCI runtime command line,
//! for engines (`podman --runtime`, a `runtimes` entry in dockerd's
//! daemon.json) and for the lab's own `isolab-oci` peer. A thin clap front
//! over `isolab_lab::oci_runtime`, taking the options runc takes; every
//! error is one sentence on stderr and in `--log`.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use isolab_lab::oci_runtime::{self as oci, CreateOptions, Globals};

#[derive(Parser)]
#[command(
    name = "isolab-oci",
    version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.0.2"),
    about = "isolab's container runtime behind the OCI runtime command line"
)]
struct Cli {
    /// Where containers' state is kept.
    #[arg(long, global = true, default_value = oci::DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write errors to this file (engines read it on failure).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// The --log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    /// Use systemd for cgroups: refused (isolab-oci drives cgroupfs).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for compatibility; errors are always reported.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// The bundle: the directory holding config.json.
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's init pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Where to send the container's terminal (process.terminal true).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Extra descriptors to pass: only 0 is taken.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for compatibility: isolab always uses pivot_root.
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for compatibility: no session keyring is made.
    #[arg(long)]
    no_new_keyring: bool,
    id: String,
}

impl CreateArgs {
    fn options(&self) -> CreateOptions {
        CreateOptions {
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            console_socket: self.console_socket.clone(),
            preserve_fds: self.preserve_fds,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Set a container up and hold it before its program.
    Create(CreateArgs),
    /// Let a created container run its program.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's init (--all: to all its processes).
    Kill {
        #[arg(long, short)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Remove a stopped container (--force: any).
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Print what this runtime implements as JSON.
    Features,
    /// Create and start a container, and wait for it.
    Run(CreateArgs),
    /// Any other runtime command (exec, pause, update, ps, …): refused in
    /// one sentence.
    #[command(external_subcommand)]
    Other(Vec<String>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = Globals {
        root: cli.root.clone(),
        log: cli.log.clone(),
        log_json: cli.log_format == "json",
    };
    let _ = cli.debug;
    match go(&cli, &g) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            g.log_error(&msg);
            eprintln!("isolab-oci: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn go(cli: &Cli, g: &Globals) -> anyhow::Result<u8> {
    if !matches!(cli.log_format.as_str(), "text" | "json") {
        anyhow::bail!(
            "--log-format {:?} is not known: use text or json",
            cli.log_format
        );
    }
    if cli.systemd_cgroup {
        anyhow::bail!("isolab-oci drives cgroups itself (cgroupfs), not through systemd: configure the engine's cgroup manager as cgroupfs");
    }
    match &cli.command {
        Command::Create(a) => oci::create(g, &a.id, &a.options())?,
        Command::Start { id } => oci::start(g, id)?,
        Command::State { id } => {
            println!("{}", serde_json::to_string_pretty(&oci::state(g, id)?)?)
        }
        Command::Kill { all, id, signal } => oci::kill(g, id, oci::parse_signal(signal)?, *all)?,
        Command::Delete { force, id } => oci::delete(g, id, *force)?,
        Command::Features => println!("{}", serde_json::to_string_pretty(&oci::features())?),
        Command::Other(words) => anyhow::bail!(
            "isolab-oci does not implement `{}` yet: it implements create, start, state, kill, delete, features and run",
            words.first().map(String::as_str).unwrap_or("")
        ),
        Command::Run(a) => {
            let code = oci::run(g, &a.id, &a.options())?;
            return Ok(code.clamp(0, 255) as u8);
        }
    }
    Ok(0)
}
