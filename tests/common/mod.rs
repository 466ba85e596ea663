//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Command, Output};

/// The `isolab` binary cargo built for these tests.
pub fn isolab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_isolab"))
}

/// Runs isolab with args and returns its output.
pub fn run(args: &[&str]) -> Output {
    isolab().args(args).output().expect("spawn isolab")
}

/// True when running under CI, where a missing capability is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Gate for a host capability: returns true when the test may proceed.
/// Without it the test skips *loudly*; under `CI=true` it fails instead.
pub fn require(capability: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if in_ci() {
        panic!("CI=true and this host lacks {capability}: a skip does not count as a pass");
    }
    eprintln!("SKIP: this host lacks {capability}; the test did not run");
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn has_kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A fresh isolab home for one test, removed on drop.
pub fn home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("isolab-test-home-")
        .tempdir()
        .expect("tempdir")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn tmp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
