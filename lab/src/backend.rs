//! The `Backend` trait: every engine the lab runs an instance on.
//!
//! The lab's own container runtime, the OCI peers (crun, runc), the lab's
//! own microVM monitor and QEMU's `microvm` machine each implement it in
//! one file under `backends/`; [`crate::backends::registry`] lists them.
//! `run`, `bench` and `probes` all dispatch through the registry, so a new
//! backend is one new file plus one line there.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use isolab_abi::catalog::{self, Scenario};
use isolab_reports::InstanceReport;
use isolab_runtime::cgroups::Limits;
use isolab_runtime::container::Volume;

use crate::home::Home;

/// What kind of isolation a backend gives: a process on the host's kernel,
/// or a guest with a kernel of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Container,
    Vm,
}

/// What runs inside an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guest {
    /// The `isolab-agent` as a container's entrypoint.
    #[default]
    Agent,
    /// The bare lab guest: no operating system at all.
    Bare,
    /// A Linux kernel with the agent as `/init`.
    Linux,
}

impl Guest {
    /// The name results use (`guest` column of `samples.csv`).
    pub fn as_str(self) -> &'static str {
        match self {
            Guest::Agent => "agent",
            Guest::Bare => "bare",
            Guest::Linux => "linux",
        }
    }

    /// How figures from this guest are labelled in tables and prose.
    pub fn label(self) -> &'static str {
        match self {
            Guest::Agent => "agent",
            Guest::Bare => "no-OS guest",
            Guest::Linux => "Linux guest",
        }
    }

    /// Whether this guest runs the scenario.
    pub fn runs(self, scenario: &Scenario) -> bool {
        match self {
            Guest::Agent | Guest::Linux => scenario.guests.agent,
            Guest::Bare => scenario.guests.bare,
        }
    }
}

/// Why a backend cannot run here, and how to fix that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub reason: String,
    /// The command that installs what is missing, when one does.
    pub install: Option<String>,
}

impl Unavailable {
    /// The sentence for a user who asked for this backend.
    pub fn sentence(&self) -> String {
        match &self.install {
            Some(cmd) => format!("{}: install it with `{cmd}`", self.reason),
            None => self.reason.clone(),
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.install {
            Some(cmd) => write!(f, "{}: skipped (install it with `{cmd}`)", self.reason),
            None => write!(f, "{}: skipped", self.reason),
        }
    }
}

/// Called with the pid of the process that holds an instance, as soon as
/// it exists (the detached shim records it for `stop`).
pub type SpawnHook = Arc<dyn Fn(i32) + Send + Sync>;

/// The limits every benched or probed instance gets (the lab's one set of
/// default limits): 256 MiB of memory, 1024 processes.
pub fn bench_limits() -> Limits {
    Limits {
        memory_bytes: Some(256 << 20),
        pids: Some(1024),
        cpus: None,
    }
}

/// Settings that only VM backends read.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    pub guest: Option<Guest>,
    /// Guest memory in MiB (default 64 bare, 256 Linux).
    pub mem_mib: Option<u64>,
    pub vcpus: u8,
    /// Give up after this long (default 10 s bare, 120 s Linux).
    pub timeout: Option<Duration>,
    pub kernel: Option<std::path::PathBuf>,
    /// virtio-blk disks: files, or [`crate::images::IMAGE_DISK`].
    pub disks: Vec<String>,
    pub pvh: bool,
}

impl VmSpec {
    pub fn guest(&self) -> Guest {
        self.guest.unwrap_or(Guest::Bare)
    }
    pub fn mem_mib(&self) -> u64 {
        self.mem_mib.unwrap_or(match self.guest() {
            Guest::Linux => 256,
            _ => 64,
        })
    }
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(match self.guest() {
            Guest::Linux => Duration::from_secs(120),
            _ => Duration::from_secs(10),
        })
    }
}

