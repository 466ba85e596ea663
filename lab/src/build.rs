//! `isolab build`: an image from a Containerfile, the way `docker build`
//! makes one — each `RUN` and `COPY` a new layer on the stack below it.
//!
//! ```text
//! FROM default            the base image's layers and config (or scratch)
//! RUN  cmd                the lab's own runtime runs `/bin/sh -c cmd` on the
//!                         current layers; its overlay upper dir becomes a
//!                         layer (whiteouts → .wh. files, opaque dirs →
//!                         .wh..wh..opq, as the OCI layer format says)
//! COPY src... dst         files from the build context, as a layer
//! ENV ARG WORKDIR USER CMD ENTRYPOINT EXPOSE LABEL    config only
//! ```
//!
//! A layer-making step is cached under a key of the layers below it, the
//! instruction (after `ARG`/`ENV` substitution) and, for `COPY`, the
//! content of what it copies; `--no-cache` ignores the cache. Context
//! files matching `.dockerignore` are never copied. Anything else — a
//! `COPY --from`, `ADD` of a URL, `HEALTHCHECK`, `ONBUILD` … — is refused
//! by name, before any step runs.
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use isolab_runtime::image::{Image, ImageConfig};
use sha2::{Digest, Sha256};

use crate::home::Home;

/// One instruction, as written (continuations joined).
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub line: usize,
    pub op: String,
    pub args: String,
}

/// Parses a Containerfile: comments, blank lines, `\` continuations.
pub fn parse(text: &str) -> Result<Vec<Instruction>> {
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if pending.is_empty() {
            start = i + 1;
        }
        if let Some(body) = line.strip_suffix('\\') {
            pending.push_str(body);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let (op, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((pending.as_str(), ""));
        out.push(Instruction {
            line: start,
            op: op.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
        pending.clear();
    }
    if !pending.is_empty() {
        bail!("line {start}: the Containerfile ends inside a continued line: remove the last `\\`");
    }
    const KNOWN: &[&str] = &[
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "CMD",
        "ENTRYPOINT",
        "EXPOSE",
        "LABEL",
    ];
    for i in &out {
        if !KNOWN.contains(&i.op.as_str()) {
            bail!(
                "line {}: {} is not supported by isolab build: use {}",
                i.line,
                i.op,
                KNOWN.join(", ")
            );
        }
    }
    match out.first() {
        Some(i) if i.op == "FROM" => {}
        Some(i) if i.op == "ARG" => bail!(
            "line {}: ARG before FROM is not supported: put it after FROM",
            i.line
        ),
        _ => bail!("the Containerfile must start with FROM"),
    }
    if out.iter().skip(1).any(|i| i.op == "FROM") {
        bail!("multi-stage builds (a second FROM) are not supported: one stage per Containerfile");
    }
    Ok(out)
}

/// A JSON array (`["a", "b"]`) or, for a shell form, `/bin/sh -c TEXT`.
fn exec_form(args: &str) -> Vec<String> {
    if args.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(args) {
            return v;
        }
    }
    vec!["/bin/sh".into(), "-c".into(), args.into()]
}

/// `$VAR` and `${VAR}` from `vars`; unknown ones become empty, as in Docker.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let braced = it.peek() == Some(&'{');
        if braced {
            it.next();
        }
        let mut name = String::new();
        while let Some(&n) = it.peek() {
            if n.is_ascii_alphanumeric() || n == '_' {
                name.push(n);
                it.next();
            } else {
                break;
            }
        }
        if braced && it.peek() == Some(&'}') {
            it.next();
        }
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
        }
    }
    out
}

