//! What every side of the lab must agree on, in one `no_std` crate.
//!
//! The Linux agent, the bare lab guest (built by `microvm/build.rs` with
//! the installed rustc, no std, no SSE), the monitor and the lab's
//! orchestration all read the same definitions:
//!
//! * [`ports`]: the lab's I/O ports and boot-marker labels;
//! * [`kernels`]: the compute kernels whose results the host can check;
//! * [`catalog`]: the scenarios — names, parameters, which guests run
//!   them, what they measure and in which unit;
//! * [`stage`]: the stages of an instance's life, whose ends are marks;
//! * `mark` (with the `std` feature): the one `Mark` type and the one
//!   clock read.
//!
//! Nothing here allocates, formats or touches floating point, so the bare
//! guest links it as an rlib built with its own flags.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

pub mod catalog;
pub mod kernels;
#[cfg(feature = "std")]
pub mod mark;
pub mod ports;
pub mod stage;
