//! The container backend as the CLI drives it: images, `run` (foreground,
//! `--json`, `-it`, `-d`) and the Docker verbs `ps`, `logs`, `stop`, `rm`,
//! `prune` over a state directory.
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use isolab_reports::{InstanceReport, Mark};
use isolab_runtime::cgroups::{self, CgroupLayout, Limits};
use isolab_runtime::container::{self, Spec, Stdio};
use isolab_runtime::image::{self, Image, ImageConfig, Store};
use isolab_scenarios::protocol::{self, HOLD_LINE};
use serde::{Deserialize, Serialize};

/// Name of the image `isolab image build` makes and `run` uses by default.
pub const DEFAULT_IMAGE: &str = "default";

/// Builds (or rebuilds) the default image from the embedded agent and a
/// static busybox when one is installed.
pub fn build_default_image(home: &Path) -> Result<Image> {
    let busybox = crate::host::which("busybox").filter(|p| crate::doctor::is_static(p));
    let bb = match &busybox {
        Some(p) => Some(fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let layers = image::default_layers(crate::AGENT, bb.as_deref())?;
    let img = Store::new(home).import_blobs(
        DEFAULT_IMAGE,
        &layers,
        ImageConfig {
            entrypoint: vec!["/isolab-agent".into()],
            env: vec!["PATH=/bin:/usr/bin:/sbin:/usr/sbin".into()],
            cwd: "/".into(),
            labels: [("isolab.agent".to_owned(), AGENT_FINGERPRINT.to_owned())]
                .into_iter()
                .collect(),
        },
    )?;
    Ok(img)
}

/// Fingerprint of the embedded agent (see build.rs).
pub const AGENT_FINGERPRINT: &str = env!("ISOLAB_AGENT_FINGERPRINT");

/// Opens an image; the default one is built on first use, and rebuilt when
/// it holds another agent than this isolab's.
pub fn open_image(home: &Path, name: &str) -> Result<Image> {
    let store = Store::new(home);
    match store.open(name) {
        Ok(img)
            if name == DEFAULT_IMAGE
                && img.config.labels.get("isolab.agent").map(String::as_str)
                    != Some(AGENT_FINGERPRINT) =>
        {
            build_default_image(home)
        }
        Ok(img) => Ok(img),
        Err(image::ImageError::NotFound { .. }) if name == DEFAULT_IMAGE => {
            build_default_image(home)
        }
        Err(e) => Err(e.into()),
    }
}

/// Options of `isolab run` that concern containers.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image: String,
    pub scenario: String,
    pub params: Vec<String>,
    pub command: Vec<String>,
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub limits: Limits,
    pub userns: bool,
    pub seccomp: bool,
    /// Host paths bound in (`-v HOST:TARGET[:ro]`).
    pub volumes: Vec<container::Volume>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            image: DEFAULT_IMAGE.into(),
            scenario: "startup".into(),
            params: vec![],
            command: vec![],
            name: None,
            hostname: None,
            env: vec![],
            workdir: None,
            limits: Limits::default(),
            userns: false,
            seccomp: true,
            volumes: vec![],
        }
    }
}

/// Per-instance state, `$ISOLAB_HOME/containers/<id>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    /// `running` or `exited`.
    pub status: String,
    /// Host pid of the container's pid 1.
    pub pid: i32,
    /// The isolab process that owns the instance (foreground isolab or the
    /// detached shim); when it is gone the instance is stale.
    pub owner_pid: i32,
    pub created_unix: u64,
    pub exit_code: Option<i32>,
    pub detached: bool,
}

fn containers_dir(home: &Path) -> PathBuf {
    home.join("containers")
}

