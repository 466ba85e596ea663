//! virtio over MMIO: the transport (`mmio`, the register block of virtio
//! 1.x §4.2.2) and the devices behind it (`block`, `net`). The split virtqueues
//! themselves are rust-vmm's `virtio-queue`, which checks every descriptor
//! the guest hands over against guest memory.
//!
//! Devices are processed synchronously, on the vCPU thread that wrote the
//! queue-notify register: a microVM with one disk and a polling lab guest
//! needs no I/O thread, and the cost of a request is then one VM exit plus
//! the host read or write — which is what the lab wants to show.
pub mod block;
pub mod mmio;
pub mod net;

pub use block::{Block, BlockError};
pub use mmio::MmioTransport;
pub use net::{Net, NetStats};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// A virtio device as the MMIO transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// The largest size of each of the device's queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handles the buffers the driver made available on queue `index`.
    /// Returns true when buffers were used (the driver should be told).
    /// An error means the driver broke the protocol: the transport then
    /// asks for a reset (DEVICE_NEEDS_RESET).
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, virtio_queue::Error>;
}

/// How a device raises its interrupt line (an irqfd in the monitor).
pub trait Interrupt: Send {
    fn trigger(&self);
}

impl Interrupt for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) {
        if let Err(e) = self.write(1) {
            tracing::warn!(%e, "raising a virtio interrupt failed");
        }
    }
}

/// Where the monitor puts virtio-mmio devices: one 4 KiB window each from
/// [`crate::arch::x86_64::layout::VIRTIO_MMIO_START`], interrupt lines from
/// [`crate::arch::x86_64::layout::VIRTIO_FIRST_IRQ`].
pub const MMIO_WINDOW: u64 = 0x1000;

/// The kernel command-line word that announces one device to Linux
/// (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`), e.g.
/// `virtio_mmio.device=4K@0xd0000000:5`.
pub fn cmdline_word(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod cmdline_tests {
    #[test]
    fn the_cmdline_word_has_linux_s_syntax() {
        assert_eq!(
            super::cmdline_word(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }
}
