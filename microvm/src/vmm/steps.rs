//! The monitor's boot steps after guest memory and the kernel: devices on
//! their buses, the vCPUs, running them to the guest's end, and reading
//! what the devices saw.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::regs;
use crate::devices::legacy::{
    EventFdTrigger, GuestMark, LabPorts, SerialDevice, SerialSink, I8042,
};
use crate::devices::virtio::{Block, MmioTransport, Net, NetStats};
use crate::devices::Bus;
use crate::ports;
use crate::vcpu::{self, StopReason};
use isolab_abi::stage::Stage;

use super::machine::*;

/// The VM's devices: the port bus (serial, i8042, the lab's ports), the
/// MMIO bus (virtio disks) and what reads their state at the end.
pub(super) struct Devices {
    pub(super) serial: Arc<Mutex<SerialDevice>>,
    pub(super) captured: Arc<Mutex<Vec<u8>>>,
    pub(super) lab: Arc<Mutex<LabPorts>>,
    pub(super) pio: Arc<Bus>,
    pub(super) mmio: Arc<Bus>,
    pub(super) disks: Vec<Arc<Mutex<MmioTransport<Block>>>>,
    pub(super) net: Option<Arc<Mutex<MmioTransport<Net>>>>,
    /// Ends the network device's receive thread.
    net_stop: Option<EventFd>,
    net_thread: Option<std::thread::JoinHandle<()>>,
    pub(super) input_stop: Arc<AtomicBool>,
    pub(super) input_thread: Option<std::thread::JoinHandle<()>>,
}

pub(super) fn attach_devices(
    cfg: &VmConfig,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    blocks: Vec<Block>,
    net: Option<Net>,
) -> Result<Devices, VmmError> {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Thread)?;
    if let Err(e) = vm.register_irqfd(&serial_evt, 4) {
        tracing::debug!(%e, "no irqfd for the serial port; the guest must poll it");
    }
    let sink = SerialSink {
        echo: cfg
            .echo_serial
            .then(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write + Send>),
        captured: captured.clone(),
        limit: cfg.serial_limit,
        dropped: 0,
        seen: Vec::new(),
    };
    let serial = Arc::new(Mutex::new(SerialDevice(vm_superio::Serial::new(
        EventFdTrigger(serial_evt),
        sink,
    ))));
    let lab = Arc::new(Mutex::new(LabPorts::default()));
    let mut pio = Bus::new();
    let bus_err = |e: crate::devices::bus::BusError| VmmError::Boot(e.to_string());
    pio.insert(0x3f8, 8, serial.clone()).map_err(bus_err)?;
    pio.insert(0x60, 5, Arc::new(Mutex::new(I8042)))
        .map_err(bus_err)?;
    pio.insert(u64::from(ports::MARK_PORT), 3, lab.clone())
        .map_err(bus_err)?;
    // Serial input: a thread polls stdin and queues bytes into the UART.
    let input_stop = Arc::new(AtomicBool::new(false));
    let input_thread = cfg.serial_input.then(|| {
        let (serial, input_stop) = (serial.clone(), input_stop.clone());
        std::thread::spawn(move || serial_input(&serial, &input_stop))
    });
    let mut mmio = Bus::new();
    let mut disks = Vec::new();
    for (i, block) in blocks.into_iter().enumerate() {
        disks.push(place_virtio(vm, mem, &mut mmio, i, block)?);
    }
    let (mut net_transport, mut net_stop, mut net_thread) = (None, None, None);
    if let Some(dev) = net {
        let base = virtio_slot(disks.len()).0;
        let transport = place_virtio(vm, mem, &mut mmio, disks.len(), dev)?;
        // Each queue's notify as an ioeventfd (the register's value is
        // the queue's index): the device thread takes it from there.
        let kick = |queue: u32| -> Result<EventFd, VmmError> {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Thread)?;
            let at = kvm_ioctls::IoEventAddress::Mmio(
                base + u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY),
            );
            vm.register_ioevent(&evt, &at, queue)
                .map_err(kvm_err("connect a virtio queue notify (ioeventfd)"))?;
            Ok(evt)
        };
        let kicks = [kick(0)?, kick(1)?];
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Thread)?;
        let thread_stop = stop.try_clone().map_err(VmmError::Thread)?;
        net_thread = Some(
            crate::devices::virtio::net::net_thread(transport.clone(), thread_stop, kicks)
                .map_err(VmmError::Thread)?,
        );
        net_stop = Some(stop);
        net_transport = Some(transport);
    }
    Ok(Devices {
        serial,
        captured,
        lab,
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        disks,
        net: net_transport,
        net_stop,
        net_thread,
        input_stop,
        input_thread,
    })
}

