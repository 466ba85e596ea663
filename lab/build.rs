//! Builds the static `isolab-agent` and embeds its bytes into the lab (and
//! so into `isolab`).
//!
//! The agent must be one static binary — the same bytes become the
//! container entrypoint and the VM's `/init` — but the workspace's other
//! crates (proc macros above all) cannot be built with `+crt-static` on the
//! gnu target. Cargo only keeps host and target flags apart when `--target`
//! is given, so this script runs a nested `cargo build --target <host>` for
//! the agent alone, in its own target directory, with `+crt-static`.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for p in [
        "../scenarios/src",
        "../scenarios/Cargo.toml",
        "../abi/src",
        "../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", manifest.join(p).display());
    }
    let target_dir = out.join("agent-target");
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        target.to_uppercase().replace('-', "_")
    );
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&manifest)
        .args([
            "build",
            "--release",
            "--offline",
            "-p",
            "isolab-scenarios",
            "--bin",
            "isolab-agent",
            "--target",
            &target,
            "--target-dir",
        ])
        .arg(&target_dir);
    // Do not let the outer build's wrappers, flags and jobserver leak in.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME"
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
            || k.starts_with("DEP_")
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env(&flags_var, "-C target-feature=+crt-static");
    let status = cmd.status().expect("run nested cargo for isolab-agent");
    assert!(status.success(), "building the static isolab-agent failed");
    let bin = target_dir
        .join(&target)
        .join("release")
        .join("isolab-agent");
    println!("cargo:rustc-env=ISOLAB_AGENT_PATH={}", bin.display());
    // A cheap fingerprint of the agent's bytes (FNV-1a), so a cached default
    // image built from another agent is noticed and rebuilt.
    let bytes = std::fs::read(&bin).expect("read the built isolab-agent");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    println!("cargo:rustc-env=ISOLAB_AGENT_FINGERPRINT={h:016x}");
}
