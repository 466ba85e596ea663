//! The default seccomp profile: an allow-list in the spirit of Docker's
//! default profile.
//!
//! Shape: every x86-64 system call number this kernel generation knows
//! (0..=[`MAX_KNOWN_SYSCALL`]) is allowed *except* the ones in [`BLOCKED`];
//! anything else — unknown/new numbers, the x32 ABI, other architectures —
//! gets `EPERM`. `clone` is allowed only without namespace flags, and
//! `clone3` answers `ENOSYS` (as Docker does) so libc falls back to `clone`,
//! whose flags a filter can see.
//!
//! How: one filter. seccompiler builds the part that names system calls
//! (the blocked list, `clone` with namespace flags); an eight-instruction
//! prefix, written by hand because seccompiler has no notion of a *range*
//! of numbers, refuses everything outside 0..=MAX_KNOWN_SYSCALL and answers
//! `clone3` with ENOSYS. Writing the allow-list out as ~410
//! single-number rules instead gives a ~900-instruction program that costs
//! about 1 ms to install (the kernel emulates it for every syscall number
//! to build its action cache) and ~8 KiB of kernel memory per container.
//!
//! Each blocked call carries the reason the book quotes.
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Highest syscall number allowed by the allow-list (Linux 6.x: 462).
pub const MAX_KNOWN_SYSCALL: i64 = 462;

// ANCHOR: blocked
/// System calls the default profile refuses with `EPERM`, and why.
pub const BLOCKED: &[(&str, i64, &str)] = &[
    (
        "acct",
        libc::SYS_acct,
        "switches process accounting for the whole host",
    ),
    (
        "add_key",
        libc::SYS_add_key,
        "the kernel keyring is not namespaced",
    ),
    (
        "keyctl",
        libc::SYS_keyctl,
        "the kernel keyring is not namespaced",
    ),
    (
        "request_key",
        libc::SYS_request_key,
        "the kernel keyring is not namespaced",
    ),
    (
        "bpf",
        libc::SYS_bpf,
        "loads programs into the shared kernel",
    ),
    (
        "perf_event_open",
        libc::SYS_perf_event_open,
        "observes the host and has a history of kernel bugs",
    ),
    (
        "userfaultfd",
        libc::SYS_userfaultfd,
        "a classic tool to win kernel races",
    ),
    (
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        "large kernel attack surface, bypasses syscall filtering",
    ),
    (
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        "large kernel attack surface, bypasses syscall filtering",
    ),
    (
        "io_uring_register",
        libc::SYS_io_uring_register,
        "large kernel attack surface, bypasses syscall filtering",
    ),
    (
        "clock_settime",
        libc::SYS_clock_settime,
        "the clock is shared with the host",
    ),
    (
        "clock_adjtime",
        libc::SYS_clock_adjtime,
        "the clock is shared with the host",
    ),
    (
        "settimeofday",
        libc::SYS_settimeofday,
        "the clock is shared with the host",
    ),
    (
        "adjtimex",
        libc::SYS_adjtimex,
        "the clock is shared with the host",
    ),
    (
        "init_module",
        libc::SYS_init_module,
        "loads code into the shared kernel",
    ),
    (
        "finit_module",
        libc::SYS_finit_module,
        "loads code into the shared kernel",
    ),
    (
        "delete_module",
        libc::SYS_delete_module,
        "unloads code from the shared kernel",
    ),
    (
        "kexec_load",
        libc::SYS_kexec_load,
        "replaces the host kernel",
    ),
    (
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        "replaces the host kernel",
    ),
    (
        "reboot",
        libc::SYS_reboot,
        "reboots the host (outside a pid namespace)",
    ),
    (
        "mount",
        libc::SYS_mount,
        "could undo the runtime's masks and read-only mounts",
    ),
    (
        "umount2",
        libc::SYS_umount2,
        "could undo the runtime's masks and read-only mounts",
    ),
    (
        "pivot_root",
        libc::SYS_pivot_root,
        "changes the root the runtime set up",
    ),
    (
        "fsopen",
        libc::SYS_fsopen,
        "the new mount API: same as mount",
    ),
    (
        "fsmount",
        libc::SYS_fsmount,
        "the new mount API: same as mount",
    ),
    (
        "move_mount",
        libc::SYS_move_mount,
        "the new mount API: same as mount",
    ),
    (
        "open_tree",
        libc::SYS_open_tree,
        "the new mount API: same as mount",
    ),
    (
        "unshare",
        libc::SYS_unshare,
        "new namespaces expose more kernel surface",
    ),
    ("setns", libc::SYS_setns, "joins other namespaces"),
    ("swapon", libc::SYS_swapon, "host-wide swap configuration"),
    ("swapoff", libc::SYS_swapoff, "host-wide swap configuration"),
    (
        "syslog",
        libc::SYS_syslog,
        "reads the host's kernel log (dmesg) and kernel addresses",
    ),
    ("ioperm", libc::SYS_ioperm, "direct hardware port access"),
    ("iopl", libc::SYS_iopl, "direct hardware port access"),
    (
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        "escaped containers before (the 'shocker' exploit)",
    ),
    (
        "name_to_handle_at",
        libc::SYS_name_to_handle_at,
        "pairs with open_by_handle_at",
    ),
    (
        "process_vm_readv",
        libc::SYS_process_vm_readv,
        "reads other processes' memory",
    ),
    (
        "process_vm_writev",
        libc::SYS_process_vm_writev,
        "writes other processes' memory",
    ),
    (
        "kcmp",
        libc::SYS_kcmp,
        "probes kernel object identity across processes",
    ),
    (
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        "kernel profiling interface",
    ),
    ("quotactl", libc::SYS_quotactl, "host filesystem quotas"),
    ("mbind", libc::SYS_mbind, "host NUMA policy"),
    ("set_mempolicy", libc::SYS_set_mempolicy, "host NUMA policy"),
    ("move_pages", libc::SYS_move_pages, "host NUMA policy"),
    ("uselib", libc::SYS_uselib, "obsolete"),
    ("ustat", libc::SYS_ustat, "obsolete"),
    ("sysfs", libc::SYS_sysfs, "obsolete"),
    ("_sysctl", libc::SYS__sysctl, "obsolete"),
    (
        "personality",
        libc::SYS_personality,
        "can disable address-space randomisation",
    ),
    (
        "vhangup",
        libc::SYS_vhangup,
        "hangs up the controlling terminal",
    ),
];
// ANCHOR_END: blocked

