//! The lab's images and what is generated from them.
//!
//! One image feeds every backend: its layers are a container's overlay
//! lower dirs and a peer's bundle rootfs; merged, they become a Linux
//! guest's initramfs or the read-only ext4 disk a VM attaches. Generated
//! artefacts are content-addressed files in [`Home::cache_dir`], rebuilt
//! on demand and emptied by `prune`.
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use isolab_runtime::image::{self, Image, ImageConfig};
use isolab_runtime::initramfs::{self, Node};

use crate::home::Home;

/// Name of the image `isolab image build` makes and `run` uses by default.
pub const DEFAULT_IMAGE: &str = "default";

/// The `--disk` value that means "the image's layers, as ext4".
pub const IMAGE_DISK: &str = "image";

/// The static `isolab-agent`, embedded so the image the lab builds always
/// carries exactly the bytes this lab was built with.
pub static AGENT: &[u8] = include_bytes!(env!("ISOLAB_AGENT_PATH"));

/// Fingerprint of the embedded agent (see build.rs).
pub const AGENT_FINGERPRINT: &str = env!("ISOLAB_AGENT_FINGERPRINT");

/// The default image's environment.
pub const DEFAULT_PATH: &str = "PATH=/bin:/usr/bin:/sbin:/usr/sbin";

/// The agent's path inside the image.
pub const AGENT_PATH: &str = "/isolab-agent";

/// An entrypoint error, with the way out when the default image lacks
/// the program because it was built without busybox (before a static
/// busybox was installed, or on a host with none).
pub fn entrypoint_hint(home: &Home, img: &Image, error: String) -> String {
    let has_busybox = || {
        isolab_runtime::image::resolve_in_layers(&home.store().lower_dirs(img), "/bin/busybox")
            .is_ok()
    };
    if img.name != DEFAULT_IMAGE || !error.contains("does not exist") || has_busybox() {
        return error;
    }
    let host = crate::host::which("busybox").filter(|p| crate::host::is_static(p));
    match host {
        Some(_) => format!(
            "{error}; the default image was built before a static busybox was installed here: remove it with `isolab image rm {DEFAULT_IMAGE}` and the next run rebuilds it with busybox's shell and tools"
        ),
        None => format!(
            "{error}; the default image holds a shell and tools only when a static busybox is installed (apt-get install busybox-static), then `isolab image rm {DEFAULT_IMAGE}` to rebuild it"
        ),
    }
}

