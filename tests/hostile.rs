//! Hostile instances: each test is an attack on the host from inside a
//! container (or through the lab's own verbs), and what must hold.
//! Needs root; skips loudly without it (fails under CI=true).
mod common;
use common::*;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `isolab` with this test's home.
fn cmd(home: &tempfile::TempDir) -> std::process::Command {
    let mut c = isolab();
    c.env("ISOLAB_HOME", home.path());
    c
}

/// A home whose default image is built (so no test's timing includes it).
fn ready_home() -> tempfile::TempDir {
    let h = home();
    let o = cmd(&h).args(["image", "build"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    h
}

/// Waits for a child with a bound; kills it and fails past the bound.
fn wait_bounded(
    mut child: std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn probe(result_line: &str, name: &str) -> Value {
    let v: Value = serde_json::from_str(result_line.trim_start_matches("@isolab ")).unwrap();
    v["data"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no probe {name} in {result_line}"))
}

/// TIOCSTI: a foreground container run from a terminal cannot type into
/// it (it gets its own session and pipes, not the user's terminal).
#[test]
fn a_container_cannot_type_into_the_users_terminal() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave;
    let fd = |f: &std::os::fd::OwnedFd| Stdio::from(f.try_clone().unwrap());
    let mut c = cmd(&h);
    c.args(["run", "--raw", "--scenario", "probes"])
        .stdin(fd(&slave))
        .stdout(fd(&slave))
        .stderr(fd(&slave));
    // SAFETY: in the child before exec: a new session whose controlling
    // terminal is the pty, as a login shell's would be.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    // Only the child may hold the terminal's slave now, so the master
    // reads EOF when it is done.
    drop(c);
    drop(slave);
    // Read the terminal's output while isolab runs.
    let master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut m = master;
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut m, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let out = wait_bounded(
        child,
        Duration::from_secs(60),
        "isolab run --scenario probes",
    );
    assert!(out.status.success(), "{:?}", out.status);
    let text = reader.join().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("@isolab {"))
        .unwrap_or_else(|| panic!("no result line on the terminal: {text}"));
    let p = probe(line, "terminal_injection");
    assert_eq!(p["verdict"], "isolated", "{p}");
    let p = probe(line, "stdio_kind");
    assert_eq!(p["verdict"], "isolated", "{p}");
    let p = probe(line, "inherited_fds");
    assert_eq!(p["verdict"], "isolated", "{p}");
}

/// A container cannot rewrite the host files given to isolab as its
/// stdin or stdout by reopening them through /proc/1/fd.
#[test]
fn a_container_cannot_reopen_the_hosts_stdio_files() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let dir = home();
    let input = dir.path().join("input");
    let log = dir.path().join("log");
    std::fs::write(&input, "KEEP-IN\n").unwrap();
    std::fs::write(&log, "KEEP-OUT\n").unwrap();
    let o = cmd(&h)
        .args([
            "run",
            "--",
            "/bin/sh",
            "-c",
            "echo pwned > /proc/1/fd/0; : > /proc/1/fd/1; : > /proc/1/fd/2; echo after",
        ])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "KEEP-IN\n");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "KEEP-OUT\nafter\n");
}

