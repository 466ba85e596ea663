//! The container's last step before its program: a tiny sealed launcher
//! (CVE-2019-5736).
//!
//! Until it calls `execve`, a container's init is a fork of the runtime:
//! its `/proc/self/exe` is a magic link to the runtime's own file that no
//! mount or `pivot_root` hides. An image whose entrypoint leads back to
//! `/proc/self/exe` (directly, through a `#!` line or as an ELF
//! interpreter) would run with that link in hand and could rewrite the
//! host's binary. runc 1.1 answered with a sealed in-memory copy of all of
//! runc at every start; runc 1.2 with a read-only bind of itself. Both
//! re-execute the whole runtime.
//!
//! isolab seals only what the container can reach. The init does its
//! setup as before, then, instead of `execve(program)`, runs
//! `execveat(launcher, "", argv, envp, AT_EMPTY_PATH)`, where `launcher`
//! is a 447-byte static ELF in a sealed memfd (no write, grow, shrink or
//! further seals). The launcher marks the report pipe close-on-exec and
//! `execve`s `argv[0]`. From the first `execveat` on, `/proc/self/exe` is
//! the sealed memfd: re-entering it (the entrypoint `/proc/self/exe`) finds
//! no report pipe and stops with exit status 126 and one sentence; opening
//! it for writing is refused by the seals. The runtime's own file is never
//! the exe of anything a container can see. Cost: one memfd per isolab
//! process (a few microseconds) and one exec of 447 bytes per container,
//! inside every measured start.
//!
//! The launcher is x86-64 machine code, assembled from the listing below;
//! the tests run it for every path (success, `execve` failure, re-entry).
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

/// The descriptor the launcher reports an `execve` failure on (and closes
/// at a successful one): the init's report pipe, moved there before the
/// launcher runs.
pub const REPORT_FD: RawFd = 3;

/// Exit status of a launcher started without its report pipe.
pub const REENTRY_STATUS: i32 = 126;

/// What the launcher writes to the report pipe when `execve` fails,
/// followed by the decimal errno and a newline.
pub const FAILURE_PREFIX: &[u8] = b"!exec: errno=";

/// What the launcher writes to stderr when started without the report
/// pipe (re-entered through `/proc/self/exe`, or run by hand).
pub const REENTRY_SENTENCE: &[u8] =
    b"isolab: the launcher was started without isolab's report pipe: refusing\n";

/// Where the launcher is loaded (any page-aligned address above
/// `vm.mmap_min_addr` does; its code is position-independent).
const BASE: u64 = 0x40_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;
/// Two program headers: the code, and PT_GNU_STACK (a non-executable stack).
const HEADERS: usize = EHDR + 2 * PHDR;

// ANCHOR: launcher
/// The launcher's code (`as`, Intel syntax). At entry `rsp` points at
/// argc, then argv[], NULL, envp[], NULL.
///
/// ```text
///  0: mov  rbx, rsp
///  3: mov  eax, 72 ; edi = 3 ; esi = 2 ; edx = 1   fcntl(3, F_SETFD, FD_CLOEXEC)
/// 17: syscall
/// 19: test eax, eax
/// 1b: jnz  refuse (96)                              no report pipe: re-entered
/// 1d: mov  rcx, [rbx]                               argc
/// 20: lea  rsi, [rbx+8]                             argv
/// 24: lea  rdx, [rsi+rcx*8+8]                       envp
/// 29: mov  rdi, [rsi]                               argv[0]
/// 2c: mov  eax, 59 ; syscall                        execve(argv[0], argv, envp)
/// 33: neg  eax ; mov r12d, eax                      it failed: errno
/// 38: write(3, prefix, 13)                          "!exec: errno="
/// 50: sub  rsp, 32 ; lea r8, [rsp+31] ; [r8] = '\n'
/// 5d: eax = errno ; r9d = 10
/// 66: loop: xor edx, edx ; div r9d ; dl += '0' ; dec r8 ; [r8] = dl ; jnz loop
/// 78: write(3, r8, rsp + 32 - r8)                   the digits and '\n'
/// 8f: mov  edi, 127 ; jmp out
/// 96: refuse: write(2, sentence, 72) ; mov edi, 126
/// b3: out: mov eax, 231 ; syscall                   exit_group(edi)
/// ```
const CODE: [u8; 0xba] = [
    0x48, 0x89, 0xe3, 0xb8, 0x48, 0x00, 0x00, 0x00, 0xbf, 0x03, 0x00, 0x00, //
    0x00, 0xbe, 0x02, 0x00, 0x00, 0x00, 0xba, 0x01, 0x00, 0x00, 0x00, 0x0f, //
    0x05, 0x85, 0xc0, 0x75, 0x79, 0x48, 0x8b, 0x0b, 0x48, 0x8d, 0x73, 0x08, //
    0x48, 0x8d, 0x54, 0xce, 0x08, 0x48, 0x8b, 0x3e, 0xb8, 0x3b, 0x00, 0x00, //
    0x00, 0x0f, 0x05, 0xf7, 0xd8, 0x41, 0x89, 0xc4, 0xb8, 0x01, 0x00, 0x00, //
    0x00, 0xbf, 0x03, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x35, 0x71, 0x00, 0x00, //
    0x00, 0xba, 0x0d, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x83, 0xec, 0x20, //
    0x4c, 0x8d, 0x44, 0x24, 0x1f, 0x41, 0xc6, 0x00, 0x0a, 0x44, 0x89, 0xe0, //
    0x41, 0xb9, 0x0a, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x41, 0xf7, 0xf1, 0x80, //
    0xc2, 0x30, 0x49, 0xff, 0xc8, 0x41, 0x88, 0x10, 0x85, 0xc0, 0x75, 0xee, //
    0x48, 0x8d, 0x54, 0x24, 0x20, 0x4c, 0x29, 0xc2, 0x4c, 0x89, 0xc6, 0xbf, //
    0x03, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xbf, //
    0x7f, 0x00, 0x00, 0x00, 0xeb, 0x1d, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xbf, //
    0x02, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x35, 0x20, 0x00, 0x00, 0x00, 0xba, //
    0x48, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xbf, 0x7e, 0x00, 0x00, 0x00, 0xb8, //
    0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05,
];
// ANCHOR_END: launcher

