//! Protecting the isolab binary from its containers (CVE-2019-5736).
//!
//! Until it calls `execve`, a container's init *is* this binary: its
//! `/proc/self/exe` is a magic link to the host's `isolab` file that no
//! mount or pivot_root hides. The runtime closes that door itself: the
//! init execs its program through a tiny sealed launcher
//! (`isolab_runtime::launcher`), so nothing a container can reach ever
//! has the host's `isolab` as its exe.
//!
//! This module is the fallback for hosts where that launcher cannot be
//! made (an executable memfd refused, `vm.memfd_noexec=2`): isolab then
//! re-executes itself, before it creates any container, from a file no
//! container can write, as runc does:
//!
//! * first choice (runc ≥ 1.2's approach): in a private mount namespace,
//!   its own binary bind-mounted read-only over itself, then `execve` of
//!   that path — `/proc/self/exe` now names a file on a read-only mount,
//!   and nothing is copied;
//! * then (runc 1.1's): a sealed in-memory copy (`memfd_create` +
//!   `F_SEAL_*`), 17 MB copied at every start.
//!
//! Whichever applies is a per-process cost paid inside every measured
//! start of `isolab run`, as runc's is inside its own.
use std::ffi::CString;
use std::io::Write;

/// The memfd's name; `/proc/self/exe` then reads `/memfd:<name> (deleted)`.
pub const MEMFD_NAME: &str = "isolab-sealed";

/// Environment variable holding the descriptor of the host's mount
/// namespace, open in a process that re-executed from its read-only bind.
pub const HOST_MNTNS_ENV: &str = "ISOLAB_HOST_MNTNS_FD";

/// Environment variable holding the path isolab was started from.
pub const ORIGINAL_EXE_ENV: &str = "ISOLAB_ORIGINAL_EXE";

/// The path of the isolab binary on disk (not the sealed copy).
pub fn original_exe() -> Option<std::path::PathBuf> {
    if is_sealed_copy() {
        std::env::var_os(ORIGINAL_EXE_ENV).map(std::path::PathBuf::from)
    } else {
        std::env::current_exe().ok()
    }
}

/// Whether this process already runs from a sealed copy (the fallback).
pub fn is_sealed_copy() -> bool {
    std::fs::read_link("/proc/self/exe").is_ok_and(|p| {
        p.to_string_lossy()
            .starts_with(&format!("/memfd:{MEMFD_NAME}"))
    })
}

/// Whether this process's binary cannot be written through
/// `/proc/self/exe`: it lies on a read-only mount (the bind, or a
/// read-only /usr), or it is the sealed copy.
pub fn is_protected() -> bool {
    isolab_runtime::launcher::exe_is_protected()
}

/// This process's arguments and environment, for a re-exec.
fn argv_envp() -> anyhow::Result<(Vec<CString>, Vec<CString>)> {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_encoded_bytes()))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = k.into_encoded_bytes();
            b.push(b'=');
            b.extend(v.into_encoded_bytes());
            CString::new(b)
        })
        .collect::<Result<_, _>>()?;
    Ok((args, env))
}

/// Re-executes isolab from a read-only bind of its own binary in a private
/// mount namespace. Returns only on failure.
fn reexec_read_only() -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    let exe = std::fs::read_link("/proc/self/exe")?;
    let none: Option<&str> = None;
    // The host's mount namespace, kept open across the exec: instances
    // the harness spawns start there, as they would from a user's shell
    // (see `host::in_host_mount_namespace`).
    let host_ns = nix::fcntl::open(
        "/proc/self/ns/mnt",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    std::env::set_var(HOST_MNTNS_ENV, host_ns.to_string());
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    // Nothing of this namespace propagates to the host's.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    mount(Some(&exe), &exe, none, MsFlags::MS_BIND, none)?;
    mount(
        none,
        &exe,
        none,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        none,
    )?;
    let (args, env) = argv_envp()?;
    let path = CString::new(exe.into_os_string().into_encoded_bytes())?;
    let e = nix::unistd::execve(&path, &args, &env).unwrap_err();
    anyhow::bail!("re-executing isolab from its read-only bind failed: {e}")
}

/// Makes sure no container this process starts can reach a writable
/// isolab binary: nothing to do where the runtime's sealed launcher can be
/// made (the usual case); otherwise [`ensure_sealed`].
pub fn ensure_protected() -> anyhow::Result<()> {
    if isolab_runtime::launcher::get().is_ok() {
        return Ok(());
    }
    ensure_sealed()
}

/// Re-executes isolab from a binary no container can write unless it
/// already runs from one. Returns only on failure (or when protected).
pub fn ensure_sealed() -> anyhow::Result<()> {
    if is_protected() {
        // The host namespace's descriptor had to survive the re-exec; no
        // other program needs it (spawned instances enter it before exec).
        if let Some(fd) = std::env::var(HOST_MNTNS_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
        {
            // SAFETY: F_SETFD with an integer flag on a descriptor number;
            // harmless if it is not open.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        return Ok(());
    }
    if let Err(e) = reexec_read_only() {
        tracing::debug!("read-only re-exec unavailable ({e:#}); falling back to a sealed copy");
    }
    reexec_sealed_copy()
}

/// The fallback: re-executes isolab from a sealed memfd copy.
fn reexec_sealed_copy() -> anyhow::Result<()> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let name = CString::new(MEMFD_NAME)?;
    let fd = memfd_create(
        &name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let mut copy = std::fs::File::from(fd);
    let mut exe = std::fs::File::open("/proc/self/exe")?;
    std::io::copy(&mut exe, &mut copy)?;
    copy.flush()?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on a memfd we own, integer argument.
    if unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&copy),
            libc::F_ADD_SEALS,
            seals,
        )
    } != 0
    {
        anyhow::bail!(
            "sealing the in-memory copy of isolab failed: {}",
            std::io::Error::last_os_error()
        );
    }
    // Remember where isolab really lives: its sibling binaries (isolab-vmm)
    // are found next to it.
    if let Ok(orig) = std::fs::read_link("/proc/self/exe") {
        std::env::set_var(ORIGINAL_EXE_ENV, orig);
    }
    let (args, env) = argv_envp()?;
    let e = nix::unistd::fexecve(std::os::fd::AsRawFd::as_raw_fd(&copy), &args, &env).unwrap_err();
    anyhow::bail!("re-executing isolab from its sealed copy failed: {e}")
}