fn write_state(dir: &Path, st: &State) -> Result<()> {
    let tmp = dir.join("state.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(st)?)?;
    fs::rename(&tmp, dir.join("state.json"))?;
    Ok(())
}

fn read_state(dir: &Path) -> Option<State> {
    serde_json::from_slice(&fs::read(dir.join("state.json")).ok()?).ok()
}

fn alive(pid: i32) -> bool {
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// A short random id (12 hex digits).
pub fn new_id() -> String {
    let mut b = [0u8; 6];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prepared launch: spec + bookkeeping.
struct Prepared {
    spec: Spec,
    state: State,
    dir: PathBuf,
}

fn prepare(home: &Path, opts: &RunOptions, stdio: Stdio, detached: bool) -> Result<Prepared> {
    let store = Store::new(home);
    let img = open_image(home, &opts.image)?;
    let argv: Vec<String> = if !opts.command.is_empty() {
        opts.command.clone()
    } else if img.config.entrypoint == ["/isolab-agent"] {
        let mut a = vec![
            "/isolab-agent".to_owned(),
            "--scenario".into(),
            opts.scenario.clone(),
        ];
        for p in &opts.params {
            a.push("--param".into());
            a.push(p.clone());
        }
        a
    } else {
        img.config.entrypoint.clone()
    };
    store
        .check_entrypoint(&img, &argv[0])
        .map_err(|e| anyhow!(e))?;
    let id = new_id();
    let name = opts.name.clone().unwrap_or_else(|| id.clone());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("invalid container name {name:?}: use letters, digits, '-', '_' and '.'");
    }
    // Only a chosen name can clash (an id is fresh); no need to read every
    // instance's state on the launch path otherwise.
    if opts.name.is_some() && list_states(home).iter().any(|s| s.name == name) {
        bail!("a container named {name:?} already exists: remove it with `isolab rm {name}` or pick another --name");
    }
    let dir = containers_dir(home).join(&id);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut env = img.config.env.clone();
    env.push(format!(
        "HOSTNAME={}",
        opts.hostname.clone().unwrap_or_else(|| id.clone())
    ));
    env.push("HOME=/".into());
    if matches!(stdio, Stdio::Pty(_)) {
        env.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
        ));
    }
    for e in &opts.env {
        if !e.contains('=') {
            let _ = fs::remove_dir_all(&dir);
            bail!("invalid environment entry {e:?}: use -e KEY=VALUE");
        }
        env.push(e.clone());
    }
    let state = State {
        id: id.clone(),
        name,
        image: opts.image.clone(),
        command: argv.clone(),
        status: "created".into(),
        pid: 0,
        owner_pid: std::process::id() as i32,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        exit_code: None,
        detached,
    };
    write_state(&dir, &state)?;
    let spec = Spec {
        id: id.clone(),
        lower_dirs: store.lower_dirs(&img),
        instance_dir: dir.join("fs"),
        argv,
        env,
        cwd: opts
            .workdir
            .clone()
            .unwrap_or_else(|| img.config.cwd.clone()),
        hostname: opts.hostname.clone().unwrap_or_else(|| id.clone()),
        limits: opts.limits.clone(),
        userns: opts.userns,
        seccomp: opts.seccomp,
        stdio,
        volumes: opts.volumes.clone(),
    };
    Ok(Prepared { spec, state, dir })
}

