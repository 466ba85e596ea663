//! The one JSON object `isolab run --json` prints, for every backend.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A named instant (host `CLOCK_MONOTONIC`, ns): the lab's one `Mark`.
pub use isolab_abi::mark::Mark;

/// One instance's run, as reported by `isolab run --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub backend: String,
    pub guest: String,
    pub scenario: String,
    pub instance: String,
    pub exit_code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    /// In time order: `launch` … `ready` … `exit` (… `reaped` when the
    /// instance is a separate monitor process).
    pub marks: Vec<Mark>,
    /// Time from each mark to the next, named by the later mark.
    pub phases_ns: BTreeMap<String, u64>,
    pub launch_to_ready_ns: Option<u64>,
    pub launch_to_exit_ns: Option<u64>,
    /// Memory figures (bytes) by name, e.g. `cgroup_peak`, `hold_cgroup_current`.
    pub memory_bytes: BTreeMap<String, u64>,
    /// The agent's result line, when it printed one.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// What a reader must know (e.g. how `ready` was stamped).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The first lines a VM guest printed on its console (up to 8 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_head: Option<String>,
}

impl InstanceReport {
    /// An empty report for one instance; callers fill what they measured
    /// and call [`InstanceReport::derive`].
    pub fn new(backend: &str, guest: &str, scenario: &str, instance: String) -> Self {
        InstanceReport {
            backend: backend.into(),
            guest: guest.into(),
            scenario: scenario.into(),
            instance,
            exit_code: 0,
            signal: None,
            oom_killed: false,
            marks: Vec::new(),
            phases_ns: BTreeMap::new(),
            launch_to_ready_ns: None,
            launch_to_exit_ns: None,
            memory_bytes: BTreeMap::new(),
            result: None,
            notes: Vec::new(),
            console_head: None,
        }
    }

    /// Fills `phases_ns`, `launch_to_ready_ns` and `launch_to_exit_ns`
    /// from `marks` (sorted by time first).
    pub fn derive(&mut self) {
        self.marks.sort_by_key(|m| m.ns);
        self.phases_ns = self
            .marks
            .windows(2)
            .map(|w| (w[1].name.clone(), w[1].ns.saturating_sub(w[0].ns)))
            .collect();
        let at = |n: &str| self.marks.iter().find(|m| m.name == n).map(|m| m.ns);
        if let Some(l) = at("launch") {
            self.launch_to_ready_ns = at("ready").map(|r| r.saturating_sub(l));
            // A monitor process's own "exit" (vCPU stopped) comes before the
            // harness reaps it; "reaped" is the end for every backend.
            self.launch_to_exit_ns = at("reaped")
                .or_else(|| at("exit"))
                .map(|e| e.saturating_sub(l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_phases_and_spans() {
        let mut r = InstanceReport {
            backend: "container".into(),
            guest: "agent".into(),
            scenario: "startup".into(),
            instance: "x".into(),
            exit_code: 0,
            signal: None,
            oom_killed: false,
            marks: [
                ("exit", 1000),
                ("launch", 100),
                ("clone", 300),
                ("ready", 900),
            ]
            .iter()
            .map(|(n, ns)| Mark {
                name: n.to_string(),
                ns: *ns,
            })
            .collect(),
            phases_ns: BTreeMap::new(),
            launch_to_ready_ns: None,
            launch_to_exit_ns: None,
            memory_bytes: BTreeMap::new(),
            result: None,
            notes: vec![],
            console_head: None,
        };
        r.derive();
        assert_eq!(r.marks[0].name, "launch");
        assert_eq!(r.phases_ns["clone"], 200);
        assert_eq!(r.phases_ns["ready"], 600);
        assert_eq!(r.phases_ns["exit"], 100);
        assert_eq!(r.launch_to_ready_ns, Some(800));
        assert_eq!(r.launch_to_exit_ns, Some(900));
        let back: InstanceReport =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
