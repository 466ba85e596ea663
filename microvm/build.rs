//! Builds the bare lab guest (`guest/main.rs`) with the installed rustc:
//! no extra target is needed — `no_std`, `no_main`, panic=abort, a static
//! relocation model and a linker script with a fixed load address turn the
//! host's x86_64-unknown-linux-gnu target into a loadable 64-bit ELF.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    for p in [
        "guest/main.rs",
        "guest/link.ld",
        "src/ports.rs",
        "../scenarios/src/kernels.rs",
    ] {
        println!("cargo:rerun-if-changed={}", manifest.join(p).display());
    }
    let elf = out.join("isolab-guest.elf");
    let script = manifest.join("guest/link.ld");
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
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=2",
            "-C",
            "relocation-model=static",
            "-C",
            "debuginfo=0",
            "-C",
            "strip=symbols",
        ])
        // No SSE: PVM stops a guest at its first SSE instruction (see
        // guest/main.rs). rustc warns that this changes the float ABI; the
        // guest has no floating point at all.
        .args([
            "-C",
            "target-feature=-sse,-sse2,-avx,-avx2",
            "--cap-lints",
            "allow",
        ])
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
