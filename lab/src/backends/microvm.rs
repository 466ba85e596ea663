//! The lab's own KVM monitor as a backend: one `isolab-vmm` process per
//! VM (launch = spawn, exit = reaped, as for QEMU), booting the bare lab
//! guest or a Linux kernel with the agent as `/init`.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use isolab_abi::catalog::{self, name as sc};
use isolab_abi::ports;
use isolab_abi::stage::Stage;
use isolab_microvm::vcpu::StopReason;
use isolab_microvm::vmm;
use isolab_reports::{InstanceReport, Mark};
use isolab_scenarios::protocol;

use super::monitor_cgroup::{unrecorded_id, MonitorCgroup};
use crate::backend::{Attach, Backend, Guest, InstanceSpec, Kind, Outcome, Unavailable};
use crate::clock::monotonic_ns;
use crate::home::Home;
use crate::images::IMAGE_DISK;

/// isolab's own KVM microVM monitor.
pub struct MicroVm;

impl Backend for MicroVm {
    fn name(&self) -> &'static str {
        "microvm"
    }
    fn about(&self) -> &'static str {
        "isolab's own KVM microVM monitor (isolab-vmm)"
    }
    fn kind(&self) -> Kind {
        Kind::Vm
    }
    fn supports_network(&self) -> bool {
        true
    }
    fn available(&self) -> Result<(), Unavailable> {
        kvm_usable()?;
        if vmm_binary().is_none() {
            return Err(Unavailable {
                reason: "isolab-vmm is missing next to isolab".into(),
                install: Some("cargo build --release".into()),
            });
        }
        Ok(())
    }
    fn check(&self, spec: &InstanceSpec, _attach: Attach) -> Result<()> {
        crate::backend::refuse_container_options(spec)?;
        if let Some(t) = spec.vm.timeout {
            if !(t.as_secs_f64() > 0.0 && t.as_secs_f64() <= 3600.0) {
                bail!(
                    "--timeout {} is out of range: use 0 < seconds <= 3600",
                    t.as_secs_f64()
                );
            }
        }
        if spec.vm.guest() == Guest::Bare {
            check_bare_scenario(spec)?;
        }
        if spec.vm.kernel.is_some() && spec.vm.guest() == Guest::Bare {
            bail!("--kernel picks a Linux guest's kernel: add --guest linux, or drop --kernel for the bare guest");
        }
        Ok(())
    }
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
        boot(home, spec, false, false)
    }
    /// A monitor whose owner is gone is ended through its cgroup; its
    /// lease and NAT table are released (its tap went with it).
    fn kill_stale(&self, home: &Home, id: &str) -> bool {
        let killed = super::container::kill_instance_cgroup(home, id);
        crate::network::release(home, id);
        killed
    }
    fn run_attached(
        &self,
        home: &Home,
        spec: &InstanceSpec,
        tty: bool,
        interactive: bool,
    ) -> Result<i32> {
        let mut spec = spec.clone();
        let keys = tty && interactive;
        if tty && spec.vm.timeout.is_none() {
            spec.vm.timeout = Some(std::time::Duration::from_secs(3600));
        }
        let o = boot(home, &spec, true, keys)?;
        if !console_tee(&spec, keys) {
            // As QEMU's attached run does: the result line once it is in.
            if let Some(line) = o
                .output
                .lines()
                .rev()
                .find(|l| l.starts_with(protocol::RESULT_PREFIX))
            {
                println!("{line}");
            }
        }
        Ok(o.report.exit_code)
    }
}

/// Whether this run holds at the `idle` scenario's hold line while the
/// harness reads the monitor's cgroup (captured runs of the no-OS guest).
fn holds(spec: &InstanceSpec, echo: bool) -> bool {
    spec.scenario == sc::IDLE && spec.vm.guest() == Guest::Bare && !echo
}

/// Whether the guest copies its result line to the console as it
/// writes it (`isolab.console=1`): for a detached instance's log, and for
/// someone typing into the guest. A plain foreground run gets the line
/// printed at the end instead, so `isolab run --backend microvm` and
/// `--backend qemu` pay the same guest work when timed as whole commands.
fn console_tee(spec: &InstanceSpec, interactive: bool) -> bool {
    spec.record.is_some() || interactive
}

