//! An address bus (port I/O or MMIO): ranges mapped to devices behind a
//! `read/write(offset, data)` trait. The vCPU loop never matches port
//! numbers itself; it asks the bus.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a device write asks of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// Carry on.
    None,
    /// The guest asked for a reset (i8042 0xFE): end the VM cleanly.
    Reset,
}

/// A device on a bus. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]) -> VmEvent;
}

/// A range of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// Errors inserting a device.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap { base: u64, len: u64 },
    #[error("bus range of length zero at {0:#x}")]
    Empty(u64),
}

/// Counts of accesses nobody answered (logged, then ignored).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unhandled {
    pub reads: u64,
    pub writes: u64,
}

#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<Range, Arc<Mutex<dyn BusDevice>>>,
    unhandled: Mutex<Unhandled>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let clash = self
            .devices
            .keys()
            .any(|r| base < r.base + r.len && r.base < end);
        if clash {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(Range { base, len }, dev);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (r, d) = self
            .devices
            .range(
                ..=Range {
                    base: addr,
                    len: u64::MAX,
                },
            )
            .next_back()?;
        (addr < r.base + r.len).then_some((addr - r.base, d))
    }

    /// Reads from `addr`; an unknown address reads as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((off, d)) => d.lock().unwrap_or_else(|p| p.into_inner()).read(off, data),
            None => {
                data.fill(0xff);
                let mut u = self.unhandled.lock().unwrap_or_else(|p| p.into_inner());
                u.reads += 1;
                if u.reads <= 8 {
                    tracing::debug!(
                        addr = format_args!("{addr:#x}"),
                        "read from an address no device answers; ignored"
                    );
                }
            }
        }
    }

    /// Writes to `addr`; an unknown address is logged and ignored.
    pub fn write(&self, addr: u64, data: &[u8]) -> VmEvent {
        match self.find(addr) {
            Some((off, d)) => d.lock().unwrap_or_else(|p| p.into_inner()).write(off, data),
            None => {
                let mut u = self.unhandled.lock().unwrap_or_else(|p| p.into_inner());
                u.writes += 1;
                if u.writes <= 8 {
                    tracing::debug!(
                        addr = format_args!("{addr:#x}"),
                        "write to an address no device answers; ignored"
                    );
                }
                VmEvent::None
            }
        }
    }

    pub fn unhandled(&self) -> Unhandled {
        *self.unhandled.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> VmEvent {
            self.0.push((offset, data.to_vec()));
            if data == [0xfe] {
                VmEvent::Reset
            } else {
                VmEvent::None
            }
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 5, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fd, &mut b);
        assert_eq!(b, [5]);
        assert_eq!(bus.write(0x3f8, b"x"), VmEvent::None);
        assert_eq!(bus.write(0x64, &[0xfe]), VmEvent::Reset);
        assert_eq!(a.lock().unwrap().0, vec![(0, b"x".to_vec())]);
    }

    #[test]
    fn unknown_addresses_are_counted_and_harmless() {
        let bus = Bus::new();
        let mut b = [0u8; 2];
        bus.read(0x1234, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert_eq!(bus.write(0x1234, &[1]), VmEvent::None);
        assert_eq!(
            bus.unhandled(),
            Unhandled {
                reads: 1,
                writes: 1
            }
        );
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        assert!(bus
            .insert(0x10f, 1, Arc::new(Mutex::new(Echo(vec![]))))
            .is_err());
        assert!(bus
            .insert(0xf8, 0x10, Arc::new(Mutex::new(Echo(vec![]))))
            .is_err());
        assert!(bus
            .insert(0x110, 1, Arc::new(Mutex::new(Echo(vec![]))))
            .is_ok());
        assert!(bus
            .insert(0x200, 0, Arc::new(Mutex::new(Echo(vec![]))))
            .is_err());
        let mut b = [0u8; 1];
        bus.read(0x10f, &mut b);
        assert_eq!(b, [0xf]);
    }
}