/// Builds (or rebuilds) the default image from the embedded agent and a
/// static busybox when one is installed.
pub fn build_default(home: &Home) -> Result<Image> {
    let busybox = crate::host::which("busybox").filter(|p| crate::host::is_static(p));
    let bb = match &busybox {
        Some(p) => Some(fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let layers = image::default_layers(AGENT, bb.as_deref())?;
    let img = home.store().import_blobs(
        DEFAULT_IMAGE,
        &layers,
        ImageConfig {
            // The agent is the image's command, so `run -- CMD` replaces
            // it, as `docker run IMAGE CMD` replaces an image's CMD.
            cmd: vec![AGENT_PATH.into()],
            env: vec![DEFAULT_PATH.into()],
            labels: [("isolab.agent".to_owned(), AGENT_FINGERPRINT.to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        },
    )?;
    Ok(img)
}

/// Opens an image; the default one is built on first use, and rebuilt when
/// it holds another agent than this lab's.
pub fn open(home: &Home, name: &str) -> Result<Image> {
    match home.store().open(name) {
        Ok(img)
            if name == DEFAULT_IMAGE
                && (img.config.labels.get("isolab.agent").map(String::as_str)
                    != Some(AGENT_FINGERPRINT)
                    || img.config.cmd != [AGENT_PATH]) =>
        {
            build_default(home)
        }
        Ok(img) => Ok(img),
        Err(image::ImageError::NotFound { .. }) if name == DEFAULT_IMAGE => build_default(home),
        Err(e) => Err(e.into()),
    }
}

/// Imports tar layers as an image whose command is `command` (replaced by
/// a command given to `run`).
pub fn import(home: &Home, name: &str, layers: &[PathBuf], command: &str) -> Result<Image> {
    Ok(home.store().import(
        name,
        layers,
        ImageConfig {
            cmd: vec![command.into()],
            env: vec![DEFAULT_PATH.into()],
            ..Default::default()
        },
    )?)
}

/// The default image's merged file tree (what the container sees).
pub fn default_tree(home: &Home) -> Result<BTreeMap<String, Node>> {
    let img = open(home, DEFAULT_IMAGE)?;
    Ok(initramfs::merged_tree(&home.store(), &img)?)
}

/// Writes `bytes` as the cache file `name` unless it is there (atomic: a
/// temp file renamed into place).
pub fn cache_put(home: &Home, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    fs::create_dir_all(home.cache_dir())
        .with_context(|| format!("creating {}", home.cache_dir().display()))?;
    let path = home.cache_file(name);
    if !path.exists() {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// The default image as an ext4 disk, cached by content: built once per
/// image, served read-only. Within one process (a bench asks for it at
/// every repetition) the answer is remembered while the file exists, since
/// finding it means reading and fingerprinting every layer.
pub fn image_disk(home: &Home) -> Result<PathBuf> {
    static KNOWN: std::sync::Mutex<Option<(Home, PathBuf)>> = std::sync::Mutex::new(None);
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((h, disk)) = known.as_ref() {
        if h == home && disk.is_file() {
            return Ok(disk.clone());
        }
    }
    let tree = default_tree(home)?;
    let fingerprint = fnv(&initramfs::write_cpio(&tree));
    fs::create_dir_all(home.cache_dir())?;
    let path = home.cache_file(&format!("disk-{fingerprint:08x}.ext4"));
    if !path.exists() {
        isolab_runtime::diskimage::write_ext4(&tree, &path, u64::from(fingerprint))?;
    }
    *known = Some((home.clone(), path.clone()));
    Ok(path)
}

/// Any image's layers as a read-only ext4 disk (cached by its layers): what
/// a Linux VM boots an image from.
pub fn image_disk_of(home: &Home, name: &str) -> Result<PathBuf> {
    if name == DEFAULT_IMAGE {
        return image_disk(home);
    }
    let img = open(home, name)?;
    let key = fnv(img.layers.join(",").as_bytes());
    fs::create_dir_all(home.cache_dir())?;
    let path = home.cache_file(&format!("disk-image-{key:08x}.ext4"));
    if !path.exists() {
        let tree = initramfs::merged_tree(&home.store(), &img)?;
        isolab_runtime::diskimage::write_ext4(&tree, &path, u64::from(key))?;
    }
    Ok(path)
}

/// Where the bare guest's ELF is written for QEMU (cached per build).
pub fn bare_guest_file(home: &Home) -> Result<PathBuf> {
    cache_put(
        home,
        &format!("isolab-guest-{:08x}.elf", fnv(isolab_microvm::BARE_GUEST)),
        isolab_microvm::BARE_GUEST,
    )
}

/// Empties the cache (guest ELF for QEMU, initramfs, image disks):
/// content-addressed artefacts, rebuilt on demand, of which old versions
/// pile up as the agent or the image changes. A VM using one keeps its
/// open file. Returns (files, bytes) removed.
pub fn prune_cache(home: &Home) -> (u64, u64) {
    let (mut files, mut bytes) = (0u64, 0u64);
    for e in fs::read_dir(home.cache_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        if e.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(e.path()).is_ok() {
            files += 1;
            bytes += len;
        }
    }
    (files, bytes)
}

/// FNV-1a, 32 bits: names cache files by content.
pub fn fnv(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, x| {
        (h ^ u32::from(*x)).wrapping_mul(0x0100_0193)
    })
}

/// The uid and gid `user` (an image's `USER` or `run -u`) names in
/// `img`: numbers as they are, names through the image's own
/// `/etc/passwd` and `/etc/group` (never the host's). Empty: root.
pub fn resolve_user(home: &Home, img: &Image, user: &str) -> Result<Option<(u32, u32)>> {
    resolve_user_in(&home.store().lower_dirs(img), img, user)
}

/// [`resolve_user`] over the lower dirs `layers` (top first).
pub fn resolve_user_in(layers: &[PathBuf], img: &Image, user: &str) -> Result<Option<(u32, u32)>> {
    if user.is_empty() {
        return Ok(None);
    }
    let read = |path: &str| -> String {
        image::resolve_in_layers(layers, path)
            .ok()
            .filter(|(_, m)| m.is_file() && m.len() <= 1 << 20)
            .and_then(|(p, _): (PathBuf, _)| fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read("/etc/passwd");
    // name:x:uid:gid:…
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && (f[0] == u || f[2] == u))
            .then(|| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))
            .flatten()
    });
    let (uid, primary) = match (u.parse::<u32>(), entry) {
        (_, Some((uid, gid))) => (uid, gid),
        (Ok(uid), None) => (uid, 0),
        (Err(_), None) => anyhow::bail!(
            "user {u:?} is not in image {}'s /etc/passwd: use a numeric uid or add the user to the image",
            img.name
        ),
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read("/etc/group")
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g).then(|| f[2].parse::<u32>().ok()).flatten()
                })
                .ok_or_else(|| anyhow::anyhow!(
                    "group {g:?} is not in image {}'s /etc/group: use a numeric gid or add the group to the image",
                    img.name
                ))?,
        },
    };
    Ok(Some((uid, gid)))
}

