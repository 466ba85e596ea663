//! The transport and the block device driven as a guest driver would:
//! register reads and writes through the bus interface, descriptors and
//! rings written into guest memory by hand (virtio 1.x §2.7).
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Block, Interrupt, MmioTransport};
use crate::devices::bus::BusDevice;

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HEADER: u64 = 0x4000;
const DATA: u64 = 0x5000;
const STATUS: u64 = 0x9000;
const QSIZE: u16 = 16;
const F_WRITE: u16 = 2;
const F_NEXT: u16 = 1;

#[derive(Clone, Default)]
struct Counter(Arc<AtomicU32>);
impl Interrupt for Counter {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Driver {
    dev: MmioTransport<Block>,
    mem: GuestMemoryMmap,
    irqs: Counter,
    avail_idx: u16,
    _disk: tempfile::NamedTempFile,
    disk_path: std::path::PathBuf,
}

fn pattern(sectors: u64) -> Vec<u8> {
    (0..sectors * 512)
        .map(|i| (i * 7 + i / 512) as u8)
        .collect()
}

impl Driver {
    fn new(sectors: u64, read_only: bool) -> Driver {
        let mut disk = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut disk, &pattern(sectors)).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let block = Block::open(disk.path(), read_only).unwrap();
        let irqs = Counter::default();
        let dev = MmioTransport::new(block, mem.clone(), Box::new(irqs.clone())).unwrap();
        Driver {
            dev,
            mem,
            irqs,
            avail_idx: 0,
            disk_path: disk.path().to_path_buf(),
            _disk: disk,
        }
    }

