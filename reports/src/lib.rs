//! isolab's result model.
//!
//! A *run* is one invocation of the lab (one `isolab bench`, or one
//! `isolab run`). It produces:
//!
//! * `samples.csv` — the raw, long-format measurements, one [`Sample`] per
//!   row. Its column list ([`SAMPLE_COLUMNS`]) is a stable, documented
//!   schema: summaries, charts and the book are derived from it, never the
//!   other way round.
//! * `manifest.json` — one [`Manifest`]: who measured what, where, with
//!   which versions and parameters, so a run can be reproduced and compared.
#![forbid(unsafe_code)]

pub mod charts;
pub mod instance;
pub mod manifest;
pub mod sample;
pub mod stats;

pub use instance::{InstanceReport, Mark};
pub use manifest::{HostInfo, Manifest, MANIFEST_SCHEMA_VERSION};
pub use sample::{read_samples, write_samples, Sample, SampleError, SampleWriter, SAMPLE_COLUMNS};
