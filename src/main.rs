//! `isolab`: the lab's command line. A thin clap front over the library
//! crates; every error becomes one sentence that names the thing and the fix.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod containers;
mod doctor;
mod host;
mod peers;
mod probes_cmd;
mod report;
mod selfprotect;
mod vms;

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
    /// Show structured logs (--verbose info, twice debug, three times
    /// trace). No short form: `-v` is `run`'s volume, as in Docker.
    #[arg(long, action = clap::ArgAction::Count, global = true)]
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
    /// Run one instance of a scenario (or a command) on a backend.
    Run(Box<RunArgs>),
    /// List containers (running ones; -a for all).
    Ps {
        #[arg(short, long)]
        all: bool,
    },
    /// Show a detached container's output.
    Logs {
        container: String,
        /// Keep following the output until the container exits.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a container: SIGTERM, then SIGKILL after the timeout.
    Stop {
        container: String,
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Remove a stopped container and its writable layer.
    Rm {
        container: String,
        /// Stop it first if it is running.
        #[arg(short, long)]
        force: bool,
    },
    /// Remove stopped and stale containers, orphan cgroups and peer leftovers.
    Prune,
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Measure backends side by side (interleaved) and write a run directory.
    Bench(bench::BenchArgs),
    /// Run the isolation probes on every available backend, side by side.
    Probes {
        /// Print the matrix as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Turn a run into charts and tables for the book (default: newest run).
    Report {
        /// Run directory (default: the newest under --results).
        run: Option<PathBuf>,
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// The book's directory; output goes to <book-dir>/src/generated.
        #[arg(long, default_value = "book")]
        book_dir: PathBuf,
    },
    /// Build the HTML book (after `isolab report`).
    Book {
        #[arg(long, default_value = "book")]
        book_dir: PathBuf,
    },
    /// Compare two runs and flag significant changes.
    Compare { run_a: PathBuf, run_b: PathBuf },
    /// The lab's main job: doctor, bench, report and book, in one go.
    Lab {
        #[command(flatten)]
        bench: bench::BenchArgs,
        #[arg(long, default_value = "book")]
        book_dir: PathBuf,
    },
    /// Write the embedded static isolab-agent to a file.
    Agent {
        /// Destination file (must not exist).
        #[arg(long)]
        write: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the default image: the static agent, plus busybox when a
    /// static busybox is installed.
    Build,
    /// Import an image from tar layers (plain or gzip), bottom layer first.
    Import {
        name: String,
        #[arg(required = true)]
        layers: Vec<PathBuf>,
        /// The program to start (absolute path inside the image).
        #[arg(long, default_value = "/isolab-agent")]
        entrypoint: String,
    },
    /// Write the default image's layers as an ext4 disk (cached; what
    /// `run --backend microvm --disk image` attaches) and print its path.
    Disk,
    /// List images.
    Ls,
    /// Remove an image (its layers go at the next prune).
    Rm { name: String },
}

/// Which engine runs the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// isolab's own namespace container runtime.
    Container,
    /// crun from an OCI bundle the lab writes.
    Crun,
    /// runc from an OCI bundle the lab writes.
    Runc,
    /// isolab's own KVM microVM monitor.
    Microvm,
    /// qemu-system-x86_64 -M microvm.
    Qemu,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "container")]
    backend: Backend,
    /// Image to run.
    #[arg(long, default_value = containers::DEFAULT_IMAGE)]
    image: String,
    /// Scenario for the agent (ignored when a command is given).
    #[arg(long, default_value = "startup")]
    scenario: String,
    /// Scenario parameter KEY=VALUE (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Print one JSON object: marks, phases, exit code, memory figures.
    #[arg(long, conflicts_with_all = ["interactive", "tty", "detach"])]
    json: bool,
    /// Keep stdin open (with -t: `-it` behaves like `docker run -it`).
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Run in the background and print the container id.
    #[arg(short, long, conflicts_with_all = ["interactive", "tty"])]
    detach: bool,
    /// Container name (default: its id).
    #[arg(long)]
    name: Option<String>,
    /// Hostname inside (default: the id).
    #[arg(long)]
    hostname: Option<String>,
    /// Environment KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Working directory inside.
    #[arg(short, long)]
    workdir: Option<String>,
    /// Memory limit, e.g. 64M or 1G.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Maximum number of processes.
    #[arg(long)]
    pids: Option<u64>,
    /// CPU quota in cores, e.g. 0.5.
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Map root inside to unprivileged host ids (user namespace).
    #[arg(long)]
    userns: bool,
    /// Do not install the default seccomp filter.
    #[arg(long)]
    no_seccomp: bool,
    /// Guest for the VM backends.
    #[arg(long, value_enum, default_value = "bare")]
    guest: vms::Guest,
    /// Guest memory for the VM backends, in MiB (default 64 bare, 256 Linux).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1048576))]
    mem: Option<u64>,
    /// vCPUs for the VM backends.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    vcpus: u8,
    /// Give up on a VM after this many seconds (default 10 bare, 120 Linux).
    #[arg(long)]
    timeout: Option<f64>,
    /// Guest kernel for --guest linux (default: found in /boot).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Boot our microVM's kernel at its PVH entry (32-bit, paging off,
    /// Xen's hvm_start_info) instead of the Linux 64-bit entry.
    #[arg(long)]
    pvh: bool,
    /// Bind a host file or directory into a container (repeatable):
    /// `HOST:TARGET` or `HOST:TARGET:ro`, as `docker run -v`.
    #[arg(short = 'v', long = "volume", value_name = "HOST:TARGET[:ro]")]
    volumes: Vec<String>,
    /// Attach a virtio-blk disk to a microVM (repeatable): a file
    /// (read-write), or `image` for the image's layers as a read-only ext4
    /// disk. The `disk-read` scenario gets `image` by default.
    #[arg(long = "disk", value_name = "FILE|image")]
    disks: Vec<String>,
    /// Command to run instead of the agent's scenario.
    #[arg(last = true)]
    command: Vec<String>,
}

