//! Issue 7: from a run to charts, tables and a built book, checked in a
//! real browser (headless Chromium): every page renders without script
//! errors and every chart image loads.
mod common;
use common::*;
use std::path::{Path, PathBuf};

use isolab_reports::{HostInfo, Manifest, Sample, SampleWriter};

/// A small but complete run: every backend, phases, memory, CPU, probes.
fn fixture_run(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut w = SampleWriter::new(std::fs::File::create(dir.join("samples.csv")).unwrap()).unwrap();
    let mut push = |backend: &str, scenario: &str, metric: &str, unit: &str, v: f64, i: u32| {
        w.append(&Sample {
            run_id: "fixture".into(),
            host_id: "h".into(),
            backend: backend.into(),
            guest: if ["microvm", "qemu"].contains(&backend) {
                "bare"
            } else {
                "agent"
            }
            .into(),
            scenario: scenario.into(),
            iteration: i,
            metric: metric.into(),
            unit: unit.into(),
            value: v,
        })
        .unwrap()
    };
    for i in 0..8 {
        let j = f64::from(i);
        for (b, base) in [
            ("container", 4e6),
            ("crun", 12e6),
            ("runc", 30e6),
            ("microvm", 10e6),
            ("qemu", 60e6),
        ] {
            push(b, "startup", "launch_to_ready", "ns", base + j * 1e5, i);
            push(
                b,
                "startup",
                "launch_to_exit",
                "ns",
                base * 1.3 + j * 1e5,
                i,
            );
        }
        for (p, v) in [
            ("clone", 1.5e6),
            ("rootfs", 0.3e6),
            ("cgroup", 0.05e6),
            ("mounts", 0.4e6),
            ("exec", 0.01e6),
            ("ready", 0.7e6),
        ] {
            push(
                "container",
                "startup",
                &format!("phase.{p}"),
                "ns",
                v + j,
                i,
            );
        }
        for (p, v) in [
            ("kvm_open", 1.2e6),
            ("memory", 6e6),
            ("ready", 0.3e6),
            ("teardown", 1e6),
        ] {
            push("microvm", "startup", &format!("phase.{p}"), "ns", v + j, i);
        }
        // The networks chapter's table (widest of the generated tables).
        for (b, rtt) in [("container", 6.2e3), ("crun", 6.3e3), ("runc", 8.9e3)] {
            for (m, u, v) in [
                ("net.udp_rtt_p50", "ns", rtt + j),
                ("net.udp_rtt_p99", "ns", 2.0 * rtt + j),
                ("net.udp_rtt_loopback_p50", "ns", 5e3 + j),
            ] {
                push(b, "net-rtt", m, u, v, i);
            }
            push(b, "net-stream", "net.tcp_stream", "bytes_per_s", 3e9 + j, i);
            push(
                b,
                "net-stream",
                "net.tcp_stream_loopback",
                "bytes_per_s",
                4e9 + j,
                i,
            );
        }
        // The bare guest's UDP stream, QEMU beside the monitor.
        for (b, rtt, stream) in [("microvm", 29e3, 2.1e8), ("qemu", 32e3, 1.9e8)] {
            push(b, "net-rtt", "net.udp_rtt_p50", "ns", rtt + j, i);
            push(b, "net-rtt", "net.udp_rtt_p99", "ns", 2.0 * rtt + j, i);
            push(
                b,
                "net-stream",
                "net.udp_stream",
                "bytes_per_s",
                stream + j,
                i,
            );
        }
        push(
            "container",
            "idle",
            "memory.hold_cgroup_charged",
            "bytes",
            212.0 * 1024.0,
            i,
        );
        push(
            "crun",
            "idle",
            "memory.hold_cgroup_charged",
            "bytes",
            210.0 * 1024.0,
            i,
        );
        push(
            "microvm",
            "idle",
            "memory.hold_cgroup_charged",
            "bytes",
            1250.0 * 1024.0,
            i,
        );
        push(
            "qemu",
            "idle",
            "memory.hold_cgroup_charged",
            "bytes",
            14300.0 * 1024.0,
            i,
        );
        push(
            "microvm",
            "idle",
            "memory.monitor_rss_beyond_guest",
            "bytes",
            2500.0 * 1024.0,
            i,
        );
        push(
            "qemu",
            "idle",
            "memory.monitor_rss_at_ready",
            "bytes",
            38000.0 * 1024.0,
            i,
        );
        push(
            "container",
            "cpu",
            "cpu.sha256",
            "bytes_per_s",
            1.4e8 + j,
            i,
        );
        push("microvm", "cpu", "cpu.sha256", "bytes_per_s", 1.3e8 + j, i);
        push(
            "microvm",
            "exit-cost",
            "vm.exit_cost",
            "ns_per_exit",
            35000.0 + j,
            i,
        );
    }
    push(
        "container",
        "probes",
        "probe.pid_namespace",
        "verdict",
        1.0,
        0,
    );
    push(
        "container",
        "probes",
        "probe.kernel_shared",
        "verdict",
        0.0,
        0,
    );
    push(
        "microvm",
        "probes",
        "probe.kernel_shared",
        "verdict",
        1.0,
        0,
    );
    push(
        "microvm",
        "probes",
        "probe.pid_namespace",
        "verdict",
        -1.0,
        0,
    );
    drop(w);
    let m = Manifest {
        schema_version: 1,
        run_id: "fixture".into(),
        command: "bench".into(),
        isolab_revision: "test".into(),
        started_at: "2026-11-28T00:00:00Z".into(),
        finished_at: Some("2026-11-28T00:01:00Z".into()),
        host: HostInfo {
            kvm_flavour: "pvm".into(),
            cgroup_mode: "hybrid".into(),
            cpus: 2,
            ..Default::default()
        },
        parameters: Default::default(),
        notes: vec!["fixture".into()],
    };
    std::fs::write(dir.join("manifest.json"), m.to_json().unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "book" || name == "generated" {
            continue;
        }
        let t = to.join(&name);
        if e.path().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

fn build_fixture_book(tmp: &tempfile::TempDir) -> PathBuf {
    let run = tmp.path().join("run");
    fixture_run(&run);
    // The book includes sources by relative path (../../runtime/...), so
    // the copy keeps the repository's shape.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = tmp.path().join("repo");
    copy_dir(&repo.join("book"), &root.join("book"));
    for f in [
        "runtime/src/seccomp.rs",
        "runtime/src/container/spec.rs",
        "reports/src/sample.rs",
    ] {
        std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
        std::fs::copy(repo.join(f), root.join(f)).unwrap();
    }
    let book = root.join("book");
    let o = isolab()
        .args([
            "report",
            run.to_str().unwrap(),
            "--book-dir",
            book.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "report failed: {}", stderr(&o));
    let o = isolab()
        .args(["book", "--book-dir", book.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "book failed: {}", stderr(&o));
    book.join("book")
}

#[test]
fn report_writes_tables_charts_and_numbers() {
    let tmp = home();
    let html = build_fixture_book(&tmp);
    let gen = html.parent().unwrap().join("src/generated");
    let startup = std::fs::read_to_string(gen.join("startup.md")).unwrap();
    assert!(startup.contains("| container | 8 |"), "{startup}");
    assert!(startup.contains("container/crun 0."), "{startup}");
    assert!(startup.contains("microvm/qemu 0."), "{startup}");
    // The networks table: each runtime's RTT beside its loopback floor.
    let net = std::fs::read_to_string(gen.join("network.md")).unwrap();
    assert!(net.contains("| crun | 6.3 | 12.6 | 5.0 | 1.26 |"), "{net}");
    // The bare guest's stream is marked UDP, QEMU's set beside the monitor.
    assert!(
        net.contains("| 200 UDP |") || net.contains("200 UDP |"),
        "{net}"
    );
    assert!(net.contains("181 UDP; 0.90"), "{net}");
    // The headline is ratios measured side by side, never "n/a".
    let head = std::fs::read_to_string(gen.join("headline.md")).unwrap();
    assert!(
        head.contains("crun took **") && !head.contains("n/a"),
        "{head}"
    );
    for chart in ["startup", "phases", "memory", "cpu", "probes"] {
        assert!(gen.join(format!("{chart}.svg")).is_file(), "{chart}.svg");
        assert!(gen.join(format!("{chart}.png")).is_file(), "{chart}.png");
    }
    // Every chart the report wrote reads right: no vanished label, no
    // legend entry without its series.
    for e in std::fs::read_dir(&gen).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "svg") {
            let svg = std::fs::read_to_string(e.path()).unwrap();
            let problems = isolab_reports::charts::lint_svg(&svg);
            assert!(problems.is_empty(), "{}: {problems:?}", e.path().display());
        }
    }
    assert_eq!(
        std::fs::read_to_string(gen.join("numbers/kvm_flavour.txt")).unwrap(),
        "pvm"
    );
    assert!(std::fs::read_to_string(gen.join("host-note.md"))
        .unwrap()
        .contains("PVM host"));
    let probes = std::fs::read_to_string(gen.join("probes.md")).unwrap();
    assert!(
        probes.contains("**✘**") && probes.contains(" – "),
        "{probes}"
    );
    // Prose numbers are included, not typed: the built intro page carries them.
    let intro = std::fs::read_to_string(html.join("introduction.html")).unwrap();
    assert!(
        intro.contains("fixture") && !intro.contains("{{#include"),
        "unresolved include in the intro"
    );
    // Every results page says what kind of host produced it.
    for page in [
        "startup.html",
        "memory.html",
        "cpu.html",
        "disk.html",
        "isolation.html",
    ] {
        let t = std::fs::read_to_string(html.join(page)).unwrap();
        assert!(t.contains("PVM host"), "{page} lacks the host note");
    }
}

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Headless Chromium with this machine's closed network in mind: nothing
/// in the background that would reach out.
fn headless(browser: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]);
    c
}

