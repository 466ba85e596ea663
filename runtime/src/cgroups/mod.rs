//! cgroups: layout detection (v1, v2, hybrid) and, per instance, a
//! [`Cgroup`] that limits and measures it.
//!
//! # Joining without the RCU grace period
//!
//! Moving a task into a v1 cgroup by writing its pid to `cgroup.procs` (or
//! another task's pid to `tasks`) takes the global
//! `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace
//! period: 5–20 ms on this kind of host, more than a whole container start.
//! The kernel skips that lock in exactly one case: a thread moving *itself*
//! by writing `0` to `tasks` (see `cgroup_procs_write_start`). So the
//! parent opens each controller's `tasks` file (the write permission is
//! checked against the opener's credentials, so this also works from inside
//! a user namespace), and the child, still single-threaded, writes `0` to
//! each as its first act: tens of microseconds instead of milliseconds.
//! On v2 the child is born in its cgroup with `clone3(CLONE_INTO_CGROUP)`.
pub mod detect;

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use detect::{CgroupLayout, CgroupMode};
use serde::Serialize;

/// The parent cgroup under which every instance gets its own.
pub const PARENT: &str = "isolab";

/// Errors setting up, reading or removing an instance's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy (mode {0}): mount cgroup2 at /sys/fs/cgroup or the v1 memory/pids/cpu controllers")]
    NoHierarchy(&'static str),
    #[error("the {0} controller is not available: enable it (see `isolab doctor`)")]
    MissingController(String),
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("memory limit {0} bytes is too small for an instance to start: use at least 4 MiB (--memory 4M)")]
    MemoryTooSmall(u64),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Resource limits for an instance.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// CPU quota in cores (e.g. 0.5 = 50 ms per 100 ms).
    pub cpus: Option<f64>,
}

/// Memory and pid figures read from an instance's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct CgroupStats {
    /// The raw usage counter. On both versions it includes pages the kernel
    /// has pre-charged to per-CPU stocks (up to 64 pages per CPU), so it
    /// can read up to ~256 KiB per CPU high: see `memory_charged_bytes`.
    pub memory_current_bytes: Option<u64>,
    /// Exact charge from `memory.stat`: anon + file (+ kernel memory).
    #[serde(default)]
    pub memory_charged_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub pids_current: Option<u64>,
    pub oom_kills: Option<u64>,
}

/// The smallest memory limit the runtime accepts.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;

/// How the child joins its cgroup.
#[derive(Debug)]
pub enum Join {
    /// v1: write `0` to each of these `tasks` files.
    SelfTasks(Vec<OwnedFd>),
    /// v2: `clone3(CLONE_INTO_CGROUP)` with this directory fd.
    IntoCgroup(OwnedFd),
}

/// One instance's cgroup (all controllers).
#[derive(Debug)]
pub struct Cgroup {
    mode: CgroupMode,
    /// v1: controller dirs; v2: the one dir.
    dirs: Vec<(String, PathBuf)>,
}

const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

impl Cgroup {
    /// Creates `isolab/<name>` in every controller with `limits` applied.
    pub fn create(
        layout: &CgroupLayout,
        name: &str,
        limits: &Limits,
    ) -> Result<Cgroup, CgroupError> {
        if let Some(m) = limits.memory_bytes {
            if m < MIN_MEMORY_BYTES {
                return Err(CgroupError::MemoryTooSmall(m));
            }
        }
        let mut cg = Cgroup {
            mode: layout.mode,
            dirs: Vec::new(),
        };
        let res = match layout.mode {
            CgroupMode::V1 | CgroupMode::Hybrid => cg.create_v1(layout, name, limits),
            CgroupMode::V2 => cg.create_v2(layout, name, limits),
            CgroupMode::None => Err(CgroupError::NoHierarchy("none")),
        };
        if let Err(e) = res {
            cg.destroy();
            return Err(e);
        }
        Ok(cg)
    }

