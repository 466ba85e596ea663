//! The well-known peers, crun and runc, running the same image and agent
//! from an OCI bundle the lab writes.
//!
//! The bundle's rootfs is the same overlay the lab's runtime uses — the
//! image's layers as lower dirs and a fresh upper dir per instance —
//! mounted, as containerd does for Docker, before the peer starts: in a
//! private mount namespace made for the peer process (so a killed peer
//! leaves no host mount), and so outside the instance's cgroup charge, as
//! for the lab's runtime. `config.json` mirrors the lab runtime's defaults: the same
//! namespaces, capabilities, masked and read-only paths, rlimits,
//! `noNewPrivileges`, cgroup limits, and a seccomp profile that blocks the
//! same system calls.
//!
//! crun 1.8 refuses the hybrid cgroup layout ("cgroups in hybrid mode not
//! supported"). On such hosts the lab starts crun in a private mount
//! namespace where the cgroup2 mount (`/sys/fs/cgroup/unified`) is covered
//! by an empty tmpfs, so crun sees pure v1 — the host is untouched, and the
//! cost of the two extra mounts is part of crun's measured time.
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};
use isolab_runtime::cgroups::{CgroupLayout, CgroupMode, Limits, PARENT};
use isolab_runtime::container::{DEFAULT_CAPS, MASKED_PATHS, READONLY_PATHS};
use isolab_runtime::seccomp::BLOCKED;
use isolab_scenarios::protocol::HOLD_LINE;

use crate::backend::{Attach, Backend, InstanceSpec, Kind, Outcome, Unavailable};
use crate::clock::monotonic_ns;
use crate::home::Home;

/// An OCI runtime peer: the same image and agent from a bundle the lab
/// writes, run by the program of that name.
pub struct OciPeer {
    name: &'static str,
    /// The OCI runtime's program, and how to install it.
    program: &'static str,
    install: &'static str,
    /// Found beside the isolab binary first (isolab's own `isolab-oci`,
    /// built with it), then on PATH.
    beside_isolab: bool,
    about: &'static str,
    /// Global options before the command (gVisor's platform).
    global_args: &'static [&'static str],
    /// crun 1.8 needs the hybrid cgroup layout hidden (see above).
    hide_unified_on_hybrid: bool,
    /// Whether the workload reads the host's CLOCK_MONOTONIC (gVisor's
    /// Sentry keeps its own, so the agent's ready stamp cannot be placed
    /// on the host's timeline).
    host_clock: bool,
    /// Whether it joins the lab bridge for `--network bridge` (through a
    /// network namespace the lab holds and names in `config.json`).
    bridge: bool,
}

pub static CRUN: OciPeer = OciPeer {
    name: "crun",
    program: "crun",
    install: "apt-get install crun",
    beside_isolab: false,
    about: "crun, from an OCI bundle the lab writes",
    global_args: &[],
    hide_unified_on_hybrid: true,
    host_clock: true,
    bridge: true,
};
pub static RUNC: OciPeer = OciPeer {
    name: "runc",
    program: "runc",
    install: "apt-get install runc",
    beside_isolab: false,
    about: "runc, from an OCI bundle the lab writes",
    global_args: &[],
    hide_unified_on_hybrid: false,
    host_clock: true,
    bridge: true,
};
/// gVisor: a user-space kernel (the Sentry) between the workload and the
/// host's. The platform is how the Sentry intercepts the workload's system
/// calls: `ptrace` works on any host (and in a VM without nested
/// virtualisation, as here); `systrap` is faster but needs a newer runsc
/// than Debian 12's, and `kvm` a /dev/kvm with hardware support.
/// `--network=none`: the sandbox has its own loopback only, as the lab's
/// other containers have.
pub static GVISOR: OciPeer = OciPeer {
    name: "gvisor",
    program: "runsc",
    install: "apt-get install runsc",
    beside_isolab: false,
    about: "gVisor's runsc (user-space kernel, ptrace platform), from an OCI bundle the lab writes",
    global_args: &["--platform=ptrace", "--network=none"],
    hide_unified_on_hybrid: false,
    host_clock: false,
    bridge: false,
};

