//! Launching one container: a short list of named stages, each stamped.
//!
//! ```text
//! ANCHOR: start_map
//! parent (isolab)                         child (becomes pid 1 of the container)
//! ---------------                         ------------------------------------
//! launch mark
//! check entrypoint, mkdir upper/work
//! create cgroup, open its join handle
//! compile seccomp profile
//! clone3(NEWPID|NEWNS|NEWUTS|NEWIPC|NEWNET)
//!                                         clone      (first instruction)
//! [bridge: veth pair, eth0 address,
//!  route — net::attach] ────────────────▶ network    (none: lo up; bridge: waits for this)
//!                                         rootfs     private mounts, overlay of the layers
//!                                         cgroup     write "0" to tasks; unshare(NEWCGROUP)
//!                                         mounts     /proc, /dev, /sys, masks, read-only paths
//!                                         pivot_root
//!                                         hostname, cwd, rlimits, fds
//!                                         [--userns: unshare(NEWUSER), ask for maps]
//! [write uid/gid maps] ────────────────▶  uid_map    setresuid(0) inside
//!                                         seccomp    caps dropped, no_new_privs, filter
//!                                         exec       marks sent, execveat(sealed launcher)
//!                                                    launcher: execve(entrypoint)
//! marks pipe hits EOF (CLOEXEC) ◀──────── (agent) ready
//! wait → exit mark, cgroup stats, cleanup
//! ANCHOR_END: start_map
//! ```
//!
//! The child never panics and never returns: any failure is written to the
//! marks pipe as `!stage: message` and the child `_exit`s with 127.
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use isolab_abi::stage::Stage;

use crate::cgroups::{Cgroup, CgroupLayout, CgroupStats, Join};
use crate::seccomp;

