//! Issue 18: isolab as an OCI runtime. `isolab-oci` walked through the
//! OCI lifecycle by hand (create, state, start, kill, delete, run), its
//! bad input refused in one sentence with nothing left behind, and real
//! engines driving it: podman (`--runtime`) and the lab's dockerd (a
//! registered runtime), whose probe columns must match the lab's own.
mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn oci(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_isolab-oci"));
    c.arg("--root").arg(root);
    c
}

/// Root and a static busybox for the bundles; a loud skip, or a failure
/// under CI, without them.
fn ready() -> bool {
    require("root", is_root())
        && require(
            "busybox (apt-get install busybox-static)",
            busybox().is_some(),
        )
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A bundle: a busybox rootfs, `out/` bound at /out, and a config whose
/// process is `sh -c SCRIPT`.
fn make_bundle(dir: &Path, script: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "out"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox().unwrap(), rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "echo", "sleep", "cat"] {
        symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let mut cfg = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "terminal": false, "user": { "uid": 0, "gid": 0 },
                     "args": ["sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/" },
        "root": { "path": "rootfs" },
        "hostname": "oci-test",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/out", "type": "bind", "source": dir.join("out"), "options": ["rbind", "rw"] }
        ],
        "linux": {
            "namespaces": [ {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"} ],
            "resources": { "memory": { "limit": 67108864 }, "pids": { "limit": 64 } }
        }
    });
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir.to_path_buf()
}

/// Runs a command whose child may keep its streams (a created
/// container holds the engine's): stdout into `out`, stderr through a
/// file, so nothing waits for their end.
fn detached(mut c: Command, out: &Path) -> Output {
    let err_path = out.with_extension("err");
    let status = c
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    Output {
        status,
        stdout: vec![],
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

/// Force-deletes whatever is left in a state root, however a test ends
/// (a failed assertion must not leave a container held at its gate).
struct Sweep(PathBuf);
impl Drop for Sweep {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = oci(&self.0)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .output();
        }
    }
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", stderr(o));
}

fn state(root: &Path, id: &str) -> Value {
    let o = oci(root).args(["state", id]).output().unwrap();
    ok(&o, "state");
    serde_json::from_slice(&o.stdout).unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's cgroup directories, wherever the host mounts them.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let layout = isolab_runtime::cgroups::CgroupLayout::detect().unwrap();
    let mut v: Vec<PathBuf> = layout
        .v1
        .iter()
        .filter(|(k, _)| ["memory", "pids", "cpu"].contains(&k.as_str()))
        .map(|(_, m)| m.join("isolab").join(id))
        .collect();
    if let Some(m) = layout.v2_mount {
        v.push(m.join("isolab").join(id));
    }
    v
}

/// create → state → start → kill → delete, with the pid file, the limits,
/// the engine's streams, and nothing left behind.
#[test]
fn isolab_oci_walks_the_oci_lifecycle_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let _sweep = Sweep(root.clone());
    let b = make_bundle(
        &tmp.path().join("b"),
        "echo started > /out/mark; echo to-stdout; exec sleep 1000",
        |_| {},
    );
    let id = format!("oci-life-{}", std::process::id());
    let pid_file = tmp.path().join("pid");
    let log = tmp.path().join("out.log");
    // The engine's streams are files here: create must return while the
    // container holds them.
    let mut c = oci(&root);
    c.args(["create", "--bundle"])
        .arg(&b)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&id);
    let o = detached(c, &log);
    ok(&o, "create");
    let s = state(&root, &id);
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], id.as_str());
    let pid = s["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    // Held at the gate: set up, in its cgroup with its limit, but its
    // program has not run.
    assert!(!b.join("out/mark").exists(), "the program ran before start");
    let mem = cgroup_dirs(&id)
        .into_iter()
        .find(|d| d.join("memory.limit_in_bytes").exists() || d.join("memory.max").exists())
        .expect("the container's memory cgroup");
    let limit = std::fs::read_to_string(mem.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(mem.join("memory.max")))
        .unwrap();
    assert_eq!(limit.trim(), "67108864");
    assert!(std::fs::read_to_string(mem.join("cgroup.procs"))
        .unwrap()
        .contains(&pid.to_string()));
    // A second create of the same id, and a delete of a live one, are
    // refused.
    let o = oci(&root)
        .args(["create", "-b"])
        .arg(&b)
        .arg(&id)
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("already exists"),
        "{}",
        stderr(&o)
    );
    let o = oci(&root).args(["delete", &id]).output().unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("delete --force"),
        "{}",
        stderr(&o)
    );

    ok(&oci(&root).args(["start", &id]).output().unwrap(), "start");
    wait_for("the program's mark", || b.join("out/mark").exists());
    assert_eq!(state(&root, &id)["status"], "running");
    wait_for("its stdout in the engine's file", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("to-stdout"))
    });
    let o = oci(&root).args(["start", &id]).output().unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("not created"),
        "{}",
        stderr(&o)
    );

    ok(
        &oci(&root)
            .args(["kill", "--all", &id, "KILL"])
            .output()
            .unwrap(),
        "kill",
    );
    wait_for("stopped", || state(&root, &id)["status"] == "stopped");
    assert_eq!(state(&root, &id)["pid"], 0);
    ok(
        &oci(&root).args(["delete", &id]).output().unwrap(),
        "delete",
    );
    let o = oci(&root).args(["state", &id]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("does not exist"));
    assert!(!root.join(&id).exists(), "its state directory is gone");
    for d in cgroup_dirs(&id) {
        assert!(!d.exists(), "{} left", d.display());
    }

    // delete --force of a created container; run's exit status.
    let id2 = format!("{id}-f");
    let mut c = oci(&root);
    c.args(["create", "-b"]).arg(&b).arg(&id2);
    ok(&detached(c, &tmp.path().join("out2.log")), "create 2");
    let pid2 = state(&root, &id2)["pid"].as_i64().unwrap();
    ok(
        &oci(&root)
            .args(["delete", "--force", &id2])
            .output()
            .unwrap(),
        "delete -f",
    );
    assert!(
        !Path::new(&format!("/proc/{pid2}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{pid2}/stat"))
                .is_ok_and(|s| s.contains(") Z"))
    );
    let b3 = make_bundle(&tmp.path().join("b3"), "echo ran; exit 7", |_| {});
    let o = oci(&root)
        .args(["run", "-b"])
        .arg(&b3)
        .arg(format!("{id}-r"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stdout(&o).contains("ran"));
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");

    // features, for engines that ask.
    let o = oci(&root).arg("features").output().unwrap();
    ok(&o, "features");
    let f: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(f["linux"]["cgroup"]["systemd"], false);
    assert!(f["hooks"].as_array().unwrap().len() == 4);
}

