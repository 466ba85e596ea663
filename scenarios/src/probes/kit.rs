//! What every probe needs: the answer type, errno names, a throwaway
//! child to try things in, and the facts the sections share.
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

pub(super) fn p(name: &str, value: impl ToString, verdict: Verdict, reason: &str) -> Probe {
    Probe {
        name: name.into(),
        value: value.to_string(),
        verdict,
        reason: reason.into(),
    }
}

pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub(super) fn errname(e: i32) -> String {
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
        libc::ENOTTY => "ENOTTY".into(),
        libc::ENXIO => "ENXIO".into(),
        other => format!("errno {other}"),
    }
}

/// A refused call (EPERM/EACCES/ENOSYS) is isolated; anything else means
/// the permission check passed.
pub(super) fn refused(e: i32) -> Verdict {
    if matches!(e, libc::EPERM | libc::EACCES | libc::ENOSYS) {
        Verdict::Isolated
    } else {
        Verdict::Exposed
    }
}

/// Runs `f` in a forked child (so nothing it does stays in this process)
/// and returns what it exits with (an errno or 0), or `None` on a crash.
pub(super) fn in_child(f: impl FnOnce() -> i32) -> Option<i32> {
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

pub(super) fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

pub(super) fn meminfo_total_kib() -> Option<u64> {
    read("/proc/meminfo")?
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(super) fn cpu_count() -> usize {
    read("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
}

/// Number the probes check against `MAX_SYSCALL` (inclusive).
pub const MAX_SYSCALL: i64 = 462;

/// System calls that must not be called even with junk arguments: they end,
/// block, or replace the calling process.
pub(super) const NEVER_CALL: &[i64] = &[
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
/// The kernel the instance runs on, as it sees it: its release (from
/// /proc, or uname(2) where /proc lacks it, as under gVisor) and its boot
/// id when it has one.
pub(super) fn kernel_identity() -> (String, Option<String>) {
    let release = read("/proc/sys/kernel/osrelease")
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: utsname is plain old data; uname fills it.
            let mut u: libc::utsname = unsafe { std::mem::zeroed() };
            // SAFETY: a valid, writable utsname.
            if unsafe { libc::uname(&mut u) } != 0 {
                return String::new();
            }
            // SAFETY: uname NUL-terminates each field.
            unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        });
    let boot_id = read("/proc/sys/kernel/random/boot_id").filter(|b| !b.is_empty());
    (release, boot_id)
}

/// Does the instance run on the host's kernel? The boot id says so when
/// both sides have one; otherwise the release must differ to say no (an
/// unreadable boot id alone proves nothing).
pub(super) fn shares_host_kernel(host: &BTreeMap<String, String>) -> bool {
    let (release, boot_id) = kernel_identity();
    match (host.get("host_boot_id"), boot_id) {
        (Some(h), Some(b)) => *h == b,
        _ => host.get("host_kernel").is_none_or(|k| *k == release),
    }
}

pub(super) struct Facts<'a> {
    pub(super) host: &'a BTreeMap<String, String>,
    /// Same boot id as the host: the instance runs on the host's kernel.
    pub(super) shared_kernel: bool,
    /// `/proc/self/status`.
    pub(super) status: String,
}

impl Facts<'_> {
    pub(super) fn h(&self, k: &str) -> Option<String> {
        self.host.get(k).cloned()
    }
}

pub(super) fn unsafe_unshare() -> i32 {
    // SAFETY: unshare in a throwaway child.
    unsafe {
        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) == 0 {
            0
        } else {
            errno()
        }
    }
}

pub(super) fn nix_stat_root() -> Result<String, ()> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata("/").map_err(|_| ())?.dev();
    Ok(format!("{}:{}", libc::major(dev), libc::minor(dev)))
}
