//! Builds the bare lab guest (`guest/main.rs`) with the installed rustc:
//! no extra target is needed — `no_std`, `no_main`, panic=abort, a static
//! relocation model and a linker script with a fixed load address turn the
//! host's x86_64-unknown-linux-gnu target into a loadable 64-bit ELF.
//!
//! What the guest shares with the monitor and the agent (ports, compute
//! kernels, the scenario catalog) is the `isolab-abi` crate, compiled here
//! first as an rlib with exactly the guest's code-generation flags.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    for p in ["guest", "../abi/src"] {
        println!("cargo:rerun-if-changed={}", manifest.join(p).display());
    }
    let elf = out.join("isolab-guest.elf");
    let script = manifest.join("guest/link.ld");
    let abi = out.join("libisolab_abi.rlib");
    let status = Command::new(&rustc)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "rlib",
            "--crate-name",
            "isolab_abi",
        ])
        .args(codegen_flags())
        .arg("-o")
        .arg(&abi)
        .arg(manifest.join("../abi/src/lib.rs"))
        .status()
        .expect("run rustc for isolab-abi (guest flags)");
    assert!(
        status.success(),
        "building isolab-abi for the bare guest failed"
    );
    let status = Command::new(rustc)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "isolab_guest",
        ])
        .args(codegen_flags())
        .args(["-C", "strip=symbols"])
        .arg("--extern")
        .arg(format!("isolab_abi={}", abi.display()))
        .args([
            "-C",
            "link-arg=-nostartfiles",
            "-C",
            "link-arg=-nostdlib",
            "-C",
            "link-arg=-static",
        ])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", script.display()))
        .args([
            "-C",
            "link-arg=-Wl,--build-id=none",
            "-C",
            "link-arg=-Wl,-z,max-page-size=4096",
        ])
        .arg("-o")
        .arg(&elf)
        .arg(manifest.join("guest/main.rs"))
        .status()
        .expect("run rustc for the lab guest");
    assert!(status.success(), "building the bare lab guest failed");
    println!("cargo:rustc-env=ISOLAB_GUEST_ELF={}", elf.display());
}

/// Code generation shared by the guest and the rlib it links: no unwinding,
/// a static relocation model, and no SSE — PVM stops a guest at its first
/// SSE instruction (see guest/main.rs). rustc warns that this changes the
/// float ABI; the guest has no floating point at all.
fn codegen_flags() -> [&'static str; 12] {
    [
        "-C",
        "panic=abort",
        "-C",
        "opt-level=2",
        "-C",
        "relocation-model=static",
        "-C",
        "debuginfo=0",
        "-C",
        "target-feature=-sse,-sse2,-avx,-avx2",
        "--cap-lints",
        "allow",
    ]
}
