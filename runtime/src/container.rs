//! Launching one container: a short list of named stages, each stamped.
//!
//! ```text
//! parent (isolab)                         child (becomes pid 1 of the container)
//! ---------------                         ------------------------------------
//! launch mark
//! check entrypoint, mkdir upper/work
//! create cgroup, open its join handle
//! compile seccomp profile
//! clone3(NEWPID|NEWNS|NEWUTS|NEWIPC|NEWNET)
//!                                         clone      (first instruction)
//!                                         rootfs     private mounts, overlay of the layers, lo up
//!                                         cgroup     write "0" to tasks; unshare(NEWCGROUP)
//!                                         mounts     /proc, /dev, /sys, masks, read-only paths
//!                                         pivot_root
//!                                         hostname, cwd, rlimits, fds
//!                                         [--userns: unshare(NEWUSER), ask for maps]
//! [write uid/gid maps] ────────────────▶  uid_map    setresuid(0) inside
//!                                         seccomp    caps dropped, no_new_privs, filter
//!                                         exec       marks sent, execve(entrypoint)
//! marks pipe hits EOF (CLOEXEC) ◀──────── (agent) ready
//! wait → exit mark, cgroup stats, cleanup
//! ```
//!
//! The child never panics and never returns: any failure is written to the
//! marks pipe as `!stage: message` and the child `_exit`s with 127.
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use isolab_abi::stage::Stage;

use crate::cgroups::{Cgroup, CgroupError, CgroupLayout, CgroupStats, Join, Limits};
use crate::seccomp::{self, Profile};

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
    #[error("waiting for the container failed: {0}")]
    Wait(nix::errno::Errno),
}

/// Where the container's standard streams go.
#[derive(Debug)]
pub enum Stdio {
    /// Share isolab's own stdin/stdout/stderr.
    Inherit,
    /// stdout and stderr into this fd (a pipe's write end or a log file);
    /// stdin from /dev/null.
    Into(OwnedFd),
    /// A pty slave: becomes the controlling terminal, fds 0, 1 and 2.
    Pty(OwnedFd),
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
    pub hostname: String,
    pub limits: Limits,
    /// Map root in the container to an unprivileged host range.
    pub userns: bool,
    pub seccomp: bool,
    pub stdio: Stdio,
    /// Host files or directories bound into the container (`-v`).
    pub volumes: Vec<Volume>,
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
        Ok(Volume {
            source: source.to_path_buf(),
            target: target.to_owned(),
            read_only,
        })
    }
}

/// A named instant on `CLOCK_MONOTONIC`, ns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub name: String,
    pub ns: u64,
}

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

/// Reads `CLOCK_MONOTONIC` in ns.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A started container.
#[derive(Debug)]
pub struct Running {
    pub id: String,
    pub pid: nix::unistd::Pid,
    pub marks: Vec<Mark>,
    pub cgroup: Cgroup,
    instance_dir: PathBuf,
    keep_instance_dir: bool,
    /// `wait` has reaped it (and cleaned up); else `Drop` does.
    waited: bool,
}

/// How a container ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code, or 128 + signal number as a shell reports it.
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub exit_ns: u64,
    pub stats: CgroupStats,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x200000000;

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ContainerError::Setup {
        stage: "pipe".into(),
        message: e.to_string(),
    })
}

