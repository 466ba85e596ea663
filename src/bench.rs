//! `isolab bench`: backends side by side, interleaved, into a run directory.
//!
//! Each repetition runs every backend once, in an order that rotates every
//! repetition (A B C, B C A, C A B …), so slow drift of the machine hits
//! every backend alike. Warm-up repetitions are run and thrown away. Rows
//! are appended to `samples.csv` as they are measured and the manifest is
//! written first, so an interrupted (Ctrl-C) run is still a valid, partial
//! run: its manifest simply has no `finished_at`.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use isolab_reports::stats;
use isolab_reports::{
    HostInfo, InstanceReport, Manifest, Sample, SampleWriter, MANIFEST_SCHEMA_VERSION,
};
use isolab_runtime::cgroups::Limits;

use crate::Backend;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Backends to compare (default: container plus every installed peer).
    #[arg(long, value_enum, value_delimiter = ',')]
    backends: Vec<Backend>,
    /// Scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "startup,idle,cpu,syscall,exit-cost,disk-read"
    )]
    scenarios: Vec<String>,
    /// Measured repetitions per backend and scenario.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100000))]
    repetitions: u32,
    /// Warm-up repetitions (not recorded).
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// Where run directories go.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Image to run.
    #[arg(long, default_value = crate::containers::DEFAULT_IMAGE)]
    image: String,
    /// A TOML file with the matrix (keys: backends, scenarios,
    /// repetitions, warmup, image); its keys replace the flags' values.
    #[arg(long, value_name = "FILE.toml")]
    matrix: Option<PathBuf>,
}

/// The matrix as a TOML file gives it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixFile {
    pub backends: Option<Vec<String>>,
    pub scenarios: Option<Vec<String>>,
    pub repetitions: Option<u32>,
    pub warmup: Option<u32>,
    pub image: Option<String>,
}

impl BenchArgs {
    /// Applies a matrix file's keys over the flags.
    fn apply_matrix(&mut self) -> Result<()> {
        let Some(path) = &self.matrix else {
            return Ok(());
        };
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read matrix file {}", path.display()))?;
        let m: MatrixFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("matrix file {}: {e}", path.display()))?;
        if let Some(b) = m.backends {
            self.backends = b
                .iter()
                .map(|x| <Backend as clap::ValueEnum>::from_str(x, true).map_err(|_| anyhow::anyhow!("matrix file {}: unknown backend {x:?}: use container, crun, runc, microvm or qemu", path.display())))
                .collect::<Result<_>>()?;
        }
        if let Some(s) = m.scenarios {
            self.scenarios = s;
        }
        if let Some(r) = m.repetitions {
            if r == 0 {
                bail!(
                    "matrix file {}: repetitions must be at least 1",
                    path.display()
                );
            }
            self.repetitions = r;
        }
        if let Some(w) = m.warmup {
            self.warmup = w;
        }
        if let Some(i) = m.image {
            self.image = i;
        }
        Ok(())
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// UTC time as RFC 3339 (no external time crate needed for this).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The rotated order for repetition `rep`.
pub fn rotation<T: Clone>(items: &[T], rep: usize) -> Vec<T> {
    let n = items.len();
    (0..n)
        .map(|i| items[(i + rep) % n.max(1)].clone())
        .collect()
}

/// Host metadata for the manifest.
pub fn host_info() -> HostInfo {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let flavour = crate::doctor::kvm_flavour_here();
    let mut peers = BTreeMap::new();
    for (n, p) in [
        ("crun", "crun"),
        ("runc", "runc"),
        ("qemu", "qemu-system-x86_64"),
    ] {
        if let Some((_, v)) = crate::host::peer_version(p) {
            peers.insert(n.to_owned(), v);
        }
    }
    let model = crate::host::cpu_model(&cpuinfo);
    let machine_id = fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let hostname = crate::host::read_trim("/proc/sys/kernel/hostname").unwrap_or_default();
    let host_id = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (machine_id.trim(), &model, &hostname).hash(&mut h);
        format!("{:016x}", h.finish())
    };
    HostInfo {
        host_id,
        hostname,
        cpu_model: model,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: crate::host::meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) * 1024,
        kernel: crate::host::kernel_release(),
        kvm_flavour: flavour.as_str().into(),
        nested: crate::host::is_nested(&cpuinfo),
        cgroup_mode: isolab_runtime::cgroups::CgroupLayout::detect()
            .map(|l| l.mode.as_str().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        peers,
    }
}

