//! The stages of an instance's life, named once.
//!
//! A *mark* is the instant a stage ended; a *phase* is the time between
//! two marks, named by the later one. The runtime, the monitor, the guests
//! and the harness all stamp marks by these names, errors name the stage
//! that failed, and the report orders phases by [`Stage::ALL`] — so the
//! waterfall, the error message and the code say the same.

/// One stage, in time order within its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The harness spawned the instance's process.
    Launch,
    // The container runtime, in the child.
    Clone,
    /// The container's network: loopback, or a veth on the lab bridge.
    Network,
    Rootfs,
    Cgroup,
    UidMap,
    Mounts,
    PivotRoot,
    Seccomp,
    Exec,
    // The monitor.
    KvmOpen,
    VmCreated,
    Memory,
    KernelLoaded,
    /// The monitor jailed itself (mount namespace, user, seccomp).
    Jailed,
    VcpusReady,
    FirstEntry,
    // The guest: the bare guest's marks, a Linux kernel's console lines.
    KernelEntry,
    KernelStart,
    KernelInit,
    ParamsChecked,
    /// The first instruction of the workload (every backend).
    Ready,
    /// A Linux guest's agent reached user space.
    AgentReady,
    WorkStart,
    WorkEnd,
    FirstSerial,
    Done,
    /// The instance's last process ended.
    Exit,
    /// The monitor released the VM.
    Teardown,
    /// The harness reaped the instance's process.
    Reaped,
}

impl Stage {
    /// Every stage, in the order phases are shown.
    pub const ALL: [Stage; 30] = [
        Stage::Launch,
        Stage::Clone,
        Stage::Network,
        Stage::Rootfs,
        Stage::Cgroup,
        Stage::UidMap,
        Stage::Mounts,
        Stage::PivotRoot,
        Stage::Seccomp,
        Stage::Exec,
        Stage::KvmOpen,
        Stage::VmCreated,
        Stage::Memory,
        Stage::KernelLoaded,
        Stage::Jailed,
        Stage::VcpusReady,
        Stage::FirstEntry,
        Stage::KernelEntry,
        Stage::KernelStart,
        Stage::KernelInit,
        Stage::ParamsChecked,
        Stage::Ready,
        Stage::AgentReady,
        Stage::WorkStart,
        Stage::WorkEnd,
        Stage::FirstSerial,
        Stage::Done,
        Stage::Exit,
        Stage::Teardown,
        Stage::Reaped,
    ];

    /// The mark's name, as written in reports and `samples.csv`.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Launch => "launch",
            Stage::Clone => "clone",
            Stage::Network => "network",
            Stage::Rootfs => "rootfs",
            Stage::Cgroup => "cgroup",
            Stage::UidMap => "uid_map",
            Stage::Mounts => "mounts",
            Stage::PivotRoot => "pivot_root",
            Stage::Seccomp => "seccomp",
            Stage::Exec => "exec",
            Stage::KvmOpen => "kvm_open",
            Stage::VmCreated => "vm_created",
            Stage::Memory => "memory",
            Stage::KernelLoaded => "kernel_loaded",
            Stage::Jailed => "jailed",
            Stage::VcpusReady => "vcpus_ready",
            Stage::FirstEntry => "first_entry",
            Stage::KernelEntry => "kernel_entry",
            Stage::KernelStart => "kernel_start",
            Stage::KernelInit => "kernel_init",
            Stage::ParamsChecked => "params_checked",
            Stage::Ready => "ready",
            Stage::AgentReady => "agent_ready",
            Stage::WorkStart => "work_start",
            Stage::WorkEnd => "work_end",
            Stage::FirstSerial => "first_serial",
            Stage::Done => "done",
            Stage::Exit => "exit",
            Stage::Teardown => "teardown",
            Stage::Reaped => "reaped",
        }
    }

    /// The stage a mark's name names.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Where a phase of this name goes in a waterfall (unknown names last).
    pub fn order_of(name: &str) -> usize {
        Stage::ALL
            .iter()
            .position(|s| s.name() == name)
            .unwrap_or(Stage::ALL.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_is_listed_once_in_declaration_order() {
        for (i, s) in Stage::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?} out of order in ALL");
            assert_eq!(Stage::from_name(s.name()), Some(*s));
        }
        assert!(Stage::order_of("clone") < Stage::order_of("exec"));
        assert!(Stage::order_of("kvm_open") < Stage::order_of("ready"));
        assert_eq!(Stage::order_of("nope"), Stage::ALL.len());
    }
}
