//! `isolab-agent`: the one static binary that runs inside every backend —
//! the container's entrypoint and the Linux microVM's `/init`.
//!
//! Usage: `isolab-agent [--scenario NAME] [--param KEY=VALUE]...`
//!
//! Scenarios: `startup` (nothing: the ready mark is the point), `idle`
//! (hold `hold_ms`), `cpu` (SHA-256 over `blocks` × 64 bytes), `memory`
//! (touch `mib` MiB, fault cost per page, hold), `syscall` (getppid ×
//! `iterations`), `fork-exec` (spawn the agent × `iterations`), `file-io`
//! (write/fsync/read `mib` MiB in /tmp, the writable layer), `net-loopback`
//! (TCP round trips and bulk transfer), `inspect` (what the instance sees)
//! and `probes` (the isolation probes).
//! It stamps `ready` first thing in `main`, runs the scenario and prints
//! one result line (see `isolab_scenarios::protocol`). Scenarios that hold
//! (`idle`, `memory`) print a `@isolab-hold` line when the workload is in
//! place, so the harness can read the instance's memory at that point.
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use isolab_scenarios::catalog::{self, name as sc};
use isolab_scenarios::protocol::{ResultLine, HOLD_LINE};
use isolab_scenarios::{kernels, workloads};

use isolab_abi::mark::monotonic_ns;

fn param(params: &BTreeMap<String, String>, key: &str, default: u64) -> u64 {
    params
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hold(ms: u64) {
    println!("{HOLD_LINE}");
    let _ = std::io::stdout().flush();
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

fn main() -> ExitCode {
    let ready = monotonic_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("isolab-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut scenario = sc::STARTUP.to_owned();
    let mut params = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--scenario" => scenario = it.next().cloned().unwrap_or_default(),
            "--param" => {
                if let Some((k, v)) = it.next().and_then(|p| p.split_once('=')) {
                    params.insert(k.to_owned(), v.to_owned());
                }
            }
            _ => {}
        }
    }
    if args.is_empty() && std::env::args().next().is_some_and(|a| a.ends_with("init")) {
        return vm_init::run(ready);
    }
    // As PID 1 of a pid namespace the kernel delivers it no signal it has
    // no handler for — SIGTERM included, so `stop` would wait out its
    // timeout and SIGKILL. The agent ends at SIGTERM, as a well-behaved
    // init ends its service.
    extern "C" fn on_term(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + libc::SIGTERM) }
    }
    // SAFETY: a handler that only calls _exit.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    let r = run_scenario(&scenario, &params, ready);
    println!("{}", r.to_line());
    if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// Runs one scenario and returns its result line.