/// Prepares and starts a foreground container, recording it as running;
/// on failure its instance dir is removed.
fn launch_foreground(
    home: &Path,
    opts: &RunOptions,
    stdio: Stdio,
    layout: &CgroupLayout,
) -> Result<(container::Running, PathBuf)> {
    let p = prepare(home, opts, stdio, false)?;
    let (dir, mut state) = (p.dir.clone(), p.state.clone());
    let running = match container::launch(p.spec, layout) {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    state.status = "running".into();
    state.pid = running.pid.as_raw();
    let _ = write_state(&dir, &state);
    Ok((running, dir))
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

/// Runs a container in the foreground with its output captured, and
/// returns the report (`isolab run --json`, and `bench`).
pub fn run_captured(
    home: &Path,
    opts: &RunOptions,
    launch: u64,
) -> Result<(InstanceReport, String)> {
    let layout = layout()?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (running, dir) = launch_foreground(home, opts, Stdio::Into(w), &layout)?;
    // Read output; at the hold line, read the cgroup's memory.
    let mut output = String::new();
    let mut memory = BTreeMap::new();
    let mut reader = BufReader::new(fs::File::from(r));
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        if line.trim_end() == HOLD_LINE {
            let s = running.stats();
            if let Some(v) = s.memory_current_bytes {
                memory.insert("hold_cgroup_current".to_owned(), v);
            }
            if let Some(v) = s.memory_charged_bytes {
                memory.insert("hold_cgroup_charged".to_owned(), v);
            }
        }
        output.push_str(&line);
        line.clear();
    }
    let runtime_marks = running.marks.clone();
    let id = running.id.clone();
    let exit = running.wait();
    let _ = fs::remove_dir_all(&dir);
    let exit = exit?;
    if let Some(v) = exit.stats.memory_peak_bytes {
        memory.insert("cgroup_peak".into(), v);
    }
    let mut marks = vec![Mark {
        name: "launch".into(),
        ns: launch,
    }];
    marks.extend(runtime_marks.into_iter().map(|m| Mark {
        name: m.name,
        ns: m.ns,
    }));
    marks.push(Mark {
        name: "exit".into(),
        ns: exit.exit_ns,
    });
    let result = match protocol::parse_output("container", &output) {
        Ok(res) => {
            if let Some(ready) = res.marks.iter().find(|m| m.name == "ready") {
                marks.push(Mark {
                    name: "ready".into(),
                    ns: ready.ns,
                });
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
    Ok((report, output))
}

/// `isolab run` in the foreground with the terminal's stdio; returns the
/// container's exit code.
pub fn run_foreground(home: &Path, opts: &RunOptions, tty: bool) -> Result<i32> {
    let layout = layout()?;
    let (stdio, master) = if tty {
        let pty = nix::pty::openpty(window_size().as_ref(), None).context("openpty")?;
        (Stdio::Pty(pty.slave), Some(pty.master))
    } else {
        (Stdio::Inherit, None)
    };
    let (running, dir) = launch_foreground(home, opts, stdio, &layout)?;
    if let Some(master) = master {
        pump_pty(master);
    }
    let exit = running.wait();
    let _ = fs::remove_dir_all(&dir);
    let exit = exit?;
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

/// `isolab run -d`: a shim process owns the container; prints the id.
pub fn run_detached(home: &Path, opts: &RunOptions) -> Result<String> {
    let layout = layout()?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: isolab is single-threaded here; the shim continues as a plain
    // copy of this process and ends with _exit.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            let _ = nix::unistd::setsid();
            let code = match shim(home, opts, &layout, ready_w) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("shim: {e:#}");
                    1
                }
            };
            // SAFETY: ends the shim without unwinding into the parent's code.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(ready_w);
            let mut msg = String::new();
            fs::File::from(ready_r).read_to_string(&mut msg)?;
            match msg.strip_prefix("ok ") {
                Some(id) => Ok(id.trim().to_owned()),
                None => bail!("{}", msg.trim_start_matches("err ").trim()),
            }
        }
    }
}

fn shim(home: &Path, opts: &RunOptions, layout: &CgroupLayout, ready_w: OwnedFd) -> Result<()> {
    let mut ready = fs::File::from(ready_w);
    // Detach from the terminal: stdio to /dev/null, output to the log.
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        nix::unistd::dup2(null.as_raw_fd(), fd)?;
    }
    let p = match prepare(home, opts, Stdio::Inherit, true) {
        Ok(p) => p,
        Err(e) => {
            let _ = write!(ready, "err {e:#}");
            return Ok(());
        }
    };
    let (dir, mut state) = (p.dir.clone(), p.state.clone());
    let mut spec = p.spec;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"));
    let running = match log.map_err(anyhow::Error::from).and_then(|log| {
        spec.stdio = Stdio::Into(log.into());
        container::launch(spec, layout).map_err(anyhow::Error::from)
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            let _ = write!(ready, "err {e:#}");
            return Ok(());
        }
    };
    state.status = "running".into();
    state.pid = running.pid.as_raw();
    state.owner_pid = std::process::id() as i32;
    write_state(&dir, &state)?;
    let _ = write!(ready, "ok {}", state.id);
    drop(ready);
    let mut running = running;
    running.keep_instance_dir(true);
    let exit = running.wait()?;
    state.status = "exited".into();
    state.exit_code = Some(exit.code);
    write_state(&dir, &state)?;
    Ok(())
}