/// The launcher as an ELF file: header, two program headers, the code,
/// then its two strings (the code addresses them relative to itself).
pub fn elf() -> Vec<u8> {
    let len = HEADERS + CODE.len() + FAILURE_PREFIX.len() + REENTRY_SENTENCE.len();
    let mut f = Vec::with_capacity(len);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&(BASE + HEADERS as u64).to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    f.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    let phdr = |f: &mut Vec<u8>, kind: u32, flags: u32, size: u64, align: u64| {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&flags.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
        let addr = if kind == 1 { BASE } else { 0 };
        f.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        f.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        f.extend_from_slice(&size.to_le_bytes()); // p_filesz
        f.extend_from_slice(&size.to_le_bytes()); // p_memsz
        f.extend_from_slice(&align.to_le_bytes());
    };
    // PT_LOAD, read + execute, the whole file at BASE.
    phdr(&mut f, 1, 5, len as u64, 0x1000);
    // PT_GNU_STACK, read + write: the stack is not executable.
    phdr(&mut f, 0x6474_e551, 6, 0, 16);
    f.extend_from_slice(&CODE);
    f.extend_from_slice(FAILURE_PREFIX);
    f.extend_from_slice(REENTRY_SENTENCE);
    debug_assert_eq!(f.len(), len);
    f
}

/// Why no sealed launcher could be made.
#[derive(Debug, thiserror::Error)]
#[error("isolab could not make its sealed launcher ({step}: {source}); on a host with vm.memfd_noexec=2, set it to 0 or 1")]
pub struct LauncherError {
    step: &'static str,
    #[source]
    source: std::io::Error,
}

fn os(step: &'static str) -> LauncherError {
    LauncherError {
        step,
        source: std::io::Error::last_os_error(),
    }
}

/// `MFD_EXEC` (Linux 6.3): an executable memfd even where
/// `vm.memfd_noexec=1` makes memfds non-executable by default.
const MFD_EXEC: libc::c_uint = 0x10;
/// `F_SEAL_EXEC` (Linux 6.3): the mode bits can no longer change.
const F_SEAL_EXEC: libc::c_int = 0x20;

/// Makes a sealed memfd holding the launcher.
fn make() -> Result<OwnedFd, LauncherError> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a static NUL-terminated name.
    let mut fd = unsafe { libc::memfd_create(c"isolab-launcher".as_ptr(), flags | MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // A kernel before 6.3: every memfd is executable.
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(c"isolab-launcher".as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(os("memfd_create"));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(&elf()).map_err(|source| LauncherError {
        step: "write",
        source,
    })?;
    let fd = OwnedFd::from(file);
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS with an integer argument on a memfd we own.
    let sealed = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals | F_SEAL_EXEC) } == 0
        // SAFETY: as above, without F_SEAL_EXEC (unknown before Linux 6.3).
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } == 0;
    if !sealed {
        return Err(os("F_ADD_SEALS"));
    }
    // Above the descriptors a child rearranges (stdio and REPORT_FD), so
    // moving the report pipe to REPORT_FD can never close the launcher.
    // SAFETY: F_DUPFD_CLOEXEC with an integer argument on a descriptor we own.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if high < 0 {
        return Err(os("F_DUPFD_CLOEXEC"));
    }
    // SAFETY: high is a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// This process's sealed launcher, made on first use and kept open
