//! The long-format sample row and its CSV form.
//!
//! {{#include}}-able: the column table below is what the book shows as the
//! schema. Changing a column name or order is a schema change and must bump
//! [`crate::MANIFEST_SCHEMA_VERSION`]; the `schema_is_stable` test guards it.
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

// ANCHOR: columns
/// The CSV columns of `samples.csv`, in order.
///
/// | column | meaning |
/// |---|---|
/// | `run_id` | the run this sample belongs to (see `manifest.json`) |
/// | `host_id` | a stable id of the host (hash of machine id and CPU model) |
/// | `backend` | `container`, `crun`, `runc`, `microvm`, `qemu` |
/// | `guest` | what ran inside: `agent` (container), `bare` or `linux` (VM) |
/// | `scenario` | `startup`, `cpu`, `memory`, … |
/// | `iteration` | repetition number; warm-up repetitions are not written |
/// | `metric` | e.g. `launch_to_ready`, `phase.clone`, `memory.cgroup_peak` |
/// | `unit` | `ns`, `bytes`, `ops_per_s`, `count`, … |
/// | `value` | the number, as a float |
pub const SAMPLE_COLUMNS: [&str; 9] = [
    "run_id",
    "host_id",
    "backend",
    "guest",
    "scenario",
    "iteration",
    "metric",
    "unit",
    "value",
];
// ANCHOR_END: columns

/// One measured number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub run_id: String,
    pub host_id: String,
    pub backend: String,
    pub guest: String,
    pub scenario: String,
    pub iteration: u32,
    pub metric: String,
    pub unit: String,
    pub value: f64,
}

/// Errors reading or writing `samples.csv`.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("samples csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("samples csv header is {found:?}, expected {expected:?}: the file is not an isolab samples.csv of this schema version")]
    Header {
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error("samples csv row {row}: value {value} is not a finite number")]
    NotFinite { row: usize, value: f64 },
}

/// Writes samples (with a header) as CSV.
pub fn write_samples<W: Write>(out: W, samples: &[Sample]) -> Result<(), SampleError> {
    let mut w = csv::Writer::from_writer(out);
    // An empty run still gets its header, so the file is valid CSV.
    if samples.is_empty() {
        w.write_record(SAMPLE_COLUMNS)?;
    }
    for (i, s) in samples.iter().enumerate() {
        if !s.value.is_finite() {
            return Err(SampleError::NotFinite {
                row: i + 1,
                value: s.value,
            });
        }
        w.serialize(s)?;
    }
    w.flush().map_err(csv::Error::from)?;
    Ok(())
}

/// Appends samples one by one (a bench writes rows as it measures them, so
/// an interrupted run is still a valid file). Writes the header once.
pub struct SampleWriter<W: Write> {
    inner: csv::Writer<W>,
    row: usize,
}

impl<W: Write> SampleWriter<W> {
    pub fn new(out: W) -> Result<Self, SampleError> {
        let mut inner = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(out);
        inner.write_record(SAMPLE_COLUMNS)?;
        inner.flush().map_err(csv::Error::from)?;
        Ok(SampleWriter { inner, row: 0 })
    }

    /// Appends one row and flushes it to the file.
    pub fn append(&mut self, s: &Sample) -> Result<(), SampleError> {
        self.row += 1;
        if !s.value.is_finite() {
            return Err(SampleError::NotFinite {
                row: self.row,
                value: s.value,
            });
        }
        self.inner.serialize(s)?;
        self.inner.flush().map_err(csv::Error::from)?;
        Ok(())
    }
}

/// Reads samples, checking the header against [`SAMPLE_COLUMNS`].
pub fn read_samples<R: Read>(input: R) -> Result<Vec<Sample>, SampleError> {
    let mut r = csv::Reader::from_reader(input);
    let header: Vec<String> = r.headers()?.iter().map(str::to_owned).collect();
    if header != SAMPLE_COLUMNS {
        return Err(SampleError::Header {
            found: header,
            expected: SAMPLE_COLUMNS.iter().map(|s| s.to_string()).collect(),
        });
    }
    let mut out = Vec::new();
    for (i, row) in r.deserialize().enumerate() {
        let s: Sample = row?;
        if !s.value.is_finite() {
            return Err(SampleError::NotFinite {
                row: i + 1,
                value: s.value,
            });
        }
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metric: &str, value: f64) -> Sample {
        Sample {
            run_id: "r1".into(),
            host_id: "h1".into(),
            backend: "container".into(),
            guest: "agent".into(),
            scenario: "startup".into(),
            iteration: 3,
            metric: metric.into(),
            unit: "ns".into(),
            value,
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let rows = vec![
            sample("launch_to_ready", 1_234_567.0),
            sample("phase.clone, with comma \"quoted\"", 0.5),
            sample("memory.cgroup_peak", 1.0e12),
        ];
        let mut buf = Vec::new();
        write_samples(&mut buf, &rows).unwrap();
        let back = read_samples(buf.as_slice()).unwrap();
        assert_eq!(back, rows);
    }

    #[test]
    fn schema_is_stable() {
        let mut buf = Vec::new();
        write_samples(&mut buf, &[sample("m", 1.0)]).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            "run_id,host_id,backend,guest,scenario,iteration,metric,unit,value"
        );
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "r1,h1,container,agent,startup,3,m,ns,1.0"
        );
    }

    #[test]
    fn incremental_writer_writes_one_header() {
        let mut buf = Vec::new();
        {
            let mut w = SampleWriter::new(&mut buf).unwrap();
            w.append(&sample("a", 1.0)).unwrap();
            w.append(&sample("b", 2.0)).unwrap();
            assert!(w.append(&sample("c", f64::INFINITY)).is_err());
        }
        let text = String::from_utf8(buf.clone()).unwrap();
        assert_eq!(text.matches("run_id").count(), 1, "{text}");
        assert_eq!(read_samples(buf.as_slice()).unwrap().len(), 2);
        // A writer that was never appended to still leaves a valid file.
        let mut empty = Vec::new();
        SampleWriter::new(&mut empty).unwrap();
        assert!(read_samples(empty.as_slice()).unwrap().is_empty());
    }

    #[test]
    fn empty_run_has_a_header() {
        let mut buf = Vec::new();
        write_samples(&mut buf, &[]).unwrap();
        assert_eq!(read_samples(buf.as_slice()).unwrap(), vec![]);
    }

    #[test]
    fn wrong_header_is_rejected() {
        let err = read_samples("a,b\n1,2\n".as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("not an isolab samples.csv"),
            "{err}"
        );
    }

    #[test]
    fn non_finite_values_are_rejected() {
        let mut buf = Vec::new();
        assert!(matches!(
            write_samples(&mut buf, &[sample("m", f64::NAN)]),
            Err(SampleError::NotFinite { row: 1, .. })
        ));
        let text = "run_id,host_id,backend,guest,scenario,iteration,metric,unit,value\nr,h,b,g,s,0,m,ns,inf\n";
        assert!(read_samples(text.as_bytes()).is_err());
    }

    #[test]
    fn truncated_row_is_an_error() {
        let text = "run_id,host_id,backend,guest,scenario,iteration,metric,unit,value\nr,h,b,g\n";
        assert!(read_samples(text.as_bytes()).is_err());
    }
}
