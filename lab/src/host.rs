//! What this host can do: pure parsers plus the small probes that feed them.
//!
//! The parsers (`kvm_flavour`, `meminfo_kib`, …) take text so they are unit
//! tested on made-up inputs; the probes read `/proc`, `/sys`, fork a child
//! to try an `unshare`, or run a peer's `--version`.
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// Which KVM this is, which decides whether a stock Linux guest can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmFlavour {
    /// Intel VT-x: a stock kernel boots.
    HardwareVmx,
    /// AMD-V: a stock kernel boots.
    HardwareSvm,
    /// PVM (`kvm_pvm`): software-assisted nested virtualisation. A stock
    /// kernel starts, prints, then dies on an emulation failure.
    Pvm,
    /// `/dev/kvm` exists but neither of the above could be identified.
    Unknown,
    /// No KVM device.
    None,
}

impl KvmFlavour {
    pub fn as_str(self) -> &'static str {
        match self {
            KvmFlavour::HardwareVmx => "hardware-vmx",
            KvmFlavour::HardwareSvm => "hardware-svm",
            KvmFlavour::Pvm => "pvm",
            KvmFlavour::Unknown => "unknown",
            KvmFlavour::None => "none",
        }
    }

    /// Can a stock distribution kernel boot to user space here?
    pub fn boots_stock_linux(self) -> bool {
        matches!(self, KvmFlavour::HardwareVmx | KvmFlavour::HardwareSvm)
    }

    /// One sentence for the user on what this flavour means.
    pub fn meaning(self) -> &'static str {
        match self {
            KvmFlavour::HardwareVmx | KvmFlavour::HardwareSvm => {
                "hardware virtualisation: the bare lab guest and a stock Linux guest both boot"
            }
            KvmFlavour::Pvm => {
                "PVM (software-assisted nested KVM, no VMX/SVM): the bare lab guest runs; a stock Linux kernel starts and prints its first lines, then dies on an emulation failure — use a PVM-aware kernel (--kernel) or a host with hardware KVM for the Linux guest"
            }
            KvmFlavour::Unknown => {
                "KVM of an unknown kind: the bare lab guest should run; whether a stock Linux guest boots is untested"
            }
            KvmFlavour::None => "no KVM: the microVM backends cannot run",
        }
    }
}

/// Decides the flavour from `/proc/cpuinfo` flags and whether the
/// `kvm_pvm` module is loaded. PVM wins: a PVM host may still list no
/// vmx/svm, and that is precisely the point.
pub fn kvm_flavour(kvm_device_present: bool, cpuinfo: &str, pvm_module: bool) -> KvmFlavour {
    if !kvm_device_present {
        return KvmFlavour::None;
    }
    if pvm_module {
        return KvmFlavour::Pvm;
    }
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f)
        .unwrap_or("");
    if flags.split_whitespace().any(|f| f == "vmx") {
        KvmFlavour::HardwareVmx
    } else if flags.split_whitespace().any(|f| f == "svm") {
        KvmFlavour::HardwareSvm
    } else {
        KvmFlavour::Unknown
    }
}

/// `true` when the CPU flags say this machine is itself a guest.
pub fn is_nested(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "hypervisor"))
}

/// The first `model name` in `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// A field of `/proc/meminfo`, in KiB.
pub fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Reads a file to a trimmed string, `None` when unreadable.
pub fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Tries to open the KVM device read-write and returns its API version.
pub fn kvm_api_version(dev: &Path) -> Result<i32, String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))?;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an
    // int; the fd is valid for the duration of the call.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if v < 0 {
        Err(format!(
            "{} answered KVM_GET_API_VERSION with {}",
            dev.display(),
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(v)
    }
}

/// Runs `f` in a forked child and reports whether it returned 0 (or the
/// errno it returned). The child only makes system calls and exits.
pub fn in_child(f: impl FnOnce() -> i32) -> Result<(), nix::errno::Errno> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // SAFETY: the doctor is single-threaded when it probes; the child runs
    // only `f` (plain system calls) and `_exit`s without unwinding.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = f();
            // SAFETY: `_exit` never returns and runs no destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, code)) => Err(nix::errno::Errno::from_raw(code)),
            Ok(_) => Err(nix::errno::Errno::ECHILD),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Tries `unshare(flag)` in a child.
pub fn try_unshare(flag: libc::c_int) -> Result<(), nix::errno::Errno> {
    in_child(|| {
        // SAFETY: unshare only changes the calling (child) process.
        if unsafe { libc::unshare(flag) } == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
        }
    })
}