/// (close-on-exec) for every container it starts.
pub fn get() -> Result<RawFd, &'static LauncherError> {
    static LAUNCHER: OnceLock<Result<OwnedFd, LauncherError>> = OnceLock::new();
    LAUNCHER.get_or_init(make).as_ref().map(|fd| fd.as_raw_fd())
}

/// Whether this process's own binary cannot be written through
/// `/proc/self/exe` (it lies on a read-only mount, or is a sealed memfd
/// copy): then a container may exec directly, without the launcher.
pub fn exe_is_protected() -> bool {
    std::fs::read_link("/proc/self/exe")
        .is_ok_and(|p| p.as_os_str().as_encoded_bytes().starts_with(b"/memfd:"))
        || nix::sys::statvfs::statvfs("/proc/self/exe")
            .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// The message for a launcher's `!exec: errno=N` report, if it is one.
pub fn failure_message(program: &str, message: &str) -> Option<String> {
    let errno: i32 = message.strip_prefix("errno=")?.trim().parse().ok()?;
    Some(format!(
        "execve {program}: {}",
        std::io::Error::from_raw_os_error(errno)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn the_code_addresses_its_strings_where_elf_puts_them() {
        // lea rsi, [rip+d] at 0x42 (next instruction 0x49) → the prefix
        // right after the code; at 0xa0 (next 0xa7) → the sentence after it.
        let disp = |at: usize| i32::from_le_bytes(CODE[at + 3..at + 7].try_into().unwrap());
        assert_eq!(0x49 + disp(0x42) as usize, CODE.len());
        assert_eq!(
            0xa7 + disp(0xa0) as usize,
            CODE.len() + FAILURE_PREFIX.len()
        );
        assert_eq!(CODE[0x4a] as usize, FAILURE_PREFIX.len());
        assert_eq!(CODE[0xa8] as usize, REENTRY_SENTENCE.len());
        assert_eq!(CODE[0x04] as i64, libc::SYS_fcntl);
        assert_eq!(CODE[0x09] as RawFd, REPORT_FD);
        assert_eq!(CODE[0xaf] as i32, REENTRY_STATUS);
        assert_eq!(elf().len(), 447);
    }

    /// Runs the launcher with `argv` and a report pipe at REPORT_FD (or
    /// none); returns (status, report, stdout, stderr).
    fn launch(argv: &[&str], with_report: bool) -> (Option<i32>, String, String, String) {
        let fd = get().expect("a launcher can be made here");
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let w_raw = w.as_raw_fd();
        let mut cmd = Command::new(format!("/proc/self/fd/{fd}"));
        cmd.arg0(argv[0]).args(&argv[1..]);
        // SAFETY: dup2 and fcntl in the forked child before exec.
        unsafe {
            cmd.pre_exec(move || {
                if with_report && libc::dup2(w_raw, REPORT_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(w);
        drop(cmd);
        let mut report = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut report).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            report,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn it_runs_the_program_and_closes_the_report_pipe() {
        let (status, report, out, _) = launch(&["/bin/echo", "hello", "there"], true);
        assert_eq!(status, Some(0));
        assert_eq!(out, "hello there\n");
        assert_eq!(
            report, "",
            "a successful exec closes the pipe without a word"
        );
    }

    #[test]
    fn an_exec_failure_is_reported_with_its_errno() {
        let (status, report, _, _) = launch(&["/nonexistent/program"], true);
        assert_eq!(status, Some(127));
        assert_eq!(report, "!exec: errno=2\n");
        let (_, message) = report.trim().split_once(": ").unwrap();
        assert_eq!(
            failure_message("/x", message).unwrap(),
            format!("execve /x: {}", std::io::Error::from_raw_os_error(2))
        );
        let (_, report, _, _) = launch(&["/etc/passwd"], true);
        assert_eq!(report, format!("!exec: errno={}\n", libc::EACCES));
    }

    #[test]
    fn re_entered_it_refuses_with_one_sentence() {
        let (status, report, out, err) = launch(&["/proc/self/exe"], true);
        assert_eq!(status, Some(REENTRY_STATUS));
        assert_eq!((report.as_str(), out.as_str()), ("", ""));
        assert_eq!(err.as_bytes(), REENTRY_SENTENCE);
    }

    #[test]
    fn the_sealed_launcher_cannot_be_written() {
        // A launcher of its own: the shared one may be running in another
        // test (then the open fails with ETXTBSY before the seal is asked).
        let own = make().unwrap();
        let fd = own.as_raw_fd();
        // SAFETY: F_GET_SEALS on a descriptor this process owns.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        assert!(seals & libc::F_SEAL_WRITE != 0 && seals & libc::F_SEAL_SEAL != 0);
        // Opening for writing is allowed; writing and truncating are not.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{fd}"))
            .unwrap();
        let e = f.write_all(b"\x7fELF").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        let e = f.set_len(0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    }
}
