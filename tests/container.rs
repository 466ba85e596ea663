//! Issue 3: the container runtime, proved from inside real containers.
//! Needs root; skips loudly without it (fails under CI=true).
mod common;
use common::*;
use serde_json::Value;

fn run_json(home: &tempfile::TempDir, args: &[&str]) -> (Value, std::process::Output) {
    let out = isolab()
        .args(["run", "--json"])
        .args(args)
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(&out), stderr(&out)));
    (v, out)
}

/// Nothing of an instance may outlive it: no instance dir, no cgroup.
fn assert_no_leftovers(home: &tempfile::TempDir) {
    let dir = home.path().join("containers");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "instance dirs left behind: {left:?}");
}

/// Whether instance `id`'s cgroup (`<home tag>-<id>` under the lab's
/// parent, in any hierarchy) exists.
fn cgroup_exists(id: &str) -> bool {
    [
        "/sys/fs/cgroup/memory/isolab",
        "/sys/fs/cgroup/pids/isolab",
        "/sys/fs/cgroup/isolab",
    ]
    .iter()
    .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
    .any(|e| e.file_name().to_string_lossy().ends_with(&format!("-{id}")))
}

#[test]
fn the_cgroup_check_sees_a_running_instance() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let o = isolab()
        .args([
            "run",
            "-d",
            "--scenario",
            "idle",
            "--param",
            "hold_ms=20000",
        ])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    assert!(cgroup_exists(&id), "a running instance has its cgroup");
    let rm = isolab()
        .args(["rm", "-f", &id])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(!cgroup_exists(&id));
}