/// Takes a screenshot of a page with charts (kept under
/// `target/book-screenshots/` for a human to look at) and checks that it
/// is a picture, not a blank or near-blank page: charts draw in several
/// colours over a wide area.
fn screenshot_shows_the_charts(browser: &Path, page: &Path) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("book-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join(page.with_extension("png").file_name().unwrap());
    let _ = std::fs::remove_file(&png);
    let profile = tempfile::tempdir().unwrap();
    let out = headless(browser)
        .args([
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
            "--window-size=1200,3000",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let img = image::open(&png)
        .unwrap_or_else(|e| panic!("{}: no screenshot ({e}): {}", page.display(), stderr(&out)))
        .to_rgb8();
    let (w, h) = img.dimensions();
    assert!(w >= 1000 && h >= 2000, "{}: {w}x{h}", page.display());
    let mut colours = std::collections::HashSet::new();
    let mut inked = 0u64;
    for p in img.pixels() {
        // Quantised, so anti-aliasing does not count as colour.
        colours.insert([p[0] >> 4, p[1] >> 4, p[2] >> 4]);
        if p.0.iter().any(|&c| c < 200) {
            inked += 1;
        }
    }
    let share = inked as f64 / f64::from(w * h);
    assert!(
        colours.len() >= 8 && share > 0.01,
        "{}: the screenshot looks blank ({} colours, {:.1}% inked): {}",
        page.display(),
        colours.len(),
        share * 100.0,
        png.display()
    );
}

#[test]
fn every_page_renders_in_a_real_browser() {
    let Some(browser) = chromium() else {
        require("headless Chromium (apt-get install chromium)", false);
        return;
    };
    let tmp = home();
    let html = build_fixture_book(&tmp);
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&html)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "html")
                && p.file_name()
                    .is_some_and(|n| n != "404.html" && n != "print.html" && n != "toc.html")
        })
        .collect();
    pages.sort();
    assert!(pages.len() >= 12, "{pages:?}");
    let mut images = 0;
    for page in &pages {
        let profile = tempfile::tempdir().unwrap();
        let out = headless(&browser)
            .args([
                "--virtual-time-budget=3000",
                "--window-size=1200,900",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        let dom = stdout(&out);
        let Some(start) = dom.find("data-isolab-check=\"") else {
            panic!(
                "{}: the page did not finish loading (no check attribute)\n{}",
                page.display(),
                stderr(&out)
            );
        };
        let rest = &dom[start + 19..];
        let raw = &rest[..rest.find('"').unwrap()];
        let json = raw.replace("&quot;", "\"").replace("&amp;", "&");
        let v: serde_json::Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("{}: {e}: {json}", page.display()));
        assert_eq!(
            v["broken"],
            serde_json::json!([]),
            "{}: broken images",
            page.display()
        );
        assert_eq!(
            v["errors"],
            serde_json::json!([]),
            "{}: script errors",
            page.display()
        );
        assert_eq!(
            v["wide"],
            serde_json::json!([]),
            "{}: tables wider than the page (first header of each)",
            page.display()
        );
        let shown = v["images"].as_u64().unwrap();
        images += shown;
        if shown > 0 {
            screenshot_shows_the_charts(&browser, page);
        }
    }
    assert!(
        images >= 6,
        "the results pages show their charts ({images} images loaded)"
    );
}
