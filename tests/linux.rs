//! Issue 5: the distro kernel under our monitor. On hardware KVM it boots
//! to the agent; on PVM (this lab's hosts) it must at least *start*: its
//! first serial lines with our command line and our e820 map prove the
//! loader, the boot params and the serial path. Takes ~40 s under PVM.
mod common;
use common::*;

/// Runs a Linux guest in a fresh home; returns its JSON report, the
/// process output and the console's first lines.
fn boot_linux(args: &[&str]) -> (serde_json::Value, std::process::Output, String) {
    let home = home();
    let out = isolab()
        .args(["run", "--backend", "microvm", "--guest", "linux", "--json"])
        .args(args)
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
    let console = v["console_head"].as_str().unwrap_or_default().to_owned();
    (v, out, console)
}

#[test]
fn distro_kernel_starts_under_our_monitor() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let kernel = isolab_microvm::kernel::find_in(std::path::Path::new("/boot"));
    if !require(
        "a distro kernel in /boot (apt-get install linux-image-cloud-amd64)",
        kernel.is_ok(),
    ) {
        return;
    }
    let (v, out, console) = boot_linux(&[
        "--scenario",
        "startup",
        "--timeout",
        "150",
        "--disk",
        "image",
    ]);
    assert!(
        console.contains("Linux version"),
        "the kernel never printed:\n{console}"
    );
    assert!(
        console.contains("Command line: console=ttyS0")
            && console.contains("isolab.scenario=startup"),
        "our command line:\n{console}"
    );
    // The image disk, announced to virtio_mmio as Firecracker does.
    assert!(
        console.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "the virtio-mmio disk on the command line:\n{console}"
    );
    assert!(
        console.contains("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"),
        "our e820 map:\n{console}"
    );
    assert!(
        console.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        "our e820 map:\n{console}"
    );
    let names: Vec<&str> = v["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for m in [
        "kvm_open",
        "kernel_loaded",
        "first_entry",
        "first_serial",
        "kernel_start",
    ] {
        assert!(names.contains(&m), "mark {m} missing: {names:?}");
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(
            stderr(&out).contains("this host's KVM is pvm"),
            "the user is told before trying: {}",
            stderr(&out)
        );
        assert_eq!(v["exit_code"], 1);
        assert!(v["notes"].to_string().contains("cannot boot to init here"));
    } else {
        assert_eq!(
            v["exit_code"], 0,
            "hardware KVM boots to the agent: {}",
            v["notes"]
        );
        assert!(names.contains(&"agent_ready"), "{names:?}");
    }
}

#[test]
fn broken_kernels_are_refused_clearly() {
    let home = home();
    let k = home.path().join("vmlinuz-broken");
    std::fs::write(&k, b"MZ not really a kernel").unwrap();
    let out = isolab()
        .args([
            "run",
            "--backend",
            "microvm",
            "--guest",
            "linux",
            "--kernel",
            k.to_str().unwrap(),
            "--json",
        ])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a kernel"), "{}", stderr(&out));
    let out = isolab()
        .args([
            "run",
            "--backend",
            "microvm",
            "--guest",
            "linux",
            "--kernel",
            "/nonexistent/vmlinuz",
            "--json",
        ])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("cannot read kernel /nonexistent/vmlinuz"),
        "{}",
        stderr(&out)
    );
}

/// The lean kernel `scripts/build-lean-kernel.sh` built (the CI builds it
/// first), found in its default cache or `ISOLAB_LEAN_KERNEL`.
fn lean_kernel() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("ISOLAB_LEAN_KERNEL") {
        return Some(p.into());
    }
    let cache =
        std::path::PathBuf::from(std::env::var("HOME").ok()?).join(".cache/isolab/lean-kernel");
    std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path().join("arch/x86/boot/bzImage"))
        .find(|p| p.is_file())
}