/// Puts `device` behind a virtio-mmio transport in slot `slot` of the MMIO
/// bus, its interrupt line an irqfd.
fn place_virtio<D: crate::devices::virtio::VirtioDevice + 'static>(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slot: usize,
    device: D,
) -> Result<Arc<Mutex<MmioTransport<D>>>, VmmError> {
    let (base, irq) = virtio_slot(slot);
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Thread)?;
    vm.register_irqfd(&evt, irq)
        .map_err(kvm_err("connect a virtio interrupt (irqfd)"))?;
    let transport = MmioTransport::new(device, mem.clone(), Box::new(evt))
        .map_err(|e| VmmError::Boot(format!("virtio queue: {e}")))?;
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(base, crate::devices::virtio::MMIO_WINDOW, transport.clone())
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    Ok(transport)
}

/// What the devices saw, read once the vCPUs have stopped.
pub(super) struct Seen {
    pub(super) guest_touched_bytes: u64,
    pub(super) process_peak_rss_bytes: u64,
    pub(super) unhandled_pio: u64,
    pub(super) guest_marks: Vec<GuestMark>,
    pub(super) exit_code: Option<u8>,
    pub(super) nop_writes: u64,
    pub(super) serial_dropped: u64,
    pub(super) serial_seen: Vec<(String, u64)>,
    pub(super) serial_text: String,
    /// The guest's result page's text, if it wrote one.
    pub(super) result: Option<String>,
    pub(super) disk_stats: Vec<crate::devices::virtio::block::BlockStats>,
    pub(super) net_stats: Option<NetStats>,
}

impl Devices {
    /// Stops serial input and reads every device's figures.
    pub(super) fn stop_and_read(&mut self, mem: &GuestMemoryMmap) -> Seen {
        self.input_stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.input_thread.take() {
            let _ = t.join();
        }
        if let Some(stop) = self.net_stop.take() {
            let _ = stop.write(1);
        }
        if let Some(t) = self.net_thread.take() {
            let _ = t.join();
        }
        let (guest_marks, exit_code, nop_writes) = {
            let l = self.lab.lock().unwrap_or_else(|p| p.into_inner());
            (l.marks.clone(), l.exit_code, l.nop_writes)
        };
        let (serial_dropped, serial_seen) = {
            let s = self.serial.lock().unwrap_or_else(|p| p.into_inner());
            (s.0.writer().dropped, s.0.writer().seen.clone())
        };
        // Resident pages are counted before the result page is read.
        let guest_touched_bytes = resident_bytes(mem);
        Seen {
            guest_touched_bytes,
            process_peak_rss_bytes: peak_rss(),
            unhandled_pio: self.pio.unhandled().writes + self.pio.unhandled().reads,
            guest_marks,
            exit_code,
            nop_writes,
            serial_dropped,
            serial_seen,
            serial_text: String::from_utf8_lossy(
                &self.captured.lock().unwrap_or_else(|p| p.into_inner()),
            )
            .into_owned(),
            result: read_result_page(mem),
            disk_stats: self
                .disks
                .iter()
                .map(|d| d.lock().unwrap_or_else(|p| p.into_inner()).device().stats)
                .collect(),
            net_stats: self.net.as_ref().map(|n| {
                n.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .device()
                    .stats()
                    .clone()
            }),
        }
    }
}

