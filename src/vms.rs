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
/// `echo-input` reads a line from the serial port (the `-it` path);
/// `hang`, `flood`, `unknown-io` and `fault` misbehave on purpose, to
/// test the monitor.
pub const BARE_SCENARIOS: [&str; 11] = [
    "startup",
    "cpu",
    "memory",
    "exit-cost",
    "disk-read",
    "spin",
    "echo-input",
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
    /// isolab's home (images, caches): needed to build a Linux guest's
    /// initramfs.
    pub home: Option<PathBuf>,
    /// `-it`: the terminal's keys go to the guest's serial port.
    pub interactive: bool,
    /// virtio-blk disks: host files, or [`IMAGE_DISK`] for the image's
    /// layers as a read-only ext4 disk.
    pub disks: Vec<String>,
    /// Enter the kernel at its PVH entry instead of the 64-bit one.
    pub pvh: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            guest: Guest::Bare,
            scenario: "startup".into(),
            params: vec![],
            mem_mib: 64,
            vcpus: 1,
            timeout: Duration::from_secs(30),
            kernel: None,
            echo: false,
            home: None,
            interactive: false,
            disks: vec![],
            pvh: false,
        }
    }
}

/// The `--disk` value that means "the image's layers, as ext4".
pub const IMAGE_DISK: &str = "image";

/// The kernel command line of a Linux guest (before the isolab.* words):
/// serial console and early printk, reboot through the i8042, no panic
/// wait, and none of the PC hardware a microVM does not have.
pub const LINUX_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp tsc=reliable";

/// Modules the lab wants in a Linux guest when the kernel has them as
/// modules (Debian's cloud kernel does).
pub const WANTED_MODULES: [&str; 2] = ["virtio_mmio", "virtio_blk"];

/// A prepared Linux guest.
pub struct LinuxGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub warning: Option<String>,
}

/// Resolves `names` and their dependencies from a modules.dep text, in
/// load order (dependencies first), as paths relative to the modules dir.
pub fn module_closure(modules_dep: &str, names: &[&str]) -> Result<Vec<String>> {
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((m, rest)) = line.split_once(':') else {
            continue;
        };
        let name = m
            .rsplit('/')
            .next()
            .unwrap_or(m)
            .split('.')
            .next()
            .unwrap_or(m)
            .replace('-', "_");
        by_name.insert(name, m.to_owned());
        deps.insert(
            m.to_owned(),
            rest.split_whitespace().map(str::to_owned).collect(),
        );
    }
    let mut order = Vec::new();
    fn visit(m: &str, deps: &BTreeMap<String, Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(m.to_owned());
    }
    for n in names {
        let m = by_name.get(*n).ok_or_else(|| anyhow!("module {n} is not in modules.dep: install the kernel's modules package or use a kernel with {n} built in"))?;
        visit(m, &deps, &mut order);
    }
    Ok(order)
}