fn git_revision() -> String {
    option_env!("ISOLAB_GIT_REVISION")
        .map(str::to_owned)
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

/// Turns one instance report into sample rows.
pub fn samples_of(r: &InstanceReport, run_id: &str, host_id: &str, iteration: u32) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut push = |metric: String, unit: &str, value: f64| {
        out.push(Sample {
            run_id: run_id.into(),
            host_id: host_id.into(),
            backend: r.backend.clone(),
            guest: r.guest.clone(),
            scenario: r.scenario.clone(),
            iteration,
            metric,
            unit: unit.into(),
            value,
        })
    };
    if let Some(v) = r.launch_to_ready_ns {
        push("launch_to_ready".into(), "ns", v as f64);
    }
    if let Some(v) = r.launch_to_exit_ns {
        push("launch_to_exit".into(), "ns", v as f64);
    }
    for (k, v) in &r.phases_ns {
        push(format!("phase.{k}"), "ns", *v as f64);
    }
    for (k, v) in &r.memory_bytes {
        push(format!("memory.{k}"), "bytes", *v as f64);
    }
    if let Some(res) = &r.result {
        for m in res
            .get("metrics")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
        {
            if let (Some(n), Some(u), Some(v)) =
                (m["name"].as_str(), m["unit"].as_str(), m["value"].as_f64())
            {
                push(n.to_owned(), u, v);
            }
        }
    }
    out
}

fn run_one(
    home: &Path,
    backend: Backend,
    image: &str,
    scenario: &str,
) -> Result<(InstanceReport, String)> {
    let params: Vec<String> = match scenario {
        "idle" => vec!["hold_ms=200".into()],
        "syscall" => vec!["iterations=200000".into()],
        "exit-cost" => vec!["exits=2000".into()],
        "fork-exec" => vec!["iterations=20".into()],
        "file-io" => vec!["mib=16".into()],
        "net-loopback" => vec!["round_trips=500".into(), "mib=16".into()],
        _ => vec![],
    };
    let limits = Limits {
        memory_bytes: Some(256 << 20),
        pids: Some(1024),
        cpus: None,
    };
    // `disk-read`: every backend reads the same bytes — the image as ext4
    // — bound at /dev/vda in a container, a virtio disk in the VM (whose
    // harness attaches it itself).
    let container = matches!(backend, Backend::Container | Backend::Crun | Backend::Runc);
    let volumes = if scenario == "disk-read" && container {
        vec![isolab_runtime::container::Volume {
            source: crate::vms::image_disk(home)?,
            target: "/dev/vda".into(),
            read_only: true,
        }]
    } else {
        vec![]
    };
    let launch = isolab_runtime::container::monotonic_ns();
    match backend {
        Backend::Container => {
            let opts = crate::containers::RunOptions {
                image: image.into(),
                scenario: scenario.into(),
                params,
                limits,
                volumes,
                ..Default::default()
            };
            crate::containers::run_captured(home, &opts, launch)
        }
        Backend::Crun => crate::peers::run(
            home,
            crate::peers::Peer::Crun,
            image,
            scenario,
            &params,
            &limits,
            &volumes,
        ),
        Backend::Runc => crate::peers::run(
            home,
            crate::peers::Peer::Runc,
            image,
            scenario,
            &params,
            &limits,
            &volumes,
        ),
        Backend::Microvm | Backend::Qemu => {
            let opts = crate::vms::VmOptions {
                scenario: scenario.into(),
                params,
                home: Some(home.to_path_buf()),
                ..Default::default()
            };
            if backend == Backend::Microvm {
                crate::vms::run_microvm(&opts)
            } else {
                crate::vms::run_qemu(home, &opts)
            }
        }
    }
}

/// Whether a backend runs a scenario (the bare guest has no `idle`; the
/// agent has no `exit-cost`).
pub fn supports(b: Backend, scenario: &str) -> bool {
    match b {
        Backend::Container | Backend::Crun | Backend::Runc => [
            "startup",
            "idle",
            "cpu",
            "memory",
            "syscall",
            "fork-exec",
            "file-io",
            "net-loopback",
            "disk-read",
        ]
        .contains(&scenario),
        Backend::Microvm | Backend::Qemu => {
            ["startup", "cpu", "memory", "exit-cost"].contains(&scenario) || scenario == "disk-read"
        }
    }
}

