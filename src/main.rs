//! `isolab`: the lab's command line. A thin clap front over the library
//! crates; every error becomes one sentence that names the thing and the fix.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod doctor;
mod host;

/// The static `isolab-agent`, embedded so the image the lab builds always
/// carries exactly the bytes this `isolab` was built with.
pub static AGENT: &[u8] = include_bytes!(env!("ISOLAB_AGENT_PATH"));

#[derive(Parser)]
#[command(
    name = "isolab",
    version,
    about = "Containers vs microVMs: the same workload, two isolation levels, measured side by side"
)]
struct Cli {
    /// Show structured logs (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Where isolab keeps images, instance state and caches.
    #[arg(
        long,
        global = true,
        env = "ISOLAB_HOME",
        default_value = "/var/lib/isolab"
    )]
    home: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what this host can do: KVM flavour, namespaces, cgroups, peers …
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Where to look for a guest kernel.
        #[arg(long, default_value = "/boot")]
        boot_dir: PathBuf,
        /// The KVM device.
        #[arg(long, default_value = "/dev/kvm")]
        kvm_device: PathBuf,
    },
    /// Write the embedded static isolab-agent to a file.
    Agent {
        /// Destination file (must not exist).
        #[arg(long)]
        write: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISOLAB_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("isolab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor {
            json,
            boot_dir,
            kvm_device,
        } => {
            let report = doctor::examine(&doctor::Options {
                boot_dir,
                kvm_device,
                state_dir: cli.home.clone(),
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", doctor::render(&report));
            }
            Ok(if report.container_backend_ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Agent { write } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&write)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create {}: {e}: choose a path that does not exist yet",
                        write.display()
                    )
                })?;
            f.write_all(AGENT)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
