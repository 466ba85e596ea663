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
        push("microvm", "bare", "image_as_ext4_disk", size(Some(d)));
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
