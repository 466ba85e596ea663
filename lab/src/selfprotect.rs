//! Protecting the isolab binary from its containers (CVE-2019-5736).
//!
//! Until it calls `execve`, a container's init *is* this binary: its
//! `/proc/self/exe` is a magic link to the host's `isolab` file that no
//! mount or pivot_root hides. An image whose entrypoint leads back to
//! `/proc/self/exe` (directly, by a `#!` line or as an ELF interpreter)
//! would run with that link in hand and could rewrite the host's isolab.
//! Like runc and crun, isolab therefore re-executes itself from a sealed,
//! in-memory copy (`memfd_create` + `F_SEAL_*`) before it creates any
//! container: what a container could reach is a read-only copy that dies
//! with the process. The copy is made once per isolab process, before the
//! launch mark, so it is not part of any measured start.
use std::ffi::CString;
use std::io::Write;

/// The memfd's name; `/proc/self/exe` then reads `/memfd:<name> (deleted)`.
pub const MEMFD_NAME: &str = "isolab-sealed";

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

/// Whether this process already runs from the sealed copy.
pub fn is_sealed_copy() -> bool {
    std::fs::read_link("/proc/self/exe").is_ok_and(|p| {
        p.to_string_lossy()
            .starts_with(&format!("/memfd:{MEMFD_NAME}"))
    })
}

/// Re-executes isolab from a sealed memfd copy unless it already runs from
/// one. Returns only on failure (or when already sealed).
pub fn ensure_sealed() -> anyhow::Result<()> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    if is_sealed_copy() {
        return Ok(());
    }
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
    let e = nix::unistd::fexecve(std::os::fd::AsRawFd::as_raw_fd(&copy), &args, &env).unwrap_err();
    anyhow::bail!("re-executing isolab from its sealed copy failed: {e}")
}