/// Namespace flags `clone` may not carry inside a container.
pub const CLONE_NS_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// Errors compiling the profile (a bug, not bad input).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile does not compile: {0}")]
    Compile(String),
    #[error("installing the seccomp filter failed: {0}")]
    Install(String),
}

fn compile(err: impl std::fmt::Display) -> SeccompError {
    SeccompError::Compile(err.to_string())
}

/// The compiled default profile: two programs, installed in order.
pub struct Profile {
    programs: Vec<BpfProgram>,
}

/// Builds the default profile.
/// The default profile, compiled once per process (a bench starts
/// hundreds of containers; the program is the same for all).
pub fn default_profile() -> Result<&'static Profile, SeccompError> {
    static PROFILE: std::sync::OnceLock<Result<Profile, String>> = std::sync::OnceLock::new();
    PROFILE
        .get_or_init(|| compile_default_profile().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| SeccompError::Compile(e.clone()))
}

fn compile_default_profile() -> Result<Profile, SeccompError> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr, _) in BLOCKED {
        deny.insert(*nr, vec![]);
    }
    // clone with any namespace flag set is refused (one rule per flag:
    // a rule matches when that flag's bit is set).
    let mut clone_rules = Vec::new();
    for flag in CLONE_NS_FLAGS {
        let f = flag as u64;
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(f), f)
            .map_err(compile)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(compile)?);
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let deny_list = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(compile)?;
    Ok(Profile {
        programs: vec![{
            // One program: the hand-written prefix, then seccompiler's
            // (its jumps are relative, so prefixing keeps them right). One
            // filter instead of three also means one BPF image charged to
            // the container instead of three.
            let mut p = known_numbers_prefix();
            p.extend(BpfProgram::try_from(deny_list).map_err(compile)?);
            p
        }],
    })
}

