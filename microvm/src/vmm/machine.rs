//! The machine a boot builds, and what every boot step shares: its
//! configuration and report, its errors, the host-side pieces (KVM, guest
//! memory, the serial input thread, resident-memory readings).
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;
use crate::devices::legacy::{monotonic_ns, SerialDevice};
use crate::vcpu::StopReason;
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
    #[error("{0} virtio devices asked for (disks and network); the monitor places at most {max}: attach fewer disks", max = layout::VIRTIO_MAX_DEVICES)]
    TooManyDisks(usize),
    #[error("--net-fd {fd}: {why}: pass a tap device opened with IFF_TAP | IFF_NO_PI (no IFF_VNET_HDR), as the lab does")]
    NotATap { fd: i32, why: String },
    #[error("{0}")]
    Vcpu(String),
    #[error("vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
}

pub(super) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
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

/// A network device for the guest: virtio-net over a tap the caller
/// opened (`IFF_TAP | IFF_NO_PI`, no vnet header) and put where it wants
/// it, e.g. on a bridge. The monitor uses a duplicate of the descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub tap_fd: i32,
    pub mac: [u8; 6],
}

impl NetConfig {
    /// A locally administered unicast address, for a run that names none.
    pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x15, 0x0a, 0x00, 0x00, 0x01];

    /// `02:15:0a:00:00:05` → bytes; a multicast address is refused (a
    /// NIC's own address is unicast).
    pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
        let bad = || {
            format!("--mac {s:?}: write six hex bytes with colons, e.g. 02:15:0a:00:00:05 (unicast: the first byte even)")
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if mac[0] & 1 != 0 {
            return Err(bad());
        }
        Ok(mac)
    }
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
    /// A virtio-net device, announced after the disks.
    pub net: Option<NetConfig>,
    /// Enter at the kernel's PVH entry (its Xen ELF note: 32-bit protected
    /// mode, paging off, `hvm_start_info` in rbx) instead of the Linux
    /// 64-bit entry.
    pub pvh: bool,
    /// Jail the calling process before the guest runs (see `crate::jail`).
    /// `isolab-vmm` does; a library caller would jail itself, so the
    /// default is off.
    pub jail: bool,
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
            net: None,
            pvh: false,
            jail: false,
        }
    }
}

/// A named host instant: the lab's one `Mark` type.
pub use isolab_abi::mark::Mark;

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
    /// The text the guest left in its result page (`ports::RESULT_PAGE`).
    #[serde(default)]
    pub result: Option<String>,
    /// How far the monitor jailed itself before the guest ran.
    #[serde(default)]
    pub jail: crate::jail::JailLevel,
    /// Guest RAM pages resident at exit (touched by guest or monitor).
    pub guest_touched_bytes: u64,
    /// Peak RSS of this process (VmHWM).
    pub process_peak_rss_bytes: u64,
    pub unhandled_pio: u64,
    pub nop_writes: u64,
    /// What each virtio-blk disk did, in `disks` order.
    #[serde(default)]
    pub disks: Vec<crate::devices::virtio::block::BlockStats>,
    /// What the virtio-net device moved, if the VM had one.
    #[serde(default)]
    pub net: Option<crate::devices::virtio::NetStats>,
}

pub(super) struct Stamps(pub(super) Vec<Mark>);

impl Stamps {
    pub(super) fn mark(&mut self, stage: Stage) {
        self.0.push(Mark {
            name: stage.name().to_owned(),
            ns: monotonic_ns(),
        });
    }
}

