//! The probes, section by section: each asks its questions from inside
//! and pushes one answer per probe.
use std::ffi::CString;
use std::fs;

use super::kit::*;

/// Probes: the instance's processes and its pid 1.
pub(super) fn processes(_f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Processes.
    let pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let me = std::process::id();
    out.push(p(
        "own_pid_1",
        me,
        if me == 1 { Isolated } else { Exposed },
        "in its own pid namespace the workload is pid 1",
    ));
    out.push(p(
        "host_processes_visible",
        pids.len(),
        if pids.len() <= 4 { Isolated } else { Exposed },
        "processes visible in /proc: a shared pid namespace shows the host's",
    ));
    let init = fs::read("/proc/1/cmdline")
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split('\0')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    out.push(p(
        "pid_1_is_ours",
        &init,
        if init.contains("isolab-agent") || me == 1 {
            Isolated
        } else {
            Exposed
        },
        "pid 1 is the instance's own init, not the host's (ptrace of the host's init impossible)",
    ));
}

/// Probes: its hostname, kernel and boot id.
pub(super) fn identity(f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Identity.
    let hostname = read("/proc/sys/kernel/hostname").unwrap_or_default();
    out.push(match f.h("host_hostname") {
        Some(hh) => p(
            "hostname",
            &hostname,
            if hh != hostname { Isolated } else { Exposed },
            "the UTS namespace gives the instance its own host name",
        ),
        None => p(
            "hostname",
            &hostname,
            NotApplicable,
            "host name not given by the harness",
        ),
    });
    let (kernel, boot_id) = kernel_identity();
    let shared_kernel = f.shared_kernel;
    out.push(match f.h("host_boot_id") {
        Some(_) => p(
            "kernel_shared",
            match &boot_id {
                Some(b) => format!("{kernel} boot_id {}", b.get(..8).unwrap_or("")),
                None => format!("{kernel} (no boot id)"),
            },
            if shared_kernel { Exposed } else { Isolated },
            "same boot id (or, without one, the same release) as the host: the instance runs on the host's kernel",
        ),
        None => p(
            "kernel_shared",
            &kernel,
            NotApplicable,
            "host boot id not given",
        ),
    });
    out.push(match f.h("host_kernel") {
        Some(hk) => p(
            "kernel_version",
            &kernel,
            if hk == kernel && shared_kernel {
                Exposed
            } else {
                Isolated
            },
            "the kernel version a container reports is the host's",
        ),
        None => p(
            "kernel_version",
            &kernel,
            NotApplicable,
            "host kernel not given",
        ),
    });
}

/// Probes: its mounts and network.
pub(super) fn mounts_and_network(f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Mounts and network.
    let mounts: Vec<String> = read("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect();
    let foreign: Vec<&String> = mounts
        .iter()
        .filter(|m| {
            !(m.as_str() == "/"
                || m.starts_with("/proc")
                || m.starts_with("/dev")
                || m.starts_with("/sys")
                || m.starts_with("/run"))
        })
        .collect();
    out.push(p(
        "host_mounts_visible",
        foreign.len(),
        if foreign.is_empty() {
            Isolated
        } else {
            Exposed
        },
        "no host mount point leaks into the instance's mount table",
    ));
    let ifs: Vec<String> = read("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_owned()))
        .collect();
    // With the host's network namespace known: the instance shares it
    // (`--network host`) or has its own (loopback, and on a bridge its own
    // veth end). In another kernel the same number means nothing; the
    // own-kernel judgement below turns that case to isolated.
    let (verdict, reason) = match f.h("host_netns") {
        Some(host) => (
            if super::netns_id().as_deref() == Some(host.as_str()) {
                Exposed
            } else {
                Isolated
            },
            "the instance has a network namespace of its own: none of the host's interfaces, addresses or ports",
        ),
        None => (
            if ifs.iter().all(|i| i == "lo") {
                Isolated
            } else {
                Exposed
            },
            "a new network namespace has only loopback",
        ),
    };
    out.push(p("network_interfaces", ifs.join(","), verdict, reason));
    // A service the harness listens with on the host's 127.0.0.1.
    out.push(match f.h("host_lo_port").and_then(|v| v.parse::<u16>().ok()) {
        Some(port) => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let reached =
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300))
                    .is_ok();
            p(
                "host_loopback_service",
                if reached { "reached" } else { "unreachable" },
                if reached { Exposed } else { Isolated },
                "a service bound to the host's 127.0.0.1 (often unauthenticated: a database, a metrics port, a daemon's API) is out of reach",
            )
        }
        None => p(
            "host_loopback_service",
            "not tested",
            NotApplicable,
            "the harness gave no host port to try",
        ),
    });
    // Raw frames: with CAP_NET_RAW (kept by default, as Docker keeps it)
    // an AF_PACKET socket reads and forges frames on the instance's link.
    // SAFETY: socket() with constant arguments; the fd is closed at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if fd >= 0 {
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd) };
    }
    let links: Vec<&String> = ifs.iter().filter(|i| *i != "lo").collect();
    out.push(p(
        "raw_frames_on_link",
        match (fd >= 0, links.is_empty()) {
            (true, true) => "packet socket opens; only loopback".to_owned(),
            (true, false) => format!("packet socket opens on {}", links.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")),
            (false, _) => format!("refused ({})", errname(errno)),
        },
        if fd >= 0 && !links.is_empty() {
            Exposed
        } else {
            Isolated
        },
        "no raw frames on a shared link: with them an instance sniffs its link and forges ARP to take a neighbour's address on the bridge (drop CAP_NET_RAW to close it)",
    ));
}

