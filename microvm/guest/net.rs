//! A polling virtio-net driver (virtio 1.x §5.1, MMIO transport) and just
//! enough Ethernet, ARP, IPv4, ICMP and UDP for the bare guest's network
//! scenarios: `net-rtt` (UDP round trips to the host's echo server, as the
//! agent's are), `net-stream` (UDP from the host's server into the guest,
//! a window of datagrams per request) and `net-echo` (answer ARP, ping
//! and UDP echo on port 7 until a datagram "stop" comes).
//!
//! Written from the spec and the RFCs, not from the monitor's device: it
//! checks the device rather than agreeing with it. Nothing is taken by
//! interrupt. A send is one notify (a VM exit); a frame arrives when the
//! monitor's receive thread (or QEMU's) moves the used ring, which the
//! guest sees without any exit; a receive buffer goes back with a notify.
use super::disk::{mmio_r32, mmio_w32, peek_volatile, poke, setup_queue};
use super::*;

/// Receive buffers (and queue size); `net-stream`'s window is 8 fewer.
const QSZ: u16 = 32;
const BUF: usize = 2048;
const HDR: usize = 12;
const DESC_F_WRITE: u16 = 2;
const ECHO_PORT: u16 = 7;
const OUR_PORT: u16 = 40_007;
const MAX_PINGS: usize = 8192;
/// Round trips before the measured ones (as the agent's ten).
const WARMUP: u64 = 10;
/// A wait that gives up: cycles, sized for a TSC of at least ~1 GHz. Only
/// a timeout, never a measurement.
const WAIT_CYCLES: u64 = 1 << 31;

#[no_mangle]
static mut RXQ_MEM: Page = Page([0; 512]);
#[no_mangle]
static mut TXQ_MEM: Page = Page([0; 512]);
#[no_mangle]
static mut TX_BUF: Page = Page([0; 512]);
#[repr(C, align(4096))]
struct RxBufs([u8; BUF * QSZ as usize]);
#[no_mangle]
static mut RX_BUFS: RxBufs = RxBufs([0; BUF * QSZ as usize]);
#[no_mangle]
static mut RTTS: [u64; MAX_PINGS] = [0; MAX_PINGS];

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads the time-stamp counter; CR4.TSD is clear.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

