//! Soak: many instances in a row leave nothing behind — no instance dir,
//! cgroup, mount, open descriptor or process — and the rate is printed.
//! Driven through the library (as the bench does), root and KVM needed;
//! skips loudly without them (fails under CI=true).
mod common;
use common::*;

use isolab_lab::backends;
use isolab_lab::{Home, InstanceSpec};
use std::time::Instant;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Lines of the host's mount table that name the home: overlays, binds.
fn mounts_under(home: &std::path::Path) -> usize {
    let needle = home.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// This home's cgroups (`<tag>-*` under the lab's parent, any hierarchy).
fn cgroups_of(home: &Home) -> usize {
    let tag = format!("{}-", home.cgroup_tag());
    [
        "/sys/fs/cgroup/memory/isolab",
        "/sys/fs/cgroup/pids/isolab",
        "/sys/fs/cgroup/cpu/isolab",
        "/sys/fs/cgroup/isolab",
    ]
    .iter()
    .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
    .filter(|e| e.file_name().to_string_lossy().starts_with(&tag))
    .count()
}

fn children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.to_owned()))
                .is_some_and(|r| r.split_whitespace().nth(1) == Some(me.as_str()))
        })
        .count()
}

/// Descriptors and children are counted process-wide: one soak at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn soak(backend: &str, runs: u32, spec: &InstanceSpec) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = home();
    let home = Home::new(dir.path());
    home.prepare().unwrap();
    let b = backends::find(backend).unwrap();
    // One run first: the image, the caches, lazily opened descriptors.
    b.run(&home, spec).unwrap();
    let (fds, mounts) = (open_fds(), mounts_under(dir.path()));
    let t = Instant::now();
    for i in 0..runs {
        let o = b
            .run(&home, spec)
            .unwrap_or_else(|e| panic!("run {i}: {e:#}"));
        assert_eq!(o.report.exit_code, 0, "run {i}: {}", o.output);
    }
    let secs = t.elapsed().as_secs_f64();
    let left_dirs = std::fs::read_dir(home.instances_dir())
        .map(|r| r.count())
        .unwrap_or(0);
    let left = (
        left_dirs,
        cgroups_of(&home),
        mounts_under(dir.path()).saturating_sub(mounts),
        open_fds().saturating_sub(fds),
        children(),
    );
    // Straight to fd 2, past the test harness's capture: CI's log shows
    // the figures.
    let line = format!(
        "soak {backend}: {runs} sequential instances in {secs:.1} s ({:.0} runs/s); left: {} instance dirs, {} cgroups, {} mounts, {} fds, {} processes\n",
        f64::from(runs) / secs,
        left.0,
        left.1,
        left.2,
        left.3,
        left.4
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    assert_eq!(
        left,
        (0, 0, 0, 0, 0),
        "leftovers (dirs, cgroups, mounts, fds, processes)"
    );
}

#[test]
fn a_thousand_containers_leave_nothing() {
    if !require("root", is_root()) {
        return;
    }
    soak("container", 1000, &InstanceSpec::default());
}

#[test]
fn two_hundred_microvms_leave_nothing() {
    if !require("root", is_root()) || !require("/dev/kvm", has_kvm()) {
        return;
    }
    soak("microvm", 200, &InstanceSpec::default());
}

/// Processes on the host that belong to `home`: a container's (its root
/// is under the home) or any whose command line carries one of `markers`
/// (an `isolab run`, its forked child before exec, the agent, a monitor).
fn processes_of(home: &std::path::Path, markers: &[&str]) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            if stat.contains(") Z") {
                return false;
            }
            let root = std::fs::read_link(e.path().join("root")).unwrap_or_default();
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            root.starts_with(home)
                || markers
                    .iter()
                    .any(|m| cmdline.windows(m.len()).any(|w| w == m.as_bytes()))
        })
        .count()
}

/// `isolab run` SIGKILLed at random moments during 100 starts —
/// containers and microVMs in turn — then `prune`: no instance dir,
/// cgroup, mount or process of the home is left.
#[test]
fn sigkill_during_a_hundred_starts_then_prune_leaves_nothing() {
    if !require("root", is_root()) || !require("/dev/kvm", has_kvm()) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = home();
    let home = Home::new(dir.path());
    let isolab = || {
        let mut c = isolab();
        c.env("ISOLAB_HOME", dir.path());
        c.stdout(std::process::Stdio::null());
        c.stderr(std::process::Stdio::null());
        c
    };
    // Build the image first, so kills land in starts, not in a build.
    assert!(isolab()
        .args(["image", "build"])
        .status()
        .unwrap()
        .success());
    // Values no other test uses, to find what these runs started.
    let markers = ["hold_ms=5007", "n=4000000007"];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut finished = 0;
    let t = Instant::now();
    for i in 0..100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = std::time::Duration::from_micros(x % 60_000);
        let mut c = isolab();
        c.arg("run");
        if i % 2 == 0 {
            c.args(["--scenario", "idle", "--param", "hold_ms=5007"]);
        } else {
            c.args(["--backend", "microvm", "--scenario", "spin"]);
            c.args(["--param", "n=4000000007", "--timeout", "60"]);
        }
        let mut child = c.spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_some() {
            finished += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    // What a SIGKILLed isolab could not clean up, prune does; give dying
    // processes a moment to be reaped first.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = isolab().arg("prune").output().unwrap();
    assert!(o.status.success(), "prune: {}", stderr(&o));
    let left = (
        std::fs::read_dir(home.instances_dir())
            .map(|r| r.count())
            .unwrap_or(0),
        cgroups_of(&home),
        mounts_under(dir.path()),
        processes_of(dir.path(), &markers),
    );
    let line = format!(
        "sigkill: 100 starts killed at random moments (0-60 ms; {finished} had already ended) in {secs:.1} s, then prune; left: {} instance dirs, {} cgroups, {} mounts, {} processes\n",
        left.0, left.1, left.2, left.3
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    assert_eq!(
        left,
        (0, 0, 0, 0),
        "leftovers (dirs, cgroups, mounts, processes)"
    );
}
