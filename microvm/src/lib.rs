//! isolab's microVM monitor.
//!
//! Design note: Firecracker's shape, small enough to read in an evening.
//! [`vmm::boot`] is the whole boot path as a list of stamped stages;
//! devices sit on a [`devices::Bus`]; vCPU exits are decided by the pure
//! [`vcpu::handle_exit`]; [`kernel`] tells what a kernel file is before
//! anything is loaded. The bare lab guest (`guest/main.rs`) is built by
//! `build.rs` and embedded as [`BARE_GUEST`].
pub mod arch;
pub mod devices;
pub mod jail;
pub mod kernel;
pub mod vcpu;
pub mod vmm;

/// The lab's ports, shared with the guests (see `isolab-abi`).
pub use isolab_abi::ports;

/// The bare lab guest ELF, built from `guest/main.rs` by `build.rs`.
pub static BARE_GUEST: &[u8] = include_bytes!(env!("ISOLAB_GUEST_ELF"));
