//! Statistics over repetitions: median, p95, min–max, a bootstrap 95 %
//! confidence interval of the median, and ratios of medians.
//!
//! Percentiles use linear interpolation between closest ranks (the
//! "type 7" definition of R and NumPy's default), so results can be checked
//! against either tool. The bootstrap uses a fixed-seed SplitMix64 so the
//! same samples always give the same interval.

/// Summary of one distribution.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Bootstrap 95 % CI of the median (low, high).
    pub ci95: (f64, f64),
}

/// The `q`-quantile (0..=1) of already sorted data, type-7 interpolation.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

fn sorted(data: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = data.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Median of the data (non-finite values ignored).
pub fn median(data: &[f64]) -> Option<f64> {
    quantile_sorted(&sorted(data), 0.5)
}

/// SplitMix64: tiny, fast, good enough to resample.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Number of bootstrap resamples.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Bootstrap percentile 95 % CI of `stat` over `data`.
fn bootstrap_ci<F: Fn(&mut [f64]) -> f64>(data: &[f64], seed: u64, stat: F) -> (f64, f64) {
    let mut rng = SplitMix64(seed);
    let mut stats = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut buf = vec![0.0; data.len()];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for slot in buf.iter_mut() {
            *slot = data[rng.below(data.len())];
        }
        stats.push(stat(&mut buf));
    }
    stats.sort_by(|a, b| a.total_cmp(b));
    (
        quantile_sorted(&stats, 0.025).unwrap_or(f64::NAN),
        quantile_sorted(&stats, 0.975).unwrap_or(f64::NAN),
    )
}

fn median_in_place(buf: &mut [f64]) -> f64 {
    buf.sort_by(|a, b| a.total_cmp(b));
    quantile_sorted(buf, 0.5).unwrap_or(f64::NAN)
}

/// Summarises a distribution; `None` when there is no finite value.
pub fn summarize(data: &[f64]) -> Option<Summary> {
    let s = sorted(data);
    if s.is_empty() {
        return None;
    }
    let ci95 = bootstrap_ci(&s, 0x15_01AB, median_in_place);
    Some(Summary {
        n: s.len(),
        median: quantile_sorted(&s, 0.5)?,
        p95: quantile_sorted(&s, 0.95)?,
        min: s[0],
        max: s[s.len() - 1],
        mean: s.iter().sum::<f64>() / s.len() as f64,
        ci95,
    })
}

/// Ratio of medians `a / b` with a bootstrap 95 % CI (each side resampled
/// independently). `None` when either side is empty or `b`'s median is 0.
pub fn ratio_of_medians(a: &[f64], b: &[f64]) -> Option<(f64, (f64, f64))> {
    ratio_test(a, b).map(|t| (t.ratio, t.ci95))
}

/// A ratio of medians with its bootstrap 95 % CI and a two-sided
/// bootstrap p-value for "the ratio is 1".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioTest {
    pub ratio: f64,
    pub ci95: (f64, f64),
    /// Twice the share of bootstrap ratios on the far side of 1 (at least
    /// one resample's worth, never 0).
    pub p: f64,
}

/// The ratio of medians `a / b` with its bootstrap interval and p-value.
pub fn ratio_test(a: &[f64], b: &[f64]) -> Option<RatioTest> {
    let (sa, sb) = (sorted(a), sorted(b));
    if sa.is_empty() || sb.is_empty() {
        return None;
    }
    let mb = quantile_sorted(&sb, 0.5)?;
    if mb == 0.0 {
        return None;
    }
    let ratio = quantile_sorted(&sa, 0.5)? / mb;
    let mut rng = SplitMix64(0xA11CE);
    let mut ratios = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let (mut ba, mut bb) = (vec![0.0; sa.len()], vec![0.0; sb.len()]);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for x in ba.iter_mut() {
            *x = sa[rng.below(sa.len())];
        }
        for x in bb.iter_mut() {
            *x = sb[rng.below(sb.len())];
        }
        let den = median_in_place(&mut bb);
        if den != 0.0 {
            ratios.push(median_in_place(&mut ba) / den);
        }
    }
    ratios.sort_by(|x, y| x.total_cmp(y));
    let n = ratios.len().max(1) as f64;
    let below = ratios.iter().filter(|r| **r <= 1.0).count() as f64;
    let above = ratios.iter().filter(|r| **r >= 1.0).count() as f64;
    let p = (2.0 * below.min(above) / n).clamp(1.0 / n, 1.0);
    Some(RatioTest {
        ratio,
        ci95: (
            quantile_sorted(&ratios, 0.025)?,
            quantile_sorted(&ratios, 0.975)?,
        ),
        p,
    })
}

