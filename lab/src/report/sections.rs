//! The generated results, one function per section: each writes its
//! tables and number snippets under `out` and returns the charts it drew.
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use isolab_abi::catalog::name as sc;
use isolab_reports::charts::{self, Distribution, Reference, StackedBar, Verdict};
use isolab_reports::stats;

use super::run::*;

/// A section of the generated results: writes its files under `out`,
/// returns the charts it drew.
pub type Section = fn(&Run, &Collected, &Path) -> Result<Vec<PathBuf>>;

/// The generated results, section by section, in the order written.
const SECTIONS: &[(&str, Section)] = &[
    ("host_page", host_page),
    ("startup", startup),
    ("phases", phases),
    ("memory", memory),
    ("cpu", cpu),
    ("disk_read", disk_read),
    ("network", network),
    ("boundary", boundary),
    ("disk", disk),
    ("probes", probes),
    ("placeholders", placeholders),
    ("missing_numbers", missing_numbers),
];

/// Writes every generated file; returns the list of files written.
pub fn generate(run: &Run, out: &Path) -> Result<Vec<PathBuf>> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out.join("numbers"))
        .with_context(|| format!("creating {}", out.display()))?;
    let c = collect(&run.samples);
    let mut files = Vec::new();
    for (name, section) in SECTIONS {
        files.extend(section(run, &c, out).with_context(|| format!("the {name} section"))?);
    }
    files.push(out.to_path_buf());
    Ok(files)
}

