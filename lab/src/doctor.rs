//! `isolab doctor`: one look at what this host can do, each line with a
//! status and, when something is missing, the exact fix.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use isolab_microvm::kernel;
use isolab_runtime::cgroups::{CgroupLayout, CgroupMode};
use serde::Serialize;

use crate::host::{self, KvmFlavour};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Missing,
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KvmReport {
    pub device: PathBuf,
    pub present: bool,
    pub api_version: Option<i32>,
    pub error: Option<String>,
    pub flavour: KvmFlavour,
    pub nested: bool,
    pub boots_stock_linux: bool,
    pub meaning: String,
    /// KVM's hypervisor CPUID leaves, as the monitor passes them on.
    pub hypervisor_signature: Option<String>,
    pub hypervisor_max_leaf: Option<u32>,
    /// Would a `CONFIG_PVM_GUEST` kernel recognise this hypervisor?
    pub pvm_guest_detects: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupReport {
    pub mode: CgroupMode,
    pub controllers: Vec<String>,
    pub v2_mount: Option<PathBuf>,
    pub v1_mounts: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub installed: bool,
    pub path: Option<PathBuf>,
    pub version: Option<String>,
    pub install: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GuestKernelReport {
    pub found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<kernel::KernelInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole report; `--json` prints exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub cpu_model: String,
    pub root: bool,
    pub kvm: KvmReport,
    /// Namespace kind → usable (an `unshare` of it succeeded in a child).
    pub namespaces: BTreeMap<String, bool>,
    pub user_namespaces: BTreeMap<String, String>,
    pub cgroups: CgroupReport,
    pub overlayfs: bool,
    pub seccomp: bool,
    pub guest_kernel: GuestKernelReport,
    pub peers: BTreeMap<String, PeerReport>,
    pub busybox_static: Option<PathBuf>,
    pub memory_available_bytes: Option<u64>,
    pub disk_free_bytes: Option<u64>,
    pub container_backend_ready: bool,
    pub microvm_backend_ready: bool,
    pub checks: Vec<Check>,
}

/// Where `doctor` looks.
pub struct Options {
    pub boot_dir: PathBuf,
    pub kvm_device: PathBuf,
    pub state_dir: PathBuf,
}

const NAMESPACES: [(&str, libc::c_int); 8] = [
    ("user", libc::CLONE_NEWUSER),
    ("pid", libc::CLONE_NEWPID),
    ("mount", libc::CLONE_NEWNS),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
];

/// Namespaces the container backend cannot do without.
const REQUIRED_NAMESPACES: [&str; 5] = ["pid", "mount", "uts", "ipc", "net"];

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Adds one line to the table.
fn add(checks: &mut Vec<Check>, name: &str, status: Status, detail: String, fix: Option<&str>) {
    checks.push(Check {
        name: name.to_owned(),
        status,
        detail,
        fix: fix.map(str::to_owned),
    })
}

pub fn examine(opts: &Options) -> Report {
    let mut checks = Vec::new();
    let kernel = host::kernel_release();
    add(&mut checks, "kernel", Status::Ok, kernel.clone(), None);
    let root = root_check(&mut checks);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm = kvm_check(&mut checks, opts, &cpuinfo);
    let namespaces = namespace_checks(&mut checks);
    let user_namespaces = user_namespace_check(&mut checks);
    let layout = cgroup_check(&mut checks);
    let controllers = layout.controllers();
    let overlayfs = overlay_check(&mut checks);
    let seccomp = seccomp_check(&mut checks);
    let guest_kernel = guest_kernel_check(&mut checks, &opts.boot_dir);
    let peers = peer_checks(&mut checks, &layout);
    let busybox_static = tool_checks(&mut checks);
    network_check(&mut checks);
    let (memory_available_bytes, disk) = resource_checks(&mut checks, &opts.state_dir);
    let container_backend_ready = root
        && overlayfs
        && REQUIRED_NAMESPACES
            .iter()
            .all(|n| namespaces.get(*n) == Some(&true));
    let microvm_backend_ready = kvm.api_version.is_some();
    Report {
        kernel,
        cpu_model: host::cpu_model(&cpuinfo),
        root,
        kvm,
        namespaces,
        user_namespaces,
        cgroups: CgroupReport {
            mode: layout.mode,
            controllers,
            v2_mount: layout.v2_mount.clone(),
            v1_mounts: layout.v1.clone(),
        },
        overlayfs,
        seccomp,
        guest_kernel,
        peers,
        busybox_static,
        memory_available_bytes,
        disk_free_bytes: disk.map(|d| d.1),
        container_backend_ready,
        microvm_backend_ready,
        checks,
    }
}

fn root_check(checks: &mut Vec<Check>) -> bool {
    let root = nix::unistd::geteuid().is_root();
    add(
        checks,
        "root",
        if root { Status::Ok } else { Status::Warn },
        if root {
            "running as root".into()
        } else {
            "not root: namespaces, cgroups and /dev/kvm need it".into()
        },
        (!root).then_some("run isolab with sudo"),
    );
    root
}

fn kvm_check(checks: &mut Vec<Check>, opts: &Options, cpuinfo: &str) -> KvmReport {
    // KVM.
    let present = opts.kvm_device.exists();
    let (api_version, kvm_error) = if present {
        match host::kvm_api_version(&opts.kvm_device) {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (
            None,
            Some(format!("{} does not exist", opts.kvm_device.display())),
        )
    };
    let flavour = host::kvm_flavour(present, cpuinfo, Path::new("/sys/module/kvm_pvm").exists());
    let leaves =
        api_version.and_then(|_| isolab_microvm::vmm::hypervisor_leaves(&opts.kvm_device).ok());
    let kvm = KvmReport {
        device: opts.kvm_device.clone(),
        present,
        api_version,
        error: kvm_error.clone(),
        flavour,
        nested: host::is_nested(cpuinfo),
        boots_stock_linux: flavour.boots_stock_linux() && api_version.is_some(),
        meaning: flavour.meaning().to_owned(),
        hypervisor_signature: leaves.as_ref().map(|l| l.signature.clone()),
        hypervisor_max_leaf: leaves.as_ref().map(|l| l.max_leaf),
        pvm_guest_detects: leaves.as_ref().map(|l| l.pvm()),
    };
    match (&kvm_error, api_version) {
        (None, Some(v)) => add(checks, "kvm",
            if flavour.boots_stock_linux() { Status::Ok } else { Status::Warn },
            format!("{} API {v}, flavour {}: {}", opts.kvm_device.display(), flavour.as_str(), flavour.meaning()),
            (flavour == KvmFlavour::Pvm).then_some("for the Linux guest use a PVM-aware kernel (--kernel PATH) or a host with hardware KVM; the bare guest runs as is"),
        ),
        _ => add(checks, "kvm",
            Status::Missing,
            kvm_error.clone().unwrap_or_default(),
            Some(if present {
                "run as root or add yourself to the kvm group (usermod -aG kvm $USER)"
            } else {
                "enable virtualisation in the firmware and load kvm_intel or kvm_amd (modprobe kvm_intel)"
            }),
        ),
    }
    if let (KvmFlavour::Pvm, Some(l)) = (flavour, &leaves) {
        let (status, detail) = if l.pvm() {
            (Status::Ok, format!(
                "KVM announces the PVM vendor leaf (0x40000002, \"{}\"), which the monitor passes on: a kernel built with CONFIG_PVM_GUEST recognises its hypervisor",
                l.vendor.as_deref().unwrap_or("")
            ))
        } else {
            (Status::Warn, format!(
                "KVM's hypervisor leaves stop at {:#x} ({:?}) with no PVM vendor leaf 0x40000002: a kernel built from virt-pvm/linux's CONFIG_PVM_GUEST looks for that leaf, so it may not recognise this host's PVM and would run as an ordinary guest",
                l.max_leaf, l.signature
            ))
        };
        add(checks, "pvm-guest", status, detail,
            Some("build a guest from github.com/virt-pvm/linux (branch pvm or an LTS branch) with CONFIG_PVM_GUEST=y and CONFIG_X86_PIE=y (its kernel runs in ring 3 at an address PVM allows, hence position-independent) and pass its vmlinux with --kernel PATH; `isolab run --backend microvm --guest linux --kernel PATH --json` reports how far it got"));
    }
    kvm
}

fn namespace_checks(checks: &mut Vec<Check>) -> BTreeMap<String, bool> {
    // Namespaces.
    let mut namespaces = BTreeMap::new();
    for (name, flag) in NAMESPACES {
        let res = host::try_unshare(flag);
        namespaces.insert(name.to_owned(), res.is_ok());
        let fix = match name {
            "user" => "sysctl -w user.max_user_namespaces=15000 (and kernel.unprivileged_userns_clone=1 on Debian)",
            "time" => "needs Linux ≥ 5.6 with CONFIG_TIME_NS",
            _ => "run as root on a kernel with CONFIG_NAMESPACES",
        };
        match res {
            Ok(()) => add(
                checks,
                &format!("namespace {name}"),
                Status::Ok,
                "unshare works".into(),
                None,
            ),
            Err(e) => add(
                checks,
                &format!("namespace {name}"),
                if REQUIRED_NAMESPACES.contains(&name) {
                    Status::Missing
                } else {
                    Status::Warn
                },
                format!("unshare failed: {}", e.desc()),
                Some(fix),
            ),
        }
    }
    namespaces
}

fn user_namespace_check(checks: &mut Vec<Check>) -> BTreeMap<String, String> {
    let mut user_namespaces = BTreeMap::new();
    for (k, p) in [
        ("max_user_namespaces", "/proc/sys/user/max_user_namespaces"),
        (
            "unprivileged_userns_clone",
            "/proc/sys/kernel/unprivileged_userns_clone",
        ),
        (
            "apparmor_restrict_unprivileged_userns",
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        ),
    ] {
        if let Some(v) = host::read_trim(p) {
            user_namespaces.insert(k.to_owned(), v);
        }
    }
    let max_userns: u64 = user_namespaces
        .get("max_user_namespaces")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    add(
        checks,
        "user namespace limits",
        if max_userns > 0 {
            Status::Ok
        } else {
            Status::Warn
        },
        user_namespaces
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        (max_userns == 0).then_some("sysctl -w user.max_user_namespaces=15000"),
    );
    user_namespaces
}

fn cgroup_check(checks: &mut Vec<Check>) -> CgroupLayout {
    // cgroups.
    let layout = CgroupLayout::detect().unwrap_or(CgroupLayout {
        mode: CgroupMode::None,
        v1: BTreeMap::new(),
        v2_mount: None,
        v2_controllers: Vec::new(),
    });
    let controllers = layout.controllers();
    let needed = ["memory", "pids", "cpu"];
    let lacking: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !controllers.iter().any(|x| x == c))
        .collect();
    add(checks, "cgroups",
        if layout.mode == CgroupMode::None || !lacking.is_empty() { Status::Warn } else { Status::Ok },
        format!(
            "mode {}{}; controllers: {}{}",
            layout.mode.as_str(),
            match (layout.mode, &layout.v2_mount) {
                (CgroupMode::Hybrid, Some(m)) => format!(" (v1 controllers + cgroup2 at {})", m.display()),
                _ => String::new(),
            },
            controllers.join(","),
            if lacking.is_empty() { String::new() } else { format!("; missing {}", lacking.join(",")) }
        ),
        (!lacking.is_empty()).then_some("enable the memory, pids and cpu controllers (cgroup_enable=memory on the kernel command line; on v2 write +memory +pids +cpu to cgroup.subtree_control)"),
    );
    layout
}

fn overlay_check(checks: &mut Vec<Check>) -> bool {
    // overlayfs, seccomp.
    let overlay_listed = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|t| t.lines().any(|l| l.ends_with("\toverlay")));
    let overlay_result = tempfile::Builder::new()
        .prefix("isolab-doctor-")
        .tempdir()
        .map_err(|e| e.to_string())
        .and_then(|d| host::try_overlay_mount(d.path()));
    let overlayfs = overlay_result.is_ok();
    add(
        checks,
        "overlayfs",
        if overlayfs {
            Status::Ok
        } else {
            Status::Missing
        },
        match &overlay_result {
            Ok(()) => "an overlay mount works".into(),
            Err(e) => {
                format!("overlay mount failed: {e} (listed in /proc/filesystems: {overlay_listed})")
            }
        },
        (!overlayfs).then_some("modprobe overlay"),
    );
    overlayfs
}

fn seccomp_check(checks: &mut Vec<Check>) -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments.
    let seccomp_mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    let actions = host::read_trim("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let seccomp = seccomp_mode >= 0 && actions.contains("errno");
    add(
        checks,
        "seccomp",
        if seccomp { Status::Ok } else { Status::Missing },
        if seccomp {
            format!("filter mode available; actions: {actions}")
        } else {
            "seccomp filters unavailable".into()
        },
        (!seccomp).then_some("use a kernel built with CONFIG_SECCOMP_FILTER"),
    );
    seccomp
}

fn guest_kernel_check(checks: &mut Vec<Check>, boot_dir: &Path) -> GuestKernelReport {
    // Guest kernel.
    match kernel::find_in(boot_dir).and_then(|p| kernel::inspect(&p)) {
        Ok(info) => {
            let fmt = match &info.format {
                kernel::KernelFormat::BzImage {
                    protocol,
                    compression,
                    entry64,
                    ..
                } => format!(
                    "bzImage, boot protocol {}.{:02}, {} payload{}",
                    protocol >> 8,
                    protocol & 0xff,
                    serde_json::to_value(compression)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    if *entry64 { ", 64-bit entry" } else { "" }
                ),
                kernel::KernelFormat::Elf { pvh, .. } => {
                    format!("ELF vmlinux{}", if *pvh { " with PVH note" } else { "" })
                }
            };
            add(
                checks,
                "guest kernel",
                Status::Ok,
                format!("{}: {fmt}", info.path.display()),
                None,
            );
            GuestKernelReport {
                found: true,
                info: Some(info),
                error: None,
            }
        }
        Err(e) => {
            add(
                checks,
                "guest kernel",
                Status::Warn,
                e.to_string(),
                Some("apt-get install linux-image-cloud-amd64, or pass --kernel PATH"),
            );
            GuestKernelReport {
                found: false,
                info: None,
                error: Some(e.to_string()),
            }
        }
    }
}

fn peer_checks(checks: &mut Vec<Check>, layout: &CgroupLayout) -> BTreeMap<String, PeerReport> {
    // Peers.
    let mut peers = BTreeMap::new();
    for (name, program, pkg) in [
        ("isolab-oci", "isolab-oci", "isolab"),
        ("crun", "crun", "crun"),
        ("runc", "runc", "runc"),
        ("gvisor", "runsc", "runsc"),
        ("bwrap", "bwrap", "bubblewrap"),
        ("podman", "podman", "podman"),
        ("docker", "dockerd", "docker.io"),
        ("qemu", "qemu-system-x86_64", "qemu-system-x86"),
    ] {
        let (found, install) = if name == "isolab-oci" {
            // Built beside isolab, not a package.
            let found = crate::backends::oci::ISOLAB_OCI.program().and_then(|p| {
                let out = std::process::Command::new(&p)
                    .arg("--version")
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let v = host::parse_version(text.lines().next()?)?;
                Some((p, v))
            });
            (
                found,
                "cargo build --release (isolab-oci is built beside isolab)".to_owned(),
            )
        } else {
            (
                host::peer_version(program),
                format!("apt-get install {pkg}"),
            )
        };
        let caveat = match name {
            "isolab-oci" => Some(
                "the lab's own runtime behind the OCI command line: the isolab-oci peer runs it as crun and runc are run, podman-isolab and docker-isolab have those engines drive it; cgroupfs only, no user namespace".to_owned(),
            ),
            "crun" if layout.mode == CgroupMode::Hybrid => Some(
                "crun 1.8 refuses hybrid cgroups; isolab runs it in a private mount namespace with the cgroup2 mount hidden, so it sees pure v1".to_owned(),
            ),
            "gvisor" => Some(
                "run with --platform=ptrace (works without nested virtualisation, slowest; systrap needs a newer runsc) and --network=none; the workload reads the Sentry's clock, so only launch→exit is timed".to_owned(),
            ),
            "podman" if layout.mode == CgroupMode::Hybrid => Some(
                "its default runtime (crun 1.8) refuses hybrid cgroups, so isolab runs it with --runtime runc; nofile/nproc are asked at or below the current limits (root here may lack CAP_SYS_RESOURCE)".to_owned(),
            ),
            "podman" => Some(
                "nofile/nproc are asked at or below the current limits (root may lack CAP_SYS_RESOURCE)".to_owned(),
            ),
            "docker" => Some(
                "isolab starts its own dockerd once per isolab process (data, exec root and socket under the home; no iptables, no bridge) before the timed window, and stops it at exit".to_owned(),
            ),
            "bwrap" => Some(
                "namespaces, mounts and capabilities only: isolab adds the cgroup (same limits as its containers); no seccomp filter".to_owned(),
            ),
            _ => None,
        };
        match &found {
            Some((path, v)) => add(
                checks,
                &format!("peer {name}"),
                Status::Ok,
                format!(
                    "{} {v}{}",
                    path.display(),
                    caveat
                        .as_ref()
                        .map(|c| format!(" — {c}"))
                        .unwrap_or_default()
                ),
                None,
            ),
            None => add(
                checks,
                &format!("peer {name}"),
                Status::Warn,
                format!("{program} not installed; its column will be skipped"),
                Some(&install),
            ),
        }
        peers.insert(
            name.to_owned(),
            PeerReport {
                installed: found.is_some(),
                path: found.as_ref().map(|f| f.0.clone()),
                version: found.map(|f| f.1),
                install,
                caveat,
            },
        );
    }
    peers
}

/// `--network bridge` and `-p` on this host: rtnetlink, how published
/// ports are served, whether remote clients reach them, and the bridge.
fn network_check(checks: &mut Vec<Check>) {
    let netlink =
        isolab_runtime::net::Netlink::open().and_then(|mut nl| nl.routes().map(|r| r.len()));
    match netlink {
        Ok(_) => {
            let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .is_ok_and(|s| s.trim() == "1");
            let kind = crate::network::nat_kind();
            let nft = kind.is_some();
            let tool = match kind {
                Some(crate::network::NatKind::Nft) => "nftables",
                Some(crate::network::NatKind::Iptables) => "iptables (no nft here)",
                None => "",
            };
            let how = match (nft, forwarding) {
                (true, true) => format!("-p: {tool} DNAT for local and remote clients, a userspace proxy for 127.0.0.1"),
                (true, false) => format!("-p: {tool} DNAT for this host's own clients, a userspace proxy for 127.0.0.1 and for remote clients (ip_forward is off; isolab never turns it on)"),
                (false, _) => "-p: a userspace proxy only (no nft or iptables, or ISOLAB_NAT=proxy)".to_owned(),
            };
            let bridge = std::env::var("ISOLAB_BRIDGE")
                .unwrap_or_else(|_| crate::network::DEFAULT_BRIDGE.into());
            let exists = isolab_runtime::net::Netlink::open()
                .and_then(|mut nl| nl.link_index(&bridge))
                .ok()
                .flatten()
                .is_some();
            add(
                checks,
                "network",
                if nft { Status::Ok } else { Status::Warn },
                format!(
                    "--network bridge: rtnetlink works; bridge {bridge} {}; {how}",
                    if exists {
                        "exists"
                    } else {
                        "is made on first use"
                    }
                ),
                (!nft).then_some(
                    "apt-get install nftables or iptables (else published ports go through the proxy only)",
                ),
            );
        }
        Err(e) => add(
            checks,
            "network",
            Status::Missing,
            format!("rtnetlink: {e}: --network bridge cannot make its bridge and veths"),
            Some("run as root on a kernel with netlink (any Linux)"),
        ),
    }
    // A VM on the bridge: a tap from /dev/net/tun, handed to the monitor.
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    add(
        checks,
        "tap",
        if tun.is_ok() { Status::Ok } else { Status::Warn },
        match &tun {
            Ok(_) => "--network bridge for microvm and qemu: /dev/net/tun opens (a tap per VM, virtio-net in the guest)".to_owned(),
            Err(e) => format!("/dev/net/tun: {e}: VMs cannot join the bridge (containers can)"),
        },
        tun.is_err().then_some("modprobe tun (and run as root)"),
    );
}

fn tool_checks(checks: &mut Vec<Check>) -> Option<PathBuf> {
    let busybox_static = host::which("busybox").filter(|p| host::is_static(p));
    add(
        checks,
        "busybox (static)",
        if busybox_static.is_some() {
            Status::Ok
        } else {
            Status::Warn
        },
        busybox_static
            .as_ref()
            .map(|p| format!("{} — the default image gets a shell", p.display()))
            .unwrap_or_else(|| {
                "not installed: the default image holds the agent only (no shell)".into()
            }),
        busybox_static
            .is_none()
            .then_some("apt-get install busybox-static"),
    );

    let mkfs = host::which("mkfs.ext4");
    add(
        checks,
        "e2fsprogs (mkfs.ext4)",
        if mkfs.is_some() {
            Status::Ok
        } else {
            Status::Warn
        },
        mkfs.as_ref()
            .map(|p| {
                format!(
                    "{} — `--disk image` can write the image as ext4",
                    p.display()
                )
            })
            .unwrap_or_else(|| {
                "not installed: `--disk image` and the `disk-read` scenario need it".into()
            }),
        mkfs.is_none().then_some("apt-get install e2fsprogs"),
    );
    busybox_static
}

fn resource_checks(
    checks: &mut Vec<Check>,
    state_dir: &Path,
) -> (Option<u64>, Option<(PathBuf, u64)>) {
    // Resources.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_available_bytes = host::meminfo_kib(&meminfo, "MemAvailable").map(|k| k * 1024);
    add(
        checks,
        "memory",
        if memory_available_bytes.unwrap_or(0) >= 1 << 30 {
            Status::Ok
        } else {
            Status::Warn
        },
        memory_available_bytes
            .map(|b| format!("{} available", gib(b)))
            .unwrap_or_else(|| "unknown".into()),
        (memory_available_bytes.unwrap_or(0) < 1 << 30)
            .then_some("free at least 1 GiB of memory before a bench"),
    );
    let disk = host::free_disk_bytes(state_dir);
    add(
        checks,
        "disk",
        if disk.as_ref().is_some_and(|d| d.1 >= 2 << 30) {
            Status::Ok
        } else {
            Status::Warn
        },
        disk.as_ref()
            .map(|(p, b)| format!("{} free at {}", gib(*b), p.display()))
            .unwrap_or_else(|| "unknown".into()),
        disk.as_ref()
            .is_none_or(|d| d.1 < 2 << 30)
            .then_some("free at least 2 GiB where the isolab state lives (ISOLAB_HOME)"),
    );
    (memory_available_bytes, disk)
}

/// Renders the report as a table.
pub fn render(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in &report.checks {
        let status = match c.status {
            Status::Ok => "ok     ",
            Status::Warn => "warn   ",
            Status::Missing => "MISSING",
        };
        out.push_str(&format!("{status}  {:width$}  {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:7}  {:width$}  fix: {fix}\n", "", ""));
        }
    }
    out.push_str(&format!(
        "\ncontainer backend: {}\nmicroVM backend:   {}\n",
        if report.container_backend_ready {
            "ready"
        } else {
            "NOT ready (see MISSING lines above)"
        },
        if report.microvm_backend_ready {
            format!(
                "ready — bare guest yes, stock Linux guest {}",
                if report.kvm.boots_stock_linux {
                    "yes"
                } else {
                    "no (starts, then dies: see kvm line)"
                }
            )
        } else {
            "NOT ready (no usable /dev/kvm)".into()
        }
    ));
    out
}