/// Starts the container described by `spec`; returns once the entrypoint
/// has been exec'd (or the setup failed, in which case nothing is left).
pub fn launch(spec: Spec, layout: &CgroupLayout) -> Result<Running, ContainerError> {
    let argv0 = spec.argv.first().cloned().unwrap_or_default();
    if argv0.is_empty() {
        return Err(ContainerError::Entrypoint(
            "no entrypoint: give a command or use an image with one".into(),
        ));
    }
    for sub in ["upper", "work", "merged"] {
        let p = spec.instance_dir.join(sub);
        fs::create_dir_all(&p).map_err(|source| ContainerError::InstanceDir {
            path: p.clone(),
            source,
        })?;
    }
    // From here on, every early return undoes what was made (the guard's
    // drop): the child killed, the cgroup removed, the instance dir gone.
    let mut guard = LaunchGuard {
        dir: Some(spec.instance_dir.clone()),
        cgroup: None,
        child: None,
    };
    let cgroup = guard
        .cgroup
        .insert(Cgroup::create(layout, &spec.id, &spec.limits)?);
    let join = cgroup.join_handle()?;
    let profile = if spec.seccomp {
        Some(seccomp::default_profile()?)
    } else {
        None
    };
    let (marks_r, marks_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let plan = ChildPlan::new(&spec)?;

    let (req_r, req_w) = pipe()?;
    let flags = (libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET) as u64;
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Join::IntoCgroup(fd) = &join {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: clone3 with a zero stack behaves like fork: the child gets a
    // copy of this (single-threaded) process and continues here with r == 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        drop(marks_r);
        drop(go_w);
        drop(req_r);
        child_main(&plan, &spec, &join, profile, marks_w, go_r, req_w);
    }
    if r < 0 {
        return Err(ContainerError::Clone(std::io::Error::last_os_error()));
    }
    let pid = nix::unistd::Pid::from_raw(r as i32);
    guard.child = Some(pid);
    drop(marks_w);
    drop(go_r);
    drop(req_w);
    drop(join);
    if spec.userns {
        // The child asks for its maps once it has entered its user
        // namespace (after its mounts: see child_main).
        let mut b = [0u8; 1];
        let asked = nix::unistd::read(req_r.as_raw_fd(), &mut b)
            .map(|n| n == 1)
            .unwrap_or(false);
        if asked {
            write_id_maps(pid).map_err(ContainerError::IdMap)?;
        }
    }
    // Release the child (it waits for this byte only in user-ns mode, but
    // the write is harmless either way).
    let mut go = fs::File::from(go_w);
    let _ = go.write_all(b"g");
    drop(go);
    // The marks pipe reaches EOF when the child execs (CLOEXEC) or exits.
    let mut text = String::new();
    let _ = fs::File::from(marks_r).read_to_string(&mut text);
    let (marks, error) = parse_marks(&text);
    if let Some((stage, message)) = error {
        return Err(ContainerError::Setup { stage, message });
    }
    if !marks.iter().any(|m| m.name == Stage::Exec.name()) {
        guard.child = None;
        let status = nix::sys::wait::waitpid(pid, None);
        return Err(ContainerError::Setup {
            stage: Stage::Exec.name().into(),
            message: format!("the container's init ended before exec ({status:?})"),
        });
    }
    Ok(Running {
        id: spec.id,
        pid,
        marks,
        cgroup: guard.done(),
        instance_dir: spec.instance_dir,
        keep_instance_dir: false,
        waited: false,
    })
}

/// What a launch has made so far; dropping it undoes all of it, so no
/// early return of [`launch`] can leak a process, a cgroup or a directory.
struct LaunchGuard {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    child: Option<nix::unistd::Pid>,
}

impl LaunchGuard {
    /// The launch succeeded: hand the cgroup on and undo nothing.
    fn done(mut self) -> Cgroup {
        self.dir = None;
        self.child = None;
        self.cgroup
            .take()
            .expect("the cgroup is made before anything can succeed")
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.child.take() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(mut c) = self.cgroup.take() {
            c.kill_all();
            c.destroy();
        }
        if let Some(dir) = self.dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Parses the child's `name ns` lines and an optional `!stage: message`.
pub fn parse_marks(text: &str) -> (Vec<Mark>, Option<(String, String)>) {
    let mut marks = Vec::new();
    let mut error = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('!') {
            let (stage, msg) = rest.split_once(": ").unwrap_or((rest, ""));
            error = Some((stage.to_owned(), msg.to_owned()));
        } else if let Some((name, ns)) = line.split_once(' ') {
            if let Ok(ns) = ns.parse() {
                marks.push(Mark {
                    name: name.to_owned(),
                    ns,
                });
            }
        }
    }
    (marks, error)
}

fn write_id_maps(pid: nix::unistd::Pid) -> std::io::Result<()> {
    let base = format!("/proc/{pid}");
    fs::write(format!("{base}/setgroups"), "deny")?;
    fs::write(
        format!("{base}/uid_map"),
        format!("0 {USERNS_BASE} {USERNS_SIZE}"),
    )?;
    fs::write(
        format!("{base}/gid_map"),
        format!("0 {USERNS_BASE} {USERNS_SIZE}"),
    )?;
    Ok(())
}

impl Running {
    /// Keep `upper/` after exit (detached instances keep their writable
    /// layer until `rm`, as Docker does).
    pub fn keep_instance_dir(&mut self, keep: bool) {
        self.keep_instance_dir = keep;
    }

    /// Waits for pid 1 of the container, reads the cgroup's figures, and
    /// removes the cgroup (and the instance dir unless kept).
    pub fn wait(mut self) -> Result<Exit, ContainerError> {
        use nix::sys::wait::{waitpid, WaitStatus};
        self.waited = true;
        let status = loop {
            match waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        let exit_ns = monotonic_ns();
        let (code, signal) = match status {
            Ok(WaitStatus::Exited(_, c)) => (c, None),
            Ok(WaitStatus::Signaled(_, s, _)) => (128 + s as i32, Some(s as i32)),
            Ok(_) => (255, None),
            Err(e) => {
                self.cleanup();
                return Err(ContainerError::Wait(e));
            }
        };
        let stats = self.cgroup.stats();
        let oom_killed = stats.oom_kills.unwrap_or(0) > 0 && signal == Some(libc::SIGKILL);
        self.cleanup();
        Ok(Exit {
            code,
            signal,
            oom_killed,
            exit_ns,
            stats,
        })
    }

    fn cleanup(&mut self) {
        self.cgroup.kill_all();
        self.cgroup.destroy();
        if self.keep_instance_dir {
            // The merged dir is only a mount point in the dead namespace.
            let _ = fs::remove_dir(self.instance_dir.join("merged"));
            let _ = fs::remove_dir_all(self.instance_dir.join("work"));
        } else {
            let _ = fs::remove_dir_all(&self.instance_dir);
        }
    }

    /// Reads the cgroup's figures now (at a hold point).
    pub fn stats(&self) -> CgroupStats {
        self.cgroup.stats()
    }
}

impl Drop for Running {
    /// A container nobody waited for (its owner returned early) is killed
    /// and cleaned up, never leaked.
    fn drop(&mut self) {
        if !self.waited {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
            self.cleanup();
        }
    }
}

/// Everything the child needs, prepared in the parent so the child only
/// makes system calls.
#[derive(Debug)]
struct ChildPlan {
    merged: CString,
    overlay_opts: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, ContainerError> {
    CString::new(s.as_ref()).map_err(|_| {
        ContainerError::Entrypoint("an argument or environment value contains a NUL byte".into())
    })
}

impl ChildPlan {
    fn new(spec: &Spec) -> Result<ChildPlan, ContainerError> {
        let lowers: Vec<String> = spec
            .lower_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            spec.instance_dir.join("upper").display(),
            spec.instance_dir.join("work").display()
        );

        Ok(ChildPlan {
            merged: cstr(spec.instance_dir.join("merged").as_os_str().as_bytes())?,
            overlay_opts: cstr(opts)?,
            argv: spec.argv.iter().map(cstr).collect::<Result<_, _>>()?,
            env: spec.env.iter().map(cstr).collect::<Result<_, _>>()?,
        })
    }
}

/// Collects marks in the child and reports them (or an error) at the end.
struct Reporter {
    out: fs::File,
    text: String,
}

impl Reporter {
    fn mark(&mut self, stage: Stage) {
        self.text
            .push_str(&format!("{} {}\n", stage.name(), monotonic_ns()));
    }
    fn flush(&mut self) {
        let _ = self.out.write_all(self.text.as_bytes());
        self.text.clear();
    }
    fn fail(&mut self, stage: Stage, msg: &str) -> ! {
        self.text.push_str(&format!("!{}: {msg}\n", stage.name()));
        self.flush();
        // SAFETY: _exit ends the child without running the parent's
        // destructors or atexit handlers.
        unsafe { libc::_exit(127) }
    }
}

/// The child: never returns.
fn child_main(
    plan: &ChildPlan,
    spec: &Spec,
    join: &Join,
    profile: Option<&Profile>,
    marks_w: OwnedFd,
    go_r: OwnedFd,
    req_w: OwnedFd,
) -> ! {
    let mut rep = Reporter {
        out: fs::File::from(marks_w),
        text: String::with_capacity(512),
    };
    rep.mark(Stage::Clone);
    // Die with isolab: a SIGKILLed isolab must not leave a container (and
    // so its mounts, which live only in its namespace) behind.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // The rootfs (the overlay of the image's layers) is mounted before the
    // container joins its cgroup: preparing an image's rootfs is the
    // runtime's work — in Docker, containerd mounts it on the host — and
    // the lab charges it outside the instance for every backend alike (the
    // crun/runc peers get the same overlay mounted before they start).
    if let Err(e) = mount_rootfs(plan) {
        rep.fail(Stage::Rootfs, &e);
    }
    // Loopback comes up here too, before the cgroup join, like the
    // rootfs: setting up the instance's network is the runtime's work
    // (crun and runc do it from outside the container's cgroup as well).
    if let Err(e) = loopback_up() {
        rep.fail(Stage::Rootfs, &format!("bringing lo up: {e}"));
    }
    rep.mark(Stage::Rootfs);
    if let Join::SelfTasks(fds) = join {
        for fd in fds {
            if let Err(e) = nix::unistd::write(fd, b"0") {
                rep.fail(Stage::Cgroup, &format!("joining the cgroup: {e}"));
            }
        }
    }
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP) {
        rep.fail(Stage::Cgroup, &format!("unshare(CLONE_NEWCGROUP): {e}"));
    }
    rep.mark(Stage::Cgroup);
    if let Err(e) = setup_mounts(plan, spec) {
        rep.fail(Stage::Mounts, &e);
    }
    rep.mark(Stage::Mounts);
    if let Err(e) = pivot_into(&plan.merged) {
        rep.fail(Stage::PivotRoot, &e);
    }
    rep.mark(Stage::PivotRoot);
    if let Err(e) = finish_environment(spec) {
        // Charged to the phase that ends at the next mark.
        let next = if spec.userns {
            Stage::UidMap
        } else {
            Stage::Seccomp
        };
        rep.fail(next, &format!("environment: {e}"));
    }
    // User-namespace mode: the runtime sets everything up as real root,
    // then the container enters a new user namespace in which its root is
    // USERNS_BASE on the host. The mount, uts, ipc and net namespaces stay
    // owned by the host's user namespace, so the container can change none
    // of them, even as its own "root".
    if spec.userns {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
            rep.fail(Stage::UidMap, &format!("unshare(CLONE_NEWUSER): {e}"));
        }
        let _ = nix::unistd::write(&req_w, b"u");
        let mut b = [0u8; 1];
        let _ = nix::unistd::read(go_r.as_raw_fd(), &mut b);
        if b[0] != b'g' {
            rep.fail(Stage::UidMap, "isolab did not write the id maps");
        }
        // Become the namespace's root (host uid USERNS_BASE).
        let root = (nix::unistd::Gid::from_raw(0), nix::unistd::Uid::from_raw(0));
        if let Err(e) = nix::unistd::setresgid(root.0, root.0, root.0)
            .and_then(|_| nix::unistd::setresuid(root.1, root.1, root.1))
        {
            rep.fail(
                Stage::UidMap,
                &format!("becoming root of the user namespace: {e}"),
            );
        }
        rep.mark(Stage::UidMap);
    }
    drop(go_r);
    drop(req_w);
    if let Err(e) = drop_privileges(profile) {
        rep.fail(Stage::Seccomp, &e);
    }
    rep.mark(Stage::Seccomp);
    if let Err(e) = setup_stdio(&spec.stdio) {
        rep.fail(Stage::Exec, &format!("stdio: {e}"));
    }
    rep.mark(Stage::Exec);
    rep.flush();
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to
    // NUL-terminated strings that outlive the call (execve only returns on
    // failure).
    unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
    let e = std::io::Error::last_os_error();
    rep.fail(Stage::Exec, &format!("execve {}: {e}", spec.argv[0]))
}

fn m(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {}: {e}",
            fstype.or(src).unwrap_or("?"),
            target.display()
        )
    })
}

