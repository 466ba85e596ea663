//! One file per backend; [`crate::backend::registry`] lists them.
//!
//! * [`container`]: the lab's own namespace container runtime;
//! * [`oci`]: crun, runc and gVisor's runsc, from an OCI bundle the lab
//!   writes;
//! * [`bwrap`]: bubblewrap, the floor of a process sandbox;
//! * [`podman`]: `podman run --rootfs`, daemonless;
//! * [`docker`]: Docker Engine, through its CLI and its REST API;
//! * [`microvm`]: the lab's own KVM monitor, `isolab-vmm`;
//! * [`qemu`]: `qemu-system-x86_64 -M microvm`;
//! * [`qemu_tcg`]: the Linux guest under QEMU's software emulation, never
//!   timed (probes and functional runs where KVM cannot boot Linux);
//! * [`monitor_cgroup`]: the cgroup either monitor is started in.
pub mod bwrap;
pub mod container;
pub mod docker;
pub mod microvm;
pub mod monitor_cgroup;
pub mod oci;
mod peer;
pub mod podman;
pub mod qemu;
pub mod qemu_tcg;

use anyhow::Result;

use crate::backend::Backend;

/// Every backend the lab knows, in the order tables show them.
pub fn registry() -> &'static [&'static dyn Backend] {
    static ALL: [&dyn Backend; 14] = [
        &container::Container,
        &oci::ISOLAB_OCI,
        &oci::CRUN,
        &oci::RUNC,
        &oci::GVISOR,
        &bwrap::Bwrap,
        &podman::PODMAN,
        &podman::PODMAN_ISOLAB,
        &docker::DOCKER,
        &docker::DOCKER_API,
        &docker::DOCKER_ISOLAB,
        &microvm::MicroVm,
        &qemu::Qemu,
        &qemu_tcg::QemuTcg,
    ];
    &ALL
}

/// The names of every backend, for messages.
pub fn names() -> Vec<&'static str> {
    registry().iter().map(|b| b.name()).collect()
}

/// The backend called `name`.
pub fn find(name: &str) -> Result<&'static dyn Backend> {
    registry()
        .iter()
        .copied()
        .find(|b| b.name() == name)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown backend {name:?}: use one of {}",
                names().join(", ")
            )
        })
}

/// The baseline of the backend called `name`, if any.
pub fn baseline_of(name: &str) -> Option<&'static str> {
    find(name).ok().and_then(|b| b.baseline())
}

/// Display order of a backend name (unknown names last).
pub fn order_of(name: &str) -> usize {
    registry()
        .iter()
        .position(|b| b.name() == name)
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Guest, InstanceSpec};
    use isolab_abi::catalog;

    #[test]
    fn the_registry_names_each_backend_once_with_a_known_baseline() {
        let names = names();
        assert_eq!(
            names,
            [
                "container",
                "isolab-oci",
                "crun",
                "runc",
                "gvisor",
                "bwrap",
                "podman",
                "podman-isolab",
                "docker",
                "docker-api",
                "docker-isolab",
                "microvm",
                "qemu",
                "qemu-tcg"
            ]
        );
        // Only software emulation is left out of timing.
        let untimed: Vec<_> = registry()
            .iter()
            .filter(|b| !b.timed())
            .map(|b| b.name())
            .collect();
        assert_eq!(untimed, ["qemu-tcg"]);
        for b in registry() {
            if let Some(base) = b.baseline() {
                let base = find(base).unwrap();
                assert_eq!(base.kind(), b.kind(), "{} vs {}", b.name(), base.name());
                assert!(base.baseline().is_none());
            }
        }
        assert_eq!(baseline_of("crun"), Some("container"));
        assert_eq!(baseline_of("qemu"), Some("microvm"));
        assert!(find("lxc")
            .err()
            .unwrap()
            .to_string()
            .contains("container, isolab-oci, crun"));
    }

    #[test]
    fn scenario_support_follows_the_catalog() {
        let spec = InstanceSpec::default();
        let s = |n| catalog::find(n).unwrap();
        let (c, vm) = (find("container").unwrap(), find("microvm").unwrap());
        assert!(c.supports(s("file-io"), &spec) && !vm.supports(s("file-io"), &spec));
        assert!(c.supports(s("idle"), &spec) && vm.supports(s("idle"), &spec));
        assert!(vm.supports(s("exit-cost"), &spec) && !c.supports(s("exit-cost"), &spec));
        assert!(vm.supports(s("disk-read"), &spec) && c.supports(s("disk-read"), &spec));
        assert!(find("runc").unwrap().supports(s("net-loopback"), &spec));
        assert!(!vm.supports(s("syscall"), &spec));
        // qemu-tcg's guest is Linux whatever the spec's default.
        assert!(find("qemu-tcg").unwrap().supports(s("syscall"), &spec));
        let mut linux = spec.clone();
        linux.vm.guest = Some(Guest::Linux);
        assert!(vm.supports(s("syscall"), &linux));
        assert!(spec.scenario_entry().is_ok());
        let bad = InstanceSpec {
            scenario: "nope".into(),
            ..Default::default()
        };
        assert!(bad
            .scenario_entry()
            .unwrap_err()
            .to_string()
            .contains("startup"));
    }
}