mod child;
mod spec;
use child::{child_main, ChildPipes, ChildPlan};
pub use spec::*;

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
pub fn launch(mut spec: Spec, layout: &CgroupLayout) -> Result<Running, ContainerError> {
    let argv0 = spec.argv.first().cloned().unwrap_or_default();
    if argv0.is_empty() {
        return Err(ContainerError::Entrypoint(
            "no entrypoint: give a command or use an image with one".into(),
        ));
    }
    // An OCI container's directory is its state directory alone (the
    // rootfs is the engine's); the lab's gets the overlay's three.
    let subs: &[&str] = if spec.oci.is_some() {
        &[""]
    } else {
        &["upper", "work", "merged"]
    };
    for sub in subs {
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
        link: None,
    };
    let cgroup = guard
        .cgroup
        .insert(Cgroup::create(layout, &spec.cgroup, &spec.limits)?);
    let join = cgroup.join_handle()?;
    let profile = if spec.seccomp {
        Some(seccomp::default_profile()?)
    } else {
        None
    };
    // The container's init execs its program through the sealed launcher
    // (CVE-2019-5736; see `launcher`), unless isolab itself already runs
    // from a file no one can write.
    let launcher = match crate::launcher::get() {
        Ok(fd) => Some(fd),
        Err(_) if crate::launcher::exe_is_protected() => None,
        Err(e) => return Err(ContainerError::Launcher(e)),
    };
    let (marks_r, marks_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    if let Network::Bridge(a) = &spec.network {
        guard.link = Some(a.host_if.clone());
        spec.volumes.extend(network_files(&spec, a)?);
    }
    let plan = ChildPlan::new(&spec, launcher)?;

    let (req_r, req_w) = pipe()?;
    let (net_r, net_w) = pipe()?;
    let ns = spec.namespaces;
    let mut flags = libc::CLONE_NEWNS as u64;
    for (on, flag) in [
        (ns.pid, libc::CLONE_NEWPID),
        (ns.uts, libc::CLONE_NEWUTS),
        (ns.ipc, libc::CLONE_NEWIPC),
    ] {
        if on {
            flags |= flag as u64;
        }
    }
    if matches!(spec.network, Network::None | Network::Bridge(_)) {
        flags |= libc::CLONE_NEWNET as u64;
    }
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
        drop(net_w);
        let pipes = ChildPipes {
            marks_w,
            go_r,
            req_w,
            net_r,
        };
        child_main(&plan, &spec, &join, profile, pipes);
    }
    if r < 0 {
        return Err(ContainerError::Clone(std::io::Error::last_os_error()));
    }
    let pid = nix::unistd::Pid::from_raw(r as i32);
    guard.child = Some(pid);
    drop(marks_w);
    drop(go_r);
    drop(req_w);
    drop(net_r);
    drop(join);
    if let Network::Bridge(a) = &spec.network {
        // The child waits (its `network` stage) until its eth0 is ready.
        crate::net::attach(pid.as_raw() as u32, a).map_err(|message| ContainerError::Setup {
            stage: Stage::Network.name().into(),
            message,
        })?;
    }
    let mut net = fs::File::from(net_w);
    let _ = net.write_all(b"n");
    drop(net);
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
        let message = crate::launcher::failure_message(&spec.argv[0], &message).unwrap_or(message);
        return Err(ContainerError::Setup { stage, message });
    }
    // OCI `create` ends at the start gate, everything else at exec.
    let gated = spec.oci.as_ref().is_some_and(|o| o.gate.is_some());
    let last = if gated { CREATED } else { Stage::Exec.name() };
    if !marks.iter().any(|m| m.name == last) {
        guard.child = None;
        let status = nix::sys::wait::waitpid(pid, None);
        return Err(ContainerError::Setup {
            stage: Stage::Exec.name().into(),
            message: format!("the container's init ended before {last} ({status:?})"),
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
    /// The host end of a veth pair (gone with the child's namespace, but
    /// removed here too in case the child never got it).
    link: Option<String>,
}

impl LaunchGuard {
    /// The launch succeeded: hand the cgroup on and undo nothing.
    fn done(mut self) -> Cgroup {
        self.dir = None;
        self.child = None;
        self.link = None;
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
        if let Some(link) = self.link.take() {
            let _ = crate::net::remove_link(&link);
        }
        if let Some(dir) = self.dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A bridged container's `/etc/hosts`, `/etc/resolv.conf` and
/// `/etc/hostname`: files in its instance directory bound over the
/// image's, as Docker does. Name servers on the host's loopback (a local
/// resolver) are left out: the container cannot reach them.
fn network_files(spec: &Spec, a: &crate::net::BridgeAttach) -> Result<Vec<Volume>, ContainerError> {
    let dir = &spec.instance_dir;
    let h = &spec.hostname;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{h}\n",
        a.ip
    );
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut resolv = String::from("# written by isolab for a container on the lab bridge\n");
    for line in host_resolv.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["nameserver", ip] if ip.starts_with("127.") || *ip == "::1" => {}
            ["nameserver", _] | ["search", ..] | ["options", ..] => {
                resolv.push_str(line);
                resolv.push('\n');
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, text) in [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{h}\n")),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|source| ContainerError::InstanceDir {
            path: path.clone(),
            source,
        })?;
        out.push(Volume {
            source: path,
            target: format!("/etc/{name}"),
            read_only: false,
        });
    }
    Ok(out)
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

/// The mark an OCI `create`'s init writes at its start gate.
pub const CREATED: &str = "created";

impl Running {
    /// Hands the container over (OCI `create`): it keeps running, its
    /// cgroup and directory stay, and this process may exit; `delete`
    /// ends and removes them later (by the cgroup's name).
    pub fn detach(mut self) {
        self.waited = true;
    }

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
            link: None,
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
            user: None,
            hostname: "h".into(),
            limits: crate::cgroups::Limits {
                memory_bytes: Some(1 << 20),
                ..Default::default()
            },
            userns: false,
            seccomp: false,
            stdio: Stdio::Into(fs::File::open("/dev/null").unwrap().into()),
            volumes: vec![],
            network: Network::None,
            namespaces: Namespaces::default(),
            cgroup: "guard-test".into(),
            oci: None,
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
