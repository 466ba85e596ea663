//! The run manifest: host metadata and parameters, one JSON document per run.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped whenever `samples.csv` columns or the manifest's required fields
/// change meaning.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

/// What the host was, so a run can be reproduced and two runs compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostInfo {
    /// Stable id: hash of `/etc/machine-id` (or hostname) and CPU model.
    pub host_id: String,
    pub hostname: String,
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
    /// `hardware-vmx`, `hardware-svm`, `pvm`, `unknown` or `none`.
    pub kvm_flavour: String,
    /// True when this host is itself a guest (`hypervisor` CPU flag).
    pub nested: bool,
    /// `v1`, `v2` or `hybrid`.
    pub cgroup_mode: String,
    /// Peer name → version string (`crun` → `1.8.1`); missing peers absent.
    pub peers: BTreeMap<String, String>,
    /// 1-, 5- and 15-minute load averages when the run started: a busy
    /// host widens every interval (older manifests lack it).
    #[serde(default)]
    pub loadavg: Option<[f64; 3]>,
}

/// One run's manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub run_id: String,
    /// The command that produced the run (`bench`, `run`, …).
    pub command: String,
    /// `git describe --always --dirty` of the isolab tree, or the crate
    /// version when not built from git.
    pub isolab_revision: String,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    /// RFC 3339 UTC finish time; absent when the run was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub host: HostInfo,
    /// Free-form parameters: backends, scenarios, repetitions, …
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// Notes a reader must see (e.g. "PVM: the Linux guest cannot boot").
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Manifest {
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let mut peers = BTreeMap::new();
        peers.insert("crun".into(), "1.8.1".into());
        let mut parameters = BTreeMap::new();
        parameters.insert("repetitions".into(), serde_json::json!(20));
        parameters.insert("backends".into(), serde_json::json!(["container", "crun"]));
        Manifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            run_id: "20261128T223800Z-abcd".into(),
            command: "bench".into(),
            isolab_revision: "0123abc-dirty".into(),
            started_at: "2026-11-28T22:38:00Z".into(),
            finished_at: None,
            host: HostInfo {
                host_id: "h".into(),
                hostname: "vm".into(),
                cpu_model: "AMD EPYC".into(),
                cpus: 2,
                memory_bytes: 24 << 30,
                kernel: "6.18.44".into(),
                kvm_flavour: "pvm".into(),
                nested: true,
                cgroup_mode: "hybrid".into(),
                peers,
                loadavg: Some([0.5, 0.4, 0.3]),
            },
            parameters,
            notes: vec!["PVM host".into()],
        }
    }

    #[test]
    fn round_trip() {
        let m = manifest();
        let text = m.to_json().unwrap();
        assert_eq!(Manifest::from_json(&text).unwrap(), m);
        // An interrupted run has no finished_at key at all.
        assert!(!text.contains("finished_at"));
    }

    #[test]
    fn required_keys_are_present() {
        let v: serde_json::Value = serde_json::from_str(&manifest().to_json().unwrap()).unwrap();
        for key in [
            "schema_version",
            "run_id",
            "isolab_revision",
            "started_at",
            "host",
            "parameters",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["cpu_model", "kernel", "kvm_flavour", "cgroup_mode", "peers"] {
            assert!(v["host"].get(key).is_some(), "missing host.{key}");
        }
    }

    #[test]
    fn missing_required_field_is_an_error() {
        assert!(Manifest::from_json(r#"{"schema_version":1}"#).is_err());
    }
}
