//! Images: tar layers in a content-addressed store.
//!
//! ```text
//! $ISOLAB_HOME/
//!   blobs/<sha256>            the layer as given (tar or tar.gz), for disk figures
//!   layers/<sha256>/          the layer unpacked: an overlayfs lower dir
//!   images/<name>.json        layers bottom→top + entrypoint, env, cwd
//! ```
//!
//! Unpacking is the security boundary between an image and the host, so it
//! is strict: every path must stay inside the layer (no absolute paths, no
//! `..`, no writing through a symlink), hard links must point at files of
//! the same layer, relative symlinks may not climb above the root, and
//! device nodes are refused (a container gets its devices from the runtime,
//! never from an image). A layer is unpacked into a temporary directory and
//! renamed into place only when complete, so a bad layer leaves nothing.
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors building, importing or opening an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read layer {path}: {source}")]
    ReadLayer { path: PathBuf, source: io::Error },
    #[error("layer {layer} is not a valid tar archive ({detail}): it is truncated or corrupt, rebuild it")]
    Corrupt { layer: String, detail: String },
    #[error("layer {layer} entry {entry:?} {why}: the image is unsafe, fix the layer")]
    Unsafe {
        layer: String,
        entry: String,
        why: String,
    },
    #[error("image store {path}: {source}")]
    Store { path: PathBuf, source: io::Error },
    #[error("no image named {name:?} in {store}: build the default with `isolab image build`, load one with `isolab image load -i ARCHIVE`, or import layers with `isolab image import`")]
    NotFound { name: String, store: PathBuf },
    #[error("image {name:?} is damaged ({detail}): remove it with `isolab image rm {name}` and import it again")]
    Damaged { name: String, detail: String },
    #[error("invalid image name {0:?}: use NAME[:TAG], with letters, digits, '-', '_', '.' and '/' between path parts")]
    BadName(String),
    #[error("{what}: sha256 {got} does not match its digest {want}: the image is corrupt or was tampered with; fetch or save it again")]
    Digest {
        what: String,
        want: String,
        got: String,
    },
    #[error("{path}: {detail}")]
    Archive { path: PathBuf, detail: String },
    #[error("{reference}: {detail}")]
    Registry { reference: String, detail: String },
    #[error("layer {layer} unpacks to more than {limit} bytes: refused (a decompression bomb?); split the layer or raise the limit")]
    TooLarge { layer: String, limit: u64 },
}

/// A file removed when this goes out of scope (unless renamed away).
struct RemoveFile(PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A number unique within this process (temp-file names).
fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The most one layer may unpack to (its tar stream, after gzip).
pub const MAX_UNPACKED_BYTES: u64 = 8 << 30;

/// A reader that fails once more than `limit` bytes have come through.
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(self.left.saturating_add(1).min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other("layer exceeds the unpacked size limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// How an image starts: the OCI image config's `Entrypoint`, `Cmd`,
/// `Env`, `WorkingDir`, `User`, `ExposedPorts` and `Labels`, with
/// Docker's meaning (a command given to `run` replaces `cmd` and is
/// appended to `entrypoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub cwd: String,
    /// `USER`: a name or uid, optionally `:group` (empty: root).
    #[serde(default)]
    pub user: String,
    /// `EXPOSE`: e.g. `80/tcp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Free-form labels (the default image records which agent it holds).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// How the image was made, a step each (the config's `history`).
    #[serde(default)]
    pub history: Vec<History>,
}

/// One step of an image's history: what made it, and whether it made a
/// layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub created_by: String,
    #[serde(default)]
    pub empty_layer: bool,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
            cwd: root_dir(),
            user: String::new(),
            exposed_ports: Vec::new(),
            labels: Default::default(),
            history: Vec::new(),
        }
    }
}

impl ImageConfig {
    /// The program and arguments a run starts: the entrypoint, then the
    /// command given to `run` or else the image's `cmd`.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let tail = if command.is_empty() {
            &self.cmd
        } else {
            command
        };
        self.entrypoint.iter().chain(tail).cloned().collect()
    }
}

fn root_dir() -> String {
    "/".into()
}

/// A named image: layers bottom→top, plus its config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// sha256 (hex) of each layer blob, bottom first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
}

/// The store under `$ISOLAB_HOME`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn store_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Store {
        path: path.to_path_buf(),
        source,
    }
}

