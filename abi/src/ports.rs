//! The lab's I/O ports, shared by the monitor, the bare guest and the
//! Linux agent (`core`-only: the bare guest links it).
//!
//! Port 0x80 is avoided on purpose: Linux writes to it for I/O delays.

/// Boot-marker port: the guest writes a one-byte label, the monitor stamps
/// the host's `CLOCK_MONOTONIC` at that VM exit.
pub const MARK_PORT: u16 = 0x0f10;
/// Exit-code port: the guest writes its scenario's exit status.
pub const EXIT_PORT: u16 = 0x0f11;
/// A port that does nothing: the `exit-cost` scenario's target.
pub const NOP_PORT: u16 = 0x0f12;

/// Mark labels.
pub const MARK_KERNEL_ENTRY: u8 = 1;
pub const MARK_PARAMS_CHECKED: u8 = 2;
pub const MARK_READY: u8 = 3;
pub const MARK_WORK_START: u8 = 4;
pub const MARK_WORK_END: u8 = 5;
pub const MARK_DONE: u8 = 6;
/// The Linux agent's mark, written from user space after `ioperm`
/// (`kernel_start` and `kernel_init` come from the console instead).
pub const MARK_AGENT_READY: u8 = 8;

/// The name of a mark label, as reports show it.
pub fn mark_name(label: u8) -> &'static str {
    use crate::stage::Stage;
    match label {
        MARK_KERNEL_ENTRY => Stage::KernelEntry.name(),
        MARK_PARAMS_CHECKED => Stage::ParamsChecked.name(),
        MARK_READY => Stage::Ready.name(),
        MARK_WORK_START => Stage::WorkStart.name(),
        MARK_WORK_END => Stage::WorkEnd.name(),
        MARK_DONE => Stage::Done.name(),
        MARK_AGENT_READY => Stage::AgentReady.name(),
        _ => "mark",
    }
}

/// Printed alone on a line when a holding scenario (`idle`) has its
/// workload in place: the harness reads the instance's memory then. The
/// agent prints it on stdout; a no-OS guest on the serial port, and then
/// waits for one byte on it (`isolab.hold_wait=1`), the harness's go-on.
pub const HOLD_LINE: &str = "@isolab-hold";

/// The result page. A bare guest writes its `@isolab` result line here
/// instead of through the serial port, where every byte is a VM exit
/// (~150 of them, ~9 ms under PVM — half of the microVM's launch→exit).
/// The monitor reads it from guest memory once the vCPUs have stopped;
/// for QEMU the harness reads it from the guest's `memory-backend-file`.
/// So `done` measures the workload, not the reporting. The serial console
/// stays for humans.
///
/// Just below the guest's load address (2 MiB) and above everything a
/// monitor puts in low memory: RAM under our monitor and QEMU's `microvm`.
pub const RESULT_PAGE: u64 = 0x1f_0000;
/// The page's size, header included.
pub const RESULT_PAGE_SIZE: usize = 16 * 1024;
/// The Linux agent's result page (same header and size). A Linux kernel
/// owns the RAM around [`RESULT_PAGE`] (its decompressor runs there), so
/// the agent, as the VM's init, writes through `/dev/mem` into the legacy
/// area below 1 MiB instead: guest RAM under our monitor that the e820 map
/// marks reserved, which the kernel never uses and `STRICT_DEVMEM` lets
/// root write. Zeros until the agent writes its line.
pub const LINUX_RESULT_PAGE: u64 = 0xa_0000;
/// The header: this magic (little-endian), then the text's length (u32
/// little-endian), then the text. Written last, after the text.
pub const RESULT_MAGIC: u32 = u32::from_le_bytes(*b"ISLR");
pub const RESULT_HEADER: usize = 8;
/// The one byte a bare guest writes to the serial port when it is ready:
/// the only signal QEMU's harness has (QEMU has no boot-marker port), paid
/// alike under both monitors.
pub const READY_BYTE: u8 = b'\n';

/// The text in a result page, or `None` when the guest wrote none. The
/// page comes from a guest, so nothing in it is trusted: a length beyond
/// the page is refused rather than followed.
pub fn result_text(page: &[u8]) -> Option<&[u8]> {
    let header = page.get(..RESULT_HEADER)?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if magic != RESULT_MAGIC || len > RESULT_PAGE_SIZE - RESULT_HEADER {
        return None;
    }
    page.get(RESULT_HEADER..RESULT_HEADER + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(magic: u32, len: u32, text: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; RESULT_PAGE_SIZE];
        p[..4].copy_from_slice(&magic.to_le_bytes());
        p[4..8].copy_from_slice(&len.to_le_bytes());
        p[8..8 + text.len()].copy_from_slice(text);
        p
    }

    #[test]
    fn result_page_is_read_only_when_well_formed() {
        assert_eq!(
            result_text(&page(RESULT_MAGIC, 3, b"abc")),
            Some(&b"abc"[..])
        );
        assert_eq!(result_text(&page(0, 3, b"abc")), None, "no magic");
        assert_eq!(result_text(&[0u8; RESULT_PAGE_SIZE]), None, "untouched");
        assert_eq!(
            result_text(&page(RESULT_MAGIC, u32::MAX, b"abc")),
            None,
            "a length past the page"
        );
        assert_eq!(result_text(&[1, 2, 3]), None, "a short page");
        let full = (RESULT_PAGE_SIZE - RESULT_HEADER) as u32;
        assert_eq!(
            result_text(&page(RESULT_MAGIC, full, b"")).map(<[u8]>::len),
            Some(full as usize)
        );
    }
}