/// Makes the mount tree private and mounts the overlay rootfs.
fn mount_rootfs(plan: &ChildPlan) -> Result<(), String> {
    let none: Option<&str> = None;
    m(
        none,
        Path::new("/"),
        none,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none,
    )?;
    let root = PathBuf::from(std::ffi::OsStr::from_bytes(plan.merged.as_bytes()));
    let opts = plan.overlay_opts.to_str().map_err(|e| e.to_string())?;
    m(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts),
    )
}

fn setup_mounts(plan: &ChildPlan, spec: &Spec) -> Result<(), String> {
    let none: Option<&str> = None;
    let root = PathBuf::from(std::ffi::OsStr::from_bytes(plan.merged.as_bytes()));
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mkdir = |p: &Path| fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()));
    let proc_dir = root.join("proc");
    mkdir(&proc_dir)?;
    m(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        none,
    )?;
    let dev = root.join("dev");
    mkdir(&dev)?;
    m(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        if spec.userns {
            // A user namespace cannot mknod: bind the host's nodes.
            fs::write(&p, b"").map_err(|e| format!("create {}: {e}", p.display()))?;
            m(
                Some(&format!("/dev/{name}")),
                &p,
                none,
                MsFlags::MS_BIND,
                none,
            )?;
        } else {
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|e| format!("mknod {}: {e}", p.display()))?;
            let _ = nix::sys::stat::fchmodat(
                None,
                &p,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            );
        }
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    m(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    m(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    let sys = root.join("sys");
    mkdir(&sys)?;
    if spec.userns {
        m(
            Some("/sys"),
            &sys,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )?;
        m(
            none,
            &sys,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev_noexec,
            none,
        )?;
    } else {
        m(
            Some("sysfs"),
            &sys,
            Some("sysfs"),
            MsFlags::MS_RDONLY | nosuid_nodev_noexec,
            none,
        )?;
    }
    for v in &spec.volumes {
        bind_volume(&root, v)?;
    }
    // Masked directories share one empty read-only tmpfs (one superblock
    // instead of one each: kernel memory the container is charged for).
    let mut empty_dir: Option<PathBuf> = None;
    for path in MASKED_PATHS {
        let p = root.join(path.trim_start_matches('/'));
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => match &empty_dir {
                Some(first) => m(
                    Some(first.to_str().unwrap_or("")),
                    &p,
                    none,
                    MsFlags::MS_BIND,
                    none,
                )?,
                None => {
                    m(
                        Some("tmpfs"),
                        &p,
                        Some("tmpfs"),
                        MsFlags::MS_RDONLY,
                        Some("size=0"),
                    )?;
                    empty_dir = Some(p.clone());
                }
            },
            Ok(_) => m(
                Some(dev.join("null").to_str().unwrap_or("/dev/null")),
                &p,
                none,
                MsFlags::MS_BIND,
                none,
            )?,
            Err(_) => {}
        }
    }
    for path in READONLY_PATHS {
        let p = root.join(path.trim_start_matches('/'));
        if p.exists() {
            m(
                Some(p.to_str().unwrap_or("")),
                &p,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )?;
            m(
                none,
                &p,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                none,
            )?;
        }
    }
    Ok(())
}