/// The lab's own runtime behind the OCI command line (`isolab-oci`),
/// run exactly as crun and runc are: a spawned process, the same bundle,
/// `run`. Beside `container` (the same runtime spawned as `isolab run`,
/// which also opens the image store and writes an instance record) it
/// shows what the lab's CLI adds; it ignores the config's capabilities,
/// seccomp and masked paths and applies its own, which are the same.
pub static ISOLAB_OCI: OciPeer = OciPeer {
    name: "isolab-oci",
    program: "isolab-oci",
    install: "cargo build --release (isolab-oci is built beside isolab)",
    beside_isolab: true,
    about: "isolab's own runtime as an OCI runtime binary (isolab-oci run), from the bundle crun and runc get",
    global_args: &[],
    hide_unified_on_hybrid: false,
    host_clock: true,
    bridge: true,
};

impl OciPeer {
    pub fn program(&self) -> Option<PathBuf> {
        if self.beside_isolab {
            let beside = crate::selfprotect::original_exe()
                .and_then(|e| e.parent().map(|d| d.join(self.program)));
            if let Some(p) = beside.filter(|p| p.is_file()) {
                return Some(p);
            }
        }
        crate::host::which(self.program)
    }
}

impl Backend for OciPeer {
    fn name(&self) -> &'static str {
        self.name
    }
    fn about(&self) -> &'static str {
        self.about
    }
    fn kind(&self) -> Kind {
        Kind::Container
    }
    fn baseline(&self) -> Option<&'static str> {
        Some("container")
    }
    fn available(&self) -> Result<(), Unavailable> {
        if self.program().is_none() {
            return Err(Unavailable {
                reason: format!("{} is not installed", self.program),
                install: Some(self.install.to_owned()),
            });
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(Unavailable {
                reason: format!("the {} peer needs root here: run it with sudo", self.name),
                install: None,
            });
        }
        Ok(())
    }
    fn check(&self, spec: &InstanceSpec, attach: Attach) -> Result<()> {
        super::peer::check_net(self.name, spec, attach, self.bridge)
    }
    fn supports_network(&self) -> bool {
        self.bridge
    }
    fn supports(&self, scenario: &isolab_abi::catalog::Scenario, spec: &InstanceSpec) -> bool {
        self.guest(spec).runs(scenario) && (self.bridge || !scenario.needs_network())
    }
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
        run(home, self, spec)
    }
    fn prune(&self, home: &Home) -> Vec<String> {
        prune(home, self)
    }
}

/// The OCI `config.json` for one peer run.
pub fn oci_config(
    rootfs: &Path,
    id: &str,
    args: &[String],
    limits: &Limits,
    volumes: &[isolab_runtime::container::Volume],
    netns: Option<&Path>,
) -> serde_json::Value {
    let network = match netns {
        Some(p) => serde_json::json!({ "type": "network", "path": p }),
        None => serde_json::json!({ "type": "network" }),
    };
    let (nofile_soft, nofile_hard) = isolab_runtime::container::nofile_limits();
    let caps: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    let mut resources = serde_json::Map::new();
    if let Some(m) = limits.memory_bytes {
        resources.insert(
            "memory".into(),
            serde_json::json!({ "limit": m, "swap": m }),
        );
    }
    if let Some(p) = limits.pids {
        resources.insert("pids".into(), serde_json::json!({ "limit": p }));
    }
    if let Some(c) = limits.cpus {
        resources.insert(
            "cpu".into(),
            serde_json::json!({ "quota": ((c * 100_000.0) as i64).max(1000), "period": 100_000 }),
        );
    }
    let mut mounts = serde_json::json!([
        { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
        { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
        { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
        { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }
    ]);
    if let Some(list) = mounts.as_array_mut() {
        for v in volumes {
            list.push(serde_json::json!({
                "destination": v.target,
                "type": "bind",
                "source": v.source,
                "options": ["rbind", if v.read_only { "ro" } else { "rw" }],
            }));
        }
    }
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin", format!("HOSTNAME={id}"), "HOME=/"],
            "cwd": "/",
            "capabilities": { "bounding": caps, "effective": caps, "inheritable": caps, "permitted": caps, "ambient": [] },
            "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": nofile_hard, "soft": nofile_soft }, { "type": "RLIMIT_CORE", "hard": 0, "soft": 0 } ],
            "noNewPrivileges": true
        },
        "root": { "path": rootfs, "readonly": false },
        "hostname": id,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/{PARENT}/{id}"),
            "namespaces": [ {"type": "pid"}, network, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"} ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [ { "names": BLOCKED.iter().map(|b| b.0).collect::<Vec<_>>(), "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM } ]
            }
        }
    })
}

fn cgroup_memory_dir(layout: &CgroupLayout, id: &str) -> Option<PathBuf> {
    match layout.mode {
        CgroupMode::V2 => layout.v2_mount.as_ref().map(|m| m.join(PARENT).join(id)),
        _ => layout.v1.get("memory").map(|m| m.join(PARENT).join(id)),
    }
}