/// Whether `/dev/kvm` can be opened here.
pub fn kvm_usable() -> Result<(), Unavailable> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(Unavailable {
            reason: format!("no usable /dev/kvm ({e}; see `isolab doctor`)"),
            install: None,
        }),
    }
}

/// Refuses, in one sentence, a scenario the bare guest does not run.
pub fn check_bare_scenario(spec: &InstanceSpec) -> Result<()> {
    let entry = spec.scenario_entry()?;
    if !entry.guests.bare {
        let bare: Vec<&str> = catalog::CATALOG
            .iter()
            .filter(|s| s.guests.bare)
            .map(|s| s.name)
            .collect();
        bail!(
            "the bare guest runs {}: {:?} needs --guest linux",
            bare.join(", "),
            spec.scenario
        );
    }
    Ok(())
}

/// `--disk` values → `isolab-vmm` arguments. The image disk is shared
/// and cached, so it is attached read-only; a user's file read-write.
fn disk_args(home: &Home, opts: &InstanceSpec) -> Result<Vec<String>> {
    let mut specs = opts.vm.disks.clone();
    if specs.is_empty() && opts.scenario == sc::DISK_READ {
        specs.push(IMAGE_DISK.into());
    }
    let mut args = Vec::new();
    for spec in specs {
        if spec == IMAGE_DISK {
            args.push("--disk-ro".into());
            args.push(crate::images::image_disk(home)?.display().to_string());
        } else {
            let p = std::path::Path::new(&spec);
            if !p.is_file() {
                bail!("--disk {spec}: no such file: pass a disk image file or `image` for the image's layers as ext4");
            }
            args.push("--disk".into());
            args.push(spec);
        }
    }
    Ok(args)
}

/// The report of a Linux guest: the phases it reached, even when it did
/// not reach the agent (as on PVM hosts).
fn linux_report(
    opts: &InstanceSpec,
    marks: Vec<Mark>,
    mut notes: Vec<String>,
    memory: BTreeMap<String, u64>,
    r: &vmm::VmReport,
    pid: u32,
) -> Result<Outcome> {
    // The agent's line is in its result page (the serial text only when
    // it could not write there, or for a human watching).
    let result = r
        .result
        .as_deref()
        .and_then(|t| protocol::parse_output("microvm", t).ok())
        .or_else(|| protocol::parse_output("microvm", &r.serial).ok());
    let reached: Vec<&str> = [Stage::KernelStart, Stage::KernelInit, Stage::AgentReady]
        .into_iter()
        .map(Stage::name)
        .filter(|n| marks.iter().any(|m| m.name == *n))
        .collect();
    let mut marks = marks;
    // ready = the agent's own mark when it got there.
    if let Some(a) = Mark::find(&marks, Stage::AgentReady.name()) {
        marks.push(Mark::new(Stage::Ready.name(), a));
    }
    let code = match (&r.stop, r.timed_out, &result) {
        (StopReason::Reset, false, Some(res)) if res.ok => i32::from(r.exit_code.unwrap_or(0)),
        _ => {
            notes.push(format!(
                "the guest stopped before the agent's result ({}; phases reached: {}); last serial lines:\n{}",
                if r.timed_out { format!("timed out after {:?}", opts.vm.timeout()) } else { r.stop.describe() },
                if reached.is_empty() { "none".to_owned() } else { reached.join(", ") },
                protocol::tail(&r.serial, 8)
            ));
            1
        }
    };
    if !crate::host::kvm_flavour_here().boots_stock_linux() {
        notes.push("host KVM is PVM: a stock kernel cannot boot to init here; the figures show how far it got".into());
    }
    let image = crate::linux_guest::runs_an_image(opts);
    let scenario = if image {
        "exec"
    } else {
        opts.scenario.as_str()
    };
    let mut report = InstanceReport::new("microvm", "linux", scenario, format!("vm-{pid}"));
    report.exit_code = code;
    if let (true, Some(res)) = (image, &result) {
        // The image's program: its own exit code, or why it did not run.
        if let Some(e) = &res.error {
            bail!("the image did not run in the VM: {e}");
        }
        report.exit_code = res.data["exit_code"].as_i64().unwrap_or(255) as i32;
    }
    report.marks = marks;
    report.memory_bytes = memory;
    report.result = result.map(|x| serde_json::to_value(x).unwrap_or_default());
    report.notes = notes;
    report.console_head = Some(r.serial.chars().take(8192).collect());
    report.derive();
    let output = match &r.result {
        Some(text) if !r.serial.contains(text.as_str()) => format!("{}\n{text}\n", r.serial),
        _ => r.serial.clone(),
    };
    Ok(Outcome { report, output })
}