/// An image reference as Docker writes one, `[HOST[:PORT]/]PATH[:TAG]`:
/// path components of letters, digits, `-`, `_` and `.` (never `.` or
/// `..` alone), a tag of the same characters.
pub fn check_name(name: &str) -> Result<(), ImageError> {
    let bad = || ImageError::BadName(name.to_owned());
    if name.is_empty() || name.len() > 255 {
        return Err(bad());
    }
    let (path, tag) = split_tag(name);
    let word = |w: &str| {
        !w.is_empty()
            && w != "."
            && w != ".."
            && !w.starts_with('.')
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let host_port = |w: &str| match w.split_once(':') {
        Some((h, p)) => word(h) && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
        None => word(w),
    };
    let comps: Vec<&str> = path.split('/').collect();
    let ok = comps.iter().enumerate().all(|(i, c)| {
        if i == 0 && comps.len() > 1 {
            host_port(c)
        } else {
            word(c)
        }
    }) && tag.is_none_or(|t| word(t) && t.len() <= 128);
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// `repo:tag` → (`repo`, Some(`tag`)); a `:` in a registry's host:port
/// is not a tag.
pub fn split_tag(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (name, None),
    }
}

/// The file name an image's record has: `/` and `:` escaped.
fn escape_name(name: &str) -> String {
    name.replace('%', "%25")
        .replace('/', "%2F")
        .replace(':', "%3A")
}

fn unescape_name(file: &str) -> String {
    file.replace("%3A", ":")
        .replace("%2F", "/")
        .replace("%25", "%")
}

impl Store {
    pub fn new(home: &Path) -> Store {
        Store {
            root: home.to_path_buf(),
        }
    }

    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest)
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(digest)
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", escape_name(name)))
    }

    /// When image `name` was stored here (its record's modification time).
    pub fn stored_at(&self, name: &str) -> Option<std::time::SystemTime> {
        fs::metadata(self.image_path(name)).ok()?.modified().ok()
    }

    /// The store's root (the lab's home).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds one layer blob (tar or tar.gz bytes) and returns its digest.
    /// Idempotent: an already unpacked layer is not unpacked again.
    pub fn add_layer(&self, blob: &[u8]) -> Result<String, ImageError> {
        let digest = hex(&Sha256::digest(blob));
        let dir = self.layer_dir(&digest);
        if dir.is_dir() {
            return Ok(digest);
        }
        // (A corrupt stream has no diff_id: the unpack below says why.)
        let diff_id = reader_sha256(blob, true).ok().map(|(d, _)| d);
        if let Some(existing) = diff_id.as_deref().and_then(|d| self.layer_with_diff_id(d)) {
            return Ok(existing);
        }
        for sub in ["layers", "blobs"] {
            let p = self.root.join(sub);
            fs::create_dir_all(&p).map_err(store_err(&p))?;
        }
        let tmp = self
            .root
            .join("layers")
            .join(format!(".tmp-{digest}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(store_err(&tmp))?;
        if let Err(e) = unpack(&digest[..12], blob, &tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let blob_path = self.blob_path(&digest);
        let blob_tmp = blob_path.with_extension("tmp");
        fs::write(&blob_tmp, blob)
            .and_then(|_| fs::rename(&blob_tmp, &blob_path))
            .map_err(|e| {
                let _ = fs::remove_dir_all(&tmp);
                let _ = fs::remove_file(&blob_tmp);
                ImageError::Store {
                    path: blob_path.clone(),
                    source: e,
                }
            })?;
        fs::rename(&tmp, &dir).map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            ImageError::Store {
                path: dir.clone(),
                source: e,
            }
        })?;
        if let Some(d) = &diff_id {
            self.record_diff_id(d, &digest);
        }
        Ok(digest)
    }

    /// Adds one layer from a file, streamed: copied into the blob store
    /// while hashed, then unpacked from the copy, never whole in memory.
    pub fn add_layer_file(&self, path: &Path) -> Result<String, ImageError> {
        self.add_layer_file_checked(path, None)
    }

    /// As [`Store::add_layer_file`], refusing a blob whose sha256 is not
    /// `expected` (hex) before anything of it is unpacked.
    pub fn add_layer_file_checked(
        &self,
        path: &Path,
        expected: Option<&str>,
    ) -> Result<String, ImageError> {
        let read_err = |source| ImageError::ReadLayer {
            path: path.to_path_buf(),
            source,
        };
        for sub in ["layers", "blobs"] {
            let p = self.root.join(sub);
            fs::create_dir_all(&p).map_err(store_err(&p))?;
        }
        let blob_tmp =
            self.root
                .join("blobs")
                .join(format!(".tmp-{}-{}", std::process::id(), unique()));
        // Removed on every early return; renamed away on success.
        let _cleanup = RemoveFile(blob_tmp.clone());
        let mut src = fs::File::open(path).map_err(read_err)?;
        let mut dst = fs::File::create(&blob_tmp).map_err(store_err(&blob_tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = src.read(&mut buf).map_err(read_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            io::Write::write_all(&mut dst, &buf[..n]).map_err(store_err(&blob_tmp))?;
        }
        drop(dst);
        let digest = hex(&hasher.finalize());
        if let Some(want) = expected {
            if want != digest {
                return Err(ImageError::Digest {
                    what: path.display().to_string(),
                    want: want.to_owned(),
                    got: digest,
                });
            }
        }
        let dir = self.layer_dir(&digest);
        if dir.is_dir() {
            return Ok(digest);
        }
        // The same content stored already, compressed another way: one
        // copy (layers are shared by their uncompressed digest, as in
        // Docker).
        let diff_id = content_sha256(&blob_tmp, true).ok().map(|(d, _)| d);
        if let Some(existing) = diff_id.as_deref().and_then(|d| self.layer_with_diff_id(d)) {
            return Ok(existing);
        }
        let tmp = self
            .root
            .join("layers")
            .join(format!(".tmp-{digest}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(store_err(&tmp))?;
        let blob = fs::File::open(&blob_tmp).map_err(store_err(&blob_tmp))?;
        if let Err(e) = unpack_reader(&digest[..12], blob, &tmp, MAX_UNPACKED_BYTES) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let blob_path = self.blob_path(&digest);
        if let Err(e) = fs::rename(&blob_tmp, &blob_path).and_then(|_| fs::rename(&tmp, &dir)) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(ImageError::Store {
                path: dir.clone(),
                source: e,
            });
        }
        if let Some(d) = &diff_id {
            self.record_diff_id(d, &digest);
        }
        Ok(digest)
    }

    fn diff_id_path(&self, diff_id: &str) -> PathBuf {
        self.root.join("diffids").join(diff_id)
    }

    /// The stored layer whose uncompressed content has sha256 `diff_id`.
    pub fn layer_with_diff_id(&self, diff_id: &str) -> Option<String> {
        let d = fs::read_to_string(self.diff_id_path(diff_id)).ok()?;
        let d = d.trim();
        let ok = d.len() == 64
            && d.bytes().all(|b| b.is_ascii_hexdigit())
            && self.layer_dir(d).is_dir()
            && self.blob_path(d).is_file();
        ok.then(|| d.to_owned())
    }

    fn record_diff_id(&self, diff_id: &str, digest: &str) {
        let dir = self.root.join("diffids");
        if fs::create_dir_all(&dir).is_ok() {
            let p = self.diff_id_path(diff_id);
            let tmp = p.with_extension("tmp");
            let _ = fs::write(&tmp, digest).and_then(|_| fs::rename(&tmp, &p));
        }
    }

    /// Imports an image from layer files (bottom first), each streamed.
    pub fn import(
        &self,
        name: &str,
        layer_files: &[PathBuf],
        config: ImageConfig,
    ) -> Result<Image, ImageError> {
        check_name(name)?;
        let mut layers = Vec::new();
        for p in layer_files {
            layers.push(self.add_layer_file(p)?);
        }
        self.save_image(name, layers, config)
    }

    /// Imports an image from in-memory layer blobs (bottom first).
    pub fn import_blobs(
        &self,
        name: &str,
        blobs: &[Vec<u8>],
        config: ImageConfig,
    ) -> Result<Image, ImageError> {
        check_name(name)?;
        let mut layers = Vec::new();
        for b in blobs {
            layers.push(self.add_layer(b)?);
        }
        self.save_image(name, layers, config)
    }

    /// Gives image `src` a second name, `dst` (Docker's `tag`).
    pub fn tag(&self, src: &str, dst: &str) -> Result<Image, ImageError> {
        check_name(dst)?;
        let img = self.open(src)?;
        self.save_image(dst, img.layers, img.config)
    }

    /// Records image `name` over layers already in the store.
    pub fn save_image(
        &self,
        name: &str,
        layers: Vec<String>,
        config: ImageConfig,
    ) -> Result<Image, ImageError> {
        let image = Image {
            name: name.to_owned(),
            layers,
            config,
        };
        let p = self.image_path(name);
        let dir = self.root.join("images");
        fs::create_dir_all(&dir).map_err(store_err(&dir))?;
        let tmp = p.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&image).map_err(|e| ImageError::Damaged {
            name: name.into(),
            detail: e.to_string(),
        })?;
        fs::write(&tmp, text)
            .and_then(|_| fs::rename(&tmp, &p))
            .map_err(store_err(&p))?;
        Ok(image)
    }

    /// Opens a named image and checks its layers are present.
    pub fn open(&self, name: &str) -> Result<Image, ImageError> {
        check_name(name)?;
        // `alpine` means `alpine:latest`, as in Docker.
        let p = match self.image_path(name) {
            p if !p.exists() && split_tag(name).1.is_none() => {
                self.image_path(&format!("{name}:latest"))
            }
            p => p,
        };
        let text = fs::read_to_string(&p).map_err(|_| ImageError::NotFound {
            name: name.to_owned(),
            store: self.root.join("images"),
        })?;
        let image: Image = serde_json::from_str(&text).map_err(|e| ImageError::Damaged {
            name: name.to_owned(),
            detail: e.to_string(),
        })?;
        for l in &image.layers {
            if !self.layer_dir(l).is_dir() {
                return Err(ImageError::Damaged {
                    name: name.to_owned(),
                    detail: format!("layer {l} is missing"),
                });
            }
        }
        Ok(image)
    }

    /// Lists image names.
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.join("images"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(unescape_name)
            })
            .collect();
        v.sort();
        v
    }

    /// Removes an image's manifest (layers stay until `prune`).
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        check_name(name)?;
        fs::remove_file(self.image_path(name)).map_err(|_| ImageError::NotFound {
            name: name.to_owned(),
            store: self.root.join("images"),
        })
    }

    /// The layers every recorded image uses.
    pub fn referenced_layers(&self) -> std::collections::BTreeSet<String> {
        self.list()
            .iter()
            .filter_map(|n| {
                let text = fs::read_to_string(self.image_path(n)).ok()?;
                serde_json::from_str::<Image>(&text).ok()
            })
            .flat_map(|i| i.layers)
            .collect()
    }

    /// Removes every layer (unpacked dir and blob) not in `keep`: what
    /// `image rm` left behind. Returns the digests removed.
    pub fn collect_garbage(&self, keep: &std::collections::BTreeSet<String>) -> Vec<String> {
        let mut removed = Vec::new();
        for e in fs::read_dir(self.root.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_digest = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_digest || keep.contains(&name) {
                continue;
            }
            if fs::remove_dir_all(e.path()).is_ok() {
                let _ = fs::remove_file(self.blob_path(&name));
                removed.push(name);
            }
        }
        // Index entries of layers that are gone.
        for e in fs::read_dir(self.root.join("diffids"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if self.layer_with_diff_id(&name).is_none() {
                let _ = fs::remove_file(e.path());
            }
        }
        removed
    }

    /// The overlay lower dirs of an image, *top first* (overlayfs order).
    pub fn lower_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| self.layer_dir(l))
            .collect()
    }

    /// Checks that the image's entrypoint exists as an executable file in
    /// some layer (top layer wins), before any namespace is created.
    pub fn check_entrypoint(&self, image: &Image, argv0: &str) -> Result<(), String> {
        if !argv0.starts_with('/') {
            return Err(format!(
                "entrypoint {argv0:?} must be an absolute path inside the image"
            ));
        }
        let (_, m) = resolve_in_layers(&self.lower_dirs(image), argv0).map_err(|e| match e {
            Resolve::Missing => format!(
                "entrypoint {argv0} does not exist in image {}: pass a program the image contains",
                image.name
            ),
            Resolve::Loop => format!(
                "entrypoint {argv0} in image {} is a symlink loop (more than {MAX_SYMLINKS} links): fix the image",
                image.name
            ),
            Resolve::NotDir(at) => format!(
                "entrypoint {argv0} in image {}: {at} is not a directory",
                image.name
            ),
        })?;
        if m.is_file() && m.permissions().mode() & 0o111 != 0 {
            Ok(())
        } else {
            Err(format!(
                "entrypoint {argv0} in image {} is not an executable file",
                image.name
            ))
        }
    }
}