/// Finds the kernel, packs modules it wants, writes the initramfs.
pub fn prepare_linux(home: &std::path::Path, opts: &VmOptions) -> Result<LinuxGuest> {
    use isolab_microvm::kernel;
    let kpath = match &opts.kernel {
        Some(k) => k.clone(),
        None => kernel::find_in(std::path::Path::new("/boot"))?,
    };
    let info = kernel::inspect(&kpath)?;
    let kver = info
        .version
        .as_deref()
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("")
        .to_owned();
    let mut tree = image_tree(home)?;
    use isolab_runtime::initramfs::Node;
    tree.insert(
        "init".into(),
        Node::Symlink {
            target: "/isolab-agent".into(),
        },
    );
    // Modules the kernel has as modules, if its config is next to it.
    let config = std::fs::read_to_string(format!("/boot/config-{kver}")).unwrap_or_default();
    let wanted: Vec<&str> = WANTED_MODULES
        .iter()
        .copied()
        .filter(|m| config.contains(&format!("CONFIG_{}=m", m.to_uppercase())))
        .collect();
    if !wanted.is_empty() {
        let dir = PathBuf::from(format!("/lib/modules/{kver}"));
        let dep = std::fs::read_to_string(dir.join("modules.dep"))
            .map_err(|e| anyhow!("kernel {kver} needs modules ({}) but {}/modules.dep is unreadable ({e}): install its modules or pass a kernel with them built in", wanted.join(", "), dir.display()))?;
        let order = module_closure(&dep, &wanted)?;
        for d in ["lib", "lib/modules", "lib/modules/isolab"] {
            tree.insert(d.into(), Node::Dir { mode: 0o755 });
        }
        let mut names = Vec::new();
        for m in &order {
            let data = std::fs::read(dir.join(m)).map_err(|e| {
                anyhow!(
                    "missing module {}: {e}: reinstall the kernel's modules",
                    dir.join(m).display()
                )
            })?;
            let name = m.rsplit('/').next().unwrap_or(m).to_owned();
            tree.insert(
                format!("lib/modules/isolab/{name}"),
                Node::File { mode: 0o644, data },
            );
            names.push(name);
        }
        tree.insert(
            "lib/modules/isolab/order".into(),
            Node::File {
                mode: 0o644,
                data: names.join("\n").into_bytes(),
            },
        );
    }
    let cpio = isolab_runtime::initramfs::write_cpio(&tree);
    if cpio.len() as u64 >= opts.mem_mib << 20 {
        bail!(
            "the initramfs ({} MiB) is larger than guest memory ({} MiB): raise --mem",
            cpio.len() >> 20,
            opts.mem_mib
        );
    }
    let cache = home.join("cache");
    std::fs::create_dir_all(&cache)?;
    let initrd = cache.join(format!("initramfs-{:08x}.cpio", fnv(&cpio)));
    if !initrd.exists() {
        let tmp = initrd.with_extension("tmp");
        std::fs::write(&tmp, &cpio)?;
        std::fs::rename(&tmp, &initrd)?;
    }
    let flavour = crate::doctor::kvm_flavour_here();
    let warning = (!flavour.boots_stock_linux()).then(|| {
        format!(
            "this host's KVM is {}: a stock Linux kernel starts and prints its first lines, then stops on an emulation failure (here after ~40 s) before init; to boot to the agent, pass a PVM-aware kernel with --kernel or use a host with hardware KVM",
            flavour.as_str()
        )
    });
    Ok(LinuxGuest {
        kernel: kpath,
        initrd,
        warning,
    })
}

/// The default image's merged file tree (what the container sees).
fn image_tree(home: &std::path::Path) -> Result<BTreeMap<String, isolab_runtime::initramfs::Node>> {
    let store = isolab_runtime::image::Store::new(home);
    let img = crate::containers::open_image(home, crate::containers::DEFAULT_IMAGE)?;
    Ok(isolab_runtime::initramfs::merged_tree(&store, &img)?)
}

/// The default image as an ext4 disk, cached by content under
/// `$ISOLAB_HOME/cache`: built once per image, served read-only. Within
/// one process (a bench asks for it at every repetition) the answer is
/// remembered while the file exists, since finding it means reading and
/// fingerprinting every layer.
pub fn image_disk(home: &std::path::Path) -> Result<PathBuf> {
    static KNOWN: std::sync::Mutex<Option<(PathBuf, PathBuf)>> = std::sync::Mutex::new(None);
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((h, disk)) = known.as_ref() {
        if h == home && disk.is_file() {
            return Ok(disk.clone());
        }
    }
    let tree = image_tree(home)?;
    let fingerprint = fnv(&isolab_runtime::initramfs::write_cpio(&tree));
    let cache = home.join("cache");
    std::fs::create_dir_all(&cache)?;
    let path = cache.join(format!("disk-{fingerprint:08x}.ext4"));
    if !path.exists() {
        isolab_runtime::diskimage::write_ext4(&tree, &path, u64::from(fingerprint))?;
    }
    *known = Some((home.to_path_buf(), path.clone()));
    Ok(path)
}

