//! Which cgroup layout this host has, read from `/proc/self/mountinfo`.
//!
//! * `v2` — one cgroup2 mount at `/sys/fs/cgroup` with every controller.
//! * `v1` — one cgroup (v1) mount per controller, no cgroup2.
//! * `hybrid` — v1 controllers plus a cgroup2 mount (usually
//!   `/sys/fs/cgroup/unified`) holding few or no controllers. This is the
//!   layout crun 1.8 refuses.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// The host's cgroup mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    V1,
    V2,
    Hybrid,
    None,
}

impl CgroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::V1 => "v1",
            CgroupMode::V2 => "v2",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::None => "none",
        }
    }
}

/// What is mounted where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupLayout {
    pub mode: CgroupMode,
    /// v1 controller → its mount point (`memory` → `/sys/fs/cgroup/memory`).
    pub v1: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point, if any.
    pub v2_mount: Option<PathBuf>,
    /// Controllers available in the cgroup2 root (`cgroup.controllers`).
    pub v2_controllers: Vec<String>,
}

/// Unescapes the octal escapes mountinfo uses for spaces and friends.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text into a layout (v2 controllers are filled by
/// [`CgroupLayout::detect`], which can read the filesystem).
pub fn parse_mountinfo(text: &str) -> CgroupLayout {
    let mut v1 = BTreeMap::new();
    let mut v2_mount = None;
    for line in text.lines() {
        // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rfields: Vec<&str> = right.split(' ').collect();
        if fields.len() < 5 || rfields.len() < 3 {
            continue;
        }
        let mount_point = PathBuf::from(unescape(fields[4]));
        match rfields[0] {
            "cgroup2" if v2_mount.is_none() => v2_mount = Some(mount_point),
            "cgroup" => {
                for opt in rfields[2].split(',') {
                    let ctrl = match opt {
                        "rw" | "ro" | "relatime" | "noatime" | "nosuid" | "nodev" | "noexec"
                        | "clone_children" | "xattr" => continue,
                        o if o.starts_with("release_agent=") => continue,
                        o if o.starts_with("name=") => o,
                        o => o,
                    };
                    v1.entry(ctrl.to_owned())
                        .or_insert_with(|| mount_point.clone());
                }
            }
            _ => {}
        }
    }
    let real_v1 = v1.keys().any(|k| !k.starts_with("name="));
    let mode = match (real_v1, &v2_mount) {
        (true, Some(_)) => CgroupMode::Hybrid,
        (true, None) => CgroupMode::V1,
        (false, Some(_)) => CgroupMode::V2,
        (false, None) => CgroupMode::None,
    };
    CgroupLayout {
        mode,
        v1,
        v2_mount,
        v2_controllers: Vec::new(),
    }
}

impl CgroupLayout {
    /// Reads this process's mount table and the cgroup2 root's controllers.
    pub fn detect() -> std::io::Result<CgroupLayout> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut layout = parse_mountinfo(&text);
        if let Some(m) = &layout.v2_mount {
            if let Ok(c) = std::fs::read_to_string(m.join("cgroup.controllers")) {
                layout.v2_controllers = c.split_whitespace().map(str::to_owned).collect();
            }
        }
        Ok(layout)
    }

    /// Controllers usable for resource limits, whichever version holds them.
    pub fn controllers(&self) -> Vec<String> {
        match self.mode {
            CgroupMode::V2 => self.v2_controllers.clone(),
            _ => self
                .v1
                .keys()
                .filter(|k| !k.starts_with("name="))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
32 25 0:29 / /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
";

    #[test]
    fn hybrid_layout() {
        let l = parse_mountinfo(HYBRID);
        assert_eq!(l.mode, CgroupMode::Hybrid);
        assert_eq!(
            l.v2_mount.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(l.v1["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(l.v1["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(l.controllers(), vec!["cpu", "cpuacct", "memory", "pids"]);
    }

    #[test]
    fn pure_v1_and_v2_and_none() {
        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_mountinfo(&v1).mode, CgroupMode::V1);
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let l = parse_mountinfo(v2);
        assert_eq!(l.mode, CgroupMode::V2);
        assert!(l.v1.is_empty());
        assert_eq!(parse_mountinfo("").mode, CgroupMode::None);
        // Only a named v1 hierarchy (systemd) plus cgroup2 is still v2.
        let named: String = format!("{v2}{}\n", HYBRID.lines().nth(2).unwrap());
        assert_eq!(parse_mountinfo(&named).mode, CgroupMode::V2);
    }

    #[test]
    fn escaped_mount_points() {
        let t = "1 0 0:1 / /a\\040b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(t).v2_mount, Some(PathBuf::from("/a b")));
    }
}
