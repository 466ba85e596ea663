//! `isolab run`: one instance on one backend, attached as the user asked.
use anyhow::{bail, Result};
use isolab_reports::InstanceReport;

use crate::backend::{Attach, Backend, InstanceSpec};
use crate::home::Home;

/// The environment variable through which a harness that spawned `isolab
/// run` passes the instant it spawned it (`CLOCK_MONOTONIC`, ns).
pub const LAUNCH_ENV: &str = "ISOLAB_LAUNCH_NS";

/// The launch instant a spawning harness passed, if any.
pub fn launch_from_env() -> Option<u64> {
    std::env::var(LAUNCH_ENV).ok().and_then(|v| v.parse().ok())
}

/// How a run ended, as the CLI shows it.
#[derive(Debug)]
pub enum Ran {
    /// `--json`: the report.
    Report(Box<InstanceReport>),
    /// Attached to the terminal: the instance's exit code.
    Exited(i32),
    /// `-d`: the new instance's id.
    Detached(String),
}

/// Runs one instance of `spec` on `backend`. A program that makes
/// containers as root should first re-execute itself from a sealed copy
/// ([`crate::selfprotect::ensure_sealed`]); the `isolab` binary does.
pub fn run(
    home: &Home,
    backend: &'static dyn Backend,
    spec: &InstanceSpec,
    attach: Attach,
) -> Result<Ran> {
    backend.check(spec, attach)?;
    if let Err(u) = backend.available() {
        bail!("{}", u.sentence());
    }
    Ok(match attach {
        Attach::Captured => Ran::Report(Box::new(backend.run(home, spec)?.report)),
        Attach::Terminal { tty, interactive } => {
            let spec = forward_signals(spec);
            let r = backend.run_attached(home, &spec, tty, interactive);
            stop_forwarding();
            Ran::Exited(r?)
        }
        Attach::Detached => Ran::Detached(crate::instances::run_detached(home, backend, spec)?),
    })
}

static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static FORWARDED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
const FORWARDED_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn forward(sig: libc::c_int) {
    use std::sync::atomic::Ordering;
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    if pid > 0 {
        // The first signal is passed on (the instance may stop cleanly);
        // a second one ends it.
        let n = FORWARDED.fetch_add(1, Ordering::SeqCst);
        // SAFETY: kill(2) is async-signal-safe; pid is the instance's.
        unsafe { libc::kill(pid, if n == 0 { sig } else { libc::SIGKILL }) };
    }
}

