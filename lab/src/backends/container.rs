//! The lab's own namespace container runtime as a backend.
//!
//! It launches the container in this process (the runtime crate's
//! `container::launch`), reads its marks and its cgroup at the hold point,
//! and records it in the instance store while it runs.
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{anyhow, bail, Context, Result};
use isolab_abi::stage::Stage;
use isolab_reports::{InstanceReport, Mark};
use isolab_runtime::cgroups::CgroupLayout;
use isolab_runtime::container::{self, Network, Spec, Stdio};
use isolab_runtime::image::ImageConfig;
use isolab_scenarios::protocol::{self, HOLD_LINE};

use crate::backend::{Attach, Backend, InstanceSpec, Kind, Outcome, Unavailable};
use crate::home::Home;
use crate::images;
use crate::instances::Record;
use crate::network::{Attached, Mode};

/// isolab's own container runtime.
pub struct Container;

impl Backend for Container {
    fn name(&self) -> &'static str {
        "container"
    }
    fn about(&self) -> &'static str {
        "isolab's own namespace container runtime"
    }
    fn kind(&self) -> Kind {
        Kind::Container
    }
    fn available(&self) -> Result<(), Unavailable> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Unavailable {
                reason: "the container backend needs root (namespaces, overlayfs, cgroups): run it with sudo".into(),
                install: None,
            });
        }
        Ok(())
    }
    fn check(&self, spec: &InstanceSpec, _attach: Attach) -> Result<()> {
        crate::backend::refuse_vm_options(self.name(), spec)?;
        if let Some(h) = &spec.hostname {
            check_hostname(h)?;
        }
        Ok(())
    }
    fn runs_in_process(&self) -> bool {
        true
    }
    fn supports_network(&self) -> bool {
        true
    }
    /// The only backend with a network to the host (`--network bridge`
    /// or `host`): it runs the scenarios that talk to the host too.
    fn supports(&self, scenario: &isolab_abi::catalog::Scenario, spec: &InstanceSpec) -> bool {
        self.guest(spec).runs(scenario)
    }
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
        run_captured(home, spec)
    }
    fn run_attached(
        &self,
        home: &Home,
        spec: &InstanceSpec,
        tty: bool,
        interactive: bool,
    ) -> Result<i32> {
        run_terminal(home, spec, tty, interactive)
    }
    fn kill_stale(&self, home: &Home, id: &str) -> bool {
        let killed = kill_instance_cgroup(home, id);
        crate::network::release(home, id);
        killed
    }
    fn prune(&self, home: &Home) -> Vec<String> {
        let keep: Vec<String> = crate::instances::list(home)
            .into_iter()
            .filter(|s| s.effective() == crate::instances::Effective::Running)
            .map(|s| s.id)
            .collect();
        let mut out = crate::network::prune(home, &keep);
        let keep: Vec<String> = keep.iter().map(|id| home.cgroup_name(id)).collect();
        out.extend(match layout() {
            Ok(l) => isolab_runtime::cgroups::prune(&l, &home.cgroup_tag(), &keep)
                .into_iter()
                .map(|p| format!("cgroup {}", p.display()))
                .collect(),
            Err(e) => vec![format!("(cgroups not pruned: {e:#})")],
        });
        out
    }
}

/// The argv a spec runs: its command, or the agent with the scenario.
fn argv_of(spec: &InstanceSpec, config: &ImageConfig) -> Vec<String> {
    let argv = config.argv(&spec.command);
    if argv == [images::AGENT_PATH] {
        crate::instances::describe(spec)
    } else {
        argv
    }
}

/// A container ready to launch, and its record.
struct Prepared {
    spec: Spec,
    record: Record,
    /// A bridged container's lease and published ports.
    net: Option<Attached>,
    /// The host's server for a scenario that talks to the host.
    peer: Option<isolab_scenarios::workloads::peer::Server>,
}

