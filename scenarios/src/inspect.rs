//! `inspect`: what the instance looks like from inside. The runtime's
//! integration tests assert on it (pid 1, hostname, interfaces, mounts,
//! capabilities, seccomp, fds); the isolation probes build on it.
use std::fs;

fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    })
}

/// Tries `unshare(CLONE_NEWUTS)`: the errno it fails with, or 0.
fn unshare_errno() -> i32 {
    // Use a child so a success does not change this process.
    // SAFETY: fork/unshare/_exit only.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let r = libc::unshare(libc::CLONE_NEWUTS);
            let e = if r == 0 { 0 } else { *libc::__errno_location() };
            libc::_exit(e);
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        libc::WEXITSTATUS(st)
    }
}

pub fn inspect() -> serde_json::Value {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let interfaces: Vec<String> = fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_owned()))
        .collect();
    let mountinfo: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            format!("{} {}", f.get(4).unwrap_or(&"?"), f.get(3).unwrap_or(&"?"))
        })
        .collect();
    let fds: Vec<String> = fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let target = fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("{}->{}", e.file_name().to_string_lossy(), target)
        })
        .collect();
    serde_json::json!({
        "pid": std::process::id(),
        "hostname": fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
        "uid": fs::read_to_string("/proc/self/uid_map").unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" "),
        "interfaces": interfaces,
        "lo_flags": fs::read_to_string("/sys/class/net/lo/flags").unwrap_or_default().trim(),
        "mounts": mountinfo,
        "cap_eff": status_field(&status, "CapEff"),
        "cap_bnd": status_field(&status, "CapBnd"),
        "seccomp": status_field(&status, "Seccomp"),
        "no_new_privs": status_field(&status, "NoNewPrivs"),
        "fds": fds,
        "unshare_errno": unshare_errno(),
        "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
