//! A run as the report reads it: its manifest and samples, grouped by
//! (scenario, metric, backend), and the small helpers every section uses.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use isolab_reports::{read_samples, Manifest, Sample};

/// Published reference figures drawn on the charts, with their sources.
pub const REFERENCES: &[(&str, f64, &str)] = &[
    (
        "Firecracker boot to init",
        125.0,
        "Firecracker's specification: a microVM boots to user-space init in ≤ 125 ms",
    ),
    (
        "LightVM boot",
        2.3,
        "Manco et al., 'My VM is Lighter (and Safer) than your Container', SOSP 2017: 2.3 ms",
    ),
];
/// Firecracker's documented monitor overhead (≤ 5 MiB), KiB.
pub const FIRECRACKER_OVERHEAD_KIB: f64 = 5.0 * 1024.0;

/// The newest run directory under `results`.
pub fn latest_run(results: &Path) -> Result<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(results)
        .with_context(|| {
            format!(
                "no results in {}: run `isolab bench` first",
                results.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("samples.csv").is_file())
        .collect();
    // Newest by the time its manifest was last written (names can tie
    // within a second).
    runs.sort_by_key(|p| {
        std::fs::metadata(p.join("manifest.json"))
            .and_then(|m| m.modified())
            .ok()
    });
    runs.pop()
        .ok_or_else(|| anyhow!("no run in {}: run `isolab bench` first", results.display()))
}

/// A loaded run.
pub struct Run {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub samples: Vec<Sample>,
}

pub fn load_run(dir: &Path) -> Result<Run> {
    let m = std::fs::read_to_string(dir.join("manifest.json")).with_context(|| {
        format!(
            "{} is not a run directory (no manifest.json)",
            dir.display()
        )
    })?;
    let manifest = Manifest::from_json(&m)
        .with_context(|| format!("{}/manifest.json is not an isolab manifest", dir.display()))?;
    let f = std::fs::File::open(dir.join("samples.csv"))
        .with_context(|| format!("{} has no samples.csv", dir.display()))?;
    let samples = read_samples(f)?;
    Ok(Run {
        dir: dir.to_path_buf(),
        manifest,
        samples,
    })
}

pub type Key = (String, String, String); // scenario, metric, backend

/// A run's samples by (scenario, metric, backend).
pub type Collected = BTreeMap<Key, Vec<f64>>;

pub fn collect(samples: &[Sample]) -> Collected {
    let mut m: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for s in samples {
        m.entry((s.scenario.clone(), s.metric.clone(), s.backend.clone()))
            .or_default()
            .push(s.value);
    }
    m
}

pub fn backends_in(c: &BTreeMap<Key, Vec<f64>>, scenario: &str, metric: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .keys()
        .filter(|k| k.0 == scenario && k.1 == metric)
        .map(|k| k.2.clone())
        .collect();
    v.sort_by_key(|b| crate::backends::order_of(b));
    v
}

pub fn ms(ns: f64) -> String {
    format!("{:.2}", ns / 1e6)
}

/// What a KVM flavour means for the results, for every results page.
pub fn host_note(m: &Manifest) -> String {
    match m.host.kvm_flavour.as_str() {
        "pvm" => "**This run was made on a PVM host** (software-assisted nested KVM, no VMX/SVM). Here a guest's ring 0 runs in KVM's instruction emulator and a stock Linux kernel cannot boot to init; a VM exit costs some tens of microseconds (30–90 µs measured on these hosts, against a few microseconds for an exit to the monitor on hardware KVM). The bare lab guest therefore runs its workload in ring 3, which PVM executes natively. VM startup and exit-cost figures from this host are *not* representative of hardware KVM; container figures are.".into(),
        "hardware-vmx" | "hardware-svm" => format!("This run was made on a host with hardware virtualisation ({}): VM figures are representative of KVM on bare metal (or of nested hardware KVM, see the host table).", m.host.kvm_flavour),
        "none" => "This run was made on a host without KVM: only the container backends ran.".into(),
        other => format!("This run was made on a host whose KVM flavour is {other}: treat VM figures with care."),
    }
}

pub fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes one number snippet the prose includes.
pub fn num(out: &Path, name: &str, value: String) -> Result<()> {
    write(&out.join("numbers").join(format!("{name}.txt")), &value)
}

pub fn placeholder_svg(text: &str) -> String {
    format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"60\"><text x=\"10\" y=\"35\" font-family=\"sans-serif\" font-size=\"16\">{text}</text></svg>\n")
}

/// Orders phases as they happen (the shared stage list).
pub fn phase_order(name: &str) -> f64 {
    isolab_abi::stage::Stage::order_of(name) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_sort_in_time_order() {
        let mut v = vec!["exec", "clone", "mounts", "cgroup"];
        v.sort_by(|a, b| phase_order(a).total_cmp(&phase_order(b)));
        assert_eq!(v, ["clone", "cgroup", "mounts", "exec"]);
    }

    #[test]
    fn host_note_says_what_pvm_means() {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "run_id": "r", "command": "bench", "isolab_revision": "x",
            "started_at": "t", "host": {"host_id": "h", "hostname": "h", "cpu_model": "c", "cpus": 2,
            "memory_bytes": 1, "kernel": "k", "kvm_flavour": "pvm", "nested": true, "cgroup_mode": "hybrid", "peers": {}},
            "parameters": {}
        }))
        .unwrap();
        assert!(host_note(&m).contains("PVM host"));
        m.host.kvm_flavour = "hardware-vmx".into();
        assert!(host_note(&m).contains("hardware virtualisation"));
    }
}