/// The backend a peer is compared with.
pub fn baseline(backend: &str) -> Option<&'static str> {
    match backend {
        "crun" | "runc" => Some("container"),
        "qemu" => Some("microvm"),
        _ => None,
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Container => "container",
        Backend::Crun => "crun",
        Backend::Runc => "runc",
        Backend::Microvm => "microvm",
        Backend::Qemu => "qemu",
    }
}

/// Runs the bench; returns the exit code and the run directory written.
pub fn run(home: &Path, mut a: BenchArgs) -> Result<(ExitCode, PathBuf)> {
    a.apply_matrix()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("bench needs root (namespaces, overlayfs, cgroups): run it with sudo");
    }
    let mut notes = Vec::new();
    let kvm_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let backends: Vec<Backend> = if a.backends.is_empty() {
        let mut v = vec![Backend::Container];
        for (b, p) in [
            (Backend::Crun, crate::peers::Peer::Crun),
            (Backend::Runc, crate::peers::Peer::Runc),
        ] {
            if p.program().is_some() {
                v.push(b);
            } else {
                let s = p.skipped();
                eprintln!("isolab: {s}");
                notes.push(s);
            }
        }
        if kvm_ok && crate::vms::vmm_binary().is_some() {
            v.push(Backend::Microvm);
            if crate::host::which("qemu-system-x86_64").is_some() {
                v.push(Backend::Qemu);
            } else {
                let s = "qemu-system-x86_64 is not installed: skipped (install it with `apt-get install qemu-system-x86`)".to_owned();
                eprintln!("isolab: {s}");
                notes.push(s);
            }
        } else {
            let s = "no usable /dev/kvm (or no isolab-vmm next to isolab): the microvm and qemu backends are skipped (see `isolab doctor`)".to_owned();
            eprintln!("isolab: {s}");
            notes.push(s);
        }
        v
    } else {
        let mut v = Vec::new();
        for b in a.backends.iter().copied() {
            let peer = match b {
                Backend::Crun => Some(crate::peers::Peer::Crun),
                Backend::Runc => Some(crate::peers::Peer::Runc),
                _ => None,
            };
            if let Some(p) = peer.filter(|p| p.program().is_none()) {
                let s = p.skipped();
                eprintln!("isolab: {s}");
                notes.push(s);
            } else if !v.contains(&b) {
                v.push(b);
            }
        }
        v
    };
    for s in &a.scenarios {
        const KNOWN: [&str; 10] = [
            "startup",
            "idle",
            "cpu",
            "memory",
            "exit-cost",
            "disk-read",
            "syscall",
            "fork-exec",
            "file-io",
            "net-loopback",
        ];
        if !KNOWN.contains(&s.as_str()) {
            bail!("unknown scenario {s:?} for bench: use {}", KNOWN.join(", "));
        }
        for b in &backends {
            if !supports(*b, s) {
                notes.push(format!(
                    "{} does not run the {s} scenario: that cell is empty",
                    backend_name(*b)
                ));
            }
        }
    }
    // disk-read needs the image as ext4 (e2fsprogs): build it once, here,
    // and drop the scenario with one note if it cannot be built, rather
    // than fail every repetition.
    if a.scenarios.iter().any(|s| s == "disk-read") {
        if let Err(e) = crate::vms::image_disk(home) {
            let s = format!("the disk-read scenario is skipped: {e:#}");
            eprintln!("isolab: {s}");
            notes.push(s);
            a.scenarios.retain(|s| s != "disk-read");
        }
    }
    let host = host_info();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_id = format!(
        "{}-{}",
        rfc3339(started).replace([':', '-'], ""),
        &crate::containers::new_id()[..6]
    );
    let dir = a.results.join(&run_id);
    fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    if host.kvm_flavour == "pvm" {
        notes.push("host KVM is PVM (software-assisted nested virtualisation): VM figures are not comparable with hardware KVM".into());
    }
    let mut parameters = BTreeMap::new();
    parameters.insert(
        "backends".into(),
        serde_json::json!(backends
            .iter()
            .map(|b| backend_name(*b))
            .collect::<Vec<_>>()),
    );
    parameters.insert("scenarios".into(), serde_json::json!(a.scenarios));
    parameters.insert("repetitions".into(), serde_json::json!(a.repetitions));
    parameters.insert("warmup".into(), serde_json::json!(a.warmup));
    parameters.insert("image".into(), serde_json::json!(a.image));
    parameters.insert(
        "order".into(),
        serde_json::json!("interleaved, rotated every repetition"),
    );
    let mut manifest = Manifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        run_id: run_id.clone(),
        command: "bench".into(),
        isolab_revision: git_revision(),
        started_at: rfc3339(started),
        finished_at: None,
        host: host.clone(),
        parameters,
        notes,
    };
    fs::write(dir.join("manifest.json"), manifest.to_json()?)?;
    let csv_path = dir.join("samples.csv");
    let mut csv = SampleWriter::new(fs::File::create(&csv_path)?)?;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    let cells: usize = a
        .scenarios
        .iter()
        .map(|s| backends.iter().filter(|b| supports(**b, s)).count())
        .sum();
    let total = (a.warmup + a.repetitions) as u64 * cells as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut collected: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    let mut failures = 0u32;
    'outer: for scenario in &a.scenarios {
        for rep in 0..(a.warmup + a.repetitions) {
            for b in rotation(&backends, rep as usize) {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    break 'outer;
                }
                if !supports(b, scenario) {
                    continue;
                }
                bar.set_message(format!("{} {scenario}", backend_name(b)));
                let res = run_one(home, b, &a.image, scenario);
                bar.inc(1);
                let measured = rep >= a.warmup;
                match res {
                    Ok((report, output)) => {
                        if measured {
                            let iteration = rep - a.warmup;
                            let _ = fs::write(
                                dir.join("logs").join(format!(
                                    "{}-{scenario}-{iteration}.log",
                                    backend_name(b)
                                )),
                                &output,
                            );
                            for s in samples_of(&report, &run_id, &host.host_id, iteration) {
                                collected
                                    .entry((
                                        s.scenario.clone(),
                                        s.metric.clone(),
                                        s.backend.clone(),
                                    ))
                                    .or_default()
                                    .push(s.value);
                                csv.append(&s)?;
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        bar.println(format!(
                            "isolab: {} {scenario} repetition {rep} failed: {e:#}",
                            backend_name(b)
                        ));
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    if !INTERRUPTED.load(Ordering::SeqCst) && backends.contains(&Backend::Container) {
        match disk_samples(home, &a.image, &run_id, &host.host_id, 5) {
            Ok(rows) => {
                for s in rows {
                    csv.append(&s)?;
                }
            }
            Err(e) => eprintln!("isolab: measuring disk footprint failed: {e:#}"),
        }
    }
    // SAFETY: restores the default SIGINT disposition.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let interrupted = INTERRUPTED.load(Ordering::SeqCst);
    if !interrupted {
        manifest.finished_at = Some(rfc3339_now());
    } else {
        manifest.notes.push("interrupted: partial run".into());
    }
    fs::write(dir.join("manifest.json"), manifest.to_json()?)?;
    print!("{}", summary(&collected));
    println!(
        "run directory: {}{}",
        dir.display(),
        if interrupted {
            " (interrupted: partial run)"
        } else {
            ""
        }
    );
    if failures > 0 {
        eprintln!("isolab: {failures} instance(s) failed; see the messages above");
    }
    let code = if interrupted || failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    Ok((code, dir))
}

/// A text summary: per scenario and metric, each backend's median, p95 and
/// CI, and the ratio of its median to the container backend's.
pub fn summary(collected: &BTreeMap<(String, String, String), Vec<f64>>) -> String {
    let mut out = String::new();
    let wanted = [
        "launch_to_ready",
        "launch_to_exit",
        "memory.hold_cgroup_charged",
        "memory.monitor_rss_beyond_guest",
        "memory.monitor_rss_at_ready",
        "cpu.sha256",
        "disk.read_rate",
        "vm.exit_cost",
        "syscall.getppid",
    ];
    for ((scenario, metric, backend), values) in collected {
        if !wanted.contains(&metric.as_str()) {
            continue;
        }
        let Some(s) = stats::summarize(values) else {
            continue;
        };
        // QEMU's memory figure is its RSS at ready; it is compared with our
        // monitor's RSS beyond the guest's pages.
        let base_metric = if metric == "memory.monitor_rss_at_ready" {
            "memory.monitor_rss_beyond_guest"
        } else {
            metric.as_str()
        };
        let ratio = baseline(backend)
            .and_then(|base| {
                collected
                    .get(&(scenario.clone(), base_metric.to_owned(), base.to_owned()))
                    .map(|v| (base, v))
            })
            .and_then(|(base, b)| stats::ratio_of_medians(b, values).map(|r| (base, r)))
            .map(|(base, (r, (lo, hi)))| format!("{base}/{backend} = {r:.2} [{lo:.2}, {hi:.2}]"))
            .unwrap_or_default();
        let (scale, unit) = if metric.starts_with("memory") {
            (1.0 / 1024.0, "KiB")
        } else if metric == "cpu.sha256" || metric == "disk.read_rate" {
            (1.0 / 1048576.0, "MiB/s")
        } else if metric == "vm.exit_cost" || metric == "syscall.getppid" {
            (1e-3, "us")
        } else {
            (1e-6, "ms")
        };
        out.push_str(&format!(
            "{scenario:<8} {metric:<28} {backend:<10} n={:<4} median {:>9.3} {unit}  p95 {:>9.3}  CI95 [{:.3}, {:.3}]  {ratio}\n",
            s.n,
            s.median * scale,
            s.p95 * scale,
            s.ci95.0 * scale,
            s.ci95.1 * scale
        ));
        if metric == "launch_to_exit" {
            out.push_str(&format!(
                "{scenario:<8} {:<28} {backend:<10} {:.1} instances/s (sequential, 1/mean)\n",
                "throughput",
                1e9 / s.mean
            ));
        }
    }
    out
}

/// Apparent and allocated bytes of a file tree.
pub fn du(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        apparent += md.len();
        allocated += md.blocks() * 512;
        if md.is_dir() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    (apparent, allocated)
}

/// Disk footprint, measured: the image (compressed layers, unpacked
/// rootfs), VM artifacts, and the writable bytes of 1 and N instances.
pub fn disk_samples(
    home: &Path,
    image: &str,
    run_id: &str,
    host_id: &str,
    instances: u32,
) -> Result<Vec<Sample>> {
    let img = crate::containers::open_image(home, image)?;
    let store = isolab_runtime::image::Store::new(home);
    let mut out = Vec::new();
    let mut push = |backend: &str, guest: &str, metric: &str, v: u64| {
        out.push(Sample {
            run_id: run_id.into(),
            host_id: host_id.into(),
            backend: backend.into(),
            guest: guest.into(),
            scenario: "disk".into(),
            iteration: 0,
            metric: format!("disk.{metric}"),
            unit: "bytes".into(),
            value: v as f64,
        })
    };
    let compressed: u64 = img
        .layers
        .iter()
        .map(|l| {
            fs::metadata(store.blob_path(l))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let (mut apparent, mut allocated) = (0, 0);
    for l in &img.layers {
        let (a, b) = du(&store.layer_dir(l));
        apparent += a;
        allocated += b;
    }
    push("container", "agent", "image_layers_compressed", compressed);
    push("container", "agent", "image_unpacked_apparent", apparent);
    push("container", "agent", "image_unpacked_allocated", allocated);
    // N idle containers side by side: their writable (upper) dirs.
    let mut ids = Vec::new();
    for _ in 0..instances {
        let opts = crate::containers::RunOptions {
            image: image.into(),
            scenario: "idle".into(),
            params: vec!["hold_ms=5000".into()],
            limits: Limits {
                memory_bytes: Some(256 << 20),
                pids: Some(1024),
                cpus: None,
            },
            ..Default::default()
        };
        ids.push(crate::containers::run_detached(home, &opts)?);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut uppers = Vec::new();
    for id in &ids {
        uppers.push(du(&home.join("containers").join(id).join("fs/upper")).1);
    }
    for id in &ids {
        let _ = crate::containers::rm(home, id, true);
    }
    let one = uppers.first().copied().unwrap_or(0);
    let all: u64 = uppers.iter().sum();
    push("container", "agent", "writable_per_instance", one);
    push(
        "container",
        "agent",
        "total_for_1_instance",
        allocated + one,
    );
    push(
        "container",
        "agent",
        &format!("total_for_{instances}_instances"),
        allocated + all,
    );
    // The bare VM guest: a few KiB of ELF, inside the monitor binary; no
    // per-instance disk (its memory is its only state).
    let guest = isolab_microvm::BARE_GUEST.len() as u64;
    let vmm = crate::vms::vmm_binary()
        .and_then(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .unwrap_or(0);
    push("microvm", "bare", "guest_image", guest);
    push("microvm", "bare", "monitor_binary", vmm);
    push("microvm", "bare", "writable_per_instance", 0);
    // The image as the read-only ext4 disk a VM attaches (`--disk image`).
    if let Ok(d) = crate::vms::image_disk(home) {
        if let Ok(md) = std::fs::metadata(&d) {
            push("microvm", "bare", "image_as_ext4_disk", md.len());
        }
    }
    push(
        "microvm",
        "bare",
        &format!("total_for_{instances}_instances"),
        guest + vmm,
    );
    // A Linux guest: the distro kernel plus the initramfs from the image.
    if let Ok(k) = isolab_microvm::kernel::find_in(Path::new("/boot")) {
        let kb = fs::metadata(&k).map(|m| m.len()).unwrap_or(0);
        let tree = isolab_runtime::initramfs::merged_tree(&store, &img)?;
        let initrd = isolab_runtime::initramfs::write_cpio(&tree).len() as u64;
        push("microvm", "linux", "linux_kernel", kb);
        push("microvm", "linux", "linux_initramfs", initrd);
        push(
            "microvm",
            "linux",
            &format!("linux_total_for_{instances}_instances"),
            kb + initrd,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_file_replaces_flags_and_rejects_junk() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            b: BenchArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(
            &f,
            "backends = [\"container\", \"qemu\"]\nscenarios = [\"startup\"]\nrepetitions = 7\n",
        )
        .unwrap();
        let mut t = T::parse_from(["x", "--matrix", f.to_str().unwrap()]);
        t.b.apply_matrix().unwrap();
        assert_eq!(t.b.backends, vec![Backend::Container, Backend::Qemu]);
        assert_eq!(
            (t.b.scenarios.clone(), t.b.repetitions, t.b.warmup),
            (vec!["startup".to_owned()], 7, 3)
        );
        std::fs::write(&f, "backends = [\"docker\"]\n").unwrap();
        assert!(T::parse_from(["x", "--matrix", f.to_str().unwrap()])
            .b
            .apply_matrix()
            .unwrap_err()
            .to_string()
            .contains("unknown backend"));
        std::fs::write(&f, "repetition = 3\n").unwrap();
        assert!(
            T::parse_from(["x", "--matrix", f.to_str().unwrap()])
                .b
                .apply_matrix()
                .is_err(),
            "a misspelt key is an error"
        );
    }

    #[test]
    fn scenario_support_and_baselines() {
        assert!(supports(Backend::Container, "idle") && !supports(Backend::Microvm, "idle"));
        assert!(supports(Backend::Qemu, "exit-cost") && !supports(Backend::Crun, "exit-cost"));
        assert!(supports(Backend::Microvm, "disk-read") && supports(Backend::Qemu, "disk-read"));
        assert!(supports(Backend::Crun, "disk-read"));
        assert!(supports(Backend::Container, "syscall") && supports(Backend::Runc, "net-loopback"));
        assert!(!supports(Backend::Microvm, "syscall"));
        assert_eq!(baseline("crun"), Some("container"));
        assert_eq!(baseline("qemu"), Some("microvm"));
        assert_eq!(baseline("container"), None);
    }

    #[test]
    fn summary_shows_ratios_against_the_baseline() {
        let mut c = BTreeMap::new();
        c.insert(
            (
                "startup".to_owned(),
                "launch_to_exit".to_owned(),
                "container".to_owned(),
            ),
            vec![5e6; 10],
        );
        c.insert(
            (
                "startup".to_owned(),
                "launch_to_exit".to_owned(),
                "crun".to_owned(),
            ),
            vec![10e6; 10],
        );
        let s = summary(&c);
        assert!(s.contains("container/crun = 0.50"), "{s}");
        assert!(s.contains("median     5.000 ms"), "{s}");
    }

    #[test]
    fn rotation_interleaves() {
        let v = ["a", "b", "c"];
        assert_eq!(rotation(&v, 0), vec!["a", "b", "c"]);
        assert_eq!(rotation(&v, 1), vec!["b", "c", "a"]);
        assert_eq!(rotation(&v, 5), vec!["c", "a", "b"]);
        assert!(rotation::<u8>(&[], 3).is_empty());
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_905_480), "2026-11-28T22:38:00Z");
    }
}
