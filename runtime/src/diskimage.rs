//! Image → ext4 disk: the same merged tree the container and the
//! initramfs get, as an ext4 filesystem in a file that the microVM serves
//! to its guest as a virtio-blk disk (`/dev/vda`).
//!
//! The filesystem is written by `mke2fs -d` (e2fsprogs) from the tree laid
//! out in a private temporary directory, so no loop device or mount is
//! involved and nothing is left behind when it fails. No journal (the lab
//! mounts it read-only, and a journal costs 4 MiB of a small disk), no
//! reserved blocks, and a UUID derived from the content, so the same image
//! gives the same disk identity.
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::initramfs::{tree_of_dir, InitramfsError, Node};

/// Errors writing or reading an ext4 disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    #[error("{tool} is not installed: install e2fsprogs (apt-get install e2fsprogs)")]
    MissingTool { tool: &'static str },
    #[error("{tool} failed on {path}: {detail}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("laying out the image's files in {path}: {source}")]
    Layout {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] InitramfsError),
}

/// Writes `tree` into `root` (which must exist and be empty): directories,
/// files and symlinks with their modes. Owners are the caller's (root
/// when isolab runs as root, as the image's files are).
pub fn materialize(tree: &BTreeMap<String, Node>, root: &Path) -> std::io::Result<()> {
    // BTreeMap order puts parents before children.
    for (name, node) in tree {
        let p = root.join(name);
        match node {
            Node::Dir { .. } => std::fs::create_dir(&p)?,
            Node::File { data, .. } => std::fs::write(&p, data)?,
            Node::Symlink { target } => symlink(target, &p)?,
        }
    }
    // Modes last, deepest first, so a read-only directory does not stop
    // its own children from being written.
    for (name, node) in tree.iter().rev() {
        let mode = match node {
            Node::Dir { mode } | Node::File { mode, .. } => *mode,
            Node::Symlink { .. } => continue,
        };
        std::fs::set_permissions(root.join(name), std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The disk size for a tree: its data in 4 KiB blocks, one block per
/// directory, room for metadata and a little free space, whole MiB.
pub fn size_for(tree: &BTreeMap<String, Node>) -> u64 {
    let blocks: u64 = tree
        .values()
        .map(|n| match n {
            Node::File { data, .. } => (data.len() as u64).div_ceil(4096),
            Node::Dir { .. } => 1,
            // Targets up to 59 bytes live in the inode.
            Node::Symlink { target } => u64::from(target.len() > 59),
        })
        .sum();
    let bytes = blocks * 4096 * 5 / 4 + (4 << 20);
    bytes.next_multiple_of(1 << 20)
}

fn uuid_from(seed: u64) -> String {
    let a = seed.to_be_bytes();
    let b = seed
        .rotate_left(29)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .to_be_bytes();
    let h: String = a.iter().chain(&b).map(|x| format!("{x:02x}")).collect();
    // Version 4 / variant 1 bits, so tools take it for a normal UUID.
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Runs `cmd`, naming e2fsprogs when the tool is not installed.
fn output(
    tool: &'static str,
    cmd: &mut Command,
    path: &Path,
) -> Result<std::process::Output, DiskImageError> {
    cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DiskImageError::MissingTool { tool },
        _ => DiskImageError::Tool {
            tool,
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
    })
}

fn run(tool: &'static str, cmd: &mut Command, path: &Path) -> Result<(), DiskImageError> {
    let out = output(tool, cmd, path)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(DiskImageError::Tool {
            tool,
            path: path.to_path_buf(),
            detail: err.lines().last().unwrap_or("no message").trim().to_owned(),
        });
    }
    Ok(())
}

/// Writes `tree` as an ext4 filesystem into `out` (replaced if present;
/// written under a temporary name and renamed, so a failure leaves no
/// half-written disk). `seed` fixes the UUID. Returns the disk's size.
pub fn write_ext4(
    tree: &BTreeMap<String, Node>,
    out: &Path,
    seed: u64,
) -> Result<u64, DiskImageError> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".isolab-disk-")
        .tempdir_in(dir)
        .map_err(|source| DiskImageError::Layout {
            path: dir.to_path_buf(),
            source,
        })?;
    let root = staging.path().join("root");
    std::fs::create_dir(&root)
        .and_then(|()| materialize(tree, &root))
        .map_err(|source| DiskImageError::Layout {
            path: root.clone(),
            source,
        })?;
    let size = size_for(tree);
    let tmp = staging.path().join("disk.ext4");
    let uuid = uuid_from(seed);
    run(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "isolab", "-b", "4096", "-m", "0"])
            .args(["-O", "^has_journal", "-U", &uuid])
            .arg("-E")
            .arg(format!("root_owner=0:0,hash_seed={uuid}"))
            .arg("-N")
            .arg((tree.len() + 32).to_string())
            .arg("-d")
            .arg(&root)
            .arg(&tmp)
            .arg(format!("{}k", size / 1024)),
        out,
    )?;
    std::fs::rename(&tmp, out).map_err(|source| DiskImageError::Layout {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(size)
}

/// Reads an ext4 image's files back with `debugfs -R rdump` (no mount),
/// without `lost+found`.
pub fn read_ext4(image: &Path) -> Result<BTreeMap<String, Node>, DiskImageError> {
    let staging = tempfile::tempdir().map_err(|source| DiskImageError::Layout {
        path: std::env::temp_dir(),
        source,
    })?;
    let out = staging.path().join("out");
    std::fs::create_dir(&out).map_err(|source| DiskImageError::Layout {
        path: out.clone(),
        source,
    })?;
    // `rdump / DIR` dumps the root's entries one by one (debugfs cannot
    // name the root itself), so list them first.
    let names: Vec<String> = list(image, "/")?.into_iter().map(|(n, _)| n).collect();
    for n in &names {
        run(
            "debugfs",
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump \"/{n}\" \"{}\"", out.display()))
                .arg(image),
            image,
        )?;
    }
    let mut tree = tree_of_dir(&out)?;
    // rdump drops the set-id and sticky bits; take every mode from the
    // filesystem's own listing instead.
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        for (name, mode) in list(image, &format!("/{dir}"))? {
            let key = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            match tree.get_mut(&key) {
                Some(Node::Dir { mode: m }) => {
                    *m = mode & 0o7777;
                    dirs.push(key);
                }
                Some(Node::File { mode: m, .. }) => *m = mode & 0o7777,
                _ => {}
            }
        }
    }
    Ok(tree)
}