/// Probes: host totals that leak: memory, CPUs, uptime.
pub(super) fn host_totals(f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Host totals that leak.
    let mem = meminfo_total_kib().unwrap_or(0);
    out.push(
        match f.h("host_mem_kib").and_then(|v| v.parse::<u64>().ok()) {
            Some(hm) => p(
                "meminfo_total",
                format!("{mem} kB"),
                if mem.abs_diff(hm) < hm / 50 {
                    Exposed
                } else {
                    Isolated
                },
                "/proc/meminfo shows the host's total memory, not the instance's limit",
            ),
            None => p("meminfo_total", mem, NotApplicable, "host memory not given"),
        },
    );
    let cpus = cpu_count();
    out.push(
        match f.h("host_cpus").and_then(|v| v.parse::<usize>().ok()) {
            Some(hc) => p(
                "cpu_count",
                cpus,
                if cpus == hc && f.shared_kernel {
                    Exposed
                } else {
                    Isolated
                },
                "/proc/cpuinfo lists the host's CPUs whatever the CPU quota",
            ),
            None => p("cpu_count", cpus, NotApplicable, "host CPU count not given"),
        },
    );
    let up: f64 = read("/proc/uptime")
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    out.push(
        match f.h("host_uptime").and_then(|v| v.parse::<f64>().ok()) {
            Some(hu) => p(
                "host_uptime",
                format!("{up:.0} s"),
                if (up - hu).abs() < 30.0 {
                    Exposed
                } else {
                    Isolated
                },
                "uptime reveals when the host booted (a time namespace could hide it)",
            ),
            None => p("host_uptime", up, NotApplicable, "host uptime not given"),
        },
    );
}

/// Probes: kernel information in /proc.
pub(super) fn kernel_info(_f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Kernel information in /proc.
    let kcore = fs::metadata("/proc/kcore").map(|m| m.len()).ok();
    out.push(match kcore {
        Some(0) | None => p(
            "proc_kcore",
            "masked",
            Isolated,
            "/proc/kcore (host physical memory image) is masked",
        ),
        Some(n) => p("proc_kcore", n, Exposed, "/proc/kcore is visible"),
    });
    let kallsyms = read("/proc/kallsyms")
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let addr_nonzero = kallsyms
        .split_whitespace()
        .next()
        .is_some_and(|a| a.chars().any(|c| c != '0'));
    out.push(p(
        "kallsyms_addresses",
        if addr_nonzero {
            "real addresses"
        } else {
            "zeroed"
        },
        if addr_nonzero { Exposed } else { Isolated },
        "kernel symbol addresses would defeat KASLR",
    ));
    let keys = read("/proc/keys").unwrap_or_default();
    out.push(p(
        "proc_keys",
        keys.lines().count(),
        if keys.is_empty() { Isolated } else { Exposed },
        "/proc/keys (the shared kernel keyring) is masked",
    ));
    let dmesg = {
        let mut buf = [0u8; 64];
        // SAFETY: SYSLOG_ACTION_READ_ALL into a local buffer.
        let r = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), buf.len() as i32) };
        if r < 0 {
            errno()
        } else {
            0
        }
    };
    out.push(p(
        "dmesg",
        errname(dmesg),
        refused(dmesg),
        "the host's kernel log (syslog) is refused",
    ));
}

