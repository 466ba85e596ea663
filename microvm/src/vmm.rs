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
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use linux_loader::loader::{bootparam, load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{layout, regs};
use crate::devices::legacy::{
    monotonic_ns, EventFdTrigger, GuestMark, LabPorts, SerialDevice, SerialSink, I8042,
};
use crate::devices::virtio::{Block, MmioTransport};
use crate::devices::Bus;
use crate::ports;
use crate::vcpu::{self, StopReason};
use isolab_abi::stage::Stage;

/// Errors of the boot path, one variant per stage.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0} does not exist: enable KVM (load kvm_intel or kvm_amd) or run `isolab doctor`")]
    NoKvm(PathBuf),
    #[error("no permission to open {0}: run as root or join the kvm group")]
    KvmPermission(PathBuf),
    #[error("opening {path}: {source}")]
    KvmOpen {
        path: PathBuf,
        source: kvm_ioctls::Error,
    },
    #[error("KVM API version {0} is not 12: this kernel's KVM is too old or too new for isolab")]
    ApiVersion(i32),
    #[error("KVM lacks the {0} capability isolab needs: use a host with a full KVM (see `isolab doctor`)")]
    MissingCap(&'static str),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory of {mib} MiB is too small: use at least {min} MiB (--mem)")]
    MemoryTooSmall { mib: u64, min: u64 },
    #[error("guest memory of {mib} MiB is more than this host has available ({available_mib} MiB): use a smaller --mem")]
    MemoryTooLarge { mib: u64, available_mib: u64 },
    #[error("allocating guest memory: {0}")]
    Memory(String),
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error("loading kernel {path}: {detail}: pass a Linux bzImage or vmlinux, or the lab guest")]
    KernelLoad { path: PathBuf, detail: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory above the kernel: raise --mem")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("cannot read initramfs {path}: {source}")]
    InitrdRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} has no PVH entry (no Xen PHYS32_ENTRY ELF note): boot it without --pvh, or build it with CONFIG_PVH=y")]
    NoPvhEntry(PathBuf),
    #[error("writing boot structures: {0}")]
    Boot(String),
    #[error(transparent)]
    Disk(#[from] crate::devices::virtio::BlockError),
    #[error("{0} disks asked for; the monitor places at most {max}: attach fewer", max = layout::VIRTIO_MAX_DEVICES)]
    TooManyDisks(usize),
    #[error("{0}")]
    Vcpu(String),
    #[error("vCPU thread: {0}")]
    Thread(std::io::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// What to boot.
#[derive(Debug, Clone)]
pub enum KernelImage {
    /// A kernel file (ELF or bzImage).
    File(PathBuf),
    /// In-memory bytes with a name for messages (the embedded lab guest).
    Bytes { name: String, bytes: Arc<Vec<u8>> },
}

/// A disk for the guest: a virtio-blk device over a host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A VM to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: KernelImage,
    pub cmdline: String,
    pub initrd: Option<PathBuf>,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub timeout: Duration,
    /// Echo serial output to stderr as it comes (stdout carries the report).
    pub echo_serial: bool,
    /// Bytes of serial output kept for the harness (the rest is dropped).
    pub serial_limit: usize,
    pub kvm_device: PathBuf,
    /// Boot a bzImage by unpacking the vmlinux it carries and entering that
    /// at its 64-bit entry (skips the decompressor; see kernel.rs).
    pub unpack_bzimage: bool,
    /// Feed this process's stdin to the guest's serial port (`-it`).
    pub serial_input: bool,
    /// Create KVM's in-kernel PIT. A Linux guest needs its timer; the bare
    /// lab guest takes no interrupts, and destroying the PIT (stopping its
    /// kthread) costs ~15 ms at teardown here, so it goes without.
    pub pit: bool,
    /// virtio-blk disks, announced on the command line in this order
    /// (`/dev/vda`, `/dev/vdb` … in a Linux guest).
    pub disks: Vec<DiskConfig>,
    /// Enter at the kernel's PVH entry (its Xen ELF note: 32-bit protected
    /// mode, paging off, `hvm_start_info` in rbx) instead of the Linux
    /// 64-bit entry.
    pub pvh: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: KernelImage::Bytes {
                name: "lab guest".into(),
                bytes: Arc::new(crate::BARE_GUEST.to_vec()),
            },
            cmdline: String::new(),
            initrd: None,
            mem_mib: 64,
            vcpus: 1,
            timeout: Duration::from_secs(10),
            echo_serial: false,
            serial_limit: 16 << 20,
            kvm_device: PathBuf::from("/dev/kvm"),
            pit: false,
            unpack_bzimage: true,
            serial_input: false,
            disks: Vec::new(),
            pvh: false,
        }
    }
}

/// A named host instant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub name: String,
    pub ns: u64,
}

