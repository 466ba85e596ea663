//! Disk footprint, measured: what each side needs on disk, for one
//! instance and for N.
use std::fs;
use std::path::Path;

use anyhow::Result;
use isolab_abi::catalog::name as sc;
use isolab_reports::Sample;

use crate::backend::InstanceSpec;
use crate::home::Home;

/// Apparent and allocated bytes of a file tree.
pub fn du(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        apparent += md.len();
        allocated += md.blocks() * 512;
        if md.is_dir() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    (apparent, allocated)
}

/// Disk footprint, measured: the image (compressed layers, unpacked
/// rootfs), VM artifacts, and the writable bytes of 1 and N instances.
pub fn disk_samples(
    home: &Home,
    image: &str,
    run_id: &str,
    host_id: &str,
    instances: u32,
) -> Result<Vec<Sample>> {
    let img = crate::images::open(home, image)?;
    let store = home.store();
    let mut out = Vec::new();
    let mut push = |backend: &str, guest: &str, metric: &str, v: u64| {
        out.push(Sample {
            run_id: run_id.into(),
            host_id: host_id.into(),
            backend: backend.into(),
            guest: guest.into(),
            scenario: sc::DISK_FOOTPRINT.into(),
            iteration: 0,
            metric: format!("disk.{metric}"),
            unit: "bytes".into(),
            value: v as f64,
        })
    };
    let compressed: u64 = img
        .layers
        .iter()
        .map(|l| {
            fs::metadata(store.blob_path(l))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let (mut apparent, mut allocated) = (0, 0);
    for l in &img.layers {
        let (a, b) = du(&store.layer_dir(l));
        apparent += a;
        allocated += b;
    }
    push("container", "agent", "image_layers_compressed", compressed);
    push("container", "agent", "image_unpacked_apparent", apparent);
    push("container", "agent", "image_unpacked_allocated", allocated);
    // N idle containers side by side: their writable (upper) dirs.
    let mut ids = Vec::new();
    let container = crate::backends::find("container")?;
    for _ in 0..instances {
        let spec = InstanceSpec {
            image: image.into(),
            scenario: sc::IDLE.into(),
            params: vec!["hold_ms=5000".into()],
            limits: crate::backend::bench_limits(),
            ..Default::default()
        };
        ids.push(crate::instances::run_detached(home, container, &spec)?);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut uppers = Vec::new();
    for id in &ids {
        uppers.push(du(&home.writable_layer(id)).1);
    }
    for id in &ids {
        let _ = crate::instances::rm(home, id, true);
    }
    let one = uppers.first().copied().unwrap_or(0);
    let all: u64 = uppers.iter().sum();
    let size = |p: Option<std::path::PathBuf>| {
        p.and_then(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0)
    };
    // Everything each side needs, shared (on disk once, whatever the
    // number of instances) and per instance: the engine's own binary too.
    let runtime = size(crate::selfprotect::original_exe());
    push("container", "agent", "runtime_binary", runtime);
    push("container", "agent", "writable_per_instance", one);
    push("container", "agent", "shared", allocated + runtime);
    push("container", "agent", "per_instance", one);
    push(
        "container",
        "agent",
        "total_for_1_instance",
        allocated + runtime + one,
    );
    push(
        "container",
        "agent",
        &format!("total_for_{instances}_instances"),
        allocated + runtime + all,
    );
    // N images that share this one as their base, each adding one small
    // layer (as `COPY app /app` on a common `FROM` does): on disk each
    // layer once, against what N self-contained copies would take.
    let (shared_n, unshared_n) = images_sharing_a_base(home, &img, instances, allocated)?;
    push(
        "container",
        "agent",
        &format!("layers_for_{instances}_images_sharing_a_base"),
        shared_n,
    );
    push(
        "container",
        "agent",
        &format!("layers_for_{instances}_images_if_each_had_its_own_copy"),
        unshared_n,
    );
    // The bare VM guest: a few KiB of ELF (inside the monitor binary) and
    // the monitor; no per-instance disk (its memory is its only state).
    let guest = isolab_microvm::BARE_GUEST.len() as u64;
    let vmm = size(crate::backends::microvm::vmm_binary());
    push("microvm", "bare", "guest_image", guest);
    push("microvm", "bare", "monitor_binary", vmm);
    push("microvm", "bare", "writable_per_instance", 0);
    push("microvm", "bare", "shared", guest + vmm);
    push("microvm", "bare", "per_instance", 0);
    push("microvm", "bare", "total_for_1_instance", guest + vmm);
    push(
        "microvm",
        "bare",
        &format!("total_for_{instances}_instances"),
        guest + vmm,
    );
    // The image as the read-only ext4 disk a VM attaches (`--disk image`,
    // and the disk-read scenario): shared by every VM, never written.
    if let Ok(d) = crate::images::image_disk(home) {
        let ext4 = size(Some(d));
        push("microvm", "bare", "image_as_ext4_disk", ext4);
        // N VMs of the image: a disk copy each (how a VM is usually given
        // its root), or the one read-only disk every VM here shares, its
        // writes kept in guest RAM.
        push(
            "microvm",
            "linux",
            &format!("disk_a_copy_per_vm_for_{instances}_vms"),
            ext4 * u64::from(instances),
        );
        push(
            "microvm",
            "linux",
            &format!("disk_one_shared_read_only_for_{instances}_vms"),
            ext4,
        );
    }
    // A Linux guest running the same image: the kernel, the initramfs
    // written from the image, and the monitor.
    if let Ok(k) = isolab_microvm::kernel::find_in(Path::new("/boot")) {
        let kb = size(Some(k));
        let tree = isolab_runtime::initramfs::merged_tree(&store, &img)?;
        let initrd = isolab_runtime::initramfs::write_cpio(&tree).len() as u64;
        let shared = kb + initrd + vmm;
        push("microvm", "linux", "linux_kernel", kb);
        push("microvm", "linux", "linux_initramfs", initrd);
        // Named apart from the bare guest's figures: results key a figure
        // by backend and metric.
        push("microvm", "linux", "linux_shared", shared);
        push("microvm", "linux", "linux_per_instance", 0);
        push("microvm", "linux", "linux_total_for_1_instance", shared);
        push(
            "microvm",
            "linux",
            &format!("linux_total_for_{instances}_instances"),
            shared,
        );
    }
    Ok(out)
}

/// Makes `n` images over `base`'s layers, each with one small layer of its
/// own, measures the layers they need on disk (each layer once), removes
/// them again, and returns (bytes shared, bytes if each image had its own
/// copy of every layer). `base_allocated` is the base's unpacked size.
fn images_sharing_a_base(
    home: &Home,
    base: &isolab_runtime::image::Image,
    n: u32,
    base_allocated: u64,
) -> Result<(u64, u64)> {
    use isolab_runtime::image::{build_layer, LayerEntry};
    let store = home.store();
    let mut names = Vec::new();
    let mut own = 0;
    let result = (|| -> Result<()> {
        for i in 0..n {
            let content = format!("footprint image {i}\n");
            let blob = build_layer(&[
                LayerEntry::Dir("app", 0o755),
                LayerEntry::File("app/build-id", 0o644, content.as_bytes()),
            ])?;
            let d = store.add_layer(&blob)?;
            own += du(&store.layer_dir(&d)).1;
            let name = format!("isolab-footprint-{}-{i}", std::process::id());
            let mut layers = base.layers.clone();
            layers.push(d);
            store.save_image(&name, layers, base.config.clone())?;
            names.push(name);
        }
        Ok(())
    })();
    for name in &names {
        let _ = store.remove(name);
    }
    let mut keep = store.referenced_layers();
    for s in crate::instances::list(home) {
        keep.extend(s.layers);
    }
    store.collect_garbage(&keep);
    result?;
    Ok((base_allocated + own, u64::from(n) * base_allocated + own))
}
