//! One file per backend; [`crate::backend::registry`] lists them.
//!
//! * [`container`]: the lab's own namespace container runtime;
//! * [`oci`]: crun and runc, from an OCI bundle the lab writes;
//! * [`microvm`]: the lab's own KVM monitor, `isolab-vmm`;
//! * [`qemu`]: `qemu-system-x86_64 -M microvm`.
pub mod container;
pub mod microvm;
pub mod oci;
pub mod qemu;

use anyhow::{bail, Result};

use crate::backend::InstanceSpec;

/// Container backends take no VM options.
pub(crate) fn refuse_vm_options(backend: &str, spec: &InstanceSpec) -> Result<()> {
    if spec.vm.pvh {
        bail!("--pvh picks our monitor's boot entry: use it with --backend microvm, not {backend}");
    }
    if !spec.vm.disks.is_empty() {
        bail!("--disk attaches a virtio disk to our microVM: use it with --backend microvm, not {backend}");
    }
    Ok(())
}

/// VM backends take no host paths and no commands.
pub(crate) fn refuse_container_options(spec: &InstanceSpec) -> Result<()> {
    if !spec.volumes.is_empty() {
        bail!("-v binds a host path into a container; a VM has no host filesystem to share: use --disk with --backend microvm");
    }
    if !spec.command.is_empty() {
        bail!("the VM backends run scenarios only: drop the command");
    }
    Ok(())
}
