//! Issue 2: the CLI, `doctor` and the static agent, end to end.
mod common;
use common::*;

#[test]
fn doctor_json_has_the_documented_keys() {
    if !require("root (doctor probes namespaces and overlayfs)", is_root()) {
        return;
    }
    let home = home();
    let out = isolab()
        .args(["doctor", "--json"])
        .env("ISOLAB_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "doctor failed: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json is JSON");
    for key in [
        "kvm",
        "namespaces",
        "cgroups",
        "overlayfs",
        "seccomp",
        "guest_kernel",
        "peers",
    ] {
        assert!(v.get(key).is_some(), "doctor --json lacks {key}");
    }
    for ns in [
        "user", "pid", "mount", "uts", "ipc", "net", "cgroup", "time",
    ] {
        assert!(v["namespaces"].get(ns).is_some(), "namespaces lacks {ns}");
    }
    assert_eq!(v["container_backend_ready"], true);
    // The flavour must agree with the module list: on this lab's PVM hosts
    // it is "pvm" and the report must say a stock kernel will not boot.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(v["kvm"]["flavour"], "pvm");
        assert_eq!(v["kvm"]["boots_stock_linux"], false);
    }
    let mode = v["cgroups"]["mode"].as_str().unwrap();
    assert!(["v1", "v2", "hybrid"].contains(&mode), "{mode}");
    // Nothing written into the home by a look.
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}

#[test]
fn doctor_table_names_every_check_with_a_fix_when_missing() {
    let out = run(&[
        "doctor",
        "--kvm-device",
        "/nonexistent/kvm",
        "--boot-dir",
        "/nonexistent/boot",
    ]);
    let text = stdout(&out);
    assert!(text.contains("/nonexistent/kvm does not exist"), "{text}");
    assert!(text.contains("fix: enable virtualisation"), "{text}");
    assert!(text.contains("cannot list /nonexistent/boot"), "{text}");
    assert!(text.contains("microVM backend:   NOT ready"), "{text}");
}

#[test]
fn unreadable_boot_dir_is_one_sentence_not_a_crash() {
    let dir = home();
    let boot = dir.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    std::fs::write(boot.join("vmlinuz-1.0"), b"not a kernel").unwrap();
    let out = run(&["doctor", "--json", "--boot-dir", boot.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = v["guest_kernel"]["error"].as_str().unwrap();
    assert!(
        err.contains("is not a kernel") && err.contains("--kernel"),
        "{err}"
    );
}

#[test]
fn bad_subcommand_and_flag_fail_cleanly() {
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unrecognized subcommand 'frobnicate'"),
        "{}",
        stderr(&out)
    );
    let out = run(&["doctor", "--json=maybe"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
}

#[test]
fn the_embedded_agent_is_statically_linked() {
    let dir = home();
    let agent = dir.path().join("isolab-agent");
    let out = run(&["agent", "--write", agent.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `file` is the independent judge; `ldd` agrees.
    let file = std::process::Command::new("file").arg(&agent).output();
    match file {
        Ok(o) => {
            let t = stdout(&o);
            assert!(
                t.contains("static") && !t.contains("dynamically linked"),
                "file says: {t}"
            );
        }
        Err(_) => assert!(!in_ci(), "CI must have `file` installed"),
    }
    let ldd = std::process::Command::new("ldd")
        .arg(&agent)
        .output()
        .unwrap();
    let t = stdout(&ldd) + &stderr(&ldd);
    assert!(
        t.contains("not a dynamic executable") || t.contains("statically linked"),
        "ldd says: {t}"
    );
    // It runs as is.
    let o = std::process::Command::new(&agent)
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success(), "agent --version failed: {}", stderr(&o));
    // Refuses to overwrite.
    let again = run(&["agent", "--write", agent.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("choose a path that does not exist yet"));
}

#[test]
fn interrupted_bench_leaves_a_valid_partial_run() {
    if !require("root", is_root()) {
        return;
    }
    let home = home();
    let results = home.path().join("results");
    let mut child = isolab()
        .args([
            "bench",
            "--backends",
            "container",
            "--scenarios",
            "startup",
            "--repetitions",
            "1000",
            "--warmup",
            "0",
            "--results",
        ])
        .arg(&results)
        .env("ISOLAB_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for some rows, then Ctrl-C.
    let mut csv = None;
    for _ in 0..300 {
        if let Some(p) = std::fs::read_dir(&results)
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("samples.csv"))
        {
            if std::fs::read_to_string(&p)
                .map(|t| t.lines().count() > 20)
                .unwrap_or(false)
            {
                csv = Some(p);
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let csv = csv.expect("bench wrote no rows");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted bench exits non-zero");
    let rows = isolab_reports::read_samples(std::fs::File::open(&csv).unwrap())
        .expect("the partial samples.csv is valid");
    assert!(
        !rows.is_empty() && rows.len() < 1000 * 10,
        "{} rows",
        rows.len()
    );
    let m = isolab_reports::Manifest::from_json(
        &std::fs::read_to_string(csv.with_file_name("manifest.json")).unwrap(),
    )
    .unwrap();
    assert!(m.finished_at.is_none(), "a partial run has no finished_at");
    assert!(
        m.notes.iter().any(|n| n.contains("interrupted")),
        "{:?}",
        m.notes
    );
}
