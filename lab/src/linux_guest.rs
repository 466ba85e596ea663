//! A Linux guest for the microVM: the distribution's kernel (or one the
//! user names) and an initramfs written from the same image the
//! containers use, with the agent as `/init` and the virtio modules the
//! kernel lacks built in.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use crate::backend::VmSpec;
use crate::home::Home;

/// The kernel command line of a Linux guest (before the isolab.* words):
/// serial console and early printk, reboot through the i8042, no panic
/// wait, and none of the PC hardware a microVM does not have.
pub const LINUX_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp tsc=reliable";

/// Modules the lab wants in a Linux guest when the kernel has them as
/// modules (Debian's cloud kernel does).
/// (module, its Kconfig symbol): virtio over MMIO (the lab's monitor) and
/// the disk driver, packed for every Linux guest.
pub const WANTED_MODULES: [(&str, &str); 2] =
    [("virtio_mmio", "VIRTIO_MMIO"), ("virtio_blk", "VIRTIO_BLK")];

/// Packed only when the guest runs an image's program: virtio over PCI
/// (QEMU's `pc` machine) and overlayfs (a writable layer over the image's
/// read-only disk). Not in a scenario's initramfs, which the monitor
/// loads inside the timed boot.
pub const IMAGE_MODULES: [(&str, &str); 2] =
    [("virtio_pci", "VIRTIO_PCI"), ("overlay", "OVERLAY_FS")];

/// Packed only when the guest is on the lab bridge: the virtio-net
/// driver (and, through modules.dep, what it needs).
pub const NET_MODULES: [(&str, &str); 1] = [("virtio_net", "VIRTIO_NET")];

/// A prepared Linux guest.
pub struct LinuxGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub warning: Option<String>,
}

/// Resolves `names` and their dependencies from a modules.dep text, in
/// load order (dependencies first), as paths relative to the modules dir.
pub fn module_closure(modules_dep: &str, names: &[&str]) -> Result<Vec<String>> {
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((m, rest)) = line.split_once(':') else {
            continue;
        };
        let name = m
            .rsplit('/')
            .next()
            .unwrap_or(m)
            .split('.')
            .next()
            .unwrap_or(m)
            .replace('-', "_");
        by_name.insert(name, m.to_owned());
        deps.insert(
            m.to_owned(),
            rest.split_whitespace().map(str::to_owned).collect(),
        );
    }
    let mut order = Vec::new();
    fn visit(m: &str, deps: &BTreeMap<String, Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(m.to_owned());
    }
    for n in names {
        let m = by_name.get(*n).ok_or_else(|| anyhow!("module {n} is not in modules.dep: install the kernel's modules package or use a kernel with {n} built in"))?;
        visit(m, &deps, &mut order);
    }
    Ok(order)
}

/// Finds the kernel, packs modules it wants, writes the initramfs.
pub fn prepare(home: &Home, spec: &VmSpec, for_image: bool, net: bool) -> Result<LinuxGuest> {
    use isolab_microvm::kernel;
    let kpath = match &spec.kernel {
        Some(k) => k.clone(),
        None => kernel::find_in(std::path::Path::new("/boot"))?,
    };
    let info = kernel::inspect(&kpath)?;
    let kver = info
        .version
        .as_deref()
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("")
        .to_owned();
    let mut tree = crate::images::default_tree(home)?;
    use isolab_runtime::initramfs::Node;
    tree.insert(
        "init".into(),
        Node::Symlink {
            target: "/isolab-agent".into(),
        },
    );
    // Modules the kernel has as modules, if its config is next to it.
    let config = std::fs::read_to_string(format!("/boot/config-{kver}")).unwrap_or_default();
    let extra: &[(&str, &str)] = if for_image { &IMAGE_MODULES } else { &[] };
    let net_extra: &[(&str, &str)] = if net { &NET_MODULES } else { &[] };
    let wanted: Vec<&str> = WANTED_MODULES
        .iter()
        .chain(extra)
        .chain(net_extra)
        .filter(|(_, sym)| config.contains(&format!("CONFIG_{sym}=m")))
        .map(|(m, _)| *m)
        .collect();
    if !wanted.is_empty() {
        let dir = PathBuf::from(format!("/lib/modules/{kver}"));
        let dep = std::fs::read_to_string(dir.join("modules.dep"))
            .map_err(|e| anyhow!("kernel {kver} needs modules ({}) but {}/modules.dep is unreadable ({e}): install its modules or pass a kernel with them built in", wanted.join(", "), dir.display()))?;
        let order = module_closure(&dep, &wanted)?;
        for d in ["lib", "lib/modules", "lib/modules/isolab"] {
            tree.insert(d.into(), Node::Dir { mode: 0o755 });
        }
        let mut names = Vec::new();
        for m in &order {
            let data = std::fs::read(dir.join(m)).map_err(|e| {
                anyhow!(
                    "missing module {}: {e}: reinstall the kernel's modules",
                    dir.join(m).display()
                )
            })?;
            let name = m.rsplit('/').next().unwrap_or(m).to_owned();
            tree.insert(
                format!("lib/modules/isolab/{name}"),
                Node::File { mode: 0o644, data },
            );
            names.push(name);
        }
        tree.insert(
            "lib/modules/isolab/order".into(),
            Node::File {
                mode: 0o644,
                data: names.join("\n").into_bytes(),
            },
        );
    }
    let cpio = isolab_runtime::initramfs::write_cpio(&tree);
    if cpio.len() as u64 >= spec.mem_mib() << 20 {
        bail!(
            "the initramfs ({} MiB) is larger than guest memory ({} MiB): raise --mem",
            cpio.len() >> 20,
            spec.mem_mib()
        );
    }
    let initrd = crate::images::cache_put(
        home,
        &format!("initramfs-{:08x}.cpio", crate::images::fnv(&cpio)),
        &cpio,
    )?;
    let flavour = crate::host::kvm_flavour_here();
    let warning = (!flavour.boots_stock_linux()).then(|| {
        format!(
            "this host's KVM is {}: a stock Linux kernel starts and prints its first lines, then stops on an emulation failure (here after ~40 s) before init; to boot to the agent, pass a PVM-aware kernel with --kernel or use a host with hardware KVM",
            flavour.as_str()
        )
    });
    Ok(LinuxGuest {
        kernel: kpath,
        initrd,
        warning,
    })
}

