//! Isolation probes: questions the agent asks from inside an instance.
//!
//! Each probe returns a value, a verdict (isolated / exposed / n/a) and a
//! one-line reason the book uses. Facts about the host that an instance
//! cannot see (its hostname, kernel, boot id, memory, CPUs, uptime) are
//! passed in as parameters by the harness (`host_*`), so the comparison is
//! made inside.
//!
//! No probe harms the host: anything that could change state is asked in
//! a way that fails after the permission check (an invalid argument), or
//! is done only inside the instance's own namespaces and undone at once,
//! or is reported as "would be allowed" without doing it.
use std::collections::BTreeMap;

mod kit;
mod sections;
use kit::*;
pub use kit::{reachable_syscalls, Probe, Verdict, MAX_SYSCALL};
use sections::*;

/// The probe sections, in the order the matrix lists them.
const SECTIONS: &[fn(&Facts, &mut Vec<Probe>)] = &[
    processes,
    identity,
    mounts_and_network,
    host_totals,
    kernel_info,
    capabilities,
    device_nodes,
    kernel_surface,
    kernel_knobs,
    devices,
    shared_hardware,
    surface,
    terminal_and_descriptors,
];

/// Runs every probe. `host` holds the harness's `host_*` facts.
pub fn run_all(host: &BTreeMap<String, String>) -> Vec<Probe> {
    let f = Facts {
        host,
        shared_kernel: shares_host_kernel(host),
        status: read("/proc/self/status").unwrap_or_default(),
    };
    let mut out = Vec::new();
    for section in SECTIONS {
        section(&f, &mut out);
    }
    if (host.contains_key("host_boot_id") || host.contains_key("host_kernel")) && !f.shared_kernel {
        judge_in_own_kernel(&mut out);
    }
    out
}

/// Probes whose answer is the hardware's, whatever kernel asks.
const HARDWARE: &[&str] = &["cpu_vulnerabilities"];

/// In a VM (or under gVisor's Sentry) the agent asks its own kernel: a
/// mount, a module, a key, a device node or a process list it reaches
/// belongs to that kernel, not the host's. What it could do there is no exposure of the host; only
/// what the hardware answers (the shared CPU) still is.
fn judge_in_own_kernel(probes: &mut [Probe]) {
    for p in probes.iter_mut() {
        if p.verdict == Verdict::Exposed && !HARDWARE.contains(&p.name.as_str()) {
            p.verdict = Verdict::Isolated;
            p.reason = format!("the VM's own kernel answers, not the host's ({})", p.reason);
        }
    }
}

/// The host facts the harness passes as `host_*` parameters.
pub fn host_facts() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(v) = read("/proc/sys/kernel/hostname") {
        m.insert("host_hostname".into(), v);
    }
    if let Some(v) = read("/proc/sys/kernel/osrelease") {
        m.insert("host_kernel".into(), v);
    }
    if let Some(v) = read("/proc/sys/kernel/random/boot_id") {
        m.insert("host_boot_id".into(), v);
    }
    if let Some(v) = meminfo_total_kib() {
        m.insert("host_mem_kib".into(), v.to_string());
    }
    m.insert("host_cpus".into(), cpu_count().to_string());
    if let Some(ns) = netns_id() {
        m.insert("host_netns".into(), ns);
    }
    if let Ok(st) = nix_stat_root() {
        m.insert("host_root_dev".into(), st);
    }
    if let Some(v) =
        read("/proc/uptime").and_then(|u| u.split_whitespace().next().map(str::to_owned))
    {
        m.insert("host_uptime".into(), v);
    }
    m
}

/// This process's network namespace, as `net:[inode]`.
pub fn netns_id() -> Option<String> {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_its_own_kernel_only_the_hardware_stays_exposed() {
        let mut ps = vec![
            Probe {
                name: "mount".into(),
                value: "would be allowed".into(),
                verdict: Verdict::Exposed,
                reason: "r".into(),
            },
            Probe {
                name: "cpu_vulnerabilities".into(),
                value: "v".into(),
                verdict: Verdict::Exposed,
                reason: "r".into(),
            },
        ];
        judge_in_own_kernel(&mut ps);
        assert_eq!(ps[0].verdict, Verdict::Isolated);
        assert!(ps[0].reason.contains("own kernel"));
        assert_eq!(ps[1].verdict, Verdict::Exposed);
    }

    #[test]
    fn verdict_helpers() {
        assert_eq!(refused(libc::EPERM), Verdict::Isolated);
        assert_eq!(refused(libc::ENOSYS), Verdict::Isolated);
        assert_eq!(refused(libc::EINVAL), Verdict::Exposed);
        assert_eq!(refused(0), Verdict::Exposed);
        assert_eq!(errname(libc::EPERM), "EPERM");
    }

    #[test]
    fn on_the_host_itself_the_probes_say_exposed() {
        // Run outside any container: the host facts match, so the shared
        // kernel and host totals must be reported as exposed.
        let probes = run_all(&host_facts());
        assert!(probes.len() >= 25, "{} probes", probes.len());
        let get = |n: &str| {
            probes
                .iter()
                .find(|p| p.name == n)
                .unwrap_or_else(|| panic!("no probe {n}"))
        };
        // As root on the host, the clock could be set and most system
        // calls are reachable.
        assert_eq!(
            get("clock_settime").value,
            "reaches the kernel; CAP_SYS_TIME held"
        );
        assert_eq!(get("clock_settime").verdict, Verdict::Exposed);
        let (reachable, tried) = reachable_syscalls().expect("the counting child must not crash");
        assert!(reachable > 250 && tried > 400, "{reachable}/{tried}");
        assert_eq!(get("kernel_shared").verdict, Verdict::Exposed);
        assert_eq!(get("hostname").verdict, Verdict::Exposed);
        assert_eq!(get("meminfo_total").verdict, Verdict::Exposed);
        assert_ne!(get("own_pid_1").verdict, Verdict::Isolated);
        for p in &probes {
            assert!(!p.reason.is_empty(), "{}", p.name);
        }
        let names: std::collections::BTreeSet<&str> =
            probes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), probes.len(), "probe names are unique");
    }
}
