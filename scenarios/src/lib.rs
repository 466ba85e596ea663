//! The workloads and the agent's output protocol.
//!
//! * [`kernels`] holds compute kernels written against `core` only, in
//!   `isolab-abi`, so the bare lab guest (`no_std`) runs the very same code;
//!   [`catalog`] is the scenario table every side reads.
//! * [`protocol`] is the versioned JSON line every backend's agent prints
//!   and the harness parses.

pub mod inspect;
pub mod probes;
pub mod protocol;
pub mod workloads;

pub use isolab_abi::{catalog, kernels};