/// The prefix: x86-64 only, no x32 numbers, nothing above the known
/// range, `clone3` → ENOSYS; anything else falls through to the rest.
fn known_numbers_prefix() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let ret_eperm = 0x0005_0000 | libc::EPERM as u32; // SECCOMP_RET_ERRNO
    let ret_enosys = 0x0005_0000 | libc::ENOSYS as u32;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        ins(LD_W_ABS, 0, 0, 4),                     // A = seccomp_data.arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),        // x86-64? skip next
        ins(RET_K, 0, 0, ret_eperm),                // other arch: EPERM
        ins(LD_W_ABS, 0, 0, 0), // A = seccomp_data.nr (x32 numbers have bit 30 set, so are > max)
        ins(JGT_K, 0, 1, MAX_KNOWN_SYSCALL as u32), // unknown? -> next, else skip it
        ins(RET_K, 0, 0, ret_eperm), //   EPERM
        ins(JEQ_K, 0, 1, libc::SYS_clone3 as u32), // clone3? -> next, else skip it
        ins(RET_K, 0, 0, ret_enosys), //   ENOSYS: libc falls back to clone
    ]
}

impl Profile {
    /// Installs the filters on the calling thread (sets `no_new_privs`).
    pub fn install(&self) -> Result<(), SeccompError> {
        for p in &self.programs {
            seccompiler::apply_filter(p).map_err(|e| SeccompError::Install(e.to_string()))?;
        }
        Ok(())
    }

    /// Total BPF instructions (the book shows the filter's size).
    pub fn instructions(&self) -> usize {
        self.programs.iter().map(|p| p.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_compiles_and_stays_small() {
        let p = default_profile().unwrap();
        assert!(p.instructions() < 400, "{} instructions", p.instructions());
    }

    #[test]
    fn blocked_list_is_consistent() {
        for (name, nr, why) in BLOCKED {
            assert!(*nr <= MAX_KNOWN_SYSCALL, "{name}");
            assert!(!why.is_empty());
        }
        let mut nrs: Vec<i64> = BLOCKED.iter().map(|b| b.1).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), BLOCKED.len(), "duplicate entry");
        // The calls the runtime itself must still make after the filter,
        // and that ordinary programs need, are not blocked.
        for nr in [
            libc::SYS_execve,
            libc::SYS_write,
            libc::SYS_exit_group,
            libc::SYS_clone,
            libc::SYS_ptrace,
        ] {
            assert!(!nrs.contains(&nr));
        }
    }

    #[test]
    fn filter_really_blocks_in_a_child() {
        // Install in a forked child so the test process stays unfiltered.
        let profile = default_profile().unwrap();
        // SAFETY: the child only makes system calls and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = (|| {
                    if profile.install().is_err() {
                        return 10;
                    }
                    // SAFETY: plain syscalls with no pointers.
                    let r = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS) };
                    if r != -1
                        || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
                    {
                        return 11;
                    }
                    // SAFETY: as above.
                    let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
                    if r != -1
                        || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
                    {
                        return 12;
                    }
                    // SAFETY: getpid has no arguments.
                    if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
                        return 13;
                    }
                    // An unknown number and an x32 number are refused, not ENOSYS.
                    for nr in [MAX_KNOWN_SYSCALL + 1, 0x4000_0000 + libc::SYS_getpid] {
                        // SAFETY: an invalid syscall number has no effect.
                        let r = unsafe { libc::syscall(nr) };
                        if r != -1
                            || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
                        {
                            return 14;
                        }
                    }
                    // clone with CLONE_NEWNET is refused; plain fork works.
                    // SAFETY: the flags make clone fail before any effect.
                    let r = unsafe {
                        libc::syscall(
                            libc::SYS_clone,
                            (libc::CLONE_NEWNET | libc::SIGCHLD) as u64,
                            0,
                            0,
                            0,
                            0,
                        )
                    };
                    if r != -1
                        || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
                    {
                        return 15;
                    }
                    0
                })();
                // SAFETY: _exit never returns.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