#[test]
fn lean_kernel_starts_with_its_devices_built_in() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let kernel = lean_kernel();
    if !require(
        "the lean kernel (run scripts/build-lean-kernel.sh)",
        kernel.is_some(),
    ) {
        return;
    }
    let kernel = kernel.unwrap();
    let info = isolab_microvm::kernel::inspect(&kernel).unwrap();
    assert!(
        format!("{info:?}").contains("BzImage"),
        "a bzImage: {info:?}"
    );
    let (v, _, console) = boot_linux(&[
        "--scenario",
        "disk-read",
        "--timeout",
        "120",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert!(
        console.contains("Command line: console=ttyS0")
            && console.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "our command line, with the image disk:\n{console}"
    );
    // SLOB and no jump labels take it past the point where the distro
    // kernel stops under PVM (SLUB's cmpxchg16b): the console is up.
    assert!(
        console.contains("printk: console [ttyS0] enabled"),
        "the lean kernel brought its console up:\n{console}"
    );
    // The same kernel through its PVH entry (32-bit, paging off, Xen's
    // start info): the same command line and our memory map, read from
    // hvm_start_info this time.
    let (p, _, pconsole) = boot_linux(&[
        "--scenario",
        "startup",
        "--timeout",
        "120",
        "--pvh",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert!(
        pconsole.contains("Command line: console=ttyS0")
            && pconsole.contains("isolab.scenario=startup")
            && pconsole.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"),
        "PVH boot:\n{pconsole}"
    );
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(p["exit_code"], 1);
    } else {
        assert_eq!(p["exit_code"], 0, "{}", p["notes"]);
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(v["exit_code"], 1);
        assert!(
            v["notes"].to_string().contains("at guest RIP 0x"),
            "where it stopped: {}",
            v["notes"]
        );
    } else {
        assert_eq!(v["exit_code"], 0, "{}", v["notes"]);
        let data = &v["result"]["data"];
        assert_eq!(data["device"], "/dev/vda");
        assert_eq!(data["modules_loaded"], serde_json::json!([]));
    }
}

/// Issue 14.4: where KVM cannot boot Linux (PVM, or no KVM), QEMU's
/// software emulation boots the same kernel and initramfs, so the lab can
/// still say what a Linux VM isolates. Never timed, never benched.
#[test]
fn software_emulation_runs_the_linux_guest_and_answers_the_probes() {
    if !require(
        "qemu-system-x86_64 (apt-get install qemu-system-x86)",
        std::path::Path::new("/usr/bin/qemu-system-x86_64").is_file(),
    ) {
        return;
    }
    let kernel = isolab_microvm::kernel::find_in(std::path::Path::new("/boot"));
    if !require(
        "a distro kernel in /boot (apt-get install linux-image-cloud-amd64)",
        kernel.is_ok(),
    ) {
        return;
    }
    let home = home();
    let run = |args: &[&str]| {
        isolab()
            .args(args)
            .env("ISOLAB_HOME", home.path())
            .output()
            .unwrap()
    };
    // A functional scenario: the agent computes and reports it.
    let out = run(&[
        "run",
        "--backend",
        "qemu-tcg",
        "--scenario",
        "cpu",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["guest"], "linux");
    assert_eq!(v["result"]["ok"], true, "{v}");
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("software emulation"),
        "{v}"
    );
    // The bench refuses it by name, in one sentence.
    let out = run(&["bench", "--backends", "qemu-tcg", "--scenarios", "cpu"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("never timed"), "{}", stderr(&out));
    // The bare guest is not its guest.
    let out = run(&["run", "--backend", "qemu-tcg", "--guest", "bare"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Linux guest only"),
        "{}",
        stderr(&out)
    );
    // The probe matrix has a Linux-VM column: from our monitor where KVM
    // boots Linux, from software emulation where it does not.
    let out = run(&["probes", "--json"]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
    let col = if m.get("qemu-tcg").is_some() {
        &m["qemu-tcg"]
    } else {
        &m["microvm-linux"]
    };
    let probes = col
        .as_object()
        .unwrap_or_else(|| panic!("no Linux-VM column: {m}"));
    assert!(probes.len() >= 30, "{col}");
    // In its own kernel only the shared CPU is an exposure.
    let exposed: Vec<&String> = probes
        .iter()
        .filter(|(_, p)| p["verdict"] == "exposed")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(exposed, ["cpu_vulnerabilities"], "{col}");
    assert_eq!(col["mount"]["verdict"], "isolated");
}

/// Issue 15: any image in both worlds — the same image's program, with
/// its config, as a container and in a Linux VM booted from the image as
/// its disk (here under software emulation, which every host has).
#[test]
fn the_same_image_runs_as_a_container_and_in_a_linux_vm() {
    if !require("root (containers)", is_root())
        || !require(
            "qemu-system-x86_64 (apt-get install qemu-system-x86)",
            std::path::Path::new("/usr/bin/qemu-system-x86_64").is_file(),
        )
        || !require(
            "a distro kernel in /boot (apt-get install linux-image-cloud-amd64)",
            isolab_microvm::kernel::find_in(std::path::Path::new("/boot")).is_ok(),
        )
    {
        return;
    }
    let home = home();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("motd"), "from the image\n").unwrap();
    std::fs::write(
        ctx.path().join("Containerfile"),
        "FROM default\nCOPY motd /srv/motd\nWORKDIR /srv\nUSER nobody\nENV WHERE=anywhere\nCMD [\"/bin/sh\", \"-c\", \"id -u; pwd; cat motd; echo $WHERE; touch /srv/written 2>/dev/null && echo wrote; exit 5\"]\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        isolab()
            .args(args)
            .env("ISOLAB_HOME", home.path())
            .output()
            .unwrap()
    };
    let out = run(&["build", "-t", "both:1", ctx.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let container = run(&["run", "--image", "both:1"]);
    let vm = run(&["run", "--backend", "qemu-tcg", "--image", "both:1"]);
    assert_eq!(
        stdout(&container),
        "65534\n/srv\nfrom the image\nanywhere\n",
        "{}",
        stderr(&container)
    );
    // In the VM, /srv is the image's (its disk under a tmpfs upper dir),
    // owned by root: nobody cannot write there either. (A VM has one
    // console for both streams; the program keeps stderr quiet.)
    assert_eq!(
        stdout(&vm).replace("\r\n", "\n"),
        stdout(&container),
        "{}",
        stderr(&vm)
    );
    assert_eq!(
        container.status.code(),
        Some(5),
        "the image's own exit code"
    );
    assert_eq!(
        vm.status.code(),
        container.status.code(),
        "the same exit in both worlds"
    );
    // A command replaces the image's CMD, with the image's user and env.
    let vm = run(&[
        "run",
        "--backend",
        "qemu-tcg",
        "--image",
        "both:1",
        "--",
        "/bin/sh",
        "-c",
        "echo $WHERE; exit 7",
    ]);
    assert_eq!(stdout(&vm).trim(), "anywhere");
    assert_eq!(vm.status.code(), Some(7));
    // The bare guest runs no programs: said in one sentence.
    let out = run(&["run", "--backend", "qemu", "--", "/bin/true"]);
    assert!(
        stderr(&out).contains("bare guest runs scenarios only"),
        "{}",
        stderr(&out)
    );
}
