//! `isolab probes`: the isolation probes on every available backend, side
//! by side.
use std::collections::BTreeMap;

use anyhow::Result;
use isolab_abi::catalog::name as sc;
use isolab_reports::Sample;
use isolab_scenarios::probes::{self, Probe, Verdict};

use crate::backend::{Guest, InstanceSpec, Kind};
use crate::home::Home;

/// One backend's answers (or why it was skipped).
pub struct Column {
    pub backend: String,
    pub guest: Guest,
    /// A network other than none (`probes --network`): the column is
    /// `backend-<network>`.
    pub network: Option<&'static str>,
    pub probes: Result<Vec<Probe>, String>,
}

fn params() -> Vec<String> {
    let mut v: Vec<String> = probes::host_facts()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Some(port) = loopback_service_port() {
        v.push(format!("host_lo_port={port}"));
    }
    v
}

/// A listener on the host's 127.0.0.1, open for this process's life: the
/// `host_loopback_service` probe tries to reach it from inside. It never
/// accepts; the kernel completes a connection into its backlog, which is
/// all the probe needs.
fn loopback_service_port() -> Option<u16> {
    static L: std::sync::OnceLock<Option<std::net::TcpListener>> = std::sync::OnceLock::new();
    L.get_or_init(|| std::net::TcpListener::bind("127.0.0.1:0").ok())
        .as_ref()?
        .local_addr()
        .ok()
        .map(|a| a.port())
}

fn from_report(r: &isolab_reports::InstanceReport) -> Result<Vec<Probe>, String> {
    let data = r
        .result
        .as_ref()
        .and_then(|v| v.get("data"))
        .and_then(|d| d.get("probes"))
        .cloned()
        .ok_or("no probe data in the result")?;
    serde_json::from_value(data).map_err(|e| e.to_string())
}

/// The bare guest has no OS to ask: its column is derived from what the
/// monitor gave it (its own kernel — itself — its own RAM, its vCPUs), and
/// every question about processes, files or system calls is n/a.
pub fn bare_guest_column(
    report: &isolab_reports::InstanceReport,
    host_names: &[String],
) -> Vec<Probe> {
    let data = report
        .result
        .as_ref()
        .and_then(|v| v.get("data"))
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for name in host_names {
        let (value, verdict, reason) = match name.as_str() {
            "kernel_shared" | "kernel_version" => (
                "own kernel (the lab guest)".to_owned(),
                Verdict::Isolated,
                "a VM runs its own kernel; the host's is not reachable",
            ),
            "meminfo_total" => (
                format!("{} bytes of RAM", data["ram_bytes"]),
                Verdict::Isolated,
                "the guest sees the RAM the monitor gave it, not the host's",
            ),
            "cpu_count" => (
                "its vCPUs".to_owned(),
                Verdict::Isolated,
                "the guest sees its vCPUs, not the host's CPUs",
            ),
            "host_devices" => (
                "none".to_owned(),
                Verdict::Isolated,
                "only the monitor's emulated devices exist",
            ),
            "reachable_syscalls" => (
                "0 (VM exits only)".to_owned(),
                Verdict::Isolated,
                "the guest's only interface to the host is VM exits into its monitor",
            ),
            "cpu_vulnerabilities" => (
                "shared CPU".to_owned(),
                Verdict::Exposed,
                "the CPU is shared in both worlds: side channels cross VMs too",
            ),
            _ => (
                "no OS".to_owned(),
                Verdict::NotApplicable,
                "the bare guest is not an operating system: nothing to ask",
            ),
        };
        out.push(Probe {
            name: name.clone(),
            value,
            verdict,
            reason: reason.into(),
        });
    }
    out
}

/// Runs the probes on every backend of the registry: the agent asks them
/// from inside where it runs; a VM with the bare guest gets the column
/// derived from what its monitor gave it. A backend that cannot run here
/// is a column with the reason. (QEMU boots the same bare guest as our
/// monitor, so it would repeat that column.) The Linux guest answers from
/// our monitor where KVM boots a stock kernel, and from QEMU's software
/// emulation (`qemu-tcg`) where it cannot.
pub fn run_all(home: &Home, network: crate::network::Mode) -> Vec<Column> {
    let probe_spec = InstanceSpec {
        scenario: sc::PROBES.into(),
        params: params(),
        limits: crate::backend::bench_limits(),
        ..Default::default()
    };
    let mut cols: Vec<Column> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for b in crate::backends::registry() {
        if (b.baseline().is_some() && b.kind() == Kind::Vm) || b.variant_of().is_some() {
            continue;
        }
        // Software emulation's Linux column, only where KVM cannot give
        // one (on a host with hardware KVM our monitor's is that column).
        let kvm_boots_linux = crate::host::kvm_flavour_here().boots_stock_linux();
        if !b.timed() && kvm_boots_linux {
            continue;
        }
        let guest = b.guest(&probe_spec);
        let probes = match b.available() {
            Err(u) => Err(u.to_string()),
            Ok(()) if guest == Guest::Bare => {
                let spec = InstanceSpec::default();
                b.run(home, &spec)
                    .map_err(|e| format!("{e:#}"))
                    .map(|o| bare_guest_column(&o.report, &names))
            }
            Ok(()) => b
                .run(home, &probe_spec)
                .map_err(|e| format!("{e:#}"))
                .and_then(|o| from_report(&o.report)),
        };
        if names.is_empty() {
            if let Ok(v) = &probes {
                names = v.iter().map(|p| p.name.clone()).collect();
            }
        }
        cols.push(Column {
            backend: b.name().into(),
            guest,
            network: None,
            probes,
        });
        // One more column of the same backend, with the spec changed.
        let again = |spec: InstanceSpec, guest: Guest, network: Option<&'static str>| Column {
            backend: b.name().into(),
            guest,
            network,
            probes: b
                .run(home, &spec)
                .map_err(|e| format!("{e:#}"))
                .and_then(|o| from_report(&o.report)),
        };
        // `--network bridge|host`: the backends that join it once more, on
        // it (the bridge: the lab's container, crun and runc; the host's
        // network: the lab's container).
        let joins = b.supports_network()
            && b.kind() == Kind::Container
            && (network == crate::network::Mode::Bridge
                || (network == crate::network::Mode::Host && b.name() == "container"));
        if joins && b.available().is_ok() {
            let mut spec = probe_spec.clone();
            spec.net.mode = network;
            cols.push(again(spec, guest, Some(network.as_str())));
        }
        // Where KVM boots a stock kernel, the lab's monitor also runs the
        // probes in a Linux guest: the agent asks them from inside a VM.
        if b.kind() == Kind::Vm && b.timed() && b.available().is_ok() && kvm_boots_linux {
            let mut spec = probe_spec.clone();
            spec.vm.guest = Some(Guest::Linux);
            cols.push(again(spec, Guest::Linux, None));
        }
    }
    cols
}

