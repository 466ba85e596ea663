//! `isolab-vmm`'s command line, without KVM: what it refuses, and how.
//! (Booting guests through it is tested from the workspace's `tests/`.)
use std::process::Command;

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_isolab-vmm"))
}

#[test]
fn a_missing_kvm_device_is_one_sentence_with_the_fix() {
    let o = vmm()
        .args(["--kvm-device", "/nonexistent/kvm"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/kvm does not exist: enable KVM"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn unknown_flags_and_bad_values_are_usage_errors() {
    let o = vmm().args(["--frob"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = vmm().args(["--mem"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--mem needs a value"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = vmm().args(["--vcpus", "many"]).output().unwrap();
    assert_ne!(o.status.code(), Some(0));
}
