//! Guest kernel discovery and format detection.
//!
//! Everything here reads bytes; nothing is loaded. Used by `isolab doctor`
//! (to say what `/boot` offers) and by the loader (to refuse a file that is
//! not a kernel with one clear sentence).
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors while finding or identifying a guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read kernel {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path} is empty: pass a Linux bzImage or vmlinux ELF with --kernel")]
    Empty { path: PathBuf },
    #[error("{path} is not a kernel (neither a bzImage nor an x86-64 ELF): pass a Linux bzImage or vmlinux with --kernel")]
    NotAKernel { path: PathBuf },
    #[error("kernel {path} is truncated ({detail}): the file is incomplete, reinstall the kernel package or pass another --kernel")]
    Truncated { path: PathBuf, detail: String },
    #[error("cannot list {dir}: {source}: make it readable or pass --kernel PATH")]
    BootDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot unpack kernel {path}: {detail}")]
    Unpack { path: PathBuf, detail: String },
    #[error("no guest kernel in {dir}: install one (apt-get install linux-image-cloud-amd64) or pass --kernel PATH")]
    NoneFound { dir: PathBuf },
}

/// How a bzImage's payload is compressed (from the magic at
/// `payload_offset`, see Documentation/arch/x86/boot.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
    /// An uncompressed ELF (vmlinux).
    None,
    Unknown,
}

impl Compression {
    /// Identifies a compressed stream by its leading magic bytes.
    pub fn from_magic(b: &[u8]) -> Compression {
        match b {
            [0x1f, 0x8b, ..] | [0x1f, 0x9e, ..] => Compression::Gzip,
            [b'B', b'Z', b'h', ..] => Compression::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0x02, 0x21, 0x4c, 0x18, ..] => Compression::Lz4,
            [0x89, b'L', b'Z', b'O', ..] => Compression::Lzo,
            [0x5d, 0x00, 0x00, ..] => Compression::Lzma,
            [0x7f, b'E', b'L', b'F', ..] => Compression::None,
            _ => Compression::Unknown,
        }
    }
}

/// What kind of kernel image a file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KernelFormat {
    /// A Linux bzImage with its setup header.
    BzImage {
        /// Boot protocol version, e.g. 0x020f.
        protocol: u16,
        /// `xloadflags & XLF_KERNEL_64`: has a 64-bit entry at +0x200.
        entry64: bool,
        relocatable: bool,
        compression: Compression,
    },
    /// An x86-64 ELF (vmlinux, or the lab's bare guest).
    Elf {
        /// Carries a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).
        pvh: bool,
        entry: u64,
    },
}

/// A kernel file and what it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelInfo {
    pub path: PathBuf,
    pub size: u64,
    pub format: KernelFormat,
    /// The version string a bzImage carries (`6.1.0-56-cloud-amd64 (…)`).
    pub version: Option<String>,
}

const SETUP_HEADER_MAGIC_OFF: usize = 0x202; // "HdrS"
const BOOT_FLAG_OFF: usize = 0x1fe; // 0xAA55

fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Identifies a kernel from its bytes (`path` only names it in errors).
pub fn identify(path: &Path, bytes: &[u8]) -> Result<KernelInfo, KernelError> {
    let path = path.to_path_buf();
    if bytes.is_empty() {
        return Err(KernelError::Empty { path });
    }
    let size = bytes.len() as u64;
    if bytes.starts_with(b"\x7fELF") {
        let format = identify_elf(&path, bytes)?;
        return Ok(KernelInfo {
            path,
            size,
            format,
            version: None,
        });
    }
    if bytes.get(SETUP_HEADER_MAGIC_OFF..SETUP_HEADER_MAGIC_OFF + 4) == Some(b"HdrS")
        && le16(bytes, BOOT_FLAG_OFF) == Some(0xAA55)
    {
        let truncated = |detail: &str| KernelError::Truncated {
            path: path.clone(),
            detail: detail.to_owned(),
        };
        let protocol = le16(bytes, 0x206).ok_or_else(|| truncated("setup header"))?;
        let setup_sects = match bytes[0x1f1] {
            0 => 4,
            n => n as usize,
        };
        let setup_len = (setup_sects + 1) * 512;
        if bytes.len() < setup_len {
            return Err(truncated("shorter than its setup sectors"));
        }
        let loadflags = bytes.get(0x211).copied().unwrap_or(0);
        let relocatable = bytes.get(0x234).copied().unwrap_or(0) != 0;
        let xloadflags = le16(bytes, 0x236).unwrap_or(0);
        let mut compression = Compression::Unknown;
        if protocol >= 0x0208 {
            let off = le32(bytes, 0x248).ok_or_else(|| truncated("payload offset"))? as usize;
            let len = le32(bytes, 0x24c).ok_or_else(|| truncated("payload length"))? as usize;
            let start = setup_len + off;
            if bytes.len() < start.saturating_add(len) {
                return Err(truncated(
                    "compressed payload runs past the end of the file",
                ));
            }
            compression = Compression::from_magic(&bytes[start..]);
        }
        let _ = loadflags;
        let version = le16(bytes, 0x20e).and_then(|p| {
            let start = p as usize + 0x200;
            let rest = bytes.get(start..)?;
            let end = rest.iter().position(|&c| c == 0)?;
            std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
        });
        return Ok(KernelInfo {
            path,
            size,
            format: KernelFormat::BzImage {
                protocol,
                entry64: xloadflags & 1 != 0,
                relocatable,
                compression,
            },
            version,
        });
    }
    Err(KernelError::NotAKernel { path })
}

/// Parses just enough of an ELF64 to know it is x86-64 and whether it has
/// a PVH entry note.
fn identify_elf(path: &Path, b: &[u8]) -> Result<KernelFormat, KernelError> {
    const EM_X86_64: u16 = 62;
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let truncated = |detail: &str| KernelError::Truncated {
        path: path.to_path_buf(),
        detail: detail.to_owned(),
    };
    if b.len() < 64 {
        return Err(truncated("ELF header"));
    }
    if b[4] != 2 || b[5] != 1 || le16(b, 18) != Some(EM_X86_64) {
        return Err(KernelError::NotAKernel {
            path: path.to_path_buf(),
        });
    }
    let entry = le64(b, 24).unwrap_or(0);
    let phoff = le64(b, 32).unwrap_or(0) as usize;
    let phentsize = le16(b, 54).unwrap_or(0) as usize;
    let phnum = le16(b, 56).unwrap_or(0) as usize;
    let mut pvh = false;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = le32(b, ph).ok_or_else(|| truncated("program headers"))?;
        if p_type != PT_NOTE {
            continue;
        }
        let off = le64(b, ph + 8).ok_or_else(|| truncated("program headers"))? as usize;
        let size = le64(b, ph + 32).ok_or_else(|| truncated("program headers"))? as usize;
        let notes = b
            .get(off..off.saturating_add(size))
            .ok_or_else(|| truncated("note segment"))?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = le32(notes, at).unwrap_or(0) as usize;
            let descsz = le32(notes, at + 4).unwrap_or(0) as usize;
            let ntype = le32(notes, at + 8).unwrap_or(0);
            let name = notes.get(at + 12..at + 12 + namesz).unwrap_or(&[]);
            if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
                pvh = true;
            }
            at += 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
        }
    }
    Ok(KernelFormat::Elf { pvh, entry })
}