/// Binds a volume under `root`. Every component of the target is
/// created inside the rootfs and must not be a symlink, so an image cannot
/// point a volume at a path outside it.
fn bind_volume(root: &Path, v: &Volume) -> Result<(), String> {
    let none: Option<&str> = None;
    let mut dest = root.to_path_buf();
    let parts: Vec<_> = Path::new(&v.target)
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    let source_is_dir = v.source.is_dir();
    for (i, c) in parts.iter().enumerate() {
        dest.push(c);
        let last = i + 1 == parts.len();
        match fs::symlink_metadata(&dest) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "volume target {} goes through a symlink in the image: choose another path",
                    v.target
                ))
            }
            Ok(_) => {}
            Err(_) if last && !source_is_dir => {
                fs::write(&dest, b"").map_err(|e| format!("create {}: {e}", dest.display()))?
            }
            Err(_) => {
                fs::create_dir(&dest).map_err(|e| format!("mkdir {}: {e}", dest.display()))?
            }
        }
    }
    let src = v.source.to_str().ok_or("volume source is not UTF-8")?;
    m(
        Some(src),
        &dest,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )?;
    if v.read_only {
        // A read-only remount must keep the flags the source mount has
        // (a user namespace may not drop them).
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Ok(st) = nix::sys::statvfs::statvfs(&v.source) {
            use nix::sys::statvfs::FsFlags;
            for (have, keep) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            ] {
                if st.flags().contains(have) {
                    flags |= keep;
                }
            }
        }
        m(none, &dest, none, flags, none)?;
    }
    Ok(())
}

