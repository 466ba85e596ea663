//! A polling virtio-blk driver (virtio 1.x, MMIO transport) for the bare
//! guest's `disk-read` scenario.
use super::*;

// Written from the spec, not from the monitor's device code, so it checks
// the device rather than agreeing with it. Everything is polled: the
// notify write is a VM exit, and the monitor has used the buffers by the
// time the guest runs again.

const VQ_SIZE: u16 = 8;
const DISK_CHUNK: usize = 64 * 1024;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// Descriptor table at +0, available ring at +0x400, used ring at +0x800.
#[no_mangle]
static mut VQ_MEM: Page = Page([0; 512]);
/// Request header at +0, status byte at +16.
#[no_mangle]
static mut VQ_REQ: Page = Page([0; 512]);
#[repr(C, align(4096))]
struct DiskBuf([u8; DISK_CHUNK]);
#[no_mangle]
static mut DISK_BUF: DiskBuf = DiskBuf([0; DISK_CHUNK]);

pub(crate) fn mmio_r32(addr: u64) -> u32 {
    // SAFETY: the monitor maps the virtio window; a read is a VM exit.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

pub(crate) fn mmio_w32(addr: u64, v: u32) {
    // SAFETY: as above; a write is a VM exit.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

pub(crate) fn poke<T>(addr: u64, v: T) {
    // SAFETY: callers pass addresses inside this guest's own statics.
    unsafe { core::ptr::write_volatile(addr as *mut T, v) }
}

pub(crate) fn peek_volatile<T: Copy>(addr: u64) -> T {
    // SAFETY: as for poke.
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// Every `virtio_mmio.device=SIZE@BASE:IRQ` word's base, in order.
pub(crate) fn virtio_bases(cmdline: &[u8]) -> impl Iterator<Item = u64> + '_ {
    cmdline
        .split(|&c| c == b' ')
        .filter_map(|tok| tok.strip_prefix(b"virtio_mmio.device="))
        .filter_map(virtio_base)
}

/// A page directory for a device window outside the mapped first GiB
/// (QEMU's virtio-mmio at 0xfeb00000), when the boot tables have none.
#[no_mangle]
static mut DEV_PD: Page = Page([0; 512]);

/// Maps the 2 MiB page holding `base` (uncached, user-accessible) into
/// the current page tables, if it is not mapped yet. Ring 0 only. Neither
/// our monitor's boot tables nor the PVH path's map above the first GiB.
/// One spare page directory: every window must lie in one GiB (ours at
/// 0xd0000000, QEMU's at 0xfeb00000 do).
pub(crate) fn map_device_page(base: u64) {
    const MASK: u64 = 0x000f_ffff_ffff_f000;
    let cr3: u64;
    // SAFETY: reading CR3 in ring 0.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    if base >> 39 != 0 {
        return;
    }
    let pdpt = peek_volatile::<u64>(cr3 & MASK) & MASK;
    let pdpte_at = pdpt + 8 * ((base >> 30) & 511);
    let mut pdpte = peek_volatile::<u64>(pdpte_at);
    if pdpte & 1 == 0 {
        pdpte = core::ptr::addr_of!(DEV_PD) as u64 | 7;
        poke(pdpte_at, pdpte);
    }
    let pde_at = (pdpte & MASK) + 8 * ((base >> 21) & 511);
    if peek_volatile::<u64>(pde_at) & 1 == 0 {
        // Present, writable, user, write-through, cache-disabled, 2 MiB.
        poke(pde_at, (base & !0x1f_ffff) | 0x9f);
        // SAFETY: reloading CR3 flushes the TLB; the tables stay valid.
        unsafe { asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) };
    }
}