/// Mounts an overlay in a child's private mount namespace (gone with it).
pub fn try_overlay_mount(scratch: &Path) -> Result<(), String> {
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir_all(scratch.join(d)).map_err(|e| e.to_string())?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        scratch.join("l").display(),
        scratch.join("u").display(),
        scratch.join("w").display()
    );
    let opts = CString::new(opts).map_err(|e| e.to_string())?;
    let target = CString::new(scratch.join("m").as_os_str().as_encoded_bytes())
        .map_err(|e| e.to_string())?;
    in_child(move || {
        // SAFETY: all pointers are valid NUL-terminated strings owned by
        // this closure; the calls only affect the child's new namespace.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return errno();
            }
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return errno();
            }
            if libc::mount(
                c"overlay".as_ptr(),
                target.as_ptr(),
                c"overlay".as_ptr(),
                0,
                opts.as_ptr().cast(),
            ) != 0
            {
                return errno();
            }
        }
        0
    })
    .map_err(|e| e.desc().to_owned())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
}

/// `PROGRAM --version`'s first line with a version number in it.
pub fn peer_version(program: &str) -> Option<(PathBuf, String)> {
    let path = which(program)?;
    let out = Command::new(&path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.chars().any(|c| c.is_ascii_digit()))?;
    Some((
        path,
        parse_version(line).unwrap_or_else(|| line.trim().to_owned()),
    ))
}

/// The first dotted number in a `--version` line (`crun version 1.8.1` →
/// `1.8.1`, `QEMU emulator version 7.2.19 (Debian …)` → `7.2.19`).
pub fn parse_version(line: &str) -> Option<String> {
    line.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.contains('.') && w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
}

/// Finds a program on `PATH` (plus the sbin dirs root usually has).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Free bytes on the filesystem holding `p` (or its nearest existing
/// ancestor).
pub fn free_disk_bytes(p: &Path) -> Option<(PathBuf, u64)> {
    let mut at = p.to_path_buf();
    loop {
        if at.exists() {
            let s = nix::sys::statvfs::statvfs(&at).ok()?;
            return Some((at, s.blocks_available() as u64 * s.fragment_size() as u64));
        }
        if !at.pop() {
            return None;
        }
    }
}

/// The peers' programs, by the name results give them.
pub const PEER_PROGRAMS: [(&str, &str); 3] = [
    ("crun", "crun"),
    ("runc", "runc"),
    ("qemu", "qemu-system-x86_64"),
];

/// Host metadata for the manifest.
pub fn host_info() -> isolab_reports::HostInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let flavour = kvm_flavour_here();
    let mut peers = std::collections::BTreeMap::new();
    for (n, p) in PEER_PROGRAMS {
        if let Some((_, v)) = peer_version(p) {
            peers.insert(n.to_owned(), v);
        }
    }
    let model = cpu_model(&cpuinfo);
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let hostname = read_trim("/proc/sys/kernel/hostname").unwrap_or_default();
    let host_id = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (machine_id.trim(), &model, &hostname).hash(&mut h);
        format!("{:016x}", h.finish())
    };
    isolab_reports::HostInfo {
        host_id,
        hostname,
        cpu_model: model,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) * 1024,
        kernel: kernel_release(),
        kvm_flavour: flavour.as_str().into(),
        nested: is_nested(&cpuinfo),
        cgroup_mode: isolab_runtime::cgroups::CgroupLayout::detect()
            .map(|l| l.mode.as_str().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        peers,
        loadavg: loadavg(),
    }
}

/// The host's load averages (`/proc/loadavg`).
pub fn loadavg() -> Option<[f64; 3]> {
    parse_loadavg(&read_trim("/proc/loadavg")?)
}

