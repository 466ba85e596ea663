//! The monitor's jail, after Firecracker's jailer.
//!
//! A guest is hostile: a memory-safety bug in device emulation must not be
//! host root. So once the monitor holds every host resource it needs —
//! the `/dev/kvm` fd, the disk files, the kernel and initramfs read into
//! guest memory — and *before* the guest runs a single instruction, it
//! jails itself, in one process and without an exec:
//!
//! 1. its own mount namespace (and IPC namespace) whose root is an empty,
//!    read-only tmpfs: no host file can be opened any more;
//! 2. no supplementary groups, then the unprivileged user `nobody`
//!    (65534): every capability goes, and the process stops being
//!    dumpable (no other process of that user can ptrace it); `/dev/kvm`
//!    needs no permission then, the open fd is what the monitor keeps.
//!    The change of user clears the parent-death signal, so it is armed
//!    again: a killed harness still takes its monitor with it;
//! 3. `no_new_privs`, then a seccomp allow-list: only the system calls
//!    the run loop and the devices make, `ioctl` only with KVM's request
//!    type (and the terminal's), `clone` only for threads (`clone3`
//!    answers ENOSYS, so libc falls back to `clone`, whose flags a filter
//!    can read). Anything else is trapped: the monitor says which call
//!    and exits.
//!
//! Not root (a user in the `kvm` group), steps 1–2 cannot be taken and
//! only step 3 is. The cgroup with a memory limit is the harness's: it
//! starts the monitor in one (see the lab's `microvm` backend).
//!
//! What it costs is a mark of its own, `jailed`, in every report.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Set, the monitor makes one forbidden call once jailed (tests only).
pub const SELFTEST_ENV: &str = "ISOLAB_VMM_JAIL_SELFTEST";

/// The user and group a root monitor becomes.
pub const NOBODY: u32 = 65534;

/// How far the monitor jailed itself, as the report says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JailLevel {
    /// Mount namespace, unprivileged user, seccomp allow-list.
    Full,
    /// Not started as root: seccomp allow-list only.
    SeccompOnly,
    /// `--no-jail`, or the monitor used as a library.
    #[default]
    None,
}

/// Why the jail could not be entered.
#[derive(Debug, thiserror::Error)]
#[error("the monitor could not jail itself ({step}: {source}); run it as root, or with --no-jail to debug")]
pub struct JailError {
    step: &'static str,
    source: std::io::Error,
}

fn step(step: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |e| JailError {
        step,
        source: std::io::Error::from_raw_os_error(e as i32),
    }
}

