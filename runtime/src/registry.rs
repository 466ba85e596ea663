//! Pull and push through the OCI distribution API, the HTTP API every
//! registry speaks (Docker Hub, the CNCF distribution registry, …):
//!
//! ```text
//! pull  GET  /v2/<repo>/manifests/<tag>     an index (→ linux/amd64) or a manifest
//!       GET  /v2/<repo>/blobs/<config>      the image config
//!       GET  /v2/<repo>/blobs/<layer>       each layer not already stored
//! push  HEAD /v2/<repo>/blobs/<digest>      skip what the registry has
//!       POST /v2/<repo>/blobs/uploads/      → Location
//!       PUT  <Location>?digest=<digest>     the blob, streamed
//!       PUT  /v2/<repo>/manifests/<tag>     the manifest, last
//! ```
//!
//! A 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…` is
//! answered by fetching a token from the realm (with the stored
//! credentials, if any) and retrying; `Basic` is answered with the stored
//! credentials. Everything received is hostile: manifests and configs are
//! size-bounded and digest-checked, each layer is streamed to a temporary
//! file bounded by its descriptor's size, and its digest is checked
//! before any of it is unpacked.
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::archive::{self, ConfigDoc, IndexDoc};
use crate::image::{check_name, Image, ImageError, Store};

/// A registry reference: `HOST[:PORT]/REPO[:TAG|@sha256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repo: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    /// Parses a reference; it must name its registry (the lab reaches no
    /// public registry, so `docker.io` is never assumed).
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        let bad = |why: &str| ImageError::Registry {
            reference: s.to_owned(),
            detail: why.to_owned(),
        };
        let (host, rest) = s
            .split_once('/')
            .filter(|(h, _)| h.contains('.') || h.contains(':') || *h == "localhost")
            .ok_or_else(|| {
                bad("name the registry: HOST[:PORT]/REPO[:TAG], e.g. 127.0.0.1:5000/demo:1")
            })?;
        let (repo, reference) = match rest.split_once('@') {
            Some((r, d)) => (r, d.to_owned()),
            None => match crate::image::split_tag(rest) {
                (r, Some(t)) => (r, t.to_owned()),
                (r, None) => (r, "latest".to_owned()),
            },
        };
        check_name(repo)
            .map_err(|_| bad("the repository name is not valid: use lowercase path parts"))?;
        if repo.contains(':') || repo.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad(
                "the repository name is not valid: use lowercase path parts",
            ));
        }
        Ok(Reference {
            registry: host.to_owned(),
            repo: repo.to_owned(),
            reference,
        })
    }

    /// The local name an image pulled from here gets.
    pub fn local_name(&self) -> String {
        if self.reference.starts_with("sha256:") {
            format!("{}/{}", self.registry, self.repo)
        } else {
            format!("{}/{}:{}", self.registry, self.repo, self.reference)
        }
    }
}

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Plain HTTP instead of HTTPS (`--insecure`).
    pub insecure: bool,
    /// A PEM CA certificate to trust besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// `user:password`, from `isolab login`.
    pub credentials: Option<(String, String)>,
}

/// What a layer transfer reports as it goes: (layer, bytes done, bytes in
/// all); (layer, 0, 0) when the other side already had it, (layer, 1, 0)
/// when the registry mounted it from another of its repositories.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// The largest manifest or config accepted.
const MAX_DOC: u64 = archive::MAX_JSON;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

struct Client {
    agent: ureq::Agent,
    base: String,
    r: Reference,
    opts: Options,
    token: std::cell::RefCell<Option<String>>,
}

fn reg_err(r: &Reference, detail: impl Into<String>) -> ImageError {
    ImageError::Registry {
        reference: format!("{}/{}:{}", r.registry, r.repo, r.reference),
        detail: detail.into(),
    }
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The parameters of a `WWW-Authenticate: Bearer k="v",…` challenge.
pub fn bearer_challenge(h: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let rest = h.trim().strip_prefix("Bearer ")?;
    let mut m = std::collections::BTreeMap::new();
    let mut s = rest;
    while !s.is_empty() {
        let (k, v) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_owned();
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_owned(), &q[end + 1..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].to_owned(), &v[end..])
        };
        m.insert(k, val);
        s = tail.trim_start_matches(',').trim_start();
    }
    Some(m)
}

