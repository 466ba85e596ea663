//! Marks: named instants on the host's `CLOCK_MONOTONIC`, the one clock
//! every figure is read on — the one `Mark` type and the one clock read
//! of the whole lab (runtime, monitor, agent, harness, reports).
use std::string::String;

/// A named instant (`CLOCK_MONOTONIC`, ns).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub name: String,
    pub ns: u64,
}

impl Mark {
    pub fn new(name: &str, ns: u64) -> Mark {
        Mark {
            name: name.into(),
            ns,
        }
    }

    /// A mark for `stage`, now.
    pub fn now(stage: crate::stage::Stage) -> Mark {
        Mark::new(stage.name(), monotonic_ns())
    }

    /// The instant of the first mark called `name`.
    pub fn find(marks: &[Mark], name: &str) -> Option<u64> {
        marks.iter().find(|m| m.name == name).map(|m| m.ns)
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC` (0 if the clock cannot be read).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_their_json_shape_and_the_clock_moves() {
        let m = Mark::new("ready", 42);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"name":"ready","ns":42}"#
        );
        assert_eq!(Mark::find(&[m], "ready"), Some(42));
        let a = monotonic_ns();
        assert!(a > 0 && monotonic_ns() >= a);
    }
}
