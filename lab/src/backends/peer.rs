//! What every container peer that runs the lab's agent shares: the
//! options it refuses, how its run becomes a report, and the bundles a
//! killed run leaves.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use isolab_abi::stage::Stage;
use isolab_reports::{InstanceReport, Mark};
use isolab_scenarios::protocol;

use crate::backend::{Attach, InstanceSpec, Outcome};
use crate::home::Home;

/// Refuses, in one sentence each, what a peer running the agent's
/// scenarios does not take.
pub(crate) fn check(name: &str, spec: &InstanceSpec, attach: Attach) -> Result<()> {
    check_net(name, spec, attach, false)
}

/// [`check`], for a peer that can join the lab bridge (`bridge`: crun
/// and runc, through a network namespace the lab holds).
pub(crate) fn check_net(
    name: &str,
    spec: &InstanceSpec,
    attach: Attach,
    bridge: bool,
) -> Result<()> {
    crate::backend::refuse_vm_options(name, spec)?;
    if matches!(attach, Attach::Terminal { tty: true, .. }) || !spec.command.is_empty() {
        bail!("the {name} peer runs the agent's scenarios only: drop -t and the command");
    }
    if spec.namespaces != Default::default() {
        bail!(
            "--namespaces picks the lab's own container's namespaces: drop it for the {name} peer"
        );
    }
    if spec.user.is_some() || spec.workdir.is_some() {
        bail!(
            "-u and -w apply to --backend container in this build: drop them for the {name} peer"
        );
    }
    if spec.scenario_entry().is_ok_and(|s| s.needs_network())
        && spec.net.mode != crate::network::Mode::Bridge
    {
        bail!(
            "the {} scenario talks to a server on the host: {}",
            spec.scenario,
            if bridge {
                format!("add --network bridge to run it under {name}")
            } else {
                format!("the {name} peer has no network to the host in this build; run it with --backend container, crun or runc and --network bridge")
            }
        );
    }
    match spec.net.mode {
        crate::network::Mode::None => {}
        crate::network::Mode::Bridge if bridge => {}
        m => {
            bail!(
            "--network {} is for --backend container{} in this build: drop it for the {name} peer",
            m.as_str(),
            if m == crate::network::Mode::Bridge { ", crun and runc" } else { "" }
        )
        }
    }
    Ok(())
}

/// One finished peer run, as its report.
pub(crate) struct Finished<'a> {
    pub name: &'a str,
    pub spec: &'a InstanceSpec,
    pub id: String,
    pub launch: u64,
    pub exit_ns: u64,
    pub code: i32,
    /// stdout (and stderr) of the run, with the agent's result line.
    pub output: String,
    pub memory: BTreeMap<String, u64>,
    /// Whether the agent's ready stamp is on the host's clock.
    pub host_clock: bool,
    pub note: String,
}

impl Finished<'_> {
    /// The report: launch and exit stamped by the lab, ready by the agent
    /// (when its clock is the host's), the agent's result.
    pub(crate) fn outcome(self) -> Result<Outcome> {
        let res = protocol::parse_output(self.name, &self.output).map_err(|e| anyhow!("{e}"))?;
        let mut marks = vec![
            Mark::new(Stage::Launch.name(), self.launch),
            Mark::new(Stage::Exit.name(), self.exit_ns),
        ];
        if let Some(r) = res
            .marks
            .iter()
            .find(|m| m.name == Stage::Ready.name() && self.host_clock)
        {
            marks.push(Mark::new(Stage::Ready.name(), r.ns));
        }
        let mut report = InstanceReport::new(self.name, "agent", &self.spec.scenario, self.id);
        report.exit_code = self.code;
        report.marks = marks;
        report.memory_bytes = self.memory;
        report.result = Some(serde_json::to_value(&res)?);
        report.notes = vec![self.note];
        report.derive();
        Ok(Outcome {
            report,
            output: self.output,
        })
    }
}

/// Removes the bundles of dead runs whose names start with `prefix`.
pub(crate) fn prune_bundles(home: &Home, prefix: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(home.peers_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && std::fs::remove_dir_all(e.path()).is_ok() {
            removed.push(format!("peer bundle {name}"));
        }
    }
    removed
}