/// Copies stdin into the UART's receive FIFO until told to stop.
pub(super) fn serial_input(serial: &Arc<Mutex<SerialDevice>>, stop: &AtomicBool) {
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

pub(super) fn available_mib() -> u64 {
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
pub(super) fn create_memory(vm: &VmFd, mem_mib: u64) -> Result<GuestMemoryMmap, VmmError> {
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

/// How many virtio devices the VM has: its disks, then its network.
pub fn virtio_devices(cfg: &VmConfig) -> usize {
    cfg.disks.len() + usize::from(cfg.net.is_some())
}

/// The command line the guest gets: the configured one, then one
/// `virtio_mmio.device=` word per virtio device (disks, then the
/// network), as Firecracker announces its devices to a kernel without
/// ACPI or a device tree. The bare lab guest finds its devices the same
/// way.
pub fn kernel_cmdline(cfg: &VmConfig) -> String {
    let mut s = cfg.cmdline.clone();
    for i in 0..virtio_devices(cfg) {
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
pub(super) fn resident_bytes(mem: &GuestMemoryMmap) -> u64 {
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

/// This process's `/proc/self/status`, opened before the jail (which can
/// open no file) and read again at the end for VmHWM. Not getrusage: its
/// `ru_maxrss` keeps the high-water mark of the process image before
/// `execve`, i.e. of the harness that forked the monitor (a 300 MiB
/// parent made a 2.6 MiB monitor read 321 MiB).
static PROC_STATUS: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();

pub(super) fn open_proc_status() {
    PROC_STATUS.get_or_init(|| std::fs::File::open("/proc/self/status").ok());
}

/// Peak RSS of this process (VmHWM).
pub(super) fn peak_rss() -> u64 {
    use std::os::unix::fs::FileExt;
    open_proc_status();
    let Some(Some(f)) = PROC_STATUS.get() else {
        return 0;
    };
    let mut buf = vec![0u8; 8192];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// What KVM's hypervisor CPUID leaves tell a guest, as the monitor passes
/// them on unchanged: the signature at 0x4000_0000 and, on a PVM host,
/// the vendor leaf 0x4000_0002 with its "pvm" signature — which is how a
/// PVM guest kernel (`CONFIG_PVM_GUEST`) recognises its hypervisor. QEMU
/// overwrites the signature leaf, so a PVM guest needs a patch there; the
/// monitor does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervisorLeaves {
    /// "KVMKVMKVM" on any KVM.
    pub signature: String,
    /// The highest hypervisor leaf (≥ 0x4000_0002 on PVM).
    pub max_leaf: u32,
    /// The vendor leaf's signature (EBX of 0x4000_0002), e.g. "pvm".
    pub vendor: Option<String>,
}

impl HypervisorLeaves {
    /// From the leaves KVM reports (function, eax, ebx, ecx, edx).
    pub fn from_leaves(leaves: &[(u32, u32, u32, u32, u32)]) -> Self {
        let text = |regs: &[u32]| {
            let b: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .to_owned()
        };
        let sig = leaves.iter().find(|l| l.0 == 0x4000_0000);
        let max_leaf = sig.map_or(0, |l| l.1);
        let vendor = leaves
            .iter()
            .find(|l| l.0 == 0x4000_0002 && max_leaf >= 0x4000_0002)
            .map(|l| text(&[l.2]));
        Self {
            signature: sig.map(|l| text(&[l.2, l.3, l.4])).unwrap_or_default(),
            max_leaf,
            vendor,
        }
    }

    /// Would a PVM guest kernel find its hypervisor?
    pub fn pvm(&self) -> bool {
        self.signature == "KVMKVMKVM" && self.vendor.as_deref() == Some("pvm")
    }
}

/// The hypervisor leaves of `/dev/kvm`'s supported CPUID.
pub fn hypervisor_leaves(device: &std::path::Path) -> Result<HypervisorLeaves, VmmError> {
    let kvm = open_kvm(device)?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report its CPUID"))?;
    let leaves: Vec<_> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function >= 0x4000_0000 && e.function < 0x4000_0100)
        .map(|e| (e.function, e.eax, e.ebx, e.ecx, e.edx))
        .collect();
    Ok(HypervisorLeaves::from_leaves(&leaves))
}
