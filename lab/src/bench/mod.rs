//! `isolab bench`: backends side by side, interleaved, into a run directory.
//!
//! Each repetition runs every backend once, in an order that rotates every
//! repetition (A B C, B C A, C A B …), so slow drift of the machine hits
//! every backend alike. Warm-up repetitions are run and thrown away. Rows
//! are appended to `samples.csv` as they are measured and the manifest is
//! written first, so an interrupted (Ctrl-C) run is still a valid, partial
//! run: its manifest simply has no `finished_at`.
//!
//! What runs comes from two tables: the backends from
//! [`crate::backend::registry`], the scenarios and their parameters from
//! the catalog.
pub mod footprint;
pub mod summary;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use isolab_abi::catalog::{self, name as sc, Scenario};
use isolab_reports::{Manifest, SampleWriter, MANIFEST_SCHEMA_VERSION};

use crate::backend::{Backend, InstanceSpec, Kind, Outcome};
use crate::home::Home;

pub use footprint::{disk_samples, du};
pub use summary::{samples_of, summary};

/// What to bench.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Backend names (empty: every backend available here).
    pub backends: Vec<String>,
    /// Scenario names.
    pub scenarios: Vec<String>,
    pub repetitions: u32,
    pub warmup: u32,
    /// Where run directories go.
    pub results: PathBuf,
    pub image: String,
    /// `--network bridge|host`: every instance on that network (only the
    /// backends that join it are benched); none by default.
    pub network: crate::network::Mode,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            backends: vec![],
            scenarios: default_scenarios(),
            repetitions: 20,
            warmup: 3,
            results: "results".into(),
            image: crate::images::DEFAULT_IMAGE.into(),
            network: crate::network::Mode::None,
        }
    }
}