/// `isolab image ls`: repository, tag, id, layers, size on disk, and the
/// part of that size held in layers another image uses too (what sharing
/// layers saves).
pub fn list_table(home: &Home) -> String {
    use sha2::Digest;
    let store = home.store();
    let images: Vec<Image> = store
        .list()
        .iter()
        .filter_map(|n| store.open(n).ok())
        .collect();
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for img in &images {
        for l in img.layers.iter().collect::<std::collections::BTreeSet<_>>() {
            *users.entry(l.as_str()).or_default() += 1;
        }
    }
    let size = |d: &str| {
        fs::metadata(store.blob_path(d))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64);
    let ago = |name: &str| {
        let secs = store
            .stored_at(name)
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_secs());
        match secs {
            0..=59 => format!("{secs} seconds ago"),
            60..=3599 => format!("{} minutes ago", secs / 60),
            3600..=86399 => format!("{} hours ago", secs / 3600),
            _ => format!("{} days ago", secs / 86400),
        }
    };
    let mut out = format!(
        "{:<32} {:<12} {:<12} {:<16} {:>6} {:>10} {:>10}\n",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "LAYERS", "SIZE", "SHARED"
    );
    for img in &images {
        let (repo, tag) = image::split_tag(&img.name);
        let id = sha2::Sha256::digest(
            serde_json::to_vec(&(&img.layers, &img.config)).unwrap_or_default(),
        );
        let id: String = id.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let total: u64 = img.layers.iter().map(|l| size(l)).sum();
        let shared: u64 = img
            .layers
            .iter()
            .filter(|l| users.get(l.as_str()).copied().unwrap_or(0) > 1)
            .map(|l| size(l))
            .sum();
        out.push_str(&format!(
            "{:<32} {:<12} {:<12} {:<16} {:>6} {:>10} {:>10}\n",
            repo,
            tag.unwrap_or("<none>"),
            id,
            ago(&img.name),
            img.layers.len(),
            mib(total),
            mib(shared)
        ));
    }
    out
}

/// Where `isolab login` keeps credentials (mode 0600).
fn auth_file(home: &Home) -> PathBuf {
    home.root().join("auth.json")
}

fn read_auths(home: &Home) -> BTreeMap<String, (String, String)> {
    fs::read_to_string(auth_file(home))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn write_auths(home: &Home, auths: &BTreeMap<String, (String, String)>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = auth_file(home);
    fs::create_dir_all(home.root())?;
    let tmp = p.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(auths)?.as_bytes())?;
    drop(f);
    fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// How to reach `registry`: the flags, and the stored credentials.
pub fn registry_options(
    home: &Home,
    registry: &str,
    insecure: bool,
    ca: Option<PathBuf>,
) -> isolab_runtime::registry::Options {
    isolab_runtime::registry::Options {
        insecure,
        ca_file: ca,
        credentials: read_auths(home).remove(registry),
    }
}

/// `isolab login`: checks the credentials against the registry, then
/// stores them (0600).
pub fn login(
    home: &Home,
    registry: &str,
    user: &str,
    password: &str,
    insecure: bool,
    ca: Option<PathBuf>,
) -> Result<()> {
    let opts = isolab_runtime::registry::Options {
        insecure,
        ca_file: ca,
        credentials: Some((user.to_owned(), password.to_owned())),
    };
    isolab_runtime::registry::ping(registry, &opts)?;
    let mut auths = read_auths(home);
    auths.insert(registry.to_owned(), (user.to_owned(), password.to_owned()));
    write_auths(home, &auths)
}

/// `isolab logout`: forgets a registry's credentials.
pub fn logout(home: &Home, registry: &str) -> Result<bool> {
    let mut auths = read_auths(home);
    let had = auths.remove(registry).is_some();
    write_auths(home, &auths)?;
    Ok(had)
}

/// A progress display for layer transfers: one bar per layer on a
/// terminal, one line per finished layer otherwise.
pub fn layer_progress() -> impl FnMut(&str, u64, u64) {
    use std::io::IsTerminal;
    let multi = indicatif::MultiProgress::new();
    let tty = std::io::stderr().is_terminal();
    let mut bars: BTreeMap<String, indicatif::ProgressBar> = BTreeMap::new();
    move |layer: &str, done: u64, total: u64| {
        if total == 0 {
            if done == 1 {
                eprintln!("{layer}: mounted from another repository of the registry");
            } else {
                eprintln!("{layer}: already there");
            }
            return;
        }
        let bar = bars.entry(layer.to_owned()).or_insert_with(|| {
            let b = multi.add(indicatif::ProgressBar::new(total));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(layer.to_owned());
            b
        });
        bar.set_position(done);
        if done >= total && !bar.is_finished() {
            bar.finish();
            if !tty {
                eprintln!(
                    "{layer}: {:.1} MiB done",
                    total as f64 / (1u64 << 20) as f64
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_files_are_written_once_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let a = cache_put(&home, "a.bin", b"one").unwrap();
        let again = cache_put(&home, "a.bin", b"two").unwrap();
        assert_eq!(a, again);
        assert_eq!(
            fs::read(&a).unwrap(),
            b"one",
            "content-addressed: never rewritten"
        );
        assert_eq!(prune_cache(&home), (1, 3));
        assert!(!a.exists());
        assert_eq!(fnv(b""), 0x811c_9dc5);
    }
}