/// Sets up queue `q` of the device at `base` (between FEATURES_OK and
/// DRIVER_OK): `size` entries, its descriptor table, available and used
/// rings at `mem`, +0x400 and +0x800; then makes it live.
pub(crate) fn setup_queue(base: u64, q: u32, size: u16, mem: u64) -> Result<(), &'static str> {
    mmio_w32(base + 0x30, q);
    if mmio_r32(base + 0x44) != 0 || mmio_r32(base + 0x34) < size as u32 {
        return Err("a virtio queue is live already or too small");
    }
    mmio_w32(base + 0x38, size as u32);
    for (reg, addr) in [(0x80, mem), (0x90, mem + 0x400), (0xa0, mem + 0x800)] {
        mmio_w32(base + reg, addr as u32);
        mmio_w32(base + reg + 4, (addr >> 32) as u32);
    }
    mmio_w32(base + 0x44, 1);
    if mmio_r32(base + 0x44) != 1 {
        return Err("the device did not accept a virtio queue");
    }
    Ok(())
}

/// `4K@0xd0000000:5` → 0xd0000000.
pub(crate) fn virtio_base(v: &[u8]) -> Option<u64> {
    let at = v.iter().position(|&c| c == b'@')?;
    let hex = v[at + 1..].strip_prefix(b"0x")?;
    let mut base = 0u64;
    for &c in hex.iter().take_while(|&&c| c != b':') {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        base = base.checked_mul(16)?.checked_add(d as u64)?;
    }
    Some(base)
}

struct Disk {
    base: u64,
    avail_idx: u16,
    requests: u64,
}

impl Disk {
    /// Probe, negotiate VERSION_1 only, set up queue 0, DRIVER_OK.
    fn init(base: u64) -> Result<(Disk, u64), &'static str> {
        if mmio_r32(base) != 0x7472_6976 {
            return Err("no virtio-mmio magic at the announced address");
        }
        if mmio_r32(base + 0x04) != 2 {
            return Err("not a virtio-mmio version 2 device");
        }
        if mmio_r32(base + 0x08) != 2 {
            return Err("the virtio device is not a block device");
        }
        mmio_w32(base + 0x70, 0);
        mmio_w32(base + 0x70, 1);
        mmio_w32(base + 0x70, 1 | 2);
        mmio_w32(base + 0x14, 1);
        if mmio_r32(base + 0x10) & 1 == 0 {
            return Err("the device does not offer VIRTIO_F_VERSION_1");
        }
        mmio_w32(base + 0x24, 0);
        mmio_w32(base + 0x20, 0);
        mmio_w32(base + 0x24, 1);
        mmio_w32(base + 0x20, 1);
        mmio_w32(base + 0x70, 1 | 2 | 8);
        if mmio_r32(base + 0x70) & 8 == 0 {
            return Err("the device refused our features");
        }
        setup_queue(base, 0, VQ_SIZE, core::ptr::addr_of!(VQ_MEM) as u64)?;
        mmio_w32(base + 0x70, 1 | 2 | 8 | 4);
        let sectors = mmio_r32(base + 0x100) as u64 | (mmio_r32(base + 0x104) as u64) << 32;
        Ok((
            Disk {
                base,
                avail_idx: 0,
                requests: 0,
            },
            sectors,
        ))
    }

    fn desc(i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let d = core::ptr::addr_of!(VQ_MEM) as u64 + 16 * i;
        poke(d, addr);
        poke(d + 8, len);
        poke(d + 12, flags);
        poke(d + 14, next);
    }

    /// One request: header, optional data buffer, status. Returns the
    /// status byte the device wrote.
    fn request(&mut self, kind: u32, sector: u64, len: u32) -> Result<u8, &'static str> {
        let req = core::ptr::addr_of!(VQ_REQ) as u64;
        let vq = core::ptr::addr_of!(VQ_MEM) as u64;
        poke(req, kind);
        poke(req + 4, 0u32);
        poke(req + 8, sector);
        poke(req + 16, 0xffu8);
        if len == 0 {
            Self::desc(0, req, 16, DESC_F_NEXT, 2);
        } else {
            let buf = core::ptr::addr_of!(DISK_BUF) as u64;
            let write = if kind == 1 { 0 } else { DESC_F_WRITE };
            Self::desc(0, req, 16, DESC_F_NEXT, 1);
            Self::desc(1, buf, len, DESC_F_NEXT | write, 2);
        }
        Self::desc(2, req + 16, 1, DESC_F_WRITE, 0);
        poke(vq + 0x400 + 4 + 2 * (self.avail_idx % VQ_SIZE) as u64, 0u16);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        poke(vq + 0x400 + 2, self.avail_idx);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        mmio_w32(self.base + 0x50, 0);
        let mut spins = 0u64;
        while peek_volatile::<u16>(vq + 0x800 + 2) != self.avail_idx {
            spins += 1;
            if spins > 100_000_000 {
                return Err("the device never used the request");
            }
        }
        self.requests += 1;
        // Acknowledge the interrupt the device raised (we do not take it).
        let isr = mmio_r32(self.base + 0x60);
        mmio_w32(self.base + 0x64, isr);
        Ok(peek_volatile::<u8>(req + 16))
    }
}