/// One instance to run: what the user or the bench asked for.
#[derive(Clone)]
pub struct InstanceSpec {
    pub image: String,
    pub scenario: String,
    /// `KEY=VALUE` scenario parameters.
    pub params: Vec<String>,
    /// A command instead of the agent's scenario (containers).
    pub command: Vec<String>,
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `-u NAME|UID[:GROUP|GID]`, over the image's `USER`.
    pub user: Option<String>,
    pub limits: Limits,
    pub userns: bool,
    /// `run --raw`: the agent's result line printed as it is, not in words.
    pub raw_output: bool,
    /// `--namespaces`: which of pid, uts, ipc and cgroup (containers).
    pub namespaces: isolab_runtime::container::Namespaces,
    pub seccomp: bool,
    pub volumes: Vec<Volume>,
    /// `--network`, `-p`, `--bridge`, `--subnet` (containers only).
    pub net: crate::network::NetSpec,
    pub vm: VmSpec,
    /// The instant the process running this instance was spawned, when a
    /// harness spawned it (`ISOLAB_LAUNCH_NS`); else stamped on entry.
    pub launch_ns: Option<u64>,
    /// An instance record the caller already made (a detached run's shim):
    /// the backend fills it in instead of making its own.
    pub record: Option<String>,
    pub on_spawn: Option<SpawnHook>,
}

impl Default for InstanceSpec {
    fn default() -> Self {
        InstanceSpec {
            image: crate::images::DEFAULT_IMAGE.into(),
            scenario: catalog::name::STARTUP.into(),
            params: vec![],
            command: vec![],
            name: None,
            hostname: None,
            env: vec![],
            workdir: None,
            user: None,
            limits: Limits::default(),
            userns: false,
            raw_output: false,
            namespaces: Default::default(),
            seccomp: true,
            volumes: vec![],
            net: Default::default(),
            vm: VmSpec {
                vcpus: 1,
                ..Default::default()
            },
            launch_ns: None,
            record: None,
            on_spawn: None,
        }
    }
}

impl std::fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("image", &self.image)
            .field("scenario", &self.scenario)
            .field("params", &self.params)
            .field("command", &self.command)
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl InstanceSpec {
    /// The scenario's catalog entry (an unknown name is one sentence
    /// listing the known ones).
    pub fn scenario_entry(&self) -> Result<&'static Scenario> {
        catalog::find(&self.scenario).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown scenario {:?}: use one of {}",
                self.scenario,
                catalog::CATALOG
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The launch instant: the harness's, or now.
    pub fn launch(&self) -> u64 {
        self.launch_ns.unwrap_or_else(crate::clock::monotonic_ns)
    }
}

/// How the user is attached to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Output captured, a report returned (`--json`, bench, probes).
    Captured,
    /// The user's terminal: output live, the exit code returned.
    Terminal { tty: bool, interactive: bool },
    /// In the background, owned by a shim (`-d`).
    Detached,
}

/// What a captured run returns: the report and everything the instance
/// printed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: InstanceReport,
    pub output: String,
}