/// `key=value` scenario parameters → `isolab.key=value` command-line words.
pub fn guest_cmdline(scenario: &str, params: &[String]) -> Result<String> {
    let mut words = vec![format!("isolab.scenario={scenario}")];
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            bail!("invalid --param {p:?}: use KEY=VALUE");
        };
        if k.is_empty() || k.contains(char::is_whitespace) || v.contains(char::is_whitespace) {
            bail!("invalid --param {p:?}: no spaces in keys or values");
        }
        words.push(format!("isolab.{k}={v}"));
    }
    Ok(words.join(" "))
}

/// Metrics the host derives from the guest's marks (the bare guest has no
/// clock of its own it could trust): rates from `work_start`→`work_end`.
pub fn derive_metrics(
    scenario: &str,
    marks: &[Mark],
    data: &serde_json::Value,
) -> Vec<protocol::Metric> {
    let (Some(a), Some(b)) = (
        Mark::find(marks, "work_start"),
        Mark::find(marks, "work_end"),
    ) else {
        return vec![];
    };
    let dt = b.saturating_sub(a).max(1) as f64;
    let m = |name: &str, unit: &str, value: f64| protocol::Metric {
        name: name.into(),
        unit: unit.into(),
        value,
    };
    match scenario {
        sc::CPU => data["blocks"]
            .as_f64()
            .map(|blocks| vec![m("cpu.sha256", "bytes_per_s", blocks * 64.0 / (dt / 1e9))])
            .unwrap_or_default(),
        sc::MEMORY => match (data["mib"].as_f64(), data["pages"].as_f64()) {
            (Some(mib), Some(pages)) => vec![
                m(
                    "memory.touch_rate",
                    "bytes_per_s",
                    mib * 1048576.0 / (dt / 1e9),
                ),
                m("memory.fault_cost", "ns_per_page", dt / pages.max(1.0)),
            ],
            _ => vec![],
        },
        sc::DISK_READ => data["bytes"]
            .as_f64()
            .map(|b| vec![m("disk.read_rate", "bytes_per_s", b / (dt / 1e9))])
            .unwrap_or_default(),
        sc::EXIT_COST => data["exits"]
            .as_f64()
            .map(|n| vec![m("vm.exit_cost", "ns_per_exit", dt / n.max(1.0))])
            .unwrap_or_default(),
        _ => tsc_metrics(scenario, data),
    }
}

/// Metrics the bare guest timed itself with the TSC (per round trip: a
/// mark is a VM exit, too coarse and too costly), in time at the host's
/// TSC rate. The same for both monitors, which need no marks for it.
pub fn tsc_metrics(scenario: &str, data: &serde_json::Value) -> Vec<protocol::Metric> {
    // The 20 ms TSC calibration only for the scenarios that need it.
    if scenario != sc::NET_RTT && scenario != sc::NET_STREAM {
        return vec![];
    }
    let Some(ns) = crate::clock::ns_per_tsc_cycle() else {
        return vec![];
    };
    if scenario == sc::NET_STREAM {
        // Bytes over the cycles from the first measured request to the
        // last datagram, at the host's TSC rate.
        let bytes = data["stream_bytes"].as_f64().filter(|b| *b > 0.0);
        let cycles = data["stream_cycles"].as_f64().filter(|c| *c > 0.0);
        return match (bytes, cycles) {
            (Some(b), Some(c)) => vec![protocol::Metric {
                name: "net.udp_stream".into(),
                unit: "bytes_per_s".into(),
                value: b / (c * ns) * 1e9,
            }],
            _ => vec![],
        };
    }
    let mut out = vec![];
    for (key, name) in [
        ("rtt_p50_cycles", "net.udp_rtt_p50"),
        ("rtt_p99_cycles", "net.udp_rtt_p99"),
    ] {
        if let Some(c) = data[key].as_f64().filter(|c| *c > 0.0) {
            out.push(protocol::Metric {
                name: name.into(),
                unit: "ns".into(),
                value: c * ns,
            });
        }
    }
    out
}