/// The home is private: a setuid file in an image or a writable layer is
/// out of reach of other local users, and so are logs.
#[test]
fn setuid_files_and_logs_are_out_of_other_users_reach() {
    if !require("root", is_root()) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let h = ready_home();
    let o = cmd(&h)
        .args([
            "run",
            "-d",
            "--name",
            "s",
            "--",
            "/bin/sh",
            "-c",
            "cp /bin/busybox /suid; chmod 4755 /suid; echo secret; sleep 30",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    for sub in ["layers", "blobs", "containers"] {
        let mode = std::fs::metadata(h.path().join(sub))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{sub} is {mode:o}");
    }
    let log = h.path().join("containers").join(&id).join("log");
    for _ in 0..100 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("secret")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o077,
        0
    );
    let suid = h.path().join("containers").join(&id).join("fs/upper/suid");
    assert!(suid.exists(), "the writable layer holds the setuid copy");
    // As nobody: neither the setuid file nor the log can be reached.
    for target in [&suid, &log] {
        let o = std::process::Command::new("/bin/ls")
            .arg("-l")
            .arg(target)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(!o.status.success(), "nobody reached {}", target.display());
    }
    assert!(cmd(&h).args(["rm", "-f", "s"]).status().unwrap().success());
}

/// `prune` in one home leaves another home's running containers alone.
#[test]
fn prune_in_one_home_spares_another_homes_containers() {
    if !require("root", is_root()) {
        return;
    }
    let (a, b) = (ready_home(), home());
    let o = cmd(&a)
        .args([
            "run",
            "-d",
            "--name",
            "keep",
            "--scenario",
            "idle",
            "--param",
            "hold_ms=30000",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cmd(&b).arg("prune").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ps = stdout(&cmd(&a).arg("ps").output().unwrap());
    assert!(ps.contains("keep") && ps.contains("running"), "{ps}");
    assert!(cmd(&a)
        .args(["rm", "-f", "keep"])
        .status()
        .unwrap()
        .success());
}

/// Output that is not UTF-8, more than a pipe holds, neither hangs nor
/// truncates the report.
#[test]
fn a_binary_flood_does_not_hang_the_harness() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let child = cmd(&h)
        .args([
            "run",
            "--json",
            "--",
            "/bin/sh",
            "-c",
            "head -c 1000000 /dev/urandom; echo; echo end",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_bounded(
        child,
        Duration::from_secs(60),
        "run --json with a binary flood",
    );
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stderr(&o)));
    assert_eq!(v["exit_code"], 0, "{v}");
}

/// Signal dispositions do not leak in: `yes | head` ends (SIGPIPE is not
/// ignored in the container), and pid 1 starts with nothing ignored or
/// blocked, whatever isolab's own dispositions (pid 1 is grep here: a
/// shell would set its own).
#[test]
fn sigpipe_works_inside() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let run = |args: &[&str], what: &str| {
        let mut c = cmd(&h);
        c.arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: in the child before exec: isolab itself starts with
        // SIGQUIT ignored, as a background job would.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                Ok(())
            });
        }
        wait_bounded(c.spawn().unwrap(), Duration::from_secs(30), what)
    };
    let o = run(
        &["--", "/bin/sh", "-c", "yes | head -c 100 > /dev/null"],
        "yes | head inside a container",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        &[
            "--",
            "/bin/grep",
            "-E",
            "SigIgn|SigBlk",
            "/proc/self/status",
        ],
        "grep inside a container",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("SigIgn:\t0000000000000000") && out.contains("SigBlk:\t0000000000000000"),
        "{out}"
    );
}