impl Client {
    fn new(r: &Reference, opts: &Options) -> Result<Client, ImageError> {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(10))
            .timeout_read(std::time::Duration::from_secs(60))
            .redirects(5);
        if !opts.insecure {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(ca) = &opts.ca_file {
                use rustls_pki_types::pem::PemObject;
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| {
                    reg_err(
                        r,
                        format!("--tls-ca {}: {e}: pass a PEM certificate", ca.display()),
                    )
                })?;
                for c in certs {
                    let c = c.map_err(|e| {
                        reg_err(
                            r,
                            format!("--tls-ca {}: {e}: pass a PEM certificate", ca.display()),
                        )
                    })?;
                    roots
                        .add(c)
                        .map_err(|e| reg_err(r, format!("--tls-ca {}: {e}", ca.display())))?;
                }
            }
            // ring, not aws-lc (which needs cmake to build); ring has no
            // post-quantum key exchange, which rustls now flags.
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| reg_err(r, e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            b = b.tls_config(Arc::new(cfg));
        }
        Ok(Client {
            agent: b.build(),
            base: format!(
                "{}://{}/v2/{}",
                if opts.insecure { "http" } else { "https" },
                r.registry,
                r.repo
            ),
            r: r.clone(),
            opts: opts.clone(),
            token: Default::default(),
        })
    }

    fn err(&self, detail: impl Into<String>) -> ImageError {
        reg_err(&self.r, detail)
    }

    fn transport(&self, e: ureq::Transport) -> ImageError {
        let hint = if self.opts.insecure {
            "is the registry running there?"
        } else {
            "is it up, and does it speak HTTPS with a certificate you trust (--tls-ca FILE), or plain HTTP (--insecure)?"
        };
        self.err(format!("{} unreachable ({e}): {hint}", self.r.registry))
    }

    /// Sends a request, answering one authentication challenge.
    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Option<&dyn Fn() -> io::Result<Box<dyn Read>>>,
    ) -> Result<ureq::Response, ImageError> {
        for attempt in 0..2 {
            let mut req = self.agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(t) = self.token.borrow().as_deref() {
                req = req.set("Authorization", t);
            }
            let res = match body {
                Some(b) => req.send(b().map_err(|e| self.err(e.to_string()))?),
                None => req.call(),
            };
            match res {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, resp)) if attempt == 0 => {
                    let challenge = resp.header("WWW-Authenticate").unwrap_or("").to_owned();
                    self.authenticate(&challenge)?;
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let text: String = text.chars().take(300).collect();
                    return Err(self.err(match code {
                        401 | 403 => format!(
                            "{method} {url}: {code} ({}): log in with `isolab login {}`",
                            text.trim(),
                            self.r.registry
                        ),
                        404 => format!("{method} {url}: not found: check the repository and tag"),
                        _ => format!("{method} {url}: HTTP {code}: {}", text.trim()),
                    }));
                }
                Err(ureq::Error::Transport(t)) => return Err(self.transport(t)),
            }
        }
        Err(self.err(format!("{method} {url}: still refused after authenticating: check the credentials (`isolab login {}`)", self.r.registry)))
    }

    fn authenticate(&self, challenge: &str) -> Result<(), ImageError> {
        let basic = self
            .opts
            .credentials
            .as_ref()
            .map(|(u, p)| format!("Basic {}", base64(&format!("{u}:{p}"))));
        if challenge.trim_start().starts_with("Basic") {
            let b = basic.ok_or_else(|| {
                self.err(format!(
                    "the registry wants a login: `isolab login {}`",
                    self.r.registry
                ))
            })?;
            *self.token.borrow_mut() = Some(b);
            return Ok(());
        }
        let params = bearer_challenge(challenge).ok_or_else(|| {
            self.err(format!(
                "an authentication challenge the lab does not speak ({challenge:?})"
            ))
        })?;
        let realm = params
            .get("realm")
            .ok_or_else(|| self.err("a Bearer challenge without a realm"))?;
        let mut req = self.agent.get(realm);
        for k in ["service", "scope"] {
            if let Some(v) = params.get(k) {
                req = req.query(k, v);
            }
        }
        // The realm is the registry's word: the password goes there only
        // over TLS, or to the registry's own host when plain HTTP was
        // asked for; never in clear to some other host.
        let realm_host = realm
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
            .unwrap_or("");
        let safe =
            realm.starts_with("https://") || (self.opts.insecure && realm_host == self.r.registry);
        match (&basic, safe) {
            (Some(b), true) => req = req.set("Authorization", b),
            (Some(_), false) => {
                return Err(self.err(format!(
                    "the registry asks for the password to be sent in clear to {realm}: refused (use a registry whose token service speaks HTTPS)"
                )))
            }
            (None, _) => {}
        }
        let resp = req.call().map_err(|e| match e {
            ureq::Error::Status(code, _) => self.err(format!(
                "the token server {realm} refused ({code}): check `isolab login {}`",
                self.r.registry
            )),
            ureq::Error::Transport(t) => self.transport(t),
        })?;
        let mut body = Vec::new();
        resp.into_reader()
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|e| self.err(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("the token server's answer is not JSON ({e})")))?;
        let token = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| self.err("the token server gave no token"))?;
        *self.token.borrow_mut() = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// GETs a document of at most [`MAX_DOC`] bytes; with `digest`, checks
    /// it.
    fn document(
        &self,
        url: &str,
        accept: &str,
        digest: Option<&str>,
    ) -> Result<(Vec<u8>, String), ImageError> {
        let resp = self.send("GET", url, &[("Accept", accept.to_owned())], None)?;
        let media = resp.content_type().to_owned();
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_DOC + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.err(format!("GET {url}: {e}")))?;
        if body.len() as u64 > MAX_DOC {
            return Err(self.err(format!(
                "GET {url}: larger than {MAX_DOC} bytes: not an image document"
            )));
        }
        if let Some(d) = digest {
            let got = archive::hex(&Sha256::digest(&body));
            if format!("sha256:{got}") != d {
                return Err(ImageError::Digest {
                    what: url.to_owned(),
                    want: d.to_owned(),
                    got,
                });
            }
        }
        Ok((body, media))
    }
}