/// `0.52 0.40 0.31 1/123 4567` → the three averages.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// An instance's process the harness spawns starts in the host's mount
/// namespace, not in the private one this isolab re-executed into (where
/// its own binary is a read-only bind): a spawned `isolab run` then pays
/// its own self-protection, as it does when a user types it, and crun,
/// runc, `isolab-vmm` and QEMU see the host as from a shell.
pub fn in_host_mount_namespace(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let Some(fd) = std::env::var(crate::selfprotect::HOST_MNTNS_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    cmd.env_remove(crate::selfprotect::HOST_MNTNS_ENV);
    // SAFETY: runs in the forked child before exec; setns on a descriptor
    // this process holds, integer arguments only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
}

/// A monitor the harness spawns dies with it (PR_SET_PDEATHSIG): a
/// killed `isolab` must not leave a VM running until its timeout.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec; prctl with integer
    // arguments only.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Gives the child each `(fd, target)` file as its descriptor `target`
/// (not close-on-exec there), e.g. QEMU's guest RAM as 3 and a tap as 4.
/// Every source is first copied above the targets, so that putting one
/// in place never overwrites another still to be placed. At most four:
/// the child (forked from a process with threads) must not allocate.
pub fn pass_fds(cmd: &mut Command, fds: Vec<(std::os::fd::RawFd, std::os::fd::RawFd)>) {
    use std::os::unix::process::CommandExt;
    const MAX: usize = 4;
    assert!(fds.len() <= MAX, "pass_fds takes at most {MAX} descriptors");
    let n = fds.len();
    let mut list = [(-1, -1); MAX];
    list[..n].copy_from_slice(&fds);
    // SAFETY: runs in the forked child before exec; only fcntl and dup2
    // on descriptors this process owns, on a fixed-size array (no
    // allocation after fork).
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [(-1, -1); MAX];
            for (slot, &(fd, target)) in high.iter_mut().zip(&list[..n]) {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *slot = (h, target);
            }
            for &(h, target) in &high[..n] {
                // dup2 clears close-on-exec on the copy.
                if libc::dup2(h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes a message safe for a terminal: control characters other than
/// newline and tab (escape sequences a hostile layer name or file could
/// carry) become `\u{..}` escapes.
pub fn terminal_safe(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Makes a name safe to print in one line: control characters (a
/// terminal's escape sequences, newlines) become `\u{..}` escapes.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// This host's KVM flavour (as `doctor` reports it).
pub fn kvm_flavour_here() -> KvmFlavour {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    kvm_flavour(
        Path::new("/dev/kvm").exists(),
        &cpuinfo,
        Path::new("/sys/module/kvm_pvm").exists(),
    )
}

/// True when the ELF at `p` has no program interpreter (statically linked).
pub fn is_static(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| elf_is_static(&b))
}

/// An ELF64 with no PT_INTERP and no PT_DYNAMIC needing libraries is static
/// (static-pie keeps a PT_DYNAMIC for self-relocation but no PT_INTERP).
pub fn elf_is_static(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || !b.starts_with(b"\x7fELF") || b[4] != 2 {
        return false;
    }
    let rd16 = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (rd16(54), rd16(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_averages_parse() {
        assert_eq!(
            parse_loadavg("0.52 0.40 0.31 1/123 4567"),
            Some([0.52, 0.40, 0.31])
        );
        assert_eq!(parse_loadavg("junk"), None);
    }

    #[test]
    fn messages_reach_the_terminal_without_escape_sequences() {
        assert_eq!(
            terminal_safe("bad entry \u{1b}]0;pwned\u{7}\nnext"),
            "bad entry \\u{1b}]0;pwned\\u{7}\nnext"
        );
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(printable("plain-name"), "plain-name");
    }

    #[test]
    fn static_detection_on_made_up_headers() {
        let mut b = vec![0u8; 64 + 56 * 2];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        b[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert!(elf_is_static(&b));
        b[120..124].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert!(!elf_is_static(&b));
        assert!(!elf_is_static(b"#!/bin/sh"));
    }

    #[test]
    fn flavours() {
        let vmx = "processor: 0\nflags\t\t: fpu vme vmx sse2 hypervisor\n";
        let svm = "flags : fpu svm\n";
        let none = "flags : fpu sse2 hypervisor\n";
        assert_eq!(kvm_flavour(true, vmx, false), KvmFlavour::HardwareVmx);
        assert_eq!(kvm_flavour(true, svm, false), KvmFlavour::HardwareSvm);
        assert_eq!(kvm_flavour(true, none, true), KvmFlavour::Pvm);
        assert_eq!(kvm_flavour(true, vmx, true), KvmFlavour::Pvm);
        assert_eq!(kvm_flavour(true, none, false), KvmFlavour::Unknown);
        assert_eq!(kvm_flavour(false, vmx, true), KvmFlavour::None);
        // "vmx" inside another flag name is not vmx.
        assert_eq!(
            kvm_flavour(true, "flags : vmx_ept\n", false),
            KvmFlavour::Unknown
        );
        assert!(KvmFlavour::HardwareSvm.boots_stock_linux());
        assert!(!KvmFlavour::Pvm.boots_stock_linux());
        assert!(is_nested(none) && !is_nested(svm));
    }

    #[test]
    fn cpuinfo_and_meminfo() {
        assert_eq!(
            cpu_model("model name\t: AMD EPYC 7B13\nflags: x\n"),
            "AMD EPYC 7B13"
        );
        assert_eq!(cpu_model(""), "unknown");
        let mi = "MemTotal:       24590000 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(meminfo_kib(mi, "MemAvailable"), Some(23_000_000));
        assert_eq!(meminfo_kib(mi, "Mem"), None);
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("crun version 1.8.1").as_deref(),
            Some("1.8.1")
        );
        assert_eq!(
            parse_version("runc version 1.1.5+ds1").as_deref(),
            Some("1.1.5+ds1")
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)").as_deref(),
            Some("7.2.19")
        );
        assert_eq!(parse_version("no digits here"), None);
    }
}