    fn rd(&mut self, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(&mut self, reg: u32, v: u32) {
        self.dev.write(u64::from(reg), &v.to_le_bytes());
    }

    /// The driver's side of §3.1.1, up to DRIVER_OK; returns the status.
    fn init(&mut self, features: u64) -> u32 {
        self.wr(VIRTIO_MMIO_STATUS, 0);
        self.wr(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.wr(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        for sel in 0..2 {
            self.wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            self.wr(VIRTIO_MMIO_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.wr(VIRTIO_MMIO_STATUS, s);
        if self.rd(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return self.rd(VIRTIO_MMIO_STATUS);
        }
        self.setup_queue(DESC, QSIZE);
        self.wr(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        self.rd(VIRTIO_MMIO_STATUS)
    }

    fn setup_queue(&mut self, desc: u64, size: u16) {
        self.wr(VIRTIO_MMIO_QUEUE_SEL, 0);
        self.wr(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
        for (lo, v) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL),
            (VIRTIO_MMIO_QUEUE_USED_LOW, USED),
        ] {
            self.wr(lo, v as u32);
            self.wr(lo + 4, (v >> 32) as u32);
        }
        self.wr(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    fn version_1() -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    /// Puts a chain of (addr, len, flags) on the queue and notifies.
    /// Returns the used entry's length (None if nothing was used).
    fn submit(&mut self, descs: &[(u64, u32, u16)]) -> Option<u32> {
        for (i, (addr, len, flags)) in descs.iter().enumerate() {
            let next = if i + 1 < descs.len() { i as u16 + 1 } else { 0 };
            let f = flags | if i + 1 < descs.len() { F_NEXT } else { 0 };
            let d = DESC + 16 * i as u64;
            self.mem.write_obj(*addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(f, GuestAddress(d + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        let slot = u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        let before: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        self.wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        let after: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        if after == before {
            return None;
        }
        let slot = u64::from(before % QSIZE);
        let id: u32 = self
            .mem
            .read_obj(GuestAddress(USED + 4 + 8 * slot))
            .unwrap();
        assert_eq!(id, 0, "the used entry names the chain's head");
        Some(
            self.mem
                .read_obj(GuestAddress(USED + 8 + 8 * slot))
                .unwrap(),
        )
    }

    /// A request: header, optional data, status. Returns (used len, status).
    fn request(&mut self, kind: u32, sector: u64, data_len: u32) -> (Option<u32>, u8) {
        self.mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        self.mem
            .write_obj(sector, GuestAddress(HEADER + 8))
            .unwrap();
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let data_flags = if kind == VIRTIO_BLK_T_OUT { 0 } else { F_WRITE };
        let mut descs = vec![(HEADER, 16, 0)];
        if data_len > 0 {
            descs.push((DATA, data_len, data_flags));
        }
        descs.push((STATUS, 1, F_WRITE));
        let used = self.submit(&descs);
        (used, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(DATA)).unwrap();
        v
    }
}

#[test]
fn the_register_block_identifies_a_modern_block_device() {
    let mut d = Driver::new(8, false);
    assert_eq!(d.rd(VIRTIO_MMIO_MAGIC_VALUE), super::mmio::MAGIC);
    assert_eq!(d.rd(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(d.rd(VIRTIO_MMIO_DEVICE_ID), 2);
    d.wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(d.rd(VIRTIO_MMIO_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
    d.wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let f = d.rd(VIRTIO_MMIO_DEVICE_FEATURES);
    assert!(f & (1 << VIRTIO_BLK_F_FLUSH) != 0 && f & (1 << VIRTIO_BLK_F_RO) == 0);
    // Capacity in the config space, byte by byte as Linux may read it.
    let mut cap = [0u8; 8];
    for (i, b) in cap.iter_mut().enumerate() {
        let mut one = [0u8];
        d.dev
            .read(u64::from(VIRTIO_MMIO_CONFIG) + i as u64, &mut one);
        *b = one[0];
    }
    assert_eq!(u64::from_le_bytes(cap), 8);
    assert_eq!(
        d.rd(VIRTIO_MMIO_QUEUE_NUM_MAX),
        u32::from(super::block::QUEUE_SIZE)
    );
    assert_eq!(d.rd(VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX, "no shared memory");
    // A narrow read of a register is not a register read.
    let mut two = [0xaau8; 2];
    d.dev.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut two);
    assert_eq!(two, [0, 0]);
}

#[test]
fn feature_negotiation_refuses_what_was_not_offered() {
    let mut d = Driver::new(8, false);
    // A legacy driver (no VERSION_1) is refused: FEATURES_OK stays clear.
    assert_eq!(d.init(0) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // So is a feature the device never offered (MQ).
    let mq = Driver::version_1() | (1 << VIRTIO_BLK_F_MQ);
    assert_eq!(d.init(mq) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK is a driver bug: FAILED.
    d.wr(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_ne!(d.rd(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FAILED, 0);
    // FEATURES_OK and DRIVER_OK in one write: taken together.
    d.wr(VIRTIO_MMIO_STATUS, 0);
    d.wr(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    d.wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    d.wr(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    d.wr(VIRTIO_MMIO_STATUS, 0xf);
    assert_eq!(d.rd(VIRTIO_MMIO_STATUS), 0xf);
    // The real thing.
    let s = d.init(Driver::version_1() | (1 << VIRTIO_BLK_F_FLUSH));
    assert_eq!(s & 0xf, 0xf, "ACK, DRIVER, FEATURES_OK, DRIVER_OK: {s:#x}");
    assert_eq!(d.rd(VIRTIO_MMIO_QUEUE_READY), 1);
    // Once live, the queue's registers no longer change.
    d.wr(VIRTIO_MMIO_QUEUE_NUM, 4);
    d.wr(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
    let (used, status) = d.request(VIRTIO_BLK_T_GET_ID, 0, 20);
    assert_eq!(
        (used, status),
        (Some(21), VIRTIO_BLK_S_OK as u8),
        "the queue did not move"
    );
    // Status 0 resets the device.
    d.wr(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(d.rd(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(d.rd(VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn reads_writes_flushes_and_ids_reach_the_file() {
    let mut d = Driver::new(16, false);
    assert_eq!(
        d.init(Driver::version_1()) & VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_DRIVER_OK
    );
    let disk = pattern(16);

    // Read sectors 2..4.
    let (used, status) = d.request(VIRTIO_BLK_T_IN, 2, 1024);
    assert_eq!((used, status), (Some(1025), VIRTIO_BLK_S_OK as u8));
    assert_eq!(d.data(1024), disk[1024..2048]);
    assert_eq!(d.irqs.0.load(Ordering::SeqCst), 1);
    assert_eq!(d.rd(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    d.wr(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(d.rd(VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // Write sector 5, flush, read it back from the host file.
    d.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        d.request(VIRTIO_BLK_T_OUT, 5, 512),
        (Some(1), VIRTIO_BLK_S_OK as u8)
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_FLUSH, 0, 0),
        (Some(1), VIRTIO_BLK_S_OK as u8)
    );
    let file = std::fs::read(&d.disk_path).unwrap();
    assert_eq!(file[5 * 512..6 * 512], [0x5a; 512]);
    assert_eq!(file[4 * 512..5 * 512], disk[4 * 512..5 * 512]);

    // GET_ID.
    assert_eq!(
        d.request(VIRTIO_BLK_T_GET_ID, 0, 20),
        (Some(21), VIRTIO_BLK_S_OK as u8)
    );
    assert_eq!(&d.data(20)[..11], b"isolab-disk");
}

#[test]
fn a_large_request_is_streamed_through_a_bounded_buffer() {
    // 512 KiB in one descriptor: eight times the device's buffer.
    let mut d = Driver::new(1024, false);
    d.init(Driver::version_1());
    let big: u64 = 0x10000;
    let len: u32 = 512 << 10;
    d.mem
        .write_obj(VIRTIO_BLK_T_IN, GuestAddress(HEADER))
        .unwrap();
    d.mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
    d.mem.write_obj(0u64, GuestAddress(HEADER + 8)).unwrap();
    let used = d.submit(&[(HEADER, 16, 0), (big, len, F_WRITE), (STATUS, 1, F_WRITE)]);
    assert_eq!(used, Some(len + 1));
    let status: u8 = d.mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; len as usize];
    d.mem.read_slice(&mut got, GuestAddress(big)).unwrap();
    assert_eq!(got, pattern(1024));
    assert!(
        d.dev.device().buffer_bytes() <= crate::devices::virtio::block::CHUNK,
        "the device allocated {} bytes for one request",
        d.dev.device().buffer_bytes()
    );
    // The same size written back goes through the same buffer.
    d.mem
        .write_obj(VIRTIO_BLK_T_OUT, GuestAddress(HEADER))
        .unwrap();
    let used = d.submit(&[(HEADER, 16, 0), (big, len, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(used, Some(1));
    let status: u8 = d.mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(std::fs::read(&d.disk_path).unwrap(), pattern(1024));
    assert!(d.dev.device().buffer_bytes() <= crate::devices::virtio::block::CHUNK);
}

#[test]
fn bad_requests_get_an_error_status_not_a_crash() {
    let mut d = Driver::new(8, false);
    d.init(Driver::version_1());
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    // Past the end, across the end, and not whole sectors.
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 8, 512).1, ioerr);
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 7, 1024).1, ioerr);
    assert_eq!(d.request(VIRTIO_BLK_T_IN, u64::MAX, 512).1, ioerr);
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 0, 100).1, ioerr);
    assert_eq!(d.request(VIRTIO_BLK_T_OUT, 8, 512).1, ioerr);
    // A request type the device does not know.
    assert_eq!(
        d.request(VIRTIO_BLK_T_DISCARD, 0, 0).1,
        VIRTIO_BLK_S_UNSUPP as u8
    );
    // A header shorter than 16 bytes.
    d.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    assert_eq!(d.submit(&[(HEADER, 8, 0), (STATUS, 1, F_WRITE)]), Some(1));
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), ioerr);
    // No writable byte for the status: used with length 0, nothing written.
    assert_eq!(d.submit(&[(HEADER, 16, 0)]), Some(0));
    // The device still works afterwards.
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 0, 512).1, VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    let file = std::fs::read(&d.disk_path).unwrap();
    assert_eq!(file, pattern(8), "no bad request touched the disk");
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let mut d = Driver::new(4, true);
    d.wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_ne!(
        d.rd(VIRTIO_MMIO_DEVICE_FEATURES) & (1 << VIRTIO_BLK_F_RO),
        0
    );
    d.init(Driver::version_1() | (1 << VIRTIO_BLK_F_RO));
    d.mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        d.request(VIRTIO_BLK_T_OUT, 0, 512).1,
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 0, 512).1, VIRTIO_BLK_S_OK as u8);
    assert_eq!(std::fs::read(&d.disk_path).unwrap(), pattern(4));
}

#[test]
fn a_chain_outside_guest_memory_asks_for_a_reset() {
    let mut d = Driver::new(4, false);
    d.init(Driver::version_1());
    // A header descriptor pointing past the end of guest RAM.
    let used = d.submit(&[(1 << 40, 16, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!(used, None);
    assert_ne!(d.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_ne!(
        d.rd(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
    // Further notifications are ignored until the driver resets.
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 0, 512).0, None);
    d.avail_idx = 0;
    d.init(Driver::version_1());
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 0, 512).1, VIRTIO_BLK_S_OK as u8);
}

#[test]
fn a_queue_outside_guest_memory_never_goes_live() {
    let mut d = Driver::new(4, false);
    d.wr(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    d.wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    d.wr(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    d.wr(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    d.setup_queue(0xff_fff0, QSIZE);
    assert_eq!(d.rd(VIRTIO_MMIO_QUEUE_READY), 0);
    // A size that is not a power of two is not taken either.
    d.wr(VIRTIO_MMIO_QUEUE_NUM, 3);
    d.setup_queue(DESC, 3);
    assert_eq!(d.rd(VIRTIO_MMIO_QUEUE_READY), 1);
    assert_eq!(d.dev.queue_size(0), QSIZE, "the old valid size stays");
}

#[test]
fn opening_bad_disk_images_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let e = Block::open(&missing, false).err().unwrap().to_string();
    assert!(e.contains("nope.img") && e.contains("existing file"), "{e}");
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let e = Block::open(&empty, false).err().unwrap().to_string();
    assert!(e.contains("empty"), "{e}");
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, [0u8; 700]).unwrap();
    let e = Block::open(&odd, true).err().unwrap().to_string();
    assert!(
        e.contains("700 bytes") && e.contains("512-byte sectors"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever a guest writes into its descriptors and request header,
    /// the device neither panics nor writes outside the disk: it answers
    /// with a status or asks for a reset.
    #[test]
    fn arbitrary_chains_never_break_the_monitor(
        descs in proptest::collection::vec(
            (prop_oneof![Just(HEADER), Just(DATA), Just(STATUS), 0u64..(2 << 20), any::<u64>()],
             prop_oneof![Just(1u32), Just(16), Just(512), any::<u32>()],
             0u16..8),
            1..6),
        kind in prop_oneof![Just(VIRTIO_BLK_T_IN), Just(VIRTIO_BLK_T_OUT), Just(VIRTIO_BLK_T_FLUSH), any::<u32>()],
        sector in prop_oneof![0u64..8, any::<u64>()],
    ) {
        let mut d = Driver::new(8, false);
        d.init(Driver::version_1());
        d.mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        d.mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
        let descs: Vec<(u64, u32, u16)> =
            descs.into_iter().map(|(a, l, f)| (a, l, f & !F_NEXT)).collect();
        let used = d.submit(&descs);
        let needs_reset = d.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
        prop_assert!(used.is_some() || needs_reset);
        let file = std::fs::read(&d.disk_path).unwrap();
        prop_assert_eq!(file.len(), 8 * 512, "the disk never grows");
    }
}

/// One register access a guest could make: any offset (in the window or
/// far past it), any width, any value, read or write.
fn register_access() -> impl Strategy<Value = (u64, usize, u64, bool)> {
    (
        prop_oneof![
            4 => (0u64..0x100).prop_map(|r| r & !3),
            1 => 0u64..0x200,
            1 => any::<u64>(),
        ],
        prop_oneof![Just(4usize), Just(1), Just(2), Just(8), Just(0), Just(3)],
        prop_oneof![
            Just(0u64),
            Just(1),
            0u64..16,
            Just(u64::from(QSIZE)),
            any::<u64>()
        ],
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever sequence of register accesses a guest makes — any offset,
    /// width and value, queue notifies at any moment, rings anywhere — the
    /// transport never panics, the disk never grows, and a driver that
    /// then resets the device and starts over gets a working disk.
    #[test]
    fn arbitrary_register_traffic_never_breaks_the_device(
        accesses in proptest::collection::vec(register_access(), 1..80),
    ) {
        let mut d = Driver::new(8, false);
        for (offset, width, value, is_read) in accesses {
            let mut buf = value.to_le_bytes();
            let buf = &mut buf[..width];
            if is_read {
                d.dev.read(offset, buf);
            } else {
                d.dev.write(offset, buf);
            }
        }
        let file = std::fs::read(&d.disk_path).unwrap();
        prop_assert_eq!(file.len(), 8 * 512, "the disk never grows");
        // Start over, as a driver must after NEEDS_RESET, with fresh
        // rings: it works.
        d.mem.write_slice(&[0u8; 0x2000], GuestAddress(AVAIL)).unwrap();
        d.avail_idx = 0;
        let status = d.init(Driver::version_1());
        prop_assert!(status & VIRTIO_CONFIG_S_DRIVER_OK != 0, "status {status:#x}");
        let (used, st) = d.request(VIRTIO_BLK_T_IN, 0, 512);
        prop_assert!(used.is_some());
        prop_assert_eq!(st, VIRTIO_BLK_S_OK as u8);
    }
}
