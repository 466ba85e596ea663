//! The cgroup the harness starts a VM monitor in (`isolab-vmm` or QEMU).
//!
//! Firecracker's jailer puts each microVM in a cgroup of its own; so does
//! the lab, for both monitors alike: the cgroup is made before the spawn,
//! the monitor joins it between fork and exec (so everything it ever
//! allocates is charged there, KVM's kernel memory included), its memory
//! is limited to the guest's RAM plus [`OVERHEAD_BYTES`], and it is
//! removed once the monitor is reaped — or by `prune`, if isolab itself
//! was killed first, since it is named like an instance of this home.
use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;

use anyhow::{Context, Result};
use isolab_runtime::cgroups::{Cgroup, Join, Limits};

use crate::home::Home;

/// What a monitor may use beyond its guest's RAM: its own code and heap,
/// KVM's page tables and vCPU state, the disk bounce buffer (64 KiB),
/// QEMU's larger binary. Measured here (run 20261205T075004Z-0b93ac):
/// `isolab-vmm` ~2.5 MiB beyond the guest it touched, QEMU ~37 MiB in
/// all; the limit leaves room above both.
pub const OVERHEAD_BYTES: u64 = 96 << 20;

/// A monitor's cgroup: created now, removed on drop (after killing
/// whatever is left in it).
pub struct MonitorCgroup {
    cgroup: Cgroup,
    /// `tasks` (v1) or `cgroup.procs` (v2), opened before the spawn.
    procs: Vec<std::fs::File>,
}

impl MonitorCgroup {
    /// Makes the cgroup for instance `id` of `home`, limited to
    /// `guest_mib` MiB plus the overhead.
    pub fn create(home: &Home, id: &str, guest_mib: u64) -> Result<MonitorCgroup> {
        let limits = Limits {
            memory_bytes: Some((guest_mib << 20) + OVERHEAD_BYTES),
            pids: Some(256),
            cpus: None,
        };
        Self::with_limits(home, id, &limits)
    }

    /// Makes the cgroup for instance `id` of `home` with `limits` (a
    /// process sandbox without cgroups of its own, e.g. bubblewrap, gets
    /// the container's limits this way).
    pub fn with_limits(home: &Home, id: &str, limits: &Limits) -> Result<MonitorCgroup> {
        let layout = super::container::layout()?;
        let cgroup = Cgroup::create(&layout, &home.cgroup_name(id), limits)
            .context("making the instance's cgroup")?;
        // v1: the thread's `tasks` files, as the container runtime joins.
        // The child is one thread between fork and exec, so it is the whole
        // process, and a thread move does not take the kernel's
        // thread-group lock, whose first writer waits out an RCU grace
        // period (~12 ms a start here, through `cgroup.procs`). v2: its
        // `cgroup.procs` (the runtime's clone3 way does not fit a Command).
        let procs = match cgroup.join_handle()? {
            Join::SelfTasks(fds) => fds.into_iter().map(std::fs::File::from).collect(),
            Join::IntoCgroup(_) => cgroup
                .paths()
                .iter()
                .map(|d| {
                    let p = d.join("cgroup.procs");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .with_context(|| format!("opening {}", p.display()))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(MonitorCgroup { cgroup, procs })
    }

    /// Makes the spawned monitor join the cgroup before it execs.
    pub fn join_on_spawn(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fds: Vec<RawFd> = self.procs.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: runs in the forked child before exec; write(2) of a
        // constant to fds this process holds open.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// The cgroup's directories (one per v1 hierarchy, or the v2 one).
    pub fn paths(&self) -> Vec<std::path::PathBuf> {
        self.cgroup.paths()
    }

    /// The exact memory charged to the cgroup now (`memory.stat`, kernel
    /// memory included): read at a holding scenario's hold line, as a
    /// container's cgroup is.
    pub fn charged_bytes(&self) -> Option<u64> {
        self.cgroup.stats().memory_charged_bytes
    }

    /// Once the monitor is reaped: reads the cgroup once, removes it, and
    /// returns its peak memory charge — or the one sentence saying the
    /// monitor went over its limit, if the kernel's OOM killer acted.
    pub fn finish(self, guest_mib: u64) -> Result<Option<u64>> {
        let stats = self.cgroup.stats();
        drop(self);
        if stats.oom_kills.unwrap_or(0) > 0 {
            anyhow::bail!(
                "the monitor went over its memory limit ({guest_mib} MiB of guest RAM + {} MiB) and was killed",
                OVERHEAD_BYTES >> 20
            );
        }
        Ok(stats.memory_peak_bytes)
    }
}

impl Drop for MonitorCgroup {
    fn drop(&mut self) {
        self.cgroup.kill_all();
        self.cgroup.destroy();
    }
}

/// A name for a monitor instance that has no record: unique on this host,
/// even where a killed isolab left a cgroup behind and its pid came back.
pub fn unrecorded_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{prefix}-{}-{:x}-{n}",
        std::process::id(),
        crate::clock::monotonic_ns()
    )
}
