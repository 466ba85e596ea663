//! bubblewrap as a peer: the floor of a process sandbox.
//!
//! `bwrap` makes namespaces, bind-mounts a root and drops capabilities —
//! and nothing else: no cgroups, no seccomp filter unless handed one, no
//! masked `/proc` paths. The lab gives it the same image (the same overlay
//! the OCI peers' bundles get, mounted in a private mount namespace), the
//! same namespaces and capability set as its own runtime, and a cgroup
//! with the same limits, so its column shows what the rest of a runtime's
//! work buys: the probes mark what bubblewrap leaves open.
use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};
use isolab_runtime::container::DEFAULT_CAPS;
use isolab_scenarios::protocol::HOLD_LINE;

use super::monitor_cgroup::MonitorCgroup;
use crate::backend::{Attach, Backend, InstanceSpec, Kind, Outcome, Unavailable};
use crate::clock::monotonic_ns;
use crate::home::Home;

const PROGRAM: &str = "bwrap";

/// `bwrap`, as the lab runs it.
pub struct Bwrap;

impl Backend for Bwrap {
    fn name(&self) -> &'static str {
        "bwrap"
    }
    fn about(&self) -> &'static str {
        "bubblewrap: namespaces, a bind-mounted root and dropped capabilities, nothing else (the floor)"
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
                reason: "bwrap is not installed".into(),
                install: Some("apt-get install bubblewrap".into()),
            });
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(Unavailable {
                reason: "the bwrap peer needs root here (the image's overlay and the cgroup): run it with sudo".into(),
                install: None,
            });
        }
        Ok(())
    }
    fn check(&self, spec: &InstanceSpec, attach: Attach) -> Result<()> {
        super::peer::check("bwrap", spec, attach)
    }
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
        run(home, spec)
    }
    fn prune(&self, home: &Home) -> Vec<String> {
        let mut removed = Vec::new();
        removed.extend(super::peer::prune_bundles(home, "isolab-bwrap-"));
        removed
    }
}

/// bwrap's arguments: the lab runtime's namespaces (not the user
/// namespace, which the lab's runtime also leaves off by default), the
/// image's root read-write over its overlay, a fresh /proc and a minimal
/// /dev, the runtime's capability set, a clean environment.
pub fn bwrap_args(
    rootfs: &std::path::Path,
    id: &str,
    argv: &[String],
    volumes: &[isolab_runtime::container::Volume],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend([
        "--bind".into(),
        rootfs.display().to_string(),
        "/".into(),
        "--proc".into(),
        "/proc".into(),
        "--dev".into(),
        "/dev".into(),
        "--hostname".into(),
        id.into(),
        "--clearenv".into(),
        "--setenv".into(),
        "PATH".into(),
        crate::images::DEFAULT_PATH
            .trim_start_matches("PATH=")
            .into(),
        "--setenv".into(),
        "HOSTNAME".into(),
        id.into(),
        "--setenv".into(),
        "HOME".into(),
        "/".into(),
        "--cap-drop".into(),
        "ALL".into(),
    ]);
    // `-v` binds, as the other backends get them (the disk-read
    // scenario's image disk at /dev/vda).
    for v in volumes {
        a.push(if v.read_only { "--ro-bind" } else { "--bind" }.into());
        a.push(v.source.display().to_string());
        a.push(v.target.clone());
    }
    for c in DEFAULT_CAPS {
        a.push("--cap-add".into());
        a.push(c.to_string());
    }
    a.extend(["--chdir".into(), "/".into(), "--".into()]);
    a.extend(argv.iter().cloned());
    a
}

fn run(home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
    let program = crate::host::which(PROGRAM).ok_or_else(|| {
        anyhow!(
            "{}",
            Bwrap
                .available()
                .err()
                .map(|u| u.sentence())
                .unwrap_or_default()
        )
    })?;
    let id = format!("isolab-bwrap-{}", crate::instances::new_id());
    let b = super::oci::bundle(home, spec, &id)?;
    let argv = crate::instances::describe(spec);
    // The same limits as the lab's containers, in a cgroup of its own
    // (bubblewrap makes none).
    let cgroup = MonitorCgroup::with_limits(home, &id, &spec.limits)?;
    let mut cmd = Command::new(&program);
    crate::host::in_host_mount_namespace(&mut cmd);
    cmd.args(bwrap_args(&b.rootfs, &id, &argv, &spec.volumes))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    super::oci::with_overlay_rootfs(&mut cmd, b.overlay_opts.clone(), b.rootfs_c.clone(), None);
    cgroup.join_on_spawn(&mut cmd);
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
    let limit_mib = spec.limits.memory_bytes.unwrap_or(0) >> 20;
    if let Some(p) = cgroup.finish(limit_mib).map_err(|_| {
        anyhow!("bwrap's sandbox went over its memory limit ({limit_mib} MiB) and was killed")
    })? {
        memory.insert("instance_cgroup_peak".to_owned(), p);
    }
    super::peer::Finished {
        name: "bwrap",
        spec,
        id,
        launch,
        exit_ns,
        code: status.code().unwrap_or(255),
        output: format!("{output}{stderr}"),
        memory,
        host_clock: true,
        note: "launch = spawn of bwrap; ready stamped by the agent (same host clock); bubblewrap sets up namespaces, mounts and capabilities only — no seccomp filter, no masked /proc paths — and the lab puts it in a cgroup with the containers' limits, made before launch as a monitor's is (bubblewrap makes none), so its start has no cgroup creation in it".to_owned(),
    }
    .outcome()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_namespaces_and_capabilities_as_the_lab_runtime() {
        let v = isolab_runtime::container::Volume {
            source: "/srv/disk.ext4".into(),
            target: "/dev/vda".into(),
            read_only: true,
        };
        let a = bwrap_args(
            std::path::Path::new("/r"),
            "id",
            &["/isolab-agent".into()],
            &[v],
        );
        assert!(a
            .windows(3)
            .any(|w| w == ["--ro-bind", "/srv/disk.ext4", "/dev/vda"]));
        for ns in [
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
        ] {
            assert!(a.iter().any(|x| x == ns), "{ns}");
        }
        assert!(!a.iter().any(|x| x == "--unshare-user"));
        let added = a.iter().filter(|x| *x == "--cap-add").count();
        assert_eq!(added, DEFAULT_CAPS.len());
        assert_eq!(a.last().unwrap(), "/isolab-agent");
        assert!(a.windows(3).any(|w| w == ["--bind", "/r", "/"]));
    }
}