/// All instances with their state.
pub fn list_states(home: &Path) -> Vec<State> {
    let mut v: Vec<State> = fs::read_dir(containers_dir(home))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_state(&e.path()))
        .collect();
    v.sort_by_key(|s| s.created_unix);
    v
}

/// What `ps` shows as status.
pub fn effective_status(s: &State) -> String {
    match s.status.as_str() {
        "running" | "created" if !alive(s.owner_pid) => "dead (run `isolab prune`)".into(),
        "exited" => format!("exited ({})", s.exit_code.unwrap_or(-1)),
        other => other.into(),
    }
}

/// Finds an instance by id, id prefix or name.
pub fn find(home: &Path, key: &str) -> Result<State> {
    let all = list_states(home);
    let hits: Vec<&State> = all
        .iter()
        .filter(|s| s.name == key || s.id.starts_with(key))
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no container {key:?}: `isolab ps` lists them"),
        _ => bail!("{key:?} matches several containers: give more of the id"),
    }
}

pub fn ps(home: &Path, all: bool) -> String {
    let mut out = format!(
        "{:<14} {:<16} {:<10} {:<28} {}\n",
        "ID", "NAME", "IMAGE", "STATUS", "COMMAND"
    );
    for s in list_states(home) {
        let st = effective_status(&s);
        if !all && st != "running" {
            continue;
        }
        out.push_str(&format!(
            "{:<14} {:<16} {:<10} {:<28} {}\n",
            s.id,
            s.name,
            s.image,
            st,
            s.command.join(" ")
        ));
    }
    out
}

pub fn logs(home: &Path, key: &str, follow: bool) -> Result<()> {
    let s = find(home, key)?;
    let dir = containers_dir(home).join(&s.id);
    let path = dir.join("log");
    let mut f = fs::File::open(&path)
        .with_context(|| format!("{} has no log (it was not run with -d)", s.name))?;
    let mut out = std::io::stdout();
    let mut buf = [0u8; 8192];
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !follow || read_state(&dir).is_none_or(|st| effective_status(&st) != "running") {
            // One last read after the state changed.
            let mut rest = Vec::new();
            f.read_to_end(&mut rest)?;
            out.write_all(&rest)?;
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn stop(home: &Path, key: &str, timeout_s: u64) -> Result<()> {
    let s = find(home, key)?;
    if effective_status(&s) != "running" {
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(s.pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let dir = containers_dir(home).join(&s.id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    while std::time::Instant::now() < deadline {
        if read_state(&dir).is_none_or(|st| st.status != "running") {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // pid 1 of a pid namespace ignores signals it has no handler for:
    // SIGKILL from outside always works.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..250 {
        if read_state(&dir).is_none_or(|st| st.status != "running") || !alive(s.owner_pid) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!("container {} did not stop", s.name)
}

pub fn rm(home: &Path, key: &str, force: bool) -> Result<()> {
    let s = find(home, key)?;
    if effective_status(&s) == "running" {
        if !force {
            bail!(
                "container {} is running: stop it first (`isolab stop {}`) or use rm -f",
                s.name,
                s.name
            );
        }
        stop(home, key, 0)?;
    }
    fs::remove_dir_all(containers_dir(home).join(&s.id))
        .with_context(|| format!("removing {}", s.id))
}

/// Removes stopped and stale instances, their cgroups, and orphans that a
/// SIGKILLed isolab left. Returns a report line per removed thing.
pub fn prune(home: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut keep = Vec::new();
    for e in fs::read_dir(containers_dir(home))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        match read_state(&dir) {
            Some(s) if effective_status(&s) == "running" => keep.push(s.id),
            Some(s) => {
                fs::remove_dir_all(&dir)?;
                removed.push(format!("container {} ({})", s.id, s.name));
            }
            None => {
                fs::remove_dir_all(&dir)?;
                removed.push(format!("incomplete instance dir {}", dir.display()));
            }
        }
    }
    let layout = layout()?;
    for p in cgroups::prune(&layout, &keep) {
        removed.push(format!("cgroup {}", p.display()));
    }
    removed.extend(crate::peers::prune(home));
    Ok(removed)
}
