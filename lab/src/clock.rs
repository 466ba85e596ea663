//! Time, read one way: the host's `CLOCK_MONOTONIC` for every mark, and
//! UTC wall time (RFC 3339) for the run manifest.

/// Nanoseconds of `CLOCK_MONOTONIC`: the clock every mark is read on.
pub use isolab_runtime::container::monotonic_ns;

/// Nanoseconds per TSC cycle on this host, measured once per process
/// against `CLOCK_MONOTONIC` over 20 ms. A KVM guest's TSC runs at the
/// host's rate (neither monitor scales it), so this turns the cycles a
/// guest counted into time. None where there is no TSC.
pub fn ns_per_tsc_cycle() -> Option<f64> {
    static RATE: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: rdtsc has no preconditions in user space.
            let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
            let (t0, c0) = (monotonic_ns(), tsc());
            std::thread::sleep(std::time::Duration::from_millis(20));
            let (t1, c1) = (monotonic_ns(), tsc());
            let cycles = c1.wrapping_sub(c0);
            (cycles > 0).then(|| t1.saturating_sub(t0) as f64 / cycles as f64)
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    })
}

/// UTC time as RFC 3339 (no external time crate needed for this).
pub fn rfc3339_now() -> String {
    rfc3339(unix_now())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_905_480), "2026-11-28T22:38:00Z");
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        assert!(monotonic_ns() >= a);
    }
}
