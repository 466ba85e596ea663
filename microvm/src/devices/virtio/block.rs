//! virtio-blk (virtio 1.x §5.2) backed by a host file: read, write,
//! flush and get-id requests, optionally read-only.
//!
//! A request is a descriptor chain: a 16-byte header the driver wrote
//! (type, reserved, sector), the data buffers, and one byte the device
//! writes last: the status. Anything malformed — a header that is not
//! there, data that is not whole sectors, a range past the end of the
//! disk, no room for the status — is answered, never trusted: a bad
//! request gets IOERR (or UNSUPP), and only a chain the queue itself
//! cannot walk stops the device.
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::VirtioDevice;

/// Bytes per sector, fixed by the spec.
pub const SECTOR: u64 = 512;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver may use (queue size minus the
/// header and status descriptors).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The largest data segment the driver may use (`size_max`, advertised
/// with VIRTIO_BLK_F_SIZE_MAX): with SEG_MAX it bounds one request at
/// 254 × 64 KiB, whatever a guest's chain claims.
pub const SIZE_MAX: u32 = 64 << 10;
/// The monitor's one transfer buffer: requests are streamed through it,
/// so a guest's request never makes the monitor allocate more.
pub const CHUNK: usize = 64 << 10;
/// The serial the driver reads with GET_ID (`/sys/block/vda/serial`).
pub const DISK_ID: &[u8] = b"isolab-disk";

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}: pass an existing file (e.g. one `isolab image disk` wrote)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {path} is {len} bytes, not a whole number of 512-byte sectors: pad it (truncate -s) or rebuild it")]
    NotSectors { path: PathBuf, len: u64 },
    #[error("disk image {0} is empty: a virtio disk needs at least one sector")]
    Empty(PathBuf),
}

/// A virtio-blk device over a file.
pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    queue_sizes: [u16; 1],
    /// Bounce buffer between the file and guest memory, kept across
    /// requests (a read is one `pread` and one copy into the chain).
    scratch: Vec<u8>,
    /// Requests answered, by outcome (the monitor reports them).
    pub stats: BlockStats,
}

/// What the device did, for the report and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
}

/// The request header (`struct virtio_blk_outhdr`).
#[derive(Clone, Copy, Default, Debug)]
#[repr(C)]
struct Header {
    kind: u32,
    _reserved: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding, any bit pattern is valid.
unsafe impl vm_memory::ByteValued for Header {}

impl Block {
    /// Opens `path` as the disk (read-write unless `read_only`).
    pub fn open(path: &Path, read_only: bool) -> Result<Block, BlockError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if len == 0 {
            return Err(BlockError::Empty(path.to_path_buf()));
        }
        if len % SECTOR != 0 {
            return Err(BlockError::NotSectors {
                path: path.to_path_buf(),
                len,
            });
        }
        Ok(Block {
            file,
            read_only,
            sectors: len / SECTOR,
            queue_sizes: [QUEUE_SIZE],
            scratch: Vec::new(),
            stats: BlockStats::default(),
        })
    }

    /// How many bytes the device holds for transfers (bounded by CHUNK).
    pub fn buffer_bytes(&self) -> usize {
        self.scratch.capacity()
    }

    /// The byte range of a data transfer, if it lies inside the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = len as u64;
        if len % SECTOR != 0 {
            return None;
        }
        let start = sector.checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        (end <= self.sectors * SECTOR).then_some(start)
    }

    /// Executes one request; returns the bytes written into the driver's
    /// buffers (data and status), the used length.
    fn execute(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, virtio_queue::Error> {
        // More descriptors than the device advertised (header, SEG_MAX
        // data segments, status) is a driver bug or an attack: refused
        // before anything is read.
        if chain.clone().count() > SEG_MAX as usize + 2 {
            self.stats.errors += 1;
            return Ok(0);
        }
        let mut reader = chain.clone().reader(mem)?;
        let mut writer = chain.writer(mem)?;
        // The status byte is the last writable byte of the chain.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            // Nowhere to put a status: nothing we can tell the driver.
            self.stats.errors += 1;
            return Ok(0);
        };
        let mut status_writer = writer.split_at(data_len)?;
        let header: Option<Header> = reader.read_obj().ok();
        let (status, written) = match header {
            None => (VIRTIO_BLK_S_IOERR, 0),
            Some(h) => match h.kind {
                VIRTIO_BLK_T_IN => self.read_into(&mut writer, h.sector, data_len),
                VIRTIO_BLK_T_OUT => (self.write_from(&mut reader, h.sector), 0),
                VIRTIO_BLK_T_FLUSH => {
                    self.stats.flushes += 1;
                    let ok = self.read_only || self.file.sync_data().is_ok();
                    (
                        if ok {
                            VIRTIO_BLK_S_OK
                        } else {
                            VIRTIO_BLK_S_IOERR
                        },
                        0,
                    )
                }
                VIRTIO_BLK_T_GET_ID => {
                    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
                    id[..DISK_ID.len()].copy_from_slice(DISK_ID);
                    let n = data_len.min(id.len());
                    match writer.write_all(&id[..n]) {
                        Ok(()) => (VIRTIO_BLK_S_OK, n),
                        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                    }
                }
                _ => (VIRTIO_BLK_S_UNSUPP, 0),
            },
        };
        if status != VIRTIO_BLK_S_OK {
            self.stats.errors += 1;
        }
        if status_writer.write_all(&[status as u8]).is_err() {
            return Ok(written as u32);
        }
        Ok(written as u32 + 1)
    }

    fn read_into(
        &mut self,
        writer: &mut virtio_queue::Writer<'_, ()>,
        sector: u64,
        len: usize,
    ) -> (u32, usize) {
        let Some(start) = self.range(sector, len) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        self.scratch.resize(CHUNK, 0);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let buf = &mut self.scratch[..n];
            if self.file.read_exact_at(buf, start + done as u64).is_err()
                || writer.write_all(buf).is_err()
            {
                return (VIRTIO_BLK_S_IOERR, done);
            }
            done += n;
        }
        self.stats.reads += 1;
        self.stats.bytes_read += len as u64;
        (VIRTIO_BLK_S_OK, len)
    }

    fn write_from(&mut self, reader: &mut virtio_queue::Reader<'_, ()>, sector: u64) -> u32 {
        if self.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let len = reader.available_bytes();
        let Some(start) = self.range(sector, len) else {
            return VIRTIO_BLK_S_IOERR;
        };
        self.scratch.resize(CHUNK, 0);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let buf = &mut self.scratch[..n];
            if reader.read_exact(buf).is_err()
                || self.file.write_all_at(buf, start + done as u64).is_err()
            {
                return VIRTIO_BLK_S_IOERR;
            }
            done += n;
        }
        self.stats.writes += 1;
        self.stats.bytes_written += len as u64;
        VIRTIO_BLK_S_OK
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_SIZE_MAX);
        if self.read_only {
            f |= 1u64 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// `struct virtio_blk_config`: capacity (le64) at 0, size_max at 8,
    /// seg_max at 12; the rest reads as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.execute(chain, mem)?;
            queue.add_used(mem, head, len)?;
            used = true;
        }
        Ok(used && queue.needs_notification(mem)?)
    }
}
