//! The Linux guest under QEMU's software emulation (TCG): what a Linux VM
//! isolates, shown on hosts where KVM cannot boot a stock kernel (PVM) or
//! where there is no KVM at all.
//!
//! It boots the same kernel and initramfs as `--backend microvm --guest
//! linux` (see [`crate::linux_guest`]) on `qemu-system-x86_64 -M pc -accel
//! tcg`: every instruction of the guest is translated by QEMU, so
//! its figures are never timed or compared ([`Backend::timed`] is false).
//! Its answers to the isolation probes are real: the same agent asks them
//! from inside a Linux VM with its own kernel.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use isolab_abi::stage::Stage;
use isolab_reports::{InstanceReport, Mark};
use isolab_scenarios::protocol;

use crate::backend::{Attach, Backend, Guest, InstanceSpec, Kind, Outcome, Unavailable};
use crate::clock::monotonic_ns;
use crate::home::Home;

const PROGRAM: &str = "qemu-system-x86_64";

/// `qemu-system-x86_64 -M pc -accel tcg` with the Linux guest.
pub struct QemuTcg;

/// What every report of this backend says about its figures.
pub const NOT_TIMED: &str = "software emulation (QEMU TCG): every guest instruction is translated, so its times and memory say nothing about a VM on hardware and are never compared; its probe answers are a Linux VM's";

impl Backend for QemuTcg {
    fn name(&self) -> &'static str {
        "qemu-tcg"
    }
    fn about(&self) -> &'static str {
        "qemu-system-x86_64 -accel tcg (software emulation) booting the Linux guest: probes and functional runs where KVM cannot boot Linux; never timed"
    }
    fn kind(&self) -> Kind {
        Kind::Vm
    }
    fn timed(&self) -> bool {
        false
    }
    fn available(&self) -> Result<(), Unavailable> {
        if crate::host::which(PROGRAM).is_none() {
            return Err(Unavailable {
                reason: format!("{PROGRAM} is not installed"),
                install: Some("apt-get install qemu-system-x86".into()),
            });
        }
        Ok(())
    }
    fn guest(&self, _spec: &InstanceSpec) -> Guest {
        Guest::Linux
    }
    fn check(&self, spec: &InstanceSpec, attach: Attach) -> Result<()> {
        let mut linux = spec.clone();
        linux.vm.guest = Some(Guest::Linux);
        crate::backend::refuse_container_options(&linux)?;
        if spec.vm.guest == Some(Guest::Bare) {
            bail!("qemu-tcg boots the Linux guest only: drop --guest bare (the bare guest runs on --backend microvm or qemu)");
        }
        if spec.net.mode != crate::network::Mode::None {
            bail!("qemu-tcg has no network device in this build: drop --network, or use --backend microvm (either guest) or qemu (the bare guest) on the bridge");
        }
        if spec.vm.pvh {
            bail!("--pvh picks our monitor's boot entry: use it with --backend microvm");
        }
        if !spec.vm.disks.is_empty() {
            bail!("--disk attaches a virtio disk to our microVM: use it with --backend microvm");
        }
        if matches!(attach, Attach::Terminal { tty: true, .. }) {
            bail!("-it reaches the guest's serial port with --backend microvm only");
        }
        spec.scenario_entry()?;
        Ok(())
    }
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
        run_tcg(home, spec)
    }
}