/// Symlinks followed in one lookup before it is a loop (the kernel's
/// limit, ELOOP).
pub const MAX_SYMLINKS: u32 = 40;

/// Why a path does not resolve inside an image.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolve {
    Missing,
    Loop,
    NotDir(String),
}

/// Finds `rel` (no symlinks above it) in the first layer that has it,
/// top first; a layer in which a directory above it is not a real
/// directory is skipped, so nothing is ever resolved on the host's tree.
fn lookup_in_layers(layers: &[PathBuf], rel: &Path) -> Option<(PathBuf, fs::Metadata)> {
    'layer: for l in layers {
        let mut at = l.clone();
        let comps: Vec<_> = rel.components().collect();
        for (k, c) in comps.iter().enumerate() {
            at.push(c);
            let Ok(m) = fs::symlink_metadata(&at) else {
                continue 'layer;
            };
            if k + 1 == comps.len() {
                return Some((at, m));
            }
            if !m.is_dir() {
                continue 'layer;
            }
        }
    }
    None
}

/// Resolves an absolute path inside an image's layers as the container
/// will see it: symlinks are followed within the image (an absolute
/// target starts again at the image's root), at most [`MAX_SYMLINKS`] of
/// them, and never through the host's filesystem. Returns the host path
/// of the file and its metadata.
pub fn resolve_in_layers(
    layers: &[PathBuf],
    path: &str,
) -> Result<(PathBuf, fs::Metadata), Resolve> {
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let cand = cur.join(&name);
        let (host, m) = lookup_in_layers(layers, &cand).ok_or(Resolve::Missing)?;
        if m.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Resolve::Loop);
            }
            let target = fs::read_link(&host).map_err(|_| Resolve::Missing)?;
            if target.is_absolute() {
                cur = PathBuf::new();
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => todo.push_front(n.to_owned()),
                    Component::ParentDir => todo.push_front("..".into()),
                    _ => {}
                }
            }
            continue;
        }
        if todo.is_empty() {
            return Ok((host, m));
        }
        if !m.is_dir() {
            return Err(Resolve::NotDir(format!("/{}", cand.display())));
        }
        cur = cand;
    }
    Err(Resolve::Missing)
}

