//! Image → initramfs: the same layers the container uses, written as a
//! newc cpio archive for a Linux microVM, with extra files (the agent as
//! `/init`, kernel modules) added on top.
//!
//! Layers are merged bottom to top as overlayfs would show them: an upper
//! entry replaces a lower one, a whiteout (a 0:0 character device, as the
//! store keeps OCI whiteouts) deletes it, an opaque directory hides what
//! is below it.
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::image::{Image, Store};

/// An entry of the merged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// Errors building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("reading layer file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed cpio archive: {0}")]
    Malformed(String),
}

fn walk(root: &Path, rel: &Path, tree: &mut BTreeMap<String, Node>) -> Result<(), InitramfsError> {
    let dir = root.join(rel);
    let rd = fs::read_dir(&dir).map_err(|source| InitramfsError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let key = r.to_string_lossy().into_owned();
        let p = root.join(&r);
        let md = fs::symlink_metadata(&p).map_err(|source| InitramfsError::Read {
            path: p.clone(),
            source,
        })?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            // A whiteout: delete this path and everything below it.
            tree.retain(|k, _| k != &key && !k.starts_with(&format!("{key}/")));
            continue;
        }
        if ft.is_dir() {
            let opaque = xattr_opaque(&p);
            if opaque {
                tree.retain(|k, _| !k.starts_with(&format!("{key}/")));
            }
            tree.insert(
                key,
                Node::Dir {
                    mode: md.permissions().mode() & 0o7777,
                },
            );
            walk(root, &r, tree)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&p).map_err(|source| InitramfsError::Read {
                path: p.clone(),
                source,
            })?;
            tree.retain(|k, _| !k.starts_with(&format!("{key}/")));
            tree.insert(
                key,
                Node::Symlink {
                    target: t.to_string_lossy().into_owned(),
                },
            );
        } else if ft.is_file() {
            let data = fs::read(&p).map_err(|source| InitramfsError::Read {
                path: p.clone(),
                source,
            })?;
            tree.retain(|k, _| !k.starts_with(&format!("{key}/")));
            tree.insert(
                key,
                Node::File {
                    mode: md.permissions().mode() & 0o7777,
                    data,
                },
            );
        }
    }
    Ok(())
}

fn xattr_opaque(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut v = [0u8; 1];
    // SAFETY: valid NUL-terminated path and name, a 1-byte buffer.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            1,
        )
    };
    n == 1 && v[0] == b'y'
}

/// The file tree under a directory, as [`Node`]s (paths relative).
pub fn tree_of_dir(root: &Path) -> Result<BTreeMap<String, Node>, InitramfsError> {
    let mut tree = BTreeMap::new();
    walk(root, Path::new(""), &mut tree)?;
    Ok(tree)
}

/// The image's merged file tree (paths relative, no leading `/`).
pub fn merged_tree(store: &Store, image: &Image) -> Result<BTreeMap<String, Node>, InitramfsError> {
    let mut tree = BTreeMap::new();
    for layer in &image.layers {
        walk(&store.layer_dir(layer), Path::new(""), &mut tree)?;
    }
    Ok(tree)
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        size as u32,
        0,
        0,
        0,
        0,
        (name.len() + 1) as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Writes a tree as a newc cpio archive (parents before children).
pub fn write_cpio(tree: &BTreeMap<String, Node>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, node)) in tree.iter().enumerate() {
        let ino = i as u32 + 1;
        match node {
            Node::Dir { mode } => header(&mut out, ino, 0o040000 | mode, 0, name),
            Node::File { mode, data } => {
                header(&mut out, ino, 0o100000 | mode, data.len(), name);
                out.extend_from_slice(data);
            }
            Node::Symlink { target } => {
                header(&mut out, ino, 0o120777, target.len(), name);
                out.extend_from_slice(target.as_bytes());
            }
        }
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    header(&mut out, 0, 0, 0, "TRAILER!!!");
    while out.len() % 512 != 0 {
        out.push(0);
    }
    out
}

