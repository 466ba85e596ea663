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

    /// Makes the home if needed and keeps it private (0700): it holds image
    /// layers and writable layers whose setuid files, owned by root, any
    /// local user could otherwise run as root, and logs other users must
    /// not read.
    ///
    /// Only a directory that is empty or already an isolab home is made
    /// private; any other open directory (say, someone's home) is refused
    /// rather than changed.
    pub fn prepare(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.root)?;
        let mode = std::fs::metadata(&self.root)?.permissions().mode();
        if mode & 0o077 == 0 {
            return Ok(());
        }
        let ours = std::fs::read_dir(&self.root)?.flatten().all(|e| {
            ["images", "blobs", "layers", "containers", "peers", "cache"]
                .contains(&e.file_name().to_string_lossy().as_ref())
        });
        if !ours {
            return Err(std::io::Error::other(format!(
                "it is open to other users (mode {:o}) and holds files that are not isolab's: give isolab a directory of its own, or make this one private with chmod 700",
                mode & 0o777
            )));
        }
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
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
    fn the_home_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        Home::new(&root).prepare().unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let fresh = Home::new(dir.path().join("new"));
        fresh.prepare().unwrap();
        assert_eq!(
            std::fs::metadata(fresh.root())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // Someone else's open directory is refused, not changed.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("notes.txt"), b"x").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Home::new(&shared).prepare().unwrap_err();
        assert!(e.to_string().contains("not isolab's"), "{e}");
        assert_eq!(
            std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777,
            0o755
        );
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