/// The environment variable that names the monitor binary explicitly.
pub const VMM_ENV: &str = "ISOLAB_VMM";

/// The monitor binary: `$ISOLAB_VMM`, or `isolab-vmm` next to this program
/// (cargo builds both into one directory; a test binary in `deps/` finds
/// it one level up).
pub fn vmm_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(VMM_ENV) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let exe = crate::selfprotect::original_exe()?;
    let dir = exe.parent()?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("isolab-vmm"))
        .find(|p| p.is_file());
    found
}

/// Boots one VM with our monitor (`isolab-vmm`, one process per VM, as
/// QEMU is for the peer) and reports it.
/// The monitor's command line for this instance (a Linux guest's kernel
/// and initramfs are prepared here, before the launch mark).
fn vmm_args(
    home: &Home,
    opts: &InstanceSpec,
    echo: bool,
    interactive: bool,
) -> Result<Vec<String>> {
    let mut args: Vec<String> = Vec::new();
    let guest = opts.vm.guest();
    if guest == Guest::Bare {
        check_bare_scenario(opts)?;
    }
    let mut cmdline = guest_cmdline(&opts.scenario, &opts.params)?;
    let mut image_disk = None;
    if guest == Guest::Linux {
        let linux = crate::linux_guest::prepare(
            home,
            &opts.vm,
            crate::linux_guest::runs_an_image(opts),
            opts.net.mode == crate::network::Mode::Bridge,
        )?;
        // An image's own program: the image as the first disk, read-only,
        // and what to start appended to the initramfs.
        let initrd = if crate::linux_guest::runs_an_image(opts) {
            let i = crate::linux_guest::image_in_vm(home, opts, &linux.initrd)?;
            image_disk = Some(i.disk);
            cmdline.push_str(" quiet loglevel=1");
            i.initrd
        } else {
            linux.initrd.clone()
        };
        args.extend([
            "--kernel".into(),
            linux.kernel.display().to_string(),
            "--initrd".into(),
            initrd.display().to_string(),
            "--pit".into(),
        ]);
        let base = if image_disk.is_some() {
            // The console is the program's: no early boot chatter on it.
            crate::linux_guest::LINUX_CMDLINE.replace("earlyprintk=serial,ttyS0,115200 ", "")
        } else {
            crate::linux_guest::LINUX_CMDLINE.to_owned()
        };
        cmdline = format!("{base} {cmdline}");
        if let Some(w) = linux.warning {
            eprintln!("isolab: {w}");
        }
    }
    if echo && console_tee(opts, interactive) {
        cmdline.push_str(" isolab.console=1");
    }
    if holds(opts, echo) {
        // The guest's serial output reaches the harness live (on the
        // monitor's stderr) and the harness's go-on byte reaches it.
        cmdline.push_str(" isolab.hold_wait=1");
        args.extend(["--echo".into(), "--interactive".into()]);
    }
    args.extend(["--cmdline".into(), cmdline]);
    if let Some(d) = image_disk {
        args.extend(["--disk-ro".into(), d.display().to_string()]);
    }
    args.extend(disk_args(home, opts)?);
    args.extend([
        "--mem".into(),
        opts.vm.mem_mib().to_string(),
        "--vcpus".into(),
        opts.vm.vcpus.to_string(),
    ]);
    args.extend([
        "--timeout".into(),
        opts.vm.timeout().as_secs_f64().to_string(),
    ]);
    if echo {
        args.push("--echo".into());
    }
    if interactive {
        args.push("--interactive".into());
    }
    if opts.vm.pvh {
        args.push("--pvh".into());
    }
    Ok(args)
}