/// What happened.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmReport {
    /// Monitor stages, then guest marks, in time order.
    pub marks: Vec<Mark>,
    pub guest_marks: Vec<(u8, u64)>,
    pub stop: StopReason,
    pub timed_out: bool,
    pub exit_code: Option<u8>,
    pub serial: String,
    pub serial_dropped: u64,
    /// Guest RAM pages resident at exit (touched by guest or monitor).
    pub guest_touched_bytes: u64,
    /// Peak RSS of this process (VmHWM).
    pub process_peak_rss_bytes: u64,
    pub unhandled_pio: u64,
    pub nop_writes: u64,
    /// What each virtio-blk disk did, in `disks` order.
    #[serde(default)]
    pub disks: Vec<crate::devices::virtio::block::BlockStats>,
}

struct Stamps(Vec<Mark>);

impl Stamps {
    fn mark(&mut self, stage: Stage) {
        self.0.push(Mark {
            name: stage.name().to_owned(),
            ns: monotonic_ns(),
        });
    }
}

/// Copies stdin into the UART's receive FIFO until told to stop.
fn serial_input(serial: &Arc<Mutex<SerialDevice>>, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd with a 50 ms timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, 50) };
        if r <= 0 || pfd.revents & libc::POLLIN == 0 {
            if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                return;
            }
            continue;
        }
        // SAFETY: reading into a local buffer from fd 0.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        let mut s = serial.lock().unwrap_or_else(|p| p.into_inner());
        let _ = s.0.enqueue_raw_bytes(&buf[..n as usize]);
    }
}

/// Stage 1: open KVM and check what the monitor relies on.
pub fn open_kvm(device: &std::path::Path) -> Result<Kvm, VmmError> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::NoKvm(device.to_path_buf()),
            std::io::ErrorKind::PermissionDenied => VmmError::KvmPermission(device.to_path_buf()),
            _ => VmmError::KvmOpen {
                path: device.to_path_buf(),
                source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
            },
        })?;
    // SAFETY: the fd was just opened on a KVM device and is handed over.
    let kvm = unsafe { Kvm::from_raw_fd(f.into_raw_fd()) };
    let v = kvm.get_api_version();
    if v != 12 {
        return Err(VmmError::ApiVersion(v));
    }
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

fn available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(u64::MAX)
}

/// Stage 3: guest RAM, registered with KVM.
fn create_memory(vm: &VmFd, mem_mib: u64) -> Result<GuestMemoryMmap, VmmError> {
    if mem_mib < layout::MIN_MEMORY_MIB {
        return Err(VmmError::MemoryTooSmall {
            mib: mem_mib,
            min: layout::MIN_MEMORY_MIB,
        });
    }
    let available = available_mib();
    if mem_mib > available {
        return Err(VmmError::MemoryTooLarge {
            mib: mem_mib,
            available_mib: available,
        });
    }
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_mib << 20)
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| VmmError::Memory(e.to_string()))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region's host mapping lives in `mem`, which outlives
        // the VM (it is dropped after the vCPUs and the VM fd).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("register guest memory"))?;
    }
    Ok(mem)
}

