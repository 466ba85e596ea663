//! The boot path: a straight list of stages, each stamped, each with its
//! own error.
//!
//! ```text
//! kvm_open      open /dev/kvm, check API version and capabilities
//! vm_created    KVM_CREATE_VM, TSS, in-kernel irqchip and PIT
//! memory        guest RAM (vm-memory, anonymous mmap), registered with KVM
//! kernel_loaded kernel (ELF or bzImage), command line, initramfs, zero page
//! vcpus_ready   vCPUs created and set up for a 64-bit entry; devices on the bus
//! first_entry   first KVM_RUN of vCPU 0
//! (guest marks) written by the guest to the boot-marker port
//! exit          the vCPU stopped (reset, fault, timeout …)
//! teardown      threads joined, memory and fds released
//! ```

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

use crate::arch::x86_64::layout;
use crate::devices::legacy::GuestMark;
use crate::devices::virtio::Block;
use crate::ports;
use isolab_abi::stage::Stage;

mod loader;
mod machine;
mod steps;
use loader::load_kernel;
use machine::{create_memory, kvm_err, Stamps};
pub use machine::{
    hypervisor_leaves, kernel_cmdline, open_kvm, virtio_slot, DiskConfig, HypervisorLeaves,
    KernelImage, Mark, NetConfig, VmConfig, VmReport, VmmError,
};
use steps::{attach_devices, create_vcpus, run_vcpus, Ran, Seen};

// ANCHOR: boot
/// Boots a VM and runs it to the end. `launch` is the caller's launch mark.
pub fn boot(cfg: &VmConfig) -> Result<VmReport, VmmError> {
    let mut st = Stamps(Vec::new());
    // Disks first: a missing or odd-sized image is the user's to fix, and
    // nothing has been created yet.
    let blocks = open_disks(cfg)?;
    let net = open_net(cfg)?;
    let kvm = open_kvm(&cfg.kvm_device)?;
    st.mark(Stage::KvmOpen);
    let vm = create_vm(&kvm, cfg.pit)?;
    st.mark(Stage::VmCreated);
    let mem = create_memory(&vm, cfg.mem_mib)?;
    st.mark(Stage::Memory);
    let entry = load_kernel(cfg, &mem)?;
    st.mark(Stage::KernelLoaded);
    // Every host resource is open; the guest has not run yet.
    let jail = if cfg.jail {
        machine::open_proc_status();
        let level = crate::jail::enter()?;
        st.mark(Stage::Jailed);
        level
    } else {
        crate::jail::JailLevel::None
    };
    let mut devices = attach_devices(cfg, &vm, &mem, blocks, net)?;
    let vcpus = create_vcpus(&kvm, &vm, cfg, entry)?;
    // ANCHOR_END: boot
    st.mark(Stage::VcpusReady);
    let run = run_vcpus(vcpus, &devices, cfg.timeout, &mut st)?;
    let seen = devices.stop_and_read(&mem);
    // The devices hold guest memory too; release them first. Then unmap
    // guest memory before closing the VM, as a process exit does: KVM then
    // zaps the whole shadow MMU in one go instead of page by page when the
    // VM is destroyed (15 ms vs ~1 ms under PVM here).
    drop(devices);
    drop(mem);
    drop(vm);
    drop(kvm);
    st.mark(Stage::Teardown);
    let mut r = report(st, run, seen);
    r.jail = jail;
    Ok(r)
}

fn open_disks(cfg: &VmConfig) -> Result<Vec<Block>, VmmError> {
    if machine::virtio_devices(cfg) > layout::VIRTIO_MAX_DEVICES {
        return Err(VmmError::TooManyDisks(machine::virtio_devices(cfg)));
    }
    Ok(cfg
        .disks
        .iter()
        .map(|d| Block::open(&d.path, d.read_only))
        .collect::<Result<Vec<_>, _>>()?)
}

fn create_vm(kvm: &Kvm, pit: bool) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))?;
    if pit {
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("create the PIT"))?;
    }
    Ok(vm)
}

fn report(st: Stamps, run: Ran, seen: Seen) -> VmReport {
    let mut marks = st.0;
    if run.first_entry != 0 {
        marks.push(Mark {
            name: Stage::FirstEntry.name().into(),
            ns: run.first_entry,
        });
    }
    marks.extend(seen.guest_marks.iter().map(|m: &GuestMark| Mark {
        name: ports::mark_name(m.label).into(),
        ns: m.ns,
    }));
    marks.extend(
        seen.serial_seen
            .into_iter()
            .map(|(name, ns)| Mark { name, ns }),
    );
    marks.sort_by_key(|m| m.ns);
    VmReport {
        marks,
        guest_marks: seen.guest_marks.iter().map(|m| (m.label, m.ns)).collect(),
        stop: run.stop,
        timed_out: run.timed_out,
        exit_code: seen.exit_code,
        serial: seen.serial_text,
        serial_dropped: seen.serial_dropped,
        result: seen.result,
        jail: crate::jail::JailLevel::None,
        guest_touched_bytes: seen.guest_touched_bytes,
        process_peak_rss_bytes: seen.process_peak_rss_bytes,
        unhandled_pio: seen.unhandled_pio,
        nop_writes: seen.nop_writes,
        disks: seen.disk_stats,
        net: seen.net_stats,
    }
}