/// An engine that runs instances.
pub trait Backend: Send + Sync {
    /// The name used on the command line and in results.
    fn name(&self) -> &'static str;
    /// One line for `--help` and the book.
    fn about(&self) -> &'static str;
    fn kind(&self) -> Kind;
    /// The backend this one's figures are compared with (a peer names
    /// the lab's engine of its kind).
    fn baseline(&self) -> Option<&'static str> {
        None
    }
    /// Another way of timing the backend named (the Docker Engine through
    /// its REST API instead of its CLI): the probes, which would give the
    /// same answers, skip it.
    fn variant_of(&self) -> Option<&'static str> {
        None
    }
    /// Whether its times and memory may be measured and compared (false
    /// for software emulation: `isolab bench` leaves it out, and its
    /// reports say why).
    fn timed(&self) -> bool {
        true
    }
    /// Whether it can run on this host, and if not, why and how to fix it.
    fn available(&self) -> Result<(), Unavailable>;
    /// What runs inside for this spec.
    fn guest(&self, spec: &InstanceSpec) -> Guest {
        match self.kind() {
            Kind::Container => Guest::Agent,
            Kind::Vm => spec.vm.guest(),
        }
    }
    /// Whether it takes `--network bridge` (the lab's container, crun,
    /// runc, and both monitors with the bare guest).
    fn supports_network(&self) -> bool {
        false
    }
    /// Whether it runs `scenario` with this spec's guest.
    fn supports(&self, scenario: &Scenario, spec: &InstanceSpec) -> bool {
        let guest = self.guest(spec);
        guest.runs(scenario) && (!scenario.needs_network() || self.supports_network())
    }
    /// Refuses, in one sentence, options this backend does not take.
    fn check(&self, spec: &InstanceSpec, attach: Attach) -> Result<()>;
    /// Runs one instance to its end, output captured.
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome>;
    /// Runs one instance with the user's terminal (`tty`: as a terminal,
    /// `-t`; `interactive`: its keys reach the instance, `-i`); returns the
    /// exit code. By default: a captured run printed at the end.
    fn run_attached(
        &self,
        home: &Home,
        spec: &InstanceSpec,
        _tty: bool,
        _interactive: bool,
    ) -> Result<i32> {
        let o = self.run(home, spec)?;
        if spec.raw_output {
            print!("{}", o.output);
        } else {
            let mut out = crate::capture::Human::new(std::io::stdout());
            let _ = std::io::Write::write_all(&mut out, o.output.as_bytes());
            let _ = out.finish();
        }
        Ok(o.report.exit_code)
    }
    /// Whether this backend makes containers inside this very process, so
    /// that the process must first run from a sealed copy of itself
    /// (CVE-2019-5736; see [`crate::selfprotect`]).
    fn runs_in_process(&self) -> bool {
        false
    }
    /// Ends what is left of instance `id` whose owner is gone (`stop` and
    /// `rm` of a dead instance). Returns whether anything was found.
    fn kill_stale(&self, _home: &Home, _id: &str) -> bool {
        false
    }
    /// Removes what a killed run of this backend may have left in `home`.
    /// Returns a line per removed thing.
    fn prune(&self, _home: &Home) -> Vec<String> {
        vec![]
    }
}

/// Container backends take no VM options.
pub(crate) fn refuse_vm_options(backend: &str, spec: &InstanceSpec) -> Result<()> {
    if spec.vm.pvh {
        bail!("--pvh picks our monitor's boot entry: use it with --backend microvm, not {backend}");
    }
    if !spec.vm.disks.is_empty() {
        bail!("--disk attaches a virtio disk to our microVM: use it with --backend microvm, not {backend}");
    }
    Ok(())
}

/// VM backends take no host paths and no commands.
pub(crate) fn refuse_container_options(spec: &InstanceSpec) -> Result<()> {
    use crate::network::Mode;
    match spec.net.mode {
        Mode::None => {}
        Mode::Host | Mode::Container => bail!(
            "--network {} shares a network namespace, which only a container has: a VM has its own kernel and network stack; use --network bridge (a tap and virtio-net on the lab bridge)",
            spec.net.mode.as_str()
        ),
        Mode::Bridge => {}
    }
    if spec.namespaces != Default::default() {
        bail!("--namespaces picks a container's namespaces; a VM has a kernel of its own: drop it");
    }
    if spec.command.is_empty()
        && spec.net.mode != Mode::Bridge
        && spec
            .scenario_entry()
            .is_ok_and(|s| s.needs_network() || s.name == isolab_abi::catalog::name::NET_ECHO)
    {
        bail!(
            "the {} scenario talks over the VM's network: add --network bridge (a tap on the lab bridge)",
            spec.scenario
        );
    }
    if !spec.volumes.is_empty() {
        bail!("-v binds a host path into a container; a VM has no host filesystem to share: use --disk with --backend microvm");
    }
    if !spec.command.is_empty() && spec.vm.guest() == Guest::Bare {
        bail!("the bare guest runs scenarios only: drop the command, or run an image's program in a Linux guest (--backend microvm --guest linux, or --backend qemu-tcg)");
    }
    if (spec.user.is_some() || spec.workdir.is_some()) && !crate::linux_guest::runs_an_image(spec) {
        bail!("-u and -w set the process an image runs: a scenario's agent runs as the VM's init, drop them");
    }
    Ok(())
}
