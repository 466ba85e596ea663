//! Isolation probes: questions the agent asks from inside an instance.
//!
//! Each probe returns a value, a verdict (isolated / exposed / n/a) and a
//! one-line reason the book uses. Facts about the host that an instance
//! cannot see (its hostname, kernel, boot id, memory, CPUs, uptime) are
//! passed in as parameters by the harness (`host_*`), so the comparison is
//! made inside.
//!
//! No probe harms the host: anything that could change state is asked in
//! a way that fails after the permission check (an invalid argument), or
//! is done only inside the instance's own namespaces and undone at once,
//! or is reported as "would be allowed" without doing it.
use std::collections::BTreeMap;
use std::fs;

use serde::{Deserialize, Serialize};

/// A probe's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Isolated,
    Exposed,
    NotApplicable,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub value: String,
    pub verdict: Verdict,
    pub reason: String,
}

fn p(name: &str, value: impl ToString, verdict: Verdict, reason: &str) -> Probe {
    Probe {
        name: name.into(),
        value: value.to_string(),
        verdict,
        reason: reason.into(),
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errname(e: i32) -> String {
    match e {
        0 => "allowed".into(),
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EBADF => "EBADF".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EROFS => "EROFS".into(),
        other => format!("errno {other}"),
    }
}

/// A refused call (EPERM/EACCES/ENOSYS) is isolated; anything else means
/// the permission check passed.
fn refused(e: i32) -> Verdict {
    if matches!(e, libc::EPERM | libc::EACCES | libc::ENOSYS) {
        Verdict::Isolated
    } else {
        Verdict::Exposed
    }
}

/// Runs `f` in a forked child (so nothing it does stays in this process)
/// and returns what it exits with (an errno or 0), or `None` on a crash.
fn in_child(f: impl FnOnce() -> i32) -> Option<i32> {
    // SAFETY: the agent is single-threaded here; the child makes system
    // calls only and _exits.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::alarm(5);
            let code = f();
            libc::_exit(code & 0xff);
        }
        if pid < 0 {
            return None;
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        libc::WIFEXITED(st).then(|| libc::WEXITSTATUS(st))
    }
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn meminfo_total_kib() -> Option<u64> {
    read("/proc/meminfo")?
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cpu_count() -> usize {
    read("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
}

/// Number the probes check against `MAX_SYSCALL` (inclusive).
pub const MAX_SYSCALL: i64 = 462;

/// System calls that must not be called even with junk arguments: they end,
/// block, or replace the calling process.
const NEVER_CALL: &[i64] = &[
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    libc::SYS_pause,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_rt_sigsuspend,
    libc::SYS_sync,
    libc::SYS_vhangup,
    // uretprobe (Linux 6.11) and uprobe (6.16): called from anywhere but
    // their trampolines they kill the caller with SIGILL.
    335,
    336,
];

/// Counts system calls whose permission check passes: each number is
/// called once with every argument set to all ones (invalid pointers,
/// fds, flags), in a child; a refusal (EPERM from seccomp or a missing
/// capability, ENOSYS) counts as unreachable.
pub fn reachable_syscalls() -> Option<(u32, u32)> {
    let (r, w) = {
        let mut fds = [0; 2];
        // SAFETY: pipe into a valid array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return None;
        }
        (fds[0], fds[1])
    };
    let status = in_child(|| {
        let (mut reachable, mut tried) = (0u32, 0u32);
        for nr in 0..=MAX_SYSCALL {
            if NEVER_CALL.contains(&nr) {
                continue;
            }
            let a = u64::MAX;
            // SAFETY: junk arguments make every call fail after its
            // permission check; the calls that could do harm with any
            // arguments are in NEVER_CALL.
            let ret = unsafe { libc::syscall(nr, a, a, a, a, a, a) };
            let e = if ret < 0 { errno() } else { 0 };
            tried += 1;
            if !matches!(e, libc::EPERM | libc::ENOSYS) {
                reachable += 1;
            }
        }
        let msg = format!("{reachable} {tried}");
        // SAFETY: writing a small buffer to our pipe.
        unsafe { libc::write(w, msg.as_ptr().cast(), msg.len()) };
        0
    });
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(w) };
    let mut buf = [0u8; 64];
    // SAFETY: reading into a local buffer, then closing.
    let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: closing our read end, used no more.
    unsafe { libc::close(r) };
    status?;
    let text = std::str::from_utf8(&buf[..n.max(0) as usize]).ok()?;
    let mut it = text.split_whitespace().filter_map(|x| x.parse().ok());
    Some((it.next()?, it.next()?))
}

/// What every probe section may need: the harness's facts and what this
/// instance reads once.
struct Facts<'a> {
    host: &'a BTreeMap<String, String>,
    /// Same boot id as the host: the instance runs on the host's kernel.
    shared_kernel: bool,
    /// `/proc/self/status`.
    status: String,
}

impl Facts<'_> {
    fn h(&self, k: &str) -> Option<String> {
        self.host.get(k).cloned()
    }
}