/// The catalog's default bench set.
pub fn default_scenarios() -> Vec<String> {
    catalog::CATALOG
        .iter()
        .filter(|s| s.bench_default)
        .map(|s| s.name.to_owned())
        .collect()
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

impl BenchOptions {
    /// Applies a matrix file's keys over these options.
    pub fn apply_matrix(&mut self, path: &Path) -> Result<()> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read matrix file {}", path.display()))?;
        let m: MatrixFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("matrix file {}: {e}", path.display()))?;
        if let Some(b) = m.backends {
            for x in &b {
                crate::backends::find(x)
                    .map_err(|e| anyhow::anyhow!("matrix file {}: {e}", path.display()))?;
            }
            self.backends = b;
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

/// The rotated order for repetition `rep`.
pub fn rotation<T: Clone>(items: &[T], rep: usize) -> Vec<T> {
    let n = items.len();
    (0..n)
        .map(|i| items[(i + rep) % n.max(1)].clone())
        .collect()
}

fn git_revision() -> String {
    option_env!("ISOLAB_GIT_REVISION")
        .map(str::to_owned)
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

/// The instance the bench runs for one scenario on one backend.
pub fn bench_spec(
    home: &Home,
    backend: &dyn Backend,
    image: &str,
    scenario: &Scenario,
) -> Result<InstanceSpec> {
    let mut spec = InstanceSpec {
        image: image.into(),
        scenario: scenario.name.into(),
        params: scenario
            .bench_params()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        limits: crate::backend::bench_limits(),
        ..Default::default()
    };
    spec.vm.timeout = Some(std::time::Duration::from_secs(30));
    // A scenario that talks to the host goes through the lab bridge (a
    // veth), as Docker's default network does; its loopback floor is
    // measured in the same instance.
    if scenario.needs_network() {
        spec.net.mode = crate::network::Mode::Bridge;
    }
    // `disk-read`: every backend reads the same bytes — the image as ext4
    // — bound at /dev/vda in a container, a virtio disk in the VM (whose
    // harness attaches it itself).
    if scenario.name == sc::DISK_READ && backend.kind() == Kind::Container {
        spec.volumes = vec![isolab_runtime::container::Volume {
            source: crate::images::image_disk(home)?,
            target: "/dev/vda".into(),
            read_only: true,
        }];
    }
    Ok(spec)
}

/// One repetition, timed the same way for every backend: a fresh process
/// spawned by this harness (the lab's own runtime as `isolab run`, as a
/// user types it; crun, runc, `isolab-vmm` and QEMU as themselves),
/// launch at the spawn, reaped by the harness.
fn run_one(
    home: &Home,
    backend: &dyn Backend,
    image: &str,
    scenario: &Scenario,
    network: crate::network::Mode,
) -> Result<Outcome> {
    let mut spec = bench_spec(home, backend, image, scenario)?;
    if network != crate::network::Mode::None {
        spec.net.mode = network;
    }
    if backend.runs_in_process() {
        crate::run::as_process(home, backend, &spec)
    } else {
        backend.run(home, &spec)
    }
}

/// The backends to bench: the named ones, or every available one; an
/// unavailable backend is skipped with one note saying why.
fn pick_backends(names: &[String], notes: &mut Vec<String>) -> Result<Vec<&'static dyn Backend>> {
    let wanted: Vec<&'static dyn Backend> = if names.is_empty() {
        crate::backends::registry()
            .iter()
            .copied()
            .filter(|b| b.timed())
            .collect()
    } else {
        names
            .iter()
            .map(|n| crate::backends::find(n))
            .collect::<Result<_>>()?
    };
    if let Some(b) = wanted.iter().find(|b| !b.timed()) {
        anyhow::bail!(
            "{} is software emulation and is never timed: bench the other backends, and use `isolab run --backend {0}` or `isolab probes` for what it shows",
            b.name()
        );
    }
    let mut picked: Vec<&'static dyn Backend> = Vec::new();
    for b in wanted {
        if picked.iter().any(|p| p.name() == b.name()) {
            continue;
        }
        match b.available() {
            Ok(()) => picked.push(b),
            Err(u) => {
                let s = format!("{}: {u}", b.name());
                eprintln!("isolab: {s}");
                notes.push(s);
            }
        }
    }
    Ok(picked)
}

/// The catalog entries for the asked scenarios.
fn pick_scenarios(names: &[String]) -> Result<Vec<&'static Scenario>> {
    names
        .iter()
        .map(|s| {
            catalog::find(s).filter(|e| e.benchable).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown scenario {s:?} for bench: use {}",
                    catalog::CATALOG
                        .iter()
                        .filter(|e| e.benchable)
                        .map(|e| e.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

/// Runs the bench; returns whether every instance succeeded and the run
/// directory written.
pub fn run(home: &Home, mut a: BenchOptions) -> Result<(bool, PathBuf)> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench needs root (namespaces, overlayfs, cgroups): run it with sudo");
    }
    let mut notes = Vec::new();
    let mut backends = pick_backends(&a.backends, &mut notes)?;
    if a.network != crate::network::Mode::None {
        backends.retain(|b| {
            let ok = b.supports_network()
                && (a.network == crate::network::Mode::Bridge || b.name() == "container");
            if !ok {
                let s = format!(
                    "{}: skipped (it does not join --network {})",
                    b.name(),
                    a.network.as_str()
                );
                eprintln!("isolab: {s}");
                notes.push(s);
            }
            ok
        });
        if backends.is_empty() {
            bail!(
                "no backend here joins --network {}: bench container (or, on the bridge, crun, runc, microvm and qemu)",
                a.network.as_str()
            );
        }
    }
    let mut scenarios = pick_scenarios(&a.scenarios)?;
    let default_spec = InstanceSpec::default();
    for s in &scenarios {
        for b in &backends {
            if !b.supports(s, &default_spec) {
                notes.push(format!(
                    "{} does not run the {} scenario: that cell is empty",
                    b.name(),
                    s.name
                ));
            }
        }
    }
    // disk-read needs the image as ext4 (e2fsprogs): build it once, here,
    // and drop the scenario with one note if it cannot be built, rather
    // than fail every repetition.
    if scenarios.iter().any(|s| s.name == sc::DISK_READ) {
        if let Err(e) = crate::images::image_disk(home) {
            let s = format!("the disk-read scenario is skipped: {e:#}");
            eprintln!("isolab: {s}");
            notes.push(s);
            scenarios.retain(|s| s.name != sc::DISK_READ);
        }
    }
    // The image (built here on a first run) before anything is timed.
    crate::images::open(home, &a.image)?;
    a.scenarios = scenarios.iter().map(|s| s.name.to_owned()).collect();
    let host = crate::host::host_info();
    let started = crate::clock::unix_now();
    let run_id = format!(
        "{}-{}",
        crate::clock::rfc3339(started).replace([':', '-'], ""),
        &crate::instances::new_id()[..6]
    );
    let dir = a.results.join(&run_id);
    fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    if let Some([one, _, _]) = host.loadavg {
        if one > f64::from(host.cpus) * 0.5 {
            let s = format!(
                "the host was busy when the run started (load {one:.2} on {} CPUs): intervals will be wide; rerun on a quieter host to compare absolute times",
                host.cpus
            );
            eprintln!("isolab: {s}");
            notes.push(s);
        }
    }
    if a.repetitions < 10 {
        notes.push(format!(
            "only {} repetitions per cell: medians and intervals from fewer than 10 are rough",
            a.repetitions
        ));
    }
    if host.kvm_flavour == "pvm" {
        notes.push("host KVM is PVM (software-assisted nested virtualisation): VM figures are not comparable with hardware KVM".into());
    }
    let mut manifest = manifest_for(&a, &backends, &run_id, started, host.clone(), notes);
    fs::write(dir.join("manifest.json"), manifest.to_json()?)?;
    let mut csv = SampleWriter::new(fs::File::create(dir.join("samples.csv"))?)?;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    let (collected, failures) = measure(
        home,
        &a,
        &backends,
        &scenarios,
        &dir,
        &run_id,
        &host.host_id,
        &mut csv,
    )?;
    if !INTERRUPTED.load(Ordering::SeqCst) && backends.iter().any(|b| b.name() == "container") {
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
        manifest.finished_at = Some(crate::clock::rfc3339_now());
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
    Ok((!interrupted && failures == 0, dir))
}

/// The run's manifest, as written before the first repetition.
fn manifest_for(
    a: &BenchOptions,
    backends: &[&'static dyn Backend],
    run_id: &str,
    started: u64,
    host: isolab_reports::HostInfo,
    notes: Vec<String>,
) -> Manifest {
    let mut parameters = BTreeMap::new();
    parameters.insert(
        "backends".into(),
        serde_json::json!(backends.iter().map(|b| b.name()).collect::<Vec<_>>()),
    );
    parameters.insert("scenarios".into(), serde_json::json!(a.scenarios));
    parameters.insert("repetitions".into(), serde_json::json!(a.repetitions));
    parameters.insert("warmup".into(), serde_json::json!(a.warmup));
    parameters.insert("image".into(), serde_json::json!(a.image));
    parameters.insert("network".into(), serde_json::json!(a.network.as_str()));
    parameters.insert(
        "order".into(),
        serde_json::json!("interleaved, rotated every repetition"),
    );
    Manifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        run_id: run_id.to_owned(),
        command: "bench".into(),
        isolab_revision: git_revision(),
        started_at: crate::clock::rfc3339(started),
        finished_at: None,
        host: host.clone(),
        parameters,
        notes,
    }
}

/// What the repetitions measured: values by (scenario, metric, backend).
type Collected = BTreeMap<(String, String, String), Vec<f64>>;

/// Runs every repetition of every cell, interleaved, appending rows as
/// they are measured; returns the values and how many instances failed.
#[allow(clippy::too_many_arguments)]
fn measure(
    home: &Home,
    a: &BenchOptions,
    backends: &[&'static dyn Backend],
    scenarios: &[&'static Scenario],
    dir: &Path,
    run_id: &str,
    host_id: &str,
    csv: &mut SampleWriter<fs::File>,
) -> Result<(Collected, u32)> {
    let default_spec = InstanceSpec::default();
    let cells: usize = scenarios
        .iter()
        .map(|s| {
            backends
                .iter()
                .filter(|b| b.supports(s, &default_spec))
                .count()
        })
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
    'outer: for scenario in scenarios {
        for rep in 0..(a.warmup + a.repetitions) {
            for b in rotation(backends, rep as usize) {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    break 'outer;
                }
                if !b.supports(scenario, &default_spec) {
                    continue;
                }
                bar.set_message(format!("{} {}", b.name(), scenario.name));
                let res = run_one(home, b, &a.image, scenario, a.network);
                bar.inc(1);
                if rep < a.warmup {
                    continue;
                }
                let iteration = rep - a.warmup;
                match res {
                    Ok(Outcome { report, output }) => {
                        let _ = fs::write(
                            dir.join("logs").join(format!(
                                "{}-{}-{iteration}.log",
                                b.name(),
                                scenario.name
                            )),
                            &output,
                        );
                        for s in samples_of(&report, run_id, host_id, iteration) {
                            collected
                                .entry((s.scenario.clone(), s.metric.clone(), s.backend.clone()))
                                .or_default()
                                .push(s.value);
                            csv.append(&s)?;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        let line = format!(
                            "isolab: {} {} repetition {rep} failed: {e:#}",
                            b.name(),
                            scenario.name
                        );
                        // A hidden bar (stderr not a terminal) prints nothing.
                        if bar.is_hidden() {
                            eprintln!("{line}");
                        } else {
                            bar.println(line);
                        }
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok((collected, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_file_replaces_options_and_rejects_junk() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(
            &f,
            "backends = [\"container\", \"qemu\"]\nscenarios = [\"startup\"]\nrepetitions = 7\n",
        )
        .unwrap();
        let mut o = BenchOptions::default();
        o.apply_matrix(&f).unwrap();
        assert_eq!(o.backends, ["container", "qemu"]);
        assert_eq!(
            (o.scenarios.clone(), o.repetitions, o.warmup),
            (vec!["startup".to_owned()], 7, 3)
        );
        std::fs::write(&f, "backends = [\"lxc\"]\n").unwrap();
        assert!(BenchOptions::default()
            .apply_matrix(&f)
            .unwrap_err()
            .to_string()
            .contains("unknown backend"));
        std::fs::write(&f, "repetition = 3\n").unwrap();
        assert!(
            BenchOptions::default().apply_matrix(&f).is_err(),
            "a misspelt key is an error"
        );
    }

    #[test]
    fn the_default_set_and_bench_parameters_come_from_the_catalog() {
        assert_eq!(
            default_scenarios(),
            [
                "startup",
                "idle",
                "cpu",
                "syscall",
                "exit-cost",
                "disk-read"
            ]
        );
        assert!(pick_scenarios(&["hang".into()])
            .unwrap_err()
            .to_string()
            .contains("for bench"));
        let home = Home::new("/nonexistent");
        let c = crate::backends::find("container").unwrap();
        let s = bench_spec(&home, c, "default", catalog::find(sc::IDLE).unwrap()).unwrap();
        assert_eq!(s.params, ["hold_ms=200"]);
        assert_eq!(s.limits.memory_bytes, Some(256 << 20));
    }

    #[test]
    fn rotation_interleaves() {
        let v = ["a", "b", "c"];
        assert_eq!(rotation(&v, 0), vec!["a", "b", "c"]);
        assert_eq!(rotation(&v, 1), vec!["b", "c", "a"]);
        assert_eq!(rotation(&v, 5), vec!["c", "a", "b"]);
        assert!(rotation::<u8>(&[], 3).is_empty());
    }
}