    fn create_v1(
        &mut self,
        layout: &CgroupLayout,
        name: &str,
        limits: &Limits,
    ) -> Result<(), CgroupError> {
        for ctrl in V1_CONTROLLERS {
            let mount = layout
                .v1
                .get(ctrl)
                .ok_or_else(|| CgroupError::MissingController(ctrl.into()))?;
            let dir = mount.join(PARENT).join(name);
            let parent = mount.join(PARENT);
            fs::create_dir_all(&parent).map_err(io_err(&parent))?;
            fs::create_dir(&dir).map_err(io_err(&dir))?;
            self.dirs.push((ctrl.to_owned(), dir));
        }
        if let Some(m) = limits.memory_bytes {
            self.write("memory", "memory.limit_in_bytes", &m.to_string())?;
        }
        if let Some(p) = limits.pids {
            self.write("pids", "pids.max", &p.to_string())?;
        }
        if let Some(c) = limits.cpus {
            self.write("cpu", "cpu.cfs_period_us", "100000")?;
            self.write(
                "cpu",
                "cpu.cfs_quota_us",
                &((c * 100_000.0) as u64).max(1000).to_string(),
            )?;
        }
        Ok(())
    }

    fn create_v2(
        &mut self,
        layout: &CgroupLayout,
        name: &str,
        limits: &Limits,
    ) -> Result<(), CgroupError> {
        let mount = layout
            .v2_mount
            .as_ref()
            .ok_or(CgroupError::NoHierarchy("v2"))?;
        let parent = mount.join(PARENT);
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        // Delegate the controllers we use down to isolab/ and its children.
        let wanted: Vec<&str> = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| layout.v2_controllers.iter().any(|x| x == c))
            .collect();
        let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
        if !enable.is_empty() {
            for d in [mount.clone(), parent.clone()] {
                let f = d.join("cgroup.subtree_control");
                fs::write(&f, enable.trim()).map_err(io_err(&f))?;
            }
        }
        // A nested name (an engine's container under the lab's parent for
        // it): the levels in between delegate the controllers too.
        let mut mid = parent.clone();
        let levels: Vec<&str> = name.split('/').collect();
        for level in &levels[..levels.len().saturating_sub(1)] {
            mid.push(level);
            if !enable.is_empty() {
                let f = mid.join("cgroup.subtree_control");
                fs::write(&f, enable.trim()).map_err(io_err(&f))?;
            }
        }
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        self.dirs.push(("unified".into(), dir));
        if let Some(m) = limits.memory_bytes {
            self.write_v2("memory.max", &m.to_string())?;
            // No swap: the limit must be a real limit, as on v1 without memsw.
            let _ = self.write_v2("memory.swap.max", "0");
        }
        if let Some(p) = limits.pids {
            self.write_v2("pids.max", &p.to_string())?;
        }
        if let Some(c) = limits.cpus {
            self.write_v2(
                "cpu.max",
                &format!("{} 100000", ((c * 100_000.0) as u64).max(1000)),
            )?;
        }
        Ok(())
    }

    fn dir(&self, ctrl: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c == ctrl || c == "unified")
            .map(|(_, d)| d.as_path())
    }

    fn write(&self, ctrl: &str, file: &str, value: &str) -> Result<(), CgroupError> {
        let p = self
            .dir(ctrl)
            .ok_or_else(|| CgroupError::MissingController(ctrl.into()))?
            .join(file);
        fs::write(&p, value).map_err(io_err(&p))
    }

    fn write_v2(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        self.write("unified", file, value)
    }

    fn read_u64(&self, ctrl: &str, file: &str) -> Option<u64> {
        let t = fs::read_to_string(self.dir(ctrl)?.join(file)).ok()?;
        let t = t.trim();
        if t == "max" {
            return Some(u64::MAX);
        }
        t.parse().ok()
    }

    /// Opens what the child needs to join this cgroup.
    pub fn join_handle(&self) -> Result<Join, CgroupError> {
        match self.mode {
            CgroupMode::V2 => {
                let d = &self.dirs[0].1;
                let f = fs::File::open(d).map_err(io_err(d))?;
                Ok(Join::IntoCgroup(f.into()))
            }
            _ => {
                let mut fds = Vec::new();
                for (_, d) in &self.dirs {
                    let p = d.join("tasks");
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .map_err(io_err(&p))?;
                    fds.push(f.into());
                }
                Ok(Join::SelfTasks(fds))
            }
        }
    }

    /// Reads memory usage, peak, pids and OOM kills.
    pub fn stats(&self) -> CgroupStats {
        match self.mode {
            CgroupMode::V2 => CgroupStats {
                memory_current_bytes: self.read_u64("memory", "memory.current"),
                memory_charged_bytes: self
                    .dir("memory")
                    .and_then(|d| charged_bytes(d, CgroupMode::V2)),
                memory_peak_bytes: self.read_u64("memory", "memory.peak"),
                pids_current: self.read_u64("pids", "pids.current"),
                oom_kills: self
                    .dir("memory")
                    .and_then(|d| fs::read_to_string(d.join("memory.events")).ok())
                    .and_then(|t| keyed(&t, "oom_kill")),
            },
            _ => CgroupStats {
                memory_current_bytes: self.read_u64("memory", "memory.usage_in_bytes"),
                memory_charged_bytes: self
                    .dir("memory")
                    .and_then(|d| charged_bytes(d, CgroupMode::V1)),
                memory_peak_bytes: self.read_u64("memory", "memory.max_usage_in_bytes"),
                pids_current: self.read_u64("pids", "pids.current"),
                oom_kills: self
                    .dir("memory")
                    .and_then(|d| fs::read_to_string(d.join("memory.oom_control")).ok())
                    .and_then(|t| keyed(&t, "oom_kill")),
            },
        }
    }

    /// Kills every task in the cgroup, including ones forked while the
    /// kill is under way. On cgroup v2 `cgroup.kill` (Linux 5.14) does it
    /// atomically; otherwise (and after it) the tasks are listed and
    /// killed until none is left: a task forked between a listing and
    /// its kill is in the next listing, and a killed task forks no more,
    /// so a fork storm cannot outrun it and leave the cgroup undeletable.
    pub fn kill_all(&self) {
        for (_, d) in &self.dirs {
            let _ = fs::write(d.join("cgroup.kill"), "1");
        }
        for round in 0..1000 {
            let mut any = false;
            for (_, d) in &self.dirs {
                let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    any = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if !any {
                return;
            }
            // Killed tasks leave the cgroup once they are reaped.
            std::thread::sleep(std::time::Duration::from_micros(200 * (round.min(50) + 1)));
        }
    }

    /// Removes the cgroup dirs (they must be empty of tasks). Retries
    /// briefly: the last task's exit is asynchronous with its reaping.
    pub fn destroy(&mut self) {
        for (_, d) in self.dirs.drain(..) {
            remove_dir_retry(&d);
        }
    }

    /// The instance's cgroup dirs, for state files and `prune`.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    pub fn mode(&self) -> CgroupMode {
        self.mode
    }
}