/// sha256 (hex) and length of what `r` yields; with `gunzip`, of its
/// gzip-decompressed content when it is gzip (a layer's diff_id).
pub fn reader_sha256(r: impl Read, gunzip: bool) -> io::Result<(String, u64)> {
    let mut r = io::BufReader::with_capacity(64 << 10, r);
    let gz = gunzip && io::BufRead::fill_buf(&mut r)?.starts_with(&[0x1f, 0x8b]);
    let mut r: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(r))
    } else {
        Box::new(r)
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((hex(&h.finalize()), n))
}

/// [`reader_sha256`] of a file, streamed.
pub fn content_sha256(path: &Path, gunzip: bool) -> io::Result<(String, u64)> {
    reader_sha256(fs::File::open(path)?, gunzip)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks an entry path and returns it relative, normalised.
pub fn safe_relative(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path".into()),
        }
    }
    Ok(out)
}

/// Does a symlink at `link` (relative to the root) with `target` stay
/// inside the root when resolved lexically?
pub fn symlink_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        // Absolute targets resolve against the container's root.
        return true;
    }
    let mut depth: i64 = link
        .parent()
        .map(|p| p.components().count() as i64)
        .unwrap_or(0);
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    true
}

/// Creates missing parents of `rel` under `root`, refusing to pass through
/// anything that is not a real directory (e.g. a symlink planted by an
/// earlier entry).
fn ensure_parents(root: &Path, rel: &Path) -> Result<(), String> {
    let mut at = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                        "would write through non-directory {}",
                        at.strip_prefix(root).unwrap_or(&at).display()
                    ))
                }
                Err(_) => fs::create_dir(&at).map_err(|e| e.to_string())?,
            }
        }
    }
    Ok(())
}

