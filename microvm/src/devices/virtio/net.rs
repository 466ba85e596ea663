//! virtio-net (virtio 1.x §5.1) over a tap device: one receive queue
//! (0), one transmit queue (1), a MAC address in the configuration space,
//! and no offloads — every frame is whole, its 12-byte `virtio_net_hdr`
//! all zeros (no checksum or segmentation work is handed either way).
//!
//! Both queues are served by one thread of the monitor's ([`net_thread`]).
//! The guest's queue notifies reach it through ioeventfds, which KVM
//! signals without leaving the kernel: a send costs the guest its MMIO
//! write's trap, not a round trip through this process (the block
//! device, by contrast, is served on the vCPU thread). The thread also
//! waits on the tap and fills the guest's receive buffers as frames
//! arrive; a polling guest sees the used ring move without any exit. When
//! the guest has no buffer left, the frame waits in the device and the
//! thread stops reading the tap until the guest posts buffers: the tap's
//! own queue then holds the backlog, and drops past it, as a NIC's ring
//! would.
//!
//! The tap is handed over as an open file descriptor (the lab, or whoever
//! runs `isolab-vmm`, made it and put it on a bridge): the monitor never
//! opens `/dev/net/tun` or touches the host's links, so its jail need not
//! allow either.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{MmioTransport, VirtioDevice};

/// Receive and transmit queue sizes.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (virtio 1.x: `num_buffers` is always there).
pub const HDR_LEN: usize = 12;
/// The largest frame either way: an Ethernet frame of a 1500-byte MTU
/// without its FCS. Larger ones (GSO) are not negotiated.
pub const MAX_FRAME: usize = 1514;
/// The receive queue's index.
pub const RXQ: usize = 0;
/// The transmit queue's index.
pub const TXQ: usize = 1;

/// What the device moved, read at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames dropped: a receive buffer too small for the frame, a frame
    /// the driver sent that is not Ethernet-sized, a tap that refused it.
    pub dropped: u64,
}

/// A virtio-net device over a tap file descriptor.
pub struct Net {
    tap: OwnedFd,
    mac: [u8; 6],
    queue_sizes: [u16; 2],
    /// A frame read from the tap that no receive buffer was there for.
    pending: Option<Vec<u8>>,
    /// Written when the guest posts receive buffers after a stall.
    wake: EventFd,
    scratch: Vec<u8>,
    stats: NetStats,
}

