//! Devices behind a bus: serial (16550, vm-superio), i8042 (reset), the
//! lab's marker/exit/nop ports; virtio-mmio devices (block).
pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, VmEvent};