/// Probes: capabilities, and what privileged calls actually do.
pub(super) fn capabilities(_f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Capabilities and what actually happens.
    let status = read("/proc/self/status").unwrap_or_default();
    let capeff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let caps = u64::from_str_radix(&capeff, 16).unwrap_or(0);
    out.push(p(
        "cap_sys_admin",
        format!("CapEff {capeff}"),
        if caps & (1 << 21) == 0 {
            Isolated
        } else {
            Exposed
        },
        "CAP_SYS_ADMIN (mount, namespaces, much of the kernel) is not held",
    ));
    let mount_e = in_child(|| {
        // SAFETY: a mount attempt on the instance's own /tmp; undone at once
        // if it succeeds (and only inside the instance's mount namespace).
        unsafe {
            if libc::mount(
                c"isolab".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            ) == 0
            {
                libc::umount2(c"/tmp".as_ptr(), libc::MNT_DETACH);
                0
            } else {
                errno()
            }
        }
    })
    .unwrap_or(-1);
    out.push(p(
        "mount",
        errname(mount_e),
        refused(mount_e),
        "mounting file systems is refused",
    ));
    // SAFETY: init_module with a NULL image fails after the permission check.
    let e = unsafe {
        if libc::syscall(libc::SYS_init_module, 0usize, 0usize, c"".as_ptr()) < 0 {
            errno()
        } else {
            0
        }
    };
    out.push(p(
        "init_module",
        errname(e),
        refused(e),
        "loading a kernel module (code into the shared kernel) is refused",
    ));
    let e = in_child(unsafe_unshare).unwrap_or(-1);
    out.push(p(
        "unshare",
        errname(e),
        refused(e),
        "making new namespaces is refused",
    ));
    let e = in_child(|| {
        let f = match fs::File::open("/proc/self/ns/uts") {
            Ok(f) => f,
            Err(e) => return e.raw_os_error().unwrap_or(1),
        };
        // SAFETY: setns into our own UTS namespace: a no-op if allowed.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWUTS) };
        if r < 0 {
            errno()
        } else {
            0
        }
    })
    .unwrap_or(-1);
    out.push(p(
        "setns",
        errname(e),
        refused(e),
        "joining namespaces is refused",
    ));
}

/// Probes: device nodes for the host's disk.
pub(super) fn device_nodes(f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // The host's root file system device (passed by the harness), else sda.
    let (major, minor) = f
        .h("host_root_dev")
        .and_then(|d| {
            let (a, b) = d.split_once(':')?;
            Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
        })
        .unwrap_or((8, 0));
    let e = in_child(|| {
        let path = c"/tmp/.isolab-probe-blk";
        // SAFETY: a node for the host's root disk in the instance's /tmp;
        // opened read-only and removed at once, nothing is read.
        unsafe {
            if libc::mknod(
                path.as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(major, minor),
            ) != 0
            {
                return errno();
            }
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            let e = if fd < 0 { errno() } else { 0 };
            if fd >= 0 {
                libc::close(fd);
            }
            libc::unlink(path.as_ptr());
            e
        }
    })
    .unwrap_or(-1);
    out.push(p(
        "mknod_block_device",
        format!(
            "{major}:{minor} {}",
            if e == 0 { "opened".into() } else { errname(e) }
        ),
        if e == 0 { Exposed } else { Isolated },
        "creating and opening a node for the host's root disk must fail",
    ));
    let e = in_child(|| {
        let bad = libc::timespec {
            tv_sec: 0,
            tv_nsec: -1,
        };
        // SAFETY: an invalid time: EINVAL after the permission check, so
        // the clock is never changed. The raw system call: glibc's wrapper
        // rejects the value itself before asking the kernel.
        unsafe {
            if libc::syscall(
                libc::SYS_clock_settime,
                libc::CLOCK_REALTIME,
                &bad as *const libc::timespec,
            ) < 0
            {
                errno()
            } else {
                0
            }
        }
    })
    .unwrap_or(-1);
    // EINVAL means the call reached the kernel, whose time code checks
    // the value *before* the capability (do_sys_settimeofday64): it says
    // nothing about permission. CAP_SYS_TIME, which that check asks for,
    // does. A seccomp refusal (EPERM) comes before either.
    let cap_sys_time = f
        .status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|c| c & (1 << 25) != 0); // CAP_SYS_TIME
    out.push(match e {
        libc::EINVAL if cap_sys_time => p(
            "clock_settime",
            "reaches the kernel; CAP_SYS_TIME held",
            Exposed,
            "setting the host's clock is refused",
        ),
        libc::EINVAL => p(
            "clock_settime",
            "reaches the kernel; no CAP_SYS_TIME",
            Isolated,
            "setting the host's clock is refused (the kernel would ask for CAP_SYS_TIME, which is not held)",
        ),
        _ => p(
            "clock_settime",
            errname(e),
            refused(e),
            "setting the host's clock is refused",
        ),
    });
}

