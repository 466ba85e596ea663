//! cgroups: layout detection (v1, v2, hybrid) and, per instance, a
//! [`CgroupManager`] chosen by that detection.
pub mod detect;

pub use detect::{CgroupLayout, CgroupMode};
