//! isolab's microVM monitor.
//!
//! Design note: Firecracker's shape, small enough to read in an evening.
//! [`kernel`] tells what a kernel file is before anything is loaded.
pub mod kernel;
