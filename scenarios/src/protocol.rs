//! The agent's output protocol: one JSON line per result, versioned.
//!
//! A result line starts with [`RESULT_PREFIX`] so it can be found in a
//! serial console's noise; the rest of the line is a [`ResultLine`].
use serde::{Deserialize, Serialize};

/// Protocol version; bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Every result line starts with this.
pub const RESULT_PREFIX: &str = "@isolab ";

/// Printed alone on a line when a holding scenario has its workload in
/// place: the harness reads the instance's memory then.
pub use isolab_abi::ports::HOLD_LINE;

/// A named number with its unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub value: f64,
}

/// An instant inside the instance, on the clock the instance has
/// (`CLOCK_MONOTONIC`; in a container that is the host's clock): the
/// lab's one `Mark` type.
pub use isolab_abi::mark::Mark;

/// One result, as printed by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u32,
    pub scenario: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub marks: Vec<Mark>,
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Scenario-specific structured data (e.g. the probe table).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

/// A time in nanoseconds as a person reads it: `850 ns`, `11.5 µs`,
/// `3.2 ms`, `1.25 s`.
pub fn human_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A metric's value with its unit, in words.
pub fn human_value(unit: &str, v: f64) -> String {
    match unit {
        "ns" => human_ns(v),
        "ns_per_op" => format!("{} per operation", human_ns(v)),
        "ns_per_page" => format!("{} per page", human_ns(v)),
        "ns_per_exit" => format!("{} per VM exit", human_ns(v)),
        "bytes_per_s" if v >= (1u64 << 30) as f64 => {
            format!("{:.2} GiB/s", v / (1u64 << 30) as f64)
        }
        "bytes_per_s" => format!("{:.1} MiB/s", v / (1u64 << 20) as f64),
        other => format!("{v} {other}"),
    }
}

/// What a terminal shows for one line of an agent's output: a result
/// line in words (one line per figure), nothing for the hold line, and
/// any other line as it is (None).
pub fn human_line(line: &str) -> Option<String> {
    if line == HOLD_LINE {
        return Some(String::new());
    }
    let r: ResultLine = serde_json::from_str(line.strip_prefix(RESULT_PREFIX)?).ok()?;
    let mut out = match (&r.ok, &r.error) {
        (true, _) => format!("{}: ok", r.scenario),
        (false, e) => format!(
            "{}: failed: {}",
            r.scenario,
            e.as_deref().unwrap_or("no reason given")
        ),
    };
    for m in &r.metrics {
        out.push_str(&format!(
            "\n  {:<28} {}",
            m.name,
            human_value(&m.unit, m.value)
        ));
    }
    if let Some(probes) = r.data.get("probes").and_then(|p| p.as_array()) {
        for p in probes {
            let field = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
            out.push_str(&format!(
                "\n  {:<26} {:<14} {}",
                field("name"),
                field("verdict"),
                field("value")
            ));
        }
    } else if !r.data.is_null() {
        out.push_str("\n  (structured data: run with --json or --raw, or `logs --raw`)");
    }
    Some(out)
}

impl ResultLine {
    pub fn new(scenario: &str) -> Self {
        ResultLine {
            v: PROTOCOL_VERSION,
            scenario: scenario.to_owned(),
            ok: true,
            error: None,
            marks: Vec::new(),
            metrics: Vec::new(),
            data: serde_json::Value::Null,
        }
    }

    pub fn metric(&mut self, name: &str, unit: &str, value: f64) -> &mut Self {
        self.metrics.push(Metric {
            name: name.to_owned(),
            unit: unit.to_owned(),
            value,
        });
        self
    }

    pub fn mark(&mut self, name: &str, ns: u64) -> &mut Self {
        self.marks.push(Mark {
            name: name.to_owned(),
            ns,
        });
        self
    }

    /// The full line, prefix included, no newline.
    pub fn to_line(&self) -> String {
        format!(
            "{RESULT_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_else(|e| format!(
                "{{\"v\":{PROTOCOL_VERSION},\"ok\":false,\"scenario\":\"?\",\"error\":\"{e}\"}}"
            ))
        )
    }
}

/// Why an instance's output held no usable result.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{backend}: the agent printed no result line; last output:\n{tail}")]
    Missing { backend: String, tail: String },
    #[error("{backend}: malformed result line ({reason}); last output:\n{tail}")]
    Malformed {
        backend: String,
        reason: String,
        tail: String,
    },
    #[error("{backend}: result line has protocol version {found}, this isolab speaks {PROTOCOL_VERSION}: rebuild the image with this isolab")]
    Version { backend: String, found: u32 },
}

/// The last `n` lines of `output`, for error messages.
pub fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds and parses the last result line in an instance's output.
pub fn parse_output(backend: &str, output: &str) -> Result<ResultLine, ProtocolError> {
    let Some(line) = output.lines().rev().find_map(|l| {
        l.trim_end_matches('\r')
            .split_once(RESULT_PREFIX)
            .map(|(_, rest)| rest)
    }) else {
        return Err(ProtocolError::Missing {
            backend: backend.to_owned(),
            tail: tail(output, 10),
        });
    };
    let probe: serde_json::Value =
        serde_json::from_str(line).map_err(|e| ProtocolError::Malformed {
            backend: backend.to_owned(),
            reason: e.to_string(),
            tail: tail(output, 10),
        })?;
    let v = probe.get("v").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    if v != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            backend: backend.to_owned(),
            found: v,
        });
    }
    serde_json::from_value(probe).map_err(|e| ProtocolError::Malformed {
        backend: backend.to_owned(),
        reason: e.to_string(),
        tail: tail(output, 10),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_noise() {
        let mut r = ResultLine::new("cpu");
        r.metric("sha256", "bytes_per_s", 1.5e8).mark("ready", 42);
        let out = format!("[    0.1] noise\r\n{}\r\nreboot: Restarting\n", r.to_line());
        assert_eq!(parse_output("microvm", &out).unwrap(), r);
    }

    #[test]
    fn missing_malformed_and_wrong_version() {
        let e = parse_output("container", "hello\nworld\n").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("container: the agent printed no result line"));
        assert!(e.to_string().contains("world"));
        let e = parse_output("crun", "@isolab {\"v\":1,").unwrap_err();
        assert!(matches!(e, ProtocolError::Malformed { .. }), "{e}");
        let e =
            parse_output("runc", "@isolab {\"v\":99,\"scenario\":\"x\",\"ok\":true}").unwrap_err();
        assert!(matches!(e, ProtocolError::Version { found: 99, .. }), "{e}");
    }
}

#[cfg(test)]
mod human_tests {
    use super::*;

    #[test]
    fn result_lines_read_as_words_and_other_lines_pass() {
        let mut r = ResultLine::new("net-rtt");
        r.metric("net.udp_rtt_p50", "ns", 11520.0);
        r.metric("net.tcp_stream", "bytes_per_s", 3.0 * (1u64 << 30) as f64);
        let h = human_line(&r.to_line()).unwrap();
        assert!(h.starts_with("net-rtt: ok"), "{h}");
        assert!(h.contains("11.5 µs") && h.contains("3.00 GiB/s"), "{h}");
        assert_eq!(human_line(HOLD_LINE).as_deref(), Some(""));
        assert_eq!(human_line("hello"), None);
        assert_eq!(human_line("@isolab not json"), None);
        assert_eq!(human_ns(850.0), "850 ns");
        assert_eq!(human_ns(3.2e6), "3.2 ms");
    }
}
