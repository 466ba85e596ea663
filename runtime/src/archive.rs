//! Image archives, as the tools people use write them: `docker save`'s
//! docker-archive (a tar of `manifest.json`, a config and layer tars) and
//! the OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), as
//! a directory or a tar.
//!
//! ```text
//! docker-archive                    OCI image layout
//!   manifest.json                     oci-layout, index.json
//!     [{Config, RepoTags, Layers}]      manifests[] → manifest (or index)
//!   <config>.json                     blobs/sha256/<manifest>
//!   <layer>.tar  (diff_id = sha256)     config → blobs/sha256/<config>
//!                                       layers → blobs/sha256/<layer>
//! ```
//!
//! Loading is hostile-input handling: an archive is unpacked only as
//! regular files and directories confined to a private temporary
//! directory; every JSON document is size-bounded; an OCI blob is named
//! by `sha256:` and 64 hex digits and nothing else (so no descriptor
//! points outside `blobs/`); every blob's digest is checked before it is
//! used, a layer's before anything of it is unpacked; media types and the
//! platform (linux/amd64) are checked. Nothing is left behind on error.
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::image::{check_name, Image, ImageConfig, ImageError, Store};

/// The largest JSON document (manifest, index, config) read.
pub const MAX_JSON: u64 = 4 << 20;

/// Which archive `save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `docker save` / `docker load` (uncompressed layer tars).
    DockerArchive,
    /// The OCI image layout in a tar (`oci-archive:` to skopeo).
    Oci,
}

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

pub(crate) fn bad(path: &Path, detail: impl Into<String>) -> ImageError {
    ImageError::Archive {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Reads a JSON document of at most [`MAX_JSON`] bytes.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(T, Vec<u8>), ImageError> {
    let f = fs::File::open(path).map_err(|e| {
        bad(
            path,
            format!("cannot read it ({e}): the archive is incomplete"),
        )
    })?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(path, e.to_string()))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(bad(
            path,
            format!("larger than {MAX_JSON} bytes: not an image document"),
        ));
    }
    let v = serde_json::from_slice(&bytes).map_err(|e| {
        bad(
            path,
            format!("not the JSON expected ({e}): the archive is corrupt"),
        )
    })?;
    Ok((v, bytes))
}

/// `sha256:<64 hex>` → the hex; anything else is refused.
pub(crate) fn sha256_hex<'a>(path: &Path, digest: &'a str) -> Result<&'a str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(bad(
            path,
            format!("digest {digest:?} is not sha256:<64 lowercase hex digits>: refused"),
        )),
    }
}