/// Holm–Bonferroni: which of `p` values are significant at family-wise
/// error rate `alpha`, in the order given.
pub fn holm(p: &[f64], alpha: f64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let m = p.len();
    let mut out = vec![false; m];
    for (rank, &i) in order.iter().enumerate() {
        if p[i] <= alpha / (m - rank) as f64 {
            out[i] = true;
        } else {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_steps_down_and_stops() {
        assert_eq!(holm(&[0.01, 0.04, 0.03], 0.05), [true, false, false]);
        assert_eq!(holm(&[0.001, 0.01, 0.02], 0.05), [true, true, true]);
        assert!(holm(&[], 0.05).is_empty());
    }

    #[test]
    fn a_clear_difference_has_a_small_p_and_none_a_large_one() {
        let a: Vec<f64> = (0..30).map(|i| 100.0 + (i % 7) as f64).collect();
        let b: Vec<f64> = (0..30).map(|i| 150.0 + (i % 5) as f64).collect();
        let t = ratio_test(&b, &a).unwrap();
        assert!(t.p <= 0.001 && t.ratio > 1.4, "{t:?}");
        let c: Vec<f64> = (0..30).map(|i| 100.0 + ((i * 3) % 7) as f64).collect();
        assert!(ratio_test(&c, &a).unwrap().p > 0.2);
    }

    #[test]
    fn quantiles_match_numpy_type7() {
        let d = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(median(&d), Some(2.5));
        // numpy.percentile([1,2,3,4], 95) == 3.85
        let s = summarize(&d).unwrap();
        assert!((s.p95 - 3.85).abs() < 1e-12);
        assert_eq!((s.min, s.max, s.n), (1.0, 4.0, 4));
        assert_eq!(s.mean, 2.5);
    }

    #[test]
    fn empty_and_non_finite() {
        assert_eq!(median(&[]), None);
        assert!(summarize(&[f64::NAN]).is_none());
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn constant_data_has_a_degenerate_interval() {
        let s = summarize(&[7.0; 25]).unwrap();
        assert_eq!(s.ci95, (7.0, 7.0));
    }

    #[test]
    fn ci_covers_the_true_median_of_a_uniform_sample() {
        // 0..=999 evenly: the true median is 499.5; the 95% CI must hold it
        // and be narrow compared with the range.
        let d: Vec<f64> = (0..1000).map(f64::from).collect();
        let s = summarize(&d).unwrap();
        assert!(s.ci95.0 <= 499.5 && 499.5 <= s.ci95.1, "{:?}", s.ci95);
        assert!(s.ci95.1 - s.ci95.0 < 120.0, "{:?}", s.ci95);
    }

    #[test]
    fn ratio_of_medians_and_interval() {
        let a: Vec<f64> = (0..50).map(|i| 10.0 + (i % 5) as f64).collect();
        let b: Vec<f64> = a.iter().map(|x| x * 2.0).collect();
        let (r, (lo, hi)) = ratio_of_medians(&a, &b).unwrap();
        assert!((r - 0.5).abs() < 1e-12);
        assert!(lo <= 0.5 && 0.5 <= hi);
        assert!(ratio_of_medians(&a, &[0.0]).is_none());
        assert!(ratio_of_medians(&[], &a).is_none());
    }
}
