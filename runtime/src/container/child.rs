//! The child side of a launch: what runs in the new namespaces, from the
//! first instruction after `clone3` to `execve`, as a list of stages each
//! stamped on the marks pipe. It never panics and never returns: a failure
//! is written as `!stage: message` and the child `_exit`s with 127.
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use isolab_abi::stage::Stage;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::spec::*;
use crate::cgroups::Join;
use crate::seccomp::Profile;

/// Everything the child needs, prepared in the parent so the child only
/// makes system calls.
#[derive(Debug)]
pub(super) struct ChildPlan {
    merged: CString,
    overlay_opts: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Signals this process ignores: an ignored signal survives execve,
    /// so the child puts these back to their default.
    ignored: Vec<i32>,
    /// The sealed launcher the init execs through (see `launcher`), or
    /// none when isolab's own binary is already protected.
    launcher: Option<RawFd>,
    /// `Network::Join`: the namespace file, opened (close-on-exec) by the
    /// parent before the clone.
    join_netns: Option<fs::File>,
    /// OCI mode: bind `merged` (the bundle's rootfs) instead of mounting
    /// the overlay, and stay alive when the creator exits.
    oci: bool,
    /// OCI `create`: the start gate (the exec FIFO), opened `O_PATH` by
    /// the parent; the init reopens it for writing through /proc.
    gate: Option<OwnedFd>,
}

pub(super) fn cstr(s: impl AsRef<[u8]>) -> Result<CString, ContainerError> {
    CString::new(s.as_ref()).map_err(|_| {
        ContainerError::Entrypoint("an argument or environment value contains a NUL byte".into())
    })
}

impl ChildPlan {
    pub(super) fn new(spec: &Spec, launcher: Option<RawFd>) -> Result<ChildPlan, ContainerError> {
        let merged = match &spec.oci {
            Some(o) => o.rootfs.clone(),
            None => spec.instance_dir.join("merged"),
        };
        let gate = match spec.oci.as_ref().and_then(|o| o.gate.as_ref()) {
            Some(fifo) => {
                let path = cstr(fifo.as_os_str().as_bytes())?;
                // SAFETY: open with a NUL-terminated path; O_PATH opens
                // nothing for I/O and does not block on a FIFO.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(ContainerError::Setup {
                        stage: Stage::Exec.name().into(),
                        message: format!(
                            "opening the start gate {}: {}",
                            fifo.display(),
                            std::io::Error::last_os_error()
                        ),
                    });
                }
                // SAFETY: a fresh descriptor nothing else owns.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            }
            None => None,
        };
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
            oci: spec.oci.is_some(),
            gate,
            merged: cstr(merged.as_os_str().as_bytes())?,
            overlay_opts: cstr(opts)?,
            argv: spec.argv.iter().map(cstr).collect::<Result<_, _>>()?,
            env: spec.env.iter().map(cstr).collect::<Result<_, _>>()?,
            ignored: ignored_signals(),
            launcher,
            join_netns: match &spec.network {
                Network::Join(path) => {
                    Some(fs::File::open(path).map_err(|e| ContainerError::Setup {
                        stage: Stage::Network.name().into(),
                        message: format!(
                            "opening the network namespace {} to join: {e}",
                            path.display()
                        ),
                    })?)
                }
                _ => None,
            },
        })
    }
}

/// Collects marks in the child and reports them (or an error) at the end.
pub(super) struct Reporter {
    out: fs::File,
    text: String,
    /// Past an OCI start gate: the creator is gone, marks go nowhere and
    /// a failure goes to the container's stderr.
    quiet: bool,
}