/// Whether a Linux-guest run starts an image's own program (a command
/// given, or an image other than the lab's) instead of an agent scenario.
pub fn runs_an_image(spec: &crate::backend::InstanceSpec) -> bool {
    spec.image != crate::images::DEFAULT_IMAGE || !spec.command.is_empty()
}

/// An image prepared to run in a Linux VM: its layers as a read-only ext4
/// disk, and the initramfs with what to start appended.
pub struct ImageInVm {
    pub disk: PathBuf,
    pub initrd: PathBuf,
    pub program: String,
}

/// Prepares `spec`'s image for a Linux guest whose initramfs is
/// `base_initrd`: the agent, as init, mounts the disk under a tmpfs upper
/// dir and starts the image's entrypoint and command (or the command
/// given) with its environment, working directory and user — resolved
/// here, through the image's own /etc/passwd.
pub fn image_in_vm(
    home: &Home,
    spec: &crate::backend::InstanceSpec,
    base_initrd: &std::path::Path,
) -> Result<ImageInVm> {
    use isolab_runtime::initramfs::Node;
    let img = crate::images::open(home, &spec.image)?;
    let argv = img.config.argv(&spec.command);
    let Some(program) = argv.first().cloned() else {
        bail!(
            "image {} has no entrypoint or command: give one after --",
            img.name
        );
    };
    let user =
        crate::images::resolve_user(home, &img, spec.user.as_deref().unwrap_or(&img.config.user))?
            .unwrap_or((0, 0));
    let mut env = img.config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(crate::images::DEFAULT_PATH.into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push("HOME=/".into());
    }
    for e in &spec.env {
        if !e.contains('=') {
            bail!("invalid environment entry {e:?}: use -e KEY=VALUE");
        }
        env.push(e.clone());
    }
    let cwd = spec
        .workdir
        .clone()
        .unwrap_or_else(|| img.config.cwd.clone());
    let exec = serde_json::to_vec(&serde_json::json!({
        "argv": argv, "env": env, "cwd": cwd, "uid": user.0, "gid": user.1,
    }))?;
    let mut tree = std::collections::BTreeMap::new();
    tree.insert("isolab".to_owned(), Node::Dir { mode: 0o755 });
    tree.insert(
        "isolab/exec.json".to_owned(),
        Node::File {
            mode: 0o644,
            data: exec,
        },
    );
    // A second cpio archive after the first: the kernel unpacks both.
    let mut initrd = std::fs::read(base_initrd)?;
    initrd.extend_from_slice(&isolab_runtime::initramfs::write_cpio(&tree));
    let initrd = crate::images::cache_put(
        home,
        &format!("initramfs-exec-{:08x}.cpio", crate::images::fnv(&initrd)),
        &initrd,
    )?;
    Ok(ImageInVm {
        disk: crate::images::image_disk_of(home, &spec.image)?,
        initrd,
        program,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dependencies_come_first() {
        let dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio.ko:\n";
        let order = module_closure(dep, &["virtio_mmio", "virtio_blk"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/block/virtio_blk.ko"
            ]
        );
        assert!(module_closure(dep, &["nope"])
            .unwrap_err()
            .to_string()
            .contains("not in modules.dep"));
    }
}