impl Net {
    /// The device over `tap` (made non-blocking here), with `mac` in its
    /// configuration space.
    pub fn new(tap: OwnedFd, mac: [u8; 6]) -> io::Result<Net> {
        set_nonblocking(tap.as_raw_fd())?;
        Ok(Net {
            tap,
            mac,
            queue_sizes: [QUEUE_SIZE; 2],
            pending: None,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            scratch: vec![0; HDR_LEN + MAX_FRAME],
            stats: NetStats::default(),
        })
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Whether a frame waits for a receive buffer (the tap is not read
    /// until the guest posts one).
    pub fn rx_stalled(&self) -> bool {
        self.pending.is_some()
    }

    /// Drops what the tap holds (frames for a driver that is not up, as
    /// a NIC that is down drops them).
    pub fn drain_tap(&mut self) {
        while self.read_tap().is_some() {
            self.stats.dropped += 1;
        }
    }

    /// One frame from the tap, or None when it has none now.
    fn read_tap(&mut self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME + 1];
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(%e, "reading the tap");
                }
                return None;
            }
            let n = n as usize;
            if n > MAX_FRAME {
                // Only a GSO-sized frame gets here; none was negotiated.
                self.stats.dropped += 1;
                continue;
            }
            buf.truncate(n);
            return Some(buf);
        }
    }

    /// Fills receive buffers with frames from the tap until either runs
    /// out. Returns whether any buffer was used.
    fn receive(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => match self.read_tap() {
                    Some(f) => f,
                    None => break,
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let mut writer = chain.writer(mem)?;
            let len = if writer.available_bytes() < HDR_LEN + frame.len() {
                // The driver must post buffers that hold a whole frame
                // (§5.1.6.3.1); this one is used empty and the frame lost.
                self.stats.dropped += 1;
                0
            } else {
                let mut hdr = [0u8; HDR_LEN];
                hdr[10] = 1; // num_buffers
                io::Write::write_all(&mut writer, &hdr)
                    .and_then(|()| io::Write::write_all(&mut writer, &frame))
                    .map_err(|_| virtio_queue::Error::InvalidChain)?;
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += frame.len() as u64;
                (HDR_LEN + frame.len()) as u32
            };
            queue.add_used(mem, head, len)?;
            used = true;
        }
        Ok(used)
    }

    /// Sends every frame the driver queued; returns whether any was used.
    fn transmit(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut reader = chain.reader(mem)?;
            let len = reader.available_bytes();
            if !(HDR_LEN + 14..=HDR_LEN + MAX_FRAME).contains(&len) {
                self.stats.dropped += 1;
            } else {
                let buf = &mut self.scratch[..len];
                io::Read::read_exact(&mut reader, buf)
                    .map_err(|_| virtio_queue::Error::InvalidChain)?;
                let frame = &buf[HDR_LEN..];
                // SAFETY: writing a buffer we own to the tap.
                let n = unsafe {
                    libc::write(self.tap.as_raw_fd(), frame.as_ptr().cast(), frame.len())
                };
                if n == frame.len() as isize {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.len() as u64;
                } else {
                    self.stats.dropped += 1;
                }
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        Ok(used)
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_NET_F_MAC)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// `struct virtio_net_config`: the MAC at 0; the rest (status,
    /// max_virtqueue_pairs, mtu) is not offered and reads as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.mac.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, virtio_queue::Error> {
        let used = match index {
            RXQ => {
                // New buffers: deliver what waits, and if the receive
                // thread had stopped reading the tap, wake it.
                let was_stalled = self.rx_stalled();
                let used = self.receive(queue, mem)?;
                if was_stalled {
                    let _ = self.wake.write(1);
                }
                used
            }
            TXQ => self.transmit(queue, mem)?,
            _ => false,
        };
        Ok(used && queue.needs_notification(mem)?)
    }
}

/// The device's thread: waits for a frame on the tap (not while the guest
/// has no receive buffer), for the guest's notify of either queue (an
/// ioeventfd each, so a notify costs the guest no exit to this process,
/// as in QEMU and Firecracker), or for `stop`; then runs the queue as a
/// notify would. `kicks` are the receive and transmit queues' eventfds.
/// How long the device thread keeps polling without sleeping after an
/// event (QEMU's event loop polls adaptively up to 32 µs by default).
const BUSY_POLL: std::time::Duration = std::time::Duration::from_micros(30);

