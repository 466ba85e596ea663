//! QEMU's `microvm` machine as a peer: the same bare guest ELF, booted
//! through its PVH note, the lab's exit port as `isa-debug-exit`.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use isolab_abi::catalog::name as sc;
use isolab_abi::ports;
use isolab_abi::stage::Stage;
use isolab_reports::{InstanceReport, Mark};
use isolab_scenarios::protocol;

use super::monitor_cgroup::{unrecorded_id, MonitorCgroup};
use crate::backend::{Attach, Backend, Guest, InstanceSpec, Kind, Outcome, Unavailable};
use crate::clock::monotonic_ns;
use crate::home::Home;

const PROGRAM: &str = "qemu-system-x86_64";

/// `qemu-system-x86_64 -M microvm`.
pub struct Qemu;

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }
    fn about(&self) -> &'static str {
        "qemu-system-x86_64 -M microvm, booting the same bare guest"
    }
    fn kind(&self) -> Kind {
        Kind::Vm
    }
    fn supports_network(&self) -> bool {
        true
    }
    fn baseline(&self) -> Option<&'static str> {
        Some("microvm")
    }
    fn available(&self) -> Result<(), Unavailable> {
        super::microvm::kvm_usable()?;
        if crate::host::which(PROGRAM).is_none() {
            return Err(Unavailable {
                reason: format!("{PROGRAM} is not installed"),
                install: Some("apt-get install qemu-system-x86".into()),
            });
        }
        Ok(())
    }
    fn guest(&self, _spec: &InstanceSpec) -> Guest {
        Guest::Bare
    }
    fn check(&self, spec: &InstanceSpec, attach: Attach) -> Result<()> {
        crate::backend::refuse_container_options(spec)?;
        if spec.vm.guest() != Guest::Bare {
            bail!("the QEMU peer runs the bare guest only in this build: use --guest bare");
        }
        super::microvm::check_bare_scenario(spec)?;
        if spec.vm.pvh {
            bail!("--pvh picks our monitor's boot entry: use it with --backend microvm (QEMU's microvm always boots the bare guest through PVH)");
        }
        if !spec.vm.disks.is_empty() {
            bail!("--disk attaches a virtio disk to our microVM: use it with --backend microvm");
        }
        if matches!(attach, Attach::Terminal { tty: true, .. }) {
            bail!("-it reaches the guest's serial port with --backend microvm only");
        }
        Ok(())
    }
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
        run_qemu(home, spec)
    }
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