impl Column {
    /// The column's name in the JSON and the text matrix: the backend, or
    /// `backend-linux` for a VM backend's Linux-guest column.
    pub fn key(&self) -> String {
        let usual = crate::backends::find(&self.backend)
            .map(|b| b.guest(&InstanceSpec::default()))
            .ok();
        if let Some(n) = self.network {
            format!("{}-{n}", self.backend)
        } else if self.guest == Guest::Linux && usual != Some(Guest::Linux) {
            format!("{}-linux", self.backend)
        } else {
            self.backend.clone()
        }
    }
}

/// The matrix as text: probes down, backends across.
pub fn render(cols: &[Column]) -> String {
    let mut names: Vec<String> = Vec::new();
    for c in cols {
        if let Ok(ps) = &c.probes {
            for p in ps {
                if !names.contains(&p.name) {
                    names.push(p.name.clone());
                }
            }
        }
    }
    let width: Vec<usize> = cols.iter().map(|c| c.key().len().max(14)).collect();
    let mut out = format!("{:<26}", "probe");
    for c in cols {
        out.push_str(&format!(" {:<14}", c.key()));
    }
    out.push('\n');
    for n in &names {
        out.push_str(&format!("{n:<26}"));
        for (c, w) in cols.iter().zip(&width) {
            let cell = match &c.probes {
                Ok(ps) => match ps.iter().find(|p| &p.name == n).map(|p| p.verdict) {
                    Some(Verdict::Isolated) => "isolated",
                    Some(Verdict::Exposed) => "EXPOSED",
                    Some(Verdict::NotApplicable) => "n/a",
                    None => "-",
                },
                Err(_) => "skipped",
            };
            out.push_str(&format!(" {cell:<w$}"));
        }
        out.push('\n');
    }
    for c in cols {
        if let Err(e) = &c.probes {
            out.push_str(&format!("\n{}: {e}", c.key()));
        }
    }
    out.push('\n');
    out
}

/// The matrix as JSON: backend → probe name → {value, verdict, reason}.
pub fn to_json(cols: &[Column]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for c in cols {
        m.insert(
            c.key(),
            match &c.probes {
                Ok(ps) => serde_json::json!(ps.iter().map(|p| (p.name.clone(), serde_json::json!({"value": p.value, "verdict": p.verdict, "reason": p.reason}))).collect::<BTreeMap<_, _>>()),
                Err(e) => serde_json::json!({ "skipped": e }),
            },
        );
    }
    serde_json::Value::Object(m)
}

/// Sample rows for a run directory (value 1 isolated, 0 exposed, -1 n/a).
pub fn samples(cols: &[Column], run_id: &str, host_id: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for c in cols {
        if let Ok(ps) = &c.probes {
            for p in ps {
                out.push(Sample {
                    run_id: run_id.into(),
                    host_id: host_id.into(),
                    backend: c.backend.clone(),
                    guest: c.guest.as_str().into(),
                    scenario: sc::PROBES.into(),
                    iteration: 0,
                    metric: format!("probe.{}", p.name),
                    unit: "verdict".into(),
                    value: match p.verdict {
                        Verdict::Isolated => 1.0,
                        Verdict::Exposed => 0.0,
                        Verdict::NotApplicable => -1.0,
                    },
                });
            }
        }
    }
    out
}

/// Appends the matrix's rows to a run's `samples.csv` (the lab's main job
/// puts the probes beside the bench's figures).
pub fn append_to_run(run_dir: &std::path::Path, cols: &[Column]) -> Result<()> {
    use std::io::Write;
    let manifest = isolab_reports::Manifest::from_json(&std::fs::read_to_string(
        run_dir.join("manifest.json"),
    )?)?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir.join("samples.csv"))?;
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(&mut f);
    for s in samples(cols, &manifest.run_id, &manifest.host.host_id) {
        w.serialize(&s)?;
    }
    w.flush()?;
    drop(w);
    f.flush()?;
    Ok(())
}