impl Reporter {
    fn mark(&mut self, stage: Stage) {
        if !self.quiet {
            self.text
                .push_str(&format!("{} {}\n", stage.name(), monotonic_ns()));
        }
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

/// The child's ends of the pipes it shares with isolab.
pub(super) struct ChildPipes {
    /// Marks and errors out.
    pub marks_w: OwnedFd,
    /// "g": the id maps are written (user-namespace mode).
    pub go_r: OwnedFd,
    /// Asks for the id maps.
    pub req_w: OwnedFd,
    /// "n": eth0 is ready (bridge mode).
    pub net_r: OwnedFd,
}

/// The child: never returns.
pub(super) fn child_main(
    plan: &ChildPlan,
    spec: &Spec,
    join: &Join,
    profile: Option<&Profile>,
    pipes: ChildPipes,
) -> ! {
    let ChildPipes {
        marks_w,
        go_r,
        req_w,
        net_r,
    } = pipes;
    let mut rep = Reporter {
        out: fs::File::from(marks_w),
        text: String::with_capacity(512),
        quiet: false,
    };
    rep.mark(Stage::Clone);
    // Die with isolab: a SIGKILLed isolab must not leave a container (and
    // so its mounts, which live only in its namespace) behind. An OCI
    // engine's created container outlives `create` by design: the
    // engine's monitor (conmon, the shim) becomes its parent and `delete`
    // ends it.
    if plan.gate.is_none() {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    }
    // The network is set up before the cgroup join, like the rootfs below:
    // it is the runtime's work (crun and runc, and Docker's network
    // driver, do it from outside the container's cgroup as well). A
    // bridged container waits here while isolab makes its veth pair and
    // configures eth0 from outside.
    match spec.network {
        Network::None => {
            if let Err(e) = loopback_up() {
                rep.fail(Stage::Network, &format!("bringing lo up: {e}"));
            }
        }
        Network::Host => {}
        Network::Join(_) => {
            let joined = match &plan.join_netns {
                Some(f) => nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| e.to_string()),
                None => Err("no namespace to join".to_owned()),
            };
            if let Err(e) = joined {
                rep.fail(
                    Stage::Network,
                    &format!("joining the network namespace: {e}"),
                );
            }
        }
        Network::Bridge(_) => {
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(net_r.as_raw_fd(), &mut b);
            if b[0] != b'n' {
                rep.fail(Stage::Network, "isolab did not set up the network");
            }
        }
    }
    drop(net_r);
    rep.mark(Stage::Network);
    // The rootfs (the overlay of the image's layers) is mounted before the
    // container joins its cgroup: preparing an image's rootfs is the
    // runtime's work — in Docker, containerd mounts it on the host — and
    // the lab charges it outside the instance for every backend alike (the
    // crun/runc peers get the same overlay mounted before they start).
    if let Err(e) = mount_rootfs(plan) {
        rep.fail(Stage::Rootfs, &e);
    }
    rep.mark(Stage::Rootfs);
    if let Join::SelfTasks(fds) = join {
        for fd in fds {
            if let Err(e) = nix::unistd::write(fd, b"0") {
                rep.fail(Stage::Cgroup, &format!("joining the cgroup: {e}"));
            }
        }
    }
    if spec.namespaces.cgroup {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP) {
            rep.fail(Stage::Cgroup, &format!("unshare(CLONE_NEWCGROUP): {e}"));
        }
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
    if let Some(gate) = &plan.gate {
        wait_at_gate(&mut rep, gate);
    }
    if let Err(e) = drop_privileges(profile, spec.user) {
        rep.fail(Stage::Seccomp, &e);
    }
    rep.mark(Stage::Seccomp);
    if let Err(e) = reset_signals(&plan.ignored) {
        rep.fail(Stage::Exec, &format!("signals: {e}"));
    }
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
    let Some(launcher) = plan.launcher else {
        // SAFETY: argv and envp are NULL-terminated arrays of pointers to
        // NUL-terminated strings that outlive the call (execve only
        // returns on failure).
        unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
        let e = std::io::Error::last_os_error();
        rep.fail(Stage::Exec, &format!("execve {}: {e}", spec.argv[0]))
    };
    // The report pipe moves to the launcher's REPORT_FD, open across this
    // exec: the launcher closes it at its own exec, or reports there why
    // that failed.
    let report = rep.out.as_raw_fd();
    // SAFETY: dup2/fcntl on descriptors this process owns.
    let moved = unsafe {
        if report == crate::launcher::REPORT_FD {
            libc::fcntl(report, libc::F_SETFD, 0)
        } else {
            libc::dup2(report, crate::launcher::REPORT_FD)
        }
    };
    if moved < 0 {
        let e = std::io::Error::last_os_error();
        rep.fail(Stage::Exec, &format!("handing the report pipe on: {e}"));
    }
    // SAFETY: as for execve above; "" with AT_EMPTY_PATH names the
    // launcher's descriptor itself.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            launcher,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    let e = std::io::Error::last_os_error();
    rep.fail(
        Stage::Exec,
        &format!("running isolab's sealed launcher: {e}"),
    )
}

/// OCI `create`: tells the creator the container is created (which ends
/// its `launch`), lets go of the marks pipe, and blocks opening the exec
/// FIFO for writing until `start` opens it for reading. The privileges
/// and the seccomp filter are applied after the gate, so the init can
/// still open a FIFO the runtime made.
fn wait_at_gate(rep: &mut Reporter, gate: &OwnedFd) {
    rep.text.push_str(&format!("created {}\n", monotonic_ns()));
    rep.flush();
    // The creator has what it waits for; from here a failure goes to the
    // stderr the engine gave.
    // SAFETY: F_DUPFD_CLOEXEC on fd 2 returns a new descriptor we own.
    let err = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
    if err >= 0 {
        // SAFETY: a fresh descriptor nothing else owns; the old marks
        // pipe end closes as it is replaced.
        rep.out = unsafe { fs::File::from_raw_fd(err) };
    }
    rep.quiet = true;
    let path = format!("/proc/self/fd/{}", gate.as_raw_fd());
    let opened = fs::OpenOptions::new().write(true).open(&path);
    match opened.and_then(|mut f| f.write_all(b"0")) {
        Ok(()) => {}
        Err(e) => rep.fail(Stage::Exec, &format!("waiting at the start gate: {e}")),
    }
}

pub(super) fn m(
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
pub(super) fn mount_rootfs(plan: &ChildPlan) -> Result<(), String> {
    let none: Option<&str> = None;
    m(
        none,
        Path::new("/"),
        none,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none,
    )?;
    let root = PathBuf::from(std::ffi::OsStr::from_bytes(plan.merged.as_bytes()));
    if plan.oci {
        // The engine's rootfs, bound onto itself: pivot_root needs a mount
        // point, and the bind lives only in this mount namespace.
        return m(
            Some(&root.display().to_string()),
            &root,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        );
    }
    let opts = plan.overlay_opts.to_str().map_err(|e| e.to_string())?;
    m(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts),
    )
}

pub(super) fn setup_mounts(plan: &ChildPlan, spec: &Spec) -> Result<(), String> {
    let root = PathBuf::from(std::ffi::OsStr::from_bytes(plan.merged.as_bytes()));
    mount_proc(&root)?;
    mount_dev(&root, spec.userns)?;
    mount_sys(&root, spec.userns)?;
    for v in &spec.volumes {
        bind_volume(&root, v)?;
    }
    mask_paths(&root)
}

const NONE: Option<&str> = None;

fn mkdir(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn nosuid_nodev_noexec() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// `/proc`, the container's own (its pid namespace's).
fn mount_proc(root: &Path) -> Result<(), String> {
    let proc_dir = root.join("proc");
    mkdir(&proc_dir)?;
    m(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec(),
        NONE,
    )?;
    Ok(())
}

/// A minimal `/dev`: a tmpfs with the six safe nodes, pts, shm and links.
fn mount_dev(root: &Path, userns: bool) -> Result<(), String> {
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
        if userns {
            // A user namespace cannot mknod: bind the host's nodes.
            fs::write(&p, b"").map_err(|e| format!("create {}: {e}", p.display()))?;
            m(
                Some(&format!("/dev/{name}")),
                &p,
                NONE,
                MsFlags::MS_BIND,
                NONE,
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
        nosuid_nodev_noexec(),
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
    Ok(())
}

/// `/sys`, read-only.
fn mount_sys(root: &Path, userns: bool) -> Result<(), String> {
    let sys = root.join("sys");
    mkdir(&sys)?;
    if userns {
        m(
            Some("/sys"),
            &sys,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )?;
        m(
            NONE,
            &sys,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev_noexec(),
            NONE,
        )?;
    } else {
        m(
            Some("sysfs"),
            &sys,
            Some("sysfs"),
            MsFlags::MS_RDONLY | nosuid_nodev_noexec(),
            NONE,
        )?;
    }
    Ok(())
}

/// The OCI masked paths (hidden) and read-only paths.
fn mask_paths(root: &Path) -> Result<(), String> {
    let dev = root.join("dev");
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
                    NONE,
                    MsFlags::MS_BIND,
                    NONE,
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
                NONE,
                MsFlags::MS_BIND,
                NONE,
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
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            )?;
            m(
                NONE,
                &p,
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                NONE,
            )?;
        }
    }
    Ok(())
}

/// Binds a volume under `root`. Every component of the target is
/// created inside the rootfs and must not be a symlink, so an image cannot
/// point a volume at a path outside it.
pub(super) fn bind_volume(root: &Path, v: &Volume) -> Result<(), String> {
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

pub(super) fn pivot_into(merged: &CString) -> Result<(), String> {
    let root = Path::new(std::ffi::OsStr::from_bytes(merged.as_bytes()));
    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    // The old root is now stacked under the new one at "/": detach it.
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

pub(super) fn finish_environment(spec: &Spec) -> Result<(), String> {
    // Without a UTS namespace of its own the name is the host's: setting
    // it would rename the host.
    if spec.namespaces.uts {
        nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
    }
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

pub(super) fn loopback_up() -> std::io::Result<()> {
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

/// Drops to the runtime's capability set and, for an image's `USER` (or
/// `--user`), to that uid and gid: leaving uid 0 clears the permitted and
/// effective sets, as for a non-root user under Docker. Then
/// no_new_privs and the seccomp filter.
pub(super) fn drop_privileges(
    profile: Option<&Profile>,
    user: Option<(u32, u32)>,
) -> Result<(), String> {
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
    if let Some((uid, gid)) = user {
        use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
        let g = Gid::from_raw(gid);
        setgroups(&[g]).map_err(|e| format!("setgroups([{gid}]): {e}"))?;
        setresgid(g, g, g).map_err(|e| format!("becoming gid {gid}: {e}"))?;
        if uid != 0 {
            let u = Uid::from_raw(uid);
            setresuid(u, u, u).map_err(|e| format!("becoming uid {uid}: {e}"))?;
        }
    }
    if user.is_none_or(|(uid, _)| uid == 0) {
        caps::set(None, CapSet::Effective, &keep).map_err(|e| format!("effective caps: {e}"))?;
        caps::set(None, CapSet::Permitted, &keep).map_err(|e| format!("permitted caps: {e}"))?;
    } else {
        caps::clear(None, CapSet::Inheritable).map_err(|e| format!("inheritable caps: {e}"))?;
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    if let Some(p) = profile {
        p.install().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The kernel's own sigaction layout: libc's `sigaction` refuses the
/// real-time signals its threads use (32, 33), which may still arrive
/// ignored from whoever started isolab.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// `rt_sigaction(sig, new, old)` on the kernel's layout.
fn rt_sigaction(sig: i32, new: Option<&KernelSigaction>, old: Option<&mut KernelSigaction>) -> i64 {
    // SAFETY: both pointers are null or point to a KernelSigaction that
    // outlives the call; the size is the kernel's sigset size (8 bytes).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            new.map_or(std::ptr::null(), |n| n as *const KernelSigaction),
            old.map_or(std::ptr::null_mut(), |o| o as *mut KernelSigaction),
            8usize,
        )
    }
}

/// The signals this process ignores (read in the parent: one query per
/// signal, no filter in the way).
pub(super) fn ignored_signals() -> Vec<i32> {
    (1..=64)
        .filter(|&sig| {
            let mut old = KernelSigaction {
                handler: 0,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            rt_sigaction(sig, None, Some(&mut old)) == 0 && old.handler == libc::SIG_IGN
        })
        .collect()
}

/// The ignored signals back to their default and every signal unblocked,
/// as runc does: the Rust runtime ignores SIGPIPE, and an ignored signal
/// survives execve (then `yes | head` never ends inside the container).
/// Handled signals need nothing: execve resets them.
pub(super) fn reset_signals(ignored: &[i32]) -> Result<(), String> {
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for &sig in ignored {
        if rt_sigaction(sig, Some(&dfl), None) != 0 {
            return Err(format!("signal {sig}: {}", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: an empty set, written by sigemptyset, then installed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

pub(super) fn setup_stdio(stdio: &Stdio) -> Result<(), String> {
    let dup_to = |fd: RawFd, to: RawFd| -> Result<(), String> {
        // SAFETY: dup2 on fds this process owns.
        if unsafe { libc::dup2(fd, to) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    // A session of its own: the container never shares a controlling
    // terminal with isolab, so TIOCSTI into the user's shell is refused.
    match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
            let null = fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            let fd0 = stdin.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd());
            dup_to(fd0, 0)?;
            dup_to(stdout.as_raw_fd(), 1)?;
            dup_to(stderr.as_raw_fd(), 2)
        }
        Stdio::Into(fd) => {
            nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
            let null = fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            dup_to(null.as_raw_fd(), 0)?;
            dup_to(fd.as_raw_fd(), 1)?;
            dup_to(fd.as_raw_fd(), 2)
        }
        // The engine's streams, kept as they are; the engine (conmon, the
        // shim) owns the session.
        Stdio::Inherit => Ok(()),
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