/// Pulls `r` into the store and names it `r.local_name()` (or `name`).
pub fn pull(
    store: &Store,
    r: &Reference,
    opts: &Options,
    name: Option<&str>,
    progress: Progress<'_>,
) -> Result<Image, ImageError> {
    let c = Client::new(r, opts)?;
    let at = Path::new("manifest");
    let mut url = format!("{}/manifests/{}", c.base, r.reference);
    let by_digest = r
        .reference
        .starts_with("sha256:")
        .then(|| r.reference.clone());
    let (mut body, mut media) = c.document(&url, ACCEPT, by_digest.as_deref())?;
    for _ in 0..4 {
        let doc: IndexDoc = serde_json::from_slice(&body)
            .map_err(|e| c.err(format!("the manifest is not the JSON expected ({e})")))?;
        let mt = doc.media_type.clone().unwrap_or(media.clone());
        if mt == archive::OCI_INDEX || mt == archive::DOCKER_LIST {
            let pick = doc
                .manifests
                .unwrap_or_default()
                .into_iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or_else(|| {
                    c.err("no linux/amd64 image in the index: this lab runs linux/amd64 images")
                })?;
            archive::sha256_hex(at, &pick.digest)?;
            url = format!("{}/manifests/{}", c.base, pick.digest);
            (body, media) = c.document(&url, ACCEPT, Some(&pick.digest))?;
            continue;
        }
        if mt != archive::OCI_MANIFEST && mt != archive::DOCKER_MANIFEST {
            return Err(c.err(format!("media type {mt} is not an image manifest")));
        }
        let config = doc
            .config
            .ok_or_else(|| c.err("a manifest without a config"))?;
        let chex = archive::sha256_hex(at, &config.digest)?;
        // Every descriptor is checked before anything is fetched.
        let descs = doc.layers.unwrap_or_default();
        for l in &descs {
            archive::check_layer_type(at, l)?;
            archive::sha256_hex(at, &l.digest)?;
            match l.size {
                None => return Err(c.err(format!("layer {} has no size", l.digest))),
                Some(n) if n > crate::image::MAX_UNPACKED_BYTES => {
                    return Err(c.err(format!(
                        "layer {} claims {n} bytes, more than the {} a layer may have: refused",
                        l.digest,
                        crate::image::MAX_UNPACKED_BYTES
                    )))
                }
                _ => {}
            }
        }
        let (cbytes, _) = c.document(
            &format!("{}/blobs/sha256:{chex}", c.base),
            "*/*",
            Some(&config.digest),
        )?;
        let cfg: ConfigDoc = serde_json::from_slice(&cbytes)
            .map_err(|e| c.err(format!("the image config is not the JSON expected ({e})")))?;
        cfg.check_platform(at)?;
        let mut layers = Vec::new();
        for l in descs {
            let hex = archive::sha256_hex(at, &l.digest)?.to_owned();
            let short = hex[..12].to_owned();
            if store.layer_dir(&hex).is_dir() {
                progress(&short, 0, 0);
                layers.push(hex);
                continue;
            }
            let size = l
                .size
                .ok_or_else(|| c.err(format!("layer {short} has no size")))?;
            let tmp = store
                .root()
                .join(format!(".tmp-pull-{}-{short}", std::process::id()));
            let _rm = RemoveOnDrop(tmp.clone());
            fetch_blob(&c, &l.digest, size, &tmp, &short, progress)?;
            layers.push(
                store
                    .add_layer_file_checked(&tmp, Some(&hex))
                    .map_err(|e| match e {
                        ImageError::Digest { want, got, .. } => ImageError::Digest {
                            what: format!("layer {short} of {}/{}", r.registry, r.repo),
                            want,
                            got,
                        },
                        e => e,
                    })?,
            );
        }
        let mut seen = layers.clone();
        seen.push(chex.to_owned());
        record_origins(store, r, &seen);
        let name = name.map(str::to_owned).unwrap_or_else(|| r.local_name());
        check_name(&name)?;
        return store.save_image(&name, layers, cfg.image_config());
    }
    Err(c.err("image indexes nested too deep"))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn fetch_blob(
    c: &Client,
    digest: &str,
    size: u64,
    to: &Path,
    short: &str,
    progress: Progress<'_>,
) -> Result<(), ImageError> {
    let url = format!("{}/blobs/{digest}", c.base);
    let resp = c.send("GET", &url, &[], None)?;
    let mut r = resp.into_reader().take(size + 1);
    let mut out = std::fs::File::create(to).map_err(|e| c.err(format!("{}: {e}", to.display())))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut done = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| c.err(format!("GET {url}: {e}")))?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > size {
            return Err(c.err(format!(
                "layer {short} is larger than its descriptor's {size} bytes: refused"
            )));
        }
        out.write_all(&buf[..n])
            .map_err(|e| c.err(format!("{}: {e}", to.display())))?;
        progress(short, done, size);
    }
    if done != size {
        return Err(c.err(format!(
            "layer {short}: {done} of {size} bytes arrived: try again"
        )));
    }
    Ok(())
}