pub(crate) fn disk_scenario(cmdline: &[u8]) -> Result<(), &'static str> {
    if virtio_bases(cmdline).next().is_none() {
        return Err("no virtio_mmio.device= on the command line: attach a disk");
    }
    // The first announced window that holds a block device (QEMU lists
    // every transport, most of them empty).
    let base = virtio_bases(cmdline)
        .find(|&b| mmio_r32(b) == 0x7472_6976 && mmio_r32(b + 0x08) == 2)
        .ok_or("no virtio block device at the announced addresses")?;
    let (mut disk, sectors) = Disk::init(base)?;
    // GET_ID: the serial the monitor gives its disks.
    if disk.request(8, 0, 20)? != 0 {
        return Err("GET_ID failed");
    }
    put("\"disk_id\":");
    // SAFETY: the device wrote up to 20 bytes into the buffer.
    let id = unsafe { &(*core::ptr::addr_of!(DISK_BUF)).0[..20] };
    json_str(&id[..id.iter().position(|&c| c == 0).unwrap_or(20)]);
    put(",");
    // With isolab.write=1: sector 0 gets a pattern and is flushed first.
    if arg(cmdline, b"isolab.write") == Some(b"1") {
        for i in 0..512usize {
            // SAFETY: in-bounds write to our own buffer.
            unsafe { (*core::ptr::addr_of_mut!(DISK_BUF)).0[i] = (i as u8).wrapping_mul(13) };
        }
        if disk.request(1, 0, 512)? != 0 {
            return Err("the write was refused");
        }
        if disk.request(4, 0, 0)? != 0 {
            return Err("the flush failed");
        }
        put("\"wrote_sector0\":true,");
    }
    // A read past the end must fail with IOERR (1), not succeed.
    if disk.request(0, sectors, 512)? != 1 {
        return Err("a read past the end of the disk did not fail");
    }
    let limit = arg_u64(cmdline, b"isolab.kib", u64::MAX / 1024).saturating_mul(2);
    let total = sectors.min(limit);
    let mut sum = kernels::CHECKSUM_SEED;
    let mut sector = 0u64;
    let mut ext4 = false;
    mark(ports::MARK_WORK_START);
    while sector < total {
        let n = (total - sector).min((DISK_CHUNK / 512) as u64);
        if disk.request(0, sector, (n * 512) as u32)? != 0 {
            return Err("a read failed");
        }
        // SAFETY: the device filled n sectors of the buffer.
        let data = unsafe { &(*core::ptr::addr_of!(DISK_BUF)).0[..(n * 512) as usize] };
        if sector == 0 && data.len() >= 1082 {
            ext4 = data[1080] == 0x53 && data[1081] == 0xef;
        }
        sum = kernels::word_checksum(sum, data);
        sector += n;
    }
    mark(ports::MARK_WORK_END);
    put("\"capacity_sectors\":");
    put_u64(sectors);
    put(",\"bytes\":");
    put_u64(total * 512);
    put(",\"requests\":");
    put_u64(disk.requests);
    put(",\"checksum\":\"");
    put_hex16(sum);
    put("\",\"ext4\":");
    put(if ext4 { "true" } else { "false" });
    put(",");
    Ok(())
}