/// The parts of an image config (OCI or Docker) that matter here.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConfigDoc {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
    #[serde(default)]
    history: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ConfigDoc {
    pub(crate) fn check_platform(&self, path: &Path) -> Result<(), ImageError> {
        let os = self.os.as_deref().unwrap_or("linux");
        let arch = self.architecture.as_deref().unwrap_or("amd64");
        if os != "linux" || arch != "amd64" {
            return Err(bad(
                path,
                format!("the image is for {os}/{arch}: this lab runs linux/amd64 images"),
            ));
        }
        Ok(())
    }

    pub(crate) fn image_config(&self) -> ImageConfig {
        let c = self.config.as_ref();
        let get = |f: fn(&RunConfig) -> Option<Vec<String>>| c.and_then(f).unwrap_or_default();
        ImageConfig {
            entrypoint: get(|c| c.entrypoint.clone()),
            cmd: get(|c| c.cmd.clone()),
            env: get(|c| c.env.clone()),
            cwd: c
                .and_then(|c| c.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            user: c.and_then(|c| c.user.clone()).unwrap_or_default(),
            exposed_ports: c
                .and_then(|c| c.exposed_ports.as_ref())
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default(),
            labels: c.and_then(|c| c.labels.clone()).unwrap_or_default(),
            history: self
                .history
                .iter()
                .flatten()
                .map(|h| crate::image::History {
                    created_by: h["created_by"].as_str().unwrap_or_default().to_owned(),
                    empty_layer: h["empty_layer"].as_bool().unwrap_or(false),
                })
                .collect(),
        }
    }
}

/// Strips the default registry's prefixes Docker hides (`docker.io/library/`).
pub(crate) fn short_name(name: &str) -> String {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
        .to_owned()
}

/// Extracts an archive (tar, or gzip-compressed tar) into `dir`: regular
/// files and directories only, every path confined, links refused unless
/// they are relative and stay inside (docker-archive shares repeated
/// layers that way).
fn extract(archive: &Path, dir: &Path) -> Result<(), ImageError> {
    let mut f =
        io::BufReader::new(fs::File::open(archive).map_err(|e| bad(archive, e.to_string()))?);
    let gz = io::BufRead::fill_buf(&mut f)
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .unwrap_or(false);
    let r: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    // A gzip bomb would fill the disk before anything is checked: the
    // extracted total is bounded by the archive's own size, generously.
    let limit = fs::metadata(archive)
        .map(|m| m.len())
        .unwrap_or(0)
        .saturating_mul(if gz { 64 } else { 2 })
        .saturating_add(256 << 20);
    let mut written = 0u64;
    let mut tar = tar::Archive::new(r);
    let entries = tar.entries().map_err(|e| {
        bad(
            archive,
            format!("not a tar archive ({e}): pass an image archive or layout directory"),
        )
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(archive, format!("corrupt tar ({e})")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(archive, e.to_string()))?
            .into_owned();
        let rel = crate::image::safe_relative(&raw)
            .map_err(|why| bad(archive, format!("entry {raw:?} {why}: refused")))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = dir.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            fs::create_dir_all(&dest).map_err(|e| bad(&dest, e.to_string()))?;
        } else if kind.is_file() {
            if let Some(p) = dest.parent() {
                fs::create_dir_all(p).map_err(|e| bad(p, e.to_string()))?;
            }
            let size = entry.header().size().unwrap_or(0);
            written = written.saturating_add(size);
            if written > limit {
                return Err(bad(
                    archive,
                    format!(
                        "it unpacks to more than {limit} bytes: refused (a decompression bomb?)"
                    ),
                ));
            }
            let mut out = fs::File::create(&dest).map_err(|e| bad(&dest, e.to_string()))?;
            io::copy(&mut (&mut entry).take(size), &mut out)
                .map_err(|e| bad(archive, format!("entry {raw:?}: {e}")))?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            if target.is_absolute() || !crate::image::symlink_stays_inside(&rel, &target) {
                return Err(bad(
                    archive,
                    format!("link {raw:?} → {target:?} leaves the archive: refused"),
                ));
            }
            if let Some(p) = dest.parent() {
                fs::create_dir_all(p).map_err(|e| bad(p, e.to_string()))?;
            }
            std::os::unix::fs::symlink(&target, &dest).map_err(|e| bad(&dest, e.to_string()))?;
        }
        // Anything else (devices, fifos, hard links) has no place in an
        // image archive's outer tar and is skipped.
    }
    Ok(())
}

/// Loads every image in an archive or OCI layout directory into the
/// store. `tag` names the image when the archive holds exactly one (and
/// must, when it names none).
pub fn load(store: &Store, input: &Path, tag: Option<&str>) -> Result<Vec<Image>, ImageError> {
    if let Some(t) = tag {
        check_name(t)?;
    }
    let meta = fs::metadata(input).map_err(|e| {
        bad(
            input,
            format!(
                "{e}: pass an image archive (docker save, oci-archive) or an OCI layout directory"
            ),
        )
    })?;
    let _tmp;
    let root = if meta.is_dir() {
        input.to_path_buf()
    } else {
        let dir = store
            .root()
            .join(format!(".tmp-load-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&dir).map_err(|e| bad(&dir, e.to_string()))?;
        _tmp = TempDir(dir.clone());
        extract(input, &dir)?;
        dir
    };
    let found = if root.join("manifest.json").is_file() {
        docker_images(&root)?
    } else if root.join("index.json").is_file() {
        oci_images(&root)?
    } else {
        return Err(bad(
            input,
            "neither manifest.json (docker save) nor index.json (OCI layout) is in it: pass an image archive or layout",
        ));
    };
    if found.is_empty() {
        return Err(bad(input, "it holds no image"));
    }
    if tag.is_some() && found.len() > 1 {
        return Err(bad(
            input,
            format!(
                "it holds {} images: --tag names one; load without it",
                found.len()
            ),
        ));
    }
    let mut out = Vec::new();
    for f in found {
        let name = match (tag, &f.name) {
            (Some(t), _) => t.to_owned(),
            (None, Some(n)) => n.clone(),
            (None, None) => {
                return Err(bad(input, "it names no image: pass --tag NAME[:TAG]"));
            }
        };
        check_name(&name)?;
        let mut layers = Vec::new();
        for l in &f.layers {
            if let Some(want) = &l.diff_id {
                let (got, _) = crate::image::content_sha256(&l.path, true)
                    .map_err(|e| bad(&l.path, e.to_string()))?;
                if &got != want {
                    return Err(ImageError::Digest {
                        what: format!("{} (uncompressed)", l.path.display()),
                        want: want.clone(),
                        got,
                    });
                }
            }
            layers.push(store.add_layer_file_checked(&l.path, l.digest.as_deref())?);
        }
        out.push(store.save_image(&name, layers, f.config)?);
    }
    Ok(out)
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One image found in an archive, checked, its layers not yet stored.
struct Found {
    name: Option<String>,
    config: ImageConfig,
    layers: Vec<FoundLayer>,
}

struct FoundLayer {
    path: PathBuf,
    /// sha256 of the blob as stored (OCI).
    digest: Option<String>,
    /// sha256 of the uncompressed tar (docker-archive's diff_ids).
    diff_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn confined(root: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let r = crate::image::safe_relative(Path::new(rel))
        .map_err(|why| bad(root, format!("path {rel:?} {why}: refused")))?;
    let p = root.join(r);
    // A link inside the archive may not lead out of it.
    let real =
        fs::canonicalize(&p).map_err(|e| bad(&p, format!("{e}: the archive is incomplete")))?;
    let base = fs::canonicalize(root).map_err(|e| bad(root, e.to_string()))?;
    if !real.starts_with(&base) {
        return Err(bad(
            root,
            format!("{rel:?} leads outside the archive: refused"),
        ));
    }
    Ok(real)
}

fn docker_images(root: &Path) -> Result<Vec<Found>, ImageError> {
    let mpath = root.join("manifest.json");
    let (entries, _): (Vec<DockerEntry>, _) = read_json(&mpath)?;
    let mut out = Vec::new();
    for e in entries {
        let cpath = confined(root, &e.config)?;
        let (config, _): (ConfigDoc, _) = read_json(&cpath)?;
        config.check_platform(&cpath)?;
        let diff_ids = config
            .rootfs
            .as_ref()
            .map(|r| r.diff_ids.clone())
            .unwrap_or_default();
        if diff_ids.len() != e.layers.len() {
            return Err(bad(
                &cpath,
                format!(
                    "{} diff_ids for {} layers: the archive is corrupt",
                    diff_ids.len(),
                    e.layers.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (l, d) in e.layers.iter().zip(&diff_ids) {
            layers.push(FoundLayer {
                path: confined(root, l)?,
                digest: None,
                diff_id: Some(sha256_hex(&cpath, d)?.to_owned()),
            });
        }
        let name = e
            .repo_tags
            .and_then(|t| t.into_iter().next())
            .map(|n| short_name(&n));
        out.push(Found {
            name,
            config: config.image_config(),
            layers,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: Option<u64>,
    #[serde(default)]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

#[derive(Deserialize)]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexDoc {
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    #[serde(default)]
    pub(crate) manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(crate) config: Option<Descriptor>,
    #[serde(default)]
    pub(crate) layers: Option<Vec<Descriptor>>,
}

/// Refuses a layer that is not a tar or a gzip-compressed tar.
pub(crate) fn check_layer_type(at: &Path, l: &Descriptor) -> Result<(), ImageError> {
    let lmt = l.media_type.as_deref().unwrap_or(OCI_LAYER_TAR);
    if ![
        OCI_LAYER_TAR,
        OCI_LAYER_GZIP,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_TAR,
    ]
    .contains(&lmt)
    {
        return Err(bad(at, format!("layer media type {lmt} is not supported (tar or tar+gzip): convert the image, e.g. skopeo copy --dest-compress-format gzip")));
    }
    Ok(())
}

/// The OCI manifest for a config document and its layers.
pub(crate) fn oci_manifest(config: &[u8], layers: &[SavedLayer]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": format!("sha256:{}", hex(&Sha256::digest(config))), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": if l.gzip { OCI_LAYER_GZIP } else { OCI_LAYER_TAR },
            "digest": format!("sha256:{}", l.digest),
            "size": l.blob_size,
        })).collect::<Vec<_>>(),
    }))
    .unwrap_or_default()
}

/// A blob's path in the layout, its digest checked when `check`.
fn blob(root: &Path, d: &Descriptor, check: bool) -> Result<PathBuf, ImageError> {
    let h = sha256_hex(root, &d.digest)?;
    let p = root.join("blobs").join("sha256").join(h);
    let m =
        fs::symlink_metadata(&p).map_err(|e| bad(&p, format!("{e}: the layout is incomplete")))?;
    if !m.is_file() {
        return Err(bad(&p, "not a regular file: refused"));
    }
    if let Some(size) = d.size {
        if m.len() != size {
            return Err(bad(
                &p,
                format!(
                    "{} bytes where the descriptor says {size}: the layout is corrupt",
                    m.len()
                ),
            ));
        }
    }
    if check {
        let (got, _) =
            crate::image::content_sha256(&p, false).map_err(|e| bad(&p, e.to_string()))?;
        if got != h {
            return Err(ImageError::Digest {
                what: p.display().to_string(),
                want: h.to_owned(),
                got,
            });
        }
    }
    Ok(p)
}

fn oci_images(root: &Path) -> Result<Vec<Found>, ImageError> {
    let (index, _): (IndexDoc, _) = read_json(&root.join("index.json"))?;
    let mut out = Vec::new();
    for d in index.manifests.unwrap_or_default() {
        let name = d.annotations.as_ref().and_then(|a| {
            a.get("io.containerd.image.name")
                .or_else(|| a.get("org.opencontainers.image.ref.name"))
                .map(|n| short_name(n))
        });
        oci_descriptor(root, &d, name, 0, &mut out)?;
    }
    Ok(out)
}

fn oci_descriptor(
    root: &Path,
    d: &Descriptor,
    name: Option<String>,
    depth: u32,
    out: &mut Vec<Found>,
) -> Result<(), ImageError> {
    if depth > 4 {
        return Err(bad(root, "image indexes nested more than 4 deep: refused"));
    }
    let mt = d.media_type.as_deref().unwrap_or(OCI_MANIFEST);
    let path = blob(root, d, true)?;
    match mt {
        OCI_INDEX | DOCKER_LIST => {
            let (idx, _): (IndexDoc, _) = read_json(&path)?;
            let pick = idx.manifests.unwrap_or_default().into_iter().find(|m| {
                m.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
            });
            match pick {
                Some(m) => oci_descriptor(root, &m, name, depth + 1, out),
                None => Err(bad(
                    &path,
                    "the index has no linux/amd64 image: this lab runs linux/amd64 images",
                )),
            }
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let (m, _): (IndexDoc, _) = read_json(&path)?;
            if let Some(inner) = m.media_type.as_deref() {
                if inner != mt && !(mt == OCI_MANIFEST && inner == DOCKER_MANIFEST) {
                    return Err(bad(
                        &path,
                        format!("media type {inner} where the index says {mt}: refused"),
                    ));
                }
            }
            let c = m
                .config
                .ok_or_else(|| bad(&path, "a manifest without a config: refused"))?;
            let cpath = blob(root, &c, true)?;
            let (config, _): (ConfigDoc, _) = read_json(&cpath)?;
            config.check_platform(&cpath)?;
            let mut layers = Vec::new();
            for l in m.layers.unwrap_or_default() {
                check_layer_type(&path, &l)?;
                // The digest is checked as the layer is copied into the
                // store, before it is unpacked.
                let p = blob(root, &l, false)?;
                layers.push(FoundLayer {
                    path: p,
                    digest: Some(sha256_hex(root, &l.digest)?.to_owned()),
                    diff_id: None,
                });
            }
            out.push(Found {
                name,
                config: config.image_config(),
                layers,
            });
            Ok(())
        }
        other => Err(bad(
            &path,
            format!("media type {other} is not an image manifest or index: refused"),
        )),
    }
}

/// A layer as `save` writes it: the stored blob, its digest, its
/// uncompressed digest and size.
pub(crate) struct SavedLayer {
    pub(crate) blob: PathBuf,
    pub(crate) digest: String,
    pub(crate) gzip: bool,
    pub(crate) diff_id: String,
    pub(crate) tar_size: u64,
    pub(crate) blob_size: u64,
}

pub(crate) fn saved_layers(store: &Store, img: &Image) -> Result<Vec<SavedLayer>, ImageError> {
    img.layers
        .iter()
        .map(|d| {
            let blob = store.blob_path(d);
            let err = |e: io::Error| {
                bad(
                    &blob,
                    format!("{e}: the layer's blob is gone; import the image again"),
                )
            };
            let mut head = [0u8; 2];
            let gzip = fs::File::open(&blob)
                .and_then(|mut f| f.read(&mut head))
                .map_err(err)?
                == 2
                && head == [0x1f, 0x8b];
            let (diff_id, tar_size) = crate::image::content_sha256(&blob, true).map_err(err)?;
            let blob_size = fs::metadata(&blob).map_err(err)?.len();
            Ok(SavedLayer {
                blob,
                digest: d.clone(),
                gzip,
                diff_id,
                tar_size,
                blob_size,
            })
        })
        .collect()
}

/// The image config document `save` writes (deterministic: the same
/// image saves to the same bytes).
pub(crate) fn config_doc(img: &Image, layers: &[SavedLayer]) -> Vec<u8> {
    let c = &img.config;
    let mut cfg = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        cfg.insert(k.into(), v);
    };
    if !c.entrypoint.is_empty() {
        put("Entrypoint", json!(c.entrypoint));
    }
    if !c.cmd.is_empty() {
        put("Cmd", json!(c.cmd));
    }
    if !c.env.is_empty() {
        put("Env", json!(c.env));
    }
    put("WorkingDir", json!(c.cwd));
    if !c.user.is_empty() {
        put("User", json!(c.user));
    }
    if !c.exposed_ports.is_empty() {
        put(
            "ExposedPorts",
            json!(c
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect::<BTreeMap<_, _>>()),
        );
    }
    if !c.labels.is_empty() {
        put("Labels", json!(c.labels));
    }
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| format!("sha256:{}", l.diff_id)).collect::<Vec<_>>(),
        },
        "history": history_doc(img, layers.len()),
    }))
    .unwrap_or_default()
}