fn remove_dir_retry(d: &Path) {
    for i in 0..200 {
        match fs::remove_dir(d) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_micros(50 * (i + 1).min(20))),
        }
    }
    tracing::warn!(path = %d.display(), "cgroup still busy; `isolab prune` will remove it");
}

/// The lab's parent dirs, one per hierarchy.
fn parents(layout: &CgroupLayout) -> Vec<PathBuf> {
    let mut parents: Vec<PathBuf> = layout
        .v1
        .iter()
        .filter(|(k, _)| !k.starts_with("name="))
        .map(|(_, m)| m.join(PARENT))
        .collect();
    if let Some(m) = &layout.v2_mount {
        parents.push(m.join(PARENT));
    }
    parents.sort();
    parents.dedup();
    parents
}

/// Kills every process in the cgroup dir and removes it; true when gone.
fn kill_and_remove(dir: &Path) -> bool {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs
        .split_whitespace()
        .filter_map(|x| x.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    remove_dir_retry(dir);
    !dir.exists()
}

/// Kills what is left in the instance cgroup `name` (in every hierarchy)
/// and removes it: `stop` and `rm` of an instance whose owner is gone act
/// on its cgroup, not on a remembered pid. Returns whether one existed.
pub fn kill_named(layout: &CgroupLayout, name: &str) -> bool {
    let mut found = false;
    for p in parents(layout) {
        let d = p.join(name);
        if d.is_dir() {
            found = true;
            kill_and_remove(&d);
        }
    }
    found
}

/// The processes in the instance cgroup `name` (every hierarchy, no
/// duplicates): `isolab-oci kill --all`.
pub fn named_pids(layout: &CgroupLayout, name: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = parents(layout)
        .iter()
        .flat_map(|p| {
            fs::read_to_string(p.join(name).join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Removes every instance cgroup `<tag>-*` under `isolab/` whose name is
/// not in `keep` (for `prune` in the home whose tag that is). Returns what
/// was removed.
pub fn prune(layout: &CgroupLayout, tag: &str, keep: &[String]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for p in parents(layout) {
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name
                .strip_prefix(tag)
                .is_some_and(|rest| rest.starts_with('-'));
            if !e.path().is_dir() || !ours || keep.contains(&name) {
                continue;
            }
            if kill_and_remove(&e.path()) {
                removed.push(e.path());
            }
        }
    }
    removed
}

/// The exact memory charged to a cgroup (its memory controller dir), from
/// `memory.stat`: v1 `rss + cache + mapped kernel memory`
/// (`memory.kmem.usage_in_bytes`, charged without per-CPU stock); v2
/// `anon + file + kernel`.
pub fn charged_bytes(dir: &Path, mode: CgroupMode) -> Option<u64> {
    let stat = fs::read_to_string(dir.join("memory.stat")).ok()?;
    charged_from_stat(&stat, mode, || {
        fs::read_to_string(dir.join("memory.kmem.usage_in_bytes"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    })
}

/// Pure part of [`charged_bytes`].
pub fn charged_from_stat(
    stat: &str,
    mode: CgroupMode,
    kmem: impl FnOnce() -> Option<u64>,
) -> Option<u64> {
    match mode {
        CgroupMode::V2 => {
            let kernel = keyed(stat, "kernel").or_else(|| {
                Some(
                    ["kernel_stack", "pagetables", "percpu", "sock", "slab"]
                        .iter()
                        .filter_map(|k| keyed(stat, k))
                        .sum(),
                )
            });
            Some(keyed(stat, "anon")? + keyed(stat, "file")? + kernel.unwrap_or(0))
        }
        // v1's rss and cache are the cgroup's own pages; total_* add its
        // descendants' (podman and docker hang their container's cgroup
        // under the lab's), like v2's counters and kmem's usage. For a
        // cgroup without children the two are the same.
        _ => Some(
            keyed(stat, "total_rss").or_else(|| keyed(stat, "rss"))?
                + keyed(stat, "total_cache").or_else(|| keyed(stat, "cache"))?
                + kmem().unwrap_or(0),
        ),
    }
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files() {
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(
            keyed("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n", "oom"),
            Some(1)
        );
        assert_eq!(keyed("", "oom_kill"), None);
    }

    #[test]
    fn charged_memory_from_stat() {
        let v1 = "cache 4096\nrss 86016\nrss_huge 0\ntotal_rss 86016\n";
        assert_eq!(
            charged_from_stat(v1, CgroupMode::V1, || Some(139264)),
            Some(4096 + 86016 + 139264)
        );
        let v2 = "anon 81920\nfile 4096\nkernel 120000\nkernel_stack 16384\n";
        assert_eq!(
            charged_from_stat(v2, CgroupMode::V2, || None),
            Some(81920 + 4096 + 120000)
        );
        let v2_old = "anon 1\nfile 2\nkernel_stack 3\nslab 4\n";
        assert_eq!(charged_from_stat(v2_old, CgroupMode::V2, || None), Some(10));
        assert_eq!(charged_from_stat("", CgroupMode::V1, || None), None);
        // A v1 parent whose pages are in a child cgroup (podman, docker):
        // its own counters are near zero, the totals hold the child's.
        let parent = "cache 0\nrss 0\ntotal_cache 8192\ntotal_rss 430080\n";
        assert_eq!(
            charged_from_stat(parent, CgroupMode::V1, || Some(1000)),
            Some(8192 + 430080 + 1000)
        );
    }

    #[test]
    fn too_small_memory_is_refused_before_anything_is_created() {
        let layout = CgroupLayout {
            mode: CgroupMode::V1,
            v1: Default::default(),
            v2_mount: None,
            v2_controllers: vec![],
        };
        let e = Cgroup::create(
            &layout,
            "x",
            &Limits {
                memory_bytes: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, CgroupError::MemoryTooSmall(_)), "{e}");
        assert!(e.to_string().contains("at least 4 MiB"));
    }
}
