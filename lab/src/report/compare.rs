//! `isolab compare`: two runs, figure by figure.
use isolab_reports::stats;
use isolab_reports::Sample;

use super::run::collect;

/// One row of `isolab compare`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// (scenario, metric, backend).
    pub key: (String, String, String),
    pub unit: String,
    pub median_a: f64,
    pub median_b: f64,
    pub ratio: f64,
    pub ci: (f64, f64),
    /// Bootstrap p-value of "the ratio is 1".
    pub p: f64,
    pub significant: bool,
}

/// Family-wise error rate of `compare`.
pub const ALPHA: f64 = 0.05;

/// Smallest change `compare` reports as significant.
pub const MIN_EFFECT: f64 = 0.05;

/// Compares two runs: for every (scenario, metric, backend) in both, the
/// ratio of medians B/A with a bootstrap 95 % CI and p-value. A change is
/// significant when it passes Holm–Bonferroni over all compared figures at
/// [`ALPHA`] and is over [`MIN_EFFECT`]: comparing 80 figures at 95 %
/// each would flag about four by chance.
pub fn compare(a: &[Sample], b: &[Sample]) -> Vec<Change> {
    let (ca, cb) = (collect(a), collect(b));
    let units: std::collections::BTreeMap<(&str, &str), &str> = a
        .iter()
        .map(|s| ((s.scenario.as_str(), s.metric.as_str()), s.unit.as_str()))
        .collect();
    let mut out = Vec::new();
    for (k, va) in &ca {
        let Some(vb) = cb.get(k) else { continue };
        let (Some(ma), Some(mb)) = (stats::median(va), stats::median(vb)) else {
            continue;
        };
        let Some(t) = stats::ratio_test(vb, va) else {
            continue;
        };
        out.push(Change {
            key: k.clone(),
            unit: units
                .get(&(k.0.as_str(), k.1.as_str()))
                .copied()
                .unwrap_or("")
                .to_owned(),
            median_a: ma,
            median_b: mb,
            ratio: t.ratio,
            ci: t.ci95,
            p: t.p,
            significant: false,
        });
    }
    let p: Vec<f64> = out.iter().map(|c| c.p).collect();
    for (c, pass) in out.iter_mut().zip(stats::holm(&p, ALPHA)) {
        c.significant = pass && (c.ratio - 1.0).abs() > MIN_EFFECT;
    }
    out
}

/// A value in the unit people read: ns as ms or µs, bytes as KiB, rates
/// as MiB/s.
pub fn human(value: f64, unit: &str) -> String {
    match unit {
        "ns" if value >= 1e6 => format!("{:.2} ms", value / 1e6),
        "ns" | "ns_per_op" | "ns_per_page" | "ns_per_exit" => format!("{:.2} µs", value / 1e3),
        "bytes" => format!("{:.0} KiB", value / 1024.0),
        "bytes_per_s" => format!("{:.1} MiB/s", value / 1048576.0),
        "" => format!("{value:.1}"),
        other => format!("{value:.1} {other}"),
    }
}

/// The comparison as a table, with a closing count that says how
/// significance was decided.
pub fn render(changes: &[Change]) -> String {
    let mut out = format!(
        "{:<10} {:<32} {:<10} {:>14} {:>14} {:>7}  {:<17} {:>7}\n",
        "scenario", "metric", "backend", "median A", "median B", "B/A", "95% CI", "p"
    );
    for ch in changes {
        out.push_str(&format!(
            "{:<10} {:<32} {:<10} {:>14} {:>14} {:>7.3}  [{:.3}, {:.3}] {:>7.4}{}\n",
            ch.key.0,
            ch.key.1,
            ch.key.2,
            human(ch.median_a, &ch.unit),
            human(ch.median_b, &ch.unit),
            ch.ratio,
            ch.ci.0,
            ch.ci.1,
            ch.p,
            if ch.significant { "  SIGNIFICANT" } else { "" }
        ));
    }
    out.push_str(&format!(
        "{} significant change(s) of {} compared figures (Holm–Bonferroni at {ALPHA} over all of them, and a change over {:.0} %)\n",
        changes.iter().filter(|c| c.significant).count(),
        changes.len(),
        MIN_EFFECT * 100.0
    ));
    out
}

/// A run given as a directory or as a run id under `results`.
pub fn resolve_run(arg: &std::path::Path, results: &std::path::Path) -> std::path::PathBuf {
    if arg.join("manifest.json").is_file() || arg.components().count() > 1 {
        return arg.to_path_buf();
    }
    let under = results.join(arg);
    if under.join("manifest.json").is_file() {
        under
    } else {
        arg.to_path_buf()
    }
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

    /// Two runs of the same code: 80 figures drawn from one distribution
    /// must not report a significant change.
    #[test]
    fn back_to_back_runs_of_the_same_code_flag_nothing() {
        let mut rng = 0x1234_5678_u64;
        let mut noisy = |base: f64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            base * (1.0 + (rng % 1000) as f64 / 1000.0 * 0.3)
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for fig in 0..80 {
            let base = 1000.0 * (fig + 1) as f64;
            for i in 0..20 {
                let mut x = s("container", noisy(base));
                x.metric = format!("m{fig}");
                x.iteration = i;
                a.push(x);
                let mut y = s("container", noisy(base));
                y.metric = format!("m{fig}");
                b.push(y);
            }
        }
        let c = compare(&a, &b);
        assert_eq!(c.len(), 80);
        let flagged: Vec<_> = c.iter().filter(|c| c.significant).collect();
        assert!(flagged.is_empty(), "{flagged:?}");
        assert!(render(&c).contains("0 significant change(s) of 80"));
    }

    #[test]
    fn units_read_as_people_read_them() {
        assert_eq!(human(5_250_000.0, "ns"), "5.25 ms");
        assert_eq!(human(330.0, "ns_per_op"), "0.33 µs");
        assert_eq!(human(2048.0, "bytes"), "2 KiB");
        assert_eq!(human(3.0 * 1048576.0, "bytes_per_s"), "3.0 MiB/s");
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