/// Decompresses a bzImage's payload into the `vmlinux` ELF it carries.
///
/// Booting that ELF at its 64-bit entry (as Firecracker does) skips the
/// bzImage's own decompressor, which under PVM runs in KVM's instruction
/// emulator and takes minutes. Supports the gzip and LZ4 (legacy frame)
/// payloads distribution kernels use.
pub fn extract_vmlinux(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, KernelError> {
    let info = identify(path, bytes)?;
    let KernelFormat::BzImage {
        compression,
        protocol,
        ..
    } = info.format
    else {
        return Ok(bytes.to_vec());
    };
    let truncated = |d: &str| KernelError::Truncated {
        path: path.to_path_buf(),
        detail: d.into(),
    };
    if protocol < 0x0208 {
        return Err(KernelError::Unpack {
            path: path.to_path_buf(),
            detail: "boot protocol older than 2.08 has no payload fields".into(),
        });
    }
    let setup_sects = match bytes[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let off = (setup_sects + 1) * 512
        + le32(bytes, 0x248).ok_or_else(|| truncated("payload offset"))? as usize;
    let len = le32(bytes, 0x24c).ok_or_else(|| truncated("payload length"))? as usize;
    let payload = bytes
        .get(off..off + len)
        .ok_or_else(|| truncated("payload"))?;
    let unpack_err = |d: String| KernelError::Unpack {
        path: path.to_path_buf(),
        detail: d,
    };
    let out = match compression {
        Compression::Gzip => {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(payload).read_to_end(&mut v).map_err(|e| unpack_err(format!("gzip: {e}")))?;
            v
        }
        Compression::Lz4 => lz4_legacy(payload).map_err(unpack_err)?,
        other => {
            return Err(unpack_err(format!(
                "isolab unpacks gzip and lz4 kernels, not {other:?}: pass an uncompressed vmlinux with --kernel"
            )))
        }
    };
    if !out.starts_with(b"\x7fELF") {
        return Err(unpack_err("the payload is not an ELF vmlinux".into()));
    }
    Ok(out)
}

/// The LZ4 "legacy" frame the kernel uses: magic, then blocks of
/// (u32 compressed size, data), each at most 8 MiB decompressed; the build
/// appends the total size as a last u32.
fn lz4_legacy(p: &[u8]) -> Result<Vec<u8>, String> {
    const MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
    const BLOCK_MAX: usize = 8 << 20;
    if !p.starts_with(&MAGIC) {
        return Err("not an LZ4 legacy stream".into());
    }
    let mut out = Vec::new();
    let mut at = 4;
    let mut block = vec![0u8; BLOCK_MAX];
    while at + 4 <= p.len() {
        let size = u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]) as usize;
        if size == u32::from_le_bytes(MAGIC) as usize {
            at += 4; // a concatenated stream starts again
            continue;
        }
        if at + 4 + size > p.len() {
            break; // the appended total size
        }
        let n = lz4_flex::block::decompress_into(&p[at + 4..at + 4 + size], &mut block)
            .map_err(|e| format!("lz4 block at {at}: {e}"))?;
        out.extend_from_slice(&block[..n]);
        at += 4 + size;
    }
    if out.is_empty() {
        return Err("empty LZ4 stream".into());
    }
    Ok(out)
}

/// Reads and identifies a kernel file.
pub fn inspect(path: &Path) -> Result<KernelInfo, KernelError> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| KernelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    identify(path, &bytes)
}

