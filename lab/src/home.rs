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

    /// Makes the home if needed and keeps what isolab stores there
    /// private: every directory of its own (images, blobs, layers,
    /// instances, peers' bundles, cache) is 0700, since layers and
    /// writable layers hold root-owned files — a setuid binary among them
    /// would be host root for any local user who could reach it — and
    /// instances hold logs other users must not read. The home itself is
    /// left as it is (it may be a directory with other uses).
    pub fn prepare(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::create_dir_all(&self.root)?;
        for sub in Self::OWN_DIRS {
            let d = self.root.join(sub);
            match std::fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {
                    if m.permissions().mode() & 0o077 != 0 {
                        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
                    }
                }
                Ok(_) => {
                    return Err(std::io::Error::other(format!(
                        "{} is not a directory: move it away",
                        d.display()
                    )))
                }
                Err(_) => std::fs::DirBuilder::new().mode(0o700).create(&d)?,
            }
        }
        Ok(())
    }

    /// The directories isolab keeps under its home.
    pub const OWN_DIRS: [&'static str; 6] =
        ["images", "blobs", "layers", "containers", "peers", "cache"];

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

    /// A tag unique to this home (from its path): the lab's containers
    /// from this home are the cgroups `<tag>-<id>` under the lab's parent,
    /// so `prune` here never touches another home's instances.
    pub fn cgroup_tag(&self) -> String {
        let path = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let h = path
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0x811c_9dc5u32, |h, x| {
                (h ^ u32::from(*x)).wrapping_mul(0x0100_0193)
            });
        format!("h{h:08x}")
    }

    /// The cgroup name of this home's instance `id`.
    pub fn cgroup_name(&self, id: &str) -> String {
        format!("{}-{id}", self.cgroup_tag())
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
    fn what_isolab_stores_is_private_and_the_home_itself_untouched() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        std::fs::create_dir_all(root.join("layers")).unwrap();
        std::fs::write(root.join("notes.txt"), b"someone's").unwrap();
        for p in [&root, &root.join("layers")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Home::new(&root).prepare().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o755, "the home itself is not changed");
        for sub in Home::OWN_DIRS {
            assert_eq!(mode(&root.join(sub)), 0o700, "{sub}");
        }
        assert_ne!(Home::new("/a").cgroup_tag(), Home::new("/b").cgroup_tag());
        assert!(Home::new("/a").cgroup_name("x").ends_with("-x"));
    }

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
