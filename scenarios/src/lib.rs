//! The workloads and the agent's output protocol.
//!
//! * [`kernels`] holds compute kernels written against `core` only, so the
//!   bare lab guest (`no_std`) includes the very same source file.
//! * [`protocol`] is the versioned JSON line every backend's agent prints
//!   and the harness parses.

pub mod inspect;
pub mod kernels;
pub mod probes;
pub mod protocol;
pub mod workloads;
