//! From instance reports to sample rows, and the bench's text summary.
use std::collections::BTreeMap;

use isolab_reports::stats;
use isolab_reports::{InstanceReport, Sample};

/// Turns one instance report into sample rows.
pub fn samples_of(r: &InstanceReport, run_id: &str, host_id: &str, iteration: u32) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut push = |metric: String, unit: &str, value: f64| {
        out.push(Sample {
            run_id: run_id.into(),
            host_id: host_id.into(),
            backend: r.backend.clone(),
            guest: r.guest.clone(),
            scenario: r.scenario.clone(),
            iteration,
            metric,
            unit: unit.into(),
            value,
        })
    };
    if let Some(v) = r.launch_to_ready_ns {
        push("launch_to_ready".into(), "ns", v as f64);
    }
    if let Some(v) = r.launch_to_exit_ns {
        push("launch_to_exit".into(), "ns", v as f64);
    }
    for (k, v) in &r.phases_ns {
        push(format!("phase.{k}"), "ns", *v as f64);
    }
    for (k, v) in &r.memory_bytes {
        push(format!("memory.{k}"), "bytes", *v as f64);
    }
    if let Some(res) = &r.result {
        for m in res
            .get("metrics")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
        {
            if let (Some(n), Some(u), Some(v)) =
                (m["name"].as_str(), m["unit"].as_str(), m["value"].as_f64())
            {
                push(n.to_owned(), u, v);
            }
        }
    }
    out
}

/// A text summary: per scenario and metric, each backend's median, p95 and
/// CI, and the ratio of its median to the container backend's.
pub fn summary(collected: &BTreeMap<(String, String, String), Vec<f64>>) -> String {
    let mut out = String::new();
    let wanted = [
        "launch_to_ready",
        "launch_to_exit",
        "memory.hold_cgroup_charged",
        "memory.monitor_rss_beyond_guest",
        "memory.monitor_rss_at_ready",
        "cpu.sha256",
        "disk.read_rate",
        "vm.exit_cost",
        "syscall.getppid",
    ];
    for ((scenario, metric, backend), values) in collected {
        if !wanted.contains(&metric.as_str()) {
            continue;
        }
        let Some(s) = stats::summarize(values) else {
            continue;
        };
        // A ratio only of the same figure on both sides.
        let base_metric = metric.as_str();
        let ratio = crate::backends::baseline_of(backend)
            .and_then(|base| {
                collected
                    .get(&(scenario.clone(), base_metric.to_owned(), base.to_owned()))
                    .map(|v| (base, v))
            })
            .and_then(|(base, b)| stats::ratio_of_medians(b, values).map(|r| (base, r)))
            .map(|(base, (r, (lo, hi)))| format!("{base}/{backend} = {r:.2} [{lo:.2}, {hi:.2}]"))
            .unwrap_or_default();
        let (scale, unit) = if metric.starts_with("memory") {
            (1.0 / 1024.0, "KiB")
        } else if metric == "cpu.sha256" || metric == "disk.read_rate" {
            (1.0 / 1048576.0, "MiB/s")
        } else if metric == "vm.exit_cost" || metric == "syscall.getppid" {
            (1e-3, "us")
        } else {
            (1e-6, "ms")
        };
        out.push_str(&format!(
            "{scenario:<8} {metric:<28} {backend:<10} n={:<4} median {:>9.3} {unit}  p95 {:>9.3}  CI95 [{:.3}, {:.3}]  {ratio}\n",
            s.n,
            s.median * scale,
            s.p95 * scale,
            s.ci95.0 * scale,
            s.ci95.1 * scale
        ));
        if metric == "launch_to_exit" {
            out.push_str(&format!(
                "{scenario:<8} {:<28} {backend:<10} {:.1} instances/s (sequential, 1/mean)\n",
                "throughput",
                1e9 / s.mean
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_shows_ratios_against_the_baseline() {
        let mut c = BTreeMap::new();
        c.insert(
            (
                "startup".to_owned(),
                "launch_to_exit".to_owned(),
                "container".to_owned(),
            ),
            vec![5e6; 10],
        );
        c.insert(
            (
                "startup".to_owned(),
                "launch_to_exit".to_owned(),
                "crun".to_owned(),
            ),
            vec![10e6; 10],
        );
        let s = summary(&c);
        assert!(s.contains("container/crun = 0.50"), "{s}");
        assert!(s.contains("median     5.000 ms"), "{s}");
    }
}