/// Probes: kernel features that cross the boundary.
pub(super) fn kernel_surface(_f: &Facts, out: &mut Vec<Probe>) {
    let e = in_child(|| {
        // SAFETY: a key in this (child) process's own keyring; it dies
        // with the child.
        unsafe {
            let r = libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                c"isolab-probe".as_ptr(),
                c"x".as_ptr(),
                1usize,
                -2i64,
            );
            if r < 0 {
                errno()
            } else {
                0
            }
        }
    })
    .unwrap_or(-1);
    out.push(p(
        "add_key",
        errname(e),
        refused(e),
        "the kernel keyring is not namespaced: add_key is refused",
    ));
    let e = in_child(|| {
        // SAFETY: a software counter on ourselves, closed at once.
        unsafe {
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
            attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
            let fd = libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0);
            if fd < 0 {
                errno()
            } else {
                libc::close(fd as i32);
                0
            }
        }
    })
    .unwrap_or(-1);
    out.push(p(
        "perf_event_open",
        errname(e),
        refused(e),
        "performance counters observe the host and are refused",
    ));
    for (name, nr, why) in [
        (
            "userfaultfd",
            libc::SYS_userfaultfd,
            "userfaultfd, a tool for winning kernel races, is refused",
        ),
        (
            "io_uring_setup",
            libc::SYS_io_uring_setup,
            "io_uring, a large attack surface, is refused",
        ),
        (
            "bpf",
            libc::SYS_bpf,
            "loading BPF programs into the shared kernel is refused",
        ),
    ] {
        let e = in_child(|| {
            // SAFETY: invalid arguments (all ones): fails after the check;
            // a returned fd is closed.
            unsafe {
                let r = libc::syscall(nr, u64::MAX, 0usize, 0usize);
                if r < 0 {
                    errno()
                } else {
                    libc::close(r as i32);
                    0
                }
            }
        })
        .unwrap_or(-1);
        out.push(p(
            name,
            if e == libc::EINVAL || e == libc::EFAULT {
                "would be allowed".into()
            } else {
                errname(e)
            },
            refused(e),
            why,
        ));
    }
}

/// Probes: host-wide kernel knobs, without writing them.
pub(super) fn kernel_knobs(_f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Host-wide kernel knobs, without writing them.
    for (name, path, why) in [
        (
            "core_pattern_writable",
            "/proc/sys/kernel/core_pattern",
            "core_pattern runs a program on the host at every crash",
        ),
        (
            "binfmt_misc_writable",
            "/proc/sys/fs/binfmt_misc/register",
            "binfmt_misc registers host-wide interpreters",
        ),
        (
            "sysrq_trigger_writable",
            "/proc/sysrq-trigger",
            "sysrq-trigger can reboot the host",
        ),
    ] {
        let c = CString::new(path).unwrap_or_default();
        // SAFETY: access(2) only checks.
        let w = unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
        let ro = fs::OpenOptions::new().write(true).open(path).is_err();
        out.push(p(
            name,
            if w && !ro { "writable" } else { "not writable" },
            if w && !ro { Exposed } else { Isolated },
            why,
        ));
    }
    let release_agents: Vec<String> = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("release_agent"))
        .filter(|p| fs::OpenOptions::new().write(true).open(p).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    out.push(p(
        "release_agent_writable",
        release_agents.len(),
        if release_agents.is_empty() {
            Isolated
        } else {
            Exposed
        },
        "a writable cgroup v1 release_agent is the classic container escape",
    ));
}

/// Probes: devices present in /dev.
pub(super) fn devices(_f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Devices.
    let devs: Vec<&str> = [
        "/dev/kvm",
        "/dev/mem",
        "/dev/kmem",
        "/dev/sda",
        "/dev/vda",
        "/dev/nvme0n1",
        "/dev/port",
    ]
    .into_iter()
    .filter(|d| fs::metadata(d).is_ok())
    .collect();
    out.push(p(
        "host_devices",
        if devs.is_empty() {
            "none".into()
        } else {
            devs.join(",")
        },
        if devs.is_empty() { Isolated } else { Exposed },
        "no host device (disk, /dev/mem, /dev/kvm) is present in /dev",
    ));
}

