//! Issue 4: the microVM monitor boots the lab guest here (PVM included).
//! Needs /dev/kvm; skips loudly without it (fails under CI=true).
mod common;
use common::*;
use serde_json::Value;

fn vm_json(args: &[&str]) -> (Option<Value>, std::process::Output) {
    let out = isolab()
        .args(["run", "--backend", "microvm", "--guest", "bare", "--json"])
        .args(args)
        .output()
        .unwrap();
    (serde_json::from_slice(&out.stdout).ok(), out)
}

/// `isolab-vmm`, which cargo builds next to `isolab` (it is the monitor
/// crate's binary; `microvm/tests` makes `cargo test` build it).
fn vmm() -> std::process::Command {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_isolab")).with_file_name("isolab-vmm");
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace`",
        p.display()
    );
    std::process::Command::new(p)
}

#[test]
fn bare_guest_startup_marks_in_order() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let (v, out) = vm_json(&["--scenario", "startup"]);
    let v = v.unwrap_or_else(|| panic!("no JSON: {}", stderr(&out)));
    assert_eq!(v["exit_code"], 0);
    let names: Vec<&str> = v["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    let want = [
        "launch",
        "kvm_open",
        "vm_created",
        "memory",
        "kernel_loaded",
        "jailed",
        "vcpus_ready",
        "first_entry",
        "kernel_entry",
        "params_checked",
        "ready",
        "first_serial",
        "done",
        "exit",
        "teardown",
        "reaped",
    ];
    assert_eq!(names, want, "marks out of order");
    let d = &v["result"]["data"];
    assert_eq!(d["e820_entries"], 3, "the guest saw our e820 map");
    assert_eq!(d["ram_bytes"], (64u64 << 20) - (0x10_0000 - 0x9fc00));
    assert_eq!(d["own_range_is_ram"], true);
    assert_eq!(d["cmdline_len"], "isolab.scenario=startup".len());
    assert_eq!(d["ring"], 3, "the workload runs in ring 3");
    assert!(v["launch_to_ready_ns"].as_u64().unwrap() < v["launch_to_exit_ns"].as_u64().unwrap());
    let rss = v["memory_bytes"]["monitor_rss_beyond_guest"]
        .as_u64()
        .unwrap();
    assert!(rss > 0 && rss < 64 << 20, "{rss}");
}

#[test]
fn cpu_scenario_computes_what_the_agent_computes() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let (v, out) = vm_json(&["--scenario", "cpu", "--param", "blocks=2000"]);
    let v = v.unwrap_or_else(|| panic!("no JSON: {}", stderr(&out)));
    let want = format!("{:016x}", isolab_scenarios::kernels::cpu_work(2000));
    assert_eq!(
        v["result"]["data"]["checksum"],
        want.as_str(),
        "same code, same answer in every backend"
    );
    let rate = v["result"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "cpu.sha256")
        .unwrap();
    assert!(rate["value"].as_f64().unwrap() > 0.0);
}

#[test]
fn exit_codes_and_misbehaving_guests() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let (v, out) = vm_json(&["--scenario", "startup", "--param", "exit=7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(v.unwrap()["exit_code"], 7);

    let t = std::time::Instant::now();
    let (_, out) = vm_json(&["--scenario", "hang", "--timeout", "1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("did not finish within 1s"),
        "{}",
        stderr(&out)
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(8),
        "timeout not honoured: {:?}",
        t.elapsed()
    );

    let (_, out) = vm_json(&["--scenario", "flood", "--timeout", "1"]);
    assert!(
        stderr(&out).contains("did not finish") && stderr(&out).contains("flood flood"),
        "{}",
        stderr(&out)
    );

    let (_, out) = vm_json(&["--scenario", "fault"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("triple-faulted"), "{}", stderr(&out));

    let (v, out) = vm_json(&["--scenario", "unknown-io"]);
    let v = v.unwrap_or_else(|| panic!("unknown I/O must be ignored: {}", stderr(&out)));
    assert_eq!(
        v["result"]["data"]["mmio_read"], 0xffff_ffffu64,
        "unclaimed MMIO reads as all ones"
    );
}

#[test]
fn exit_cost_and_memory_scenarios_report_metrics() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let (v, out) = vm_json(&["--scenario", "exit-cost", "--param", "exits=2000"]);
    let v = v.unwrap_or_else(|| panic!("{}", stderr(&out)));
    let m = &v["result"]["metrics"][0];
    assert_eq!(m["name"], "vm.exit_cost");
    assert!(
        m["value"].as_f64().unwrap() > 50.0,
        "a VM exit costs more than 50 ns: {m}"
    );
    let (v, out) = vm_json(&["--scenario", "memory", "--param", "mib=8"]);
    let v = v.unwrap_or_else(|| panic!("{}", stderr(&out)));
    assert!(
        v["memory_bytes"]["guest_touched"].as_u64().unwrap() >= 8 << 20,
        "touched pages are resident"
    );
    let (_, out) = vm_json(&["--scenario", "memory", "--param", "mib=512"]);
    assert!(!out.status.success(), "512 MiB cannot fit a 64 MiB guest");
}

#[test]
fn bad_input_is_one_sentence() {
    let o = vmm()
        .args(["--kvm-device", "/nonexistent/kvm"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/kvm does not exist: enable KVM"),
        "{}",
        stderr(&o)
    );
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let o = vmm().args(["--mem", "2"]).output().unwrap();
    assert!(
        stderr(&o).contains("too small: use at least 8 MiB"),
        "{}",
        stderr(&o)
    );
    let o = vmm().args(["--mem", "100000000"]).output().unwrap();
    assert!(
        stderr(&o).contains("more than this host has available"),
        "{}",
        stderr(&o)
    );
    let dir = home();
    let k = dir.path().join("k");
    std::fs::write(&k, b"hello").unwrap();
    let o = vmm()
        .args(["--kernel", k.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("is not a kernel"), "{}", stderr(&o));
    let o = vmm().args(["--frob"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    // The network device: a MAC that is not one, a MAC with no tap, a
    // descriptor that is not a tap. One sentence each.
    for (args, want) in [
        (
            &["--mac", "03:00:00:00:00:01"][..],
            "unicast: the first byte even",
        ),
        (&["--mac", "02:00:00:00:01"][..], "six hex bytes"),
        (&["--mac", "02:15:0a:00:00:05"][..], "add --net-fd N"),
        (
            &["--net-fd", "0"][..],
            "--net-fd 0: not a tun/tap descriptor",
        ),
    ] {
        let o = vmm()
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    }
    // The bare guest's network scenarios without a network device.
    let o = vmm()
        .args(["--cmdline", "isolab.scenario=net-rtt isolab.ip=10.0.0.2"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        r["result"]
            .as_str()
            .unwrap()
            .contains("no virtio network device"),
        "{r}"
    );
    let o = isolab()
        .args(["run", "--backend", "microvm", "--scenario", "file-io"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("needs --guest linux"), "{}", stderr(&o));
    let o = isolab()
        .args(["run", "--backend", "microvm", "--timeout", "0"])
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("--timeout 0 is out of range"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn qemu_runs_the_same_guest() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let installed = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !require("qemu-system-x86_64", installed) {
        return;
    }
    let home = home();
    let out = isolab()
        .args([
            "run",
            "--backend",
            "qemu",
            "--scenario",
            "cpu",
            "--param",
            "blocks=2000",
            "--json",
        ])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(v["exit_code"], 0);
    let want = format!("{:016x}", isolab_scenarios::kernels::cpu_work(2000));
    assert_eq!(v["result"]["data"]["checksum"], want.as_str());
    assert!(v["launch_to_ready_ns"].as_u64().unwrap() > 0);
    // QEMU's memory is charged to its cgroup. (Its RSS at the ready byte
    // is there only when QEMU had not exited yet by the time it was read:
    // a short guest can finish first, and a zombie has no VmRSS.)
    assert!(
        v["memory_bytes"]["instance_cgroup_peak"].as_u64().unwrap() > 1 << 20,
        "{v}"
    );
    if let Some(r) = v["memory_bytes"]["monitor_rss_at_ready"].as_u64() {
        assert!(r > 1 << 20, "{v}");
    }
}

#[test]
fn serial_input_reaches_the_guest() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    use std::io::Write;
    let mut child = isolab()
        .args([
            "run",
            "--backend",
            "microvm",
            "-i",
            "-t",
            "--scenario",
            "echo-input",
            "--timeout",
            "20",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello guest\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"input\":\"hello guest\""),
        "{}",
        stderr(&out)
    );
}

fn disk_pattern(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn checksum(data: &[u8]) -> String {
    use isolab_scenarios::kernels::{word_checksum, CHECKSUM_SEED};
    format!("{:016x}", word_checksum(CHECKSUM_SEED, data))
}

#[test]
fn the_bare_guest_drives_a_virtio_disk() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let dir = home();
    let disk = dir.path().join("disk.img");
    // Three 64 KiB requests and a 512-byte tail.
    let mut want = disk_pattern(3 * 65536 + 512);
    std::fs::write(&disk, &want).unwrap();
    let d = disk.to_str().unwrap();

    // Read-write: the guest writes sector 0, flushes, then reads it all.
    let (v, out) = vm_json(&["--scenario", "disk-read", "--disk", d, "--param", "write=1"]);
    let v = v.unwrap_or_else(|| panic!("no JSON: {}", stderr(&out)));
    assert_eq!(v["exit_code"], 0, "{v}");
    for (i, b) in want[..512].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13);
    }
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        want,
        "the guest's write reached the file"
    );
    let data = &v["result"]["data"];
    assert_eq!(data["disk_id"], "isolab-disk");
    assert_eq!(data["capacity_sectors"], want.len() / 512);
    assert_eq!(data["bytes"], want.len());
    assert_eq!(
        data["checksum"],
        checksum(&want),
        "the guest read the file's bytes"
    );
    assert_eq!(data["ext4"], false);
    // GET_ID, the write, the flush, the past-the-end probe and 4 reads.
    assert_eq!(data["requests"], 8);
    let rate = v["result"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "disk.read_rate")
        .expect("a disk read rate");
    assert!(rate["value"].as_f64().unwrap() > 0.0);

    // Only part of the disk.
    let (v, _) = vm_json(&["--scenario", "disk-read", "--disk", d, "--param", "kib=64"]);
    let data = &v.unwrap()["result"]["data"];
    assert_eq!(data["bytes"], 65536);
    assert_eq!(data["checksum"], checksum(&want[..65536]));

    // Read-only: the write is refused with IOERR, the file is untouched.
    let o = vmm()
        .args([
            "--disk-ro",
            d,
            "--cmdline",
            "isolab.scenario=disk-read isolab.write=1",
        ])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    // The result line is in the guest's result page, not on the serial port.
    let result = r["result"].as_str().unwrap();
    assert!(result.contains("the write was refused"), "{result}");
    assert!(!r["serial"].as_str().unwrap().contains("@isolab"));
    assert_eq!(r["disks"][0]["writes"], 0);
    assert_eq!(std::fs::read(&disk).unwrap(), want);

    // No disk attached, a missing file, an odd-sized file: one sentence.
    let o = vmm()
        .args(["--cmdline", "isolab.scenario=disk-read"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["result"]
        .as_str()
        .unwrap()
        .contains("no virtio_mmio.device="));
    let o = isolab()
        .args(["run", "--backend", "microvm", "--scenario", "disk-read"])
        .args(["--disk", dir.path().join("nope").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
    std::fs::write(&disk, [0u8; 700]).unwrap();
    let o = vmm().args(["--disk", d]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("512-byte sectors"), "{}", stderr(&o));
    let nine: Vec<&str> = std::iter::repeat_n(["--disk-ro", d], 9).flatten().collect();
    let o = vmm().args(&nine).output().unwrap();
    assert!(
        stderr(&o).contains(
            "9 virtio devices asked for (disks and network); the monitor places at most 8"
        ),
        "{}",
        stderr(&o)
    );
    let o = isolab()
        .args(["run", "--backend", "container", "--disk", d])
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("use it with --backend microvm"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_image_disk_is_the_image_as_ext4() {
    if !require("/dev/kvm", has_kvm()) || !require("root", is_root()) {
        return;
    }
    let o = isolab().args(["image", "disk"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let path = std::path::PathBuf::from(stdout(&o).trim());
    let bytes = std::fs::read(&path).unwrap();
    let tree = isolab_runtime::diskimage::read_ext4(&path).unwrap();
    match &tree["isolab-agent"] {
        isolab_runtime::initramfs::Node::File { mode, data } => {
            assert_eq!(*mode, 0o755);
            assert_eq!(&data[..4], b"\x7fELF");
        }
        other => panic!("isolab-agent is {other:?}"),
    }
    // The bare guest's `disk-read` scenario gets this disk by default.
    let (v, out) = vm_json(&["--scenario", "disk-read"]);
    let v = v.unwrap_or_else(|| panic!("no JSON: {}", stderr(&out)));
    let data = &v["result"]["data"];
    assert_eq!(data["ext4"], true, "{v}");
    assert_eq!(data["bytes"], bytes.len());
    assert_eq!(data["checksum"], checksum(&bytes));
    // QEMU's own virtio-blk serves the same disk to the same driver: an
    // independent device model the guest's driver must also work with.
    let installed = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !require("qemu-system-x86_64", installed) {
        return;
    }
    let out = isolab()
        .args([
            "run",
            "--backend",
            "qemu",
            "--scenario",
            "disk-read",
            "--json",
        ])
        .output()
        .unwrap();
    let q: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("qemu: {}", stderr(&out)));
    assert_eq!(q["exit_code"], 0, "{q}");
    let qd = &q["result"]["data"];
    assert_eq!(
        qd["checksum"],
        checksum(&bytes),
        "QEMU served the same bytes"
    );
    assert_eq!(
        (&qd["ext4"], &qd["disk_id"]),
        (&Value::Bool(true), &Value::from("isolab-disk"))
    );
}

#[test]
fn prune_drops_cached_disks_and_they_come_back() {
    if !require("root", is_root()) {
        return;
    }
    let h = home();
    let disk = |h: &tempfile::TempDir| {
        let o = isolab()
            .args(["image", "disk"])
            .env("ISOLAB_HOME", h.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::path::PathBuf::from(stdout(&o).trim())
    };
    let first = disk(&h);
    assert!(first.starts_with(h.path()) && first.is_file());
    let o = isolab()
        .arg("prune")
        .env("ISOLAB_HOME", h.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("cached file"), "{}", stdout(&o));
    assert!(!first.exists());
    assert_eq!(disk(&h), first, "rebuilt under the same content name");
}

#[test]
fn the_pvh_entry_boots_the_same_guest() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let (v, out) = vm_json(&["--scenario", "startup", "--pvh"]);
    let v = v.unwrap_or_else(|| panic!("no JSON: {}", stderr(&out)));
    assert_eq!(v["exit_code"], 0, "{v}");
    let names: Vec<&str> = v["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names
            .windows(2)
            .any(|w| w == ["first_entry", "kernel_entry"]),
        "{names:?}"
    );
    let d = &v["result"]["data"];
    // The same memory map, this time read from hvm_start_info's memmap.
    assert_eq!(d["e820_entries"], 3);
    assert_eq!(d["ram_bytes"], (64u64 << 20) - (0x10_0000 - 0x9fc00));
    assert_eq!(d["own_range_is_ram"], true);

    // A disk through the PVH path: the guest maps the device page itself.
    let dir = home();
    let disk = dir.path().join("disk.img");
    let want = disk_pattern(65536);
    std::fs::write(&disk, &want).unwrap();
    let (v, _) = vm_json(&[
        "--scenario",
        "disk-read",
        "--pvh",
        "--disk",
        disk.to_str().unwrap(),
    ]);
    assert_eq!(v.unwrap()["result"]["data"]["checksum"], checksum(&want));

    // A kernel without the Xen PHYS32_ENTRY note: refused with --pvh,
    // booted without it.
    let mut elf = isolab_microvm::BARE_GUEST.to_vec();
    let note = [4u8, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
    let at = elf
        .windows(note.len())
        .position(|w| w == note)
        .expect("the guest carries a PVH note");
    elf[at + 8] = 17;
    let k = dir.path().join("no-pvh.elf");
    std::fs::write(&k, &elf).unwrap();
    let k = k.to_str().unwrap();
    let o = vmm().args(["--pvh", "--kernel", k]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("has no PVH entry"), "{}", stderr(&o));
    let o = vmm()
        .args(["--kernel", k, "--cmdline", "isolab.scenario=startup"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["exit_code"], 0);
    let o = isolab()
        .args(["run", "--backend", "qemu", "--pvh"])
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("use it with --backend microvm"),
        "{}",
        stderr(&o)
    );
}

/// The Docker verbs work on a microVM as on a container: `run -d`, `ps`,
/// `logs`, `stop`, `rm`, and a refused run leaves nothing behind.
#[test]
fn detached_microvm_lifecycle() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let h = home();
    let cmd = |args: &[&str]| {
        isolab()
            .args(args)
            .env("ISOLAB_HOME", h.path())
            .output()
            .unwrap()
    };
    let o = cmd(&[
        "run",
        "-d",
        "--backend",
        "microvm",
        "--name",
        "vm1",
        "--scenario",
        "spin",
        "--param",
        "n=4000000000",
        "--timeout",
        "60",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(id.len(), 12, "{id}");
    let ps = stdout(&cmd(&["ps"]));
    assert!(
        ps.contains("vm1") && ps.contains("microvm") && ps.contains("running"),
        "{ps}"
    );
    // The guest's serial output reaches the instance's log.
    let mut logged = String::new();
    for _ in 0..100 {
        logged = stdout(&cmd(&["logs", "--raw", "vm1"]));
        if logged.contains("\"scenario\":\"spin\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(logged.contains("\"scenario\":\"spin\""), "{logged}");
    // The recorded pid is the monitor's own process.
    let state: Value = serde_json::from_slice(
        &std::fs::read(h.path().join("containers").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let pid = state["pid"].as_i64().unwrap() as i32;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("isolab-vmm"), "{}", exe.display());
    let o = cmd(&["stop", "-t", "5", "vm1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ps = stdout(&cmd(&["ps", "-a"]));
    assert!(ps.contains("vm1") && ps.contains("exited"), "{ps}");
    // SAFETY: kill(pid, 0) only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "stop left the monitor running");
    assert!(cmd(&["rm", "vm1"]).status.success());
    assert!(!stdout(&cmd(&["ps", "-a"])).contains("vm1"));
    // Refused before anything runs: one sentence, no record left.
    let o = cmd(&["run", "-d", "--backend", "microvm", "--scenario", "file-io"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs --guest linux"), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(h.path().join("containers"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// The monitor's peak RSS is its own, not its parent's: getrusage's
/// `ru_maxrss` would carry the high-water mark of the image before
/// `execve` (here a parent holding 256 MiB).
#[test]
fn the_monitors_peak_rss_is_not_its_parents() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let ballast = vec![1u8; 256 << 20];
    let o = vmm()
        .args(["--cmdline", "isolab.scenario=startup"])
        .output()
        .unwrap();
    std::hint::black_box(&ballast);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rss = r["process_peak_rss_bytes"].as_u64().unwrap();
    assert!(rss > 0 && rss < 64 << 20, "peak RSS {rss}");
}

/// `idle` holds both monitors at the same point: the guest says it holds
/// on the serial port, the harness reads the monitor's cgroup charge (the
/// one memory headline every backend has) and lets the guest go on.
#[test]
fn idle_vms_report_their_cgroup_charge_at_the_hold_point() {
    if !require("/dev/kvm", has_kvm()) {
        return;
    }
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !require("qemu-system-x86_64", qemu) {
        return;
    }
    let home = home();
    for backend in ["microvm", "qemu"] {
        let o = isolab()
            .env("ISOLAB_HOME", home.path())
            .args(["run", "--backend", backend, "--scenario", "idle", "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            v["result"]["data"]["released"], true,
            "{backend}: the harness let the guest go on"
        );
        let charge = v["memory_bytes"]["hold_cgroup_charged"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            charge > 64 << 10 && charge < 256 << 20,
            "{backend}: charge {charge}"
        );
    }
}
