//! `isolab`: the lab's command line. A thin clap front over `isolab-lab`:
//! argument types, printing and exit codes; every error becomes one
//! sentence that names the thing and the fix.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use isolab_lab::{backends, bench, doctor, images, instances, probes, report, selfprotect};
use isolab_lab::{Attach, Guest, Home, InstanceSpec, VmSpec};

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
        /// The agent's result lines as they are (JSON), not in words.
        #[arg(long)]
        raw: bool,
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
    /// Build an image from a Containerfile (a subset of the Dockerfile language).
    Build {
        /// Name for the image, NAME[:TAG].
        #[arg(short, long)]
        tag: String,
        /// The Containerfile (default: CONTEXT/Containerfile, else CONTEXT/Dockerfile).
        #[arg(short, long)]
        file: Option<PathBuf>,
        /// ARG values, KEY=VALUE (repeatable).
        #[arg(long = "build-arg")]
        build_args: Vec<String>,
        /// Ignore the build cache.
        #[arg(long)]
        no_cache: bool,
        /// The build context: the directory COPY reads from.
        context: PathBuf,
    },
    /// Pull an image from a registry (HOST[:PORT]/REPO[:TAG|@DIGEST]).
    Pull {
        reference: String,
        #[command(flatten)]
        reg: RegistryArgs,
    },
    /// Push an image to a registry: NAME, or LOCAL and the REFERENCE to push it as.
    Push {
        name: String,
        reference: Option<String>,
        #[command(flatten)]
        reg: RegistryArgs,
    },
    /// Store credentials for a registry (checked against it first; kept 0600 in the home).
    Login {
        registry: String,
        #[arg(short, long)]
        username: String,
        /// Read the password from standard input (the only way: never on a command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        reg: RegistryArgs,
    },
    /// Forget a registry's credentials.
    Logout { registry: String },
    /// Measure backends side by side (interleaved) and write a run directory.
    Bench(BenchArgs),
    /// Run the isolation probes on every available backend, side by side.
    Probes {
        /// Print the matrix as JSON.
        #[arg(long)]
        json: bool,
        /// Also probe the lab's container on this network (host or
        /// bridge): a column `container-<network>` beside the default.
        #[arg(long, value_enum, default_value = "none")]
        network: NetworkArg,
    },
    /// Turn a run into charts and tables for the book (default: newest run).
    Report {
        /// Run directory (default: the newest under --results).
        run: Option<PathBuf>,
        #[arg(long, default_value_os_t = project_dir("results"))]
        results: PathBuf,
        /// The book's directory; output goes to <book-dir>/src/generated.
        #[arg(long, default_value_os_t = project_dir("book"))]
        book_dir: PathBuf,
    },
    /// Build the HTML book (after `isolab report`).
    Book {
        #[arg(long, default_value_os_t = project_dir("book"))]
        book_dir: PathBuf,
    },
    /// Compare two runs (directories or run ids) and flag significant changes.
    Compare {
        run_a: PathBuf,
        run_b: PathBuf,
        /// Where run ids are looked up.
        #[arg(long, default_value_os_t = project_dir("results"))]
        results: PathBuf,
    },
    /// The lab's main job: doctor, bench, report and book, in one go.
    Lab {
        #[command(flatten)]
        bench: BenchArgs,
        #[arg(long, default_value_os_t = project_dir("book"))]
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
    /// Load images from a `docker save` archive or an OCI image layout
    /// (directory, or tar as skopeo's oci-archive writes it).
    Load {
        /// The archive or layout directory.
        #[arg(short, long)]
        input: PathBuf,
        /// Name for the image (needed when the archive names none).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Save images to an archive `docker load` or skopeo reads.
    Save {
        /// Destination file.
        #[arg(short, long)]
        output: PathBuf,
        /// docker-archive (as `docker save`) or oci (an OCI layout in a tar).
        #[arg(long, value_enum, default_value = "docker-archive")]
        format: ArchiveFormat,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give an image another name (NAME[:TAG]).
    Tag { source: String, target: String },
    /// An image's layers and config, as JSON.
    Inspect { name: String },
    /// List images.
    Ls,
    /// Remove an image (its layers go at the next prune).
    Rm { name: String },
}

/// The backends' names, for clap (from the lab's registry).
fn backend_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        backends::registry()
            .iter()
            .map(|b| clap::builder::PossibleValue::new(b.name()).help(b.about())),
    )
}

