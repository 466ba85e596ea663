//! Loading the guest: the kernel image (ELF, or a bzImage at its 64-bit
//! entry or unpacked to its vmlinux), the command line, the initramfs, the
//! zero page with its e820 map, and for the PVH entry Xen's
//! `hvm_start_info`.
use std::fs::File;
use std::path::PathBuf;

use linux_loader::loader::{bootparam, load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::{layout, regs};

use super::machine::*;

/// Stage 4: kernel, command line, initramfs and zero page. Returns the
/// 64-bit entry point.
pub(super) fn load_kernel(cfg: &VmConfig, mem: &GuestMemoryMmap) -> Result<u64, VmmError> {
    let loaded = load_image(cfg, mem)?;
    let (name, entry, pvh, kernel_end, setup_header) = (
        loaded.name,
        loaded.entry,
        loaded.pvh,
        loaded.kernel_end,
        loaded.setup_header,
    );
    let entry = if cfg.pvh {
        pvh.ok_or_else(|| VmmError::NoPvhEntry(name.clone()))?
    } else {
        entry
    };
    regs::write_boot_structures(mem, cfg.pvh).map_err(|e| VmmError::Boot(e.to_string()))?;
    let full = kernel_cmdline(cfg);
    let mut cmdline =
        Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(|e| VmmError::Cmdline(e.to_string()))?;
    cmdline.insert_str(&full).map_err(|e| {
        VmmError::Cmdline(format!(
            "{e}: keep it under {} bytes",
            layout::CMDLINE_MAX_SIZE
        ))
    })?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;

    let mut params = bootparam::boot_params::default();
    if let Some(h) = setup_header {
        params.hdr = h;
    }
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.type_of_loader = 0xff;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = (full.len() + 1) as u32;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some(path) = &cfg.initrd {
        load_initrd(path, mem, cfg.mem_mib, kernel_end, &mut params.hdr)?;
    }
    let e820 = layout::e820_map(cfg.mem_mib << 20);
    for (i, (addr, size, kind)) in e820.iter().enumerate() {
        params.e820_table[i] = bootparam::boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    params.acpi_rsdp_addr = crate::arch::x86_64::acpi::ACPI_START;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    // The interrupt topology: CPUs, the I/O APIC, which IRQ reaches which
    // pin (see `mptable`).
    let mp = crate::arch::x86_64::mptable::mptable(cfg.vcpus)
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    mem.write_slice(
        &mp,
        GuestAddress(crate::arch::x86_64::mptable::MPTABLE_START),
    )
    .map_err(|e| VmmError::Boot(e.to_string()))?;
    // ACPI, for kernels that cannot learn of a virtio device from their
    // command line (see `acpi`).
    let devices = crate::arch::x86_64::acpi::virtio_devices(
        super::machine::virtio_devices(cfg),
        crate::devices::virtio::MMIO_WINDOW,
    );
    let acpi = crate::arch::x86_64::acpi::acpi_tables(cfg.vcpus, &devices)
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    mem.write_slice(&acpi, GuestAddress(crate::arch::x86_64::acpi::ACPI_START))
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    if cfg.pvh {
        write_pvh_start_info(mem, &e820, &params)?;
    }
    Ok(entry)
}

/// A kernel in guest memory.
struct LoadedKernel {
    name: PathBuf,
    /// The 64-bit entry.
    entry: u64,
    /// The PVH entry, when the kernel has one.
    pvh: Option<u64>,
    kernel_end: u64,
    setup_header: Option<bootparam::setup_header>,
}

/// Loads the kernel image (ELF, or a bzImage booted at its 64-bit entry or
/// unpacked to its vmlinux).
fn load_image(cfg: &VmConfig, mem: &GuestMemoryMmap) -> Result<LoadedKernel, VmmError> {
    let (name, bytes) = match &cfg.kernel {
        KernelImage::File(p) => (
            p.clone(),
            std::fs::read(p).map_err(|source| VmmError::KernelRead {
                path: p.clone(),
                source,
            })?,
        ),
        KernelImage::Bytes { name, bytes } => (PathBuf::from(name), bytes.as_ref().clone()),
    };
    let info = crate::kernel::identify(&name, &bytes)?;
    let mut image = std::io::Cursor::new(bytes);
    let load_err = |e: linux_loader::loader::Error| VmmError::KernelLoad {
        path: name.clone(),
        detail: e.to_string(),
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let pvh_entry = |r: &linux_loader::loader::KernelLoaderResult| match r.pvh_boot_cap {
        linux_loader::loader::elf::PvhBootCapability::PvhEntryPresent(a) => Some(a.raw_value()),
        _ => None,
    };
    let mut pvh = None;
    let (entry, kernel_end, setup_header) = match info.format {
        crate::kernel::KernelFormat::Elf { .. } => {
            let r = Elf::load(mem, None, &mut image, himem).map_err(load_err)?;
            pvh = pvh_entry(&r);
            (r.kernel_load.raw_value(), r.kernel_end, None)
        }
        crate::kernel::KernelFormat::BzImage { .. } if cfg.unpack_bzimage => {
            // Boot the vmlinux inside at its 64-bit entry, keeping the
            // bzImage's setup header for the zero page.
            let bytes = image.into_inner();
            let header = BzImage::load(mem, None, &mut std::io::Cursor::new(&bytes), himem)
                .map_err(load_err)?
                .setup_header;
            let vmlinux = crate::kernel::extract_vmlinux(&name, &bytes)?;
            image = std::io::Cursor::new(vmlinux);
            let r = Elf::load(mem, None, &mut image, himem).map_err(load_err)?;
            pvh = pvh_entry(&r);
            tracing::debug!(
                entry = format_args!("{:#x}", r.kernel_load.raw_value()),
                "unpacked vmlinux loaded"
            );
            (r.kernel_load.raw_value(), r.kernel_end, header)
        }
        crate::kernel::KernelFormat::BzImage { entry64, .. } => {
            if !entry64 {
                return Err(VmmError::KernelLoad {
                    path: name.clone(),
                    detail: "this bzImage has no 64-bit entry point (XLF_KERNEL_64)".into(),
                });
            }
            let r = BzImage::load(mem, None, &mut image, himem).map_err(load_err)?;
            (
                r.kernel_load.raw_value() + 0x200,
                r.kernel_end,
                r.setup_header,
            )
        }
    };
    Ok(LoadedKernel {
        name,
        entry,
        pvh,
        kernel_end,
        setup_header,
    })
}

/// Loads the initramfs as high in low memory as the kernel allows, above
/// the kernel, and points the setup header at it.
fn load_initrd(
    path: &std::path::Path,
    mem: &GuestMemoryMmap,
    mem_mib: u64,
    kernel_end: u64,
    hdr: &mut bootparam::setup_header,
) -> Result<(), VmmError> {
    let mut f = File::open(path).map_err(|source| VmmError::InitrdRead {
        path: path.to_path_buf(),
        source,
    })?;
    let size = f
        .metadata()
        .map_err(|source| VmmError::InitrdRead {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let low_top = (mem_mib << 20).min(layout::MMIO_GAP_START);
    let max = if hdr.initrd_addr_max != 0 {
        u64::from(hdr.initrd_addr_max) + 1
    } else {
        low_top
    };
    let top = low_top.min(max);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.next_multiple_of(0x1000));
    let Some(addr) = addr else {
        return Err(VmmError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
        });
    };
    mem.read_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| VmmError::InitrdRead {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    hdr.ramdisk_image = addr as u32;
    hdr.ramdisk_size = size as u32;
    Ok(())
}

/// The PVH boot information: `hvm_start_info` (magic, version 1, the
/// command line), the same memory map as the zero page's e820 table, and
/// the initramfs as module 0 — what Linux's `pvh_start_xen` and the lab
/// guest's PVH path read.
fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    e820: &[(u64, u64, u32)],
    params: &bootparam::boot_params,
) -> Result<(), VmmError> {
    use linux_loader::loader::elf::start_info::{
        hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
    };
    let boot = |e: vm_memory::GuestMemoryError| VmmError::Boot(e.to_string());
    for (i, (addr, size, kind)) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *kind,
            reserved: 0,
        };
        mem.write_obj(
            entry,
            GuestAddress(layout::PVH_MEMMAP_START + 24 * i as u64),
        )
        .map_err(boot)?;
    }
    let mut info = hvm_start_info {
        magic: 0x336e_c578, // XEN_HVM_START_MAGIC_VALUE
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        rsdp_paddr: params.acpi_rsdp_addr,
        ..Default::default()
    };
    if params.hdr.ramdisk_size != 0 {
        let module = hvm_modlist_entry {
            paddr: u64::from(params.hdr.ramdisk_image),
            size: u64::from(params.hdr.ramdisk_size),
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(layout::PVH_MODLIST_START))
            .map_err(boot)?;
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(layout::PVH_INFO_START))
        .map_err(boot)?;
    Ok(())
}