/// Stage 4: kernel, command line, initramfs and zero page. Returns the
/// 64-bit entry point.
fn load_kernel(cfg: &VmConfig, mem: &GuestMemoryMmap) -> Result<u64, VmmError> {
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
        let mut f = File::open(path).map_err(|source| VmmError::InitrdRead {
            path: path.clone(),
            source,
        })?;
        let size = f
            .metadata()
            .map_err(|source| VmmError::InitrdRead {
                path: path.clone(),
                source,
            })?
            .len();
        let low_top = (cfg.mem_mib << 20).min(layout::MMIO_GAP_START);
        let max = if params.hdr.initrd_addr_max != 0 {
            u64::from(params.hdr.initrd_addr_max) + 1
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
                path: path.clone(),
                size,
            });
        };
        mem.read_volatile_from(GuestAddress(addr), &mut f, size as usize)
            .map_err(|e| VmmError::InitrdRead {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
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
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    if cfg.pvh {
        write_pvh_start_info(mem, &e820, &params)?;
    }
    Ok(entry)
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

/// The command line the guest gets: the configured one, then one
/// `virtio_mmio.device=` word per disk, as Firecracker announces its
/// devices to a kernel without ACPI or a device tree. The bare lab guest
/// finds its disk the same way.
pub fn kernel_cmdline(cfg: &VmConfig) -> String {
    let mut s = cfg.cmdline.clone();
    for i in 0..cfg.disks.len() {
        let (base, irq) = virtio_slot(i);
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&crate::devices::virtio::cmdline_word(base, irq));
    }
    s
}

/// The MMIO window and interrupt line of the `i`th virtio device.
pub fn virtio_slot(i: usize) -> (u64, u32) {
    (
        layout::VIRTIO_MMIO_START + i as u64 * crate::devices::virtio::MMIO_WINDOW,
        layout::VIRTIO_FIRST_IRQ + i as u32,
    )
}

/// Resident bytes of the guest's RAM mappings (pages the guest touched).
fn resident_bytes(mem: &GuestMemoryMmap) -> u64 {
    let page = 4096usize;
    let mut total = 0u64;
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: host..host+len is the region's live mapping; vec has one
        // byte per page.
        let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if r == 0 {
            total += vec.iter().filter(|b| **b & 1 == 1).count() as u64 * page as u64;
        }
    }
    total
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Boots a VM and runs it to the end. `launch` is the caller's launch mark.
pub fn boot(cfg: &VmConfig) -> Result<VmReport, VmmError> {
    let mut st = Stamps(Vec::new());
    // Disks first: a missing or odd-sized image is the user's to fix, and
    // nothing has been created yet.
    let blocks = open_disks(cfg)?;
    let kvm = open_kvm(&cfg.kvm_device)?;
    st.mark(Stage::KvmOpen);
    let vm = create_vm(&kvm, cfg.pit)?;
    st.mark(Stage::VmCreated);
    let mem = create_memory(&vm, cfg.mem_mib)?;
    st.mark(Stage::Memory);
    let entry = load_kernel(cfg, &mem)?;
    st.mark(Stage::KernelLoaded);
    let mut devices = attach_devices(cfg, &vm, &mem, blocks)?;
    let vcpus = create_vcpus(&kvm, &vm, cfg, entry)?;
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
    Ok(report(st, run, seen))
}

fn open_disks(cfg: &VmConfig) -> Result<Vec<Block>, VmmError> {
    if cfg.disks.len() > layout::VIRTIO_MAX_DEVICES {
        return Err(VmmError::TooManyDisks(cfg.disks.len()));
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

/// The VM's devices: the port bus (serial, i8042, the lab's ports), the
/// MMIO bus (virtio disks) and what reads their state at the end.
struct Devices {
    serial: Arc<Mutex<SerialDevice>>,
    captured: Arc<Mutex<Vec<u8>>>,
    lab: Arc<Mutex<LabPorts>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    disks: Vec<Arc<Mutex<MmioTransport<Block>>>>,
    input_stop: Arc<AtomicBool>,
    input_thread: Option<std::thread::JoinHandle<()>>,
}

fn attach_devices(
    cfg: &VmConfig,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    blocks: Vec<Block>,
) -> Result<Devices, VmmError> {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Thread)?;
    if let Err(e) = vm.register_irqfd(&serial_evt, 4) {
        tracing::debug!(%e, "no irqfd for the serial port; the guest must poll it");
    }
    let sink = SerialSink {
        echo: cfg
            .echo_serial
            .then(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write + Send>),
        captured: captured.clone(),
        limit: cfg.serial_limit,
        dropped: 0,
        seen: Vec::new(),
    };
    let serial = Arc::new(Mutex::new(SerialDevice(vm_superio::Serial::new(
        EventFdTrigger(serial_evt),
        sink,
    ))));
    let lab = Arc::new(Mutex::new(LabPorts::default()));
    let mut pio = Bus::new();
    let bus_err = |e: crate::devices::bus::BusError| VmmError::Boot(e.to_string());
    pio.insert(0x3f8, 8, serial.clone()).map_err(bus_err)?;
    pio.insert(0x60, 5, Arc::new(Mutex::new(I8042)))
        .map_err(bus_err)?;
    pio.insert(u64::from(ports::MARK_PORT), 3, lab.clone())
        .map_err(bus_err)?;
    // Serial input: a thread polls stdin and queues bytes into the UART.
    let input_stop = Arc::new(AtomicBool::new(false));
    let input_thread = cfg.serial_input.then(|| {
        let (serial, input_stop) = (serial.clone(), input_stop.clone());
        std::thread::spawn(move || serial_input(&serial, &input_stop))
    });
    let mut mmio = Bus::new();
    let mut disks = Vec::new();
    for (i, block) in blocks.into_iter().enumerate() {
        let (base, irq) = virtio_slot(i);
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Thread)?;
        vm.register_irqfd(&evt, irq)
            .map_err(kvm_err("connect a virtio interrupt (irqfd)"))?;
        let transport = MmioTransport::new(block, mem.clone(), Box::new(evt))
            .map_err(|e| VmmError::Boot(format!("virtio queue: {e}")))?;
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(base, crate::devices::virtio::MMIO_WINDOW, transport.clone())
            .map_err(bus_err)?;
        disks.push(transport);
    }
    Ok(Devices {
        serial,
        captured,
        lab,
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        disks,
        input_stop,
        input_thread,
    })
}

/// What the devices saw, read once the vCPUs have stopped.
struct Seen {
    guest_touched_bytes: u64,
    process_peak_rss_bytes: u64,
    unhandled_pio: u64,
    guest_marks: Vec<GuestMark>,
    exit_code: Option<u8>,
    nop_writes: u64,
    serial_dropped: u64,
    serial_seen: Vec<(String, u64)>,
    serial_text: String,
    disk_stats: Vec<crate::devices::virtio::block::BlockStats>,
}

impl Devices {
    /// Stops serial input and reads every device's figures.
    fn stop_and_read(&mut self, mem: &GuestMemoryMmap) -> Seen {
        self.input_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.input_thread.take() {
            let _ = t.join();
        }
        let (guest_marks, exit_code, nop_writes) = {
            let l = self.lab.lock().unwrap_or_else(|p| p.into_inner());
            (l.marks.clone(), l.exit_code, l.nop_writes)
        };
        let (serial_dropped, serial_seen) = {
            let s = self.serial.lock().unwrap_or_else(|p| p.into_inner());
            (s.0.writer().dropped, s.0.writer().seen.clone())
        };
        Seen {
            guest_touched_bytes: resident_bytes(mem),
            process_peak_rss_bytes: peak_rss(),
            unhandled_pio: self.pio.unhandled().writes + self.pio.unhandled().reads,
            guest_marks,
            exit_code,
            nop_writes,
            serial_dropped,
            serial_seen,
            serial_text: String::from_utf8_lossy(
                &self.captured.lock().unwrap_or_else(|p| p.into_inner()),
            )
            .into_owned(),
            disk_stats: self
                .disks
                .iter()
                .map(|d| d.lock().unwrap_or_else(|p| p.into_inner()).device().stats)
                .collect(),
        }
    }
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    cfg: &VmConfig,
    entry: u64,
) -> Result<Vec<kvm_ioctls::VcpuFd>, VmmError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report its CPUID"))?;
    let mut vcpus = Vec::new();
    for i in 0..cfg.vcpus.max(1) {
        let v = vm
            .create_vcpu(u64::from(i))
            .map_err(kvm_err("create a vCPU"))?;
        regs::configure_vcpu(&v, &cpuid, i, cfg.vcpus.max(1), entry, cfg.pvh)
            .map_err(|e| VmmError::Vcpu(e.to_string()))?;
        vcpus.push(v);
    }
    vcpu::install_kick_handler().map_err(VmmError::Thread)?;
    Ok(vcpus)
}

