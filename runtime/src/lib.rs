//! isolab's namespace container runtime.
pub mod archive;
pub mod cgroups;
pub mod container;
pub mod diskimage;
pub mod image;
pub mod initramfs;
pub mod launcher;
pub mod net;
pub mod registry;
pub mod seccomp;