fn boot(home: &Home, opts: &InstanceSpec, echo: bool, interactive: bool) -> Result<Outcome> {
    let guest = opts.vm.guest();
    // --network bridge: a lease and a tap on the bridge, made before the
    // launch (as for QEMU, crun and runc); the guest learns its address
    // from its command line, the monitor gets the tap as its fd 3.
    let vmnet = crate::network::VmNetwork::new(
        home,
        opts,
        &opts.record.clone().unwrap_or_else(crate::instances::new_id),
    )?;
    if let (Some(id), Some(a)) = (&opts.record, &vmnet.attached) {
        // `ps` shows a detached VM's address and ports, as a container's.
        let mut record = crate::instances::Record::open(home, id)?;
        record.state.ip = Some(a.attach.ip);
        record.state.ports = opts.net.publish.clone();
        record.save()?;
    }
    let mut spec = opts.clone();
    spec.params.extend(vmnet.params.iter().cloned());
    let opts = &spec;
    let mut args = vmm_args(home, opts, echo, interactive)?;
    if let Some(mac) = vmnet.mac() {
        args.extend(["--net-fd".into(), "3".into(), "--mac".into(), mac]);
    }
    let vmm = vmm_binary().ok_or_else(|| {
        anyhow!("isolab-vmm is missing next to isolab: build the workspace (cargo build --release)")
    })?;
    // The monitor's own cgroup, named after its record when it has one
    // (so `stop`/`rm` act on it), made before the launch as QEMU's is.
    let id = opts.record.clone().unwrap_or_else(|| unrecorded_id("vm"));
    let cgroup = MonitorCgroup::create(home, &id, opts.vm.mem_mib())?;
    // launch = the spawn of the monitor process, after the harness's own
    // preparation (e.g. a Linux guest's initramfs), as for QEMU.
    let launch = monotonic_ns();
    let mut cmd = std::process::Command::new(&vmm);
    crate::host::in_host_mount_namespace(&mut cmd);
    crate::host::die_with_parent(&mut cmd);
    cgroup.join_on_spawn(&mut cmd);
    if let Some(tap) = &vmnet.tap {
        crate::host::pass_fds(&mut cmd, vec![(std::os::fd::AsRawFd::as_raw_fd(tap), 3)]);
    }
    let hold = holds(opts, echo);
    let mut child = cmd
        .args(&args)
        .stdin(if interactive {
            std::process::Stdio::inherit()
        } else if hold {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(if echo {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::piped()
        })
        .spawn()
        .map_err(|e| anyhow!("starting {}: {e}", vmm.display()))?;
    if let Some(hook) = &opts.on_spawn {
        hook(child.id() as i32);
    }
    // stderr on its own thread (neither pipe can fill up); at the guest's
    // hold line the monitor's cgroup is read, then the guest let go.
    let (err, mut input) = (child.stderr.take(), child.stdin.take());
    let (stdout, (stderr, hold_charge)) = std::thread::scope(|s| {
        let cgroup = &cgroup;
        let reader = s.spawn(move || {
            let mut charge = None;
            let text = err
                .map(|e| {
                    crate::capture::read_lines(e, |line| {
                        if hold && charge.is_none() && line == protocol::HOLD_LINE {
                            charge = cgroup.charged_bytes();
                            if let Some(i) = input.as_mut() {
                                let _ = std::io::Write::write_all(i, b"\n");
                            }
                        }
                    })
                })
                .unwrap_or_default();
            (text, charge)
        });
        let out = child
            .stdout
            .take()
            .map(crate::capture::read_all)
            .unwrap_or_default();
        (out, reader.join().unwrap_or_default())
    });
    let status = child.wait()?;
    let reaped = monotonic_ns();
    let published = vmnet.describe();
    drop(vmnet);
    let cgroup_peak = cgroup.finish(opts.vm.mem_mib())?;
    if !status.success() {
        let msg = stderr.trim().trim_start_matches("isolab-vmm: ");
        bail!(
            "{}",
            if msg.is_empty() {
                format!("isolab-vmm failed ({status})")
            } else {
                msg.to_owned()
            }
        );
    }
    let r: vmm::VmReport = serde_json::from_str(stdout.trim())
        .map_err(|e| anyhow!("isolab-vmm printed no report ({e})"))?;
    let mut marks = vec![Mark::new(Stage::Launch.name(), launch)];
    marks.extend(r.marks.iter().map(|m| Mark::new(&m.name, m.ns)));
    marks.push(Mark::new(Stage::Reaped.name(), reaped));
    let mut notes = vec![
        "launch = spawn of isolab-vmm; ready = the guest's write to the boot-marker port, stamped by the monitor on the host clock; reaped = monitor process reaped".to_owned(),
    ];
    if spec.net.mode == crate::network::Mode::Bridge {
        notes.push("on the lab bridge through a tap (virtio-net in the monitor) made before launch, outside the timed window, as for QEMU, crun and runc".into());
        notes.extend(published);
    }
    if let Some(n) = &r.net {
        notes.push(format!(
            "virtio-net: {} frames received, {} sent, {} dropped",
            n.rx_frames, n.tx_frames, n.dropped
        ));
    }
    if r.serial_dropped > 0 {
        notes.push(format!(
            "the guest flooded the serial port: {} bytes dropped",
            r.serial_dropped
        ));
    }
    let mut memory = BTreeMap::new();
    memory.insert("guest_touched".to_owned(), r.guest_touched_bytes);
    memory.insert("monitor_peak_rss".to_owned(), r.process_peak_rss_bytes);
    if let Some(c) = hold_charge {
        memory.insert("hold_cgroup_charged".to_owned(), c);
    }
    if let Some(p) = cgroup_peak {
        memory.insert("instance_cgroup_peak".to_owned(), p);
    }
    memory.insert(
        "monitor_rss_beyond_guest".to_owned(),
        r.process_peak_rss_bytes
            .saturating_sub(r.guest_touched_bytes),
    );
    if guest == Guest::Linux {
        return linux_report(opts, marks, notes, memory, &r, child.id());
    }
    let code = match (&r.stop, r.timed_out, r.exit_code) {
        (_, true, _) => bail!(
            "the guest did not finish within {:?} (raise --timeout); last serial output:\n{}",
            opts.vm.timeout(),
            protocol::tail(&r.serial, 10)
        ),
        (StopReason::Reset, _, Some(c)) => i32::from(c),
        (StopReason::Reset, _, None) => 0,
        (other, _, _) => bail!(
            "microvm: {}; last serial output:\n{}",
            other.describe(),
            protocol::tail(&r.serial, 10)
        ),
    };
    // The result line is in the guest's result page; the serial text
    // only when the guest failed before writing it.
    let output = match &r.result {
        Some(text) if !r.serial.contains(text.as_str()) => {
            let console = r.serial.strip_prefix(char::from(ports::READY_BYTE));
            format!("{}{text}", console.unwrap_or(&r.serial))
        }
        _ => r.serial.clone(),
    };
    let mut res = protocol::parse_output("microvm", &output).map_err(|e| anyhow!("{e}"))?;
    res.metrics
        .extend(derive_metrics(&opts.scenario, &marks, &res.data));
    let mut report = InstanceReport::new(
        "microvm",
        guest.as_str(),
        &opts.scenario,
        format!("vm-{}", child.id()),
    );
    report.exit_code = code;
    report.marks = marks;
    report.memory_bytes = memory;
    report.result = Some(serde_json::to_value(&res)?);
    report.notes = notes;
    report.derive();
    Ok(Outcome { report, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_from_params() {
        assert_eq!(
            guest_cmdline("cpu", &["blocks=10".into()]).unwrap(),
            "isolab.scenario=cpu isolab.blocks=10"
        );
        assert!(guest_cmdline("cpu", &["blocks".into()]).is_err());
        assert!(guest_cmdline("cpu", &["a=b c".into()]).is_err());
    }

    #[test]
    fn metrics_from_work_marks() {
        let marks = vec![
            Mark {
                name: "work_start".into(),
                ns: 1_000,
            },
            Mark {
                name: "work_end".into(),
                ns: 1_001_000,
            },
        ];
        let m = derive_metrics("cpu", &marks, &serde_json::json!({"blocks": 1000}));
        assert_eq!(m[0].name, "cpu.sha256");
        assert!((m[0].value - 64_000.0 / 1e-3).abs() < 1.0);
        let m = derive_metrics("exit-cost", &marks, &serde_json::json!({"exits": 1000}));
        assert_eq!(m[0].value, 1000.0);
        let m = derive_metrics(
            "memory",
            &marks,
            &serde_json::json!({"mib": 1, "pages": 256}),
        );
        assert_eq!(m[1].unit, "ns_per_page");
        assert!((m[1].value - 1_000_000.0 / 256.0).abs() < 1e-6);
        assert!(derive_metrics("cpu", &marks[..1], &serde_json::json!({})).is_empty());
    }
}