pub fn net_thread(
    transport: Arc<Mutex<MmioTransport<Net>>>,
    stop: EventFd,
    kicks: [EventFd; 2],
) -> io::Result<std::thread::JoinHandle<()>> {
    let (tap, wake) = {
        let t = transport.lock().unwrap_or_else(|p| p.into_inner());
        (t.device().tap.as_raw_fd(), t.device().wake.try_clone()?)
    };
    let mut busy_until: Option<std::time::Instant> = None;
    Ok(std::thread::spawn(move || loop {
        let stalled = transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .device()
            .rx_stalled();
        let fd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [
            fd(stop.as_raw_fd()),
            fd(wake.as_raw_fd()),
            fd(kicks[RXQ].as_raw_fd()),
            fd(kicks[TXQ].as_raw_fd()),
            fd(tap),
        ];
        let n = if stalled { 4 } else { 5 };
        // Adaptive polling, as QEMU's event loop does (`poll-max-ns`):
        // for a short while after an event, look again without sleeping,
        // so the next notify or frame of an exchange costs no wake-up.
        let spinning = busy_until.is_some_and(|t| std::time::Instant::now() < t);
        // SAFETY: polling descriptors this thread holds open; the tap
        // lives in the device, which outlives the thread (joined first).
        let r = unsafe { libc::poll(fds.as_mut_ptr(), n, if spinning { 0 } else { -1 }) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if r == 0 {
            // Nothing yet: let any other runnable thread on this CPU (the
            // vCPU, the host's peer) go first; this is a spin, not a claim.
            std::thread::yield_now();
            continue;
        }
        busy_until = Some(std::time::Instant::now() + BUSY_POLL);
        if fds[0].revents != 0 {
            return;
        }
        if fds[1].revents != 0 {
            let _ = wake.read();
        }
        let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
        if fds[3].revents != 0 {
            let _ = kicks[TXQ].read();
            t.notify(TXQ as u32);
        }
        if fds[2].revents != 0 {
            let _ = kicks[RXQ].read();
        }
        if fds[4].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            // The tap went away (its bridge deleted): nothing more comes.
            return;
        }
        // The receive queue only when something is for it (a frame, new
        // buffers, a wake): a send alone costs no read of the tap.
        if fds[1].revents | fds[2].revents | fds[4].revents == 0 {
            continue;
        }
        if t.live() {
            t.notify(RXQ as u32);
        } else {
            t.device_mut().drain_tap();
        }
    }))
}

#[cfg(test)]
mod tests {
    //! The device driven as a guest driver would, with a datagram socket
    //! pair standing in for the tap (one datagram, one frame).
    use super::*;
    use std::os::fd::FromRawFd;
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_config::*;
    use virtio_bindings::virtio_mmio::*;
    use vm_memory::{Bytes, GuestAddress};

    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::Interrupt;

    const QSIZE: u16 = 16;
    /// Per queue: descriptors, available ring, used ring.
    const RINGS: [[u64; 3]; 2] = [[0x1000, 0x2000, 0x3000], [0x4000, 0x5000, 0x6000]];
    const BUFS: u64 = 0x10000;
    const MAC: [u8; 6] = [0x02, 0x15, 0x0a, 0xd5, 0, 9];

    struct NoIrq;
    impl Interrupt for NoIrq {
        fn trigger(&self) {}
    }