/// A container whose pid 1 changes user (which clears the parent-death
/// signal) and outlives its owner is still stopped by `stop`: the lab acts
/// on its cgroup, not on a remembered pid.
#[test]
fn a_container_that_outlives_its_owner_is_still_stopped() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let o = cmd(&h)
        .args([
            "run",
            "-d",
            "--name",
            "orphan",
            "--",
            "/bin/sh",
            "-c",
            "exec su nobody -s /bin/sh -c 'sleep 61'",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    let state: Value = serde_json::from_slice(
        &std::fs::read(h.path().join("containers").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let (owner, pid) = (
        state["owner_pid"].as_i64().unwrap() as i32,
        state["pid"].as_i64().unwrap() as i32,
    );
    // The user switch happens inside: wait until pid 1 runs as nobody.
    for _ in 0..100 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) of the shim this test started.
    unsafe { libc::kill(owner, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    let alive = |p: i32| std::path::Path::new(&format!("/proc/{p}")).exists();
    assert!(
        alive(pid),
        "the attack needs the container to outlive its owner"
    );
    let ps = stdout(&cmd(&h).args(["ps", "-a"]).output().unwrap());
    assert!(ps.contains("dead"), "{ps}");
    let o = cmd(&h).args(["stop", "orphan"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for _ in 0..100 {
        if !alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "stop left the orphaned container running");
    assert!(cmd(&h).args(["rm", "orphan"]).status().unwrap().success());
}

/// Names and paths that would hurt are refused in one sentence, leaving
/// nothing behind.
#[test]
fn hostile_names_and_paths_are_refused() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let long = "x".repeat(200);
    for (args, want) in [
        (vec!["rm", ""], "give a name"),
        (vec!["run", "--hostname", "a\nb"], "invalid hostname"),
        (
            vec!["run", "--name", long.as_str()],
            "invalid container name",
        ),
        (
            vec!["run", "-v", "/tmp:/proc", "--", "/bin/true"],
            "would cover the kernel's /proc",
        ),
        (
            vec!["run", "-v", "/tmp:/sys/fs", "--", "/bin/true"],
            "would cover the kernel's /proc",
        ),
        (
            vec!["run", "--backend", "microvm", "--kernel", "/boot/x"],
            "--guest linux",
        ),
    ] {
        let o = cmd(&h).args(&args).output().unwrap();
        assert!(!o.status.success(), "{args:?} was accepted");
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(h.path().join("containers"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// Ctrl-C on a foreground run reaches the instance; a second one ends it;
/// either way isolab cleans up instead of dying and leaving state.
#[test]
fn ctrl_c_on_a_foreground_run_leaves_nothing() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let child = cmd(&h)
        .args(["run", "--", "/bin/sh", "-c", "sleep 30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let dir = h.path().join("containers");
    let running = || {
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("state.json"))
                    .unwrap_or_default()
                    .contains("\"running\"")
            })
    };
    let t = Instant::now();
    while !running() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(running(), "the instance never ran");
    for _ in 0..2 {
        // SAFETY: kill(2) of the isolab this test started.
        unsafe { libc::kill(pid, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = wait_bounded(child, Duration::from_secs(10), "isolab after two Ctrl-C");
    assert_eq!(o.status.code(), Some(137), "{:?} {}", o.status, stderr(&o));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A killed isolab takes its microVM's monitor with it.
#[test]
fn a_killed_isolab_leaves_no_monitor_running() {
    if !require("root", is_root()) || !require("/dev/kvm", has_kvm()) {
        return;
    }
    let h = home();
    let mut child = cmd(&h)
        .args([
            "run",
            "--backend",
            "microvm",
            "--scenario",
            "spin",
            "--param",
            "n=4000000001",
            "--timeout",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let monitor = || {
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let is = c.windows(19).any(|w| w == b"isolab.n=4000000001");
            is.then(|| e.file_name().to_string_lossy().into_owned())
        })
    };
    let t = Instant::now();
    while monitor().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let vmm = monitor().expect("the monitor never started");
    // The harness started it in a cgroup of its own, limited to the
    // guest's RAM (64 MiB) plus the stated overhead.
    let cgroup = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    let memory_dir = cgroup
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            match ctl {
                "memory" => Some(format!("/sys/fs/cgroup/memory{path}")),
                "" if !cgroup.contains(":memory:") => Some(format!("/sys/fs/cgroup{path}")),
                _ => None,
            }
        })
        .expect("the monitor is in a memory cgroup");
    assert!(memory_dir.contains("/isolab/"), "{memory_dir}");
    let limit_file = ["memory.limit_in_bytes", "memory.max"]
        .iter()
        .map(|f| format!("{memory_dir}/{f}"))
        .find(|p| std::path::Path::new(p).exists())
        .unwrap();
    let limit: u64 = std::fs::read_to_string(&limit_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        limit,
        (64 << 20) + isolab_lab::backends::monitor_cgroup::OVERHEAD_BYTES
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The guest would spin for many seconds: only the parent-death signal
    // (re-armed by the jail, which changes the monitor's user) ends it
    // this soon.
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{vmm}")).exists()
        && t.elapsed() < Duration::from_secs(1)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A zombie (dead, awaiting its reaper) is gone as far as a VM goes.
    let state = std::fs::read_to_string(format!("/proc/{vmm}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "isolab-vmm outlived the isolab that ran it: {state}"
    );
    // What the killed isolab could not remove, prune does.
    let o = cmd(&h).arg("prune").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !std::path::Path::new(&memory_dir).exists(),
        "prune left {memory_dir}"
    );
}

/// CVE-2019-5736: an entrypoint that leads back to `/proc/self/exe` (here
/// through a `#!` line) finds isolab's sealed launcher there, not the
/// host's isolab binary, and the launcher refuses to run again.
#[test]
fn an_entrypoint_leading_back_to_proc_self_exe_cannot_reach_isolab() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let dir = home();
    let layer = dir.path().join("evil");
    std::fs::create_dir(&layer).unwrap();
    std::fs::write(layer.join("evil"), "#!/proc/self/exe\n").unwrap();
    std::fs::set_permissions(
        layer.join("evil"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let tar = dir.path().join("evil.tar");
    let o = std::process::Command::new("tar")
        .arg("-C")
        .arg(&layer)
        .arg("-cf")
        .arg(&tar)
        .arg("evil")
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = cmd(&h)
        .args(["image", "import", "evil"])
        .arg(&tar)
        .args(["--entrypoint", "/evil"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_isolab"));
    let before = std::fs::read(&exe).unwrap();
    let o = cmd(&h).args(["run", "--image", "evil"]).output().unwrap();
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the launcher was started without isolab's report pipe: refusing"),
        "{}",
        stderr(&o)
    );
    assert!(
        std::fs::read(&exe).unwrap() == before,
        "isolab's binary changed"
    );
}

/// `image rm` then `prune` frees the image's layers, but never under a
/// living instance of it.
#[test]
fn prune_frees_the_layers_of_removed_images_but_not_in_use() {
    if !require("root", is_root()) {
        return;
    }
    let h = ready_home();
    let layers = |h: &tempfile::TempDir| {
        std::fs::read_dir(h.path().join("layers"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    };
    // A second image: the default one's layers plus one of its own.
    let dir = home();
    let tar = dir.path().join("extra.tar");
    let o = std::process::Command::new("tar")
        .args(["-C", "/etc", "-cf"])
        .arg(&tar)
        .arg("hostname")
        .output()
        .unwrap();
    assert!(o.status.success());
    let default_layers: Vec<String> = serde_json::from_str::<Value>(
        &std::fs::read_to_string(h.path().join("images/default.json")).unwrap(),
    )
    .unwrap()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            h.path()
                .join("blobs")
                .join(l.as_str().unwrap())
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec!["image".to_owned(), "import".into(), "extra".into()];
    args.extend(default_layers);
    args.push(tar.display().to_string());
    args.extend(["--entrypoint".into(), "/isolab-agent".into()]);
    let o = cmd(&h).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let before = layers(&h);
    // In use: a detached instance of it.
    let o = cmd(&h)
        .args([
            "run",
            "-d",
            "--name",
            "user",
            "--image",
            "extra",
            "--scenario",
            "idle",
            "--param",
            "hold_ms=30000",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cmd(&h)
        .args(["image", "rm", "extra"])
        .status()
        .unwrap()
        .success());
    assert!(cmd(&h).arg("prune").status().unwrap().success());
    assert_eq!(
        layers(&h),
        before,
        "prune freed layers a running instance uses"
    );
    assert!(cmd(&h)
        .args(["rm", "-f", "user"])
        .status()
        .unwrap()
        .success());
    let o = cmd(&h).arg("prune").output().unwrap();
    assert!(stdout(&o).contains("layer "), "{}", stdout(&o));
    assert_eq!(
        layers(&h),
        before - 1,
        "the image's own layer is freed, the shared ones kept"
    );
    // The default image still runs.
    assert!(cmd(&h)
        .args(["run", "--json"])
        .output()
        .unwrap()
        .status
        .success());
}

/// The monitor is jailed before the guest runs (Firecracker's jailer's
/// way): seen from outside while a guest spins, it is `nobody` with no
/// capability, no_new_privs and a seccomp filter, in a mount namespace of
/// its own whose root is empty; `--no-jail` is root, for comparison.
#[test]
fn the_monitor_is_jailed_before_the_guest_runs() {
    if !require("root", is_root()) || !require("/dev/kvm", has_kvm()) {
        return;
    }
    let vmm = std::path::Path::new(env!("CARGO_BIN_EXE_isolab")).with_file_name("isolab-vmm");
    let status_of = |extra: &[&str]| {
        let mut child = std::process::Command::new(&vmm)
            .args(["--cmdline", "isolab.scenario=hang", "--timeout", "20"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // The jail is entered before the first guest instruction; a
        // hanging guest means the monitor is past it.
        let t = Instant::now();
        let mut status = String::new();
        while t.elapsed() < Duration::from_secs(10) {
            status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.count())
                .unwrap_or(0);
            if threads > 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let root_entries: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let own_mnt_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
            != std::fs::read_link("/proc/self/ns/mnt").ok();
        child.kill().unwrap();
        let o = child.wait_with_output().unwrap();
        (status, root_entries, own_mnt_ns, stderr(&o))
    };
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let (status, root, own_ns, err) = status_of(&[]);
    assert_eq!(field(&status, "Uid:"), "65534 65534 65534 65534", "{err}");
    assert_eq!(field(&status, "Gid:"), "65534 65534 65534 65534");
    assert_eq!(field(&status, "Groups:"), "");
    assert_eq!(field(&status, "CapEff:"), "0000000000000000");
    assert_eq!(field(&status, "CapPrm:"), "0000000000000000");
    assert_eq!(field(&status, "NoNewPrivs:"), "1");
    assert_eq!(
        field(&status, "Seccomp:"),
        "2",
        "a seccomp filter is in force"
    );
    assert!(own_ns, "the monitor has its own mount namespace");
    assert!(root.is_empty(), "the monitor's root is empty: {root:?}");

    // A call outside the allow-list ends the monitor, in one sentence
    // naming it (getuid is 102 on x86-64).
    let o = std::process::Command::new(&vmm)
        .args(["--cmdline", "isolab.scenario=startup"])
        .env("ISOLAB_VMM_JAIL_SELFTEST", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "isolab-vmm: the jail refused system call 102; this is a monitor bug: report it (--no-jail confirms)\n"
    );
    assert!(o.stdout.is_empty(), "no report after a refused call");

    let (status, _, own_ns, _) = status_of(&["--no-jail"]);
    assert_eq!(field(&status, "Uid:"), "0 0 0 0");
    assert_eq!(field(&status, "Seccomp:"), "0");
    assert!(!own_ns);
}

/// A hostile no-OS guest hammers every port below 0x1000 and the virtio
/// windows (random registers and values, handshakes with random rings:
/// descriptor loops, jumping indices, aliased buffers, rings outside
/// memory), under the jail. The monitor answers or resets the device,
/// never panics or trips its jail, stays within its bound, and the disk
/// file keeps its size.
#[test]
fn a_hostile_guest_hammering_ports_and_virtio_cannot_break_the_monitor() {
    if !require("root", is_root()) || !require("/dev/kvm", has_kvm()) {
        return;
    }
    let vmm = std::path::Path::new(env!("CARGO_BIN_EXE_isolab")).with_file_name("isolab-vmm");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0x5au8; 1 << 20]).unwrap();
    let mut request_errors = 0;
    for seed in 1..=4 {
        let o = std::process::Command::new(&vmm)
            .args([
                "--disk",
                disk.to_str().unwrap(),
                "--mem",
                "64",
                "--timeout",
                "60",
            ])
            .args([
                "--cmdline",
                &format!("isolab.scenario=hostile-io isolab.seed={seed}"),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "seed {seed}: {}", stderr(&o));
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["stop"]["kind"], "reset", "seed {seed}: {r}");
        assert_eq!(r["exit_code"], 0, "seed {seed}");
        let result = r["result"].as_str().unwrap();
        assert!(result.contains("\"ok\":true"), "seed {seed}: {result}");
        assert!(result.contains("\"port_accesses\":8188"), "{result}");
        let rss = r["process_peak_rss_bytes"].as_u64().unwrap();
        assert!(
            rss < 64 << 20,
            "seed {seed}: the monitor grew to {rss} bytes"
        );
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 20);
        request_errors += r["disks"][0]["errors"].as_u64().unwrap();
    }
    // The garbage reached the request path, not only the registers.
    assert!(request_errors > 0, "no request was ever processed");
}