/// Parses a byte size: `64M`, `1G`, `4096`, `512k`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((0, _)) => {
            return Err(format!(
                "{s:?} is not a size: use a number with k, M or G (e.g. 64M)"
            ))
        }
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                _ => {
                    return Err(format!(
                        "unknown size unit in {s:?}: use k, M or G (e.g. 64M)"
                    ))
                }
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use a number with k, M or G (e.g. 64M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1024.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a CPU count: use a positive number such as 0.5 or 2"
        )),
    }
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
        Command::Run(args) => run_cmd(&cli.home, *args),
        Command::Ps { all } => {
            print!("{}", containers::ps(&cli.home, all));
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { container, follow } => {
            containers::logs(&cli.home, &container, follow).map(|_| ExitCode::SUCCESS)
        }
        Command::Stop { container, time } => {
            containers::stop(&cli.home, &container, time).map(|_| ExitCode::SUCCESS)
        }
        Command::Rm { container, force } => {
            containers::rm(&cli.home, &container, force).map(|_| ExitCode::SUCCESS)
        }
        Command::Prune => {
            require_root("prune")?;
            for line in containers::prune(&cli.home)? {
                println!("removed {line}");
            }
            let (files, bytes) = vms::prune_cache(&cli.home);
            if files > 0 {
                println!(
                    "removed {files} cached file(s) in {} ({} KiB; rebuilt when needed)",
                    cli.home.join("cache").display(),
                    bytes / 1024
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(cmd) => image_cmd(&cli.home, cmd),
        Command::Bench(args) => {
            if nix::unistd::geteuid().is_root() {
                selfprotect::ensure_sealed()?;
            }
            bench::run(&cli.home, args).map(|(code, _)| code)
        }
        Command::Probes { json } => {
            require_root("the probes")?;
            selfprotect::ensure_sealed()?;
            let cols = probes_cmd::run_all(&cli.home);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&probes_cmd::to_json(&cols))?
                );
            } else {
                print!("{}", probes_cmd::render(&cols));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            run,
            results,
            book_dir,
        } => {
            let dir = match run {
                Some(r) => r,
                None => report::latest_run(&results)?,
            };
            let r = report::load_run(&dir)?;
            let out = book_dir.join("src/generated");
            report::generate(&r, &out)?;
            println!("report for {} written to {}", dir.display(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Book { book_dir } => {
            let html = report::build_book(&book_dir)?;
            println!("book built: {}", html.join("index.html").display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare { run_a, run_b } => {
            let (a, b) = (report::load_run(&run_a)?, report::load_run(&run_b)?);
            let changes = report::compare(&a.samples, &b.samples);
            let mut flagged = 0;
            println!(
                "{:<10} {:<32} {:<10} {:>12} {:>12} {:>8}  95% CI",
                "scenario", "metric", "backend", "median A", "median B", "B/A"
            );
            for ch in &changes {
                if ch.significant {
                    flagged += 1;
                }
                println!(
                    "{:<10} {:<32} {:<10} {:>12.1} {:>12.1} {:>8.3}  [{:.3}, {:.3}]{}",
                    ch.key.0,
                    ch.key.1,
                    ch.key.2,
                    ch.median_a,
                    ch.median_b,
                    ch.ratio,
                    ch.ci.0,
                    ch.ci.1,
                    if ch.significant { "  SIGNIFICANT" } else { "" }
                );
            }
            println!(
                "{flagged} significant change(s) of {} compared figures",
                changes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab { bench, book_dir } => {
            require_root("the lab")?;
            selfprotect::ensure_sealed()?;
            let (code, dir) = bench::run(&cli.home, bench)?;
            // The probe matrix joins the run's samples.
            let run = report::load_run(&dir)?;
            let cols = probes_cmd::run_all(&cli.home);
            {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(dir.join("samples.csv"))?;
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(&mut f);
                for s in
                    probes_cmd::samples(&cols, &run.manifest.run_id, &run.manifest.host.host_id)
                {
                    w.serialize(&s)?;
                }
                w.flush()?;
                drop(w);
                f.flush()?;
            }
            let r = report::load_run(&dir)?;
            report::generate(&r, &book_dir.join("src/generated"))?;
            let html = report::build_book(&book_dir)?;
            println!(
                "results: {}\nbook:    {}",
                dir.display(),
                html.join("index.html").display()
            );
            Ok(code)
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

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("{what} needs root (namespaces, overlayfs, cgroups): run it with sudo");
    }
    Ok(())
}

fn image_cmd(home: &std::path::Path, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let store = isolab_runtime::image::Store::new(home);
    match cmd {
        ImageCommand::Build => {
            let img = containers::build_default_image(home)?;
            println!("built image {} ({} layers)", img.name, img.layers.len());
        }
        ImageCommand::Import {
            name,
            layers,
            entrypoint,
        } => {
            let img = store.import(
                &name,
                &layers,
                isolab_runtime::image::ImageConfig {
                    entrypoint: vec![entrypoint],
                    env: vec!["PATH=/bin:/usr/bin:/sbin:/usr/sbin".into()],
                    cwd: "/".into(),
                    labels: Default::default(),
                },
            )?;
            println!("imported image {} ({} layers)", img.name, img.layers.len());
        }
        ImageCommand::Disk => {
            println!("{}", vms::image_disk(home)?.display());
        }
        ImageCommand::Ls => {
            for n in store.list() {
                println!("{n}");
            }
        }
        ImageCommand::Rm { name } => store.remove(&name)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn run_cmd(home: &std::path::Path, a: RunArgs) -> anyhow::Result<ExitCode> {
    if a.backend == Backend::Container && nix::unistd::geteuid().is_root() {
        // Before the launch mark: a one-time cost per isolab process.
        selfprotect::ensure_sealed()?;
    }
    // A harness that spawned this process passes its own launch instant.
    let launch = std::env::var("ISOLAB_LAUNCH_NS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(isolab_runtime::container::monotonic_ns);
    let limits = isolab_runtime::cgroups::Limits {
        memory_bytes: a.memory,
        pids: a.pids,
        cpus: a.cpus,
    };
    let volumes = a
        .volumes
        .iter()
        .map(|v| isolab_runtime::container::Volume::parse(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    if !volumes.is_empty() && matches!(a.backend, Backend::Microvm | Backend::Qemu) {
        anyhow::bail!("-v binds a host path into a container; a VM has no host filesystem to share: use --disk with --backend microvm");
    }
    if a.pvh && a.backend != Backend::Microvm {
        anyhow::bail!("--pvh picks our monitor's boot entry: use it with --backend microvm (QEMU's microvm always boots the bare guest through PVH)");
    }
    if !a.disks.is_empty() && a.backend != Backend::Microvm {
        anyhow::bail!(
            "--disk attaches a virtio disk to our microVM: use it with --backend microvm"
        );
    }
    let report = match a.backend {
        Backend::Container => {
            require_root("the container backend")?;
            let opts = containers::RunOptions {
                image: a.image.clone(),
                scenario: a.scenario.clone(),
                params: a.params.clone(),
                command: a.command.clone(),
                name: a.name.clone(),
                hostname: a.hostname.clone(),
                env: a.env.clone(),
                workdir: a.workdir.clone(),
                limits,
                userns: a.userns,
                seccomp: !a.no_seccomp,
                volumes: volumes.clone(),
            };
            if a.detach {
                println!("{}", containers::run_detached(home, &opts)?);
                return Ok(ExitCode::SUCCESS);
            }
            if !a.json {
                let code = containers::run_foreground(home, &opts, a.tty)?;
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            containers::run_captured(home, &opts, launch)?.0
        }
        Backend::Crun | Backend::Runc => {
            require_root("the crun/runc peers")?;
            if a.detach || a.tty || !a.command.is_empty() {
                anyhow::bail!("the crun/runc peers run the agent's scenarios only: drop -d/-t and the command");
            }
            let peer = if a.backend == Backend::Crun {
                peers::Peer::Crun
            } else {
                peers::Peer::Runc
            };
            let (report, output) = peers::run(
                home,
                peer,
                &a.image,
                &a.scenario,
                &a.params,
                &limits,
                &volumes,
            )?;
            if !a.json {
                print!("{output}");
                return Ok(ExitCode::from(report.exit_code.clamp(0, 255) as u8));
            }
            report
        }
        Backend::Microvm | Backend::Qemu => {
            if a.detach || !a.command.is_empty() || (a.tty && a.backend == Backend::Qemu) {
                anyhow::bail!("the VM backends run scenarios only (and -it only with --backend microvm): drop -d and the command");
            }
            let linux = a.guest == vms::Guest::Linux;
            let timeout = a.timeout.unwrap_or(if a.tty {
                3600.0
            } else if linux {
                120.0
            } else {
                10.0
            });
            if !(timeout > 0.0 && timeout <= 3600.0) {
                anyhow::bail!("--timeout {timeout} is out of range: use 0 < seconds <= 3600");
            }
            let opts = vms::VmOptions {
                guest: a.guest,
                scenario: a.scenario.clone(),
                params: a.params.clone(),
                mem_mib: a.mem.unwrap_or(if linux { 256 } else { 64 }),
                vcpus: a.vcpus,
                timeout: std::time::Duration::from_secs_f64(timeout),
                kernel: a.kernel.clone(),
                echo: !a.json,
                home: Some(home.to_path_buf()),
                interactive: a.interactive && a.tty,
                disks: a.disks.clone(),
                pvh: a.pvh,
            };
            let (report, serial) = if a.backend == Backend::Microvm {
                vms::run_microvm(&opts)?
            } else {
                vms::run_qemu(home, &opts)?
            };
            if !a.json {
                if a.backend == Backend::Qemu {
                    print!("{serial}");
                }
                return Ok(ExitCode::from(report.exit_code.clamp(0, 255) as u8));
            }
            report
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::from(report.exit_code.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("lots").unwrap_err().contains("is not a size"));
        assert!(parse_size("99999999999999G").is_err());
        assert!(parse_cpus("0").is_err());
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
    }
}