/// Unpacks a tar (or tar.gz) blob into `dest`, with the checks above.
pub fn unpack(layer: &str, blob: &[u8], dest: &Path) -> Result<(), ImageError> {
    unpack_reader(layer, blob, dest, MAX_UNPACKED_BYTES)
}

/// Unpacks a layer streamed from `from` (tar, or gzip-compressed tar)
/// into `dest`, refusing one that unpacks to more than `limit` bytes. The
/// layer is never whole in memory.
pub fn unpack_reader(
    layer: &str,
    from: impl Read,
    dest: &Path,
    limit: u64,
) -> Result<(), ImageError> {
    use std::io::BufRead;
    let mut from = io::BufReader::with_capacity(64 << 10, from);
    let gz = from
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .unwrap_or(false);
    let inner: Box<dyn Read + '_> = if gz {
        Box::new(flate2::read::GzDecoder::new(from))
    } else {
        Box::new(from)
    };
    let exceeded = std::rc::Rc::new(std::cell::Cell::new(false));
    let reader = Bounded {
        inner,
        left: limit,
        exceeded: exceeded.clone(),
    };
    let r = unpack_archive(layer, reader, dest);
    if exceeded.get() {
        return Err(ImageError::TooLarge {
            layer: layer.to_owned(),
            limit,
        });
    }
    r
}