fn pivot_into(merged: &CString) -> Result<(), String> {
    let root = Path::new(std::ffi::OsStr::from_bytes(merged.as_bytes()));
    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    // The old root is now stacked under the new one at "/": detach it.
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

fn finish_environment(spec: &Spec) -> Result<(), String> {
    nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
    nix::unistd::chdir(spec.cwd.as_str()).map_err(|e| format!("working dir {}: {e}", spec.cwd))?;
    use nix::sys::resource::{setrlimit, Resource};
    let (soft, hard) = nofile_limits();
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(|e| format!("setrlimit NOFILE: {e}"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("setrlimit CORE: {e}"))?;
    // Every fd past stdio closes at exec (CVE-2024-21626: no host fd, such
    // as a cgroup dir, may reach the container).
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

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

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket() with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn drop_privileges(profile: Option<&Profile>) -> Result<(), String> {
    use caps::{CapSet, CapsHashSet};
    let keep: CapsHashSet = DEFAULT_CAPS.iter().copied().collect();
    for c in caps::all() {
        if !keep.contains(&c) {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(|e| format!("dropping {c} from the bounding set: {e}"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clearing ambient caps: {e}"))?;
    caps::set(None, CapSet::Inheritable, &keep).map_err(|e| format!("inheritable caps: {e}"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| format!("effective caps: {e}"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| format!("permitted caps: {e}"))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    if let Some(p) = profile {
        p.install().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn setup_stdio(stdio: &Stdio) -> Result<(), String> {
    let dup_to = |fd: RawFd, to: RawFd| -> Result<(), String> {
        // SAFETY: dup2 on fds this process owns.
        if unsafe { libc::dup2(fd, to) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    match stdio {
        Stdio::Inherit => Ok(()),
        Stdio::Into(fd) => {
            let null = fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            dup_to(null.as_raw_fd(), 0)?;
            dup_to(fd.as_raw_fd(), 1)?;
            dup_to(fd.as_raw_fd(), 2)
        }
        Stdio::Pty(slave) => {
            nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
            // SAFETY: TIOCSCTTY on a pty slave fd we own.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
            }
            for to in 0..3 {
                dup_to(slave.as_raw_fd(), to)?;
            }
            Ok(())
        }
    }
}

/// Phases (ns) between consecutive marks, named by the later mark.
pub fn phases(marks: &[Mark]) -> Vec<(String, u64)> {
    marks
        .windows(2)
        .map(|w| (w[1].name.clone(), w[1].ns.saturating_sub(w[0].ns)))
        .collect()
}

#[cfg(test)]
mod volume_tests {
    use super::Volume;

    #[test]
    fn volumes_parse_like_docker_and_refuse_bad_paths() {
        let v = Volume::parse("/tmp:/data:ro").unwrap();
        assert_eq!((v.target.as_str(), v.read_only), ("/data", true));
        assert!(!Volume::parse("/tmp:/data").unwrap().read_only);
        for bad in [
            "/tmp",
            "/tmp:data",
            "/tmp:/",
            "/tmp:/a/../b",
            "/tmp:/a:rx",
            "relative:/a",
            "/nonexistent-isolab:/a",
        ] {
            let e = Volume::parse(bad).unwrap_err();
            assert!(e.contains("volume"), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_launch_leaves_no_instance_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("instance");
        fs::create_dir_all(dir.join("upper")).unwrap();
        drop(LaunchGuard {
            dir: Some(dir.clone()),
            cgroup: None,
            child: None,
        });
        assert!(
            !dir.exists(),
            "an early return must remove the instance dir"
        );
        // A launch whose cgroup could not be made is refused before clone:
        // the guard is dropped with only its directory.
        let layout = CgroupLayout {
            mode: crate::cgroups::CgroupMode::None,
            v1: Default::default(),
            v2_mount: None,
            v2_controllers: vec![],
        };
        let spec = Spec {
            id: "guard-test".into(),
            lower_dirs: vec![],
            instance_dir: dir.clone(),
            argv: vec!["/bin/true".into()],
            env: vec![],
            cwd: "/".into(),
            hostname: "h".into(),
            limits: Limits {
                memory_bytes: Some(1 << 20),
                ..Default::default()
            },
            userns: false,
            seccomp: false,
            stdio: Stdio::Inherit,
            volumes: vec![],
        };
        let Err(e) = launch(spec, &layout) else {
            panic!("a 1 MiB memory limit must be refused");
        };
        assert!(e.to_string().contains("too small"), "{e}");
        assert!(!dir.exists(), "a refused launch leaves no instance dir");
    }

    #[test]
    fn marks_and_errors_parse() {
        let (m, e) = parse_marks("clone 10\ncgroup 25\n!mounts: mount overlay on /x: EINVAL\n");
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[1],
            Mark {
                name: "cgroup".into(),
                ns: 25
            }
        );
        assert_eq!(
            e,
            Some(("mounts".into(), "mount overlay on /x: EINVAL".into()))
        );
        let (m, e) = parse_marks("clone 1\ngarbage\nexec 9\n");
        assert_eq!(m.len(), 2);
        assert!(e.is_none());
    }

    #[test]
    fn phases_are_differences_named_by_the_later_mark() {
        let marks: Vec<Mark> = [
            ("launch", 100),
            ("clone", 150),
            ("cgroup", 160),
            ("exec", 400),
        ]
        .iter()
        .map(|(n, ns)| Mark {
            name: n.to_string(),
            ns: *ns,
        })
        .collect();
        assert_eq!(
            phases(&marks),
            vec![
                ("clone".into(), 50),
                ("cgroup".into(), 10),
                ("exec".into(), 240)
            ]
        );
        assert!(phases(&marks[..1]).is_empty());
    }
}