/// How the vCPUs ended.
struct Ran {
    stop: StopReason,
    timed_out: bool,
    first_entry: u64,
}

/// Runs vCPU 0 on its own thread (extra vCPUs wait for an INIT/SIPI a
/// Linux guest would send; the bare guest never does) until one reports
/// or the timeout (the `exit` mark); then stops them all.
fn run_vcpus(
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    devices: &Devices,
    timeout: Duration,
    st: &mut Stamps,
) -> Result<Ran, VmmError> {
    let stop = Arc::new(AtomicBool::new(false));
    let first_entry = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for (i, mut v) in vcpus.into_iter().enumerate() {
        let (pio, mmio, stop, first_entry, tx) = (
            devices.pio.clone(),
            devices.mmio.clone(),
            stop.clone(),
            first_entry.clone(),
            tx.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let r = vcpu::run(&mut v, &pio, &mmio, &stop, &first_entry);
                let _ = tx.send((i, r));
            })
            .map_err(VmmError::Thread)?;
        handles.push(h);
    }
    drop(tx);
    let (stop_reason, timed_out, reporter) = match rx.recv_timeout(timeout) {
        Ok((i, r)) => (r, false, Some(i)),
        Err(_) => (StopReason::Stopped, true, None),
    };
    st.mark(Stage::Exit);
    // Stop every vCPU: set the flag and kick the threads until they end.
    // The one that reported is already leaving its loop: just join it.
    stop.store(true, Ordering::SeqCst);
    if let Some(i) = reporter {
        let h = handles.remove(i);
        let _ = h.join();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while handles.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < deadline {
        for h in &handles {
            use std::os::unix::thread::JoinHandleExt;
            if !h.is_finished() {
                // SAFETY: the thread is alive (not finished) and owned here.
                unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for h in handles {
        if h.is_finished() {
            let _ = h.join();
        }
    }
    Ok(Ran {
        stop: stop_reason,
        timed_out,
        first_entry: first_entry.load(Ordering::SeqCst),
    })
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
        guest_touched_bytes: seen.guest_touched_bytes,
        process_peak_rss_bytes: seen.process_peak_rss_bytes,
        unhandled_pio: seen.unhandled_pio,
        nop_writes: seen.nop_writes,
        disks: seen.disk_stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