fn unpack_archive(layer: &str, reader: impl Read, dest: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    let corrupt = |detail: String| ImageError::Corrupt {
        layer: layer.to_owned(),
        detail,
    };
    let entries = archive.entries().map_err(|e| corrupt(e.to_string()))?;
    let mut count = 0usize;
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| corrupt(format!("entry {i}: {e}")))?;
        count += 1;
        let raw = entry
            .path()
            .map_err(|e| corrupt(format!("entry {i}: {e}")))?
            .into_owned();
        let name = raw.to_string_lossy().into_owned();
        let unsafe_entry = |why: String| ImageError::Unsafe {
            layer: layer.to_owned(),
            entry: name.clone(),
            why,
        };
        let rel = safe_relative(&raw).map_err(&unsafe_entry)?;
        if rel.as_os_str().is_empty() {
            continue; // "./"
        }
        ensure_parents(dest, &rel).map_err(&unsafe_entry)?;
        let target = dest.join(&rel);
        let file_name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let kind = entry.header().entry_type();
        // OCI whiteouts become overlayfs whiteouts.
        if file_name == ".wh..wh..opq" {
            let dir = target.parent().unwrap_or(dest);
            set_opaque(dir).map_err(|e| unsafe_entry(format!("cannot mark opaque: {e}")))?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            let wh = target.with_file_name(hidden);
            make_whiteout(&wh).map_err(|e| unsafe_entry(format!("cannot create whiteout: {e}")))?;
            continue;
        }
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(unsafe_entry(
                            "replaces a non-directory with a directory".into(),
                        ))
                    }
                    Err(_) => fs::create_dir(&target).map_err(|e| unsafe_entry(e.to_string()))?,
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| unsafe_entry(e.to_string()))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&target).map_err(&unsafe_entry)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| unsafe_entry(e.to_string()))?;
                io::copy(&mut entry, &mut f).map_err(|e| corrupt(format!("entry {name}: {e}")))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| unsafe_entry(e.to_string()))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| corrupt(e.to_string()))?
                    .ok_or_else(|| unsafe_entry("symlink without a target".into()))?
                    .into_owned();
                if !symlink_stays_inside(&rel, &link) {
                    return Err(unsafe_entry(format!(
                        "is a symlink to {} which points outside the root",
                        link.display()
                    )));
                }
                remove_existing(&target).map_err(&unsafe_entry)?;
                symlink(&link, &target).map_err(|e| unsafe_entry(e.to_string()))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| corrupt(e.to_string()))?
                    .ok_or_else(|| unsafe_entry("hard link without a target".into()))?
                    .into_owned();
                let lrel = safe_relative(&link)
                    .map_err(|w| unsafe_entry(format!("is a hard link whose target {w}")))?;
                ensure_parents(dest, &lrel).map_err(&unsafe_entry)?;
                let src = dest.join(&lrel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(unsafe_entry(format!(
                            "is a hard link to {} which is not a regular file of this layer",
                            link.display()
                        )))
                    }
                }
                remove_existing(&target).map_err(&unsafe_entry)?;
                fs::hard_link(&src, &target).map_err(|e| unsafe_entry(e.to_string()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry(
                    "is a device node; images may not carry devices (the runtime provides /dev)"
                        .into(),
                ))
            }
            tar::EntryType::Fifo => {
                return Err(unsafe_entry(
                    "is a FIFO; isolab images may not carry FIFOs".into(),
                ));
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(unsafe_entry(format!("has unsupported tar type {other:?}"))),
        }
    }
    if count == 0 {
        return Err(corrupt("no entries".into()));
    }
    Ok(())
}

fn remove_existing(p: &Path) -> Result<(), String> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Err("replaces a directory with a file".into()),
        Ok(_) => fs::remove_file(p).map_err(|e| e.to_string()),
        Err(_) => Ok(()),
    }
}

fn make_whiteout(p: &Path) -> io::Result<()> {
    let _ = fs::remove_file(p);
    nix::sys::stat::mknod(
        p,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .map_err(io::Error::from)
}

fn set_opaque(dir: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated path, name and a 1-byte value buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            c"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Builds a tar layer in memory from (path, mode, contents | symlink).
pub enum LayerEntry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// Writes entries as an uncompressed tar.
pub fn build_layer(entries: &[LayerEntry<'_>]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            LayerEntry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty())?;
            }
            LayerEntry::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data)?;
            }
            LayerEntry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target)?;
            }
        }
    }
    b.into_inner()
}

/// Gzips a blob (default level).
pub fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    e.finish()
}

/// Busybox applets linked in the default image's shell layer.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "ps", "mount", "hostname", "id", "sleep", "uname", "ip", "ifconfig",
    "top", "free", "df", "mkdir", "rm", "touch", "env", "grep", "head", "tail", "wc", "true",
    "false", "kill", "dmesg", "vi", "whoami", "date", "find",
];