/// Checks that `registry` answers `/v2/` with these options (and
/// credentials), as `docker login` does.
pub fn ping(registry: &str, opts: &Options) -> Result<(), ImageError> {
    let r = Reference {
        registry: registry.to_owned(),
        repo: String::new(),
        reference: String::new(),
    };
    let c = Client::new(&r, opts)?;
    let url = c.base.trim_end_matches('/').to_owned() + "/";
    c.send("GET", &url, &[], None).map(|_| ())
}

/// Pushes image `name` to `r`; returns the manifest's digest.
pub fn push(
    store: &Store,
    name: &str,
    r: &Reference,
    opts: &Options,
    progress: Progress<'_>,
) -> Result<String, ImageError> {
    let img = store.open(name)?;
    let c = Client::new(r, opts)?;
    let layers = archive::saved_layers(store, &img)?;
    let config = archive::config_doc(&img, &layers);
    let chex = archive::hex(&Sha256::digest(&config));
    for l in &layers {
        let short = l.digest[..12].to_owned();
        let path = l.blob.clone();
        let open = move |at: u64| -> io::Result<Box<dyn Read>> {
            use std::io::Seek;
            let mut f = std::fs::File::open(&path)?;
            f.seek(io::SeekFrom::Start(at))?;
            Ok(Box::new(f))
        };
        upload(&c, store, &l.digest, l.blob_size, &short, progress, &open)?;
    }
    let cfg = config.clone();
    let open = move |at: u64| -> io::Result<Box<dyn Read>> {
        Ok(Box::new(io::Cursor::new(cfg[at as usize..].to_vec())))
    };
    upload(
        &c,
        store,
        &chex,
        config.len() as u64,
        "config",
        &mut |_, _, _| {},
        &open,
    )?;
    let mut blobs: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    blobs.push(chex.clone());
    record_origins(store, r, &blobs);
    let manifest = archive::oci_manifest(&config, &layers);
    let m = manifest.clone();
    c.send(
        "PUT",
        &format!("{}/manifests/{}", c.base, r.reference),
        &[
            ("Content-Type", archive::OCI_MANIFEST.to_owned()),
            ("Content-Length", manifest.len().to_string()),
        ],
        Some(&move || Ok(Box::new(io::Cursor::new(m.clone())) as Box<dyn Read>)),
    )?;
    Ok(format!(
        "sha256:{}",
        archive::hex(&Sha256::digest(&manifest))
    ))
}