/// Every refusal is one sentence, on stderr and in a JSON --log, and
/// leaves no state directory, cgroup or process.
#[test]
fn isolab_oci_refuses_bad_input_in_one_sentence_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let good = make_bundle(&tmp.path().join("good"), "true", |_| {});
    let tty = make_bundle(&tmp.path().join("tty"), "true", |c| {
        c["process"]["terminal"] = true.into()
    });
    let userns = make_bundle(&tmp.path().join("userns"), "true", |c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "user"}, {"type": "mount"}])
    });
    let missing = make_bundle(&tmp.path().join("missing"), "true", |c| {
        c["process"]["args"] = serde_json::json!(["/bin/nothere"])
    });
    let g = good.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "create".into(),
                "-b".into(),
                tty.display().to_string(),
                "t1".into(),
            ],
            "terminal",
        ),
        (
            vec![
                "create".into(),
                "-b".into(),
                g.clone(),
                "--console-socket".into(),
                "/tmp/x.sock".into(),
                "t2".into(),
            ],
            "terminal",
        ),
        (
            vec![
                "create".into(),
                "-b".into(),
                tty.display().to_string(),
                "--console-socket".into(),
                "/nonexistent-isolab.sock".into(),
                "t8".into(),
            ],
            "cannot be reached",
        ),
        (
            vec![
                "create".into(),
                "-b".into(),
                userns.display().to_string(),
                "t3".into(),
            ],
            "user namespace",
        ),
        (
            vec![
                "create".into(),
                "-b".into(),
                missing.display().to_string(),
                "t4".into(),
            ],
            "not in the bundle's rootfs",
        ),
        (
            vec![
                "create".into(),
                "-b".into(),
                "/nonexistent-isolab".into(),
                "t5".into(),
            ],
            "cannot be opened",
        ),
        (
            vec!["create".into(), "-b".into(), g.clone(), "../escape".into()],
            "not valid",
        ),
        (
            vec![
                "create".into(),
                "-b".into(),
                g.clone(),
                "--preserve-fds".into(),
                "2".into(),
                "t6".into(),
            ],
            "preserve-fds",
        ),
        (
            vec![
                "--systemd-cgroup".into(),
                "create".into(),
                "-b".into(),
                g.clone(),
                "t7".into(),
            ],
            "cgroupfs",
        ),
        (
            vec!["kill".into(), "nope".into(), "TERM".into()],
            "does not exist",
        ),
        (
            vec!["kill".into(), "nope".into(), "NOSIG".into()],
            "not a signal",
        ),
        (vec!["start".into(), "nope".into()], "does not exist"),
        (
            vec!["exec".into(), "nope".into()],
            "does not implement `exec`",
        ),
    ];
    // A case wrongly accepted would leave a container held at its gate.
    let _sweep = Sweep(root.clone());
    for (args, needle) in cases {
        let log = tmp.path().join("log.json");
        let _ = std::fs::remove_file(&log);
        // Streams into files: a container would hold pipes open.
        let mut c = oci(&root);
        c.arg("--log")
            .arg(&log)
            .args(["--log-format", "json"])
            .args(&args);
        let o = detached(c, &tmp.path().join("case.out"));
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one sentence: {err}"
        );
        let line: Value =
            serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
        assert_eq!(line["level"], "error");
        assert!(line["msg"].as_str().unwrap().contains(needle), "{line}");
        let left: Vec<_> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
        for id in ["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"] {
            for d in cgroup_dirs(id) {
                assert!(!d.exists(), "{args:?} left {}", d.display());
            }
        }
    }
}

