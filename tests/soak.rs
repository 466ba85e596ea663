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
