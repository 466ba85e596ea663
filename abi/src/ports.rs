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