/// Picks the guest kernel in `boot_dir`: `vmlinuz-*`/`vmlinux-*`, preferring
/// a cloud kernel, then the highest version (by name).
pub fn find_in(boot_dir: &Path) -> Result<PathBuf, KernelError> {
    let entries = fs::read_dir(boot_dir).map_err(|source| KernelError::BootDir {
        dir: boot_dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vmlinuz-") || n.starts_with("vmlinux-"))
        .collect();
    names.sort_by(|a, b| {
        let cloud = |n: &str| n.contains("cloud");
        cloud(a)
            .cmp(&cloud(b))
            .then_with(|| version_key(a).cmp(&version_key(b)))
    });
    names
        .pop()
        .map(|n| boot_dir.join(n))
        .ok_or_else(|| KernelError::NoneFound {
            dir: boot_dir.to_path_buf(),
        })
}

/// Splits a name into numeric and text runs so `6.10` sorts after `6.9`.
fn version_key(name: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut num = String::new();
    let mut text = String::new();
    for c in name.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                out.push((0, std::mem::take(&mut text)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((num.parse().unwrap_or(u64::MAX), String::new()));
                num.clear();
            }
            text.push(c);
        }
    }
    if !num.is_empty() {
        out.push((num.parse().unwrap_or(u64::MAX), String::new()));
    }
    if !text.is_empty() {
        out.push((0, text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        b[0x1f1] = 1; // setup_sects: setup is 2 * 512 bytes
        b[0x1fe..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&0x10u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        b[0x300..0x306].copy_from_slice(b"6.1.0\0");
        b[0x410..0x410 + payload.len()].copy_from_slice(payload);
        b
    }

    #[test]
    fn bzimage_with_each_compression() {
        for (magic, c) in [
            (&[0x1f, 0x8b, 8][..], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
            (b"BZh9", Compression::Bzip2),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
            (&[0x5d, 0, 0, 0x80], Compression::Lzma),
            (&[1, 2, 3, 4], Compression::Unknown),
        ] {
            let info = identify(Path::new("k"), &fake_bzimage(magic)).unwrap();
            assert_eq!(
                info.format,
                KernelFormat::BzImage {
                    protocol: 0x020f,
                    entry64: true,
                    relocatable: false,
                    compression: c
                }
            );
            assert_eq!(info.version.as_deref(), Some("6.1.0"));
        }
    }

    #[test]
    fn broken_files_are_named() {
        assert!(matches!(
            identify(Path::new("k"), b""),
            Err(KernelError::Empty { .. })
        ));
        assert!(matches!(
            identify(Path::new("k"), b"#!/bin/sh\necho hi\n"),
            Err(KernelError::NotAKernel { .. })
        ));
        let full = fake_bzimage(&[0x1f, 0x8b]);
        let err = identify(Path::new("k"), &full[..0x300]).unwrap_err();
        assert!(matches!(err, KernelError::Truncated { .. }), "{err}");
        let err = identify(Path::new("k"), b"\x7fELF\x02\x01").unwrap_err();
        assert!(matches!(err, KernelError::Truncated { .. }), "{err}");
    }

    #[test]
    fn elf_for_another_machine_is_not_a_kernel() {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18] = 183; // aarch64
        assert!(matches!(
            identify(Path::new("k"), &b),
            Err(KernelError::NotAKernel { .. })
        ));
    }

    #[test]
    fn finds_cloud_kernel_first_then_newest() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "vmlinuz-6.9.0-1-amd64",
            "vmlinuz-6.10.0-1-amd64",
            "vmlinuz-6.1.0-5-cloud-amd64",
            "config-7.0",
        ] {
            fs::write(dir.path().join(n), b"x").unwrap();
        }
        assert_eq!(
            find_in(dir.path()).unwrap(),
            dir.path().join("vmlinuz-6.1.0-5-cloud-amd64")
        );
        fs::remove_file(dir.path().join("vmlinuz-6.1.0-5-cloud-amd64")).unwrap();
        assert_eq!(
            find_in(dir.path()).unwrap(),
            dir.path().join("vmlinuz-6.10.0-1-amd64")
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            find_in(empty.path()),
            Err(KernelError::NoneFound { .. })
        ));
        assert!(matches!(
            find_in(&empty.path().join("nope")),
            Err(KernelError::BootDir { .. })
        ));
    }

    #[test]
    fn lz4_legacy_round_trip_and_broken_streams() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let block = lz4_flex::block::compress(&data);
        let mut stream = vec![0x02, 0x21, 0x4c, 0x18];
        stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
        stream.extend_from_slice(&block);
        stream.extend_from_slice(&(data.len() as u32).to_le_bytes());
        assert_eq!(lz4_legacy(&stream).unwrap(), data);
        assert!(lz4_legacy(b"nope").is_err());
        let mut bad = stream.clone();
        bad[12] ^= 0xff;
        let _ = lz4_legacy(&bad); // must not panic
        let mut image = fake_bzimage(&stream[..0x400.min(stream.len())]);
        image.truncate(0x420);
        assert!(extract_vmlinux(Path::new("k"), &image).is_err());
    }

    #[test]
    fn real_boot_kernel_if_present() {
        // The CI installs linux-image-cloud-amd64; on a laptop without it
        // this says so instead of passing silently.
        match find_in(Path::new("/boot")) {
            Ok(p) => {
                let info = inspect(&p).unwrap();
                assert!(
                    matches!(info.format, KernelFormat::BzImage { entry64: true, .. }),
                    "{info:?}"
                );
                assert!(info.version.is_some());
            }
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI must have a /boot kernel: {e}"
                );
                eprintln!("SKIP real_boot_kernel_if_present: {e}");
            }
        }
    }
}