/// Builds the default image from the static agent (and busybox when a
/// static busybox is given): layer 1 = the agent and the skeleton dirs,
/// layer 2 = busybox and applet links.
pub fn default_layers(agent: &[u8], busybox: Option<&[u8]>) -> io::Result<Vec<Vec<u8>>> {
    let mut base = vec![
        LayerEntry::Dir("proc", 0o755),
        LayerEntry::Dir("sys", 0o755),
        LayerEntry::Dir("dev", 0o755),
        LayerEntry::Dir("tmp", 0o1777),
        LayerEntry::Dir("etc", 0o755),
        LayerEntry::Dir("bin", 0o755),
        LayerEntry::File(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        LayerEntry::File("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n"),
        LayerEntry::File("isolab-agent", 0o755, agent),
    ];
    base.push(LayerEntry::Dir("run", 0o755));
    let mut layers = vec![gzip(&build_layer(&base)?)?];
    if let Some(bb) = busybox {
        let mut entries = vec![
            LayerEntry::Dir("bin", 0o755),
            LayerEntry::File("bin/busybox", 0o755, bb),
        ];
        let paths: Vec<String> = BUSYBOX_APPLETS.iter().map(|a| format!("bin/{a}")).collect();
        for p in &paths {
            entries.push(LayerEntry::Symlink(p, "busybox"));
        }
        layers.push(gzip(&build_layer(&entries)?)?);
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoints_resolve_inside_the_image_only() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("l0"), dir.path().join("l1"));
        for d in [&lower, &upper] {
            std::fs::create_dir_all(d.join("bin")).unwrap();
        }
        let layers = vec![upper.clone(), lower.clone()];
        // A program in the lower layer, reached through a link in the upper.
        std::fs::write(lower.join("bin/busybox"), b"x").unwrap();
        std::fs::set_permissions(lower.join("bin/busybox"), PermissionsExt::from_mode(0o755))
            .unwrap();
        symlink("busybox", upper.join("bin/sh")).unwrap();
        let (host, m) = resolve_in_layers(&layers, "/bin/sh").unwrap();
        assert_eq!(host, lower.join("bin/busybox"));
        assert!(m.is_file());
        // A loop is ELOOP, not a stack overflow.
        symlink("b", upper.join("bin/a")).unwrap();
        symlink("a", upper.join("bin/b")).unwrap();
        assert_eq!(
            resolve_in_layers(&layers, "/bin/a").unwrap_err(),
            Resolve::Loop
        );
        // A directory link pointing at the host's /etc resolves in the image
        // (where there is no /etc/passwd), never in the host's tree.
        symlink("/etc", upper.join("hostetc")).unwrap();
        assert_eq!(
            resolve_in_layers(&layers, "/hostetc/passwd").unwrap_err(),
            Resolve::Missing
        );
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
        assert_eq!(
            resolve_in_layers(&layers, "/hostetc/passwd").unwrap().0,
            lower.join("etc/passwd")
        );
        // `..` stays at the image's root.
        assert!(resolve_in_layers(&layers, "/../../bin/sh").is_ok());
    }

    #[test]
    fn a_decompression_bomb_is_refused_and_leaves_nothing() {
        // 4 MiB of zeros gzip to a few KiB; the limit is 1 MiB.
        let zeros = vec![0u8; 4 << 20];
        let blob = gzip(&build_layer(&[LayerEntry::File("big", 0o644, &zeros)]).unwrap()).unwrap();
        assert!(blob.len() < 64 << 10, "{}", blob.len());
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_reader("bomb", &blob[..], dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("decompression bomb"), "{e}");
        // Under the limit the same layer unpacks.
        let ok = tempfile::tempdir().unwrap();
        unpack_reader("bomb", &blob[..], ok.path(), 8 << 20).unwrap();
        assert_eq!(
            std::fs::metadata(ok.path().join("big")).unwrap().len(),
            4 << 20
        );
    }

    #[test]
    fn a_layer_file_is_imported_streamed_with_the_same_digest() {
        let layer = build_layer(&[LayerEntry::File("hello", 0o644, b"hi\n")]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("layer.tar");
        std::fs::write(&f, &layer).unwrap();
        let store = Store::new(&dir.path().join("home"));
        let digest = store.add_layer_file(&f).unwrap();
        assert_eq!(digest, hex(&Sha256::digest(&layer)));
        assert_eq!(
            store.add_layer(&layer).unwrap(),
            digest,
            "same bytes, same layer"
        );
        assert_eq!(
            std::fs::read(store.layer_dir(&digest).join("hello")).unwrap(),
            b"hi\n"
        );
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), layer);
        // No temp file left in the blob store.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("home/blobs"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn raw_tar(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
        // Build headers by hand so that unsafe names survive (the tar
        // crate's builder refuses some of them).
        let mut h = tar::Header::new_old();
        {
            let bytes = h.as_mut_bytes();
            bytes[..name.len()].copy_from_slice(name.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            let bytes = h.as_mut_bytes();
            bytes[157..157 + l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        (d, s)
    }

    fn assert_store_clean(d: &tempfile::TempDir) {
        let layers = d.path().join("layers");
        let n = fs::read_dir(&layers).map(|r| r.count()).unwrap_or(0);
        assert_eq!(
            n,
            0,
            "a refused layer left something in {}",
            layers.display()
        );
    }

    #[test]
    fn round_trip_default_layers() {
        let (_d, s) = store();
        let layers = default_layers(b"\x7fELFagent", Some(b"bb")).unwrap();
        let img = s
            .import_blobs(
                "default",
                &layers,
                ImageConfig {
                    entrypoint: vec!["/isolab-agent".into()],
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(img.layers.len(), 2);
        let back = s.open("default").unwrap();
        assert_eq!(back, img);
        let lowers = s.lower_dirs(&img);
        assert_eq!(
            fs::read(lowers[1].join("isolab-agent")).unwrap(),
            b"\x7fELFagent"
        );
        assert_eq!(
            fs::read_link(lowers[0].join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::metadata(lowers[1].join("tmp"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o1777
        );
        s.check_entrypoint(&img, "/isolab-agent").unwrap();
        s.check_entrypoint(&img, "/bin/sh").unwrap();
        assert!(s
            .check_entrypoint(&img, "/nope")
            .unwrap_err()
            .contains("does not exist"));
        assert!(s
            .check_entrypoint(&img, "/etc/passwd")
            .unwrap_err()
            .contains("not an executable"));
        // Same bytes, same digest, no second unpack.
        assert_eq!(s.add_layer(&layers[0]).unwrap(), img.layers[0]);
        assert_eq!(s.list(), vec!["default"]);
    }

    #[test]
    fn refuses_unsafe_entries_and_leaves_nothing() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                raw_tar("../evil", tar::EntryType::Regular, None, b"x"),
                "contains '..'",
            ),
            (
                raw_tar("a/../../evil", tar::EntryType::Regular, None, b"x"),
                "contains '..'",
            ),
            (
                raw_tar("/etc/evil", tar::EntryType::Regular, None, b"x"),
                "absolute path",
            ),
            (
                raw_tar("link", tar::EntryType::Symlink, Some("../../etc"), b""),
                "points outside the root",
            ),
            (
                raw_tar("hl", tar::EntryType::Link, Some("/etc/passwd"), b""),
                "hard link whose target is an absolute path",
            ),
            (
                raw_tar("hl", tar::EntryType::Link, Some("../x"), b""),
                "contains '..'",
            ),
            (
                raw_tar("hl", tar::EntryType::Link, Some("missing"), b""),
                "not a regular file of this layer",
            ),
            (
                raw_tar("null", tar::EntryType::Char, None, b""),
                "device node",
            ),
            (
                raw_tar("sda", tar::EntryType::Block, None, b""),
                "device node",
            ),
        ];
        for (blob, why) in cases {
            let (d, s) = store();
            let err = s.add_layer(&blob).unwrap_err().to_string();
            assert!(err.contains(why), "expected {why:?} in {err}");
            assert_store_clean(&d);
        }
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        // "dir" -> "/etc" (allowed alone: absolute targets resolve in the
        // container), then "dir/passwd" would write through it on the host.
        let mut blob = raw_tar("dir", tar::EntryType::Symlink, Some("/etc"), b"");
        blob.truncate(blob.len() - 1024);
        blob.extend(raw_tar(
            "dir/passwd",
            tar::EntryType::Regular,
            None,
            b"pwned",
        ));
        let (d, s) = store();
        let err = s.add_layer(&blob).unwrap_err().to_string();
        assert!(err.contains("non-directory"), "{err}");
        assert_store_clean(&d);
    }

    #[test]
    fn one_content_is_stored_once_however_compressed() {
        let plain = build_layer(&[LayerEntry::File("f", 0o644, &[7u8; 4000])]).unwrap();
        let (_d, s) = store();
        let a = s.add_layer(&gzip(&plain).unwrap()).unwrap();
        let b = s.add_layer(&plain).unwrap();
        assert_eq!(a, b, "the same tar, gzip or not, is one layer");
        let diff_id = hex(&Sha256::digest(&plain));
        assert_eq!(s.layer_with_diff_id(&diff_id), Some(a.clone()));
        // Gone with its layer at garbage collection, and then not reused.
        s.collect_garbage(&Default::default());
        assert!(s.layer_with_diff_id(&diff_id).is_none());
        let c = s.add_layer(&plain).unwrap();
        assert_ne!(c, a);
        assert!(s.layer_dir(&c).is_dir());
    }

    #[test]
    fn corrupt_and_truncated_layers() {
        let good = build_layer(&[LayerEntry::File("f", 0o644, &[7u8; 4000])]).unwrap();
        for blob in [
            good[..700].to_vec(),
            b"not a tar at all, just text".repeat(40),
            gzip(&good).unwrap()[..30].to_vec(),
            vec![],
        ] {
            let (d, s) = store();
            let err = s.add_layer(&blob).unwrap_err();
            assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
            assert_store_clean(&d);
        }
    }

    #[test]
    fn hard_link_and_relative_symlink_inside_are_fine() {
        let mut blob = build_layer(&[
            LayerEntry::Dir("a", 0o755),
            LayerEntry::File("a/f", 0o644, b"data"),
            LayerEntry::Symlink("a/up", "../a/f"),
        ])
        .unwrap();
        blob.truncate(blob.len() - 1024);
        blob.extend(raw_tar("a/hl", tar::EntryType::Link, Some("a/f"), b""));
        let dest = tempfile::tempdir().unwrap();
        unpack("t", &blob, dest.path()).unwrap();
        assert_eq!(fs::read(dest.path().join("a/hl")).unwrap(), b"data");
        assert_eq!(fs::read(dest.path().join("a/up")).unwrap(), b"data");
    }

    #[test]
    fn lexical_symlink_check() {
        assert!(symlink_stays_inside(
            Path::new("a/b/l"),
            Path::new("../../x")
        ));
        assert!(!symlink_stays_inside(
            Path::new("a/b/l"),
            Path::new("../../../x")
        ));
        assert!(symlink_stays_inside(Path::new("l"), Path::new("/anything")));
        assert!(!symlink_stays_inside(Path::new("l"), Path::new("..")));
    }

    #[test]
    fn bad_names() {
        let (_d, s) = store();
        assert!(matches!(s.open("../x"), Err(ImageError::BadName(_))));
        assert!(matches!(s.open("nope"), Err(ImageError::NotFound { .. })));
    }
}