/// QEMU's arguments: the `pc` machine under TCG with its most capable CPU
/// model, the kernel and initramfs, the lab's exit port as
/// `isa-debug-exit`. Not `microvm`: it has no HPET or ACPI PM timer, so
/// an emulated kernel whose PIT calibration fails on a busy host has no
/// reference for its TSC and can hang calibrating its delay loop (seen
/// here); `pc` has both.
pub fn tcg_args(
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    cmdline: &str,
    mem_mib: u64,
    vcpus: u8,
) -> Vec<String> {
    [
        "-M",
        "pc",
        "-accel",
        "tcg",
        "-cpu",
        "max",
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
        vcpus.max(1).to_string(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
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

fn run_tcg(home: &Home, opts: &InstanceSpec) -> Result<Outcome> {
    use std::io::Read;
    QemuTcg
        .available()
        .map_err(|u| anyhow!("{}", u.sentence()))?;
    let qemu = crate::host::which(PROGRAM).ok_or_else(|| anyhow!("{PROGRAM} vanished"))?;
    let mut vm = opts.vm.clone();
    vm.guest = Some(Guest::Linux);
    // Software emulation is slow: a longer default bound than KVM's.
    vm.timeout = Some(
        opts.vm
            .timeout
            .unwrap_or(std::time::Duration::from_secs(300)),
    );
    let linux =
        crate::linux_guest::prepare(home, &vm, crate::linux_guest::runs_an_image(opts), false)?;
    // An image's own program: its disk on QEMU's virtio-blk (PCI), the
    // start spec appended to the initramfs.
    let image = if crate::linux_guest::runs_an_image(opts) {
        Some(crate::linux_guest::image_in_vm(home, opts, &linux.initrd)?)
    } else {
        None
    };
    // The result line goes to a second serial port, a file: QEMU's RAM is
    // not ours to read here (the agent's result page sits in the `pc`
    // machine's VGA hole), and on the console a late kernel message could
    // cut into it.
    let result_dir = tempfile::Builder::new()
        .prefix(".tmp-tcg-")
        .tempdir_in(home.root())
        .context("a directory for QEMU's result port")?;
    let result_file = result_dir.path().join("result");
    let mut cmdline = format!(
        "{} {} isolab.result_tty=/dev/ttyS1",
        crate::linux_guest::LINUX_CMDLINE,
        super::microvm::guest_cmdline(&opts.scenario, &opts.params)?
    );
    let initrd = image.as_ref().map_or(&linux.initrd, |i| &i.initrd);
    if image.is_some() {
        // The disk is a PCI device here, and the console is the
        // program's: the kernel keeps quiet on it.
        cmdline = cmdline
            .replace("pci=off ", "")
            .replace("earlyprintk=serial,ttyS0,115200 ", "")
            + " quiet loglevel=1";
    }
    let mut args = tcg_args(&linux.kernel, initrd, &cmdline, vm.mem_mib(), vm.vcpus);
    if let Some(i) = &image {
        args.extend([
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", i.disk.display()),
        ]);
    }
    args.extend(["-serial".into(), format!("file:{}", result_file.display())]);
    let launch = monotonic_ns();
    let mut cmd = std::process::Command::new(&qemu);
    crate::host::in_host_mount_namespace(&mut cmd);
    crate::host::die_with_parent(&mut cmd);
    let mut child = cmd
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("starting {}: {e}", qemu.display()))?;
    let pid = child.id();
    if let Some(hook) = &opts.on_spawn {
        hook(pid as i32);
    }
    let stderr_reader = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(move || crate::capture::read_all(e)));
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from qemu"))?;
    let deadline = vm.timeout();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(deadline).is_err() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped
            // (the main thread reaps it only after the pipe closes).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let mut serial = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if serial.len() < crate::capture::KEEP_BYTES {
            serial.extend_from_slice(&buf[..n]);
        }
    }
    let status = child.wait()?;
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let exit_ns = monotonic_ns();
    let stderr = stderr_reader
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    let serial = String::from_utf8_lossy(&serial).into_owned();
    let code = super::qemu::qemu_guest_code(status.code()).ok_or_else(|| {
        anyhow!(
            "qemu (TCG) ended without the guest's exit code ({status}; killed at the {:?} timeout?): {}\nlast serial output:\n{}",
            deadline,
            stderr.trim(),
            protocol::tail(&serial, 10)
        )
    })?;
    let result = std::fs::read_to_string(&result_file).unwrap_or_default();
    let mut res = protocol::parse_output("qemu-tcg", &result)
        .or_else(|_| protocol::parse_output("qemu-tcg", &serial))
        .map_err(|e| anyhow!("{e}"))?;
    res.metrics.clear();
    let scenario = if image.is_some() {
        "exec"
    } else {
        opts.scenario.as_str()
    };
    let mut report = InstanceReport::new("qemu-tcg", "linux", scenario, format!("qemu-tcg-{pid}"));
    report.exit_code = code;
    if image.is_some() {
        // The program's own exit code, or the one sentence why it did not run.
        if let Some(e) = &res.error {
            bail!("the image did not run in the VM: {e}");
        }
        report.exit_code = res.data["exit_code"].as_i64().unwrap_or(255) as i32;
    }
    report.marks = vec![
        Mark::new(Stage::Launch.name(), launch),
        Mark::new(Stage::Reaped.name(), exit_ns),
    ];
    report.memory_bytes = BTreeMap::new();
    report.result = Some(serde_json::to_value(&res)?);
    report.notes = vec![
        NOT_TIMED.into(),
        format!("kernel {}", linux.kernel.display()),
    ];
    // (`linux.warning` is about KVM booting this kernel, not QEMU's
    // emulation: it does not apply here.)
    report.derive();
    Ok(Outcome {
        report,
        output: serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_emulation_is_asked_for_and_never_timed() {
        let a = tcg_args(
            std::path::Path::new("/k"),
            std::path::Path::new("/i"),
            "x",
            256,
            1,
        );
        assert!(a.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg"));
        assert!(!a.iter().any(|x| x == "-enable-kvm"));
        assert!(a.windows(2).any(|w| w[0] == "-initrd" && w[1] == "/i"));
        assert!(!QemuTcg.timed());
        assert_eq!(QemuTcg.guest(&InstanceSpec::default()), Guest::Linux);
    }
}
