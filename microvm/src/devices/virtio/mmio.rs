//! The virtio-mmio transport, version 2 ("modern", virtio 1.x §4.2.2):
//! the register block a driver probes, negotiates features through, and
//! tells where its queues are. Everything the spec lets a device refuse,
//! it refuses: queue setup outside FEATURES_OK…DRIVER_OK, features it did
//! not offer, a queue that does not fit in guest memory.
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Interrupt, VirtioDevice};
use crate::devices::bus::{BusDevice, VmEvent};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor ID reported to the driver ("ILAB").
pub const VENDOR_ID: u32 = 0x4241_4c49;

/// One virtio device behind its MMIO register block.
pub struct MmioTransport<D> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Box<dyn Interrupt>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Box<dyn Interrupt>,
    ) -> Result<MmioTransport<D>, virtio_queue::Error> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
        })
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The size the driver gave queue `i` (tests: QUEUE_NUM is write-only).
    #[cfg(test)]
    pub fn queue_size(&self, i: usize) -> u16 {
        self.queues[i].size()
    }

    /// The device's status register (ACKNOWLEDGE, DRIVER, FEATURES_OK …).
    pub fn status(&self) -> u32 {
        self.status
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK,
    /// and only while the queue is not live.
    fn queue_writable(&mut self) -> bool {
        let ok = self.has(VIRTIO_CONFIG_S_FEATURES_OK) && !self.has(VIRTIO_CONFIG_S_DRIVER_OK);
        ok && self.selected_queue().is_some_and(|q| !q.ready())
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (§3.1.1); anything else is a bug
        // in it, which we record as FAILED rather than act on.
        if v & self.status != self.status {
            tracing::debug!(
                old = self.status,
                new = v,
                "virtio driver cleared status bits"
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let adding = v & !self.status;
        if adding & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let version_1 = 1u64 << VIRTIO_F_VERSION_1;
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & version_1 != 0
                && self.has(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
            if !acceptable {
                // Leaving FEATURES_OK clear is how a device says no.
                self.status = v & !VIRTIO_CONFIG_S_FEATURES_OK;
                return;
            }
        }
        if adding & VIRTIO_CONFIG_S_DRIVER_OK != 0 && v & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        self.status = v;
    }

    /// Whether the driver set DRIVER_OK and the device needs no reset.
    pub fn live(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_DRIVER_OK) && !self.has(VIRTIO_CONFIG_S_NEEDS_RESET)
    }

    /// Runs queue `index` as the driver's notify does (also called by a
    /// device's own thread when the host side has something for it).
    pub fn notify(&mut self, index: u32) {
        if !self.has(VIRTIO_CONFIG_S_DRIVER_OK) || self.has(VIRTIO_CONFIG_S_NEEDS_RESET) {
            return;
        }
        let Some(queue) = self.queues.get_mut(index as usize) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        match self.device.process_queue(index as usize, queue, &self.mem) {
            Ok(true) => {
                self.interrupt_status |= VIRTIO_MMIO_INT_VRING;
                self.interrupt.trigger();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%e, queue = index, "virtio queue broken; device needs a reset");
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
                self.interrupt.trigger();
            }
        }
    }

    fn read_reg(&mut self, offset: u32) -> u32 {
        let features = self.device.features();
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => 2,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            // No shared-memory regions: length all ones (§4.2.2.1).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u32, v: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.has(VIRTIO_CONFIG_S_DRIVER) && !self.has(VIRTIO_CONFIG_S_FEATURES_OK) {
                    let shift = match self.driver_features_sel {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    self.driver_features &= !(0xffff_ffffu64 << shift);
                    self.driver_features |= u64::from(v) << shift;
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                if self.queue_writable() && v <= u32::from(u16::MAX) {
                    if let Some(q) = self.selected_queue() {
                        q.set_size(v as u16);
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if self.queue_writable() || v == 0 {
                    if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                        // A queue that does not fit in guest memory never
                        // goes live: the driver reads READY back as 0.
                        // (`is_valid` looks at a queue marked ready.)
                        q.set_ready(v == 1);
                        if v == 1 && !q.is_valid(&self.mem) {
                            q.set_ready(false);
                        }
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                if !self.queue_writable() {
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    return;
                };
                let (lo, hi) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                match offset {
                    VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                        q.set_desc_table_address(lo, hi)
                    }
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                        q.set_avail_ring_address(lo, hi)
                    }
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => self.set_status(v),
            _ => tracing::debug!(
                offset,
                "write to a read-only or unknown virtio-mmio register"
            ),
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // Registers are 32 bits wide and read whole (§4.2.2.2).
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> VmEvent {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // The block device's configuration is read-only here.
            return VmEvent::None;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return VmEvent::None;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset as u32, v);
        VmEvent::None
    }
}