/// Empties `$ISOLAB_HOME/cache` (guest ELF for QEMU, initramfs, image
/// disks): content-addressed artefacts, rebuilt on demand, of which old
/// versions pile up as the agent or the image changes. A VM using one
/// keeps its open file. Returns (files, bytes) removed.
pub fn prune_cache(home: &std::path::Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0u64, 0u64);
    for e in std::fs::read_dir(home.join("cache"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        if e.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(e.path()).is_ok() {
            files += 1;
            bytes += len;
        }
    }
    (files, bytes)
}

/// `--disk` values → `isolab-vmm` arguments. The image disk is shared
/// and cached, so it is attached read-only; a user's file read-write.
fn disk_args(opts: &VmOptions) -> Result<Vec<String>> {
    let mut specs = opts.disks.clone();
    if specs.is_empty() && opts.scenario == "disk-read" {
        specs.push(IMAGE_DISK.into());
    }
    let mut args = Vec::new();
    for spec in specs {
        if spec == IMAGE_DISK {
            let home = opts
                .home
                .as_deref()
                .ok_or_else(|| anyhow!("internal: no home for the image disk"))?;
            args.push("--disk-ro".into());
            args.push(image_disk(home)?.display().to_string());
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
    opts: &VmOptions,
    marks: Vec<Mark>,
    mut notes: Vec<String>,
    memory: BTreeMap<String, u64>,
    r: &vmm::VmReport,
    pid: u32,
) -> Result<(InstanceReport, String)> {
    let result = protocol::parse_output("microvm", &r.serial).ok();
    let reached: Vec<&str> = ["kernel_start", "kernel_init", "agent_ready"]
        .into_iter()
        .filter(|n| marks.iter().any(|m| m.name == *n))
        .collect();
    let mut marks = marks;
    // ready = the agent's own mark when it got there.
    if let Some(a) = marks.iter().find(|m| m.name == "agent_ready").map(|m| m.ns) {
        marks.push(Mark {
            name: "ready".into(),
            ns: a,
        });
    }
    let code = match (&r.stop, r.timed_out, &result) {
        (StopReason::Reset, false, Some(res)) if res.ok => i32::from(r.exit_code.unwrap_or(0)),
        _ => {
            notes.push(format!(
                "the guest stopped before the agent's result ({}; phases reached: {}); last serial lines:\n{}",
                if r.timed_out { format!("timed out after {:?}", opts.timeout) } else { r.stop.describe() },
                if reached.is_empty() { "none".to_owned() } else { reached.join(", ") },
                protocol::tail(&r.serial, 8)
            ));
            1
        }
    };
    if !crate::doctor::kvm_flavour_here().boots_stock_linux() {
        notes.push("host KVM is PVM: a stock kernel cannot boot to init here; the figures show how far it got".into());
    }
    let mut report = InstanceReport::new("microvm", "linux", &opts.scenario, format!("vm-{pid}"));
    report.exit_code = code;
    report.marks = marks;
    report.memory_bytes = memory;
    report.result = result.map(|x| serde_json::to_value(x).unwrap_or_default());
    report.notes = notes;
    report.console_head = Some(r.serial.chars().take(8192).collect());
    report.derive();
    Ok((report, r.serial.clone()))
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
        "disk-read" => data["bytes"]
            .as_f64()
            .map(|b| vec![m("disk.read_rate", "bytes_per_s", b / (dt / 1e9))])
            .unwrap_or_default(),
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
pub fn run_microvm(opts: &VmOptions) -> Result<(InstanceReport, String)> {
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
        Guest::Linux => "linux",
    };
    let mut cmdline = guest_cmdline(&opts.scenario, &opts.params)?;
    if opts.guest == Guest::Linux {
        let home = opts
            .home
            .as_deref()
            .ok_or_else(|| anyhow!("internal: no home for the Linux guest"))?;
        let linux = prepare_linux(home, opts)?;
        args.extend([
            "--kernel".into(),
            linux.kernel.display().to_string(),
            "--initrd".into(),
            linux.initrd.display().to_string(),
            "--pit".into(),
        ]);
        cmdline = format!("{LINUX_CMDLINE} {cmdline}");
        if let Some(w) = linux.warning {
            eprintln!("isolab: {w}");
        }
    }
    args.extend(["--cmdline".into(), cmdline]);
    args.extend(disk_args(opts)?);
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
    if opts.interactive {
        args.push("--interactive".into());
    }
    if opts.pvh {
        args.push("--pvh".into());
    }
    let vmm = vmm_binary().ok_or_else(|| {
        anyhow!("isolab-vmm is missing next to isolab: build the workspace (cargo build --release)")
    })?;
    // launch = the spawn of the monitor process, after the harness's own
    // preparation (e.g. a Linux guest's initramfs), as for QEMU.
    let launch = isolab_runtime::container::monotonic_ns();
    let mut child = std::process::Command::new(&vmm)
        .args(&args)
        .stdin(if opts.interactive {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
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
    if opts.guest == Guest::Linux {
        return linux_report(opts, marks, notes, memory, &r, child.id());
    }
    if opts.guest == Guest::Linux {
        return linux_report(opts, marks, notes, memory, &r, child.id());
    }
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
    let mut report = InstanceReport::new(
        "microvm",
        guest_name,
        &opts.scenario,
        format!("vm-{}", child.id()),
    );
    report.exit_code = code;
    report.marks = marks;
    report.memory_bytes = memory;
    report.result = Some(serde_json::to_value(&res)?);
    report.notes = notes;
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
pub fn run_qemu(home: &std::path::Path, opts: &VmOptions) -> Result<(InstanceReport, String)> {
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
    let mut cmdline = guest_cmdline(&opts.scenario, &opts.params)?;
    let mut disk_args = Vec::new();
    if opts.scenario == "disk-read" {
        // The same image disk, on QEMU's own virtio-blk (modern MMIO).
        // QEMU does not put its transports on a PVH guest's command line,
        // so we do, all of them: the guest takes the one holding a disk.
        let disk = image_disk(home)?;
        disk_args = vec![
            "-global".into(),
            "virtio-mmio.force-legacy=false".into(),
            "-drive".into(),
            format!(
                "id=d0,file={},format=raw,if=none,readonly=on",
                disk.display()
            ),
            "-device".into(),
            "virtio-blk-device,drive=d0,serial=isolab-disk".into(),
        ];
        for i in 0..QEMU_VIRTIO_TRANSPORTS {
            cmdline.push_str(&format!(
                " virtio_mmio.device=512@{:#x}:{}",
                QEMU_VIRTIO_BASE + 512 * i,
                QEMU_VIRTIO_IRQ + i
            ));
        }
    }
    let mut args = qemu_args(&guest, &cmdline, opts.mem_mib, opts.vcpus);
    args.extend(disk_args);
    let launch = isolab_runtime::container::monotonic_ns();
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
    let mut report = InstanceReport::new("qemu", "bare", &opts.scenario, format!("qemu-{pid}"));
    report.exit_code = code;
    report.marks = marks;
    report.memory_bytes = memory;
    report.result = Some(serde_json::to_value(&res)?);
    report.notes = vec!["launch = spawn of qemu-system-x86_64; ready = arrival of the guest's result line on QEMU's serial output (QEMU has no boot-marker port, so no in-guest rates such as disk.read_rate)".into()];
    report.derive();
    Ok((report, serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dependencies_come_first() {
        let dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio.ko:\n";
        let order = module_closure(dep, &["virtio_mmio", "virtio_blk"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/block/virtio_blk.ko"
            ]
        );
        assert!(module_closure(dep, &["nope"])
            .unwrap_err()
            .to_string()
            .contains("not in modules.dep"));
    }

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