fn run_scenario(scenario: &str, params: &BTreeMap<String, String>, ready: u64) -> ResultLine {
    let params = params.clone();
    let mut r = ResultLine::new(scenario);
    r.mark("ready", ready);
    match scenario {
        sc::STARTUP => {}
        sc::IDLE => hold(param(&params, "hold_ms", 500)),
        sc::CPU => {
            let blocks = param(&params, "blocks", kernels::CPU_CHECK_BLOCKS * 100);
            let t0 = monotonic_ns();
            let sum = kernels::cpu_work(blocks);
            let dt = monotonic_ns() - t0;
            r.metric(
                "cpu.sha256",
                "bytes_per_s",
                workloads::bytes_per_s(blocks * 64, dt),
            );
            r.data = serde_json::json!({ "checksum": format!("{sum:016x}"), "blocks": blocks });
        }
        sc::MEMORY => {
            let mib = param(&params, "mib", 64) as usize;
            let t0 = monotonic_ns();
            // A zeroed allocation this large is fresh anonymous memory
            // (calloc → mmap): no page exists until it is touched.
            let mut v: Vec<u8> = vec![0u8; mib << 20];
            // Touch one byte per page: each first touch is a page fault.
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            let dt = monotonic_ns() - t0;
            let bytes = (mib as u64) << 20;
            r.metric(
                "memory.touch_rate",
                "bytes_per_s",
                workloads::bytes_per_s(bytes, dt),
            );
            r.metric(
                "memory.fault_cost",
                "ns_per_page",
                workloads::ns_per_op(dt, bytes / 4096),
            );
            hold(param(&params, "hold_ms", 0));
            std::hint::black_box(&v);
        }
        sc::INSPECT => r.data = isolab_scenarios::inspect::inspect(),
        sc::SYSCALL => {
            r.metrics
                .extend(workloads::syscall(param(&params, "iterations", 1_000_000)))
        }
        sc::FORK_EXEC => r
            .metrics
            .extend(workloads::fork_exec(param(&params, "iterations", 50))),
        sc::FILE_IO => match workloads::file_io(param(&params, "mib", 64)) {
            Ok((metrics, fs)) => {
                r.metrics.extend(metrics);
                r.data = serde_json::json!({ "tmp_fs": fs });
            }
            Err(e) => {
                r.ok = false;
                r.error = Some(format!("file-io: {e}"));
            }
        },
        sc::NET_LOOPBACK => match workloads::net_loopback(
            param(&params, "round_trips", 2000),
            param(&params, "mib", 64),
        ) {
            Ok(metrics) => r.metrics.extend(metrics),
            Err(e) => {
                r.ok = false;
                r.error = Some(format!("net-loopback: {e}"));
            }
        },
        sc::NET_RTT | sc::NET_STREAM => {
            let peer = params
                .get("peer")
                .and_then(|p| p.parse::<std::net::SocketAddr>().ok());
            let run = |peer| match scenario {
                sc::NET_RTT => workloads::net_rtt(peer, param(&params, "pings", 1000)),
                _ => workloads::net_stream(peer, param(&params, "mib", 64)),
            };
            match peer.map(run) {
                Some(Ok(metrics)) => r.metrics.extend(metrics),
                Some(Err(e)) => {
                    r.ok = false;
                    r.error = Some(format!("{scenario}: {e}"));
                }
                None => {
                    r.ok = false;
                    r.error = Some(format!(
                        "{scenario} needs peer=IP:PORT, the host's server (isolab run --network bridge sets it)"
                    ));
                }
            }
        }
        // A Linux microVM's virtio disk, read raw (the bare guest reads
        // the same disk the same way).
        sc::DISK_READ => {
            let dev = params
                .get("device")
                .cloned()
                .unwrap_or_else(|| "/dev/vda".into());
            let limit = param(&params, "kib", u64::MAX / 1024).saturating_mul(1024);
            match workloads::disk_read(&dev, limit) {
                Ok((metrics, bytes, sum)) => {
                    r.metrics.extend(metrics);
                    r.data = serde_json::json!({
                        "device": dev,
                        "bytes": bytes,
                        "checksum": format!("{sum:016x}"),
                    });
                }
                Err(e) => {
                    r.ok = false;
                    r.error = Some(format!("disk: {dev}: {e} (attach one with --disk)"));
                }
            }
        }
        sc::PROBES => {
            let host: BTreeMap<String, String> = params
                .iter()
                .filter(|(k, _)| k.starts_with("host_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let probes = isolab_scenarios::probes::run_all(&host);
            r.data = serde_json::json!({ "probes": probes });
        }
        other => {
            r.ok = false;
            r.error = Some(match catalog::find(other) {
                Some(_) => format!("the {other} scenario runs in the bare guest only"),
                None => format!("unknown scenario {other:?}"),
            });
        }
    }
    r
}

// The lab's ports, from the crate the monitor and the bare guest use.
use isolab_abi::ports;

/// The agent as a Linux microVM's `/init` (the kernel runs it as pid 1
/// with argv[0] = "/init" and no arguments).
mod vm_init {
    use std::collections::BTreeMap;
    use std::process::ExitCode;

    use std::os::unix::fs::OpenOptionsExt;

    use super::ports::{EXIT_PORT, MARK_AGENT_READY, MARK_PORT};
    use super::sc;

    fn outb(port: u16, v: u8) {
        // SAFETY: the port range was granted with ioperm; a port write is
        // a VM exit handled by the monitor.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
        }
    }

    fn mount(src: &std::ffi::CStr, target: &std::ffi::CStr, fstype: &std::ffi::CStr) {
        let _ = std::fs::create_dir_all(target.to_str().unwrap_or("/"));
        // SAFETY: valid NUL-terminated strings; failures are ignored (a
        // missing file system only loses that view).
        unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }

    /// Loads the modules listed, in order, in /lib/modules/isolab/order,
    /// each with its `module.key=value` words from the kernel command line
    /// (how virtio_mmio learns where the monitor put its devices).
    fn load_modules(cmdline: &str) -> Vec<String> {
        let mut loaded = Vec::new();
        let order = std::fs::read_to_string("/lib/modules/isolab/order").unwrap_or_default();
        for name in order.lines().filter(|l| !l.is_empty()) {
            let path = format!("/lib/modules/isolab/{name}");
            let Ok(f) = std::fs::File::open(&path) else {
                continue;
            };
            let module = name.split('.').next().unwrap_or(name);
            let params =
                std::ffi::CString::new(isolab_scenarios::workloads::module_params(cmdline, module))
                    .unwrap_or_default();
            // SAFETY: finit_module on an open module file with a
            // NUL-terminated parameter string.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_finit_module,
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    params.as_ptr(),
                    0,
                )
            };
            if r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
                loaded.push(name.to_owned());
            }
        }
        loaded
    }

    /// Writes `line` into the Linux result page
    /// ([`super::ports::LINUX_RESULT_PAGE`]) through `/dev/mem`: the text,
    /// then the header that makes it valid.
    fn write_result_page(line: &str) -> std::io::Result<()> {
        use super::ports::{LINUX_RESULT_PAGE, RESULT_HEADER, RESULT_MAGIC, RESULT_PAGE_SIZE};
        use std::os::unix::fs::FileExt;
        let text = line.as_bytes();
        if text.len() > RESULT_PAGE_SIZE - RESULT_HEADER {
            return Err(std::io::Error::other(
                "the result line is larger than the page",
            ));
        }
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open("/dev/mem")?;
        mem.write_all_at(text, LINUX_RESULT_PAGE + RESULT_HEADER as u64)?;
        let mut header = [0u8; RESULT_HEADER];
        header[..4].copy_from_slice(&RESULT_MAGIC.to_le_bytes());
        header[4..].copy_from_slice(&(text.len() as u32).to_le_bytes());
        mem.write_all_at(&header, LINUX_RESULT_PAGE)
    }

    /// Brings `lo` up: the guest kernel, unlike a container runtime,
    /// leaves it down, and `net-loopback` needs it.
    fn loopback_up() -> std::io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: socket() with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// `isolab.ip=A.B.C.D/LEN` (and `isolab.gw=`): the address the lab
    /// leased for this VM on its bridge. Configures the first interface
    /// other than `lo` (the virtio-net device's, once its driver has
    /// probed it) with it, brings it up and adds the default route, as a
    /// kernel's `ip=` would. Returns the interface's name.
    fn network_up(params: &BTreeMap<String, String>) -> Option<Result<String, String>> {
        let spec = params.get("ip")?;
        Some(configure_interface(
            spec,
            params.get("gw").map(String::as_str),
        ))
    }

    fn configure_interface(spec: &str, gw: Option<&str>) -> Result<String, String> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let (ip, len) = spec.split_once('/').map_or((spec, "24"), |(a, l)| (a, l));
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| format!("bad isolab.ip {spec:?}"))?;
        let len: u32 = len
            .parse()
            .ok()
            .filter(|l| (1..=32).contains(l))
            .ok_or_else(|| format!("bad prefix length in isolab.ip {spec:?}"))?;
        let gw: Option<std::net::Ipv4Addr> = match gw {
            Some(g) => Some(g.parse().map_err(|_| format!("bad isolab.gw {g:?}"))?),
            None => None,
        };
        // The device's interface appears when its driver has probed it.
        let mut name = None;
        for _ in 0..300 {
            name = std::fs::read_dir("/sys/class/net").ok().and_then(|d| {
                let mut names: Vec<String> = d
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n != "lo")
                    .collect();
                names.sort();
                names.into_iter().next()
            });
            if name.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let name = name
            .ok_or("no network interface appeared (is virtio_net in the kernel or its modules?)")?;
        // SAFETY: socket() with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh socket we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let sin = |a: std::net::Ipv4Addr| {
            // SAFETY: sockaddr_in is plain old data; zeroed is valid.
            let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_addr.s_addr = u32::from(a).to_be();
            // SAFETY: sockaddr_in fits in sockaddr (both 16 bytes).
            unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(s) }
        };
        let ioctl = |req: libc::c_ulong, what: &str, ifr: &mut libc::ifreq| {
            // SAFETY: the interface ioctls read (or fill) a valid ifreq.
            if unsafe { libc::ioctl(sock.as_raw_fd(), req as _, ifr as *mut libc::ifreq) } < 0 {
                return Err(format!(
                    "{what} on {name}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        };
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_addr = sin(ip);
        ioctl(libc::SIOCSIFADDR as _, "setting the address", &mut ifr)?;
        let mask = std::net::Ipv4Addr::from(u32::MAX << (32 - len));
        ifr.ifr_ifru.ifru_netmask = sin(mask);
        ioctl(libc::SIOCSIFNETMASK as _, "setting the netmask", &mut ifr)?;
        ioctl(libc::SIOCGIFFLAGS as _, "reading the flags", &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        ioctl(libc::SIOCSIFFLAGS as _, "bringing it up", &mut ifr)?;
        if let Some(gw) = gw {
            // SAFETY: rtentry is plain old data; zeroed is a valid value.
            let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
            rt.rt_dst = sin(std::net::Ipv4Addr::UNSPECIFIED);
            rt.rt_genmask = sin(std::net::Ipv4Addr::UNSPECIFIED);
            rt.rt_gateway = sin(gw);
            rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
            // SAFETY: SIOCADDRT reads a valid rtentry.
            if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, &rt) } < 0 {
                return Err(format!(
                    "adding the default route via {gw}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        Ok(name)
    }

    /// What to start from the image, written by the lab into the
    /// initramfs: the image's entrypoint and command, environment,
    /// working directory and user, resolved on the host.
    #[derive(serde::Deserialize)]
    struct ExecSpec {
        argv: Vec<String>,
        env: Vec<String>,
        cwd: String,
        uid: u32,
        gid: u32,
    }

    fn mount_with(
        src: &str,
        target: &str,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> std::io::Result<()> {
        let _ = std::fs::create_dir_all(target);
        let c = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
        let (src, target, fstype, data) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs the image on the disk as a container runtime would, but in a
    /// VM (Kata's and firecracker-containerd's way): the image's ext4 at
    /// /dev/vda, read-only, under a tmpfs upper dir (overlayfs), a fresh
    /// /proc, /sys and /dev, then its program chrooted there as its user.
    /// The program's output goes to the console; its exit code into the
    /// result.
    fn exec_image(bytes: &[u8]) -> super::ResultLine {
        let mut r = super::ResultLine::new("exec");
        let fail = |mut r: super::ResultLine, what: String| {
            r.ok = false;
            r.error = Some(what);
            r
        };
        let spec: ExecSpec = match serde_json::from_slice(bytes) {
            Ok(s) => s,
            Err(e) => return fail(r, format!("exec.json: {e}")),
        };
        let steps = [
            ("/dev/vda", "/image", "ext4", libc::MS_RDONLY, ""),
            ("tmpfs", "/rw", "tmpfs", 0, "mode=0755"),
        ];
        for (src, target, fstype, flags, data) in steps {
            if let Err(e) = mount_with(src, target, fstype, flags, data) {
                return fail(r, format!("mounting {src} at {target} ({fstype}): {e}"));
            }
        }
        for d in ["/rw/upper", "/rw/work", "/newroot"] {
            let _ = std::fs::create_dir_all(d);
        }
        if let Err(e) = mount_with(
            "overlay",
            "/newroot",
            "overlay",
            0,
            "lowerdir=/image,upperdir=/rw/upper,workdir=/rw/work",
        ) {
            return fail(r, format!("the overlay over the image: {e}"));
        }
        for (src, target, fstype) in [
            ("proc", "/newroot/proc", "proc"),
            ("sysfs", "/newroot/sys", "sysfs"),
            ("devtmpfs", "/newroot/dev", "devtmpfs"),
        ] {
            if let Err(e) = mount_with(src, target, fstype, 0, "") {
                return fail(r, format!("mounting {target}: {e}"));
            }
        }
        let Some(program) = spec.argv.first().cloned() else {
            return fail(r, "the image has no entrypoint or command: give one".into());
        };
        let cwd = std::ffi::CString::new(spec.cwd.clone()).unwrap_or_default();
        let (uid, gid) = (spec.uid, spec.gid);
        let mut cmd = std::process::Command::new(&program);
        cmd.args(&spec.argv[1..]).env_clear();
        for e in &spec.env {
            if let Some((k, v)) = e.split_once('=') {
                cmd.env(k, v);
            }
        }
        // SAFETY: runs in the forked child before exec; system calls only.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                let last = || Err(std::io::Error::last_os_error());
                if libc::chroot(c"/newroot".as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return last();
                }
                if libc::chdir(cwd.as_ptr()) != 0 {
                    return last();
                }
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return last();
                }
                Ok(())
            });
        }
        match cmd.status() {
            Ok(st) => {
                let code = st.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
                });
                r.data = serde_json::json!({ "exit_code": code, "program": program });
                r
            }
            Err(e) => fail(r, format!("starting {program} in the image: {e}")),
        }
    }

    pub fn run(ready: u64) -> ExitCode {
        // SAFETY: ioperm for our three lab ports, as root in the guest.
        let ports = unsafe { libc::ioperm(u64::from(MARK_PORT), 3, 1) } == 0;
        if ports {
            outb(MARK_PORT, MARK_AGENT_READY);
        }
        mount(c"proc", c"/proc", c"proc");
        mount(c"sysfs", c"/sys", c"sysfs");
        mount(c"devtmpfs", c"/dev", c"devtmpfs");
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let modules = load_modules(&cmdline);
        let mut scenario = sc::STARTUP.to_owned();
        let mut params = BTreeMap::new();
        for w in cmdline.split_whitespace() {
            if let Some((k, v)) = w.strip_prefix("isolab.").and_then(|kv| kv.split_once('=')) {
                if k == "scenario" {
                    scenario = v.to_owned();
                } else {
                    params.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        let exec_spec = std::fs::read("/isolab/exec.json").ok();
        if scenario == sc::DISK_READ || exec_spec.is_some() {
            // The disk's node appears when the driver has probed the
            // device, which devtmpfs does in the background: give it a
            // moment rather than fail on a race. (Only here: in a
            // container the bind mount is there before the agent starts.)
            let dev = params.get("device").map_or("/dev/vda", String::as_str);
            for _ in 0..200 {
                if std::path::Path::new(dev).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let lo = loopback_up();
        let net = network_up(&params);
        let mut r = match &exec_spec {
            Some(bytes) => exec_image(bytes),
            None => super::run_scenario(&scenario, &params, ready),
        };
        if let (Err(e), false) = (&lo, r.ok) {
            r.error = Some(format!(
                "{} (bringing up lo failed: {e})",
                r.error.as_deref().unwrap_or("")
            ));
        }
        if let Some(Err(e)) = &net {
            r.ok = false;
            r.error = Some(format!(
                "{} (configuring the network: {e})",
                r.error.as_deref().unwrap_or("")
            ));
        }
        let data = match std::mem::take(&mut r.data) {
            serde_json::Value::Null => Some(serde_json::Map::new()),
            serde_json::Value::Object(m) => Some(m),
            other => {
                r.data = other;
                None
            }
        };
        if let Some(mut m) = data {
            m.insert("modules_loaded".into(), serde_json::json!(modules));
            if let Some(Ok(name)) = &net {
                m.insert("net_interface".into(), serde_json::json!(name));
            }
            r.data = serde_json::Value::Object(m);
        }
        let line = r.to_line();
        // The line goes to the result page the monitor reads once the VM
        // has stopped; the console gets it only for someone watching
        // (`isolab.console=1`) or when the page cannot be written. A line
        // on the console can also be cut short: the reboot below does not
        // wait for the UART to drain.
        // A monitor that cannot read guest memory (QEMU under software
        // emulation) names a serial port of its own for the line, where
        // no kernel message can cut into it.
        if let Some(tty) = params
            .get("result_tty")
            .filter(|t| t.starts_with("/dev/ttyS"))
        {
            let sent = std::fs::OpenOptions::new()
                .write(true)
                .open(tty)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())?;
                    // Wait until the UART has sent it all: the exit below
                    // ends the VM at once.
                    // SAFETY: tcdrain on the fd this File owns.
                    if unsafe { libc::tcdrain(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            if let Err(e) = sent {
                println!("{line}");
                eprintln!("isolab-agent: writing the result to {tty}: {e}");
            }
            if ports {
                outb(EXIT_PORT, if r.ok { 0 } else { 2 });
            }
        }
        let paged = write_result_page(&line).is_ok();
        if !paged || params.get("console").is_some_and(|v| v == "1") {
            println!("{line}");
        }
        if ports {
            outb(EXIT_PORT, if r.ok { 0 } else { 2 });
        }
        // SAFETY: sync then restart; with reboot=k the kernel pulses the
        // i8042 reset line and the monitor ends the VM.
        unsafe {
            libc::sync();
            libc::reboot(libc::LINUX_REBOOT_CMD_RESTART);
        }
        ExitCode::SUCCESS
    }
}