/// `debugfs -R "ls -p DIR"`: (name, mode) of each entry but `.`, `..`
/// and `lost+found`.
fn list(image: &Path, dir: &str) -> Result<Vec<(String, u32)>, DiskImageError> {
    let out = output(
        "debugfs",
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("ls -p \"{dir}\""))
            .arg(image),
        image,
    )?;
    // Lines look like `/ino/mode/uid/gid/name/size/`.
    let entries: Vec<(String, u32)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            let mode = u32::from_str_radix(f.get(2)?, 8).ok()?;
            Some(((*f.get(5)?).to_owned(), mode))
        })
        .filter(|(n, _)| !n.is_empty() && n != "." && n != ".." && n != "lost+found")
        .collect();
    if entries.is_empty() && !out.status.success() {
        return Err(DiskImageError::Tool {
            tool: "debugfs",
            path: image.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> BTreeMap<String, Node> {
        let mut t = BTreeMap::new();
        t.insert("bin".into(), Node::Dir { mode: 0o755 });
        t.insert(
            "bin/busybox".into(),
            Node::File {
                mode: 0o755,
                data: vec![7; 10_000],
            },
        );
        t.insert(
            "bin/sh".into(),
            Node::Symlink {
                target: "busybox".into(),
            },
        );
        t.insert("etc".into(), Node::Dir { mode: 0o755 });
        t.insert(
            "etc/secret".into(),
            Node::File {
                mode: 0o600,
                data: b"s".to_vec(),
            },
        );
        t.insert("ro".into(), Node::Dir { mode: 0o555 });
        t.insert(
            "ro/file".into(),
            Node::File {
                mode: 0o444,
                data: vec![],
            },
        );
        t.insert("tmp".into(), Node::Dir { mode: 0o1777 });
        t
    }

    #[test]
    fn materialize_keeps_modes_even_under_read_only_dirs() {
        let d = tempfile::tempdir().unwrap();
        let t = tree();
        materialize(&t, d.path()).unwrap();
        assert_eq!(tree_of_dir(d.path()).unwrap(), t);
    }

    fn have_e2fsprogs() -> bool {
        let ok = ["mkfs.ext4", "debugfs"]
            .iter()
            .all(|t| Command::new(t).arg("-V").output().is_ok());
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "e2fsprogs is missing and CI=true: install it (apt-get install e2fsprogs)"
            );
            eprintln!("SKIPPED: e2fsprogs (mkfs.ext4, debugfs) is not installed");
        }
        ok
    }

    #[test]
    fn ext4_round_trip_keeps_every_file_mode_and_link() {
        if !have_e2fsprogs() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.ext4");
        let t = tree();
        let size = write_ext4(&t, &img, 7).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
        let back = read_ext4(&img).unwrap();
        let differ: Vec<_> = t
            .keys()
            .chain(back.keys())
            .filter(|k| t.get(*k) != back.get(*k))
            .map(|k| {
                let short = |n: Option<&Node>| match n {
                    Some(Node::File { mode, data }) => {
                        format!("file {mode:o} {} bytes", data.len())
                    }
                    other => format!("{other:?}"),
                };
                format!("{k}: {} vs {}", short(t.get(k)), short(back.get(k)))
            })
            .collect();
        assert!(differ.is_empty(), "{differ:#?}");
        // The ext4 magic, where the bare guest looks for it.
        let raw = std::fs::read(&img).unwrap();
        assert_eq!(&raw[1080..1082], &[0x53, 0xef]);
        // Nothing left next to the disk but the disk.
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn a_failed_build_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let mut t = tree();
        // A name no filesystem takes (over 255 bytes): the build fails
        // inside its staging directory, after files were written there —
        // the same cleanup a failing mkfs gets (the staging dir is dropped).
        t.insert(
            "x".repeat(300),
            Node::File {
                mode: 0o644,
                data: vec![],
            },
        );
        let img = d.path().join("disk.ext4");
        let e = write_ext4(&t, &img, 1).unwrap_err();
        assert!(matches!(e, DiskImageError::Layout { .. }), "{e}");
        assert!(!img.exists());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no staging left"
        );
        // An output directory that does not exist is named.
        let e = write_ext4(&tree(), &d.path().join("missing").join("disk.ext4"), 1).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn sizes_cover_data_and_metadata() {
        let t = tree();
        let s = size_for(&t);
        assert_eq!(s % (1 << 20), 0);
        assert!(s >= 4 << 20);
        let mut big = t.clone();
        big.insert(
            "big".into(),
            Node::File {
                mode: 0o644,
                data: vec![0; 40 << 20],
            },
        );
        assert!(size_for(&big) >= 50 << 20);
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let u = uuid_from(42);
        assert_eq!(u, uuid_from(42));
        assert_ne!(u, uuid_from(43));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
