//! What a launch is given and what it can fail with: the spec, where the
//! standard streams go, volumes, the OCI defaults (capabilities, masked
//! and read-only paths), and the clock marks are read on. Shared by the
//! parent side (`mod.rs`) and the child side (`child.rs`).
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::cgroups::{CgroupError, Limits};
use crate::seccomp;

/// Errors launching or running a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{0}")]
    Entrypoint(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("instance dir {path}: {source}")]
    InstanceDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("clone3 failed: {0}: run as root on a kernel with namespaces (see `isolab doctor`)")]
    Clone(std::io::Error),
    #[error("container setup failed at stage {stage}: {message}")]
    Setup { stage: String, message: String },
    #[error("writing the user namespace maps failed: {0}")]
    IdMap(std::io::Error),
    #[error(transparent)]
    Launcher(&'static crate::launcher::LauncherError),
    #[error("waiting for the container failed: {0}")]
    Wait(nix::errno::Errno),
}

/// Where the container's standard streams go. Only pipes, /dev/null and
/// a pty the runtime made reach a container: never a host file or the
/// user's terminal, which a container could reopen through
/// `/proc/1/fd/N` or type into (TIOCSTI).
#[derive(Debug)]
pub enum Stdio {
    /// Three pipes (or /dev/null for a missing stdin) whose other ends
    /// the caller relays.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// stdout and stderr into this fd (a pipe's write end or a log file);
    /// stdin from /dev/null.
    Into(OwnedFd),
    /// A pty slave: becomes the controlling terminal, fds 0, 1 and 2.
    Pty(OwnedFd),
    /// This process's own fds 0, 1 and 2, as they are: only for an OCI
    /// engine calling the runtime (`isolab-oci`), which hands the runtime
    /// the container's streams (conmon's and the shim's pipes) as runc
    /// and crun take them.
    Inherit,
}

/// What changes when an engine drives the runtime through the OCI command
/// line (`isolab-oci create`/`start`) instead of the lab running a
/// container to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciMode {
    /// The bundle's root filesystem, prepared by the engine: bound onto
    /// itself and pivoted into, instead of the overlay of `lower_dirs`.
    pub rootfs: PathBuf,
    /// `create`'s start gate: a FIFO the container's init opens for
    /// writing once it is set up, which blocks until `start` opens it for
    /// reading (runc's exec FIFO). [`launch`](super::launch) returns when
    /// the init reaches the gate; None runs straight through (`run`).
    pub gate: Option<PathBuf>,
}

/// Everything needed to start one container.
#[derive(Debug)]
pub struct Spec {
    pub id: String,
    /// Overlay lower dirs, top first.
    pub lower_dirs: Vec<PathBuf>,
    /// Holds `upper/`, `work/` and `merged/`.
    pub instance_dir: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// The uid and gid the program runs as (None: root).
    pub user: Option<(u32, u32)>,
    pub hostname: String,
    pub limits: Limits,
    /// Map root in the container to an unprivileged host range.
    pub userns: bool,
    pub seccomp: bool,
    pub stdio: Stdio,
    /// Host files or directories bound into the container (`-v`).
    pub volumes: Vec<Volume>,
    /// Its network: its own namespace with only loopback, the host's, or
    /// its own with a veth on the lab bridge.
    pub network: Network,
    /// Which of the other namespaces it gets (`--namespaces`; all by
    /// default). The mount namespace is always made: it is how the
    /// container gets a root of its own.
    pub namespaces: Namespaces,
    /// The name of the container's cgroup under the lab's parent (the
    /// caller prefixes it with its home's tag, so `prune` in one home
    /// never touches another's).
    pub cgroup: String,
    /// Driven by an OCI engine: the bundle's rootfs, the start gate, and
    /// a container that outlives the process that created it (no parent
    /// death signal). None: the lab's own containers.
    pub oci: Option<OciMode>,
}

/// The namespaces a container gets besides mount and network (the
/// network is [`Network`]). Leaving one out shares the host's: the lab's
/// `--namespaces` shows each one's effect and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    pub pid: bool,
    pub uts: bool,
    pub ipc: bool,
    pub cgroup: bool,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            pid: true,
            uts: true,
            ipc: true,
            cgroup: true,
        }
    }
}