fn prepare(home: &Home, opts: &InstanceSpec, stdio: Stdio) -> Result<Prepared> {
    // A scenario that talks to the host gets the host's server first.
    let peer = crate::network::scenario_peer(home, opts)?;
    let with_peer;
    let opts = match &peer {
        Some((param, _)) => {
            let mut o = opts.clone();
            o.params.push(param.clone());
            with_peer = o;
            &with_peer
        }
        None => opts,
    };
    let store = home.store();
    let img = images::open(home, &opts.image)?;
    let argv = argv_of(opts, &img.config);
    store
        .check_entrypoint(&img, &argv[0])
        .map_err(|e| anyhow!(images::entrypoint_hint(home, &img, e)))?;
    for e in &opts.env {
        if !e.contains('=') {
            bail!("invalid environment entry {e:?}: use -e KEY=VALUE");
        }
    }
    let mut record = match &opts.record {
        Some(id) => Record::open(home, id)?,
        None => Record::unsaved(home, "container", opts, argv.clone(), false)?,
    };
    record.state.command = argv.clone();
    record.state.layers = img.layers.clone();
    let id = record.id().to_owned();
    // The address is leased and the published ports bound before the
    // container exists: a port in use is refused with nothing started.
    let net = match opts.net.mode {
        Mode::Bridge => Some(Attached::new(home, &opts.net, &id)?),
        _ => None,
    };
    if let Some(n) = &net {
        record.state.ip = Some(n.attach.ip);
        record.state.ports = opts.net.publish.clone();
    }
    record.save()?;
    let hostname = opts.hostname.clone().unwrap_or_else(|| id.clone());
    let user = images::resolve_user(home, &img, opts.user.as_deref().unwrap_or(&img.config.user))?;
    let mut env = img.config.env.clone();
    env.push(format!("HOSTNAME={hostname}"));
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push("HOME=/".into());
    }
    if matches!(stdio, Stdio::Pty(_)) {
        env.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
        ));
    }
    env.extend(opts.env.iter().cloned());
    let spec = Spec {
        id: id.clone(),
        lower_dirs: store.lower_dirs(&img),
        instance_dir: home.instance_fs(&id),
        argv,
        env,
        cwd: opts
            .workdir
            .clone()
            .or_else(|| Some(img.config.cwd.clone()).filter(|c| !c.is_empty()))
            .unwrap_or_else(|| "/".into()),
        user,
        hostname,
        limits: opts.limits.clone(),
        userns: opts.userns,
        namespaces: opts.namespaces,
        seccomp: opts.seccomp,
        stdio,
        volumes: opts.volumes.clone(),
        network: match opts.net.mode {
            Mode::None => Network::None,
            Mode::Host => Network::Host,
            Mode::Container => Network::Join(joined_netns(home, opts)?),
            Mode::Bridge => Network::Bridge(
                net.as_ref()
                    .expect("a bridged spec leases its address first")
                    .attach
                    .clone(),
            ),
        },
        cgroup: home.cgroup_name(&id),
        oci: None,
    };
    Ok(Prepared {
        spec,
        record,
        net,
        peer: peer.map(|p| p.1),
    })
}

/// `--network container:NAME`: the network namespace of that running
/// container of this home's lab runtime.
fn joined_netns(home: &Home, opts: &InstanceSpec) -> Result<std::path::PathBuf> {
    let name = opts.net.container.as_deref().unwrap_or_default();
    let other = crate::instances::find(home, name)?;
    if other.backend != "container" || other.effective() != crate::instances::Effective::Running {
        bail!(
            "--network container:{name} joins a running container of the lab's runtime; {name} is {} ({}): start it, or pick another",
            other.effective(),
            other.backend
        );
    }
    Ok(format!("/proc/{}/ns/net", other.pid).into())
}