fn fence() {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

fn be16(b: &[u8]) -> u16 {
    (b[0] as u16) << 8 | b[1] as u16
}

fn put16(b: &mut [u8], v: u16) {
    b[0] = (v >> 8) as u8;
    b[1] = v as u8;
}

/// The Internet checksum (RFC 1071) of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in b.chunks(2) {
        let w = if pair.len() == 2 {
            be16(pair)
        } else {
            (pair[0] as u16) << 8
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `10.213.0.5` (optionally `/24`) → address and prefix length.
fn parse_ip(s: &[u8]) -> Option<([u8; 4], u8)> {
    let (addr, len) = match s.iter().position(|&c| c == b'/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut ip = [0u8; 4];
    let mut parts = addr.split(|&c| c == b'.');
    for o in ip.iter_mut() {
        *o = dec(parts.next()?)?.try_into().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let len = match len {
        Some(l) => dec(l)?
            .try_into()
            .ok()
            .filter(|&l: &u8| (1..=32).contains(&l))?,
        None => 24,
    };
    Some((ip, len))
}

fn dec(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    s.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + (c - b'0') as u32)
    })
}

/// `10.213.0.1:41000` → address and port.
fn parse_peer(s: &[u8]) -> Option<([u8; 4], u16)> {
    let i = s.iter().position(|&c| c == b':')?;
    let (ip, _) = parse_ip(&s[..i])?;
    Some((ip, dec(&s[i + 1..])?.try_into().ok()?))
}

fn same_subnet(a: [u8; 4], b: [u8; 4], len: u8) -> bool {
    let mask = u32::MAX << (32 - len as u32);
    u32::from_be_bytes(a) & mask == u32::from_be_bytes(b) & mask
}

/// A UDP datagram for the caller (not the echo port).
struct Udp {
    from: [u8; 4],
    from_port: u16,
    to_port: u16,
    head: [u8; 8],
}

struct Nic {
    base: u64,
    mac: [u8; 6],
    ip: [u8; 4],
    rx_seen: u16,
    rx_avail: u16,
    tx_avail: u16,
    /// The one neighbour this guest talks to first: (IP, MAC).
    neighbour: Option<([u8; 4], [u8; 6])>,
    arp_answers: u64,
    pings_answered: u64,
    echoes: u64,
    stop: bool,
    /// `net-stream`: receive buffers go back without a notify; the
    /// scenario notifies once per window.
    batch_rx: bool,
}

impl Nic {
    /// Probe, negotiate VERSION_1 and MAC, set up both queues, post every
    /// receive buffer.
    fn init(base: u64, ip: [u8; 4]) -> Result<Nic, &'static str> {
        if mmio_r32(base) != 0x7472_6976 || mmio_r32(base + 0x04) != 2 {
            return Err("no virtio-mmio version 2 device at the announced address");
        }
        mmio_w32(base + 0x70, 0);
        mmio_w32(base + 0x70, 1);
        mmio_w32(base + 0x70, 1 | 2);
        mmio_w32(base + 0x14, 0);
        let mac_offered = mmio_r32(base + 0x10) & (1 << 5) != 0;
        mmio_w32(base + 0x14, 1);
        if mmio_r32(base + 0x10) & 1 == 0 {
            return Err("the network device does not offer VIRTIO_F_VERSION_1");
        }
        if !mac_offered {
            return Err("the network device does not offer VIRTIO_NET_F_MAC");
        }
        mmio_w32(base + 0x24, 0);
        mmio_w32(base + 0x20, 1 << 5);
        mmio_w32(base + 0x24, 1);
        mmio_w32(base + 0x20, 1);
        mmio_w32(base + 0x70, 1 | 2 | 8);
        if mmio_r32(base + 0x70) & 8 == 0 {
            return Err("the network device refused our features");
        }
        setup_queue(base, 0, QSZ, core::ptr::addr_of!(RXQ_MEM) as u64)?;
        setup_queue(base, 1, QSZ, core::ptr::addr_of!(TXQ_MEM) as u64)?;
        mmio_w32(base + 0x70, 1 | 2 | 8 | 4);
        let (lo, hi) = (mmio_r32(base + 0x100), mmio_r32(base + 0x104));
        let mac = [
            lo as u8,
            (lo >> 8) as u8,
            (lo >> 16) as u8,
            (lo >> 24) as u8,
            hi as u8,
            (hi >> 8) as u8,
        ];
        let mut nic = Nic {
            base,
            mac,
            ip,
            rx_seen: 0,
            rx_avail: 0,
            tx_avail: 0,
            neighbour: None,
            arp_answers: 0,
            pings_answered: 0,
            echoes: 0,
            stop: false,
            batch_rx: false,
        };
        let rx = core::ptr::addr_of!(RXQ_MEM) as u64;
        let bufs = core::ptr::addr_of!(RX_BUFS) as u64;
        for i in 0..QSZ as u64 {
            let d = rx + 16 * i;
            poke(d, bufs + i * BUF as u64);
            poke(d + 8, BUF as u32);
            poke(d + 12, DESC_F_WRITE);
            poke(d + 14, 0u16);
        }
        for i in 0..QSZ {
            nic.post_rx(i, false);
        }
        mmio_w32(base + 0x50, 0);
        Ok(nic)
    }

    /// Puts receive buffer `id` back on the available ring.
    fn post_rx(&mut self, id: u16, notify: bool) {
        let rx = core::ptr::addr_of!(RXQ_MEM) as u64;
        poke(rx + 0x400 + 4 + 2 * (self.rx_avail % QSZ) as u64, id);
        self.rx_avail = self.rx_avail.wrapping_add(1);
        fence();
        poke(rx + 0x400 + 2, self.rx_avail);
        fence();
        if notify {
            mmio_w32(self.base + 0x50, 0);
        }
    }

    /// The next received frame: its buffer id and the frame (after the
    /// virtio-net header), or None when the used ring has not moved.
    fn recv(&mut self) -> Option<(u16, &'static [u8])> {
        let rx = core::ptr::addr_of!(RXQ_MEM) as u64;
        if peek_volatile::<u16>(rx + 0x800 + 2) == self.rx_seen {
            return None;
        }
        fence();
        let e = rx + 0x800 + 4 + 8 * (self.rx_seen % QSZ) as u64;
        let (id, len) = (
            peek_volatile::<u32>(e),
            peek_volatile::<u32>(e + 4) as usize,
        );
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let id = (id % QSZ as u32) as u16;
        let len = if (HDR + 14..=BUF).contains(&len) {
            len
        } else {
            HDR
        };
        // SAFETY: the device wrote `len` bytes of buffer `id`, which stays
        // ours until it is posted again.
        let buf = unsafe {
            &(*core::ptr::addr_of!(RX_BUFS)).0[id as usize * BUF..id as usize * BUF + len]
        };
        Some((id, &buf[HDR..]))
    }

    /// The frame being built: the transmit buffer after its header.
    fn tx_frame() -> &'static mut [u8] {
        // SAFETY: single-threaded guest; the device has used the previous
        // frame before `send` returns.
        unsafe {
            &mut core::slice::from_raw_parts_mut(core::ptr::addr_of_mut!(TX_BUF) as *mut u8, 4096)
                [HDR..HDR + 1514]
        }
    }

    /// Sends the first `len` bytes of the frame built in `tx_frame` and
    /// waits until the device has used it.
    fn send(&mut self, len: usize) -> Result<(), &'static str> {
        let tx = core::ptr::addr_of!(TXQ_MEM) as u64;
        let buf = core::ptr::addr_of!(TX_BUF) as u64;
        for i in 0..HDR as u64 {
            poke(buf + i, 0u8);
        }
        poke(tx, buf);
        poke(tx + 8, (HDR + len) as u32);
        poke(tx + 12, 0u16);
        poke(tx + 14, 0u16);
        poke(tx + 0x400 + 4 + 2 * (self.tx_avail % QSZ) as u64, 0u16);
        self.tx_avail = self.tx_avail.wrapping_add(1);
        fence();
        poke(tx + 0x400 + 2, self.tx_avail);
        fence();
        mmio_w32(self.base + 0x50, 1);
        let t = rdtsc();
        while peek_volatile::<u16>(tx + 0x800 + 2) != self.tx_avail {
            if rdtsc().wrapping_sub(t) > WAIT_CYCLES {
                return Err("the network device never used a frame we sent");
            }
        }
        Ok(())
    }

    fn eth(&self, f: &mut [u8], to: [u8; 6], kind: u16) {
        f[..6].copy_from_slice(&to);
        f[6..12].copy_from_slice(&self.mac);
        put16(&mut f[12..14], kind);
    }

    fn arp(&mut self, op: u16, to_mac: [u8; 6], to_ip: [u8; 4]) -> Result<(), &'static str> {
        let f = Self::tx_frame();
        let dst = if op == 1 { [0xff; 6] } else { to_mac };
        self.eth(f, dst, 0x0806);
        let a = &mut f[14..42];
        a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
        a[8..14].copy_from_slice(&self.mac);
        a[14..18].copy_from_slice(&self.ip);
        a[18..24].copy_from_slice(if op == 1 { &[0; 6] } else { &to_mac });
        a[24..28].copy_from_slice(&to_ip);
        // Padded to Ethernet's 60-byte minimum.
        f[42..60].fill(0);
        self.send(60)
    }

    /// An IPv4 header for `payload` bytes of `proto` to `to`.
    fn ipv4(&self, f: &mut [u8], to_mac: [u8; 6], to: [u8; 4], proto: u8, payload: usize) {
        self.eth(f, to_mac, 0x0800);
        let h = &mut f[14..34];
        h[0] = 0x45;
        h[1] = 0;
        put16(&mut h[2..4], (20 + payload) as u16);
        h[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
        h[8] = 64;
        h[9] = proto;
        h[10..12].fill(0);
        h[12..16].copy_from_slice(&self.ip);
        h[16..20].copy_from_slice(&to);
        let c = checksum(h);
        put16(&mut h[10..12], c);
    }

    /// Sends a UDP datagram (checksum 0: none, as IPv4 allows) whose
    /// payload the caller wrote at `tx_frame()[42..]`.
    fn udp(
        &mut self,
        to_mac: [u8; 6],
        to: [u8; 4],
        from_port: u16,
        to_port: u16,
        len: usize,
    ) -> Result<(), &'static str> {
        let f = Self::tx_frame();
        self.ipv4(f, to_mac, to, 17, 8 + len);
        put16(&mut f[34..36], from_port);
        put16(&mut f[36..38], to_port);
        put16(&mut f[38..40], (8 + len) as u16);
        f[40..42].fill(0);
        self.send((42 + len).max(60))
    }

    /// Takes one received frame, if any: answers ARP requests for our
    /// address, pings and UDP echo on port 7 itself; learns the MAC of an
    /// ARP reply; returns any other UDP datagram to us. The buffer goes
    /// back to the device before this returns.
    fn service(&mut self) -> Result<Option<Udp>, &'static str> {
        let Some((id, f)) = self.recv() else {
            return Ok(None);
        };
        let r = self.handle(f);
        self.post_rx(id, !self.batch_rx);
        r
    }

    fn handle(&mut self, f: &'static [u8]) -> Result<Option<Udp>, &'static str> {
        if f.len() < 42 {
            return Ok(None);
        }
        let src_mac: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
        match be16(&f[12..14]) {
            0x0806 if f[14..22] == [0, 1, 8, 0, 6, 4, 0, 1] && f[38..42] == self.ip => {
                let ip: [u8; 4] = f[28..32].try_into().unwrap_or([0; 4]);
                self.arp_answers += 1;
                self.arp(2, src_mac, ip)?;
            }
            0x0806 if f[14..22] == [0, 1, 8, 0, 6, 4, 0, 2] && f[38..42] == self.ip => {
                let ip: [u8; 4] = f[28..32].try_into().unwrap_or([0; 4]);
                if self.neighbour.is_some_and(|(n, _)| n == ip) || self.neighbour.is_none() {
                    self.neighbour = Some((ip, f[22..28].try_into().unwrap_or([0; 6])));
                }
            }
            0x0800 if f[14] == 0x45 && f[30..34] == self.ip && checksum(&f[14..34]) == 0 => {
                let total = be16(&f[16..18]) as usize;
                if total < 28 || 14 + total > f.len() {
                    return Ok(None);
                }
                let from: [u8; 4] = f[26..30].try_into().unwrap_or([0; 4]);
                let body = &f[34..14 + total];
                match f[23] {
                    1 if body[0] == 8 && checksum(body) == 0 => {
                        // Echo request → reply: the same body, type 0.
                        let out = Self::tx_frame();
                        self.ipv4(out, src_mac, from, 1, body.len());
                        out[34..34 + body.len()].copy_from_slice(body);
                        out[34] = 0;
                        out[36..38].fill(0);
                        let c = checksum(&out[34..34 + body.len()]);
                        put16(&mut out[36..38], c);
                        self.pings_answered += 1;
                        self.send((34 + body.len()).max(60))?;
                    }
                    17 => {
                        let (sport, dport) = (be16(&body[0..2]), be16(&body[2..4]));
                        let ulen = (be16(&body[4..6]) as usize).clamp(8, body.len());
                        let payload = &body[8..ulen];
                        if dport == ECHO_PORT {
                            if payload.len() > 1472 {
                                return Ok(None);
                            }
                            let out = Self::tx_frame();
                            out[42..42 + payload.len()].copy_from_slice(payload);
                            self.echoes += 1;
                            self.stop |= payload.starts_with(b"stop");
                            self.udp(src_mac, from, ECHO_PORT, sport, payload.len())?;
                        } else {
                            let mut head = [0u8; 8];
                            let n = payload.len().min(8);
                            head[..n].copy_from_slice(&payload[..n]);
                            return Ok(Some(Udp {
                                from,
                                from_port: sport,
                                to_port: dport,
                                head,
                            }));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(None)
    }

    /// The MAC of `ip`, asked for by ARP (three tries).
    fn resolve(&mut self, ip: [u8; 4]) -> Result<[u8; 6], &'static str> {
        self.neighbour = None;
        for _ in 0..3 {
            self.arp(1, [0; 6], ip)?;
            let t = rdtsc();
            while rdtsc().wrapping_sub(t) < WAIT_CYCLES {
                self.service()?;
                if let Some((n, mac)) = self.neighbour {
                    if n == ip {
                        return Ok(mac);
                    }
                }
            }
        }
        Err("no ARP answer from the next hop")
    }
}

/// The network device among the announced virtio windows, with our IP.
fn open(cmdline: &[u8]) -> Result<(Nic, u8), &'static str> {
    let (ip, len) = arg(cmdline, b"isolab.ip")
        .and_then(parse_ip)
        .ok_or("no isolab.ip=A.B.C.D[/LEN] on the command line: run with --network bridge")?;
    let base = virtio_bases(cmdline)
        .find(|&b| mmio_r32(b) == 0x7472_6976 && mmio_r32(b + 0x08) == 1)
        .ok_or("no virtio network device at the announced addresses: run with --network bridge")?;
    Ok((Nic::init(base, ip)?, len))
}

fn counters(nic: &Nic) {
    put("\"mac\":\"");
    for (i, b) in nic.mac.iter().enumerate() {
        if i > 0 {
            put(":");
        }
        let d = b"0123456789abcdef";
        put_bytes(&[d[(b >> 4) as usize], d[(b & 15) as usize]]);
    }
    put("\",\"arp_answers\":");
    put_u64(nic.arp_answers);
    put(",\"pings_answered\":");
    put_u64(nic.pings_answered);
    put(",\"udp_echoes\":");
    put_u64(nic.echoes);
    put(",");
}

/// `net-rtt`: `isolab.pings` UDP round trips of 32 bytes to the host's
/// echo server at `isolab.peer`, after ten unmeasured ones, as the agent
/// does. Each is timed with the TSC; the host turns cycles into time.
pub(crate) fn rtt_scenario(cmdline: &[u8]) -> Result<(), &'static str> {
    let (mut nic, len) = open(cmdline)?;
    let (peer, port) = arg(cmdline, b"isolab.peer").and_then(parse_peer).ok_or(
        "no isolab.peer=IP:PORT, the host's echo server (isolab sets it with --network bridge)",
    )?;
    let pings = arg_u64(cmdline, b"isolab.pings", 1000);
    if pings == 0 || pings > MAX_PINGS as u64 {
        return Err("isolab.pings must be 1 to 8192");
    }
    let hop = next_hop(cmdline, &nic, len, peer)?;
    let mac = nic.resolve(hop)?;
    let mut lost = 0u64;
    let mut n = 0usize;
    mark(ports::MARK_WORK_START);
    for i in 0..pings + WARMUP {
        let f = Nic::tx_frame();
        f[42..74].fill(0);
        f[42..50].copy_from_slice(&i.to_le_bytes());
        let t = rdtsc();
        nic.udp(mac, peer, OUR_PORT, port, 32)?;
        let rtt = loop {
            if let Some(u) = nic.service()? {
                if u.from == peer
                    && u.from_port == port
                    && u.to_port == OUR_PORT
                    && u.head == i.to_le_bytes()
                {
                    break Some(rdtsc().wrapping_sub(t));
                }
            }
            if rdtsc().wrapping_sub(t) > WAIT_CYCLES {
                break None;
            }
        };
        match rtt {
            Some(c) if i >= WARMUP => {
                // SAFETY: single-threaded guest; n < pings <= MAX_PINGS.
                unsafe { (*core::ptr::addr_of_mut!(RTTS))[n] = c };
                n += 1;
            }
            Some(_) => {}
            None => {
                lost += 1;
                if lost * 100 > pings.max(100) {
                    return Err("more than 1% of the UDP round trips were lost");
                }
            }
        }
    }
    mark(ports::MARK_WORK_END);
    // SAFETY: single-threaded guest; the first n entries were written.
    let rtts = unsafe { &mut (*core::ptr::addr_of_mut!(RTTS))[..n] };
    heapsort(rtts);
    let pct = |p: usize| {
        if n == 0 {
            0
        } else {
            rtts[kernels::percentile_index(n, p)]
        }
    };
    put("\"pings\":");
    put_u64(n as u64);
    put(",\"lost\":");
    put_u64(lost);
    put(",\"rtt_p50_cycles\":");
    put_u64(pct(50));
    put(",\"rtt_p99_cycles\":");
    put_u64(pct(99));
    put(",");
    counters(&nic);
    Ok(())
}

/// The peer's hop: the peer itself on our subnet, else `isolab.gw`.
fn next_hop(cmdline: &[u8], nic: &Nic, len: u8, peer: [u8; 4]) -> Result<[u8; 4], &'static str> {
    if same_subnet(peer, nic.ip, len) {
        return Ok(peer);
    }
    arg(cmdline, b"isolab.gw")
        .and_then(parse_ip)
        .map(|g| g.0)
        .ok_or("the peer is off-link: give isolab.gw=A.B.C.D")
}

/// `net-stream`: `isolab.mib` MiB from the host's server into the guest
/// over UDP (the bare guest has no TCP). Each request — the magic
/// [`kernels::STREAM_MAGIC`], a window and the first sequence number —
/// brings a window of [`kernels::STREAM_DATAGRAM`]-byte datagrams, fewer
/// than the receive buffers, so none waits for a buffer: the window is the
/// flow control TCP would give. Buffers go back without a notify, and one
/// notify per window tells the device. A window's missing datagrams are
/// counted lost after a short wait; more than 1 % is an error. Timed with
/// the TSC from the first request to the last datagram, after one
/// unmeasured window.
pub(crate) fn stream_scenario(cmdline: &[u8]) -> Result<(), &'static str> {
    let (mut nic, len) = open(cmdline)?;
    let (peer, port) = arg(cmdline, b"isolab.peer").and_then(parse_peer).ok_or(
        "no isolab.peer=IP:PORT, the host's stream server (isolab sets it with --network bridge)",
    )?;
    let mib = arg_u64(cmdline, b"isolab.mib", 64);
    if mib == 0 || mib > 4096 {
        return Err("isolab.mib must be 1 to 4096");
    }
    let hop = next_hop(cmdline, &nic, len, peer)?;
    let mac = nic.resolve(hop)?;
    let size = kernels::STREAM_DATAGRAM as u64;
    let total = (mib << 20).div_ceil(size);
    // A window smaller than the buffers: a stray frame (an IPv6
    // solicitation on the bridge, a late datagram) must not leave the
    // window's last datagram without a buffer, stalled until the next
    // ring and off by one from then on.
    let window = (QSZ - 8) as u64;
    nic.batch_rx = true;
    let (mut got, mut lost, mut bytes) = (0u64, 0u64, 0u64);
    let mut t0 = 0u64;
    let mut t1 = 0u64;
    let mut seq = 0u64;
    mark(ports::MARK_WORK_START);
    // The first window is unmeasured (ARP caches, the server's thread).
    while seq < total + window {
        let want = window.min(total + window - seq);
        let f = Nic::tx_frame();
        f[42..50].copy_from_slice(&kernels::STREAM_MAGIC);
        f[50..54].copy_from_slice(&(want as u32).to_le_bytes());
        f[54..62].copy_from_slice(&seq.to_le_bytes());
        if seq == window {
            t0 = rdtsc();
        }
        // All buffers are posted: tell the device once for the window.
        mmio_w32(nic.base + 0x50, 0);
        nic.udp(mac, peer, OUR_PORT, port, 20)?;
        let start = rdtsc();
        let mut n = 0u64;
        while n < want && rdtsc().wrapping_sub(start) < WAIT_CYCLES / 16 {
            if let Some(u) = nic.service()? {
                let s = u64::from_le_bytes(u.head);
                if u.from == peer && u.from_port == port && (seq..seq + want).contains(&s) {
                    n += 1;
                    if seq >= window {
                        bytes += size;
                    }
                }
            }
        }
        if seq >= window {
            t1 = rdtsc();
            got += n;
            lost += want - n;
            if lost * 100 > total.max(100) {
                nic.batch_rx = false;
                return Err("more than 1% of the stream's datagrams were lost");
            }
        }
        seq += want;
    }
    mark(ports::MARK_WORK_END);
    nic.batch_rx = false;
    put("\"stream_datagrams\":");
    put_u64(got);
    put(",\"stream_lost\":");
    put_u64(lost);
    put(",\"stream_bytes\":");
    put_u64(bytes);
    put(",\"stream_cycles\":");
    put_u64(t1.wrapping_sub(t0));
    put(",");
    counters(&nic);
    Ok(())
}

/// `net-echo`: serves ARP, ping and UDP echo on port 7 until a datagram
/// that starts with "stop" (which is echoed too). The monitor's timeout
/// bounds it.
pub(crate) fn echo_scenario(cmdline: &[u8]) -> Result<(), &'static str> {
    let (mut nic, _) = open(cmdline)?;
    // A gratuitous ARP: the bridge and the host learn where we are.
    let ip = nic.ip;
    nic.arp(1, [0; 6], ip)?;
    mark(ports::MARK_WORK_START);
    while !nic.stop {
        nic.service()?;
    }
    mark(ports::MARK_WORK_END);
    counters(&nic);
    Ok(())
}

/// In-place heapsort (no allocation, no recursion).
fn heapsort(v: &mut [u64]) {
    fn sift(v: &mut [u64], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child] < v[child + 1] {
                child += 1;
            }
            if v[root] >= v[child] {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    let n = v.len();
    for i in (0..n / 2).rev() {
        sift(v, i, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}