/// The host page: where and how the run was made.
pub(super) fn host_page(run: &Run, _c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    let m = &run.manifest;
    // Host page.
    let mut host = String::new();
    writeln!(host, "{}\n", host_note(m))?;
    writeln!(host, "| | |\n|---|---|")?;
    for (k, v) in [
        ("run", format!("{} ({})", m.run_id, run.dir.display())),
        ("started", m.started_at.clone()),
        (
            "finished",
            m.finished_at
                .clone()
                .unwrap_or_else(|| "interrupted (partial run)".into()),
        ),
        ("isolab", m.isolab_revision.clone()),
        (
            "CPU",
            format!("{} ({} CPUs)", m.host.cpu_model, m.host.cpus),
        ),
        (
            "memory",
            format!(
                "{:.1} GiB",
                m.host.memory_bytes as f64 / (1u64 << 30) as f64
            ),
        ),
        ("kernel", m.host.kernel.clone()),
        (
            "KVM",
            format!(
                "{}{}",
                m.host.kvm_flavour,
                if m.host.nested {
                    " (this host is itself a VM)"
                } else {
                    ""
                }
            ),
        ),
        ("cgroups", m.host.cgroup_mode.clone()),
        (
            "load at start",
            m.host
                .loadavg
                .map(|l| format!("{:.2} {:.2} {:.2} (1, 5, 15 min)", l[0], l[1], l[2]))
                .unwrap_or_else(|| "not recorded".into()),
        ),
        (
            "peers",
            m.host
                .peers
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("parameters", serde_json::to_string(&m.parameters)?),
    ] {
        writeln!(host, "| {k} | {} |", v.replace('|', "\\|"))?;
    }
    if !m.notes.is_empty() {
        writeln!(host, "\nNotes from the run:\n")?;
        for n in &m.notes {
            writeln!(host, "- {n}")?;
        }
    }
    write(&out.join("host.md"), &host)?;
    write(&out.join("host-note.md"), &format!("> {}\n", host_note(m)))?;
    num(out, "kvm_flavour", m.host.kvm_flavour.clone())?;
    num(out, "host_cpus", m.host.cpus.to_string())?;
    num(out, "run_id", m.run_id.clone())?;
    Ok(Vec::new())
}

/// Startup: table, chart and numbers.
pub(super) fn startup(run: &Run, c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // Startup table + chart + numbers.
    let mut t = String::from("| backend | n | →ready median (ms) | p95 | 95% CI | →exit median (ms) | ratio, →exit [95% CI] | starts/s |\n|---|---|---|---|---|---|---|---|\n");
    let mut dists = Vec::new();
    for b in backends_in(c, sc::STARTUP, "launch_to_exit") {
        let bl = shown(run, &b);
        let ready = c
            .get(&(sc::STARTUP.into(), "launch_to_ready".into(), b.clone()))
            .and_then(|v| stats::summarize(v));
        let exit = c
            .get(&(sc::STARTUP.into(), "launch_to_exit".into(), b.clone()))
            .and_then(|v| stats::summarize(v));
        let base = crate::backends::baseline_of(&b);
        let ratio = base
            .and_then(|base| {
                let a = c.get(&(sc::STARTUP.into(), "launch_to_exit".into(), base.to_owned()))?;
                let x = c.get(&(sc::STARTUP.into(), "launch_to_exit".into(), b.clone()))?;
                stats::ratio_of_medians(a, x).map(|r| (base, r))
            })
            .map(|(base, (r, (lo, hi)))| format!("{base}/{b} {r:.2} [{lo:.2}, {hi:.2}]"))
            .unwrap_or_else(|| "—".into());
        match (&ready, &exit) {
            (Some(r), Some(e)) => {
                writeln!(
                    t,
                    "| {bl} | {} | {} | {} | [{}, {}] | {} | {ratio} | {:.0} |",
                    r.n,
                    ms(r.median),
                    ms(r.p95),
                    ms(r.ci95.0),
                    ms(r.ci95.1),
                    ms(e.median),
                    1e9 / e.mean
                )?;
                num(out, &format!("{b}_startup_ready_ms"), ms(r.median))?;
                num(out, &format!("{b}_startup_exit_ms"), ms(e.median))?;
            }
            // No ready on the host's clock (gVisor's Sentry keeps its
            // own): the row says so and gives launch→exit.
            (None, Some(e)) => {
                writeln!(
                    t,
                    "| {bl} | {} | — (no host-clock ready) | — | — | {} | {ratio} | {:.0} |",
                    e.n,
                    ms(e.median),
                    1e9 / e.mean
                )?;
                num(out, &format!("{b}_startup_exit_ms"), ms(e.median))?;
            }
            _ => {}
        }
        if let Some(v) = c.get(&(sc::STARTUP.into(), "launch_to_ready".into(), b.clone())) {
            dists.push(Distribution {
                label: bl.clone(),
                values: v.iter().map(|x| x / 1e6).collect(),
            });
        }
    }
    for (a, b) in [
        ("container", "crun"),
        ("container", "runc"),
        ("microvm", "qemu"),
        ("container", "microvm"),
    ] {
        if let (Some(x), Some(y)) = (
            c.get(&(sc::STARTUP.into(), "launch_to_exit".into(), a.into())),
            c.get(&(sc::STARTUP.into(), "launch_to_exit".into(), b.into())),
        ) {
            if let Some((r, _)) = stats::ratio_of_medians(x, y) {
                num(out, &format!("ratio_{a}_{b}_startup"), format!("{r:.2}"))?;
            }
        }
    }
    write(&out.join("startup.md"), &t)?;
    write(&out.join("headline.md"), &headline(run, c))?;
    let refs: Vec<Reference> = REFERENCES
        .iter()
        .map(|r| Reference {
            label: r.0.into(),
            value: r.1,
        })
        .collect();
    if !dists.is_empty() {
        files.extend(charts::box_plot_log(
            &out.join(sc::STARTUP),
            "Startup: launch → ready (log scale)",
            "ms",
            &dists,
            &refs,
        )?);
    }
    Ok(files)
}

/// Phases: the median of each phase per backend that reports phases.
pub(super) fn phases(run: &Run, c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // Phases: median of each phase per backend that reports phases.
    let mut bars = Vec::new();
    let mut pt = String::from("| backend | phase | median (ms) |\n|---|---|---|\n");
    for b in crate::backends::names() {
        let bl = shown(run, b);
        let mut segs: Vec<(String, f64, f64)> = Vec::new(); // name, median, order key
        for ((s, metric, be), v) in c {
            if s == sc::STARTUP && be == b && metric.starts_with("phase.") {
                let name = metric.trim_start_matches("phase.").to_owned();
                let med = stats::median(v).unwrap_or(0.0);
                let order = phase_order(&name);
                segs.push((name, med, order));
            }
        }
        if segs.len() < 2 {
            continue;
        }
        segs.sort_by(|a, b| a.2.total_cmp(&b.2));
        for (n, v, _) in &segs {
            writeln!(pt, "| {bl} | {n} | {} |", ms(*v))?;
        }
        bars.push(StackedBar {
            label: bl.clone(),
            segments: segs.into_iter().map(|(n, v, _)| (n, v / 1e6)).collect(),
        });
    }
    write(&out.join("phases.md"), &pt)?;
    if !bars.is_empty() {
        files.extend(charts::stacked_bars(
            &out.join("phases"),
            "Where a start goes: median phases (startup)",
            "ms",
            &bars,
            &[],
        )?);
    }
    Ok(files)
}

/// Memory per instance.
pub(super) fn memory(run: &Run, c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // Memory.
    let mut mt =
        String::from("| backend | figure | median (KiB) | p95 (KiB) |\n|---|---|---|---|\n");
    let mut mbars = Vec::new();
    for b in crate::backends::names() {
        let bl = shown(run, b);
        let get = |metric: &str| {
            [sc::IDLE, sc::STARTUP]
                .iter()
                .find_map(|s| c.get(&(s.to_string(), metric.to_owned(), b.to_owned())))
                .and_then(|v| stats::summarize(v))
        };
        let mut segs = Vec::new();
        // The headline, the same for every backend: the charge of the
        // cgroup holding the instance, read at the idle scenario's hold
        // point. The rest are breakdowns, in the table only.
        const HEADLINE: &str = "memory.hold_cgroup_charged";
        for (metric, label) in [
            (HEADLINE, "instance cgroup charge at hold"),
            (
                "memory.instance_cgroup_peak",
                "instance cgroup peak charge (for a VM: its monitor)",
            ),
            (
                "memory.monitor_rss_beyond_guest",
                "monitor RSS beyond guest pages",
            ),
            ("memory.guest_touched", "guest pages touched"),
            (
                "memory.monitor_rss_at_ready",
                "monitor process RSS at ready",
            ),
        ] {
            if let Some(s) = get(metric) {
                writeln!(
                    mt,
                    "| {bl} | {label} | {:.0} | {:.0} |",
                    s.median / 1024.0,
                    s.p95 / 1024.0
                )?;
                if metric == HEADLINE {
                    segs.push((label.to_owned(), s.median / 1024.0));
                }
                num(
                    out,
                    &format!("{b}_{}_kib", metric.trim_start_matches("memory.")),
                    format!("{:.0}", s.median / 1024.0),
                )?;
            }
        }
        if !segs.is_empty() {
            mbars.push(StackedBar {
                label: bl.clone(),
                segments: segs,
            });
        }
    }
    write(&out.join("memory.md"), &mt)?;
    if !mbars.is_empty() {
        files.extend(charts::stacked_bars(
            &out.join(sc::MEMORY),
            "Host memory per instance: its cgroup's charge while idle (medians)",
            "KiB",
            &mbars,
            &[Reference {
                label: "Firecracker overhead ≤ 5 MiB".into(),
                value: FIRECRACKER_OVERHEAD_KIB,
            }],
        )?);
    }
    Ok(files)
}

/// CPU throughput relative to the container.
pub(super) fn cpu(run: &Run, c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // CPU throughput relative to the container.
    let mut ct = String::from(
        "| backend | SHA-256 median (MiB/s) | relative to container |\n|---|---|---|\n",
    );
    let mut cbars = Vec::new();
    let base = c
        .get(&(sc::CPU.into(), "cpu.sha256".into(), "container".into()))
        .and_then(|v| stats::median(v));
    for b in backends_in(c, sc::CPU, "cpu.sha256") {
        let bl = shown(run, &b);
        if let Some(v) = c
            .get(&(sc::CPU.into(), "cpu.sha256".into(), b.clone()))
            .and_then(|v| stats::median(v))
        {
            let rel = base.map(|x| v / x);
            writeln!(
                ct,
                "| {bl} | {:.1} | {} |",
                v / 1048576.0,
                rel.map(|r| format!("{r:.2}")).unwrap_or_else(|| "—".into())
            )?;
            if let Some(r) = rel {
                cbars.push(StackedBar {
                    label: bl.clone(),
                    segments: vec![("throughput / container's".into(), r)],
                });
                num(out, &format!("{b}_cpu_relative"), format!("{r:.2}"))?;
            }
        }
    }
    write(&out.join("cpu.md"), &ct)?;
    if !cbars.is_empty() {
        files.extend(charts::stacked_bars(
            &out.join(sc::CPU),
            "CPU scenario: throughput relative to the container",
            "ratio",
            &cbars,
            &[Reference {
                label: "same speed".into(),
                value: 1.0,
            }],
        )?);
    }
    Ok(files)
}

/// Reading the same bytes from a disk.
pub(super) fn disk_read(run: &Run, c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    // Reading the same bytes: the image as ext4, through a bind mount in a
    // container, through a virtio disk in the VM.
    let mut dt = String::from(
        "| backend | read median (MiB/s) | relative to container | path |\n|---|---|---|---|\n",
    );
    let dbase = c
        .get(&(
            sc::DISK_READ.into(),
            "disk.read_rate".into(),
            "container".into(),
        ))
        .and_then(|v| stats::median(v));
    for b in backends_in(c, sc::DISK_READ, "disk.read_rate") {
        let bl = shown(run, &b);
        if let Some(v) = c
            .get(&(sc::DISK_READ.into(), "disk.read_rate".into(), b.clone()))
            .and_then(|v| stats::median(v))
        {
            let rel = dbase.map(|x| v / x);
            let path = if b == "microvm" {
                "virtio-blk request (VM exit + host pread)"
            } else {
                "read(2) on a bind-mounted file"
            };
            writeln!(
                dt,
                "| {bl} | {:.0} | {} | {path} |",
                v / 1048576.0,
                rel.map(|r| format!("{r:.2}")).unwrap_or_else(|| "—".into())
            )?;
            num(
                out,
                &format!("{b}_disk_read_mibs"),
                format!("{:.0}", v / 1048576.0),
            )?;
            if let Some(r) = rel {
                num(out, &format!("{b}_disk_read_relative"), format!("{r:.2}"))?;
            }
        }
    }
    write(&out.join("disk-read.md"), &dt)?;
    Ok(Vec::new())
}

/// The introduction's headline: each peer's launch-to-exit time as a
/// ratio to the lab's engine of its kind, measured side by side in this
/// run, with its 95 % CI; a backend this run lacks is left out, never
/// shown as "n/a". Absolute medians follow, marked as this host's.
pub(super) fn headline(run: &Run, c: &Collected) -> String {
    let med = |b: &str| {
        c.get(&(sc::STARTUP.into(), "launch_to_exit".into(), b.to_owned()))
            .and_then(|v| stats::median(v))
    };
    let mut ratios = Vec::new();
    for b in backends_in(c, sc::STARTUP, "launch_to_exit") {
        let Some(base) = crate::backends::baseline_of(&b) else {
            continue;
        };
        let (Some(x), Some(y)) = (
            c.get(&(sc::STARTUP.into(), "launch_to_exit".into(), b.clone())),
            c.get(&(sc::STARTUP.into(), "launch_to_exit".into(), base.to_owned())),
        ) else {
            continue;
        };
        if let Some((r, (lo, hi))) = stats::ratio_of_medians(x, y) {
            ratios.push(format!(
                "{} took **{r:.2}×** [{lo:.2}, {hi:.2}] the time of {}",
                shown(run, &b),
                shown(run, base)
            ));
        }
    }
    let mut text = String::new();
    if ratios.is_empty() {
        text.push_str("This run has no peer beside the lab's own engines, so no side-by-side ratio: install crun, runc or QEMU (see `isolab doctor`) and rerun.");
    } else {
        text.push_str("Measured side by side in this run, launch to exit (medians, 95 % CI): ");
        text.push_str(&ratios.join("; "));
        text.push('.');
    }
    let abs: Vec<String> = ["container", "microvm"]
        .iter()
        .filter_map(|b| med(b).map(|v| format!("{} {:.1} ms", shown(run, b), v / 1e6)))
        .collect();
    if !abs.is_empty() {
        text.push_str(&format!(
            " For orientation only — absolute times belong to this host and its load: {}.",
            abs.join(", ")
        ));
    }
    text.push('\n');
    text
}

/// Networks: UDP round trips and a TCP stream between the host and the
/// instance, beside the same over the instance's own loopback, measured
/// in the same instance (so the ratio is side by side by construction).
pub(super) fn network(run: &Run, c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    let mut t = String::from(
        "| backend | UDP RTT p50 (µs) | p99 | loopback p50 | ÷ loopback | RTT ÷ the lab's own | stream (MiB/s) | loopback |\n|---|---|---|---|---|---|---|---|\n",
    );
    let samples = |b: &str| c.get(&(sc::NET_RTT.into(), "net.udp_rtt_p50".into(), b.to_owned()));
    let med = |scenario: &str, metric: &str, b: &str| {
        c.get(&(scenario.into(), metric.into(), b.to_owned()))
            .and_then(|v| stats::median(v))
    };
    let mut backends = backends_in(c, sc::NET_RTT, "net.udp_rtt_p50");
    for metric in ["net.tcp_stream", "net.udp_stream"] {
        for b in backends_in(c, sc::NET_STREAM, metric) {
            if !backends.contains(&b) {
                backends.push(b);
            }
        }
    }
    // The stream's samples: TCP for the agent, UDP for the bare guest.
    let stream_samples = |b: &str| {
        ["net.tcp_stream", "net.udp_stream"]
            .iter()
            .find_map(|m| c.get(&(sc::NET_STREAM.into(), (*m).into(), b.to_owned())))
    };
    let us = |v: Option<f64>| v.map_or("—".into(), |v| format!("{:.1}", v / 1e3));
    let mibs = |v: Option<f64>| v.map_or("—".into(), |v| format!("{:.0}", v / 1048576.0));
    for b in &backends {
        let rtt = med(sc::NET_RTT, "net.udp_rtt_p50", b);
        let p99 = med(sc::NET_RTT, "net.udp_rtt_p99", b);
        let lo = med(sc::NET_RTT, "net.udp_rtt_loopback_p50", b);
        let ratio = rtt.zip(lo).map(|(a, l)| a / l);
        let tcp = med(sc::NET_STREAM, "net.tcp_stream", b);
        let stream = tcp.or_else(|| med(sc::NET_STREAM, "net.udp_stream", b));
        let lstream = med(sc::NET_STREAM, "net.tcp_stream_loopback", b);
        let stream_vs = crate::backends::baseline_of(b).and_then(|base| {
            let (r, (lo, hi)) = stats::ratio_of_medians(stream_samples(b)?, stream_samples(base)?)?;
            Some(format!(
                "; {r:.2} [{lo:.2}, {hi:.2}] of {}",
                shown(run, base)
            ))
        });
        let stream_cell = match stream {
            Some(v) => format!(
                "{}{}{}",
                mibs(Some(v)),
                if tcp.is_none() { " UDP" } else { "" },
                stream_vs.unwrap_or_default()
            ),
            None => "—".into(),
        };
        // A peer's RTT beside the lab's own engine of its kind (crun and
        // runc beside the container, QEMU beside the monitor): medians of
        // the same run, with the ratio's 95 % CI.
        let base = crate::backends::baseline_of(b)
            .and_then(|base| Some((base, stats::ratio_of_medians(samples(b)?, samples(base)?)?)));
        let vs = base.map_or("—".into(), |(base, (r, (lo, hi)))| {
            format!("{r:.2} [{lo:.2}, {hi:.2}] of {}", shown(run, base))
        });
        if let Some((base, (r, _))) = base {
            num(out, &format!("{b}_net_rtt_vs_{base}"), format!("{r:.2}"))?;
        }
        writeln!(
            t,
            "| {} | {} | {} | {} | {} | {vs} | {stream_cell} | {} |",
            shown(run, b),
            us(rtt),
            us(p99),
            us(lo),
            ratio.map_or("—".into(), |r| format!("{r:.2}")),
            mibs(lstream)
        )?;
        if let Some(r) = ratio {
            num(out, &format!("{b}_net_rtt_vs_loopback"), format!("{r:.2}"))?;
        }
        if let Some(v) = rtt {
            num(out, &format!("{b}_net_rtt_us"), format!("{:.1}", v / 1e3))?;
        }
    }
    if backends.is_empty() {
        t = "This run has no network figures: the network scenarios are not in the default set, because they make the lab bridge on your host. Run `sudo isolab bench --backends container,crun,microvm,qemu --scenarios net-rtt,net-stream` and then `isolab report` on that run to fill this table (VMs with the bare guest stream over UDP: it has no TCP).\n".into();
    }
    write(&out.join("network.md"), &t)?;
    Ok(Vec::new())
}

/// Crossing the boundary: a system call vs a VM exit.
pub(super) fn boundary(run: &Run, c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    // Crossing a boundary: a system call in a container, a VM exit in a VM.
    let mut et = String::from("| backend | boundary | median (µs) |\n|---|---|---|\n");
    for (scenario, metric, what, tag) in [
        (
            sc::SYSCALL,
            "syscall.getppid",
            "system call (getppid)",
            sc::SYSCALL,
        ),
        (
            sc::EXIT_COST,
            "vm.exit_cost",
            "VM exit (port write)",
            "exit_cost",
        ),
    ] {
        for b in backends_in(c, scenario, metric) {
            let bl = shown(run, &b);
            if let Some(v) = c
                .get(&(scenario.into(), metric.into(), b.clone()))
                .and_then(|v| stats::median(v))
            {
                writeln!(et, "| {bl} | {what} | {:.3} |", v / 1e3)?;
                num(out, &format!("{b}_{tag}_us"), format!("{:.3}", v / 1e3))?;
            }
        }
    }
    write(&out.join("exit-cost.md"), &et)?;
    Ok(Vec::new())
}

/// Disk footprint.
pub(super) fn disk(_run: &Run, c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dt = String::from("| side | what | size |\n|---|---|---|\n");
    let mut any_disk = false;
    let mut n_instances = 0u32;
    for ((s, metric, b), v) in c {
        if s != sc::DISK_FOOTPRINT {
            continue;
        }
        any_disk = true;
        let what = metric.trim_start_matches("disk.");
        if let Some(n) = what
            .trim_start_matches("linux_")
            .strip_prefix("total_for_")
            .and_then(|r| r.strip_suffix("_instances"))
            .and_then(|n| n.parse().ok())
        {
            n_instances = n;
        }
        let med = stats::median(v).unwrap_or(0.0);
        writeln!(dt, "| {b} | {what} | {} |", human_bytes(med))?;
        num(
            out,
            &format!("disk_{b}_{}", what.replace('.', "_")),
            format!("{:.0}", med / 1024.0),
        )?;
    }
    if !any_disk {
        dt.push_str("| (no disk figures in this run) | | |\n");
    }
    write(&out.join("disk.md"), &dt)?;
    // The chart: what each side needs for 1 and for N instances, shared
    // bytes and per-instance bytes apart, all in MiB.
    let get = |b: &str, m: &str| {
        c.get(&(sc::DISK_FOOTPRINT.into(), format!("disk.{m}"), b.into()))
            .and_then(|v| stats::median(v))
    };
    let mut bars = Vec::new();
    for (b, prefix, label) in [
        ("container", "", "container"),
        ("microvm", "", "microvm (no-OS guest)"),
        ("microvm", "linux_", "microvm (Linux guest)"),
    ] {
        let (Some(shared), Some(per)) = (
            get(b, &format!("{prefix}shared")),
            get(b, &format!("{prefix}per_instance")),
        ) else {
            continue;
        };
        for n in [1, n_instances.max(1)] {
            bars.push(StackedBar {
                label: format!("{label} × {n}"),
                segments: vec![
                    (
                        "shared (image, kernel, binaries)".into(),
                        shared / 1048576.0,
                    ),
                    ("per instance".into(), per * f64::from(n) / 1048576.0),
                ],
            });
            if n_instances <= 1 {
                break;
            }
        }
    }
    if !bars.is_empty() {
        files.extend(charts::stacked_bars(
            &out.join(sc::DISK_FOOTPRINT),
            "Disk footprint: shared and per instance",
            "MiB",
            &bars,
            &[],
        )?);
    }
    Ok(files)
}

/// Bytes as people read them.
fn human_bytes(b: f64) -> String {
    if b >= 1048576.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// The probe matrix.
pub(super) fn probes(run: &Run, _c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // Probes: samples with metric probe.<name>, value 1 isolated / 0 exposed / -1 n/a.
    let mut probes: BTreeSet<String> = BTreeSet::new();
    // Columns are (backend, guest): a VM backend can have a no-OS guest
    // column and, where KVM boots a stock kernel, a Linux-guest one.
    let mut pcols: Vec<(String, String)> = Vec::new();
    for s in &run.samples {
        if s.scenario == sc::PROBES {
            probes.insert(s.metric.trim_start_matches("probe.").to_owned());
            let col = (s.backend.clone(), s.guest.clone());
            if !pcols.contains(&col) {
                pcols.push(col);
            }
        }
    }
    pcols.sort_by_key(|(b, g)| (crate::backends::order_of(b), g == "linux"));
    let label = |(b, g): &(String, String)| {
        if g == "linux" && crate::backends::find(b).is_ok_and(|x| !x.timed()) {
            format!("{b} (Linux guest, software emulation)")
        } else if g == "linux" {
            format!("{b} (Linux guest)")
        } else {
            shown(run, b)
        }
    };
    // The table's headers are short (a column per backend, `-linux` for a
    // Linux guest) so that every column fits the page; the legend says
    // what each is, and the chart carries the full labels.
    let short = |(b, g): &(String, String)| {
        if g == "linux"
            && crate::backends::find(b)
                .is_ok_and(|x| x.guest(&Default::default()) != crate::backend::Guest::Linux)
        {
            format!("{b}-linux")
        } else {
            b.clone()
        }
    };
    let mut ptab = String::new();
    if !probes.is_empty() {
        let rows: Vec<String> = probes.iter().cloned().collect();
        let mut cells = Vec::new();
        writeln!(
            ptab,
            "✔ isolated · **✘ exposed** · – not applicable. {}\n",
            pcols
                .iter()
                .filter(|c| short(c) != label(c))
                .map(|c| format!("`{}` is {}", short(c), label(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            ptab,
            "| probe | {} |\n|---|{}",
            pcols.iter().map(short).collect::<Vec<_>>().join(" | "),
            ":-:|".repeat(pcols.len())
        )?;
        for r in &rows {
            let mut row = Vec::new();
            let mut line = format!("| {r} |");
            for (b, g) in &pcols {
                let v = run
                    .samples
                    .iter()
                    .find(|s| {
                        s.scenario == sc::PROBES
                            && s.backend == *b
                            && s.guest == *g
                            && s.metric == format!("probe.{r}")
                    })
                    .map(|s| s.value);
                let verdict = match v {
                    Some(x) if x > 0.5 => Verdict::Isolated,
                    Some(x) if x > -0.5 => Verdict::Exposed,
                    Some(_) => Verdict::NotApplicable,
                    None => Verdict::Missing,
                };
                line.push_str(match verdict {
                    Verdict::Isolated => " ✔ |",
                    Verdict::Exposed => " **✘** |",
                    Verdict::NotApplicable => " – |",
                    Verdict::Missing => " · |",
                });
                row.push(verdict);
            }
            writeln!(ptab, "{line}")?;
            cells.push(row);
        }
        files.extend(charts::heat_map(
            &out.join(sc::PROBES),
            "Isolation probes (green isolated, red exposed, grey n/a)",
            &rows,
            &pcols.iter().map(label).collect::<Vec<_>>(),
            &cells,
        )?);
    } else {
        ptab.push_str("(This run has no probe results: run `isolab probes` or a bench with the probes scenario.)\n");
    }
    write(&out.join("probes.md"), &ptab)?;
    Ok(files)
}

/// An empty placeholder for every chart this run has no data for.
pub(super) fn placeholders(_run: &Run, _c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    for (name, _) in [
        (sc::STARTUP, 0),
        ("phases", 0),
        (sc::MEMORY, 0),
        (sc::CPU, 0),
        (sc::DISK_FOOTPRINT, 0),
        (sc::PROBES, 0),
    ] {
        if !out.join(format!("{name}.svg")).exists() {
            // An empty placeholder keeps every page's image link valid.
            write(
                &out.join(format!("{name}.svg")),
                &placeholder_svg(&format!("no {name} data in this run")),
            )?;
        }
    }
    Ok(Vec::new())
}

/// Numbers the prose quotes that this run did not produce.
pub(super) fn missing_numbers(_run: &Run, _c: &Collected, out: &Path) -> Result<Vec<PathBuf>> {
    // Any number the prose quotes that this run did not produce reads "n/a"
    // (e.g. VM figures on a host without KVM).
    if let Some(src) = out.parent() {
        for e in std::fs::read_dir(src).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for part in text.split("generated/numbers/").skip(1) {
                if let Some(name) = part.split(".txt").next() {
                    let p = out.join("numbers").join(format!("{name}.txt"));
                    if !p.exists() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        write(&p, "n/a")?;
                    }
                }
            }
        }
    }
    Ok(Vec::new())
}

/// A backend as tables and charts name it: what ran is named with it
/// ("no-OS guest", "Linux guest"), so a bare guest's figures are never read
/// as a Linux VM's.
pub(super) fn shown(run: &Run, backend: &str) -> String {
    let guest = run
        .samples
        .iter()
        .find(|s| s.backend == backend && s.scenario != sc::DISK_FOOTPRINT)
        .or_else(|| run.samples.iter().find(|s| s.backend == backend))
        .map(|s| s.guest.as_str())
        .unwrap_or("");
    match guest {
        "bare" => format!("{backend} (no-OS guest)"),
        "linux" => format!("{backend} (Linux guest)"),
        _ => backend.to_owned(),
    }
}
