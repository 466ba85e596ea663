//! The microVM backends as the CLI drives them: our monitor with the bare
//! lab guest (or a Linux kernel), and QEMU's `microvm` machine as a peer.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use isolab_microvm::vcpu::StopReason;
use isolab_microvm::vmm;
use isolab_reports::{InstanceReport, Mark};
use isolab_scenarios::protocol;

/// Which guest a VM backend boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Guest {
    /// The lab's bare 64-bit guest: no OS at all.
    Bare,
    /// A Linux kernel with the agent as /init.
    Linux,
}

/// Scenarios the bare guest runs.
/// `spin` is a register-only loop (`isolab.n` iterations): with
/// `--param ring=0` it shows that PVM runs a guest's ring 0 in KVM's
/// instruction emulator.
/// `hang`, `flood`, `unknown-io` and `fault` misbehave on purpose, to
/// test the monitor.
pub const BARE_SCENARIOS: [&str; 9] = [
    "startup",
    "cpu",
    "memory",
    "exit-cost",
    "spin",
    "hang",
    "flood",
    "unknown-io",
    "fault",
];

/// Options for one VM instance.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub guest: Guest,
    pub scenario: String,
    pub params: Vec<String>,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub timeout: Duration,
    pub kernel: Option<PathBuf>,
    pub echo: bool,
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

fn mark_at(marks: &[Mark], name: &str) -> Option<u64> {
    marks.iter().find(|m| m.name == name).map(|m| m.ns)
}

