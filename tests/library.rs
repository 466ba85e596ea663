//! The lab as a library: what `isolab` does, driven without the CLI.
mod common;
use common::*;

use isolab_lab::backend::Attach;
use isolab_lab::backends as backend;
use isolab_lab::{catalog, Home, InstanceSpec};

#[test]
fn every_benchable_scenario_has_a_backend_that_runs_it() {
    let spec = InstanceSpec::default();
    for s in catalog::CATALOG.iter().filter(|s| s.benchable) {
        assert!(
            backend::registry().iter().any(|b| b.supports(s, &spec)),
            "no backend runs {}",
            s.name
        );
    }
    for name in isolab_lab::bench::default_scenarios() {
        assert!(catalog::find(&name).is_some_and(|s| s.benchable));
    }
}

#[test]
fn options_a_backend_does_not_take_are_refused_in_one_sentence() {
    let c = backend::find("container").unwrap();
    let mut spec = InstanceSpec::default();
    spec.vm.pvh = true;
    let e = c.check(&spec, Attach::Captured).unwrap_err().to_string();
    assert!(
        e.contains("--pvh") && e.contains("--backend microvm"),
        "{e}"
    );
    let vm = backend::find("microvm").unwrap();
    let mut spec = InstanceSpec::default();
    spec.volumes.push(isolab_runtime::container::Volume {
        source: "/tmp".into(),
        target: "/data".into(),
        read_only: true,
    });
    let e = vm.check(&spec, Attach::Captured).unwrap_err().to_string();
    assert!(e.contains("-v binds a host path"), "{e}");
    let q = backend::find("qemu").unwrap();
    let e = q
        .check(
            &InstanceSpec::default(),
            Attach::Terminal {
                tty: true,
                interactive: true,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("-it"), "{e}");
}

/// The container and the microVM, run through the library, report the
/// same way and leave nothing in their home.
#[test]
fn the_library_runs_a_container_and_a_microvm() {
    if !require("root", is_root()) {
        return;
    }
    let dir = home();
    let home = Home::new(dir.path());
    let c = backend::find("container").unwrap();
    let out = c.run(&home, &InstanceSpec::default()).unwrap();
    assert_eq!(out.report.exit_code, 0, "{}", out.output);
    assert_eq!(out.report.backend, "container");
    assert!(out.report.launch_to_ready_ns.is_some());
    assert!(
        out.report.memory_bytes.contains_key("cgroup_peak"),
        "{:?}",
        out.report.memory_bytes
    );
    if require("/dev/kvm", has_kvm()) {
        let vm = backend::find("microvm").unwrap();
        let out = vm.run(&home, &InstanceSpec::default()).unwrap();
        assert_eq!(out.report.exit_code, 0, "{}", out.output);
        assert_eq!(out.report.guest, "bare");
        assert!(out.report.launch_to_ready_ns.unwrap() < out.report.launch_to_exit_ns.unwrap());
    }
    let left: Vec<_> = std::fs::read_dir(home.instances_dir())
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// The bench's timing method for the lab's own runtime: a fresh `isolab
/// run` spawned and reaped by the harness, marks in time order from the
/// spawn.
#[test]
fn the_lab_runtime_is_timed_as_a_spawned_process() {
    if !require("root", is_root()) {
        return;
    }
    let dir = home();
    let home = Home::new(dir.path());
    std::env::set_var(isolab_lab::run::BIN_ENV, env!("CARGO_BIN_EXE_isolab"));
    let c = backend::find("container").unwrap();
    let out = isolab_lab::run::as_process(&home, c, &InstanceSpec::default()).unwrap();
    let names: Vec<&str> = out.report.marks.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"launch"), "{names:?}");
    assert_eq!(names.last(), Some(&"reaped"), "{names:?}");
    for stage in ["clone", "exec", "ready", "exit"] {
        assert!(names.contains(&stage), "{stage} missing: {names:?}");
    }
    let r = &out.report;
    assert!(r.launch_to_ready_ns.unwrap() < r.launch_to_exit_ns.unwrap());
    assert!(r.notes.iter().any(|n| n.contains("fresh `isolab run`")));
}