/// Prepares and starts a container, recording it as running.
fn start(home: &Home, opts: &InstanceSpec, stdio: Stdio) -> Result<Started> {
    let layout = layout()?;
    let Prepared {
        spec,
        mut record,
        net,
        peer,
    } = prepare(home, opts, stdio)?;
    let mut running = container::launch(spec, &layout)?;
    if let Some(n) = &net {
        for line in n.describe() {
            eprintln!("isolab: published {line}");
        }
    }
    record.running(running.pid.as_raw());
    if let Some(hook) = &opts.on_spawn {
        hook(running.pid.as_raw());
    }
    // A record the caller made (detached) outlives the run, with the
    // writable layer, until `rm`.
    running.keep_instance_dir(opts.record.is_some());
    Ok(Started {
        running,
        _record: record,
        net: (net, peer),
    })
}

/// A started container with what it holds: its record, and on the
/// bridge its lease and port proxies (released when this is dropped,
/// after the container has ended).
struct Started {
    running: container::Running,
    _record: Record,
    /// Its lease and proxies, and the host's peer server.
    net: (
        Option<Attached>,
        Option<isolab_scenarios::workloads::peer::Server>,
    ),
}

/// Ends whatever is left in instance `id`'s cgroup and removes it: how
/// `stop` and `rm` reach an instance whose owner is gone (a container, or
/// a VM monitor in its harness-made cgroup).
pub fn kill_instance_cgroup(home: &Home, id: &str) -> bool {
    layout().is_ok_and(|l| isolab_runtime::cgroups::kill_named(&l, &home.cgroup_name(id)))
}

/// This host's cgroup layout, read once per process.
pub fn layout() -> Result<CgroupLayout> {
    static LAYOUT: std::sync::OnceLock<CgroupLayout> = std::sync::OnceLock::new();
    if let Some(l) = LAYOUT.get() {
        return Ok(l.clone());
    }
    let l = CgroupLayout::detect().context("reading /proc/self/mountinfo for the cgroup layout")?;
    Ok(LAYOUT.get_or_init(|| l).clone())
}

/// Runs a container with its output captured, and returns the report
/// (`isolab run --json`, and `bench`).
fn run_captured(home: &Home, opts: &InstanceSpec) -> Result<Outcome> {
    // A first run builds the default image: that is the store's work,
    // not the start's, so a launch this process stamps itself comes after
    // it (a harness's spawn stamp stays as it is: the bench builds the
    // image before it times anything, and warm-up runs absorb the rest).
    if opts.launch_ns.is_none() {
        images::open(home, &opts.image)?;
    }
    let launch = opts.launch();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let Started {
        running,
        net,
        _record,
    } = start(home, opts, Stdio::Into(w))?;
    // Read output; at the hold line, read the cgroup's memory.
    let mut memory = BTreeMap::new();
    let output = crate::capture::read_lines(std::fs::File::from(r), |line| {
        if line == HOLD_LINE {
            let s = running.stats();
            if let Some(v) = s.memory_current_bytes {
                memory.insert("hold_cgroup_current".to_owned(), v);
            }
            if let Some(v) = s.memory_charged_bytes {
                memory.insert("hold_cgroup_charged".to_owned(), v);
            }
        }
    });
    let runtime_marks = running.marks.clone();
    let id = running.id.clone();
    let exit = running.wait()?;
    drop(net);
    if let Some(v) = exit.stats.memory_peak_bytes {
        memory.insert("cgroup_peak".into(), v);
    }
    let mut marks = vec![Mark::new(Stage::Launch.name(), launch)];
    marks.extend(runtime_marks.into_iter().map(|m| Mark::new(&m.name, m.ns)));
    marks.push(Mark::new(Stage::Exit.name(), exit.exit_ns));
    let result = match protocol::parse_output("container", &output) {
        Ok(res) => {
            if let Some(ready) = res.marks.iter().find(|m| m.name == Stage::Ready.name()) {
                marks.push(Mark::new(Stage::Ready.name(), ready.ns));
            }
            Some(serde_json::to_value(&res)?)
        }
        Err(e) if opts.command.is_empty() && !exit.oom_killed => {
            return Err(anyhow!(e));
        }
        Err(_) => None,
    };
    let mut report = InstanceReport::new("container", "agent", &opts.scenario, id);
    report.exit_code = exit.code;
    report.signal = exit.signal;
    report.oom_killed = exit.oom_killed;
    report.marks = marks;
    report.memory_bytes = memory;
    report.result = result;
    report.notes = vec![
        "ready is stamped by the agent itself: a container shares the host's CLOCK_MONOTONIC"
            .into(),
    ];
    report.derive();
    Ok(Outcome { report, output })
}

