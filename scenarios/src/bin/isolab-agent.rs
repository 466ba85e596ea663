//! `isolab-agent`: the one static binary that runs inside every backend —
//! the container's entrypoint and the Linux microVM's `/init`.
//!
//! Usage: `isolab-agent [--scenario NAME] [--param KEY=VALUE]...`
//! It stamps `ready` first thing in `main`, runs the scenario and prints
//! one result line (see `isolab_scenarios::protocol`).
use std::process::ExitCode;

use isolab_scenarios::kernels;
use isolab_scenarios::protocol::ResultLine;

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() -> ExitCode {
    let ready = monotonic_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("isolab-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut scenario = "startup".to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--scenario" {
            if let Some(s) = it.next() {
                scenario = s.clone();
            }
        }
    }
    let mut r = ResultLine::new(&scenario);
    r.mark("ready", ready);
    match scenario.as_str() {
        "startup" => {}
        "cpu" => {
            let t0 = monotonic_ns();
            let sum = kernels::cpu_work(kernels::CPU_CHECK_BLOCKS * 100);
            let dt = (monotonic_ns() - t0).max(1) as f64 / 1e9;
            r.metric(
                "cpu.sha256",
                "bytes_per_s",
                (kernels::CPU_CHECK_BLOCKS * 100 * 64) as f64 / dt,
            );
            r.metric("cpu.checksum", "count", (sum >> 11) as f64);
        }
        other => {
            r.ok = false;
            r.error = Some(format!("unknown scenario {other:?}"));
        }
    }
    println!("{}", r.to_line());
    if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
