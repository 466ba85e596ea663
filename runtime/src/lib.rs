//! isolab's namespace container runtime.
pub mod cgroups;
