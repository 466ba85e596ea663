//! A nested KVM test host: the Linux guest and a pure cgroup v2 host,
//! tested on machines whose own KVM cannot boot a stock kernel (PVM) and
//! whose cgroups are hybrid.
//!
//! QEMU's software emulation (`-accel tcg -cpu max`) offers AMD's SVM with
//! nested paging on any x86-64 host. This test boots the host's Debian
//! kernel that way with an initramfs it packs itself — busybox, the
//! `isolab` and `isolab-vmm` cargo built (debug info stripped), their
//! libraries, `mke2fs`, the kernel again (for the Linux guest), its
//! `kvm`/`kvm_amd`/`overlay`/virtio modules and the lean kernel when it is
//! built — loads `kvm_amd`, mounts only cgroup2, and runs a list of cases
//! there. Each case's exit status, stdout and stderr come back over a
//! second serial port (the first is the console), and every case is
//! checked here. Timings inside mean nothing (software emulation twice
//! over): this is a correctness harness.
//!
//! Nothing is downloaded: Debian's `qemu-system-x86`,
//! `linux-image-cloud-amd64` and `busybox-static` (installed by `.ci/run`).
mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isolab_scenarios::catalog;

/// The host's Debian kernel that can run `kvm_amd`: (vmlinuz, release).
fn distro_kernel() -> Result<(PathBuf, String), String> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir("/boot")
        .map_err(|e| format!("/boot: {e}"))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            Path::new("/lib/modules")
                .join(&release)
                .join("kernel/arch/x86/kvm/kvm-amd.ko")
                .is_file()
                .then(|| (e.path(), release))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        "no /boot/vmlinuz-* with an uncompressed kvm-amd.ko in /lib/modules: apt-get install linux-image-cloud-amd64".into()
    })
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            p.is_file()
                && std::process::Command::new("file")
                    .arg(p)
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically"))
        })
}

/// The lean kernel, when built (scripts/build-lean-kernel.sh).
fn lean_kernel() -> Option<PathBuf> {
    let cache = PathBuf::from(std::env::var("HOME").ok()?).join(".cache/isolab/lean-kernel");
    std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path().join("arch/x86/boot/bzImage"))
        .find(|p| p.is_file())
}

/// Copies `from` to `root/to`, making parents.
fn put(root: &Path, from: &Path, to: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
}

/// A binary without its debug info (debug builds are ~150 MB), and the
/// shared libraries it needs.
fn put_program(root: &Path, from: &Path, to: &str, libs: &mut Vec<PathBuf>) {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let stripped = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(from)
        .arg(&dest)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        put(root, from, to);
    }
    let ldd = std::process::Command::new("ldd")
        .arg(from)
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path.filter(|p| p.is_file() && !libs.contains(p)) {
            libs.push(p);
        }
    }
}

/// One case's outcome, as the nested host reported it.
#[derive(Debug, Default)]
struct Case {
    rc: Option<i32>,
    stdout: String,
    stderr: String,
}

