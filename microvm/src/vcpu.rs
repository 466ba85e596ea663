//! vCPU exits: what each one means for the VM, as a pure function the
//! tests feed with made-up exits, and the run loop of a vCPU thread.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::{Bus, VmEvent};

/// Why a vCPU stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// The guest reset the machine (i8042): a clean end.
    Reset,
    /// KVM_EXIT_SHUTDOWN: a triple fault (under PVM also any guest fault).
    Shutdown,
    /// The guest halted with nothing to wake it.
    Halt,
    /// KVM could not enter the guest.
    FailEntry { reason: u64 },
    /// KVM hit an internal error (e.g. an emulation failure): KVM's
    /// sub-error code and the guest's instruction pointer, which the run
    /// loop fills in (0 when unknown).
    InternalError { suberror: u32, rip: u64 },
    /// A system event (e.g. PSCI/ACPI shutdown) of this type.
    SystemEvent { event: u32 },
    /// The monitor stopped the vCPU (timeout or teardown).
    Stopped,
    /// KVM_RUN itself failed.
    RunError { errno: i32 },
    /// An exit this monitor does not handle.
    Unexpected { exit: String },
}

impl StopReason {
    /// True for the one clean way a lab guest ends.
    pub fn is_clean(&self) -> bool {
        matches!(self, StopReason::Reset)
    }