/// `KEY=VALUE ...` pairs (values may be quoted), or the old `KEY VALUE`.
fn pairs(args: &str) -> Vec<(String, String)> {
    if !args.contains('=') {
        if let Some((k, v)) = args.split_once(char::is_whitespace) {
            return vec![(k.to_owned(), v.trim().to_owned())];
        }
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut words = Vec::new();
    for c in args.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// A `.dockerignore` matcher: `*`, `?` and `**` over `/`-separated paths,
/// `!` re-includes, last match wins.
pub struct Ignore(Vec<(bool, String)>);

impl Ignore {
    pub fn load(context: &Path) -> Ignore {
        let text = fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
        Ignore(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| match l.strip_prefix('!') {
                    Some(p) => (false, p.trim_matches('/').to_owned()),
                    None => (true, l.trim_matches('/').to_owned()),
                })
                .collect(),
        )
    }

    pub fn ignored(&self, rel: &str) -> bool {
        let mut hit = false;
        for (ignore, pat) in &self.0 {
            // A pattern matches a path or any directory above it.
            let mut p = rel;
            loop {
                if glob(pat, p) {
                    hit = *ignore;
                    break;
                }
                match p.rsplit_once('/') {
                    Some((up, _)) => p = up,
                    None => break,
                }
            }
        }
        hit
    }
}

fn glob(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
                let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
                (0..=s.len()).any(|i| go(rest, &s[i..]))
            }
            (Some(b'*'), _) => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(&p[1..], &s[i..])),
            (Some(b'?'), Some(c)) if *c != b'/' => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pat.as_bytes(), s.as_bytes())
}

/// The overlay upper dir of a step as an OCI layer tar: overlayfs
/// whiteouts (0/0 character devices) become `.wh.NAME`, opaque
/// directories get `.wh..wh..opq`.
pub fn upper_to_layer(upper: &Path) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, dir: &Path) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root)?.to_path_buf();
            let m = fs::symlink_metadata(&p)?;
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() && m.rdev() == 0 {
                let name = format!(
                    ".wh.{}",
                    rel.file_name().unwrap_or_default().to_string_lossy()
                );
                let wh = rel.with_file_name(name);
                let mut h = tar::Header::new_ustar();
                h.set_size(0);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, &wh, std::io::empty())?;
                continue;
            }
            b.append_path_with_name(&p, &rel)?;
            if ft.is_dir() {
                let opaque = xattr_is_y(&p, c"trusted.overlay.opaque");
                if opaque {
                    let mut h = tar::Header::new_ustar();
                    h.set_size(0);
                    h.set_mode(0o644);
                    h.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut h, rel.join(".wh..wh..opq"), std::io::empty())?;
                }
                walk(b, root, &p)?;
            }
        }
        Ok(())
    }
    walk(&mut b, upper, upper)?;
    Ok(b.into_inner()?)
}

fn xattr_is_y(p: &Path, name: &std::ffi::CStr) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut v = [0u8; 4];
    // SAFETY: a NUL-terminated path and name, a 4-byte buffer.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    n == 1 && v[0] == b'y'
}

/// What a build reports.
pub struct Built {
    pub image: Image,
    /// (step, cached?) for each layer-making step.
    pub steps: Vec<(String, bool)>,
}