fn run_json(home: &tempfile::TempDir, args: &[&str]) -> (Value, Output) {
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

/// The proof with real clients: podman (`--runtime isolab-oci`) and
/// Docker Engine (`docker run --runtime isolab`, registered in the lab's
/// dockerd) run the agent through isolab-oci, and isolab's probe verdicts
/// under them match the lab's own container — except where the engine's
/// own config differs (its bound /etc files), which match the same engine
/// with its usual runtime.
#[test]
fn podman_and_docker_drive_isolab_oci_and_its_probes_match_the_labs_own() {
    let has = |p: &str| {
        std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .chain([PathBuf::from("/usr/sbin")])
                    .any(|d| d.join(p).is_file())
            })
            .unwrap_or(false)
    };
    if !ready()
        || !require("podman (apt-get install podman)", has("podman"))
        || !require("dockerd (apt-get install docker.io)", has("dockerd"))
    {
        return;
    }
    // podman as a user types it, with a terminal: conmon receives the
    // pty's master over --console-socket and relays it.
    {
        let tmp = tempfile::tempdir().unwrap();
        let b = make_bundle(&tmp.path().join("b"), "unused", |_| {});
        let o = Command::new("podman")
            .arg("--root")
            .arg(tmp.path().join("storage"))
            .arg("--runroot")
            .arg(tmp.path().join("run"))
            .args([
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
                "--runtime",
            ])
            .arg(env!("CARGO_BIN_EXE_isolab-oci"))
            .args(["run", "--rm", "-t", "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .arg("--rootfs")
            .arg(b.join("rootfs"))
            .args([
                "/bin/sh",
                "-c",
                "[ -t 0 ] && [ -t 1 ] && echo tty-yes; exit 3",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
        assert!(
            stdout(&o).contains("tty-yes"),
            "{}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    let home = home();
    for backend in ["isolab-oci", "podman-isolab", "docker-isolab"] {
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
        }
    }
    let out = isolab()
        .args(["probes", "--json"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdicts = |b: &str| -> serde_json::Map<String, Value> {
        let col = &m[b];
        let col = col.get("Ok").unwrap_or(col);
        col.as_object()
            .unwrap_or_else(|| panic!("{b}: {col}"))
            .iter()
            .map(|(k, v)| (k.clone(), v["verdict"].clone()))
            .collect()
    };
    let own = verdicts("container");
    assert!(own.len() >= 30, "{own:?}");
    for (b, engine) in [
        ("isolab-oci", "container"),
        ("podman-isolab", "podman"),
        ("docker-isolab", "docker"),
    ] {
        let col = verdicts(b);
        let theirs = verdicts(engine);
        for (probe, v) in &own {
            // The engine's bound /etc/hosts, hostname and resolv.conf
            // show as host mount points: the engine's config, not the
            // runtime's doing.
            let want = if probe == "host_mounts_visible" {
                &theirs[probe]
            } else {
                v
            };
            assert_eq!(col.get(probe), Some(want), "{b} {probe}");
        }
    }
    let out = isolab()
        .arg("prune")
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("peers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("isolab-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// CVE-2019-5736 through an engine: a created-then-started container
/// whose program leads back to `/proc/self/exe` finds the sealed launcher
/// there, not the host's isolab-oci, and isolab-oci's file is unchanged.
#[test]
fn a_program_leading_back_to_proc_self_exe_cannot_reach_isolab_oci() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let _sweep = Sweep(root.clone());
    let b = make_bundle(&tmp.path().join("b"), "unused", |c| {
        c["process"]["args"] = serde_json::json!(["/evil"])
    });
    let evil = b.join("rootfs/evil");
    std::fs::write(&evil, "#!/proc/self/exe\n").unwrap();
    std::fs::set_permissions(&evil, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_isolab-oci"));
    let before = std::fs::read(&exe).unwrap();
    let id = format!("oci-evil-{}", std::process::id());
    let out = tmp.path().join("evil.out");
    let mut c = oci(&root);
    c.args(["create", "-b"]).arg(&b).arg(&id);
    ok(&detached(c, &out), "create");
    ok(&oci(&root).args(["start", &id]).output().unwrap(), "start");
    wait_for("the program to end", || {
        state(&root, &id)["status"] == "stopped"
    });
    let err = std::fs::read_to_string(out.with_extension("err")).unwrap();
    assert!(
        err.contains("the launcher was started without isolab's report pipe: refusing"),
        "{err}"
    );
    assert!(
        std::fs::read(&exe).unwrap() == before,
        "isolab-oci's binary changed"
    );
    ok(
        &oci(&root).args(["delete", &id]).output().unwrap(),
        "delete",
    );
}