/// A hostname as the kernel and `/etc/hosts` take it: 1 to 64 letters,
/// digits, '-' and '.'.
pub fn check_hostname(h: &str) -> Result<()> {
    if h.is_empty()
        || h.len() > 64
        || !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        bail!(
            "invalid hostname {:?}: use 1 to 64 letters, digits, '-' and '.'",
            crate::host::printable(h)
        );
    }
    Ok(())
}

/// `isolab run` attached to the user's terminal (or, detached, to the
/// shim's log): the container gets a pty the runtime made (`-t`) or
/// pipes, never isolab's own descriptors, and the output is relayed.
/// Returns the container's exit code.
fn run_terminal(home: &Home, opts: &InstanceSpec, tty: bool, interactive: bool) -> Result<i32> {
    if tty {
        let pty = nix::pty::openpty(window_size().as_ref(), None).context("openpty")?;
        let Started {
            running,
            net,
            _record,
        } = start(home, opts, Stdio::Pty(pty.slave))?;
        pump_pty(pty.master);
        let exit = running.wait()?;
        drop(net);
        return finish(exit);
    }
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec)?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec)?;
    let (in_r, in_w) = match interactive {
        true => {
            let (r, w) = nix::unistd::pipe2(cloexec)?;
            (Some(r), Some(w))
        }
        false => (None, None),
    };
    let stdio = Stdio::Pipes {
        stdin: in_r,
        stdout: out_w,
        stderr: err_w,
    };
    // The agent's result line in words (a command's output is its own).
    let human = opts.command.is_empty() && !opts.raw_output;
    let Started {
        running,
        net,
        _record,
    } = start(home, opts, stdio)?;
    let relays = [
        std::thread::spawn(move || match human {
            true => crate::capture::relay_human(out_r, 1),
            false => crate::capture::relay(out_r, 1),
        }),
        std::thread::spawn(move || crate::capture::relay(err_r, 2)),
    ];
    if let Some(w) = in_w {
        // Not joined: it may sit in a read of the user's stdin after the
        // container is gone; the process ends it.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::fs::File::from(w));
        });
    }
    let exit = running.wait()?;
    drop(net);
    for r in relays {
        let _ = r.join();
    }
    finish(exit)
}

fn finish(exit: container::Exit) -> Result<i32> {
    if exit.oom_killed {
        eprintln!("isolab: the container was OOM-killed: it used more than its memory limit (raise --memory)");
    }
    Ok(exit.code)
}

fn window_size() -> Option<nix::pty::Winsize> {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into a valid pointer.
    let r = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

/// Copies stdin → pty master and master → stdout until the container's
/// side closes; the host terminal is in raw mode meanwhile and restored
/// after, whatever happens.
fn pump_pty(master: OwnedFd) {
    use nix::sys::termios;
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
    }
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let sin = std::io::stdin();
        let mut fds = vec![PollFd::new(
            std::os::fd::AsFd::as_fd(&master),
            PollFlags::POLLIN,
        )];
        if stdin_open {
            fds.push(PollFd::new(
                std::os::fd::AsFd::as_fd(&sin),
                PollFlags::POLLIN,
            ));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let m_ev = fds[0].revents().unwrap_or(PollFlags::empty());
        let s_ev = fds
            .get(1)
            .and_then(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        drop(fds);
        if m_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                _ => break, // EIO: the container side is gone.
            }
        }
        if s_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match nix::unistd::read(0, &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = nix::unistd::write(&master, &buf[..n]);
                }
                _ => stdin_open = false,
            }
        }
    }
    if let Some(t) = &saved {
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, t);
    }
}
