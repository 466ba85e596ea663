//! The legacy devices: a 16550 UART (vm-superio), an i8042 whose reset
//! ends the VM, and the lab's boot-marker, exit-code and no-op ports.
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use isolab_abi::stage::Stage;

use super::bus::{BusDevice, VmEvent};

/// Raises the serial interrupt through an irqfd-backed eventfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where serial output goes: optionally echoed to a writer (the terminal),
/// always kept (bounded) so the harness can find the result line. A guest
/// that floods the port is cut at `limit` bytes and the rest dropped.
pub struct SerialSink {
    pub echo: Option<Box<dyn Write + Send>>,
    pub captured: Arc<Mutex<Vec<u8>>>,
    pub limit: usize,
    pub dropped: u64,
    /// Host time of the first byte, and of the first time each watched
    /// text appeared (a Linux guest's phases: "Linux version", "Run /init").
    pub seen: Vec<(String, u64)>,
}

/// Texts on a Linux guest's console that mark its phases.
pub const WATCHED: [(&str, &str); 2] = [
    ("Linux version", Stage::KernelStart.name()),
    ("Run /init as init process", Stage::KernelInit.name()),
];

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = self.echo.as_mut() {
            let _ = e.write_all(buf);
            let _ = e.flush();
        }
        let mut c = self.captured.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_empty() && !buf.is_empty() && self.seen.is_empty() {
            self.seen
                .push((Stage::FirstSerial.name().into(), monotonic_ns()));
        }
        for (text, mark) in WATCHED {
            if !self.seen.iter().any(|s| s.0 == mark) && buf.ends_with(b"\n") {
                let from = c.len().saturating_sub(1024);
                let tail = [&c[from..], buf].concat();
                if tail.windows(text.len()).any(|w| w == text.as_bytes()) {
                    self.seen.push((mark.into(), monotonic_ns()));
                }
            }
        }
        let room = self.limit.saturating_sub(c.len());
        let take = room.min(buf.len());
        c.extend_from_slice(&buf[..take]);
        self.dropped += (buf.len() - take) as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The 16550 on the bus (8 registers at 0x3f8).
pub struct SerialDevice(pub Serial<EventFdTrigger, vm_superio::serial::NoEvents, SerialSink>);

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> VmEvent {
        if let Some(b) = data.first() {
            let _ = self.0.write(offset as u8, *b);
        }
        VmEvent::None
    }
}

/// Just enough of an i8042 for a guest to reset the machine: a write of
/// 0xFE to the command port (offset 4 from 0x60).
#[derive(Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: no data, input buffer empty.
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> VmEvent {
        if offset == 4 && data.first() == Some(&0xfe) {
            VmEvent::Reset
        } else {
            VmEvent::None
        }
    }
}

/// A guest mark: label and host `CLOCK_MONOTONIC` at the VM exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMark {
    pub label: u8,
    pub ns: u64,
}

/// The lab's three ports (marker, exit code, no-op), one device.
#[derive(Default)]
pub struct LabPorts {
    pub marks: Vec<GuestMark>,
    pub exit_code: Option<u8>,
    pub nop_writes: u64,
}

/// The lab's one clock read.
pub use isolab_abi::mark::monotonic_ns;

/// The most marks kept (a guest spamming the port cannot grow us forever).
pub const MAX_MARKS: usize = 4096;

impl BusDevice for LabPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> VmEvent {
        let ns = monotonic_ns();
        let v = data.first().copied().unwrap_or(0);
        match offset {
            0 if self.marks.len() < MAX_MARKS => self.marks.push(GuestMark { label: v, ns }),
            1 => self.exit_code = Some(v),
            2 => self.nop_writes += 1,
            _ => {}
        }
        VmEvent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i8042_reset_only_on_fe_to_command_port() {
        let mut k = I8042;
        assert_eq!(k.write(4, &[0xfe]), VmEvent::Reset);
        assert_eq!(k.write(4, &[0xd1]), VmEvent::None);
        assert_eq!(k.write(0, &[0xfe]), VmEvent::None);
    }

    #[test]
    fn lab_ports_stamp_marks_and_keep_the_exit_code() {
        let mut p = LabPorts::default();
        p.write(0, &[1]);
        p.write(0, &[3]);
        p.write(1, &[7]);
        p.write(2, &[0]);
        assert_eq!(p.marks.len(), 2);
        assert!(p.marks[0].ns <= p.marks[1].ns);
        assert_eq!(
            (p.marks[1].label, p.exit_code, p.nop_writes),
            (3, Some(7), 1)
        );
        for _ in 0..(MAX_MARKS + 10) {
            p.write(0, &[9]);
        }
        assert_eq!(p.marks.len(), MAX_MARKS);
    }

    #[test]
    fn serial_sink_bounds_a_flood() {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let mut s = SerialSink {
            echo: None,
            captured: captured.clone(),
            limit: 10,
            dropped: 0,
            seen: vec![],
        };
        s.write_all(b"0123456789abcdef").unwrap();
        assert_eq!(captured.lock().unwrap().as_slice(), b"0123456789");
        assert_eq!(s.dropped, 6);
    }

    #[test]
    fn serial_device_transmits_through_the_sink() {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = SerialSink {
            echo: None,
            captured: captured.clone(),
            limit: 1 << 20,
            dropped: 0,
            seen: vec![],
        };
        let mut dev = SerialDevice(Serial::new(
            EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            sink,
        ));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        assert_eq!(captured.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(dev.0.writer().seen[0].0, "first_serial");
        for b in b"[ 0.0] Linux version 6.1\n" {
            dev.write(0, &[*b]);
        }
        assert!(dev.0.writer().seen.iter().any(|s| s.0 == "kernel_start"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any port traffic to the serial port, the i8042 and the lab's
        /// ports — any offset, width, value, read or write — never panics,
        /// keeps what the monitor stores bounded, and only the i8042's
        /// reset command ends the VM.
        #[test]
        fn arbitrary_port_traffic_is_answered_and_bounded(
            accesses in proptest::collection::vec(
                (0u8..3, 0u64..16, 0usize..5, proptest::prelude::any::<u64>(), proptest::prelude::any::<bool>()),
                1..400),
        ) {
            let captured = Arc::new(Mutex::new(Vec::new()));
            let sink = SerialSink { echo: None, captured: captured.clone(), limit: 64, dropped: 0, seen: vec![] };
            let mut serial = SerialDevice(Serial::new(
                EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
                sink,
            ));
            let (mut kbd, mut lab) = (I8042, LabPorts::default());
            for (dev, offset, width, value, is_read) in accesses {
                let mut buf = value.to_le_bytes();
                let buf = &mut buf[..width];
                let d: &mut dyn BusDevice = match dev {
                    0 => &mut serial,
                    1 => &mut kbd,
                    _ => &mut lab,
                };
                if is_read {
                    d.read(offset, buf);
                } else {
                    let ev = d.write(offset, buf);
                    let reset = dev == 1 && offset == 4 && buf.first() == Some(&0xfe);
                    proptest::prop_assert_eq!(ev == VmEvent::Reset, reset);
                }
            }
            proptest::prop_assert!(captured.lock().unwrap().len() <= 64);
            proptest::prop_assert!(lab.marks.len() <= MAX_MARKS);
        }
    }
}
