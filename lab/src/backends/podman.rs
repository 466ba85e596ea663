//! podman as a peer: Docker's command line without a daemon. `podman run`
//! forks `conmon`, which runs an OCI runtime on a bundle podman writes —
//! one process tree per container, no long-lived server in between.
//!
//! The lab gives it the same image as every container backend (the overlay
//! of the image's layers, mounted in a private mount namespace, passed as
//! `--rootfs`, so no registry or image store is involved), its own storage
//! under the home (`--root`, `--runroot`: nothing in /var/lib/containers),
//! cgroupfs (no systemd needed), no events journal, and a parent cgroup
//! with the containers' limits, from which podman's own cgroup hangs. The
//! rest is podman's defaults — its capabilities and its seccomp profile —
//! because that is how people run it.
//!
//! Host adaptations, said in the report: on a hybrid cgroup host podman's
//! default runtime (crun 1.8) refuses to start, so podman runs runc there;
//! and where root lacks CAP_SYS_RESOURCE (as in this lab's VMs) no runtime
//! may raise an rlimit, so the lab asks for limits at or below the
//! current ones.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};
use isolab_runtime::cgroups::{CgroupMode, PARENT};
use isolab_scenarios::protocol::HOLD_LINE;

use super::monitor_cgroup::MonitorCgroup;
use crate::backend::{Attach, Backend, InstanceSpec, Kind, Outcome, Unavailable};
use crate::clock::monotonic_ns;
use crate::home::Home;

const PROGRAM: &str = "podman";

/// `podman run --rootfs`, as the lab runs it: with the host's runtime
/// (crun, or runc where crun refuses the cgroup layout), or with isolab's
/// own `isolab-oci` (`podman --runtime`), the proof that the lab's runtime
/// is an OCI runtime an engine can drive.
pub struct Podman {
    isolab: bool,
}

pub static PODMAN: Podman = Podman { isolab: false };
pub static PODMAN_ISOLAB: Podman = Podman { isolab: true };

impl Backend for Podman {
    fn name(&self) -> &'static str {
        if self.isolab {
            "podman-isolab"
        } else {
            "podman"
        }
    }
    fn about(&self) -> &'static str {
        if self.isolab {
            "podman run --rootfs --runtime isolab-oci: podman and conmon driving the lab's own runtime"
        } else {
            "podman run --rootfs (daemonless: podman → conmon → OCI runtime), with podman's defaults"
        }
    }
    fn kind(&self) -> Kind {
        Kind::Container
    }
    fn baseline(&self) -> Option<&'static str> {
        Some("container")
    }
    fn available(&self) -> Result<(), Unavailable> {
        if crate::host::which(PROGRAM).is_none() {
            return Err(Unavailable {
                reason: "podman is not installed".into(),
                install: Some("apt-get install podman".into()),
            });
        }
        if self.isolab {
            super::oci::ISOLAB_OCI.available()?;
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(Unavailable {
                reason: "the podman peer needs root here (the image's overlay and the cgroup): run it with sudo".into(),
                install: None,
            });
        }
        Ok(())
    }
    fn check(&self, spec: &InstanceSpec, attach: Attach) -> Result<()> {
        super::peer::check(self.name(), spec, attach)
    }
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
        run(home, spec, self)
    }
    fn prune(&self, home: &Home) -> Vec<String> {
        if self.isolab {
            // The storage and the bundles are the podman peer's.
            return vec![];
        }
        let mut removed = Vec::new();
        let (root, runroot) = storage(home);
        if root.exists() {
            let _ = global_args(home, "runc")
                .into_iter()
                .fold(&mut Command::new(PROGRAM), |c, a| c.arg(a))
                .args(["rm", "--all", "--force"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for d in [root, runroot] {
            if d.exists() && std::fs::remove_dir_all(&d).is_ok() {
                removed.push(format!("podman storage {}", d.display()));
            }
        }
        removed.extend(super::peer::prune_bundles(home, "isolab-podman-"));
        removed
    }
}

/// podman's storage and run state, under the home.
fn storage(home: &Home) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        home.peers_dir().join("podman-storage"),
        home.peers_dir().join("podman-run"),
    )
}

/// Options before `run`: the lab's own storage, cgroupfs, no journal, the
/// OCI runtime.
fn global_args(home: &Home, runtime: &str) -> Vec<String> {
    let (root, runroot) = storage(home);
    vec![
        "--root".into(),
        root.display().to_string(),
        "--runroot".into(),
        runroot.display().to_string(),
        "--cgroup-manager".into(),
        "cgroupfs".into(),
        "--events-backend".into(),
        "none".into(),
        "--runtime".into(),
        runtime.into(),
    ]
}