#[test]
fn inside_view_is_isolated() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let (v, out) = run_json(&home, &["--scenario", "inspect", "--hostname", "labbox"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = &v["result"]["data"];
    assert_eq!(
        d["pid"], 1,
        "the agent must be pid 1 of its own pid namespace"
    );
    assert_eq!(d["hostname"], "labbox");
    assert_eq!(d["interfaces"], serde_json::json!(["lo"]), "only loopback");
    // No host mount is visible: every mount point is the root or one the
    // runtime made.
    for m in d["mounts"].as_array().unwrap() {
        let mp = m.as_str().unwrap().split(' ').next().unwrap();
        assert!(
            mp == "/"
                || mp.starts_with("/proc")
                || mp.starts_with("/dev")
                || mp.starts_with("/sys"),
            "unexpected mount {mp} in {:?}",
            d["mounts"]
        );
    }
    // Docker's default capability set, as documented in DEFAULT_CAPS:
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT AUDIT_WRITE SETFCAP (no MKNOD: see DEFAULT_CAPS).
    assert_eq!(d["cap_eff"], "00000000a00425fb");
    assert_eq!(d["cap_bnd"], "00000000a00425fb");
    assert_eq!(d["seccomp"], "2", "seccomp filter mode");
    assert_eq!(d["no_new_privs"], "1");
    assert_eq!(
        d["unshare_errno"],
        libc::EPERM,
        "a blocked syscall returns EPERM"
    );
    // Only stdio (and the fd that read /proc/self/fd) are open.
    let fds: Vec<String> = d["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    let extra: Vec<&String> = fds
        .iter()
        .filter(|f| {
            !["0->", "1->", "2->"].iter().any(|p| f.starts_with(p))
                && !f.contains("/proc/")
                && !f.contains("fd")
        })
        .collect();
    assert!(extra.is_empty() && fds.len() <= 4, "leaked fds: {fds:?}");
    assert_eq!(
        d["kernel"].as_str().unwrap(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim(),
        "a container shares the host kernel"
    );
    // Marks in order, phases present.
    let names: Vec<&str> = v["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "launch",
            "clone",
            "network",
            "rootfs",
            "cgroup",
            "mounts",
            "pivot_root",
            "seccomp",
            "exec",
            "ready",
            "exit"
        ]
    );
    assert!(v["launch_to_ready_ns"].as_u64().unwrap() > 0);
    assert!(v["memory_bytes"]["cgroup_peak"].as_u64().unwrap() > 0);
    assert!(
        !cgroup_exists(v["instance"].as_str().unwrap()),
        "cgroup must be removed"
    );
    assert_no_leftovers(&home);
}

#[test]
fn user_namespace_mode_maps_root_away() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    // The mapped root must be able to reach the layers (a 0700 temp dir
    // would stop it, as it would stop any unprivileged user).
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (v, out) = run_json(&home, &["--scenario", "inspect", "--userns"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(v["result"]["data"]["uid"], "0 100000 65536");
    // Root inside, with the default set — of the user namespace only.
    assert_eq!(v["result"]["data"]["cap_eff"], "00000000a00425fb");
    // Still cannot make namespaces: seccomp stops it.
    assert_eq!(v["result"]["data"]["unshare_errno"], libc::EPERM);
    let names: Vec<&str> = v["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"uid_map"), "{names:?}");
    assert_no_leftovers(&home);
}

#[test]
fn exit_code_is_propagated() {
    if !require("root", is_root())
        || !require(
            "busybox-static",
            std::path::Path::new("/bin/busybox").exists(),
        )
    {
        return;
    }
    let home = home();
    let out = isolab()
        .args([
            "run",
            "--",
            "/bin/sh",
            "-c",
            "echo hi from $(hostname); exit 7",
        ])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("hi from "));
    assert_no_leftovers(&home);
}

#[test]
fn memory_limit_is_enforced_and_reported() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let (v, out) = run_json(
        &home,
        &[
            "--memory",
            "16M",
            "--scenario",
            "memory",
            "--param",
            "mib=64",
        ],
    );
    assert_eq!(v["oom_killed"], true, "{v}");
    assert_eq!(v["exit_code"], 137);
    assert_eq!(out.status.code(), Some(137));
    assert!(v["memory_bytes"]["cgroup_peak"].as_u64().unwrap() <= 16 << 20);
    assert_no_leftovers(&home);
}

#[test]
fn bad_inputs_fail_cleanly() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let o = isolab()
        .args(["run", "--", "/no/such/program"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("entrypoint /no/such/program does not exist in image default"),
        "{}",
        stderr(&o)
    );
    let o = isolab()
        .args(["run", "--memory", "1M"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("too small for an instance to start"),
        "{}",
        stderr(&o)
    );
    let o = isolab()
        .args(["run", "--memory", "lots"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("k, M or G"), "{}", stderr(&o));
    // A corrupt layer is refused and leaves the store clean.
    let bad = home.path().join("bad.tar");
    std::fs::write(&bad, b"definitely not a tar archive".repeat(30)).unwrap();
    let o = isolab()
        .args(["image", "import", "bad", bad.to_str().unwrap()])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a valid tar archive"),
        "{}",
        stderr(&o)
    );
    let layers: Vec<_> = std::fs::read_dir(home.path().join("layers"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(
        layers.len(),
        2,
        "only the default image's two layers: {layers:?}"
    );
    assert_no_leftovers(&home);
}

#[test]
fn detached_lifecycle_ps_logs_stop_rm() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let h = home.path().to_str().unwrap();
    let cmd = |args: &[&str]| isolab().args(args).env("ISOLAB_HOME", h).output().unwrap();
    let o = cmd(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        "--scenario",
        "idle",
        "--param",
        "hold_ms=30000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(id.len(), 12);
    let ps = stdout(&cmd(&["ps"]));
    assert!(ps.contains("sleeper") && ps.contains("running"), "{ps}");
    // The hold line reaches the log.
    let mut seen = false;
    for _ in 0..100 {
        if stdout(&cmd(&["logs", "--raw", "sleeper"])).contains("@isolab-hold") {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(seen, "logs never showed the hold line");
    let o = cmd(&["rm", "sleeper"]);
    assert!(
        stderr(&o).contains("is running: stop it first"),
        "{}",
        stderr(&o)
    );
    // A long grace period: the agent, PID 1 inside, handles SIGTERM, so
    // stop ends it with SIGTERM (143), not the SIGKILL after the timeout.
    let o = cmd(&["stop", "-t", "60", "sleeper"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ps = stdout(&cmd(&["ps", "-a"]));
    assert!(ps.contains("exited (143)"), "{ps}");
    assert!(!cgroup_exists(&id));
    assert!(cmd(&["rm", "sleeper"]).status.success());
    assert!(!stdout(&cmd(&["ps", "-a"])).contains("sleeper"));
    assert_no_leftovers(&home);
}

#[test]
fn sigkill_mid_run_leaves_nothing_prune_cannot_clean() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    // The image first: building it (debug build, a loaded host) must not
    // eat the time the test waits for the instance to run.
    let o = isolab()
        .args(["image", "build"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut child = isolab()
        .args(["run", "--scenario", "idle", "--param", "hold_ms=20000"])
        .env("ISOLAB_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the instance is running.
    let dir = home.path().join("containers");
    let mut id = None;
    for _ in 0..200 {
        if let Some(e) = std::fs::read_dir(&dir)
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|e| e.ok())
        {
            let st = std::fs::read_to_string(e.path().join("state.json")).unwrap_or_default();
            if st.contains("\"running\"") {
                id = Some(e.file_name().to_string_lossy().into_owned());
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let id = id.expect("instance never reached running");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The container dies with isolab (PR_SET_PDEATHSIG), before any prune.
    let agent_alive = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            c.starts_with(b"/isolab-agent\0") && c.windows(14).any(|w| w == b"hold_ms=20000\0")
        })
    };
    let mut gone = false;
    for _ in 0..100 {
        if !agent_alive() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone, "the container outlived a SIGKILLed isolab");
    let ps = stdout(
        &isolab()
            .args(["ps", "-a"])
            .env("ISOLAB_HOME", home.path())
            .output()
            .unwrap(),
    );
    assert!(ps.contains("dead"), "{ps}");
    let o = isolab()
        .arg("prune")
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&id), "{}", stdout(&o));
    assert!(!cgroup_exists(&id), "prune must remove the cgroup");
    assert_no_leftovers(&home);
}

#[test]
fn peers_run_the_same_agent() {
    if !require("root", is_root()) {
        return;
    }
    for peer in ["crun", "runc"] {
        let installed = std::process::Command::new(peer)
            .arg("--version")
            .output()
            .is_ok();
        if !require(peer, installed) {
            continue;
        }
        let home = home();
        let (v, out) = run_json(&home, &["--backend", peer, "--scenario", "inspect"]);
        assert!(out.status.success(), "{peer}: {}", stderr(&out));
        assert_eq!(v["backend"], peer);
        let d = &v["result"]["data"];
        assert_eq!(d["pid"], 1);
        assert_eq!(d["seccomp"], "2");
        assert_eq!(
            d["cap_bnd"], "00000000a00425fb",
            "{peer} gets the same capability set"
        );
        assert!(v["launch_to_ready_ns"].as_u64().unwrap() > 0);
    }
}

#[test]
fn probes_report_the_expected_differences_from_the_host() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let out = isolab()
        .args(["probes", "--json"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["container"];
    assert!(c.as_object().unwrap().len() >= 25, "at least 25 probes");
    for (probe, want) in [
        ("own_pid_1", "isolated"),
        ("hostname", "isolated"),
        ("network_interfaces", "isolated"),
        ("host_mounts_visible", "isolated"),
        ("kernel_shared", "exposed"),
        ("meminfo_total", "exposed"),
        ("mount", "isolated"),
        ("init_module", "isolated"),
        ("clock_settime", "isolated"),
        ("mknod_block_device", "isolated"),
        ("seccomp_filter", "isolated"),
        ("reachable_syscalls", "exposed"),
    ] {
        assert_eq!(c[probe]["verdict"], want, "container {probe}: {}", c[probe]);
    }
    // A VM has its own kernel.
    if has_kvm() {
        assert_eq!(v["microvm"]["kernel_shared"]["verdict"], "isolated");
        assert_eq!(
            v["microvm"]["cpu_vulnerabilities"]["verdict"], "exposed",
            "shared hardware in both worlds"
        );
    }
    assert_no_leftovers(&home);
}

#[test]
fn volumes_bind_host_paths_read_write_or_read_only() {
    if !require("root", is_root())
        || !require(
            "busybox-static",
            std::path::Path::new("/bin/busybox").exists(),
        )
    {
        return;
    }
    let home = home();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("in"), b"from the host").unwrap();
    let rw = format!("{}:/data", shared.path().display());
    let out = isolab()
        .args(["run", "-v", &rw, "--", "/bin/sh", "-c"])
        .arg("cat /data/in; echo from the container > /data/out")
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from the host");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("out")).unwrap(),
        "from the container\n"
    );
    // Read-only: the write fails inside, the host file is untouched.
    let ro = format!("{}:/data:ro", shared.path().display());
    let out = isolab()
        .args([
            "run",
            "-v",
            &ro,
            "--",
            "/bin/sh",
            "-c",
            "echo x > /data/out",
        ])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(shared.path().join("out")).unwrap(),
        "from the container\n"
    );
    // A single file, at a path the image does not have.
    let file = format!("{}:/srv/in.txt:ro", shared.path().join("in").display());
    let out = isolab()
        .args(["run", "-v", &file, "--", "/bin/cat", "/srv/in.txt"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "from the host", "{}", stderr(&out));
    // Through a symlink of the image (/bin/sh -> busybox): refused.
    let escape = format!("{}:/bin/sh/x", shared.path().display());
    let out = isolab()
        .args(["run", "-v", &escape, "--", "/bin/true"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("goes through a symlink"),
        "{}",
        stderr(&out)
    );
    // Bad specs and VMs: one sentence each.
    for (args, want) in [
        (
            vec!["run", "-v", "/nonexistent-isolab:/a"],
            "does not exist",
        ),
        (
            vec!["run", "-v", "/tmp:relative"],
            "not a usable absolute path",
        ),
        (
            vec!["run", "--backend", "microvm", "-v", "/tmp:/a"],
            "a VM has no host filesystem to share",
        ),
    ] {
        let out = isolab()
            .args(&args)
            .env("ISOLAB_HOME", home.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    assert_no_leftovers(&home);
    // The peers get the same bind, as an OCI mount.
    for peer in ["crun", "runc"] {
        let installed = std::process::Command::new(peer)
            .arg("--version")
            .output()
            .is_ok();
        if !require(peer, installed) {
            continue;
        }
        let (v, out) = run_json(
            &home,
            &[
                "--backend",
                peer,
                "--scenario",
                "disk-read",
                "-v",
                &format!("{}:/dev/vda:ro", shared.path().join("in").display()),
            ],
        );
        assert!(out.status.success(), "{peer}: {}", stderr(&out));
        assert_eq!(v["result"]["data"]["bytes"], 13, "{peer}");
    }
}

#[test]
fn bench_without_e2fsprogs_skips_disk_read_once_and_says_why() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let results = home.path().join("results");
    let out = isolab()
        .args([
            "bench",
            "--backends",
            "container",
            "--scenarios",
            "disk-read,startup",
        ])
        .args(["--repetitions", "2", "--warmup", "0", "--results"])
        .arg(&results)
        // No mkfs.ext4 on this PATH.
        .env("PATH", "/nonexistent")
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.matches("the disk-read scenario is skipped: mkfs.ext4 is not installed")
            .count(),
        1,
        "{err}"
    );
    assert!(
        !err.contains("repetition"),
        "no per-repetition failures: {err}"
    );
    assert!(
        stdout(&out).contains("startup  launch_to_exit"),
        "{}",
        stdout(&out)
    );
}

/// Issue 18: gVisor as a peer — a third boundary: a user-space kernel
/// between the same agent and the host's kernel.
#[test]
fn gvisor_runs_the_same_agent_behind_its_own_kernel() {
    if !require("root", is_root())
        || !require(
            "runsc (apt-get install runsc)",
            std::process::Command::new("runsc")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        )
    {
        return;
    }
    let home = home();
    for scenario in ["startup", "syscall", "file-io", "net-loopback"] {
        let (v, out) = run_json(&home, &["--backend", "gvisor", "--scenario", scenario]);
        assert!(out.status.success(), "{scenario}: {}", stderr(&out));
        assert_eq!(v["result"]["ok"], true, "{scenario}: {v}");
        // Its clock is the Sentry's: no ready on the host's timeline, and
        // the report says why.
        assert!(v["launch_to_ready_ns"].is_null(), "{v}");
        assert!(v["launch_to_exit_ns"].as_u64().unwrap() > 0);
        assert!(v["notes"][0].as_str().unwrap().contains("Sentry"), "{v}");
    }
    let (v, _) = run_json(&home, &["--backend", "gvisor", "--scenario", "inspect"]);
    assert_eq!(v["result"]["data"]["pid"], 1);
    // The probes see a kernel that is not the host's.
    let out = isolab()
        .args(["probes", "--json"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &m["gvisor"];
    assert_eq!(g["kernel_shared"]["verdict"], "isolated", "{g}");
    assert_ne!(
        g["kernel_version"]["value"],
        m["container"]["kernel_version"]["value"]
    );
    // Nothing left: the peer's state and bundles go with the run.
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("peers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("isolab-gvisor-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Issue 18: bubblewrap as a peer, the floor of a process sandbox: the
/// same agent runs, and the probes show what a runtime's other work buys.
#[test]
fn bwrap_runs_the_same_agent_and_the_probes_show_the_floor() {
    if !require("root", is_root())
        || !require(
            "bwrap (apt-get install bubblewrap)",
            std::process::Command::new("bwrap")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        )
    {
        return;
    }
    let home = home();
    for scenario in ["startup", "syscall", "file-io", "net-loopback", "fork-exec"] {
        let (v, out) = run_json(&home, &["--backend", "bwrap", "--scenario", scenario]);
        assert!(out.status.success(), "{scenario}: {}", stderr(&out));
        assert_eq!(v["result"]["ok"], true, "{scenario}: {v}");
        assert!(v["launch_to_ready_ns"].as_u64().unwrap() > 0, "{v}");
        // Charged like every other backend: a cgroup of its own.
        assert!(
            v["memory_bytes"]["instance_cgroup_peak"].as_u64().unwrap() > 0,
            "{v}"
        );
    }
    let (v, _) = run_json(&home, &["--backend", "bwrap", "--scenario", "inspect"]);
    let d = &v["result"]["data"];
    assert_eq!(
        d["interfaces"],
        serde_json::json!(["lo"]),
        "its own network namespace"
    );
    // The same effective capabilities as the lab's runtime gives.
    assert_eq!(d["cap_eff"], "00000000a00425fb", "{d}");
    let out = isolab()
        .args(["probes", "--json"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &m["bwrap"];
    // What bubblewrap leaves to its caller: no seccomp filter, a writable
    // /proc/sys, and a supervisor (bwrap) as pid 1.
    for probe in ["seccomp_filter", "core_pattern_writable", "pid_1_is_ours"] {
        assert_eq!(
            b[probe]["verdict"], "exposed",
            "bwrap {probe}: {}",
            b[probe]
        );
        assert_eq!(
            m["container"][probe]["verdict"], "isolated",
            "container {probe}"
        );
    }
    // And what it does do.
    for probe in [
        "network_interfaces",
        "host_processes_visible",
        "mount",
        "kernel_shared",
    ] {
        assert_eq!(
            b[probe]["verdict"], m["container"][probe]["verdict"],
            "{probe}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("peers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("isolab-bwrap-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Issue 18: podman as a peer — daemonless: podman → conmon → runtime.
#[test]
fn podman_runs_the_same_agent_from_the_same_rootfs() {
    if !require("root", is_root())
        || !require(
            "podman (apt-get install podman)",
            std::process::Command::new("podman")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        )
    {
        return;
    }
    let home = home();
    for scenario in ["startup", "idle", "syscall", "file-io"] {
        let (v, out) = run_json(&home, &["--backend", "podman", "--scenario", scenario]);
        assert!(out.status.success(), "{scenario}: {}", stderr(&out));
        assert_eq!(v["result"]["ok"], true, "{scenario}: {v}");
        assert!(v["launch_to_ready_ns"].as_u64().unwrap() > 0, "{v}");
        assert!(
            v["memory_bytes"]["instance_cgroup_peak"].as_u64().unwrap() > 0,
            "{v}"
        );
    }
    let (v, _) = run_json(&home, &["--backend", "podman", "--scenario", "inspect"]);
    let d = &v["result"]["data"];
    assert_eq!(d["pid"], 1);
    assert_eq!(d["interfaces"], serde_json::json!(["lo"]));
    // Its storage lives in the home, and prune takes it away with the
    // bundles; no cgroup of its runs is left.
    assert!(home.path().join("peers/podman-storage").is_dir());
    let out = isolab()
        .arg("prune")
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!home.path().join("peers/podman-storage").exists());
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("peers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("isolab-podman-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Issue 18: Docker Engine as a peer, timed through its CLI and through
/// its REST API, with the lab's own daemon that leaves nothing behind.
#[test]
fn docker_engine_runs_the_same_image_through_cli_and_api() {
    if !require("root", is_root())
        || !require(
            "dockerd (apt-get install docker.io)",
            std::path::Path::new("/usr/sbin/dockerd").is_file(),
        )
    {
        return;
    }
    let home = home();
    let dir = home.path().join("peers/docker");
    let daemon_alive = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read_to_string(p.path().join("cmdline"))
                .is_ok_and(|c| c.starts_with("dockerd") && c.contains(&dir.display().to_string()))
        })
    };
    for backend in ["docker", "docker-api"] {
        for scenario in ["startup", "idle"] {
            let (v, out) = run_json(&home, &["--backend", backend, "--scenario", scenario]);
            assert!(
                out.status.success(),
                "{backend} {scenario}: {}",
                stderr(&out)
            );
            assert_eq!(v["backend"], backend);
            assert_eq!(v["result"]["ok"], true, "{v}");
            assert!(v["launch_to_ready_ns"].as_u64().unwrap() > 0, "{v}");
            assert!(
                v["memory_bytes"]["instance_cgroup_peak"].as_u64().unwrap() > 0,
                "{v}"
            );
            if scenario == "idle" {
                assert!(
                    v["memory_bytes"]["hold_cgroup_charged"].as_u64().unwrap() > 0,
                    "{v}"
                );
            }
            // The daemon went with the isolab process that started it.
            assert!(!daemon_alive(), "dockerd outlived isolab");
        }
    }
    // The daemon's image and layers stay for the next run until prune.
    assert!(dir.join("data").is_dir());
    let out = isolab()
        .arg("prune")
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.exists(), "prune leaves no docker data");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&home.path().display().to_string()),
        "a mount under the home is left"
    );
}

/// Issue 16 (a first step): `--network host` shares the host's network
/// namespace, as Docker's host network does; the default keeps a
/// namespace of its own with only loopback; bridge is refused clearly.
#[test]
fn network_none_and_host() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let (v, out) = run_json(&home, &["--scenario", "inspect"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(v["result"]["data"]["interfaces"], serde_json::json!(["lo"]));
    let (v, out) = run_json(&home, &["--network", "host", "--scenario", "inspect"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let seen: Vec<String> =
        serde_json::from_value(v["result"]["data"]["interfaces"].clone()).unwrap();
    for i in &host {
        assert!(seen.contains(i), "{i} missing from {seen:?}");
    }
    let (v, _) = run_json(&home, &["--network", "host", "--scenario", "probes"]);
    let probes = v["result"]["data"]["probes"].as_array().unwrap();
    let ni = probes
        .iter()
        .find(|p| p["name"] == "network_interfaces")
        .unwrap();
    assert_eq!(ni["verdict"], "exposed", "{ni}");
    // (--network bridge is tested in tests/network.rs, inside a network
    // namespace of the test's own: it would change the host's network.)
}

#[test]
fn a_default_image_built_without_busybox_says_how_to_rebuild() {
    if !require("root", is_root()) {
        return;
    }
    let have_busybox = std::process::Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require("busybox (apt-get install busybox-static)", have_busybox) {
        return;
    }
    let home = home();
    // A PATH without busybox: the default image is built with the agent only.
    let bare = tempfile::tempdir().unwrap();
    let o = isolab()
        .args(["run", "--", "/bin/sh", "-c", "true"])
        .env("ISOLAB_HOME", home.path())
        .env("PATH", bare.path())
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("apt-get install busybox-static"),
        "{}",
        stderr(&o)
    );
    // busybox is there now: the same image says it predates it, and how to rebuild.
    let o = isolab()
        .args(["run", "--", "/bin/sh", "-c", "true"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        e.contains("built before a static busybox was installed")
            && e.contains("isolab image rm default"),
        "{e}"
    );
    let o = isolab()
        .args(["image", "rm", "default"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = isolab()
        .args(["run", "--", "/bin/sh", "-c", "echo rebuilt"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(stdout(&o).contains("rebuilt"), "{}", stderr(&o));
}

#[test]
fn namespaces_one_at_a_time_show_what_each_isolates() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let run = |ns: Option<&str>, script: &str| {
        let mut args = vec!["run"];
        if let Some(ns) = ns {
            args.extend(["--namespaces", ns]);
        }
        args.extend(["--", "/bin/sh", "-c", script]);
        let o = isolab()
            .args(&args)
            .env("ISOLAB_HOME", home.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o).trim().to_owned()
    };
    let pids = "ls /proc | grep -c '^[0-9]'";
    let own: u32 = run(None, pids).parse().unwrap();
    let shared: u32 = run(Some("mount,uts,ipc,net,cgroup"), pids).parse().unwrap();
    assert!(own <= 4, "its own pid namespace: {own} processes");
    assert!(
        shared > 20,
        "the host's pid namespace shows the host's processes: {shared}"
    );
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        run(Some("mount,pid,ipc,net,cgroup"), "hostname"),
        host_name.trim()
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name,
        "without its own uts namespace the container must not rename the host"
    );
    let ifs = run(
        Some("mount,pid,uts,ipc,cgroup"),
        "cat /proc/net/dev | tail -n +3 | wc -l",
    );
    assert!(
        ifs.parse::<u32>().unwrap() > 1,
        "the host's interfaces: {ifs}"
    );
    for (list, want) in [
        ("pid,net", "must keep mount"),
        ("mount,time", "unknown namespace \"time\""),
    ] {
        let o = isolab()
            .args(["run", "--namespaces", list])
            .env("ISOLAB_HOME", home.path())
            .output()
            .unwrap();
        assert!(
            !o.status.success() && stderr(&o).contains(want),
            "{list}: {}",
            stderr(&o)
        );
    }
}