    /// A sentence for the user.
    pub fn describe(&self) -> String {
        match self {
            StopReason::Reset => "the guest reset the machine (clean exit)".into(),
            StopReason::Shutdown => "the guest triple-faulted (KVM shutdown exit); under PVM any guest fault ends the VM this way".into(),
            StopReason::Halt => "the guest halted with interrupts off".into(),
            StopReason::FailEntry { reason } => format!("KVM could not enter the guest (hardware reason {reason:#x})"),
            StopReason::InternalError { suberror, rip } => format!(
                "KVM reported an internal error (suberror {suberror}{}) at guest RIP {rip:#x}",
                if *suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                    ": an instruction it could not emulate"
                } else {
                    ""
                }
            ),
            StopReason::SystemEvent { event } => format!("the guest raised system event {event}"),
            StopReason::Stopped => "the monitor stopped the guest".into(),
            StopReason::RunError { errno } => format!("KVM_RUN failed: {}", std::io::Error::from_raw_os_error(*errno)),
            StopReason::Unexpected { exit } => format!("unhandled vCPU exit {exit}"),
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    Continue,
    Stop(StopReason),
}

// ANCHOR: handle_exit
/// Handles one vCPU exit against the port-I/O and MMIO buses.
pub fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> ExitOutcome {
    let event = match exit {
        VcpuExit::IoOut(port, data) => pio.write(u64::from(port), data),
        VcpuExit::IoIn(port, data) => {
            pio.read(u64::from(port), data);
            VmEvent::None
        }
        VcpuExit::MmioRead(addr, data) => {
            mmio.read(addr, data);
            VmEvent::None
        }
        VcpuExit::MmioWrite(addr, data) => mmio.write(addr, data),
        VcpuExit::Hlt => return ExitOutcome::Stop(StopReason::Halt),
        VcpuExit::Shutdown => return ExitOutcome::Stop(StopReason::Shutdown),
        VcpuExit::FailEntry(reason, _) => {
            return ExitOutcome::Stop(StopReason::FailEntry { reason })
        }
        VcpuExit::InternalError => {
            return ExitOutcome::Stop(StopReason::InternalError {
                suberror: 0,
                rip: 0,
            })
        }
        VcpuExit::SystemEvent(event, _) => {
            return ExitOutcome::Stop(StopReason::SystemEvent { event })
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => VmEvent::None,
        other => {
            return ExitOutcome::Stop(StopReason::Unexpected {
                exit: format!("{other:?}"),
            })
        }
    };
    match event {
        VmEvent::Reset => ExitOutcome::Stop(StopReason::Reset),
        VmEvent::None => ExitOutcome::Continue,
    }
}
// ANCHOR_END: handle_exit

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal, without SA_RESTART so
/// KVM_RUN returns EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: sigaction with a valid handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

// ANCHOR: run_loop
/// Runs a vCPU until it stops; `first_entry` gets the time of the first
/// KVM_RUN. Never panics: every failure is a [`StopReason`].
pub fn run(
    vcpu: &mut VcpuFd,
    pio: &Bus,
    mmio: &Bus,
    stop: &AtomicBool,
    first_entry: &Arc<AtomicU64>,
) -> StopReason {
    let mut first = true;
    loop {
        if stop.load(Ordering::SeqCst) {
            return StopReason::Stopped;
        }
        if first {
            first_entry.store(crate::devices::legacy::monotonic_ns(), Ordering::SeqCst);
            first = false;
        }
        match vcpu.run() {
            Ok(exit) => {
                if let ExitOutcome::Stop(mut r) = handle_exit(exit, pio, mmio) {
                    if let StopReason::InternalError { suberror, rip } = &mut r {
                        // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR,
                        // so `internal` is the union member KVM wrote.
                        *suberror =
                            unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                        *rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    }
                    if !r.is_clean() {
                        if let Ok(regs) = vcpu.get_regs() {
                            tracing::warn!(
                                rip = format_args!("{:#x}", regs.rip),
                                rsp = format_args!("{:#x}", regs.rsp),
                                "vCPU stopped: {}",
                                r.describe()
                            );
                        }
                    }
                    return r;
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => return StopReason::RunError { errno: e.errno() },
        }
    }
}
// ANCHOR_END: run_loop

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::{LabPorts, I8042};
    use std::sync::Mutex;

    fn buses() -> (Bus, Bus, Arc<Mutex<LabPorts>>) {
        let mut pio = Bus::new();
        let lab = Arc::new(Mutex::new(LabPorts::default()));
        pio.insert(0x60, 5, Arc::new(Mutex::new(I8042))).unwrap();
        pio.insert(u64::from(crate::ports::MARK_PORT), 3, lab.clone())
            .unwrap();
        (pio, Bus::new(), lab)
    }

    #[test]
    fn port_writes_reach_devices_and_reset_stops() {
        let (pio, mmio, lab) = buses();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(crate::ports::MARK_PORT, &[3]), &pio, &mmio),
            ExitOutcome::Continue
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(crate::ports::EXIT_PORT, &[9]), &pio, &mmio),
            ExitOutcome::Continue
        );
        assert_eq!(lab.lock().unwrap().marks[0].label, 3);
        assert_eq!(lab.lock().unwrap().exit_code, Some(9));
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x64, &[0xfe]), &pio, &mmio),
            ExitOutcome::Stop(StopReason::Reset)
        );
    }

    #[test]
    fn reads_are_answered_and_unknown_accesses_ignored() {
        let (pio, mmio, _) = buses();
        let mut d = [0xaa];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x64, &mut d), &pio, &mmio),
            ExitOutcome::Continue
        );
        assert_eq!(d, [0]);
        let mut d = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut d), &pio, &mmio),
            ExitOutcome::Continue
        );
        assert_eq!(d, [0xff; 4]);
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0xd000_0000, &[1]), &pio, &mmio),
            ExitOutcome::Continue
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x1234, &[1]), &pio, &mmio),
            ExitOutcome::Continue
        );
        assert_eq!(pio.unhandled().writes, 1);
    }

    #[test]
    fn fatal_exits_stop_with_a_reason() {
        let (pio, mmio, _) = buses();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &pio, &mmio),
            ExitOutcome::Stop(StopReason::Shutdown)
        );
        assert_eq!(
            handle_exit(VcpuExit::Hlt, &pio, &mmio),
            ExitOutcome::Stop(StopReason::Halt)
        );
        assert_eq!(
            handle_exit(VcpuExit::InternalError, &pio, &mmio),
            ExitOutcome::Stop(StopReason::InternalError {
                suberror: 0,
                rip: 0
            })
        );
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(0x80000021, 0), &pio, &mmio),
            ExitOutcome::Stop(StopReason::FailEntry { reason: 0x80000021 })
        );
        assert!(matches!(
            handle_exit(VcpuExit::Unknown, &pio, &mmio),
            ExitOutcome::Stop(StopReason::Unexpected { .. })
        ));
        assert!(StopReason::Reset.is_clean() && !StopReason::Shutdown.is_clean());
        assert!(StopReason::Shutdown.describe().contains("triple-fault"));
    }
}