    struct Guest {
        dev: Arc<Mutex<MmioTransport<Net>>>,
        mem: GuestMemoryMmap,
        avail: [u16; 2],
        host: OwnedFd,
    }

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        let kind = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC;
        // SAFETY: socketpair fills two descriptors we then own.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors from socketpair.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    impl Guest {
        fn new() -> Guest {
            let (tap, host) = socketpair();
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let net = Net::new(tap, MAC).unwrap();
            let dev = MmioTransport::new(net, mem.clone(), Box::new(NoIrq)).unwrap();
            let mut g = Guest {
                dev: Arc::new(Mutex::new(dev)),
                mem,
                avail: [0; 2],
                host,
            };
            g.wr(
                VIRTIO_MMIO_STATUS,
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
            );
            let features = (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC);
            for sel in 0..2 {
                g.wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
                g.wr(VIRTIO_MMIO_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
            }
            let s =
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            g.wr(VIRTIO_MMIO_STATUS, s);
            for (q, rings) in RINGS.iter().enumerate() {
                g.wr(VIRTIO_MMIO_QUEUE_SEL, q as u32);
                g.wr(VIRTIO_MMIO_QUEUE_NUM, QSIZE.into());
                for (reg, at) in [
                    VIRTIO_MMIO_QUEUE_DESC_LOW,
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                    VIRTIO_MMIO_QUEUE_USED_LOW,
                ]
                .into_iter()
                .zip(rings)
                {
                    g.wr(reg, *at as u32);
                    g.wr(reg + 4, 0);
                }
                g.wr(VIRTIO_MMIO_QUEUE_READY, 1);
            }
            g.wr(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
            assert!(g.dev.lock().unwrap().live());
            g
        }

        fn wr(&mut self, reg: u32, v: u32) {
            self.dev
                .lock()
                .unwrap()
                .write(u64::from(reg), &v.to_le_bytes());
        }

        /// Puts one buffer on queue `q` (a chain of one descriptor, id =
        /// the slot), without notifying.
        fn post(&mut self, q: usize, addr: u64, len: u32, write: bool) -> u16 {
            let [desc, avail, _] = RINGS[q];
            let id = self.avail[q] % QSIZE;
            let d = desc + 16 * u64::from(id);
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem
                .write_obj(if write { 2u16 } else { 0 }, GuestAddress(d + 12))
                .unwrap();
            self.mem
                .write_obj(id, GuestAddress(avail + 4 + 2 * u64::from(id)))
                .unwrap();
            self.avail[q] = self.avail[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail[q], GuestAddress(avail + 2))
                .unwrap();
            id
        }

        fn notify(&mut self, q: u32) {
            self.wr(VIRTIO_MMIO_QUEUE_NOTIFY, q);
        }

        fn used_idx(&self, q: usize) -> u16 {
            self.mem.read_obj(GuestAddress(RINGS[q][2] + 2)).unwrap()
        }

        /// Used entry `n` of queue `q`: (id, len).
        fn used(&self, q: usize, n: u16) -> (u32, u32) {
            let at = RINGS[q][2] + 4 + 8 * u64::from(n % QSIZE);
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        fn host_send(&self, frame: &[u8]) {
            // SAFETY: writing our buffer to a socket we own.
            let n =
                unsafe { libc::write(self.host.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            assert_eq!(n, frame.len() as isize);
        }

        fn host_recv(&self) -> Option<Vec<u8>> {
            let mut b = vec![0u8; 4096];
            // SAFETY: reading into our buffer from a socket we own.
            let n = unsafe {
                libc::recv(
                    self.host.as_raw_fd(),
                    b.as_mut_ptr().cast(),
                    b.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            (n >= 0).then(|| {
                b.truncate(n as usize);
                b
            })
        }

        fn stats(&self) -> NetStats {
            self.dev.lock().unwrap().device().stats().clone()
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn it_is_a_network_device_with_our_mac() {
        let g = Guest::new();
        let mut d = g.dev.lock().unwrap();
        let mut b = [0u8; 4];
        d.read(u64::from(VIRTIO_MMIO_DEVICE_ID), &mut b);
        assert_eq!(u32::from_le_bytes(b), VIRTIO_ID_NET);
        let mut mac = [0u8; 8];
        d.read(u64::from(VIRTIO_MMIO_CONFIG), &mut mac);
        assert_eq!(&mac[..6], &MAC);
        assert_eq!(&mac[6..], &[0, 0], "no status field is offered");
    }

    #[test]
    fn a_sent_frame_reaches_the_tap_without_its_header() {
        let mut g = Guest::new();
        let f = frame(60, 1);
        let mut chain = vec![0xaau8; HDR_LEN];
        chain.extend(&f);
        g.mem.write_slice(&chain, GuestAddress(BUFS)).unwrap();
        g.post(TXQ, BUFS, chain.len() as u32, false);
        g.notify(TXQ as u32);
        assert_eq!(g.used_idx(TXQ), 1, "used before the notify returns");
        assert_eq!(
            g.used(TXQ, 0).1,
            0,
            "the device writes nothing into a sent buffer"
        );
        assert_eq!(g.host_recv().as_deref(), Some(&f[..]));
        // Not Ethernet-sized either way: used, dropped, nothing on the tap.
        for len in [HDR_LEN + 10, HDR_LEN + MAX_FRAME + 1] {
            g.post(TXQ, BUFS, len as u32, false);
        }
        g.notify(TXQ as u32);
        assert_eq!(g.used_idx(TXQ), 3);
        assert_eq!(g.host_recv(), None);
        let s = g.stats();
        assert_eq!((s.tx_frames, s.tx_bytes, s.dropped), (1, 60, 2));
    }

    #[test]
    fn a_frame_waits_for_a_buffer_and_arrives_with_a_header() {
        let mut g = Guest::new();
        let f = frame(98, 7);
        g.host_send(&f);
        // No buffer yet: what the device thread does on a readable tap.
        g.dev.lock().unwrap().notify(RXQ as u32);
        assert!(g.dev.lock().unwrap().device().rx_stalled());
        assert_eq!(g.used_idx(RXQ), 0);
        g.post(RXQ, BUFS, 2048, true);
        g.notify(RXQ as u32);
        assert_eq!(g.used_idx(RXQ), 1);
        let (id, len) = g.used(RXQ, 0);
        assert_eq!((id, len as usize), (0, HDR_LEN + f.len()));
        let mut got = vec![0u8; len as usize];
        g.mem.read_slice(&mut got, GuestAddress(BUFS)).unwrap();
        assert_eq!(
            &got[..HDR_LEN],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "num_buffers = 1, nothing else"
        );
        assert_eq!(&got[HDR_LEN..], &f[..]);
        assert!(!g.dev.lock().unwrap().device().rx_stalled());
        // A buffer too small for the frame is used empty; the frame is lost.
        g.host_send(&frame(200, 3));
        g.post(RXQ, BUFS, 100, true);
        g.notify(RXQ as u32);
        assert_eq!((g.used_idx(RXQ), g.used(RXQ, 1).1), (2, 0));
        assert_eq!(g.stats().dropped, 1);
        assert_eq!(g.stats().rx_frames, 1);
    }

    #[test]
    fn the_device_thread_receives_and_sends_on_its_own() {
        let mut g = Guest::new();
        for i in 0..4 {
            g.post(RXQ, BUFS + 2048 * i, 2048, true);
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kicks = [
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ];
        let tx_kick = kicks[TXQ].try_clone().unwrap();
        let t = net_thread(g.dev.clone(), stop.try_clone().unwrap(), kicks).unwrap();
        for i in 0..3 {
            g.host_send(&frame(64, i));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.used_idx(RXQ) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(g.used_idx(RXQ), 3, "three frames delivered with no notify");
        // A transmit notify through the queue's eventfd, as KVM signals it.
        let mut chain = vec![0u8; HDR_LEN];
        chain.extend(frame(60, 9));
        g.mem.write_slice(&chain, GuestAddress(0x8000)).unwrap();
        g.post(TXQ, 0x8000, chain.len() as u32, false);
        tx_kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.used_idx(TXQ) < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(g.host_recv().as_deref(), Some(&frame(60, 9)[..]));
        stop.write(1).unwrap();
        t.join().unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Whatever a guest puts in its descriptors — any address, any
        /// length, read or write, on either queue — and whatever arrives
        /// on the tap, the device never panics: it uses the buffer, drops
        /// the frame, or asks for a reset.
        #[test]
        fn arbitrary_chains_never_break_the_device(
            chains in proptest::collection::vec(
                (0usize..2,
                 proptest::prop_oneof![proptest::strategy::Just(BUFS), 0u64..(2 << 20), proptest::arbitrary::any::<u64>()],
                 proptest::prop_oneof![proptest::strategy::Just(2048u32), 0u32..100, proptest::arbitrary::any::<u32>()],
                 proptest::arbitrary::any::<bool>()),
                1..12),
            frames in proptest::collection::vec(1usize..1600, 0..6),
        ) {
            let mut g = Guest::new();
            for len in &frames {
                g.host_send(&frame(*len, 5));
            }
            for (q, addr, len, write) in chains {
                g.post(q, addr, len, write);
                g.notify(q as u32);
            }
            let d = g.dev.lock().unwrap();
            let s = d.device().stats().clone();
            proptest::prop_assert!(s.rx_frames as usize <= frames.len());
            proptest::prop_assert!(s.tx_bytes <= (s.tx_frames * MAX_FRAME as u64));
        }
    }
}