/// Reads a newc archive back (for tests and `isolab` checks).
pub fn read_cpio(data: &[u8]) -> Result<BTreeMap<String, Node>, InitramfsError> {
    let mut at = 0;
    let mut tree = BTreeMap::new();
    let bad = |m: &str| InitramfsError::Malformed(m.into());
    loop {
        let h = data
            .get(at..at + 110)
            .ok_or_else(|| bad("truncated header"))?;
        if &h[..6] != b"070701" {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap_or("x"),
                16,
            )
            .map_err(|_| bad("bad hex field"))
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let name_start = at + 110;
        let name = data
            .get(name_start..name_start + namesize.saturating_sub(1))
            .ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let mut pos = (name_start + namesize).next_multiple_of(4);
        if name == "TRAILER!!!" {
            return Ok(tree);
        }
        let body = data
            .get(pos..pos + size)
            .ok_or_else(|| bad("truncated body"))?;
        pos = (pos + size).next_multiple_of(4);
        let node = match mode & 0o170000 {
            0o040000 => Node::Dir {
                mode: mode & 0o7777,
            },
            0o100000 => Node::File {
                mode: mode & 0o7777,
                data: body.to_vec(),
            },
            0o120000 => Node::Symlink {
                target: String::from_utf8_lossy(body).into_owned(),
            },
            _ => return Err(bad("unsupported file type")),
        };
        tree.insert(name, node);
        at = pos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{self, ImageConfig, LayerEntry};

    #[test]
    fn image_to_initramfs_and_back() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let layers = image::default_layers(b"\x7fELF-agent", Some(b"busybox")).unwrap();
        let img = store
            .import_blobs(
                "t",
                &layers,
                ImageConfig {
                    entrypoint: vec!["/isolab-agent".into()],
                    ..Default::default()
                },
            )
            .unwrap();
        let mut tree = merged_tree(&store, &img).unwrap();
        tree.insert(
            "init".into(),
            Node::Symlink {
                target: "/isolab-agent".into(),
            },
        );
        let cpio = write_cpio(&tree);
        assert_eq!(cpio.len() % 512, 0);
        let back = read_cpio(&cpio).unwrap();
        assert_eq!(back, tree, "every file, mode and link as in the image");
        assert_eq!(
            back["isolab-agent"],
            Node::File {
                mode: 0o755,
                data: b"\x7fELF-agent".to_vec()
            }
        );
        assert_eq!(back["tmp"], Node::Dir { mode: 0o1777 });
        assert_eq!(
            back["bin/sh"],
            Node::Symlink {
                target: "busybox".into()
            }
        );
        // Parents come before children, as the kernel needs.
        let names: Vec<&String> = back.keys().collect();
        assert!(
            names.iter().position(|n| *n == "bin").unwrap()
                < names.iter().position(|n| *n == "bin/sh").unwrap()
        );
    }

    #[test]
    fn upper_layers_replace_and_whiteouts_delete() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let lower = image::build_layer(&[
            LayerEntry::Dir("etc", 0o755),
            LayerEntry::File("etc/a", 0o644, b"old"),
            LayerEntry::File("etc/gone", 0o644, b"x"),
        ])
        .unwrap();
        let mut upper = image::build_layer(&[
            LayerEntry::Dir("etc", 0o755),
            LayerEntry::File("etc/a", 0o600, b"new"),
        ])
        .unwrap();
        // Append a whiteout for etc/gone.
        upper.truncate(upper.len() - 1024);
        let mut h = tar::Header::new_gnu();
        h.set_path("etc/.wh.gone").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        upper.extend_from_slice(h.as_bytes());
        upper.extend_from_slice(&[0u8; 1024]);
        let img = store
            .import_blobs(
                "w",
                &[lower, upper],
                ImageConfig {
                    entrypoint: vec!["/x".into()],
                    ..Default::default()
                },
            )
            .unwrap();
        let tree = merged_tree(&store, &img).unwrap();
        assert_eq!(
            tree["etc/a"],
            Node::File {
                mode: 0o600,
                data: b"new".to_vec()
            }
        );
        assert!(!tree.contains_key("etc/gone"));
    }

    #[test]
    fn malformed_archives_are_errors() {
        assert!(read_cpio(b"").is_err());
        assert!(read_cpio(&[b'0'; 200]).is_err());
        let mut ok = write_cpio(&BTreeMap::from([(
            "f".to_owned(),
            Node::File {
                mode: 0o644,
                data: vec![1; 100],
            },
        )]));
        ok.truncate(150);
        assert!(read_cpio(&ok).is_err());
    }
}
