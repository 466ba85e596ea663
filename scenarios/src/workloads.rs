//! The Linux agent's workloads beyond startup and cpu: each returns its
//! metrics; the arithmetic lives in small pure functions with unit tests.
use std::io::{Read, Write};
use std::time::Instant;

use crate::protocol::Metric;

/// Bytes per second from a byte count and a duration in ns.
pub fn bytes_per_s(bytes: u64, ns: u64) -> f64 {
    bytes as f64 / (ns.max(1) as f64 / 1e9)
}

/// Nanoseconds per operation.
pub fn ns_per_op(ns: u64, ops: u64) -> f64 {
    ns as f64 / ops.max(1) as f64
}

fn m(name: &str, unit: &str, value: f64) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        value,
    }
}

fn elapsed_ns(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

/// `syscall`: the cost of a trivial system call (getppid, not cached by
/// libc), what crossing into the kernel costs in this instance.
pub fn syscall(iterations: u64) -> Vec<Metric> {
    let t = Instant::now();
    for _ in 0..iterations {
        // SAFETY: getppid has no arguments and no side effects.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    vec![m(
        "syscall.getppid",
        "ns_per_op",
        ns_per_op(elapsed_ns(t), iterations),
    )]
}

/// `fork-exec`: create a process that execs the agent (`--version`) and
/// wait for it.
pub fn fork_exec(iterations: u64) -> Vec<Metric> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/isolab-agent".into());
    let t = Instant::now();
    let mut ok = 0;
    for _ in 0..iterations {
        if std::process::Command::new(&exe)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            ok += 1;
        }
    }
    vec![m(
        "fork_exec.latency",
        "ns_per_op",
        ns_per_op(elapsed_ns(t), ok),
    )]
}

/// The file system type that holds `path` (from mountinfo).
pub fn fs_type_of(path: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best = ("".to_owned(), "unknown".to_owned());
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(mp) = f.get(4) else { continue };
        let fstype = l
            .split(" - ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?");
        if path.starts_with(mp) && mp.len() >= best.0.len() {
            best = (mp.to_string(), fstype.to_owned());
        }
    }
    best.1
}

/// `file-io`: write, fsync and read back a file in the instance's
/// writable layer (`/tmp`: the overlay upper dir in a container).
pub fn file_io(mib: u64) -> std::io::Result<(Vec<Metric>, String)> {
    let path = "/tmp/isolab-file-io";
    let block = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    for _ in 0..mib {
        f.write_all(&block)?;
    }
    let write_ns = elapsed_ns(t);
    let t = Instant::now();
    f.sync_all()?;
    let fsync_ns = elapsed_ns(t);
    drop(f);
    let t = Instant::now();
    let mut r = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let read_ns = elapsed_ns(t);
    std::fs::remove_file(path)?;
    let bytes = mib << 20;
    Ok((
        vec![
            m("file_io.write", "bytes_per_s", bytes_per_s(bytes, write_ns)),
            m("file_io.fsync", "ns", fsync_ns as f64),
            m("file_io.read", "bytes_per_s", bytes_per_s(total, read_ns)),
        ],
        fs_type_of("/tmp"),
    ))
}

/// `disk-read`: reads a block device (or any file) end to end in 64 KiB reads,
/// as the bare guest reads its virtio disk, with the same checksum so the
/// two can be compared. Returns the metric, bytes read and the checksum.
pub fn disk_read(path: &str, limit: u64) -> std::io::Result<(Vec<Metric>, u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut sum = crate::kernels::CHECKSUM_SEED;
    let mut total = 0u64;
    let t = Instant::now();
    while total < limit {
        let want = buf.len().min((limit - total) as usize);
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        sum = crate::kernels::word_checksum(sum, &buf[..n]);
        total += n as u64;
    }
    let ns = elapsed_ns(t);
    Ok((
        vec![m("disk.read_rate", "bytes_per_s", bytes_per_s(total, ns))],
        total,
        sum,
    ))
}