mod sections;
use sections::*;

/// The probe sections, in the order the matrix lists them.
const SECTIONS: &[fn(&Facts, &mut Vec<Probe>)] = &[
    processes,
    identity,
    mounts_and_network,
    host_totals,
    kernel_info,
    capabilities,
    device_nodes,
    kernel_surface,
    kernel_knobs,
    devices,
    shared_hardware,
    surface,
    terminal_and_descriptors,
];

/// Runs every probe. `host` holds the harness's `host_*` facts.
pub fn run_all(host: &BTreeMap<String, String>) -> Vec<Probe> {
    let boot_id = read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let f = Facts {
        host,
        shared_kernel: host.get("host_boot_id").is_some_and(|b| *b == boot_id),
        status: read("/proc/self/status").unwrap_or_default(),
    };
    let mut out = Vec::new();
    for section in SECTIONS {
        section(&f, &mut out);
    }
    out
}

fn unsafe_unshare() -> i32 {
    // SAFETY: unshare in a throwaway child.
    unsafe {
        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) == 0 {
            0
        } else {
            errno()
        }
    }
}

fn nix_stat_root() -> Result<String, ()> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata("/").map_err(|_| ())?.dev();
    Ok(format!("{}:{}", libc::major(dev), libc::minor(dev)))
}

/// The host facts the harness passes as `host_*` parameters.
pub fn host_facts() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(v) = read("/proc/sys/kernel/hostname") {
        m.insert("host_hostname".into(), v);
    }
    if let Some(v) = read("/proc/sys/kernel/osrelease") {
        m.insert("host_kernel".into(), v);
    }
    if let Some(v) = read("/proc/sys/kernel/random/boot_id") {
        m.insert("host_boot_id".into(), v);
    }
    if let Some(v) = meminfo_total_kib() {
        m.insert("host_mem_kib".into(), v.to_string());
    }
    m.insert("host_cpus".into(), cpu_count().to_string());
    if let Ok(st) = nix_stat_root() {
        m.insert("host_root_dev".into(), st);
    }
    if let Some(v) =
        read("/proc/uptime").and_then(|u| u.split_whitespace().next().map(str::to_owned))
    {
        m.insert("host_uptime".into(), v);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_helpers() {
        assert_eq!(refused(libc::EPERM), Verdict::Isolated);
        assert_eq!(refused(libc::ENOSYS), Verdict::Isolated);
        assert_eq!(refused(libc::EINVAL), Verdict::Exposed);
        assert_eq!(refused(0), Verdict::Exposed);
        assert_eq!(errname(libc::EPERM), "EPERM");
    }

    #[test]
    fn on_the_host_itself_the_probes_say_exposed() {
        // Run outside any container: the host facts match, so the shared
        // kernel and host totals must be reported as exposed.
        let probes = run_all(&host_facts());
        assert!(probes.len() >= 25, "{} probes", probes.len());
        let get = |n: &str| {
            probes
                .iter()
                .find(|p| p.name == n)
                .unwrap_or_else(|| panic!("no probe {n}"))
        };
        // As root on the host, the clock could be set and most system
        // calls are reachable.
        assert_eq!(get("clock_settime").value, "would be allowed");
        let (reachable, tried) = reachable_syscalls().expect("the counting child must not crash");
        assert!(reachable > 250 && tried > 400, "{reachable}/{tried}");
        assert_eq!(get("kernel_shared").verdict, Verdict::Exposed);
        assert_eq!(get("hostname").verdict, Verdict::Exposed);
        assert_eq!(get("meminfo_total").verdict, Verdict::Exposed);
        assert_ne!(get("own_pid_1").verdict, Verdict::Isolated);
        for p in &probes {
            assert!(!p.reason.is_empty(), "{}", p.name);
        }
        let names: std::collections::BTreeSet<&str> =
            probes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), probes.len(), "probe names are unique");
    }
}