/// The script the nested host runs as its init: make a tmpfs root (the
/// monitor's jail pivots away from its root, which the initramfs's rootfs
/// cannot be), load KVM, mount cgroup2 alone, then run `cases`.
fn init_script(release: &str, cases: &[(String, String)]) -> String {
    let mut s = format!(
        r#"#!/bin/busybox sh
if [ ! -e /.moved ]; then
  /bin/busybox mkdir -p /newroot
  /bin/busybox mount -t tmpfs -o size=3g,mode=755 tmpfs /newroot
  for d in /*; do [ "$d" = /newroot ] || /bin/busybox cp -a "$d" /newroot/; done
  /bin/busybox touch /newroot/.moved
  exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/sbin:/sbin:/usr/bin:/bin ISOLAB_HOME=/var/lib/isolab
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /tmp /var/lib/isolab; mount -t devpts devpts /dev/pts; mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
stty -F /dev/ttyS1 raw -echo
out() {{ cat >> /dev/ttyS1; }}
M=/lib/modules/{release}/kernel
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd fs/overlayfs/overlay \
    drivers/net/tun net/llc/llc net/802/stp net/bridge/bridge; do
  insmod $M/$m.ko 2>>/tmp/insmod.err
done
ip link set lo up
if [ ! -c /dev/kvm ]; then
  {{ echo "@@nokvm"; grep -c -w svm /proc/cpuinfo; cat /tmp/insmod.err; dmesg | tail -20; }} | out
  poweroff -f
fi
run_case() {{
  name=$1; shift
  echo "@@case $name" | out
  "$@" >/tmp/o 2>/tmp/e; rc=$?
  echo "@@rc $rc" | out
  cat /tmp/o | out
  echo "@@stderr" | out
  tail -c 6000 /tmp/e | out
  echo "@@end" | out
}}
"#
    );
    for (name, cmd) in cases {
        s.push_str(&format!("run_case {name} {cmd}\n"));
    }
    s.push_str("echo '@@done' | out\npoweroff -f\n");
    s
}

/// Parses the second serial port's text into cases.
fn parse_cases(text: &str) -> (BTreeMap<String, Case>, bool) {
    let text = text.replace('\r', "");
    let mut cases = BTreeMap::new();
    let mut current: Option<(String, Case, bool)> = None;
    let mut done = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("@@case ") {
            current = Some((name.to_owned(), Case::default(), false));
        } else if let Some(rc) = line.strip_prefix("@@rc ") {
            if let Some((_, c, _)) = current.as_mut() {
                c.rc = rc.trim().parse().ok();
            }
        } else if line == "@@stderr" {
            if let Some((_, _, in_err)) = current.as_mut() {
                *in_err = true;
            }
        } else if line == "@@end" {
            if let Some((name, c, _)) = current.take() {
                cases.insert(name, c);
            }
        } else if line == "@@done" {
            done = true;
        } else if let Some((_, c, in_err)) = current.as_mut() {
            let buf = if *in_err {
                &mut c.stderr
            } else {
                &mut c.stdout
            };
            buf.push_str(line);
            buf.push('\n');
        }
    }
    (cases, done)
}

/// The JSON object a case printed (`--json`), if any.
fn json_of(c: &Case) -> Option<serde_json::Value> {
    let start = c.stdout.find('{')?;
    serde_json::from_str(&c.stdout[start..]).ok()
}

#[test]
fn the_linux_guest_and_a_cgroup_v2_host_in_a_nested_kvm_host() {
    let qemu = PathBuf::from("/usr/bin/qemu-system-x86_64");
    if !require(
        "qemu-system-x86_64 (apt-get install qemu-system-x86)",
        qemu.is_file(),
    ) {
        return;
    }
    let kernel = distro_kernel();
    if !require(
        &format!(
            "a Debian kernel with kvm_amd ({})",
            kernel.as_ref().err().cloned().unwrap_or_default()
        ),
        kernel.is_ok(),
    ) {
        return;
    }
    let (vmlinuz, release) = kernel.unwrap();
    let Some(busybox) = busybox() else {
        require("a static busybox (apt-get install busybox-static)", false);
        return;
    };
    let started = Instant::now();
    let dir = home();
    let root = dir.path().join("root");
    let mut libs = Vec::new();
    let isolab = PathBuf::from(env!("CARGO_BIN_EXE_isolab"));
    let vmm = isolab.with_file_name("isolab-vmm");
    put_program(&root, &isolab, "/usr/local/bin/isolab", &mut libs);
    put_program(&root, &vmm, "/usr/local/bin/isolab-vmm", &mut libs);
    let mke2fs = Path::new("/sbin/mke2fs");
    if mke2fs.is_file() {
        put_program(&root, mke2fs, "/sbin/mke2fs", &mut libs);
        std::os::unix::fs::symlink("mke2fs", root.join("sbin/mkfs.ext4")).unwrap();
        if Path::new("/etc/mke2fs.conf").is_file() {
            put(&root, Path::new("/etc/mke2fs.conf"), "/etc/mke2fs.conf");
        }
    }
    // The OCI runtimes, to run on a pure cgroup v2 host (no hybrid
    // workaround there).
    let peers: Vec<&str> = ["crun", "runc"]
        .into_iter()
        .filter(|p| Path::new("/usr/bin").join(p).is_file())
        .collect();
    for p in &peers {
        let at = format!("/usr/bin/{p}");
        put_program(&root, Path::new(&at), &at, &mut libs);
    }
    for lib in &libs {
        put(&root, lib, &lib.display().to_string());
    }
    put(&root, &busybox, "/bin/busybox");
    put(&root, &vmlinuz, &format!("/boot/vmlinuz-{release}"));
    let config = PathBuf::from(format!("/boot/config-{release}"));
    if config.is_file() {
        put(&root, &config, &format!("/boot/config-{release}"));
    }
    let mods = Path::new("/lib/modules").join(&release);
    let dep = std::fs::read_to_string(mods.join("modules.dep")).unwrap();
    put(
        &root,
        &mods.join("modules.dep"),
        &format!("/lib/modules/{release}/modules.dep"),
    );
    for line in dep.lines() {
        let m = line.split(':').next().unwrap();
        let wanted = m.starts_with("kernel/drivers/virtio/")
            || m.starts_with("kernel/drivers/block/virtio_blk")
            || m.starts_with("kernel/arch/x86/kvm/kvm")
            || m == "kernel/virt/lib/irqbypass.ko"
            || m == "kernel/fs/overlayfs/overlay.ko"
            // The bridge and taps of --network bridge, and the guest's
            // virtio-net driver, which isolab packs into its initramfs.
            || m == "kernel/drivers/net/tun.ko"
            || m == "kernel/net/llc/llc.ko"
            || m == "kernel/net/802/stp.ko"
            || m == "kernel/net/bridge/bridge.ko"
            || m == "kernel/drivers/net/virtio_net.ko"
            || m == "kernel/drivers/net/net_failover.ko"
            || m == "kernel/net/core/failover.ko";
        if wanted {
            put(&root, &mods.join(m), &format!("/lib/modules/{release}/{m}"));
        }
    }
    put(
        &root,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/linux-boot-times.sh"),
        "/usr/local/share/isolab/linux-boot-times.sh",
    );
    let lean = lean_kernel();
    if let Some(l) = &lean {
        put(&root, l, "/boot/lean/bzImage");
    }
    for d in ["proc", "sys", "dev", "tmp", "etc", "var/lib", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();

    // The cases: every agent scenario in the Linux guest (the distro
    // kernel, 64-bit entry, initramfs), the lean kernel through both entries
    // and with the image as an ext4 disk, the probes, and the container
    // runtime on a pure cgroup v2 host.
    let mut cases: Vec<(String, String)> = vec![("doctor".into(), "isolab doctor".into())];
    let linux_scenarios: Vec<&str> = catalog::CATALOG
        .iter()
        .filter(|s| {
            s.guests.agent && s.benchable && s.name != catalog::name::PROBES && !s.needs_network()
        })
        .map(|s| s.name)
        .collect();
    for s in &linux_scenarios {
        cases.push((
            format!("linux-{s}"),
            format!(
                "isolab run --backend microvm --guest linux --scenario {s} --timeout 300 --json"
            ),
        ));
    }
    if lean.is_some() {
        let k = "--kernel /boot/lean/bzImage --timeout 300 --json";
        cases.push((
            "lean-64bit".into(),
            format!("isolab run --backend microvm --guest linux --scenario startup {k}"),
        ));
        cases.push((
            "lean-pvh".into(),
            format!("isolab run --backend microvm --guest linux --scenario startup --pvh {k}"),
        ));
        cases.push((
            "lean-ext4-disk".into(),
            format!("isolab run --backend microvm --guest linux --scenario disk-read {k}"),
        ));
    }
    // The distro kernel found through ACPI the disk `linux-disk-read`
    // read; here it starts through its PVH entry.
    cases.push((
        "distro-pvh".into(),
        "isolab run --backend microvm --guest linux --scenario startup --pvh --timeout 300 --json"
            .into(),
    ));
    // The Linux guest on the lab bridge: virtio-net, the agent's
    // interface from the command line, UDP round trips to the host.
    cases.push((
        "linux-net-rtt".into(),
        "isolab run --backend microvm --guest linux --network bridge --scenario net-rtt --param pings=200 --timeout 300 --json".into(),
    ));
    // An image's own program in the Linux VM (the image as its disk).
    cases.push((
        "image-in-vm".into(),
        "isolab run --backend microvm --guest linux --timeout 300 --json -- /bin/sh -c 'echo in-the-vm; exit 3'".into(),
    ));
    cases.push((
        "boot-times".into(),
        "env ISOLAB=/usr/local/bin/isolab ISOLAB_NESTED_TCG=1 sh /usr/local/share/isolab/linux-boot-times.sh --runs 2".into(),
    ));
    cases.push(("probes".into(), "isolab probes --json".into()));
    // cgroup v2: limits, accounting, OOM, pids, detach/stop/prune.
    cases.push((
        "v2-startup".into(),
        "isolab run --scenario startup --memory 64M --pids 64 --json".into(),
    ));
    for p in &peers {
        cases.push((
            format!("v2-{p}"),
            format!("isolab run --backend {p} --scenario startup --memory 64M --json"),
        ));
    }
    cases.push((
        "v2-idle-charge".into(),
        "isolab run --scenario idle --param hold_ms=200 --json".into(),
    ));
    cases.push((
        "v2-oom".into(),
        "isolab run --memory 8M --json -- /bin/sh -c 'x=a; while true; do x=$x$x; done'".into(),
    ));
    cases.push((
        "v2-pids".into(),
        "isolab run --pids 16 -- /bin/sh -c 'for i in $(seq 40); do sleep 5 & done; echo spawned-all'".into(),
    ));
    cases.push((
        "v2-storm".into(),
        "sh -c 'isolab run -d --name storm --pids 2000 -- /bin/sh -c \"while :; do /bin/sleep 0.3 & done\" && sleep 1 && isolab stop -t 0 storm && isolab rm storm && ls -d /sys/fs/cgroup/isolab/*/ 2>/dev/null | wc -l'".into(),
    ));
    cases.push((
        "v2-detach".into(),
        "sh -c 'id=$(isolab run -d --name sleeper --scenario idle --param hold_ms=60000) && isolab ps && isolab stop -t 1 sleeper && isolab rm sleeper && isolab prune && ls -d /sys/fs/cgroup/isolab/*/ 2>/dev/null | wc -l'".into(),
    ));
    std::fs::write(root.join("init"), init_script(&release, &cases)).unwrap();
    std::fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let tree = isolab_runtime::initramfs::tree_of_dir(&root).unwrap();
    let initrd = dir.path().join("nested.cpio");
    std::fs::write(&initrd, isolab_runtime::initramfs::write_cpio(&tree)).unwrap();
    let packed = started.elapsed();

    let results = dir.path().join("results.txt");
    let console = dir.path().join("console.txt");
    let mut child = std::process::Command::new(&qemu)
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "4096"])
        .args(["-nographic", "-no-reboot", "-nodefaults"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1500);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall = started.elapsed();
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let tail = |t: &str| {
        t.chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    assert!(
        !text.contains("@@nokvm"),
        "kvm_amd did not load in the nested host (svm count, insmod errors, dmesg): {text}"
    );
    let (got, done) = parse_cases(&text);
    assert!(
        status.is_some() && done,
        "the nested host did not finish within its bound ({wall:?}; QEMU {status:?}); cases seen: {:?}\nconsole tail:\n{}",
        got.keys().collect::<Vec<_>>(),
        tail(&console_text)
    );
    eprintln!(
        "nested host: packed in {packed:?}, {} cases in {wall:?} wall (software emulation: these timings mean nothing)",
        got.len()
    );

    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    let case = |n: &str| got.get(n);
    for (name, _) in &cases {
        check(got.contains_key(name), format!("{name}: no report"));
    }
    if let Some(c) = case("doctor") {
        check(
            c.stdout.contains("mode v2") && c.stdout.contains("hardware-svm"),
            format!(
                "doctor sees a pure v2 host with hardware-style KVM:\n{}",
                c.stdout
            ),
        );
    }
    // Every Linux-guest run ends with exit 0, the agent's ready mark and
    // the scenario's own result.
    let linux_cases = linux_scenarios
        .iter()
        .map(|s| (format!("linux-{s}"), *s))
        .chain(
            [
                ("lean-64bit".to_owned(), "startup"),
                ("lean-pvh".to_owned(), "startup"),
                ("lean-ext4-disk".to_owned(), "disk-read"),
                ("distro-pvh".to_owned(), "startup"),
            ]
            .into_iter()
            .filter(|(n, _)| lean.is_some() || !n.starts_with("lean")),
        );
    for (name, scenario) in linux_cases {
        let Some(c) = case(&name) else { continue };
        let v = json_of(c);
        let ok = c.rc == Some(0)
            && v.as_ref().is_some_and(|v| {
                v["exit_code"] == 0
                    && v["scenario"] == scenario
                    && v["marks"].as_array().is_some_and(|m| {
                        m.iter()
                            .any(|m| m["name"] == "agent_ready" || m["name"] == "ready")
                    })
                    && v["result"]["ok"] == true
            });
        check(
            ok,
            format!(
                "{name}: rc {:?}\n{}\nstderr: {}",
                c.rc,
                c.stdout.chars().take(3000).collect::<String>(),
                c.stderr
            ),
        );
    }
    if let Some(c) = case("linux-net-rtt") {
        let v = json_of(c);
        let metric = |v: &serde_json::Value, name: &str| {
            v["result"]["metrics"]
                .as_array()
                .and_then(|a| a.iter().find(|m| m["name"] == name))
                .and_then(|m| m["value"].as_f64())
                .unwrap_or(0.0)
        };
        check(
            c.rc == Some(0)
                && v.as_ref().is_some_and(|v| {
                    v["result"]["ok"] == true
                        && v["result"]["data"]["net_interface"] == "eth0"
                        && metric(v, "net.udp_rtt_p50") > 0.0
                        && metric(v, "net.udp_rtt_loopback_p50") > 0.0
                }),
            format!(
                "linux-net-rtt: the Linux guest configures eth0 and reaches the host's echo server: rc {:?}\n{}\nstderr: {}",
                c.rc,
                c.stdout.chars().take(3000).collect::<String>(),
                c.stderr
            ),
        );
    }
    if let Some(c) = case("image-in-vm") {
        check(
            json_of(c).is_some_and(|v| v["scenario"] == "exec" && v["exit_code"] == 3),
            format!(
                "image-in-vm: the image's program ran in the VM and its exit code came back: {c:?}"
            ),
        );
    }
    if let Some(c) = case("boot-times") {
        check(
            c.rc == Some(0)
                && c.stdout.contains("nested-TCG")
                && c.stdout.contains("launch -> agent ready       : median"),
            format!("boot-times: scripts/linux-boot-times.sh runs and labels its figures: {c:?}"),
        );
    }
    if let Some(c) = case("probes") {
        let v: Option<serde_json::Value> = json_of(c);
        let linux_col = v.as_ref().map(|v| v["microvm-linux"].clone());
        check(
            linux_col.as_ref().is_some_and(|col| {
                col.as_object().is_some_and(|p| p.len() >= 30)
                    && col["kernel_shared"]["verdict"] == "isolated"
            }),
            format!(
                "probes: a Linux-guest microVM column with every probe:\n{}\n{}",
                c.stdout.chars().take(4000).collect::<String>(),
                c.stderr
            ),
        );
    }
    // The container runtime on cgroup v2.
    for name in
        std::iter::once("v2-startup".to_owned()).chain(peers.iter().map(|p| format!("v2-{p}")))
    {
        if let Some(c) = case(&name) {
            check(
                c.rc == Some(0) && json_of(c).is_some_and(|v| v["exit_code"] == 0),
                format!("{name}: {c:?}"),
            );
        }
    }
    if let Some(c) = case("v2-idle-charge") {
        let v = json_of(c);
        check(
            v.as_ref().is_some_and(|v| {
                v["memory_bytes"]["hold_cgroup_charged"]
                    .as_u64()
                    .is_some_and(|b| b > 0)
                    && v["memory_bytes"]["cgroup_peak"]
                        .as_u64()
                        .is_some_and(|b| b > 0)
            }),
            format!("v2-idle-charge: a charge at the hold point and memory.peak: {c:?}"),
        );
    }
    if let Some(c) = case("v2-oom") {
        check(
            json_of(c).is_some_and(|v| v["oom_killed"] == true),
            format!("v2-oom: an OOM kill, reported: {c:?}"),
        );
    }
    if let Some(c) = case("v2-pids") {
        check(
            c.rc != Some(0) && !c.stdout.contains("spawned-all") && c.stderr.contains("can't fork"),
            format!("v2-pids: the 17th process is refused under --pids 16: {c:?}"),
        );
    }
    if let Some(c) = case("v2-storm") {
        check(
            c.rc == Some(0) && c.stdout.trim_end().ends_with('0'),
            format!("v2-storm: a fork storm is stopped (cgroup.kill) and leaves no cgroup: {c:?}"),
        );
    }
    if let Some(c) = case("v2-detach") {
        check(
            c.rc == Some(0) && c.stdout.contains("sleeper") && c.stdout.trim_end().ends_with('0'),
            format!("v2-detach: run -d, ps, stop, rm, prune leave no cgroup: {c:?}"),
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} nested cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
