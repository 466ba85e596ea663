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