/// Metrics the host derives from the guest's marks (the bare guest has no
/// clock of its own it could trust): rates from `work_start`→`work_end`.
pub fn derive_metrics(
    scenario: &str,
    marks: &[Mark],
    data: &serde_json::Value,
) -> Vec<protocol::Metric> {
    let (Some(a), Some(b)) = (mark_at(marks, "work_start"), mark_at(marks, "work_end")) else {
        return vec![];
    };
    let dt = b.saturating_sub(a).max(1) as f64;
    let m = |name: &str, unit: &str, value: f64| protocol::Metric {
        name: name.into(),
        unit: unit.into(),
        value,
    };
    match scenario {
        "cpu" => data["blocks"]
            .as_f64()
            .map(|blocks| vec![m("cpu.sha256", "bytes_per_s", blocks * 64.0 / (dt / 1e9))])
            .unwrap_or_default(),
        "memory" => match (data["mib"].as_f64(), data["pages"].as_f64()) {
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
        "exit-cost" => data["exits"]
            .as_f64()
            .map(|n| vec![m("vm.exit_cost", "ns_per_exit", dt / n.max(1.0))])
            .unwrap_or_default(),
        _ => vec![],
    }
}

/// The monitor binary, next to this `isolab`.
pub fn vmm_binary() -> Option<PathBuf> {
    let p = crate::selfprotect::original_exe()?.with_file_name("isolab-vmm");
    p.is_file().then_some(p)
}

/// Boots one VM with our monitor (`isolab-vmm`, one process per VM, as
/// QEMU is for the peer) and reports it.
pub fn run_microvm(opts: &VmOptions, launch: u64) -> Result<(InstanceReport, String)> {
    use std::io::Read;
    let mut args: Vec<String> = Vec::new();
    let guest_name = match opts.guest {
        Guest::Bare => {
            if !BARE_SCENARIOS.contains(&opts.scenario.as_str()) {
                bail!(
                    "the bare guest runs {}: {:?} needs --guest linux",
                    BARE_SCENARIOS.join(", "),
                    opts.scenario
                );
            }
            "bare"
        }
        Guest::Linux => bail!(
            "the Linux guest is not in this build yet (issue 5){}: use --guest bare",
            opts.kernel
                .as_ref()
                .map(|k| format!("; {} was not booted", k.display()))
                .unwrap_or_default()
        ),
    };
    args.extend([
        "--cmdline".into(),
        guest_cmdline(&opts.scenario, &opts.params)?,
    ]);
    args.extend([
        "--mem".into(),
        opts.mem_mib.to_string(),
        "--vcpus".into(),
        opts.vcpus.to_string(),
    ]);
    args.extend(["--timeout".into(), opts.timeout.as_secs_f64().to_string()]);
    if opts.echo {
        args.push("--echo".into());
    }
    let vmm = vmm_binary().ok_or_else(|| {
        anyhow!("isolab-vmm is missing next to isolab: build the workspace (cargo build --release)")
    })?;
    let mut child = std::process::Command::new(&vmm)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(if opts.echo {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::piped()
        })
        .spawn()
        .map_err(|e| anyhow!("starting {}: {e}", vmm.display()))?;
    let mut stdout = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    let reaped = isolab_runtime::container::monotonic_ns();
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
    let mut marks = vec![Mark {
        name: "launch".into(),
        ns: launch,
    }];
    marks.extend(r.marks.iter().map(|m| Mark {
        name: m.name.clone(),
        ns: m.ns,
    }));
    marks.push(Mark {
        name: "reaped".into(),
        ns: reaped,
    });
    let mut notes = vec![
        "launch = spawn of isolab-vmm; ready = the guest's write to the boot-marker port, stamped by the monitor on the host clock; reaped = monitor process reaped".to_owned(),
    ];
    if r.serial_dropped > 0 {
        notes.push(format!(
            "the guest flooded the serial port: {} bytes dropped",
            r.serial_dropped
        ));
    }
    let mut memory = BTreeMap::new();
    memory.insert("guest_touched".to_owned(), r.guest_touched_bytes);
    memory.insert("monitor_peak_rss".to_owned(), r.process_peak_rss_bytes);
    memory.insert(
        "monitor_rss_beyond_guest".to_owned(),
        r.process_peak_rss_bytes
            .saturating_sub(r.guest_touched_bytes),
    );
    let code = match (&r.stop, r.timed_out, r.exit_code) {
        (_, true, _) => bail!(
            "the guest did not finish within {:?} (raise --timeout); last serial output:\n{}",
            opts.timeout,
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
    let mut res = protocol::parse_output("microvm", &r.serial).map_err(|e| anyhow!("{e}"))?;
    res.metrics
        .extend(derive_metrics(&opts.scenario, &marks, &res.data));
    let mut report = InstanceReport {
        backend: "microvm".into(),
        guest: guest_name.into(),
        scenario: opts.scenario.clone(),
        instance: format!("vm-{}", child.id()),
        exit_code: code,
        signal: None,
        oom_killed: false,
        marks,
        phases_ns: BTreeMap::new(),
        launch_to_ready_ns: None,
        launch_to_exit_ns: None,
        memory_bytes: memory,
        result: Some(serde_json::to_value(&res)?),
        notes,
    };
    report.derive();
    Ok((report, r.serial))
}

/// Where the bare guest's ELF is written for QEMU (cached per build).
fn guest_file(home: &std::path::Path) -> Result<PathBuf> {
    let dir = home.join("cache");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "isolab-guest-{:08x}.elf",
        fnv(isolab_microvm::BARE_GUEST)
    ));
    if !path.exists() {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, isolab_microvm::BARE_GUEST)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

fn fnv(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, x| {
        (h ^ u32::from(*x)).wrapping_mul(0x0100_0193)
    })
}

/// The QEMU command line for the bare guest (`-M microvm`, PVH boot, the
/// lab's exit port as `isa-debug-exit`). QEMU's default CPU model is used:
/// `-cpu host` makes QEMU set MSRs that PVM refuses.
pub fn qemu_args(guest: &std::path::Path, cmdline: &str, mem_mib: u64, vcpus: u8) -> Vec<String> {
    [
        "-M",
        "microvm,x-option-roms=off",
        "-enable-kvm",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-m".into(),
        format!("{mem_mib}M"),
        "-smp".into(),
        vcpus.to_string(),
        "-kernel".into(),
        guest.display().to_string(),
        "-append".into(),
        cmdline.to_owned(),
        "-device".into(),
        format!(
            "isa-debug-exit,iobase={:#x},iosize=1",
            isolab_microvm::ports::EXIT_PORT
        ),
    ])
    .collect()
}

/// `isa-debug-exit` makes QEMU exit with `(value << 1) | 1`.
pub fn qemu_guest_code(status: Option<i32>) -> Option<i32> {
    status.filter(|s| s & 1 == 1).map(|s| s >> 1)
}

fn rss_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

