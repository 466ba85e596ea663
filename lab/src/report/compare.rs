//! `isolab compare`: two runs, figure by figure.
use isolab_reports::stats;
use isolab_reports::Sample;

use super::collect;

/// One row of `isolab compare`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: (String, String, String),
    pub median_a: f64,
    pub median_b: f64,
    pub ratio: f64,
    pub ci: (f64, f64),
    pub significant: bool,
}

/// Compares two runs: for every (scenario, metric, backend) in both, the
/// ratio of medians B/A with a bootstrap 95 % CI; a change is significant
/// when the interval excludes 1 and the change is over 5 %.
pub fn compare(a: &[Sample], b: &[Sample]) -> Vec<Change> {
    let (ca, cb) = (collect(a), collect(b));
    let mut out = Vec::new();
    for (k, va) in &ca {
        let Some(vb) = cb.get(k) else { continue };
        let (Some(ma), Some(mb)) = (stats::median(va), stats::median(vb)) else {
            continue;
        };
        let Some((ratio, ci)) = stats::ratio_of_medians(vb, va) else {
            continue;
        };
        let significant = (ci.0 > 1.0 || ci.1 < 1.0) && (ratio - 1.0).abs() > 0.05;
        out.push(Change {
            key: k.clone(),
            median_a: ma,
            median_b: mb,
            ratio,
            ci,
            significant,
        });
    }
    out
}

/// The comparison as a table, with a closing count.
pub fn render(changes: &[Change]) -> String {
    let mut out = format!(
        "{:<10} {:<32} {:<10} {:>12} {:>12} {:>8}  95% CI\n",
        "scenario", "metric", "backend", "median A", "median B", "B/A"
    );
    for ch in changes {
        out.push_str(&format!(
            "{:<10} {:<32} {:<10} {:>12.1} {:>12.1} {:>8.3}  [{:.3}, {:.3}]{}\n",
            ch.key.0,
            ch.key.1,
            ch.key.2,
            ch.median_a,
            ch.median_b,
            ch.ratio,
            ch.ci.0,
            ch.ci.1,
            if ch.significant { "  SIGNIFICANT" } else { "" }
        ));
    }
    out.push_str(&format!(
        "{} significant change(s) of {} compared figures\n",
        changes.iter().filter(|c| c.significant).count(),
        changes.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(backend: &str, v: f64) -> Sample {
        Sample {
            run_id: "r".into(),
            host_id: "h".into(),
            backend: backend.into(),
            guest: "agent".into(),
            scenario: "startup".into(),
            iteration: 0,
            metric: "launch_to_exit".into(),
            unit: "ns".into(),
            value: v,
        }
    }

    #[test]
    fn flags_a_real_change_and_not_noise() {
        let a: Vec<Sample> = (0..30)
            .map(|i| s("container", 100.0 + (i % 5) as f64))
            .collect();
        let same: Vec<Sample> = (0..30)
            .map(|i| s("container", 100.0 + ((i + 2) % 5) as f64))
            .collect();
        let slower: Vec<Sample> = (0..30)
            .map(|i| s("container", 150.0 + (i % 5) as f64))
            .collect();
        let c = compare(&a, &same);
        assert_eq!(c.len(), 1);
        assert!(!c[0].significant, "{:?}", c[0]);
        let c = compare(&a, &slower);
        assert!(c[0].significant && c[0].ratio > 1.4, "{:?}", c[0]);
        assert!(
            compare(&a, &[s("crun", 1.0)]).is_empty(),
            "only keys present in both runs"
        );
    }
}