/// While an instance runs attached to the user's terminal, Ctrl-C,
/// SIGTERM and SIGHUP go to the instance (as `docker run` proxies them)
/// instead of killing isolab mid-run, which left the instance's state
/// behind for `prune`; a second one kills the instance. isolab then
/// reaps it and cleans up as after any end.
fn forward_signals(spec: &InstanceSpec) -> InstanceSpec {
    use std::sync::atomic::Ordering;
    FORWARD_TO.store(0, Ordering::SeqCst);
    FORWARDED.store(0, Ordering::SeqCst);
    let mut spec = spec.clone();
    let inner = spec.on_spawn.take();
    spec.on_spawn = Some(std::sync::Arc::new(move |pid| {
        FORWARD_TO.store(pid, Ordering::SeqCst);
        if let Some(h) = &inner {
            h(pid);
        }
    }));
    for sig in FORWARDED_SIGNALS {
        // SAFETY: installs a handler that only reads atomics and calls kill.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    spec
}

fn stop_forwarding() {
    FORWARD_TO.store(0, std::sync::atomic::Ordering::SeqCst);
    for sig in FORWARDED_SIGNALS {
        // SAFETY: restores the default disposition.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// `isolab stop`: SIGTERM, then SIGKILL after `timeout_s`. An instance
/// whose owner is gone is ended through its backend (a container by its
/// cgroup, not by a remembered pid: its pid 1 may have outlived it).
pub fn stop(home: &Home, key: &str, timeout_s: u64) -> Result<()> {
    let s = crate::instances::find(home, key)?;
    use crate::instances::Effective;
    if matches!(s.effective(), Effective::Dead | Effective::Created) {
        if let Ok(b) = crate::backends::find(&s.backend) {
            b.kill_stale(home, &s.id);
        }
        return Ok(());
    }
    crate::instances::stop(home, &s.id, timeout_s)
}

/// `isolab rm [-f]`; what is left of a dead instance is ended first.
pub fn rm(home: &Home, key: &str, force: bool) -> Result<()> {
    let s = crate::instances::find(home, key)?;
    if s.effective() != crate::instances::Effective::Running {
        if let Ok(b) = crate::backends::find(&s.backend) {
            b.kill_stale(home, &s.id);
        }
    }
    crate::instances::rm(home, &s.id, force)
}

/// Removes what dead instances and killed runs left, for every backend,
/// and the generated-artefact cache. Returns a line per removed thing.
pub fn prune(home: &Home) -> Result<Vec<String>> {
    let (mut removed, _running) = crate::instances::prune_records(home)?;
    for b in crate::backends::registry() {
        removed.extend(b.prune(home));
    }
    // Layers no image and no living instance uses (`image rm` leaves them).
    let store = home.store();
    let mut keep = store.referenced_layers();
    for s in crate::instances::list(home) {
        keep.extend(s.layers);
    }
    for d in store.collect_garbage(&keep) {
        removed.push(format!("layer {}", &d[..12]));
    }
    let (files, bytes) = crate::images::prune_cache(home);
    if files > 0 {
        removed.push(format!(
            "{files} cached file(s) in {} ({} KiB; rebuilt when needed)",
            home.cache_dir().display(),
            bytes / 1024
        ));
    }
    Ok(removed)
}

/// The environment variable naming the `isolab` program the harness
/// spawns (default: the program running, when it is `isolab`).
pub const BIN_ENV: &str = "ISOLAB_BIN";

/// The `isolab` program to spawn for an instance.
pub fn isolab_program() -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(BIN_ENV) {
        return Ok(p.into());
    }
    let exe = crate::selfprotect::original_exe()
        .ok_or_else(|| anyhow::anyhow!("cannot tell which program is running"))?;
    if exe.file_name().is_some_and(|n| n == "isolab") {
        return Ok(exe);
    }
    let sibling = exe.parent().and_then(|d| {
        [Some(d), d.parent()]
            .into_iter()
            .flatten()
            .map(|d| d.join("isolab"))
            .find(|p| p.is_file())
    });
    sibling.ok_or_else(|| {
        anyhow::anyhow!(
            "no isolab binary next to {}: set {BIN_ENV} to the isolab to spawn",
            exe.display()
        )
    })
}

/// `isolab run --json` arguments that ask for `spec` on `backend`.
pub fn cli_args(backend: &str, spec: &InstanceSpec) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--json".into(),
        "--backend".into(),
        backend.into(),
        "--image".into(),
        spec.image.clone(),
        "--scenario".into(),
        spec.scenario.clone(),
    ];
    for p in &spec.params {
        a.extend(["--param".into(), p.clone()]);
    }
    if let Some(m) = spec.limits.memory_bytes {
        a.extend(["--memory".into(), m.to_string()]);
    }
    if let Some(p) = spec.limits.pids {
        a.extend(["--pids".into(), p.to_string()]);
    }
    if let Some(c) = spec.limits.cpus {
        a.extend(["--cpus".into(), c.to_string()]);
    }
    for v in &spec.volumes {
        a.extend([
            "-v".into(),
            format!(
                "{}:{}{}",
                v.source.display(),
                v.target,
                if v.read_only { ":ro" } else { "" }
            ),
        ]);
    }
    match (spec.net.mode, &spec.net.container) {
        (crate::network::Mode::None, _) => {}
        (crate::network::Mode::Container, Some(c)) => {
            a.extend(["--network".into(), format!("container:{c}")]);
        }
        (m, _) => a.extend(["--network".into(), m.as_str().into()]),
    }
    for p in &spec.net.publish {
        a.extend(["-p".into(), p.to_string().replace("->", ":")]);
    }
    if let Some(b) = &spec.net.bridge {
        a.extend(["--bridge".into(), b.clone()]);
    }
    if let Some(s) = &spec.net.subnet {
        a.extend(["--subnet".into(), s.clone()]);
    }
    if spec.userns {
        a.push("--userns".into());
    }
    if spec.namespaces != Default::default() {
        let n = spec.namespaces;
        let mut list = vec!["mount"];
        for (on, name) in [
            (n.pid, "pid"),
            (n.uts, "uts"),
            (n.ipc, "ipc"),
            (n.cgroup, "cgroup"),
        ] {
            if on {
                list.push(name);
            }
        }
        if spec.net.mode != crate::network::Mode::Host {
            list.push("net");
        }
        a.extend(["--namespaces".into(), list.join(",")]);
    }
    if !spec.seccomp {
        a.push("--no-seccomp".into());
    }
    if !spec.command.is_empty() {
        a.push("--".into());
        a.extend(spec.command.iter().cloned());
    }
    a
}

