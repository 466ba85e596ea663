//! The in-process breakdown: what each piece of a start costs inside one
//! process, measured with criterion (`cargo bench --bench parts`, as root,
//! with `/dev/kvm` for the KVM group).
//!
//! These are *library-call* figures, labelled as such: the headline ratios
//! in the README and the book are whole-process ones (every repetition of
//! every backend a fresh process spawned by the harness). A figure here
//! says where the time of a start goes, not how two runtimes compare.
//!
//! * `namespace/<kind>`: fork, `unshare` of one namespace kind, exit,
//!   reap; `namespace/none` is the fork/exit/reap alone, to subtract.
//! * `cgroup/<v1|v2>`: create an instance cgroup (memory, pids, cpu) with
//!   a memory limit, a forked child joins it, reap, remove.
//! * `overlay/mount`: mount and unmount an overlay of one lower layer.
//! * `seccomp/load`: a forked child installs the default profile (fork
//!   and reap included; compare `namespace/none`).
//! * `kvm/create_vm`: `KVM_CREATE_VM` and its release.
//! * `kvm/set_user_memory_region`: register 64 MiB of guest RAM, then
//!   delete the slot again.
//! * `kvm/exit_round_trip`: one port write by the no-OS guest, to the
//!   monitor and back (the `exit-cost` scenario's loop, timed between its
//!   own marks).
//! * `virtio/blk_read_64k`: one 64 KiB virtio-blk read the guest drives
//!   (notify, the device's work, polling for the used entry).
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use isolab_microvm::vmm::{self, DiskConfig, VmConfig};

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn skip(group: &str, why: &str) {
    eprintln!("parts: {group} skipped: {why}");
}

/// Forks a child that runs `f` and exits with its result; reaps it.
/// `f` runs between fork and exit only: no allocation, no locks.
fn in_child(f: impl Fn() -> bool) {
    // SAFETY: the child calls only async-signal-safe code (`f` is
    // syscalls) and _exit; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            libc::_exit(if f() { 0 } else { 1 });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert_eq!(status, 0, "the child's step failed");
    }
}

fn namespaces(c: &mut Criterion) {
    if !root() {
        return skip("namespace", "needs root");
    }
    let mut g = c.benchmark_group("namespace");
    let kinds = [
        ("none", 0),
        ("mnt", libc::CLONE_NEWNS),
        ("uts", libc::CLONE_NEWUTS),
        ("ipc", libc::CLONE_NEWIPC),
        ("pid", libc::CLONE_NEWPID),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("user", libc::CLONE_NEWUSER),
    ];
    for (name, flag) in kinds {
        let step = move || {
            // SAFETY: unshare with a flag, in the forked child.
            flag == 0 || unsafe { libc::unshare(flag) } == 0
        };
        g.bench_function(name, |b| b.iter(|| in_child(step)));
    }
    g.finish();
}

fn cgroups(c: &mut Criterion) {
    use isolab_runtime::cgroups::{Cgroup, CgroupLayout, CgroupMode, Join, Limits};
    if !root() {
        return skip("cgroup", "needs root");
    }
    let layout = CgroupLayout::detect().expect("reading the cgroup layout");
    let name = match layout.mode {
        CgroupMode::V2 => "v2",
        CgroupMode::V1 | CgroupMode::Hybrid => "v1",
        CgroupMode::None => return skip("cgroup", "no cgroup hierarchy"),
    };
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        pids: Some(64),
        cpus: None,
    };
    let mut n = 0u64;
    let mut g = c.benchmark_group("cgroup");
    g.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            let mut cg = Cgroup::create(
                &layout,
                &format!("bench-parts-{}-{n}", std::process::id()),
                &limits,
            )
            .expect("creating a cgroup");
            // v1: write the thread into each `tasks`; v2: its cgroup.procs.
            let fds: Vec<std::os::fd::OwnedFd> = match cg.join_handle().expect("join handle") {
                Join::SelfTasks(fds) => fds,
                Join::IntoCgroup(_) => cg
                    .paths()
                    .iter()
                    .map(|d| {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(d.join("cgroup.procs"))
                            .unwrap()
                            .into()
                    })
                    .collect(),
            };
            let raw: Vec<i32> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
            in_child(|| {
                raw.iter().all(|fd| {
                    // SAFETY: write(2) of a constant to an open fd, in the child.
                    unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) == 1 }
                })
            });
            drop(fds);
            cg.destroy();
        })
    });
    g.finish();
}