/// How to reach a registry.
#[derive(clap::Args, Debug, Clone)]
struct RegistryArgs {
    /// Plain HTTP (a registry without TLS, e.g. on 127.0.0.1).
    #[arg(long)]
    insecure: bool,
    /// A PEM CA certificate to trust for this registry.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

/// `run --network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NetworkArg {
    None,
    Host,
    /// Docker's default: a veth on the lab bridge, with an address.
    Bridge,
}

impl NetworkArg {
    fn mode(self) -> isolab_lab::network::Mode {
        match self {
            NetworkArg::None => isolab_lab::network::Mode::None,
            NetworkArg::Host => isolab_lab::network::Mode::Host,
            NetworkArg::Bridge => isolab_lab::network::Mode::Bridge,
        }
    }
}

/// The archive `image save` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ArchiveFormat {
    DockerArchive,
    Oci,
}

/// Which guest a VM backend boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GuestArg {
    /// The lab's bare 64-bit guest: no OS at all.
    Bare,
    /// A Linux kernel with the agent as /init.
    Linux,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Which engine runs the instance.
    #[arg(long, default_value = "container", value_parser = backend_names())]
    backend: String,
    /// Image to run.
    #[arg(long, default_value = images::DEFAULT_IMAGE)]
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
    /// Show the agent's result line as it is (JSON), not in words.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
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
    /// User inside: NAME|UID[:GROUP|GID] (default: the image's USER, else root).
    #[arg(short, long)]
    user: Option<String>,
    /// Network: none (its own namespace with only loopback), host (the
    /// host's namespace: its interfaces and ports) or bridge (a veth on
    /// the lab bridge, as Docker's default network). The lab's default is
    /// none, unlike Docker's, so that a run never changes the host's
    /// network unless asked and every backend's figures start from the
    /// same (no) network.
    #[arg(
        long,
        default_value = "none",
        value_name = "none|host|bridge|container:NAME"
    )]
    network: String,
    /// Publish a container port on the host (with --network bridge):
    /// [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp] (repeatable).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/PROTO]"
    )]
    publish: Vec<String>,
    /// The lab bridge to attach to (default isolab0, or ISOLAB_BRIDGE).
    #[arg(long, value_name = "NAME")]
    bridge: Option<String>,
    /// The bridge's subnet when isolab makes it (default 10.213.0.0/24,
    /// or ISOLAB_SUBNET); checked against the host's routes.
    #[arg(long, value_name = "CIDR")]
    subnet: Option<String>,
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
    /// The namespaces the container gets, as a comma list of mount, pid,
    /// uts, ipc, net and cgroup (default: all). Leave one out to share the
    /// host's and see what it isolates; mount must stay.
    #[arg(long, value_name = "LIST")]
    namespaces: Option<String>,
    /// Do not install the default seccomp filter.
    #[arg(long)]
    no_seccomp: bool,
    /// Guest for the VM backends (default: bare; qemu-tcg boots linux).
    #[arg(long, value_enum)]
    guest: Option<GuestArg>,
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

#[derive(clap::Args)]
struct BenchArgs {
    /// Backends to compare (default: every available one).
    #[arg(long, value_delimiter = ',', value_parser = backend_names())]
    backends: Vec<String>,
    /// Scenarios to run (default: the catalog's bench set).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Measured repetitions per backend and scenario.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100000))]
    repetitions: u32,
    /// Warm-up repetitions (not recorded).
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// Where run directories go.
    #[arg(long, default_value_os_t = project_dir("results"))]
    results: PathBuf,
    /// Image to run.
    #[arg(long, default_value = images::DEFAULT_IMAGE)]
    image: String,
    /// A TOML file with the matrix (keys: backends, scenarios,
    /// repetitions, warmup, image); its keys replace the flags' values.
    #[arg(long, value_name = "FILE.toml")]
    matrix: Option<PathBuf>,
    /// Run every instance on this network (bridge: the lab's container,
    /// crun and runc on the lab bridge; host: the lab's container on the
    /// host's). The startup waterfall then shows the network phase.
    #[arg(long, value_enum, default_value = "none")]
    network: NetworkArg,
}