/// The text of the guest's result page (`ports::RESULT_PAGE`), read once
/// the vCPUs have stopped; `None` when the guest wrote none.
/// A Linux agent's page ([`crate::ports::LINUX_RESULT_PAGE`]) is looked
/// at first: a bare guest leaves it zero, while a Linux kernel may have
/// used the bare guest's page for anything.
fn read_result_page(mem: &GuestMemoryMmap) -> Option<String> {
    use vm_memory::{Bytes, GuestAddress};
    [crate::ports::LINUX_RESULT_PAGE, crate::ports::RESULT_PAGE]
        .into_iter()
        .find_map(|at| {
            let mut page = vec![0u8; crate::ports::RESULT_PAGE_SIZE];
            mem.read_slice(&mut page, GuestAddress(at)).ok()?;
            crate::ports::result_text(&page).map(|t| String::from_utf8_lossy(t).into_owned())
        })
}

pub(super) fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    cfg: &VmConfig,
    entry: u64,
) -> Result<Vec<kvm_ioctls::VcpuFd>, VmmError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report its CPUID"))?;
    let mut vcpus = Vec::new();
    for i in 0..cfg.vcpus.max(1) {
        let v = vm
            .create_vcpu(u64::from(i))
            .map_err(kvm_err("create a vCPU"))?;
        regs::configure_vcpu(&v, &cpuid, i, cfg.vcpus.max(1), entry, cfg.pvh)
            .map_err(|e| VmmError::Vcpu(e.to_string()))?;
        vcpus.push(v);
    }
    vcpu::install_kick_handler().map_err(VmmError::Thread)?;
    Ok(vcpus)
}

/// How the vCPUs ended.
pub(super) struct Ran {
    pub(super) stop: StopReason,
    pub(super) timed_out: bool,
    pub(super) first_entry: u64,
}

/// Runs vCPU 0 on its own thread (extra vCPUs wait for an INIT/SIPI a
/// Linux guest would send; the bare guest never does) until one reports
/// or the timeout (the `exit` mark); then stops them all.
pub(super) fn run_vcpus(
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    devices: &Devices,
    timeout: Duration,
    st: &mut Stamps,
) -> Result<Ran, VmmError> {
    let stop = Arc::new(AtomicBool::new(false));
    let first_entry = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for (i, mut v) in vcpus.into_iter().enumerate() {
        let (pio, mmio, stop, first_entry, tx) = (
            devices.pio.clone(),
            devices.mmio.clone(),
            stop.clone(),
            first_entry.clone(),
            tx.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let r = vcpu::run(&mut v, &pio, &mmio, &stop, &first_entry);
                let _ = tx.send((i, r));
            })
            .map_err(VmmError::Thread)?;
        handles.push(h);
    }
    drop(tx);
    let (stop_reason, timed_out, reporter) = match rx.recv_timeout(timeout) {
        Ok((i, r)) => (r, false, Some(i)),
        Err(_) => (StopReason::Stopped, true, None),
    };
    st.mark(Stage::Exit);
    // Stop every vCPU: set the flag and kick the threads until they end.
    // The one that reported is already leaving its loop: just join it.
    stop.store(true, Ordering::SeqCst);
    if let Some(i) = reporter {
        let h = handles.remove(i);
        let _ = h.join();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while handles.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < deadline {
        for h in &handles {
            use std::os::unix::thread::JoinHandleExt;
            if !h.is_finished() {
                // SAFETY: the thread is alive (not finished) and owned here.
                unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for h in handles {
        if h.is_finished() {
            let _ = h.join();
        }
    }
    Ok(Ran {
        stop: stop_reason,
        timed_out,
        first_entry: first_entry.load(Ordering::SeqCst),
    })
}
