//! isolab's orchestration: everything that ties the engines together.
//!
//! The `isolab` binary is a thin clap front over this crate; tests and the
//! book reach the same code without spawning the CLI.
//!
//! ```text
//!                      isolab (CLI: clap, printing, exit codes)
//!                                   │
//!   ┌───────────────────────── isolab-lab ─────────────────────────────┐
//!   │ run ─┐  bench ─┐  probes ─┐       report   doctor                │
//!   │      └─────────┴──────────┴─▶ backend::registry()                │
//!   │                               │  Backend trait, one file each:   │
//!   │                               ├─ backends::container  (runtime)  │
//!   │                               ├─ backends::oci        (crun/runc)│
//!   │                               ├─ backends::microvm    (isolab-vmm)│
//!   │                               └─ backends::qemu       (QEMU)     │
//!   │ instances (state, ps/logs/stop/rm/-d)   images (image, disk, cache)│
//!   │ Home (the on-disk layout)    linux_guest    capture    clock     │
//!   └──────────────────────────────────────────────────────────────────┘
//!        │             │              │               │
//!   isolab-runtime  isolab-microvm  isolab-scenarios  isolab-reports
//!                        └──── isolab-abi (ports, kernels, catalog) ────┘
//! ```
//!
//! * [`backend`]: the [`backend::Backend`] trait and its registry — a new
//!   backend is one file under `backends/` plus one registry line;
//! * [`isolab_abi::catalog`]: the one table of scenarios;
//! * [`home::Home`]: the one owner of the on-disk layout;
//! * [`run`], [`bench`], [`probes`]: what runs, in which order, how it is
//!   timed and cleaned up;
//! * [`report`], [`doctor`]: what the user reads.
pub mod backend;
pub mod backends;
pub mod bench;
pub mod build;
pub mod capture;
pub mod clock;
pub mod doctor;
pub mod home;
pub mod host;
pub mod images;
pub mod instances;
pub mod linux_guest;
pub mod network;
pub mod oci_runtime;
pub mod probes;
pub mod report;
pub mod run;
pub mod selfprotect;

pub use backend::{Attach, Backend, Guest, InstanceSpec, Kind, Outcome, VmSpec};
pub use home::Home;
pub use isolab_abi::catalog;