/// QEMU's `microvm` machine: 24 virtio-mmio transports of 512 bytes from
/// 0xfeb00000, interrupt lines from 5 (hw/i386/microvm.h).
const QEMU_VIRTIO_BASE: u64 = 0xfeb0_0000;
const QEMU_VIRTIO_TRANSPORTS: u64 = 24;
const QEMU_VIRTIO_IRQ: u64 = 5;

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
fn run_qemu(home: &Home, opts: &InstanceSpec) -> Result<Outcome> {
    use std::io::Read;
    super::microvm::check_bare_scenario(opts)?;
    let Some(qemu) = crate::host::which(PROGRAM) else {
        bail!(
            "{}",
            Qemu.available()
                .err()
                .map(|u| u.to_string())
                .unwrap_or_default()
        );
    };
    let guest = crate::images::bare_guest_file(home)?;
    // --network bridge: the same lease, tap and guest parameters as under
    // our monitor; QEMU gets the tap as its fd 4.
    let vmnet = crate::network::VmNetwork::new(home, opts, &crate::instances::new_id())?;
    let mut params = opts.params.clone();
    params.extend(vmnet.params.iter().cloned());
    let mut cmdline = super::microvm::guest_cmdline(&opts.scenario, &params)?;
    let mut disk_args = Vec::new();
    if let Some(mac) = vmnet.mac() {
        disk_args.extend([
            "-netdev".into(),
            "tap,id=n0,fd=4,vhost=off".into(),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={mac},csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,mrg_rxbuf=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off,ctrl_vq=off,status=off"),
        ]);
    }
    if opts.scenario == sc::DISK_READ || vmnet.tap.is_some() {
        // QEMU does not put its transports on a PVH guest's command line,
        // so we do, all of them: the guest takes the one holding a disk
        // (or a network device).
        disk_args.extend(["-global".into(), "virtio-mmio.force-legacy=false".into()]);
        for i in 0..QEMU_VIRTIO_TRANSPORTS {
            cmdline.push_str(&format!(
                " virtio_mmio.device=512@{:#x}:{}",
                QEMU_VIRTIO_BASE + 512 * i,
                QEMU_VIRTIO_IRQ + i
            ));
        }
    }
    if opts.scenario == sc::DISK_READ {
        // The same image disk, on QEMU's own virtio-blk (modern MMIO).
        let disk = crate::images::image_disk(home)?;
        disk_args.extend([
            "-drive".into(),
            format!(
                "id=d0,file={},format=raw,if=none,readonly=on",
                disk.display()
            ),
            "-device".into(),
            "virtio-blk-device,drive=d0,serial=isolab-disk".into(),
        ]);
    }
    // `idle` holds until the harness has read the cgroup, as under our
    // monitor (see `microvm::holds`).
    let hold = opts.scenario == sc::IDLE;
    if hold {
        cmdline.push_str(" isolab.hold_wait=1");
    }
    let mut args = qemu_args(&guest, &cmdline, opts.vm.mem_mib(), opts.vm.vcpus);
    args.extend(disk_args);
    // Guest RAM is a memfd shared with QEMU (its fd 3), so the harness
    // reads the guest's result page after QEMU has exited, as our monitor
    // reads its own guest memory: no serial port in the timed window. A
    // memfd leaves no file behind, however isolab ends.
    let cgroup = MonitorCgroup::create(home, &unrecorded_id("qemu"), opts.vm.mem_mib())?;
    let ram = guest_ram_memfd()?;
    args.extend(ram_backend_args(opts.vm.mem_mib()));
    let launch = monotonic_ns();
    let mut cmd = std::process::Command::new(&qemu);
    crate::host::in_host_mount_namespace(&mut cmd);
    crate::host::die_with_parent(&mut cmd);
    cgroup.join_on_spawn(&mut cmd);
    let mut fds = vec![(std::os::fd::AsRawFd::as_raw_fd(&ram), 3)];
    if let Some(tap) = &vmnet.tap {
        fds.push((std::os::fd::AsRawFd::as_raw_fd(tap), 4));
    }
    crate::host::pass_fds(&mut cmd, fds);
    let mut child = cmd
        .args(&args)
        .stdin(if hold {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
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
    // A watchdog kills QEMU at the timeout.
    let deadline = opts.vm.timeout();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(deadline);
        // SAFETY: kill(2) on the pid of our own child; harmless if it is gone.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let mut input = child.stdin.take();
    let mut hold_charge = None;
    let mut serial = Vec::new();
    let mut ready = None;
    let mut rss_at_ready = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The guest's one ready byte is its first serial output.
        if ready.is_none() && buf[..n].contains(&ports::READY_BYTE) {
            ready = Some(monotonic_ns());
            rss_at_ready = rss_of(pid);
        }
        if serial.len() < crate::capture::KEEP_BYTES {
            serial.extend_from_slice(&buf[..n]);
        }
        if hold
            && hold_charge.is_none()
            && serial
                .windows(protocol::HOLD_LINE.len())
                .any(|w| w == protocol::HOLD_LINE.as_bytes())
        {
            hold_charge = cgroup.charged_bytes();
            if let Some(i) = input.as_mut() {
                let _ = std::io::Write::write_all(i, b"\n");
            }
        }
    }
    drop(input);
    let status = child.wait()?;
    let exit_ns = monotonic_ns();
    let published = vmnet.describe();
    drop(vmnet);
    drop(watchdog);
    let stderr = stderr_reader
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    let serial = String::from_utf8_lossy(&serial).into_owned();
    let output = match read_result_page(&ram) {
        Some(text) => format!(
            "{}{text}",
            serial
                .strip_prefix(char::from(ports::READY_BYTE))
                .unwrap_or(&serial)
        ),
        None => serial.clone(),
    };
    // The memfd's pages are charged to the cgroup: released first. An
    // OOM kill is said before the missing exit code it causes.
    drop(ram);
    let cgroup_peak = cgroup.finish(opts.vm.mem_mib())?;
    let code = qemu_guest_code(status.code()).ok_or_else(|| {
        anyhow!(
            "qemu ended without the guest's exit code ({status}; killed at the {:?} timeout?): {}\nlast serial output:\n{}",
            opts.vm.timeout(),
            stderr.trim(),
            protocol::tail(&serial, 10)
        )
    })?;
    let mut res = protocol::parse_output("qemu", &output).map_err(|e| anyhow!("{e}"))?;
    res.metrics = super::microvm::tsc_metrics(&opts.scenario, &res.data);
    let mut marks = vec![
        Mark::new(Stage::Launch.name(), launch),
        Mark::new(Stage::Reaped.name(), exit_ns),
    ];
    if let Some(r) = ready {
        marks.push(Mark::new(Stage::Ready.name(), r));
    }
    let mut memory = BTreeMap::new();
    if let Some(r) = rss_at_ready {
        memory.insert("monitor_rss_at_ready".to_owned(), r);
    }
    if let Some(p) = cgroup_peak {
        memory.insert("instance_cgroup_peak".to_owned(), p);
    }
    if let Some(c) = hold_charge {
        memory.insert("hold_cgroup_charged".to_owned(), c);
    }
    let mut report = InstanceReport::new("qemu", "bare", &opts.scenario, format!("qemu-{pid}"));
    report.exit_code = code;
    report.marks = marks;
    report.memory_bytes = memory;
    report.result = Some(serde_json::to_value(&res)?);
    report.notes = vec!["launch = spawn of qemu-system-x86_64; ready = arrival of the guest's one ready byte on QEMU's serial output (QEMU has no boot-marker port, so no in-guest rates such as disk.read_rate); the result is read from the guest's RAM (a shared memfd) after QEMU has exited".into()];
    if opts.net.mode == crate::network::Mode::Bridge {
        report.notes.push("on the lab bridge through a tap (QEMU's virtio-net-device, no vhost, no offloads) made before launch, outside the timed window, as for our monitor".into());
        report.notes.extend(published);
    }
    report.derive();
    Ok(Outcome { report, output })
}

fn guest_ram_memfd() -> Result<std::fs::File> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(c"isolab-qemu-ram", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| anyhow!("creating the memfd for QEMU's guest RAM: {e}"))?;
    Ok(std::fs::File::from(fd))
}

/// QEMU's RAM from the file at its fd 3 (see `crate::host::pass_fds`), shared.
fn ram_backend_args(mem_mib: u64) -> Vec<String> {
    vec![
        "-object".into(),
        format!(
            "memory-backend-file,id=isolab-ram,size={mem_mib}M,mem-path=/proc/self/fd/3,share=on"
        ),
        "-machine".into(),
        "memory-backend=isolab-ram".into(),
    ]
}

/// The result page's text in QEMU's guest RAM (guest-physical addresses
/// below 3 GiB are file offsets on `microvm`).
fn read_result_page(ram: &std::fs::File) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mut page = vec![0u8; ports::RESULT_PAGE_SIZE];
    ram.read_exact_at(&mut page, ports::RESULT_PAGE).ok()?;
    ports::result_text(&page).map(|t| String::from_utf8_lossy(t).into_owned())
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
}