impl BenchArgs {
    fn options(self) -> anyhow::Result<bench::BenchOptions> {
        let mut o = bench::BenchOptions {
            backends: self.backends,
            scenarios: if self.scenarios.is_empty() {
                bench::default_scenarios()
            } else {
                self.scenarios
            },
            repetitions: self.repetitions,
            warmup: self.warmup,
            results: self.results,
            image: self.image,
            network: self.network.mode(),
        };
        if let Some(m) = &self.matrix {
            o.apply_matrix(m)?;
        }
        Ok(o)
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
            // Error text can carry bytes from an image (entry names, file
            // contents): never let them drive the terminal.
            eprintln!(
                "isolab: {}",
                isolab_lab::host::terminal_safe(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let home = Home::new(cli.home);
    let writes = matches!(
        cli.command,
        Command::Run(_)
            | Command::Image(_)
            | Command::Build { .. }
            | Command::Pull { .. }
            | Command::Push { .. }
            | Command::Login { .. }
            | Command::Logout { .. }
            | Command::Bench(_)
            | Command::Lab { .. }
            | Command::Probes { .. }
            | Command::Prune
    );
    if writes && nix::unistd::geteuid().is_root() {
        home.prepare().map_err(|e| {
            anyhow::anyhow!(
                "cannot prepare the isolab home {}: {e}: choose another with --home or ISOLAB_HOME",
                home.root().display()
            )
        })?;
    }
    match cli.command {
        Command::Doctor {
            json,
            boot_dir,
            kvm_device,
        } => doctor_cmd(&home, json, boot_dir, kvm_device),
        Command::Run(args) => run_cmd(&home, *args),
        Command::Ps { all } => {
            print!("{}", instances::ps(&home, all));
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            container,
            follow,
            raw,
        } => {
            instances::logs(&home, &container, follow, raw, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { container, time } => {
            isolab_lab::run::stop(&home, &container, time).map(|_| ExitCode::SUCCESS)
        }
        Command::Rm { container, force } => {
            isolab_lab::run::rm(&home, &container, force).map(|_| ExitCode::SUCCESS)
        }
        Command::Prune => {
            require_root("prune")?;
            for line in isolab_lab::run::prune(&home)? {
                println!("removed {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(cmd) => image_cmd(&home, cmd),
        Command::Build {
            tag,
            file,
            build_args,
            no_cache,
            context,
        } => {
            require_root("build")?;
            selfprotect::ensure_protected()?;
            let file = file.unwrap_or_else(|| {
                let c = context.join("Containerfile");
                if c.is_file() {
                    c
                } else {
                    context.join("Dockerfile")
                }
            });
            let b = isolab_lab::build::build(&home, &context, &file, &tag, &build_args, no_cache)?;
            for (step, cached) in &b.steps {
                eprintln!("{} {step}", if *cached { "cached " } else { "built  " });
            }
            println!(
                "built image {} ({} layers)",
                b.image.name,
                b.image.layers.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull { reference, reg } => {
            let r = isolab_runtime::registry::Reference::parse(&reference)?;
            let opts = images::registry_options(&home, &r.registry, reg.insecure, reg.tls_ca);
            let mut progress = images::layer_progress();
            let img =
                isolab_runtime::registry::pull(&home.store(), &r, &opts, None, &mut progress)?;
            println!("pulled {} ({} layers)", img.name, img.layers.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Push {
            name,
            reference,
            reg,
        } => {
            let r =
                isolab_runtime::registry::Reference::parse(reference.as_deref().unwrap_or(&name))?;
            let opts = images::registry_options(&home, &r.registry, reg.insecure, reg.tls_ca);
            let mut progress = images::layer_progress();
            let digest =
                isolab_runtime::registry::push(&home.store(), &name, &r, &opts, &mut progress)?;
            println!(
                "pushed {} as {}/{}:{} ({digest})",
                name, r.registry, r.repo, r.reference
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Login {
            registry,
            username,
            password_stdin: _,
            reg,
        } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                anyhow::bail!("no password on standard input: pipe it in, e.g. `cat pw | isolab login {registry} -u {username} --password-stdin`");
            }
            images::login(
                &home,
                &registry,
                &username,
                password,
                reg.insecure,
                reg.tls_ca,
            )?;
            println!(
                "login to {registry} succeeded; credentials kept in {}",
                home.root().join("auth.json").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Logout { registry } => {
            if images::logout(&home, &registry)? {
                println!("removed the credentials for {registry}");
            } else {
                println!("no credentials for {registry}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            if nix::unistd::geteuid().is_root() {
                selfprotect::ensure_protected()?;
            }
            let (ok, _) = bench::run(&home, args.options()?)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Probes { json, network } => {
            require_root("the probes")?;
            selfprotect::ensure_protected()?;
            let cols = probes::run_all(&home, network.mode());
            if json {
                println!("{}", serde_json::to_string_pretty(&probes::to_json(&cols))?);
            } else {
                print!("{}", probes::render(&cols));
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
        Command::Compare {
            run_a,
            run_b,
            results,
        } => {
            let resolve = |r: &PathBuf| report::compare::resolve_run(r, &results);
            let (a, b) = (
                report::load_run(&resolve(&run_a))?,
                report::load_run(&resolve(&run_b))?,
            );
            print!(
                "{}",
                report::compare::render(&report::compare(&a.samples, &b.samples))
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab { bench, book_dir } => lab_cmd(&home, bench, &book_dir),
        Command::Agent { write } => agent_cmd(&write),
    }
}

/// `isolab lab`: bench, probes, report and book in one go.
/// Where `results/` and `book/` are by default: the current directory when
/// it is an isolab checkout, else the checkout this binary was built from
/// (the book includes the project's own sources, so it is built there).
fn project_dir(name: &str) -> PathBuf {
    let built_from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Clap asks for every subcommand's defaults: look once.
    static ELSEWHERE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ELSEWHERE.get_or_init(|| {
        !std::path::Path::new("book/book.toml").is_file()
            && built_from.join("book/book.toml").is_file()
    }) {
        built_from.join(name)
    } else {
        PathBuf::from(name)
    }
}

fn lab_cmd(home: &Home, bench: BenchArgs, book_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    require_root("the lab")?;
    // Before a bench run that the book could then not show.
    report::check_book_sources(book_dir)?;
    selfprotect::ensure_protected()?;
    let (ok, dir) = bench::run(home, bench.options()?)?;
    // The probe matrix joins the run's samples.
    probes::append_to_run(
        &dir,
        &probes::run_all(home, isolab_lab::network::Mode::None),
    )?;
    let r = report::load_run(&dir)?;
    report::generate(&r, &book_dir.join("src/generated"))?;
    let html = report::build_book(book_dir)?;
    println!(
        "results: {}\nbook:    {}",
        dir.display(),
        html.join("index.html").display()
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `isolab agent --write PATH`.
fn agent_cmd(write: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(write)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create {}: {e}: choose a path that does not exist yet",
                write.display()
            )
        })?;
    f.write_all(images::AGENT)?;
    Ok(ExitCode::SUCCESS)
}

/// `isolab doctor`.
fn doctor_cmd(
    home: &Home,
    json: bool,
    boot_dir: PathBuf,
    kvm_device: PathBuf,
) -> anyhow::Result<ExitCode> {
    let report = doctor::examine(&doctor::Options {
        boot_dir,
        kvm_device,
        state_dir: home.root().to_path_buf(),
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

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("{what} needs root (namespaces, overlayfs, cgroups): run it with sudo");
    }
    Ok(())
}

fn image_cmd(home: &Home, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Build => {
            let img = images::build_default(home)?;
            println!("built image {} ({} layers)", img.name, img.layers.len());
        }
        ImageCommand::Import {
            name,
            layers,
            entrypoint,
        } => {
            let img = images::import(home, &name, &layers, &entrypoint)?;
            println!("imported image {} ({} layers)", img.name, img.layers.len());
        }
        ImageCommand::Disk => println!("{}", images::image_disk(home)?.display()),
        ImageCommand::Load { input, tag } => {
            for img in isolab_runtime::archive::load(&home.store(), &input, tag.as_deref())? {
                println!("loaded image {} ({} layers)", img.name, img.layers.len());
            }
        }
        ImageCommand::Save {
            output,
            format,
            names,
        } => {
            let f = match format {
                ArchiveFormat::DockerArchive => isolab_runtime::archive::Format::DockerArchive,
                ArchiveFormat::Oci => isolab_runtime::archive::Format::Oci,
            };
            isolab_runtime::archive::save(&home.store(), &names, &output, f)?;
        }
        ImageCommand::Tag { source, target } => {
            home.store().tag(&source, &target)?;
        }
        ImageCommand::Inspect { name } => {
            let img = images::open(home, &name)?;
            println!("{}", serde_json::to_string_pretty(&img)?);
        }
        ImageCommand::Ls => print!("{}", images::list_table(home)),
        ImageCommand::Rm { name } => home.store().remove(&name)?,
    }
    Ok(ExitCode::SUCCESS)
}

impl RunArgs {
    /// The instance this command line asks for.
    fn spec(&self) -> anyhow::Result<InstanceSpec> {
        let volumes = self
            .volumes
            .iter()
            .map(|v| isolab_runtime::container::Volume::parse(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut network_override = None;
        let namespaces = match &self.namespaces {
            None => Default::default(),
            Some(list) => {
                let (ns, net) = isolab_runtime::container::Namespaces::parse(list)
                    .map_err(|e| anyhow::anyhow!(e))?;
                if !ns.uts && self.hostname.is_some() {
                    anyhow::bail!("--hostname needs the uts namespace: without it the name is the host's; add uts to --namespaces or drop --hostname");
                }
                if !net {
                    match self.network.as_str() {
                        "none" | "host" => network_override = Some(isolab_lab::network::Mode::Host),
                        other => anyhow::bail!("--namespaces without net shares the host's network: add net, or drop --network {other}"),
                    }
                }
                ns
            }
        };
        Ok(InstanceSpec {
            image: self.image.clone(),
            scenario: self.scenario.clone(),
            params: self.params.clone(),
            command: self.command.clone(),
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            net: {
                let (mode, container) = isolab_lab::network::NetSpec::mode_from(&self.network)?;
                let net = isolab_lab::network::NetSpec {
                    mode: network_override.unwrap_or(mode),
                    container,
                    publish: self
                        .publish
                        .iter()
                        .map(|p| isolab_lab::network::Publish::parse(p))
                        .collect::<anyhow::Result<_>>()?,
                    bridge: self.bridge.clone(),
                    subnet: self.subnet.clone(),
                };
                net.check()?;
                net
            },
            limits: isolab_runtime::cgroups::Limits {
                memory_bytes: self.memory,
                pids: self.pids,
                cpus: self.cpus,
            },
            userns: self.userns,
            raw_output: self.raw,
            namespaces,
            seccomp: !self.no_seccomp,
            volumes,
            vm: VmSpec {
                guest: self.guest.map(|g| match g {
                    GuestArg::Bare => Guest::Bare,
                    GuestArg::Linux => Guest::Linux,
                }),
                mem_mib: self.mem,
                vcpus: self.vcpus,
                timeout: self
                    .timeout
                    .map(|t| {
                        std::time::Duration::try_from_secs_f64(t).map_err(|_| {
                            anyhow::anyhow!(
                                "--timeout {t} is out of range: use 0 < seconds <= 3600"
                            )
                        })
                    })
                    .transpose()?,
                kernel: self.kernel.clone(),
                disks: self.disks.clone(),
                pvh: self.pvh,
            },
            launch_ns: isolab_lab::run::launch_from_env(),
            ..Default::default()
        })
    }

    fn attach(&self) -> Attach {
        if self.detach {
            Attach::Detached
        } else if self.json {
            Attach::Captured
        } else {
            Attach::Terminal {
                tty: self.tty,
                interactive: self.interactive,
            }
        }
    }
}

fn run_cmd(home: &Home, a: RunArgs) -> anyhow::Result<ExitCode> {
    let backend = backends::find(&a.backend)?;
    let spec = a.spec()?;
    if backend.runs_in_process() && nix::unistd::geteuid().is_root() {
        // Before anything of the instance exists: a one-time cost per
        // isolab process (CVE-2019-5736).
        selfprotect::ensure_protected()?;
    }
    match isolab_lab::run::run(home, backend, &spec, a.attach())? {
        isolab_lab::run::Ran::Report(r) => {
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(code(r.exit_code))
        }
        isolab_lab::run::Ran::Exited(c) => Ok(code(c)),
        isolab_lab::run::Ran::Detached(id) => {
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
    }
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