/// The config's history: the image's own when it has one that accounts
/// for every layer, else one entry per layer.
fn history_doc(img: &Image, layers: usize) -> Vec<serde_json::Value> {
    let h = &img.config.history;
    if h.iter().filter(|e| !e.empty_layer).count() == layers {
        h.iter()
            .map(|e| {
                if e.empty_layer {
                    json!({"created_by": e.created_by, "empty_layer": true})
                } else {
                    json!({"created_by": e.created_by})
                }
            })
            .collect()
    } else {
        (0..layers)
            .map(|_| json!({"created_by": "isolab"}))
            .collect()
    }
}

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn add_bytes<W: Write>(t: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    let mut h = header(data.len() as u64, 0o644);
    t.append_data(&mut h, path, data)
}

/// Writes images `names` to `out` (atomically: a temporary file renamed
/// into place, removed on error).
pub fn save(store: &Store, names: &[String], out: &Path, format: Format) -> Result<(), ImageError> {
    if names.is_empty() {
        return Err(bad(out, "no image named: pass NAME[:TAG]..."));
    }
    let images: Vec<Image> = names
        .iter()
        .map(|n| store.open(n))
        .collect::<Result<_, _>>()?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        std::process::id()
    ));
    let r = write_archive(store, &images, &tmp, format);
    match r.and_then(|_| fs::rename(&tmp, out).map_err(|e| bad(out, e.to_string()))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_archive(
    store: &Store,
    images: &[Image],
    path: &Path,
    format: Format,
) -> Result<(), ImageError> {
    let io_err = |e: io::Error| bad(path, e.to_string());
    let f = fs::File::create(path).map_err(io_err)?;
    let mut t = tar::Builder::new(io::BufWriter::new(f));
    let mut written = std::collections::BTreeSet::new();
    match format {
        Format::DockerArchive => {
            let mut manifest = Vec::new();
            for img in images {
                let layers = saved_layers(store, img)?;
                let config = config_doc(img, &layers);
                let cname = format!("{}.json", hex(&Sha256::digest(&config)));
                if written.insert(cname.clone()) {
                    add_bytes(&mut t, &cname, &config).map_err(io_err)?;
                }
                let mut paths = Vec::new();
                for l in &layers {
                    let p = format!("{}/layer.tar", l.diff_id);
                    if written.insert(p.clone()) {
                        // docker load takes uncompressed layer tars.
                        let f = fs::File::open(&l.blob).map_err(io_err)?;
                        let r: Box<dyn Read> = if l.gzip {
                            Box::new(flate2::read::GzDecoder::new(f))
                        } else {
                            Box::new(f)
                        };
                        let mut h = header(l.tar_size, 0o644);
                        t.append_data(&mut h, &p, r).map_err(io_err)?;
                    }
                    paths.push(p);
                }
                let tag = match crate::image::split_tag(&img.name) {
                    (_, Some(_)) => img.name.clone(),
                    (n, None) => format!("{n}:latest"),
                };
                manifest.push(json!({"Config": cname, "RepoTags": [tag], "Layers": paths}));
            }
            add_bytes(
                &mut t,
                "manifest.json",
                &serde_json::to_vec(&manifest).unwrap_or_default(),
            )
            .map_err(io_err)?;
        }
        Format::Oci => {
            add_bytes(&mut t, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io_err)?;
            let mut index = Vec::new();
            for img in images {
                let layers = saved_layers(store, img)?;
                let config = config_doc(img, &layers);
                let chex = hex(&Sha256::digest(&config));
                if written.insert(chex.clone()) {
                    add_bytes(&mut t, &format!("blobs/sha256/{chex}"), &config).map_err(io_err)?;
                }
                for l in &layers {
                    if written.insert(l.digest.clone()) {
                        let mut h = header(l.blob_size, 0o644);
                        let f = fs::File::open(&l.blob).map_err(io_err)?;
                        t.append_data(&mut h, format!("blobs/sha256/{}", l.digest), f)
                            .map_err(io_err)?;
                    }
                }
                let manifest = oci_manifest(&config, &layers);
                let mhex = hex(&Sha256::digest(&manifest));
                if written.insert(mhex.clone()) {
                    add_bytes(&mut t, &format!("blobs/sha256/{mhex}"), &manifest)
                        .map_err(io_err)?;
                }
                index.push(json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": format!("sha256:{mhex}"),
                    "size": manifest.len(),
                    "annotations": {"org.opencontainers.image.ref.name": img.name},
                }));
            }
            let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": index}))
                .unwrap_or_default();
            add_bytes(&mut t, "index.json", &index).map_err(io_err)?;
        }
    }
    t.into_inner().and_then(|mut w| w.flush()).map_err(io_err)?;
    Ok(())
}