/// Module parameters for `module` from a kernel command line: the words
/// `module.key=value`, as modprobe would pass them (the kernel applies
/// such words only to built-in code; a loaded module gets them from its
/// loader). Dashes and underscores in the module name are the same.
pub fn module_params(cmdline: &str, module: &str) -> String {
    let norm = |s: &str| s.replace('-', "_");
    let module = norm(module);
    cmdline
        .split_whitespace()
        .filter_map(|w| {
            let (m, kv) = w.split_once('.')?;
            (norm(m) == module && kv.contains('=')).then_some(kv)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `net-loopback`: TCP round trips (1 byte each way) and a bulk transfer
/// over loopback inside the instance.
pub fn net_loopback(round_trips: u64, bulk_mib: u64) -> std::io::Result<Vec<Metric>> {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        for _ in 0..round_trips {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        Ok(total)
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut b = [7u8; 1];
    let t = Instant::now();
    for _ in 0..round_trips {
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
    }
    let rtt_ns = elapsed_ns(t);
    let chunk = vec![1u8; 1 << 16];
    let t = Instant::now();
    for _ in 0..(bulk_mib * 16) {
        c.write_all(&chunk)?;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let received = server
        .join()
        .map_err(|_| std::io::Error::other("server thread panicked"))??;
    let bulk_ns = elapsed_ns(t);
    Ok(vec![
        m(
            "net.tcp_round_trip",
            "ns_per_op",
            ns_per_op(rtt_ns, round_trips),
        ),
        m(
            "net.tcp_throughput",
            "bytes_per_s",
            bytes_per_s(received, bulk_ns),
        ),
    ])
}

/// The host side of `net-rtt` and `net-stream`, and their loopback floor
/// inside the instance: a UDP echo server and a TCP source on one port.
/// A TCP client sends the number of MiB it wants (8 bytes, little endian;
/// at most 4096) and reads them until the server closes. A UDP datagram
/// that is a stream request (`kernels::stream_request`) gets its window of
/// datagrams instead of an echo (the bare guest's `net-stream`).
pub mod peer {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A running server; stopped (threads joined) on drop.
    pub struct Server {
        pub addr: SocketAddr,
        stop: Arc<AtomicBool>,
        tcp_fd: i32,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Server {
        /// Serves on `ip`, on a port the kernel picks free for both UDP
        /// and TCP.
        pub fn start(ip: std::net::IpAddr) -> std::io::Result<Server> {
            let mut last = None;
            for _ in 0..16 {
                let udp = UdpSocket::bind((ip, 0))?;
                let addr = udp.local_addr()?;
                match TcpListener::bind(addr) {
                    Ok(tcp) => return Ok(Server::run(udp, tcp, addr)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
        }

        fn run(udp: UdpSocket, tcp: TcpListener, addr: SocketAddr) -> Server {
            let stop = Arc::new(AtomicBool::new(false));
            let _ = udp.set_read_timeout(Some(Duration::from_millis(100)));
            let tcp_fd = tcp.as_raw_fd();
            let s1 = stop.clone();
            let echo = std::thread::spawn(move || {
                let mut b = [0u8; 2048];
                let mut d = [0x5au8; isolab_abi::kernels::STREAM_DATAGRAM];
                while !s1.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut b) else {
                        continue;
                    };
                    // A UDP stream request (the bare guest's net-stream):
                    // a window of datagrams, each with its sequence number.
                    if let Some((window, seq)) = isolab_abi::kernels::stream_request(&b[..n]) {
                        for s in seq..seq.saturating_add(window as u64) {
                            d[..8].copy_from_slice(&s.to_le_bytes());
                            let _ = udp.send_to(&d, from);
                        }
                        continue;
                    }
                    let _ = udp.send_to(&b[..n], from);
                }
            });
            let s2 = stop.clone();
            let source = std::thread::spawn(move || {
                for conn in tcp.incoming() {
                    if s2.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut c) = conn else { continue };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut n = [0u8; 8];
                    if c.read_exact(&mut n).is_err() {
                        continue;
                    }
                    let mib = u64::from_le_bytes(n).min(4096);
                    let chunk = vec![0x5au8; 1 << 16];
                    for _ in 0..mib * 16 {
                        if c.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                }
            });
            Server {
                addr,
                stop,
                tcp_fd,
                threads: vec![echo, source],
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            // SAFETY: shutdown on the listener's fd (owned by the source
            // thread until it sees the flag): wakes its accept().
            unsafe { libc::shutdown(self.tcp_fd, libc::SHUT_RDWR) };
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// The `p`th percentile (0..=100) of sorted values.
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[crate::kernels::percentile_index(sorted.len(), p as usize)]
}

/// Round trips of one 32-byte datagram to `to`; each one's time, sorted.
/// A lost datagram (no answer in a second) is an error after 1% of them.
fn udp_rtts(to: std::net::SocketAddr, pings: u64) -> std::io::Result<Vec<u64>> {
    let bind: std::net::SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = std::net::UdpSocket::bind(bind)?;
    s.connect(to)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
    let mut out = Vec::with_capacity(pings as usize);
    let mut lost = 0u64;
    let mut b = [0u8; 32];
    // Ten unmeasured: the first resolves the neighbour (ARP).
    for i in 0..pings + 10 {
        b[..8].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        s.send(&b)?;
        let mut r = [0u8; 64];
        loop {
            match s.recv(&mut r) {
                Ok(n) if n >= 8 && r[..8] == b[..8] => break,
                Ok(_) => continue, // a late answer to an earlier ping
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    lost += 1;
                    if lost * 100 > pings.max(100) {
                        return Err(std::io::Error::other(format!(
                            "{lost} datagrams to {to} got no answer"
                        )));
                    }
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if i >= 10 {
            out.push(elapsed_ns(t));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// `net-rtt`: UDP round trips to the host's echo server at `peer`, and
/// the same to an echo server on the instance's own loopback (the floor:
/// the kernel's loopback path, with no veth, bridge or device between).
pub fn net_rtt(peer: std::net::SocketAddr, pings: u64) -> std::io::Result<Vec<Metric>> {
    let host = udp_rtts(peer, pings)?;
    let lo = peer::Server::start(std::net::Ipv4Addr::LOCALHOST.into())?;
    let floor = udp_rtts(lo.addr, pings)?;
    Ok(vec![
        m("net.udp_rtt_p50", "ns", percentile(&host, 50) as f64),
        m("net.udp_rtt_p99", "ns", percentile(&host, 99) as f64),
        m(
            "net.udp_rtt_loopback_p50",
            "ns",
            percentile(&floor, 50) as f64,
        ),
    ])
}

/// Reads `mib` MiB from a stream server; returns bytes per second.
fn tcp_stream_from(peer: std::net::SocketAddr, mib: u64) -> std::io::Result<f64> {
    let mut c = std::net::TcpStream::connect_timeout(&peer, std::time::Duration::from_secs(5))?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let t = Instant::now();
    c.write_all(&mib.to_le_bytes())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if total != mib << 20 {
        return Err(std::io::Error::other(format!(
            "{peer} sent {total} bytes of {}",
            mib << 20
        )));
    }
    Ok(bytes_per_s(total, elapsed_ns(t)))
}

/// `net-stream`: `mib` MiB from the host's stream server at `peer` into
/// the instance, and the same from a server on the instance's own
/// loopback (the floor).
pub fn net_stream(peer: std::net::SocketAddr, mib: u64) -> std::io::Result<Vec<Metric>> {
    let host = tcp_stream_from(peer, mib)?;
    let lo = peer::Server::start(std::net::Ipv4Addr::LOCALHOST.into())?;
    let floor = tcp_stream_from(lo.addr, mib)?;
    Ok(vec![
        m("net.tcp_stream", "bytes_per_s", host),
        m("net.tcp_stream_loopback", "bytes_per_s", floor),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_params_come_from_the_command_line() {
        let c = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-mmio.device=4K@0xd0001000:6 virtio_blk.queue_depth=4 isolab.scenario=disk-read virtio_mmio.flag";
        assert_eq!(
            module_params(c, "virtio_mmio"),
            "device=4K@0xd0000000:5 device=4K@0xd0001000:6"
        );
        assert_eq!(module_params(c, "virtio_blk"), "queue_depth=4");
        assert_eq!(module_params(c, "ext4"), "");
    }

    #[test]
    fn rtt_and_stream_reach_a_peer_and_report_their_floor() {
        let peer = peer::Server::start(std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
        let r = net_rtt(peer.addr, 50).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|m| m.value > 0.0), "{r:?}");
        assert!(r[1].value >= r[0].value, "p99 is at least the median");
        let s = net_stream(peer.addr, 2).unwrap();
        assert!(s.iter().all(|m| m.value > 0.0), "{s:?}");
        // A UDP stream request gets its window, numbered, full size.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut req = [0u8; 20];
        req[..8].copy_from_slice(&crate::kernels::STREAM_MAGIC);
        req[8..12].copy_from_slice(&4u32.to_le_bytes());
        req[12..20].copy_from_slice(&100u64.to_le_bytes());
        udp.send_to(&req, peer.addr).unwrap();
        let mut b = [0u8; 2048];
        for want in 100u64..104 {
            let n = udp.recv(&mut b).unwrap();
            assert_eq!(n, crate::kernels::STREAM_DATAGRAM);
            assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), want);
        }
        // A server that is not there is an error, not a figure.
        drop(peer);
        assert!(tcp_stream_from("127.0.0.1:9".parse().unwrap(), 1).is_err());
    }

    #[test]
    fn percentiles_pick_from_the_sorted_values() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 51);
        assert_eq!(percentile(&v, 99), 100);
        assert_eq!(percentile(&v, 0), 1);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn disk_read_matches_the_shared_checksum() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let p = f.path().to_str().unwrap();
        let (metrics, n, sum) = disk_read(p, u64::MAX).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(
            sum,
            crate::kernels::word_checksum(crate::kernels::CHECKSUM_SEED, &data)
        );
        assert_eq!(metrics[0].name, "disk.read_rate");
        let (_, n, sum) = disk_read(p, 65536).unwrap();
        assert_eq!(n, 65536);
        assert_eq!(
            sum,
            crate::kernels::word_checksum(crate::kernels::CHECKSUM_SEED, &data[..65536])
        );
        assert!(disk_read("/nonexistent/vda", 1).is_err());
    }

    #[test]
    fn metric_arithmetic_and_units() {
        assert_eq!(bytes_per_s(1_000_000, 1_000_000_000), 1_000_000.0);
        assert_eq!(
            bytes_per_s(10, 0),
            10.0 * 1e9,
            "a zero duration counts as 1 ns, not infinity"
        );
        assert_eq!(ns_per_op(1000, 10), 100.0);
        assert_eq!(ns_per_op(1000, 0), 1000.0);
    }

    #[test]
    fn workloads_run_and_report_their_units() {
        let s = syscall(1000);
        assert_eq!(
            (s[0].name.as_str(), s[0].unit.as_str()),
            ("syscall.getppid", "ns_per_op")
        );
        assert!(s[0].value > 0.0 && s[0].value < 1e6);
        let (f, fs) = file_io(2).unwrap();
        assert_eq!(f.len(), 3);
        assert!(f[0].value > 0.0 && f[2].value > 0.0);
        assert!(!fs.is_empty());
        let n = net_loopback(50, 4).unwrap();
        assert_eq!(n[1].unit, "bytes_per_s");
        assert!(
            n[1].value > 1e6,
            "loopback moves more than 1 MB/s: {}",
            n[1].value
        );
        assert_eq!(fs_type_of("/proc/self"), "proc");
    }
}