/// Builds `containerfile` with `context` as the build context, tagged `tag`.
pub fn build(
    home: &Home,
    context: &Path,
    containerfile: &Path,
    tag: &str,
    build_args: &[String],
    no_cache: bool,
) -> Result<Built> {
    isolab_runtime::image::check_name(tag)?;
    let text = fs::read_to_string(containerfile).with_context(|| {
        format!(
            "reading {}: pass the Containerfile with -f",
            containerfile.display()
        )
    })?;
    let steps = parse(&text)?;
    let ignore = Ignore::load(context);
    let store = home.store();
    let from = steps[0].args.split_whitespace().next().unwrap_or("");
    let (mut layers, mut config) = if from == "scratch" {
        (Vec::new(), ImageConfig::default())
    } else {
        let base = crate::images::open(home, from).with_context(|| format!("FROM {from}"))?;
        (base.layers, base.config)
    };
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let given: BTreeMap<String, String> = build_args
        .iter()
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let mut done = Vec::new();
    use isolab_runtime::image::History;
    let mut history = config.history.clone();
    if history.iter().filter(|e| !e.empty_layer).count() != layers.len() {
        // A base without a history that accounts for its layers.
        history = layers
            .iter()
            .map(|_| History {
                created_by: format!("FROM {from}"),
                empty_layer: false,
            })
            .collect();
    }
    for st in &steps[1..] {
        let mut vars = args.clone();
        for e in &config.env {
            if let Some((k, v)) = e.split_once('=') {
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
        let at = format!("line {} ({} {})", st.line, st.op, st.args);
        match st.op.as_str() {
            "ARG" => {
                let (k, v) = st.args.split_once('=').unwrap_or((st.args.as_str(), ""));
                let v = given.get(k).cloned().unwrap_or_else(|| v.to_owned());
                args.insert(k.to_owned(), v);
            }
            "ENV" => {
                for (k, v) in pairs(&substitute(&st.args, &vars)) {
                    config.env.retain(|e| !e.starts_with(&format!("{k}=")));
                    config.env.push(format!("{k}={v}"));
                }
            }
            "WORKDIR" => {
                let w = substitute(&st.args, &vars);
                config.cwd = if w.starts_with('/') {
                    w
                } else {
                    Path::new(&config.cwd).join(w).display().to_string()
                };
            }
            "USER" => config.user = substitute(&st.args, &vars),
            "CMD" => config.cmd = exec_form(&st.args),
            "ENTRYPOINT" => config.entrypoint = exec_form(&st.args),
            "EXPOSE" => {
                for p in substitute(&st.args, &vars).split_whitespace() {
                    let p = if p.contains('/') {
                        p.to_owned()
                    } else {
                        format!("{p}/tcp")
                    };
                    if !config.exposed_ports.contains(&p) {
                        config.exposed_ports.push(p);
                    }
                }
            }
            "LABEL" => {
                for (k, v) in pairs(&substitute(&st.args, &vars)) {
                    config.labels.insert(k, v);
                }
            }
            "RUN" | "COPY" | "ADD" => {
                let text = substitute(&st.args, &vars);
                let mut key = Sha256::new();
                key.update(serde_json::to_vec(&layers)?);
                key.update(st.op.as_bytes());
                key.update(text.as_bytes());
                if st.op == "RUN" {
                    // What RUN sees of the config changes its result.
                    key.update(serde_json::to_vec(&(
                        &config.env,
                        &config.cwd,
                        &config.user,
                    ))?);
                }
                let copy = if st.op == "RUN" {
                    None
                } else {
                    let c = copy_plan(context, &text, &config.cwd, &ignore)
                        .with_context(|| at.clone())?;
                    key.update(&c.digest);
                    Some(c)
                };
                let key = hex(&key.finalize());
                let cache = home.root().join("build-cache").join(&key);
                let cached = (!no_cache)
                    .then(|| fs::read_to_string(&cache).ok())
                    .flatten()
                    .map(|d| d.trim().to_owned())
                    .filter(|d| store.layer_dir(d).is_dir());
                let digest = match cached {
                    Some(d) => {
                        done.push((format!("{} {}", st.op, text), true));
                        d
                    }
                    None => {
                        let blob = match &copy {
                            Some(c) => c.layer()?,
                            None => run_step(
                                home,
                                &store.lower_dirs(&Image {
                                    name: tag.into(),
                                    layers: layers.clone(),
                                    config: config.clone(),
                                }),
                                &config,
                                &text,
                                &vars,
                            )
                            .with_context(|| at.clone())?,
                        };
                        let d = store.add_layer(&blob)?;
                        fs::create_dir_all(cache.parent().unwrap_or(home.root()))?;
                        fs::write(&cache, &d)?;
                        done.push((format!("{} {}", st.op, text), false));
                        d
                    }
                };
                layers.push(digest);
            }
            _ => unreachable!("parse refuses other instructions"),
        }
        history.push(History {
            created_by: format!("{} {}", st.op, st.args),
            empty_layer: !matches!(st.op.as_str(), "RUN" | "COPY" | "ADD"),
        });
    }
    config.history = history;
    let image = store.save_image(tag, layers, config)?;
    Ok(Built { image, steps: done })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs one `RUN` in the lab's own runtime on `lowers` and returns its
/// upper dir as a layer.
fn run_step(
    home: &Home,
    lowers: &[PathBuf],
    config: &ImageConfig,
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    use isolab_runtime::container::{self, Spec, Stdio};
    let id = format!("build-{}", crate::instances::new_id());
    let dir = home.root().join("build").join(&id);
    let _remove = crate::instances::RemoveOnDrop(dir.clone());
    let img = Image {
        name: "build".into(),
        layers: vec![],
        config: config.clone(),
    };
    let user = crate::images::resolve_user_in(lowers, &img, &config.user)?;
    let mut env = config.env.clone();
    for (k, v) in vars {
        if !env.iter().any(|e| e.starts_with(&format!("{k}="))) {
            env.push(format!("{k}={v}"));
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(crate::images::DEFAULT_PATH.into());
    }
    let (r, w) = nix::unistd::pipe()?;
    let spec = Spec {
        id: id.clone(),
        lower_dirs: lowers.to_vec(),
        instance_dir: dir.clone(),
        argv: exec_form(text),
        env,
        cwd: config.cwd.clone(),
        user,
        hostname: id.clone(),
        limits: crate::backend::bench_limits(),
        userns: false,
        seccomp: true,
        stdio: Stdio::Into(w),
        volumes: vec![],
        network: container::Network::None,
        namespaces: Default::default(),
        cgroup: home.cgroup_name(&id),
        oci: None,
    };
    let layout = crate::backends::container::layout()?;
    let mut running = container::launch(spec, &layout)?;
    running.keep_instance_dir(true);
    // The step's output, as docker build shows it.
    let reader = std::thread::spawn(move || {
        let mut f = fs::File::from(r);
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut f, &mut s);
        s
    });
    let exit = running.wait()?;
    let output = reader.join().unwrap_or_default();
    eprint!("{output}");
    if exit.code != 0 {
        bail!(
            "RUN {text} exited with {}: fix the command (its output is above)",
            exit.code
        );
    }
    upper_to_layer(&dir.join("upper"))
}

/// What a `COPY` copies: (context file, path in the image) pairs, and a
/// digest of their contents and modes for the cache key.
struct CopyPlan {
    files: Vec<(PathBuf, String, fs::Metadata)>,
    chown: Option<(u32, u32)>,
    digest: Vec<u8>,
}

fn copy_plan(context: &Path, args: &str, cwd: &str, ignore: &Ignore) -> Result<CopyPlan> {
    let mut words: Vec<&str> = args.split_whitespace().collect();
    let mut chown = None;
    while let Some(w) = words.first().copied().filter(|w| w.starts_with("--")) {
        words.remove(0);
        if let Some(v) = w.strip_prefix("--chown=") {
            let (u, g) = v.split_once(':').unwrap_or((v, v));
            let (Ok(u), Ok(g)) = (u.parse::<u32>(), g.parse::<u32>()) else {
                bail!("--chown={v}: use numeric UID:GID in isolab build");
            };
            chown = Some((u, g));
        } else {
            bail!("COPY {w} is not supported: isolab build copies from the build context only (--chown=UID:GID is the one option)");
        }
    }
    if words.len() < 2 {
        bail!("COPY needs a source and a destination");
    }
    let dest = words.pop().unwrap_or_default();
    let dest = if dest.starts_with('/') {
        dest.to_owned()
    } else {
        Path::new(cwd).join(dest).display().to_string()
    };
    let ctx = fs::canonicalize(context)
        .with_context(|| format!("build context {}", context.display()))?;
    let mut files = Vec::new();
    let many = words.len() > 1 || dest.ends_with('/');
    for src in words {
        if src.contains("://") {
            bail!("ADD/COPY of a URL is not supported: download it into the build context");
        }
        let p = fs::canonicalize(ctx.join(src))
            .with_context(|| format!("{src} is not in the build context {}", ctx.display()))?;
        if !p.starts_with(&ctx) {
            bail!("{src} leads outside the build context: refused");
        }
        let rel = p.strip_prefix(&ctx)?.display().to_string();
        if !rel.is_empty() && ignore.ignored(&rel) {
            bail!("{src} is excluded by .dockerignore");
        }
        let m = fs::metadata(&p)?;
        if m.is_dir() {
            // A directory's contents go into dest.
            let mut todo = vec![p.clone()];
            while let Some(d) = todo.pop() {
                for e in fs::read_dir(&d)?.flatten() {
                    let ep = e.path();
                    let r = ep.strip_prefix(&ctx)?.display().to_string();
                    if ignore.ignored(&r) {
                        continue;
                    }
                    let em = fs::symlink_metadata(&ep)?;
                    let inside = ep.strip_prefix(&p)?.display().to_string();
                    let to = format!("{}/{inside}", dest.trim_end_matches('/'));
                    if em.is_dir() {
                        todo.push(ep.clone());
                    }
                    files.push((ep, to, em));
                }
            }
        } else {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let to = if many {
                format!("{}/{name}", dest.trim_end_matches('/'))
            } else {
                dest.clone()
            };
            files.push((p, to, m));
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    let mut h = Sha256::new();
    for (p, to, m) in &files {
        h.update(to.as_bytes());
        h.update(m.permissions().mode().to_le_bytes());
        if m.is_file() {
            h.update(fs::read(p)?);
        } else if m.file_type().is_symlink() {
            h.update(fs::read_link(p)?.as_os_str().as_encoded_bytes());
        }
    }
    h.update(format!("{chown:?}").as_bytes());
    Ok(CopyPlan {
        files,
        chown,
        digest: h.finalize().to_vec(),
    })
}

impl CopyPlan {
    /// The layer: parent directories, then each file with its mode.
    fn layer(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        let mut dirs = std::collections::BTreeSet::new();
        for (_, to, _) in &self.files {
            let mut p = Path::new(to.trim_start_matches('/')).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(d.to_path_buf());
                p = d.parent();
            }
        }
        let (uid, gid) = self.chown.unwrap_or((0, 0));
        for d in &dirs {
            if self
                .files
                .iter()
                .any(|(_, to, m)| m.is_dir() && Path::new(to.trim_start_matches('/')) == d)
            {
                continue;
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, d, std::io::empty())?;
        }
        for (p, to, m) in &self.files {
            let mut h = tar::Header::new_ustar();
            h.set_metadata(m);
            h.set_uid(u64::from(uid));
            h.set_gid(u64::from(gid));
            h.set_mtime(0);
            let rel = to.trim_start_matches('/');
            if m.file_type().is_symlink() {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, rel, fs::read_link(p)?)?;
            } else if m.is_dir() {
                b.append_data(&mut h, rel, std::io::empty())?;
            } else {
                b.append_data(&mut h, rel, fs::File::open(p)?)?;
            }
        }
        Ok(b.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerfiles_parse_and_refuse_what_is_not_supported() {
        let s = parse("# c\nFROM default\nRUN echo a \\\n  && echo b\nenv A=1\n").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].args, "echo a  && echo b");
        assert_eq!(s[2].op, "ENV");
        let e = parse("FROM x\nHEALTHCHECK CMD true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: HEALTHCHECK is not supported"), "{e}");
        assert!(parse("RUN x\n")
            .unwrap_err()
            .to_string()
            .contains("must start with FROM"));
        assert!(parse("FROM a\nFROM b\n")
            .unwrap_err()
            .to_string()
            .contains("multi-stage"));
    }

    #[test]
    fn substitution_forms_and_pairs() {
        let v: BTreeMap<String, String> = [("A".into(), "1".into())].into_iter().collect();
        assert_eq!(substitute("x$A ${A}y $B.", &v), "x1 1y .");
        assert_eq!(
            pairs("A=1 B=\"two words\""),
            [("A".into(), "1".into()), ("B".into(), "two words".into())]
        );
        assert_eq!(pairs("A 1 2"), [("A".into(), "1 2".into())]);
        assert_eq!(exec_form("[\"/x\", \"y\"]"), ["/x", "y"]);
        assert_eq!(exec_form("echo hi"), ["/bin/sh", "-c", "echo hi"]);
    }

    #[test]
    fn dockerignore_globs() {
        let i = Ignore(vec![
            (true, "*.log".into()),
            (true, "build".into()),
            (true, "**/secret".into()),
            (false, "keep.log".into()),
        ]);
        assert!(i.ignored("a.log"));
        assert!(!i.ignored("keep.log"));
        assert!(i.ignored("build/x/y"));
        assert!(i.ignored("deep/down/secret"));
        assert!(!i.ignored("src/a.rs"));
        assert!(!i.ignored("dir/a.log"), "`*` stays within one path part");
    }
}