/// The network device over a duplicate of the caller's tap, checked to be
/// a tap that carries bare Ethernet frames.
fn open_net(cfg: &VmConfig) -> Result<Option<crate::devices::virtio::Net>, VmmError> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let Some(n) = cfg.net else {
        return Ok(None);
    };
    let bad = |why: String| VmmError::NotATap { fd: n.tap_fd, why };
    // struct ifreq: the name, then the flags (a short).
    let mut ifr = [0u8; 40];
    const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
    // SAFETY: TUNGETIFF fills an ifreq-sized buffer we own.
    if unsafe { libc::ioctl(n.tap_fd, TUNGETIFF, ifr.as_mut_ptr()) } != 0 {
        return Err(bad(format!(
            "not a tun/tap descriptor ({})",
            std::io::Error::last_os_error()
        )));
    }
    let flags = u16::from_ne_bytes([ifr[16], ifr[17]]) as i32;
    if flags & libc::IFF_TAP == 0 || flags & libc::IFF_NO_PI == 0 || flags & libc::IFF_VNET_HDR != 0
    {
        return Err(bad(format!("its flags are {flags:#x}")));
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor this code owns.
    let dup = unsafe { libc::fcntl(n.tap_fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: `dup` is a fresh descriptor nothing else owns.
    let tap = unsafe { OwnedFd::from_raw_fd(dup) };
    crate::devices::virtio::Net::new(tap, n.mac)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::machine::*;
    use super::*;
    use linux_loader::loader::bootparam;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn mem(mib: u64) -> GuestMemoryMmap {
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mib << 20)
            .into_iter()
            .map(|(a, s)| (GuestAddress(a), s as usize))
            .collect();
        GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn boot_params_carry_e820_and_command_line() {
        let m = mem(64);
        let cfg = VmConfig {
            cmdline: "isolab.scenario=cpu console=ttyS0".into(),
            ..VmConfig::default()
        };
        let entry = load_kernel(&cfg, &m).unwrap();
        assert_eq!(entry, 0x200000, "the lab guest's ELF entry");
        let p: bootparam::boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!(p.hdr.cmd_line_ptr as u64, layout::CMDLINE_START);
        assert_eq!(p.e820_entries, 3);
        let ram: u64 = p.e820_table[..3]
            .iter()
            .filter(|e| e.r#type == 1)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (64 << 20) - (layout::HIMEM_START - layout::EBDA_START));
        let mut cmd = vec![0u8; cfg.cmdline.len() + 1];
        m.read_slice(&mut cmd, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&cmd[..cfg.cmdline.len()], cfg.cmdline.as_bytes());
        assert_eq!(cmd[cfg.cmdline.len()], 0);
        // The boot page tables are in place.
        let pml4: u64 = m.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, layout::PDPT_START);
    }

    #[test]
    fn bad_kernels_and_oversized_initramfs_are_refused() {
        let m = mem(16);
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let cfg = VmConfig {
            kernel: KernelImage::File(empty),
            ..VmConfig::default()
        };
        assert!(load_kernel(&cfg, &m)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        let text = dir.path().join("text");
        std::fs::write(&text, b"#!/bin/sh\necho not a kernel\n").unwrap();
        let cfg = VmConfig {
            kernel: KernelImage::File(text),
            ..VmConfig::default()
        };
        assert!(load_kernel(&cfg, &m)
            .unwrap_err()
            .to_string()
            .contains("is not a kernel"));
        let missing = VmConfig {
            kernel: KernelImage::File(dir.path().join("nope")),
            ..VmConfig::default()
        };
        assert!(load_kernel(&missing, &m)
            .unwrap_err()
            .to_string()
            .contains("cannot read kernel"));
        let big = dir.path().join("initrd");
        std::fs::write(&big, vec![0u8; 17 << 20]).unwrap();
        let cfg = VmConfig {
            initrd: Some(big),
            mem_mib: 16,
            ..VmConfig::default()
        };
        let e = load_kernel(&cfg, &m).unwrap_err();
        assert!(matches!(e, VmmError::InitrdTooLarge { .. }), "{e}");
        let long = VmConfig {
            cmdline: "x".repeat(layout::CMDLINE_MAX_SIZE + 1),
            ..VmConfig::default()
        };
        assert!(load_kernel(&long, &m)
            .unwrap_err()
            .to_string()
            .contains("command line"));
    }

    #[test]
    fn a_fitting_initramfs_is_placed_below_the_top_of_ram() {
        let m = mem(32);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("initrd");
        std::fs::write(&f, vec![7u8; 1 << 20]).unwrap();
        let cfg = VmConfig {
            initrd: Some(f),
            mem_mib: 32,
            ..VmConfig::default()
        };
        load_kernel(&cfg, &m).unwrap();
        let p: bootparam::boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.ramdisk_size }, 1 << 20);
        assert_eq!(p.hdr.ramdisk_image as u64 % 4096, 0);
        assert!(p.hdr.ramdisk_image as u64 + (1 << 20) <= 32 << 20);
        let b: u8 = m
            .read_obj(GuestAddress(p.hdr.ramdisk_image as u64))
            .unwrap();
        assert_eq!(b, 7);
    }

    #[test]
    fn pvh_boot_writes_start_info_memmap_and_module() {
        use linux_loader::loader::elf::start_info::{
            hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
        };
        let m = mem(32);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("initrd");
        std::fs::write(&f, vec![9u8; 4096]).unwrap();
        let cfg = VmConfig {
            initrd: Some(f),
            mem_mib: 32,
            pvh: true,
            cmdline: "isolab.scenario=startup".into(),
            disks: vec![DiskConfig {
                path: "/unused".into(),
                read_only: true,
            }],
            ..VmConfig::default()
        };
        let entry = load_kernel(&cfg, &m).unwrap();
        // The lab guest's PVH entry (its Xen note), not its ELF entry.
        let elf_entry = u64::from_le_bytes(crate::BARE_GUEST[24..32].try_into().unwrap());
        assert_ne!(entry, elf_entry);
        let info: hvm_start_info = m.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!((info.magic, info.version), (0x336e_c578, 1));
        assert_eq!(info.cmdline_paddr, layout::CMDLINE_START);
        let mut cmd = vec![0u8; 80];
        m.read_slice(&mut cmd, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        let cmd = String::from_utf8_lossy(&cmd);
        assert!(
            cmd.starts_with("isolab.scenario=startup virtio_mmio.device=4K@0xd0000000:5\0"),
            "{cmd}"
        );
        let e820 = layout::e820_map(32 << 20);
        assert_eq!(info.memmap_entries as usize, e820.len());
        for (i, (addr, size, kind)) in e820.iter().enumerate() {
            let e: hvm_memmap_table_entry = m
                .read_obj(GuestAddress(layout::PVH_MEMMAP_START + 24 * i as u64))
                .unwrap();
            assert_eq!((e.addr, e.size, e.type_), (*addr, *size, *kind));
        }
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(module.size, 4096);
        assert_eq!(m.read_obj::<u8>(GuestAddress(module.paddr)).unwrap(), 9);
        // The GDT's code segment is the 32-bit one the entry runs in.
        let code: u64 = m.read_obj(GuestAddress(layout::GDT_START + 8)).unwrap();
        assert_eq!(code, crate::arch::x86_64::gdt::CODE32);
    }
}

#[cfg(test)]
mod leaves_tests {
    use super::*;

    #[test]
    fn a_pvm_host_is_recognised_from_its_leaves() {
        let kvm = u32::from_le_bytes(*b"KVMK");
        let vmk = u32::from_le_bytes(*b"VMKV");
        let m = u32::from_le_bytes(*b"M\0\0\0");
        let plain = [
            (0x4000_0000, 0x4000_0001, kvm, vmk, m),
            (0x4000_0001, 0, 0, 0, 0),
        ];
        let h = HypervisorLeaves::from_leaves(&plain);
        assert_eq!(h.signature, "KVMKVMKVM");
        assert!(!h.pvm());
        let pvm = [
            (0x4000_0000, 0x4000_0002, kvm, vmk, m),
            (0x4000_0002, 0, 0x6d_7670, 0, 0),
        ];
        let h = HypervisorLeaves::from_leaves(&pvm);
        assert_eq!(h.vendor.as_deref(), Some("pvm"));
        assert!(h.pvm());
        // A vendor leaf the signature leaf does not announce is not read.
        let hidden = [(0x4000_0000, 0x4000_0001, kvm, vmk, m), pvm[1]];
        assert!(!HypervisorLeaves::from_leaves(&hidden).pvm());
    }

    #[test]
    #[ignore = "prints this host's leaves; needs /dev/kvm"]
    fn print_this_hosts_leaves() {
        println!("{:?}", hypervisor_leaves(std::path::Path::new("/dev/kvm")));
    }
}