/// Runs the agent once under a peer, foreground, output captured.
fn run(home: &Home, peer: &OciPeer, spec: &InstanceSpec) -> Result<Outcome> {
    let program = peer.program().ok_or_else(|| {
        anyhow!(peer
            .available()
            .err()
            .map(|u| u.to_string())
            .unwrap_or_default())
    })?;
    let layout = crate::backends::container::layout()?;
    let nid = crate::instances::new_id();
    let id = format!("isolab-{}-{nid}", peer.name);
    // --network bridge: a network namespace the lab holds, on the bridge
    // before the runtime starts (as CNI plugins or netavark prepare one
    // for containerd and podman), joined by the runtime by path. A
    // scenario that talks to the host gets the host's server.
    let server = crate::network::scenario_peer(home, spec)?;
    let mut spec = spec.clone();
    if let Some((param, _)) = &server {
        spec.params.push(param.clone());
    }
    let spec = &spec;
    let net = match spec.net.mode {
        crate::network::Mode::Bridge => {
            let held = crate::network::HeldNetns::new()?;
            let attached = crate::network::Attached::new(home, &spec.net, &nid)?;
            attached.attach_netns(&held)?;
            Some((held, attached))
        }
        _ => None,
    };
    // The bundle goes when this run ends, however it ends.
    let b = bundle(home, spec, &id)?;
    let (dir, rootfs) = (b.dir.clone(), b.rootfs.clone());
    let (overlay_opts, rootfs_c) = (b.overlay_opts.clone(), b.rootfs_c.clone());
    let state_root = home.peer_state_root(peer.name);
    fs::create_dir_all(&state_root)?;
    let args = crate::instances::describe(spec);
    fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&oci_config(
            &rootfs,
            &id,
            &args,
            &spec.limits,
            &spec.volumes,
            net.as_ref().map(|(held, _)| held.path.as_path()),
        ))?,
    )?;
    let hide_unified = peer.hide_unified_on_hybrid && layout.mode == CgroupMode::Hybrid;
    let mut cmd = peer_command(
        &program,
        peer.global_args,
        &state_root,
        &dir,
        &id,
        &layout,
        hide_unified,
        overlay_opts,
        rootfs_c,
    )?;
    // launch = the instant the peer's process is spawned (after the
    // harness wrote its bundle), the same rule for every peer.
    let launch = monotonic_ns();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    if let Some(hook) = &spec.on_spawn {
        hook(child.id() as i32);
    }
    // stderr is drained on its own thread, so neither pipe can fill up.
    let stderr_reader = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(move || crate::capture::read_all(e)));
    let mut memory = BTreeMap::new();
    let mut output = String::new();
    if let Some(out) = child.stdout.take() {
        output = crate::capture::read_lines(out, |line| {
            if line == HOLD_LINE {
                if let Some(dir) = cgroup_memory_dir(&layout, &id) {
                    let file = if layout.mode == CgroupMode::V2 {
                        "memory.current"
                    } else {
                        "memory.usage_in_bytes"
                    };
                    if let Some(v) = fs::read_to_string(dir.join(file))
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                    {
                        memory.insert("hold_cgroup_current".to_owned(), v);
                    }
                    if let Some(v) = isolab_runtime::cgroups::charged_bytes(&dir, layout.mode) {
                        memory.insert("hold_cgroup_charged".to_owned(), v);
                    }
                }
            }
        });
    }
    let stderr = stderr_reader
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    let status = child.wait()?;
    let exit_ns = monotonic_ns();
    // The namespace, its veth, the lease and the host's server go now.
    drop(net);
    drop(server);
    let _ = fs::remove_dir_all(state_root.join(&id));
    let note = format!(
        "launch = spawn of {}; {}{}",
        peer.program,
        if peer.host_clock {
            "ready stamped by the agent (same host clock)"
        } else {
            "no ready: the workload reads the Sentry's own monotonic clock, not the host's, so only launch→exit is timed"
        },
        if hide_unified {
            "; crun ran in a private mount namespace with the cgroup2 mount hidden (hybrid-cgroup workaround)"
        } else {
            ""
        }
    ) + if spec.net.mode == crate::network::Mode::Bridge {
        "; on the lab bridge through a network namespace the harness prepared before launch (as CNI does): that setup is outside the timed window, where the lab's own container times it as its network phase"
    } else {
        ""
    };
    super::peer::Finished {
        name: peer.name,
        spec,
        id,
        launch,
        exit_ns,
        code: status.code().unwrap_or(255),
        output: format!("{output}{stderr}"),
        memory,
        host_clock: peer.host_clock,
        note,
    }
    .outcome()
}