/// Where blobs were seen, per registry: `digest → {"host/repo", …}`, so
/// a push can ask the registry to mount a blob it already holds in
/// another repository instead of uploading it again.
fn origins_path(store: &Store) -> PathBuf {
    store.root().join("blob-origins.json")
}

type Origins = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

fn read_origins(store: &Store) -> Origins {
    std::fs::read_to_string(origins_path(store))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Records that `r`'s repository holds the blobs `hexes`.
fn record_origins(store: &Store, r: &Reference, hexes: &[String]) {
    let mut o = read_origins(store);
    for h in hexes {
        o.entry(h.clone())
            .or_default()
            .insert(format!("{}/{}", r.registry, r.repo));
    }
    let p = origins_path(store);
    let tmp = p.with_extension("tmp");
    if let Ok(t) = serde_json::to_vec(&o) {
        let _ = std::fs::write(&tmp, t).and_then(|_| std::fs::rename(&tmp, &p));
    }
}

/// Another repository of the same registry known to hold blob `hex`.
fn known_elsewhere(store: &Store, r: &Reference, hex: &str) -> Option<String> {
    let prefix = format!("{}/", r.registry);
    read_origins(store)
        .get(hex)?
        .iter()
        .filter_map(|o| o.strip_prefix(&prefix))
        .find(|repo| *repo != r.repo)
        .map(str::to_owned)
}

/// Bytes per PATCH of a chunked upload (`ISOLAB_UPLOAD_CHUNK` overrides,
/// for slow links and for the tests).
fn chunk_size() -> u64 {
    std::env::var("ISOLAB_UPLOAD_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1024)
        .unwrap_or(8 << 20)
}

/// The end of the bytes a registry says it has (`Range: 0-N`), if any.
pub fn received_through(range: &str) -> Option<u64> {
    range.trim().split_once('-')?.1.trim().parse().ok()
}

/// An upload URL the registry gave, made absolute.
fn absolute(c: &Client, loc: &str) -> String {
    if loc.starts_with('/') {
        let scheme_host: String = c.base.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        format!("{scheme_host}{loc}")
    } else {
        loc.to_owned()
    }
}

/// Uploads one blob unless the registry has it: mounted from another
/// repository of the registry that holds it, else sent in chunks (PATCH
/// with Content-Range), resuming from what the registry says it received
/// when a chunk fails, then committed with its digest.
#[allow(clippy::too_many_arguments)]
fn upload(
    c: &Client,
    store: &Store,
    hex: &str,
    size: u64,
    short: &str,
    progress: Progress<'_>,
    open: &dyn Fn(u64) -> io::Result<Box<dyn Read>>,
) -> Result<(), ImageError> {
    let digest = format!("sha256:{hex}");
    match c.send("HEAD", &format!("{}/blobs/{digest}", c.base), &[], None) {
        Ok(_) => {
            progress(short, 0, 0);
            return Ok(());
        }
        Err(ImageError::Registry { detail, .. }) if detail.contains("not found") => {}
        Err(e) => return Err(e),
    }
    let start = match known_elsewhere(store, &c.r, hex) {
        Some(from) => format!("{}/blobs/uploads/?mount={digest}&from={from}", c.base),
        None => format!("{}/blobs/uploads/", c.base),
    };
    let resp = c.send("POST", &start, &[("Content-Length", "0".into())], None)?;
    if resp.status() == 201 {
        // Mounted: the registry linked the blob it already had.
        progress(short, 1, 0);
        return Ok(());
    }
    let mut loc = absolute(
        c,
        resp.header("Location")
            .ok_or_else(|| c.err("the registry gave no upload location"))?,
    );
    let chunk = chunk_size();
    let mut offset = 0u64;
    let mut resumes = 0;
    while offset < size {
        let n = chunk.min(size - offset);
        let at = offset;
        let body = move || -> io::Result<Box<dyn Read>> { Ok(Box::new(open(at)?.take(n))) };
        let sent = c.send(
            "PATCH",
            &loc,
            &[
                ("Content-Type", "application/octet-stream".into()),
                ("Content-Length", n.to_string()),
                ("Content-Range", format!("{at}-{}", at + n - 1)),
            ],
            Some(&body),
        );
        match sent {
            Ok(r) => {
                if let Some(l) = r.header("Location") {
                    loc = absolute(c, l);
                }
                offset += n;
                progress(short, offset, size);
            }
            Err(e) if resumes < 3 => {
                // Ask how far it got, and go on from there.
                resumes += 1;
                let status = c.send("GET", &loc, &[], None).map_err(|_| e)?;
                offset = status
                    .header("Range")
                    .and_then(received_through)
                    .map_or(0, |end| end + 1);
                if let Some(l) = status.header("Location") {
                    loc = absolute(c, l);
                }
            }
            Err(e) => return Err(e),
        }
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    c.send(
        "PUT",
        &format!("{loc}{sep}digest={digest}"),
        &[("Content-Length", "0".into())],
        None,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry() {
        let r = Reference::parse("127.0.0.1:5000/demo/app:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repo.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "demo/app", "1")
        );
        assert_eq!(r.local_name(), "127.0.0.1:5000/demo/app:1");
        assert_eq!(Reference::parse("localhost/x").unwrap().reference, "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            Reference::parse(&format!("reg.example/x@{d}"))
                .unwrap()
                .reference,
            d
        );
        for bad in [
            "alpine",
            "alpine:3",
            "127.0.0.1:5000/UPPER",
            "127.0.0.1:5000/../x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upload_ranges() {
        assert_eq!(received_through("0-1048575"), Some(1_048_575));
        assert_eq!(received_through(" 0-0 "), Some(0));
        assert_eq!(received_through("bytes"), None);
    }

    #[test]
    fn bearer_challenges_and_basic_credentials() {
        let c = bearer_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:demo:pull,push""#).unwrap();
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["scope"], "repository:demo:pull,push");
        assert!(bearer_challenge("Basic realm=x").is_none());
        assert_eq!(base64("user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64("a"), "YQ==");
        assert_eq!(base64("ab"), "YWI=");
    }
}