fn overlay(c: &mut Criterion) {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    if !root() {
        return skip("overlay", "needs root");
    }
    // A mount namespace of the bench's own: nothing reaches the host's.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("making mounts private");
    let dir = tempfile::tempdir().unwrap();
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    std::fs::write(dir.path().join("lower/file"), b"x").unwrap();
    let p = |d: &str| dir.path().join(d);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("lower").display(),
        p("upper").display(),
        p("work").display()
    );
    let mut g = c.benchmark_group("overlay");
    g.bench_function("mount", |b| {
        b.iter(|| {
            mount(
                Some("overlay"),
                &p("merged"),
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
            .expect("mounting the overlay");
            umount2(&p("merged"), MntFlags::empty()).expect("unmounting");
        })
    });
    g.finish();
}

fn seccomp(c: &mut Criterion) {
    let profile = isolab_runtime::seccomp::default_profile().expect("compiling the profile");
    let mut g = c.benchmark_group("seccomp");
    g.bench_function("load", |b| {
        b.iter(|| in_child(|| profile.install().is_ok()))
    });
    g.finish();
}

fn kvm_ioctls(c: &mut Criterion) {
    if !kvm() {
        return skip("kvm", "/dev/kvm cannot be opened");
    }
    let kvm = kvm_ioctls::Kvm::new().expect("opening /dev/kvm");
    let mut g = c.benchmark_group("kvm");
    g.bench_function("create_vm", |b| {
        b.iter(|| drop(kvm.create_vm().expect("KVM_CREATE_VM")))
    });
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let size = 64usize << 20;
    // SAFETY: an anonymous private mapping, unmapped below.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(host, libc::MAP_FAILED);
    let region = |memory_size: u64| kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size,
        userspace_addr: host as u64,
    };
    g.bench_function("set_user_memory_region", |b| {
        b.iter(|| {
            // SAFETY: the mapping outlives the VM's use of it: the slot is
            // deleted (size 0) before the next iteration and the unmap.
            unsafe {
                vm.set_user_memory_region(region(size as u64))
                    .expect("register");
                vm.set_user_memory_region(region(0)).expect("delete");
            }
        })
    });
    g.finish();
    drop(vm);
    // SAFETY: the mapping made above, no longer registered.
    unsafe { libc::munmap(host, size) };
}

/// Boots the no-OS guest in this process and returns the time between
/// its `work_start` and `work_end` marks, divided by `per`.
fn guest_work(cfg: &VmConfig, per: u64) -> Duration {
    let r = vmm::boot(cfg).expect("booting the no-OS guest");
    let at = |name: &str| {
        r.marks
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} mark"))
            .ns
    };
    Duration::from_nanos((at("work_end") - at("work_start")) / per)
}

fn guest_driven(c: &mut Criterion) {
    if !kvm() {
        return skip(
            "kvm/exit_round_trip and virtio",
            "/dev/kvm cannot be opened",
        );
    }
    const EXITS: u64 = 20_000;
    let exits = VmConfig {
        cmdline: format!("isolab.scenario=exit-cost isolab.exits={EXITS}"),
        ..VmConfig::default()
    };
    let mut g = c.benchmark_group("kvm");
    g.sample_size(20);
    g.bench_function("exit_round_trip", |b| {
        b.iter_custom(|iters| guest_work(&exits, EXITS) * iters as u32)
    });
    g.finish();

    const REQUESTS: u64 = 256;
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(REQUESTS * 64 * 1024).unwrap();
    let read = VmConfig {
        cmdline: "isolab.scenario=disk-read".into(),
        disks: vec![DiskConfig {
            path: disk.path().to_path_buf(),
            read_only: true,
        }],
        ..VmConfig::default()
    };
    let mut g = c.benchmark_group("virtio");
    g.sample_size(20);
    g.bench_function("blk_read_64k", |b| {
        b.iter_custom(|iters| guest_work(&read, REQUESTS) * iters as u32)
    });
    g.finish();
}

criterion_group!(
    parts,
    namespaces,
    cgroups,
    seccomp,
    kvm_ioctls,
    guest_driven,
    overlay
);
criterion_main!(parts);