/// The peer's command: `PROGRAM --root STATE run --bundle DIR ID`, started
/// in a private mount namespace where the bundle's overlay rootfs is
/// mounted (and, for crun on a hybrid host, the cgroup2 mount hidden).
#[allow(clippy::too_many_arguments)]
fn peer_command(
    program: &Path,
    global_args: &[&str],
    state_root: &Path,
    dir: &Path,
    id: &str,
    layout: &CgroupLayout,
    hide_unified: bool,
    overlay_opts: std::ffi::CString,
    rootfs_c: std::ffi::CString,
) -> Result<Command> {
    let unified = layout
        .v2_mount
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup/unified"));
    let mut cmd = Command::new(program);
    crate::host::in_host_mount_namespace(&mut cmd);
    cmd.args(global_args)
        .arg("--root")
        .arg(state_root)
        .arg("run")
        .arg("--bundle")
        .arg(dir)
        .arg(id);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let hide = if hide_unified {
        Some(std::ffi::CString::new(
            unified.as_os_str().as_encoded_bytes(),
        )?)
    } else {
        None
    };
    with_overlay_rootfs(&mut cmd, overlay_opts, rootfs_c, hide);
    Ok(cmd)
}

/// Makes `cmd` start in a private mount namespace in which the overlay
/// `opts` is mounted at `rootfs` — as containerd mounts a bundle's rootfs
/// before its runtime starts, and gone with the namespace however the run
/// ends — and, with `hide`, an empty tmpfs covers that path (crun's
/// hybrid-cgroup workaround).
pub(crate) fn with_overlay_rootfs(
    cmd: &mut Command,
    overlay_opts: std::ffi::CString,
    rootfs_c: std::ffi::CString,
    hide: Option<std::ffi::CString>,
) {
    // SAFETY: runs in the forked child before exec; only system calls on
    // data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    c"overlay".as_ptr(),
                    rootfs_c.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    overlay_opts.as_ptr().cast(),
                ) != 0
            {
                return fail();
            }
            if let Some(target) = &hide {
                if libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    c"size=4k".as_ptr().cast(),
                ) != 0
                {
                    return fail();
                }
            }
            Ok(())
        });
    }
}

/// A peer's bundle directory: `rootfs/` to mount the image's overlay on,
/// its `upper/` and `work/`, and the overlay's mount options. Removed
/// when it drops, however the run ends.
pub(crate) struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub overlay_opts: std::ffi::CString,
    pub rootfs_c: std::ffi::CString,
    _remove: crate::instances::RemoveOnDrop,
}

pub(crate) fn bundle(home: &Home, spec: &InstanceSpec, id: &str) -> Result<Bundle> {
    let img = crate::images::open(home, &spec.image)?;
    let lowers: Vec<String> = home
        .store()
        .lower_dirs(&img)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let dir = home.peer_bundle(id);
    let remove = crate::instances::RemoveOnDrop(dir.clone());
    let rootfs = dir.join("rootfs");
    for sub in ["rootfs", "upper", "work"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let overlay_opts = std::ffi::CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        dir.join("upper").display(),
        dir.join("work").display()
    ))?;
    let rootfs_c = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes())?;
    Ok(Bundle {
        dir,
        rootfs,
        overlay_opts,
        rootfs_c,
        _remove: remove,
    })
}

/// Removes leftovers of this peer's runs: its containers in its state
/// root, and bundles of dead runs.
fn prune(home: &Home, p: &OciPeer) -> Vec<String> {
    let peer = p.name;
    let mut removed = Vec::new();
    let state_root = home.peer_state_root(peer);
    for c in fs::read_dir(&state_root).into_iter().flatten().flatten() {
        let id = c.file_name().to_string_lossy().into_owned();
        let _ = Command::new(p.program().unwrap_or_else(|| p.program.into()))
            .args(p.global_args)
            .arg("--root")
            .arg(&state_root)
            .args(["delete", "-f", &id])
            .output();
        let _ = fs::remove_dir_all(c.path());
        removed.push(format!("{peer} container {id}"));
    }
    // The state root itself, once empty.
    let _ = fs::remove_dir(&state_root);
    removed.extend(super::peer::prune_bundles(home, &format!("isolab-{peer}-")));
    removed
}