/// Probes: shared hardware.
pub(super) fn shared_hardware(_f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Shared hardware.
    let vulns: Vec<String> = fs::read_dir("/sys/devices/system/cpu/vulnerabilities")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = fs::read_to_string(e.path()).ok()?;
            (!v.starts_with("Not affected")).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    out.push(p(
        "cpu_vulnerabilities",
        if vulns.is_empty() {
            "none reported".into()
        } else {
            vulns.join(",")
        },
        if vulns.is_empty() {
            NotApplicable
        } else {
            Exposed
        },
        "the CPU is shared in both worlds: side channels cross containers and VMs alike",
    ));
}

/// Probes: seccomp and the whole system-call surface.
pub(super) fn surface(f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // Seccomp and the whole surface.
    let seccomp = f
        .status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    out.push(p(
        "seccomp_filter",
        format!("mode {seccomp}"),
        if seccomp == "2" { Isolated } else { Exposed },
        "a seccomp filter narrows the system calls that reach the kernel",
    ));
    match reachable_syscalls() {
        Some((n, tried)) => out.push(p(
            "reachable_syscalls",
            format!("{n}/{tried}"),
            if f.shared_kernel { Exposed } else { Isolated },
            "system calls that pass their permission check reach the host kernel only when it is shared",
        )),
        None => out.push(p("reachable_syscalls", "could not count", NotApplicable, "the counting child crashed")),
    }
}

/// Probes: what reaches the instance through the terminal and inherited
/// descriptors.
pub(super) fn terminal_and_descriptors(_f: &Facts, out: &mut Vec<Probe>) {
    use Verdict::*;
    // TIOCSTI pushes a byte into a terminal's input, as if typed: through
    // the user's terminal it becomes a command the user's shell runs after
    // the instance ends. Tried on fds 0-2 and /dev/tty with a NUL byte.
    let mut tried = Vec::new();
    let mut injected = None;
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty");
    let mut fds: Vec<(String, i32)> = (0..3).map(|fd| (format!("fd {fd}"), fd)).collect();
    if let Ok(t) = &tty {
        use std::os::fd::AsRawFd;
        fds.push(("/dev/tty".into(), t.as_raw_fd()));
    }
    for (name, fd) in &fds {
        let byte = 0u8;
        // SAFETY: TIOCSTI reads one byte from a valid pointer.
        let r = unsafe { libc::ioctl(*fd, libc::TIOCSTI, &byte as *const u8) };
        if r == 0 {
            injected = Some(name.clone());
            break;
        }
        tried.push(format!("{name}: {}", errname(errno())));
    }
    out.push(match injected {
        Some(name) => p(
            "terminal_injection",
            format!("TIOCSTI worked on {name}"),
            Exposed,
            "the instance can type into a terminal it shares with the user",
        ),
        None => p(
            "terminal_injection",
            tried.join(", "),
            Isolated,
            "the instance has no terminal of the user's to type into (own session, pipes)",
        ),
    });
    // Descriptors beyond 0-2 that the instance did not open itself.
    let inherited: Vec<String> = fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            let t = target.to_string_lossy().into_owned();
            // The directory being listed is our own descriptor.
            (fd > 2 && !t.starts_with("/proc/") && !t.contains("/fd"))
                .then_some(format!("{fd} {t}"))
        })
        .collect();
    out.push(p(
        "inherited_fds",
        if inherited.is_empty() {
            "none".into()
        } else {
            inherited.join(", ")
        },
        if inherited.is_empty() {
            Isolated
        } else {
            Exposed
        },
        "no descriptor of the host's (a directory, a file, a socket) is open in the instance",
    ));
    // Setuid files: with no_new_privs, exec of a setuid or file-capability
    // binary grants nothing, so one planted in the image or the writable
    // layer cannot raise the workload's privileges.
    let nnp = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("NoNewPrivs:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    out.push(p(
        "setuid_escalation",
        format!("NoNewPrivs {nnp}"),
        if nnp == "1" { Isolated } else { Exposed },
        "setuid and file-capability binaries grant nothing at exec (no_new_privs)",
    ));
    // What the standard streams are: pipes or the instance's own pty, not
    // host files the instance could reopen through /proc/1/fd.
    let kinds: Vec<String> = (0..3)
        .map(|fd| {
            fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "closed".into())
        })
        .collect();
    let host_file = kinds
        .iter()
        .any(|k| k.starts_with('/') && !k.starts_with("/dev/null") && !k.starts_with("/dev/pts/"));
    out.push(p(
        "stdio_kind",
        kinds.join(", "),
        if host_file { Exposed } else { Isolated },
        "standard streams are pipes, /dev/null or the instance's pty: no host file to reopen and rewrite",
    ));
}