/// RLIMIT_NOFILE and RLIMIT_NPROC at or below this process's: where root
/// lacks CAP_SYS_RESOURCE, a runtime asked for podman's defaults fails.
pub fn ulimits() -> Vec<String> {
    let (nofile_soft, nofile_hard) = isolab_runtime::container::nofile_limits();
    let nproc = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
        .map(|(_, h)| h)
        .unwrap_or(4096)
        .min(4096);
    vec![
        "--ulimit".into(),
        format!("nofile={nofile_soft}:{nofile_hard}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
    ]
}

fn run(home: &Home, spec: &InstanceSpec, p: &Podman) -> Result<Outcome> {
    let program = crate::host::which(PROGRAM).ok_or_else(|| {
        anyhow!(
            "{}",
            p.available()
                .err()
                .map(|u| u.sentence())
                .unwrap_or_default()
        )
    })?;
    let layout = super::container::layout()?;
    // crun 1.8 refuses the hybrid layout; runc does not.
    let runtime = if p.isolab {
        super::oci::ISOLAB_OCI
            .program()
            .ok_or_else(|| anyhow!("isolab-oci vanished"))?
            .display()
            .to_string()
    } else if layout.mode == CgroupMode::Hybrid {
        "runc".to_owned()
    } else {
        "crun".to_owned()
    };
    let id = format!("isolab-{}-{}", p.name(), crate::instances::new_id());
    let b = super::oci::bundle(home, spec, &id)?;
    let cgroup = MonitorCgroup::with_limits(home, &id, &spec.limits)?;
    let parent = format!("/{PARENT}/{}", home.cgroup_name(&id));
    let mut cmd = Command::new(&program);
    crate::host::in_host_mount_namespace(&mut cmd);
    cmd.args(global_args(home, &runtime))
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--name",
            &id,
            "--hostname",
            &id,
        ])
        .arg("--cgroup-parent")
        .arg(&parent)
        .args(ulimits())
        .args(volume_args(&spec.volumes))
        .arg("--rootfs")
        .arg(&b.rootfs)
        .args(crate::instances::describe(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    super::oci::with_overlay_rootfs(&mut cmd, b.overlay_opts.clone(), b.rootfs_c.clone(), None);
    let launch = monotonic_ns();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    if let Some(hook) = &spec.on_spawn {
        hook(child.id() as i32);
    }
    let stderr_reader = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(move || crate::capture::read_all(e)));
    let mut memory = BTreeMap::new();
    let mut output = String::new();
    if let Some(out) = child.stdout.take() {
        output = crate::capture::read_lines(out, |line| {
            if line == HOLD_LINE {
                if let Some(v) = cgroup.charged_bytes() {
                    memory.insert("hold_cgroup_charged".to_owned(), v);
                }
            }
        });
    }
    let stderr = stderr_reader
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    let status = child.wait()?;
    let exit_ns = monotonic_ns();
    // podman's own cgroup hangs under ours: gone with --rm, but an
    // interrupted run can leave it, and it would keep ours from going.
    for dir in cgroup.paths() {
        remove_children(&dir);
    }
    let limit_mib = spec.limits.memory_bytes.unwrap_or(0) >> 20;
    if let Some(p) = cgroup.finish(limit_mib).map_err(|_| {
        anyhow!("podman's container went over its memory limit ({limit_mib} MiB) and was killed")
    })? {
        memory.insert("instance_cgroup_peak".to_owned(), p);
    }
    super::peer::Finished {
        name: p.name(),
        spec,
        id,
        launch,
        exit_ns,
        code: status.code().unwrap_or(255),
        output: format!("{output}{stderr}"),
        memory,
        host_clock: true,
        note: format!(
        "launch = spawn of podman; ready stamped by the agent (same host clock); podman ran {} through conmon{}, with rlimits at or below the host's (root here cannot raise them)",
        if p.isolab { "isolab-oci (--runtime)" } else { runtime.as_str() },
        if runtime == "runc" {
            " (its default crun 1.8 refuses this hybrid cgroup layout)"
        } else {
            ""
        }
    ),
    }
    .outcome()
}

/// Removes the (empty) cgroups under `dir`, deepest first.
pub(crate) fn remove_children(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_children(&e.path());
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// `-v SRC:TARGET[:ro]` for each bind, as Docker's and podman's CLIs take it.
pub(crate) fn volume_args(volumes: &[isolab_runtime::container::Volume]) -> Vec<String> {
    volumes
        .iter()
        .flat_map(|v| ["-v".to_owned(), volume_spec(v)])
        .collect()
}

pub(crate) fn volume_spec(v: &isolab_runtime::container::Volume) -> String {
    format!(
        "{}:{}{}",
        v.source.display(),
        v.target,
        if v.read_only { ":ro" } else { "" }
    )
}