/// Runs one instance as a user would: a fresh `isolab run --json`
/// process, spawned and reaped by this harness, exactly as crun or QEMU
/// is. `launch` is the instant before the spawn (passed to the child, so
/// its marks start there), `reaped` the instant it was reaped; the lab's
/// per-process costs (loading, its sealed copy, state) are inside.
pub fn as_process(
    home: &Home,
    backend: &dyn Backend,
    spec: &InstanceSpec,
) -> Result<crate::backend::Outcome> {
    use isolab_abi::stage::Stage;
    let program = isolab_program()?;
    let args = cli_args(backend.name(), spec);
    let launch = crate::clock::monotonic_ns();
    let mut cmd = std::process::Command::new(&program);
    crate::host::in_host_mount_namespace(&mut cmd);
    let out = cmd
        .args(&args)
        .env("ISOLAB_HOME", home.root())
        .env(LAUNCH_ENV, launch.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", program.display()))?;
    let reaped = crate::clock::monotonic_ns();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut report: InstanceReport = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} {} printed no report ({e}): {}",
            program.display(),
            args.join(" "),
            crate::host::printable(String::from_utf8_lossy(&out.stderr).trim())
        )
    })?;
    report.marks.retain(|m| m.name != Stage::Reaped.name());
    report
        .marks
        .push(isolab_reports::Mark::new(Stage::Reaped.name(), reaped));
    report.notes.push(format!(
        "launch = spawn of a fresh `isolab run` by the harness, reaped = the harness reaped it: the lab's own per-process costs (loading, its sealed copy, state) are inside, as crun's and runc's are ({})",
        program.display()
    ));
    report.derive();
    Ok(crate::backend::Outcome {
        report,
        output: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_asked_for_exactly_the_spec() {
        let mut spec = InstanceSpec {
            scenario: "idle".into(),
            params: vec!["hold_ms=200".into()],
            ..Default::default()
        };
        spec.limits.memory_bytes = Some(256 << 20);
        spec.limits.pids = Some(1024);
        spec.volumes.push(isolab_runtime::container::Volume {
            source: "/srv/d.ext4".into(),
            target: "/dev/vda".into(),
            read_only: true,
        });
        let a = cli_args("container", &spec).join(" ");
        assert_eq!(
            a,
            "run --json --backend container --image default --scenario idle --param hold_ms=200 --memory 268435456 --pids 1024 -v /srv/d.ext4:/dev/vda:ro"
        );
        spec.seccomp = false;
        spec.command = vec!["/bin/true".into()];
        assert!(cli_args("container", &spec)
            .join(" ")
            .ends_with("--no-seccomp -- /bin/true"));
        spec.net.mode = crate::network::Mode::Bridge;
        spec.net.publish = vec![crate::network::Publish::parse("127.0.0.1:8080:80/udp").unwrap()];
        spec.net.subnet = Some("10.9.0.0/24".into());
        let a = cli_args("container", &spec).join(" ");
        assert!(
            a.contains("--network bridge -p 127.0.0.1:8080:80/udp --subnet 10.9.0.0/24"),
            "{a}"
        );
    }
}
