//! `Home`: the one owner of the lab's on-disk layout.
//!
//! ```text
//! $ISOLAB_HOME (default /var/lib/isolab)
//! ├── images/<name>.json        image records      ┐
//! ├── blobs/<sha256>            compressed layers  ├ the image store (runtime::image::Store)
//! ├── layers/<sha256>/          unpacked layers    ┘
//! ├── containers/<id>/          one instance: state.json, log, fs/ (writable layer)
//! ├── peers/<id>/               a peer's OCI bundle (rootfs, upper, work, config.json)
//! ├── peers/<peer>-state/       the peer's own --root
//! └── cache/                    generated, content-addressed artefacts (rebuilt on demand)
//! ```
//!
//! Nothing else in the lab joins path strings under the home: every
//! caller asks `Home` for the place it needs.
use std::path::{Path, PathBuf};

use isolab_runtime::image::Store;

/// The lab's home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// The home at `root` (nothing is created until something is written).
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The home's own directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image store (images, blobs, unpacked layers).
    pub fn store(&self) -> Store {
        Store::new(&self.root)
    }

    /// Where every instance's directory lives (`ps` lists it).
    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// One instance's directory.
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.instances_dir().join(id)
    }

    /// An instance's recorded state.
    pub fn state_file(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("state.json")
    }

    /// A detached instance's output.
    pub fn log_file(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("log")
    }

    /// The container's overlay dirs (upper, work, merged) under its
    /// instance dir.
    pub fn instance_fs(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("fs")
    }

    /// A container's writable (upper) layer.
    pub fn writable_layer(&self, id: &str) -> PathBuf {
        self.instance_fs(id).join("upper")
    }

    /// Where the peers' bundles and state roots live.
    pub fn peers_dir(&self) -> PathBuf {
        self.root.join("peers")
    }

    /// One peer run's OCI bundle.
    pub fn peer_bundle(&self, id: &str) -> PathBuf {
        self.peers_dir().join(id)
    }

    /// A peer's own state root (`crun --root`, `runc --root`).
    pub fn peer_state_root(&self, peer: &str) -> PathBuf {
        self.peers_dir().join(format!("{peer}-state"))
    }

    /// Generated artefacts: image disks, initramfs, the bare guest's ELF.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// One cached artefact, by file name.
    pub fn cache_file(&self, name: &str) -> PathBuf {
        self.cache_dir().join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_place_is_under_the_root() {
        let h = Home::new("/h");
        for p in [
            h.instances_dir(),
            h.instance_dir("a"),
            h.state_file("a"),
            h.log_file("a"),
            h.writable_layer("a"),
            h.peer_bundle("b"),
            h.peer_state_root("crun"),
            h.cache_file("x"),
        ] {
            assert!(p.starts_with("/h"), "{}", p.display());
        }
        assert_eq!(h.writable_layer("a"), Path::new("/h/containers/a/fs/upper"));
        assert_eq!(h.peer_state_root("runc"), Path::new("/h/peers/runc-state"));
    }
}