/// Jails the calling process. Call it single-threaded, once everything
/// the monitor needs from the host is open.
pub fn enter() -> Result<JailLevel, JailError> {
    let root = nix::unistd::geteuid().is_root();
    if root {
        // A change of user clears the parent-death signal (the kernel's
        // rule): the harness's "die with me" would be lost, and a killed
        // isolab would leave its monitor running. Re-arm it, then check
        // the parent did not die in between.
        let mut pdeath: libc::c_int = 0;
        // SAFETY: PR_GET_PDEATHSIG writes one int.
        unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut libc::c_int) };
        let parent = nix::unistd::getppid();
        private_root()?;
        drop_user(NOBODY, NOBODY)?;
        if pdeath != 0 {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, pdeath as libc::c_ulong) };
            if nix::unistd::getppid() != parent {
                // SAFETY: _exit ends this process only.
                unsafe { libc::_exit(1) };
            }
        }
    }
    install_sigsys_handler();
    let programs = filters().map_err(|e| JailError {
        step: "compiling the seccomp filter",
        source: std::io::Error::other(e),
    })?;
    for p in &programs {
        // Sets no_new_privs first.
        seccompiler::apply_filter(p).map_err(|e| JailError {
            step: "installing the seccomp filter",
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    // For the jail's own test: a call outside the list, which must end
    // the monitor with the sentence naming it.
    if std::env::var_os(SELFTEST_ENV).is_some() {
        // SAFETY: getuid has no arguments and no side effects.
        unsafe { libc::syscall(libc::SYS_getuid) };
    }
    Ok(if root {
        JailLevel::Full
    } else {
        JailLevel::SeccompOnly
    })
}

/// A mount namespace whose root is an empty, read-only tmpfs.
fn private_root() -> Result<(), JailError> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC).map_err(step("unshare"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("making mounts private"))?;
    // Any directory will do as the mount point: the mount is ours alone.
    let new_root = "/proc";
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        hardened,
        Some("size=4k,nr_inodes=1,mode=0555"),
    )
    .map_err(step("mounting the empty root"))?;
    nix::unistd::chdir(new_root).map_err(step("chdir"))?;
    // pivot_root(".", "."): the old root ends up on top of the new one and
    // is detached at once, as runc does.
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the host's root"))?;
    nix::unistd::chdir("/").map_err(step("chdir"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hardened,
        None::<&str>,
    )
    .map_err(step("making the root read-only"))?;
    Ok(())
}

fn drop_user(uid: u32, gid: u32) -> Result<(), JailError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    setgroups(&[]).map_err(step("setgroups"))?;
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    setresgid(g, g, g).map_err(step("setresgid"))?;
    setresuid(u, u, u).map_err(step("setresuid"))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(JailError {
            step: "PR_SET_DUMPABLE",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The system calls the jailed monitor makes: the vCPU run loop, the
/// devices, threads, memory, time, the report on stdout, exit.
// ANCHOR: allowed
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mincore,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    libc::SYS_getrusage,
    libc::SYS_exit,
    libc::SYS_exit_group,
];
// ANCHOR_END: allowed

/// Terminal requests the monitor makes on its own stdin (`--interactive`).
const TERMINAL_IOCTLS: &[u64] = &[libc::TCGETS, libc::TCSETS, libc::TIOCGWINSZ];
/// KVM's ioctl type (`KVMIO`), bits 8–15 of every KVM request.
const KVMIO: u64 = 0xAE;

fn filters() -> Result<Vec<BpfProgram>, String> {
    let e = |e: seccompiler::BackendError| e.to_string();
    let arg_eq = |arg: u8, op: SeccompCmpOp, v: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, v).map_err(e)
    };
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|n| (*n, Vec::new())).collect();
    let mut ioctl =
        vec![
            SeccompRule::new(vec![arg_eq(1, SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8)?])
                .map_err(e)?,
        ];
    for req in TERMINAL_IOCTLS {
        ioctl.push(SeccompRule::new(vec![arg_eq(1, SeccompCmpOp::Eq, *req)?]).map_err(e)?);
    }
    allow.insert(libc::SYS_ioctl, ioctl);
    // Threads only: CLONE_THREAD set, so no new process can be made.
    let thread = libc::CLONE_THREAD as u64;
    allow.insert(
        libc::SYS_clone,
        vec![
            SeccompRule::new(vec![arg_eq(0, SeccompCmpOp::MaskedEq(thread), thread)?])
                .map_err(e)?,
        ],
    );
    // Thread names (PR_SET_NAME) only.
    allow.insert(
        libc::SYS_prctl,
        vec![
            SeccompRule::new(vec![arg_eq(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?])
                .map_err(e)?,
        ],
    );
    // clone3 is allowed here and answered ENOSYS by the first filter: its
    // flags are in memory a filter cannot read.
    allow.insert(libc::SYS_clone3, Vec::new());
    let allow_list = SeccompFilter::new(
        allow,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(e)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(e)?;
    Ok(vec![
        BpfProgram::try_from(no_clone3).map_err(e)?,
        BpfProgram::try_from(allow_list).map_err(e)?,
    ])
}

/// A trapped system call ends the monitor with one sentence naming it.
fn install_sigsys_handler() {
    extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // siginfo's SIGSYS fields: _call_addr at 16, _syscall (int) at 24.
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO.
        let nr = unsafe { *(info.cast::<u8>().add(24).cast::<i32>()) };
        // No allocation, no formatting machinery: async-signal-safe.
        let mut digits = [0u8; 20];
        let parts: [&[u8]; 3] = [
            b"isolab-vmm: the jail refused system call ",
            isolab_abi::kernels::fmt_u64(u64::from(nr.unsigned_abs()), &mut digits),
            b"; this is a monitor bug: report it (--no-jail confirms)\n",
        ];
        for p in parts {
            // SAFETY: write(2) is async-signal-safe.
            unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
        }
        // SAFETY: _exit(2) is async-signal-safe.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: a plain sigaction with an async-signal-safe handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile() {
        let f = filters().unwrap();
        assert_eq!(f.len(), 2);
        assert!(
            f[1].len() > ALLOWED.len(),
            "one check per allowed call at least"
        );
    }
}