impl Namespaces {
    /// Parses `--namespaces mount,pid,uts,ipc,net,cgroup` (any subset that
    /// keeps `mount`); returns the set and whether `net` is in it.
    pub fn parse(list: &str) -> Result<(Namespaces, bool), String> {
        let mut n = Namespaces {
            pid: false,
            uts: false,
            ipc: false,
            cgroup: false,
        };
        let (mut net, mut mount) = (false, false);
        for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "mount" | "mnt" => mount = true,
                "pid" => n.pid = true,
                "uts" => n.uts = true,
                "ipc" => n.ipc = true,
                "cgroup" => n.cgroup = true,
                "net" | "network" => net = true,
                other => {
                    return Err(format!(
                        "unknown namespace {other:?} in --namespaces: use a comma list of mount, pid, uts, ipc, net, cgroup (user is --userns)"
                    ))
                }
            }
        }
        if !mount {
            return Err("--namespaces must keep mount: the mount namespace is how the container gets its own root (overlay and pivot_root)".into());
        }
        Ok((n, net))
    }
}

/// A container's network, as Docker's `--network` names them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// Its own namespace with only `lo` (`--network none`).
    #[default]
    None,
    /// No network namespace of its own — the host's interfaces, addresses
    /// and ports (`--network host`).
    Host,
    /// Its own namespace with `eth0`, one end of a veth pair whose other
    /// end is on the lab bridge (`--network bridge`). Its `/etc/hosts`,
    /// `/etc/resolv.conf` and `/etc/hostname` are the runtime's files.
    Bridge(crate::net::BridgeAttach),
    /// Another container's network namespace, joined by its file
    /// (`/proc/PID/ns/net`): `--network container:NAME`, as pods share one.
    Join(PathBuf),
}

/// A host path bound into the container, as `docker run -v` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

impl Volume {
    /// Parses `HOST:TARGET[:ro|:rw]`. The host path must exist; the
    /// target must be absolute, without `..`, and not `/`.
    pub fn parse(s: &str) -> Result<Volume, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            _ => {
                return Err(format!(
                    "invalid volume {s:?}: use HOST:TARGET or HOST:TARGET:ro"
                ))
            }
        };
        let source = Path::new(source);
        if !source.is_absolute() || !source.exists() {
            return Err(format!(
                "volume source {} does not exist: give an absolute path to an existing file or directory",
                source.display()
            ));
        }
        let t = Path::new(target);
        let bad = !t.is_absolute()
            || t.components().count() < 2
            || t.components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if bad {
            return Err(format!(
                "volume target {target:?} is not a usable absolute path: use one like /data (no `..`, not /)"
            ));
        }
        // /proc and /sys are the kernel's views that the masked and
        // read-only paths protect: a volume over them would undo that.
        if t.starts_with("/proc") || t.starts_with("/sys") || t == Path::new("/dev") {
            return Err(format!(
                "volume target {target:?} would cover the kernel's /proc, /sys or /dev and with them the container's masked paths: bind somewhere else, such as /data"
            ));
        }
        Ok(Volume {
            source: source.to_path_buf(),
            target: target.to_owned(),
            read_only,
        })
    }
}

/// Marks and the clock they are read on: the lab's one `Mark` type.
pub use isolab_abi::mark::{monotonic_ns, Mark};

/// First host uid/gid of the user-namespace mapping.
pub const USERNS_BASE: u32 = 100_000;
/// Size of the user-namespace mapping.
pub const USERNS_SIZE: u32 = 65_536;

// ANCHOR: default_caps
/// The capabilities a container keeps: Docker's default set *without*
/// CAP_MKNOD. Docker pairs CAP_MKNOD with a device cgroup that forbids
/// opening the nodes; isolab sets no device cgroup, and with CAP_MKNOD a
/// container could create a node for the host's disk and open it (the
/// `mknod_block_device` probe checks). Every other capability is dropped
/// from all sets, the bounding set included.
pub const DEFAULT_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];
// ANCHOR_END: default_caps

// ANCHOR: masked_paths
/// Paths hidden from the container (OCI defaults): files get /dev/null
/// bound over them, directories an empty read-only tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only (OCI defaults).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
// ANCHOR_END: masked_paths

/// The container's `RLIMIT_NOFILE` (soft, hard): 1024 / 65536 as Docker
/// gives, capped by what this process may set (raising a hard limit needs
/// CAP_SYS_RESOURCE, which some hosts do not grant even to root).
pub fn nofile_limits() -> (u64, u64) {
    let cur_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(1024);
    let hard = cur_hard.min(65536);
    (hard.min(1024), hard)
}