/// Runs the bare guest under `qemu-system-x86_64 -M microvm`.
pub fn run_qemu(
    home: &std::path::Path,
    opts: &VmOptions,
    launch: u64,
) -> Result<(InstanceReport, String)> {
    use std::io::Read;
    if opts.guest != Guest::Bare {
        bail!("the QEMU peer runs the bare guest only in this build: use --guest bare");
    }
    if !BARE_SCENARIOS.contains(&opts.scenario.as_str()) {
        bail!(
            "the bare guest runs {}: {:?} is not one of them",
            BARE_SCENARIOS.join(", "),
            opts.scenario
        );
    }
    let Some(qemu) = crate::host::which("qemu-system-x86_64") else {
        bail!("qemu-system-x86_64 is not installed: skipped (install it with `apt-get install qemu-system-x86`)");
    };
    let guest = guest_file(home)?;
    let args = qemu_args(
        &guest,
        &guest_cmdline(&opts.scenario, &opts.params)?,
        opts.mem_mib,
        opts.vcpus,
    );
    let mut child = std::process::Command::new(&qemu)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("starting {}: {e}", qemu.display()))?;
    let pid = child.id();
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from qemu"))?;
    // A watchdog kills QEMU at the timeout.
    let deadline = opts.timeout;
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(deadline);
        // SAFETY: kill(2) on the pid of our own child; harmless if it is gone.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let mut serial = Vec::new();
    let mut ready = None;
    let mut rss_at_ready = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        serial.extend_from_slice(&buf[..n]);
        if ready.is_none()
            && serial
                .windows(protocol::RESULT_PREFIX.len())
                .any(|w| w == protocol::RESULT_PREFIX.as_bytes())
        {
            ready = Some(isolab_runtime::container::monotonic_ns());
            rss_at_ready = rss_of(pid);
        }
    }
    let status = child.wait()?;
    let exit_ns = isolab_runtime::container::monotonic_ns();
    drop(watchdog);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let serial = String::from_utf8_lossy(&serial).into_owned();
    let code = qemu_guest_code(status.code()).ok_or_else(|| {
        anyhow!(
            "qemu ended without the guest's exit code ({status}; killed at the {:?} timeout?): {}\nlast serial output:\n{}",
            opts.timeout,
            stderr.trim(),
            protocol::tail(&serial, 10)
        )
    })?;
    let mut res = protocol::parse_output("qemu", &serial).map_err(|e| anyhow!("{e}"))?;
    res.metrics.clear();
    let mut marks = vec![
        Mark {
            name: "launch".into(),
            ns: launch,
        },
        Mark {
            name: "reaped".into(),
            ns: exit_ns,
        },
    ];
    if let Some(r) = ready {
        marks.push(Mark {
            name: "ready".into(),
            ns: r,
        });
    }
    let mut memory = BTreeMap::new();
    if let Some(r) = rss_at_ready {
        memory.insert("monitor_rss_at_ready".to_owned(), r);
    }
    let mut report = InstanceReport {
        backend: "qemu".into(),
        guest: "bare".into(),
        scenario: opts.scenario.clone(),
        instance: format!("qemu-{pid}"),
        exit_code: code,
        signal: None,
        oom_killed: false,
        marks,
        phases_ns: BTreeMap::new(),
        launch_to_ready_ns: None,
        launch_to_exit_ns: None,
        memory_bytes: memory,
        result: Some(serde_json::to_value(&res)?),
        notes: vec!["launch = spawn of qemu-system-x86_64; ready = arrival of the guest's result line on QEMU's serial output (QEMU has no boot-marker port)".into()],
    };
    report.derive();
    Ok((report, serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_exit_codes_and_args() {
        assert_eq!(qemu_guest_code(Some(1)), Some(0));
        assert_eq!(qemu_guest_code(Some(5)), Some(2));
        assert_eq!(qemu_guest_code(Some(0)), None);
        assert_eq!(qemu_guest_code(None), None);
        let a = qemu_args(std::path::Path::new("/g.elf"), "isolab.scenario=cpu", 64, 1);
        assert!(a.windows(2).any(|w| w[0] == "-kernel" && w[1] == "/g.elf"));
        assert!(a
            .iter()
            .any(|x| x == "isa-debug-exit,iobase=0xf11,iosize=1"));
        assert!(
            !a.iter().any(|x| x == "host"),
            "-cpu host makes QEMU set MSRs PVM refuses"
        );
    }

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
