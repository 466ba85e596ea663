//! isolab as an OCI runtime: the command line engines call (`create`,
//! `start`, `state`, `kill`, `delete`, `features`, and `run`), over the
//! lab's own runtime and a bundle's `config.json` (the OCI runtime spec,
//! read with `oci-spec`). The `isolab-oci` binary is its clap front.
//!
//! ```text
//!  podman / docker ─▶ conmon / containerd-shim ─▶ isolab-oci create ─┐
//!                                                                   │ launch (gated)
//!          init: namespaces, rootfs bind, mounts, pivot_root ◀───────┘
//!          init: blocks opening <root>/<id>/exec.fifo for writing
//!  isolab-oci start ─▶ opens the FIFO for reading ─▶ init: caps, seccomp, exec
//! ```
//!
//! What the runtime takes from `config.json`: `process` (args, env, cwd,
//! uid and gid, `terminal` with the engine's `--console-socket`),
//! `root.path`, `hostname`, the
//! namespaces (a `network` with a `path` is joined; one without makes the
//! container's own with `lo` only; none at all shares the host's),
//! `linux.resources` (memory, pids, CPU quota), bind mounts, and the
//! `prestart`/`createRuntime`, `poststart` and `poststop` hooks.
//!
//! What it keeps its own, whatever the config says — the hardening is the
//! runtime's, not the engine's: the capability set, the seccomp filter,
//! masked and read-only paths, `no_new_privs`, the rlimits, `/proc`,
//! `/dev` and `/sys`. It refuses, in one sentence, what it cannot honour:
//! a user namespace, joining an existing pid/ipc/uts
//! namespace, a read-only root, the systemd cgroup driver.
//!
//! The container's cgroup hangs under the lab's parent, `isolab/`, in
//! every hierarchy, as every backend's does: a `cgroupsPath` below
//! `/isolab/` is honoured (the lab's peers, and podman or docker given
//! `--cgroup-parent /isolab/…`), any other is replaced by `isolab/<id>`,
//! so the limits apply and `isolab prune` finds it.
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use isolab_runtime::cgroups::Limits;
use isolab_runtime::container::{self, Namespaces, Network, OciMode, Stdio, Volume};
use oci_spec::runtime::{Hook, LinuxNamespaceType, Spec as Config};
use serde::{Deserialize, Serialize};

/// The OCI runtime spec version this runtime reports.
pub const OCI_VERSION: &str = "1.0.2";

/// Where `isolab-oci` keeps its containers' state by default (runc's is
/// `/run/runc`).
pub const DEFAULT_ROOT: &str = "/run/isolab-oci";

/// The start gate's file in a container's state directory.
const GATE: &str = "exec.fifo";
const STATE: &str = "state.json";

/// The options every command takes.
#[derive(Debug, Clone)]
pub struct Globals {
    /// The state directory (one subdirectory per container).
    pub root: PathBuf,
    /// Where errors go besides stderr (engines read it on failure).
    pub log: Option<PathBuf>,
    /// `--log-format json`: one `{"level","msg","time"}` object a line.
    pub log_json: bool,
}

impl Globals {
    /// Appends one error line to `--log`, in its format.
    pub fn log_error(&self, msg: &str) {
        let Some(path) = &self.log else { return };
        let line = if self.log_json {
            serde_json::json!({ "level": "error", "msg": msg, "time": crate::clock::rfc3339_now() })
                .to_string()
        } else {
            format!("{} error: {msg}", crate::clock::rfc3339_now())
        };
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

/// What `create` leaves for the other commands: one file per container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub pid: i32,
    /// The init's start time (`/proc/PID/stat` field 22): a pid reused by
    /// another process after the container ended is never taken for it.
    pub start_time: u64,
    pub created: String,
    /// The cgroup's name under the lab's parent.
    pub cgroup: String,
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

/// A container's status, as the OCI runtime spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// Refuses an id that could name a path outside the state root.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("container id {id:?} is not valid: use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'");
    }
    Ok(())
}

/// The runtime's spec for a bundle: what is honoured, and a sentence for
/// what is refused.
pub fn container_spec(
    cfg: &Config,
    bundle: &Path,
    id: &str,
    state_dir: &Path,
    gate: Option<PathBuf>,
    terminal: Option<OwnedFd>,
) -> Result<container::Spec> {
    let process = cfg
        .process()
        .as_ref()
        .ok_or_else(|| anyhow!("the bundle's config.json has no process: give process.args"))?;
    let wants_terminal = process.terminal().unwrap_or(false);
    if wants_terminal && terminal.is_none() {
        bail!("process.terminal is true but no --console-socket was given: give the socket that receives the terminal, or set terminal false");
    }
    if !wants_terminal && terminal.is_some() {
        bail!("--console-socket was given but process.terminal is false: drop the socket or set terminal true");
    }
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        bail!("the bundle's config.json has no process.args: give the program to run");
    }
    let root = cfg
        .root()
        .as_ref()
        .ok_or_else(|| anyhow!("the bundle's config.json has no root: give root.path"))?;
    if root.readonly().unwrap_or(false) {
        bail!("isolab-oci does not mount the root read-only yet: set root.readonly false (drop --read-only)");
    }
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        bail!(
            "the bundle's root {} is not a directory: unpack the image's rootfs there",
            rootfs.display()
        );
    }
    if cfg.uid_mappings().is_some() {
        bail!("isolab-oci does not take id mappings: run the container without a user namespace");
    }
    let env = process.env().clone().unwrap_or_default();
    let argv0 = resolve_program(&rootfs, &args[0], &env)?;
    let mut argv = args.clone();
    argv[0] = argv0;
    let user = (process.user().uid(), process.user().gid());
    let cwd = process.cwd().display().to_string();
    if !cwd.starts_with('/') {
        bail!("process.cwd {cwd:?} is not absolute: give an absolute path");
    }

    let mut namespaces = Namespaces {
        pid: false,
        uts: false,
        ipc: false,
        cgroup: false,
    };
    let mut network = Network::Host;
    let mut limits = Limits::default();
    if let Some(linux) = cfg.linux() {
        if linux.uid_mappings().is_some() || linux.gid_mappings().is_some() {
            bail!(
                "isolab-oci does not take id mappings: run the container without a user namespace"
            );
        }
        for ns in linux.namespaces().clone().unwrap_or_default() {
            let joined = ns.path().clone();
            match (ns.typ(), joined) {
                (LinuxNamespaceType::Network, Some(p)) => network = Network::Join(p),
                (LinuxNamespaceType::Network, None) => network = Network::None,
                (LinuxNamespaceType::Mount, None) => {}
                (LinuxNamespaceType::User, _) => bail!(
                    "isolab-oci does not make user namespaces for engines yet: run the container rootful, without --userns"
                ),
                (t, Some(p)) => bail!(
                    "isolab-oci joins only a network namespace by path, not the {t} namespace {}: drop that sharing option",
                    p.display()
                ),
                (LinuxNamespaceType::Pid, None) => namespaces.pid = true,
                (LinuxNamespaceType::Uts, None) => namespaces.uts = true,
                (LinuxNamespaceType::Ipc, None) => namespaces.ipc = true,
                (LinuxNamespaceType::Cgroup, None) => namespaces.cgroup = true,
                (t, None) => bail!("isolab-oci does not make a {t} namespace: drop it from config.json"),
            }
        }
        if let Some(r) = linux.resources() {
            limits.memory_bytes = r
                .memory()
                .as_ref()
                .and_then(|m| m.limit())
                .and_then(|l| u64::try_from(l).ok())
                .filter(|l| *l > 0);
            limits.pids = r
                .pids()
                .as_ref()
                .and_then(|p| u64::try_from(p.limit()).ok())
                .filter(|l| *l > 0);
            if let Some(cpu) = r.cpu() {
                if let (Some(q), Some(p)) = (cpu.quota(), cpu.period()) {
                    if q > 0 && p > 0 {
                        limits.cpus = Some(q as f64 / p as f64);
                    }
                }
            }
        }
    }
    if !namespaces.uts && cfg.hostname().as_deref().is_some_and(|h| !h.is_empty()) {
        bail!("config.json sets a hostname but shares the host's uts namespace: add a uts namespace or drop the hostname");
    }
    let cgroup = cgroup_name(cfg, id);
    let mut volumes = Vec::new();
    for mnt in cfg.mounts().clone().unwrap_or_default() {
        let dest = mnt.destination().display().to_string();
        let opts = mnt.options().clone().unwrap_or_default();
        let bind = mnt.typ().as_deref() == Some("bind")
            || opts.iter().any(|o| o == "bind" || o == "rbind");
        // The runtime makes these itself, hardened its own way.
        let own = ["/proc", "/dev", "/sys"]
            .iter()
            .any(|p| dest == *p || dest.starts_with(&format!("{p}/")));
        if own {
            continue;
        }
        if !bind {
            // A tmpfs or another filesystem the engine asks for (podman's
            // /run/.containerenv is a bind; /tmp tmpfs only with --tmpfs).
            bail!(
                "isolab-oci binds host paths but does not mount {} filesystems yet ({}): drop that mount",
                mnt.typ().clone().unwrap_or_default(),
                dest
            );
        }
        let source = mnt
            .source()
            .clone()
            .ok_or_else(|| anyhow!("the bind mount on {dest} has no source: give one"))?;
        let source = if source.is_absolute() {
            source
        } else {
            bundle.join(source)
        };
        if !source.exists() {
            bail!(
                "the bind mount source {} does not exist: create it or drop the mount",
                source.display()
            );
        }
        if !dest.starts_with('/') || dest == "/" || dest.split('/').any(|c| c == "..") {
            bail!("the mount destination {dest:?} is not an absolute path inside the container: fix it");
        }
        volumes.push(Volume {
            source,
            target: dest,
            read_only: opts.iter().any(|o| o == "ro"),
        });
    }
    Ok(container::Spec {
        id: id.to_owned(),
        lower_dirs: vec![],
        instance_dir: state_dir.to_path_buf(),
        argv,
        env,
        cwd,
        user: (user != (0, 0)).then_some(user),
        hostname: cfg.hostname().clone().unwrap_or_else(|| id.to_owned()),
        limits,
        userns: false,
        seccomp: true,
        stdio: match terminal {
            Some(slave) => Stdio::Pty(slave),
            None => Stdio::Inherit,
        },
        volumes,
        network,
        namespaces,
        cgroup,
        oci: Some(OciMode { rootfs, gate }),
    })
}

/// The container's cgroup under `isolab/`: the config's `cgroupsPath`
/// when it lies below `/isolab/`, else the container's id.
pub fn cgroup_name(cfg: &Config, id: &str) -> String {
    let wanted = cfg
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .and_then(|p| {
            let rest = p
                .strip_prefix(format!("/{}", isolab_runtime::cgroups::PARENT))
                .ok()?
                .to_path_buf();
            let normal = rest
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            (normal && rest.components().count() > 0)
                .then(|| rest.to_str().map(str::to_owned))
                .flatten()
        });
    wanted.unwrap_or_else(|| id.to_owned())
}

/// `args[0]` as the init will `execve` it: a path inside the rootfs, found
/// on the config's `PATH` when it has no slash (the runtime spec leaves
/// that lookup to the runtime, as `execvp` would).
fn resolve_program(rootfs: &Path, program: &str, env: &[String]) -> Result<String> {
    if program.contains('/') {
        if program.starts_with('/')
            && fs::symlink_metadata(rootfs.join(program.trim_start_matches('/'))).is_err()
        {
            bail!("process.args[0] {program} is not in the bundle's rootfs: give a program the image has");
        }
        return Ok(program.to_owned());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let inside = format!("{}/{program}", dir.trim_end_matches('/'));
        // Only a hint: the image's own symlinks are resolved on the host
        // here, and the init's execve inside decides.
        if fs::symlink_metadata(rootfs.join(inside.trim_start_matches('/'))).is_ok() {
            return Ok(inside);
        }
    }
    bail!("{program} is not on the container's PATH ({path}): give its full path in process.args")
}

/// `/proc/PID/stat`'s state letter and start time.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn alive(r: &Record) -> bool {
    r.pid > 0
        && proc_stat(r.pid)
            .is_some_and(|(s, start)| start == r.start_time && !matches!(s, 'Z' | 'X'))
}

/// Reads a container's record; "does not exist" is the phrase engines
/// look for.
pub fn load(g: &Globals, id: &str) -> Result<Record> {
    check_id(id)?;
    let path = g.dir(id).join(STATE);
    let text = fs::read_to_string(&path)
        .map_err(|_| anyhow!("container {id} does not exist in {}", g.root.display()))?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

pub fn status(g: &Globals, r: &Record) -> Status {
    if !alive(r) {
        Status::Stopped
    } else if g.dir(&r.id).join(GATE).exists() {
        Status::Created
    } else {
        Status::Running
    }
}

/// The state JSON of the runtime spec (`state`, and a hook's stdin).
pub fn state_json(r: &Record, status: Status) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": r.id,
        "status": status.as_str(),
        "pid": if status == Status::Stopped { 0 } else { r.pid },
        "bundle": r.bundle,
        "rootfs": r.rootfs,
        "created": r.created,
        "owner": "",
        "annotations": r.annotations,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Runs hooks in order with the state on stdin, each bounded by its
/// timeout (default 30 s); the first failure is the answer.
fn run_hooks(kind: &str, hooks: &[Hook], state: &serde_json::Value) -> Result<()> {
    use std::process::{Command, Stdio as P};
    for h in hooks {
        let mut cmd = Command::new(h.path());
        if let Some(args) = h.args() {
            if let Some((first, rest)) = args.split_first() {
                use std::os::unix::process::CommandExt;
                cmd.arg0(first).args(rest);
            }
        }
        if let Some(env) = h.env() {
            cmd.env_clear();
            for e in env {
                if let Some((k, v)) = e.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
        cmd.stdin(P::piped()).stdout(P::null()).stderr(P::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("the {kind} hook {}", h.path().display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(state.to_string().as_bytes());
        }
        let timeout = std::time::Duration::from_secs(h.timeout().unwrap_or(30).max(1) as u64);
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if t0.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the {kind} hook {} did not finish in {} s",
                    h.path().display(),
                    timeout.as_secs()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!(
                "the {kind} hook {} failed ({status}): {}",
                h.path().display(),
                err.trim()
            );
        }
    }
    Ok(())
}

/// Options of `create` (and `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// Removes a half-made container's state directory unless disarmed.
struct StateGuard(Option<PathBuf>);
impl Drop for StateGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn prepare(g: &Globals, id: &str, o: &CreateOptions) -> Result<(Config, PathBuf)> {
    check_id(id)?;
    if o.preserve_fds > 0 {
        bail!("isolab-oci does not pass extra descriptors yet: drop --preserve-fds");
    }
    let bundle = fs::canonicalize(&o.bundle).map_err(|e| {
        anyhow!(
            "the bundle {} cannot be opened ({e}): give the directory holding config.json",
            o.bundle.display()
        )
    })?;
    let cfg_path = bundle.join("config.json");
    let cfg = Config::load(&cfg_path).map_err(|e| {
        anyhow!(
            "{} is not a valid OCI config ({e}): fix it",
            cfg_path.display()
        )
    })?;
    crate::selfprotect::ensure_protected()?;
    if !g.root.exists() {
        // Only root reads containers' state (runc's root is 0700 too).
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&g.root)
            .with_context(|| format!("creating the state root {}", g.root.display()))?;
    }
    Ok((cfg, bundle))
}

fn make_state_dir(g: &Globals, id: &str) -> Result<PathBuf> {
    let dir = g.dir(id);
    match fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container {id} already exists: delete it first (isolab-oci delete {id})")
        }
        Err(e) => Err(anyhow!("creating {}: {e}", dir.display())),
    }
}

/// `create`: the container set up and held at its start gate.
pub fn create(g: &Globals, id: &str, o: &CreateOptions) -> Result<()> {
    let (cfg, bundle) = prepare(g, id, o)?;
    let dir = make_state_dir(g, id)?;
    let mut guard = StateGuard(Some(dir.clone()));
    let gate = dir.join(GATE);
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("making the start gate {}", gate.display()))?;
    let wants_terminal = cfg
        .process()
        .as_ref()
        .is_some_and(|p| p.terminal().unwrap_or(false));
    let terminal = match &o.console_socket {
        Some(sock) if wants_terminal => Some(console(
            sock,
            cfg.process().as_ref().and_then(|p| p.console_size()),
        )?),
        Some(_) => bail!("--console-socket was given but process.terminal is false: drop the socket or set terminal true"),
        None => None,
    };
    let spec = container_spec(&cfg, &bundle, id, &dir, Some(gate), terminal)?;
    let rootfs = spec
        .oci
        .as_ref()
        .map(|o| o.rootfs.clone())
        .unwrap_or_default();
    let cgroup = spec.cgroup.clone();
    let layout = crate::backends::container::layout()?;
    let running = container::launch(spec, &layout).map_err(|e| anyhow!("{e}"))?;
    let pid = running.pid.as_raw();
    running.detach();
    let hooks = cfg.hooks().clone().unwrap_or_default();
    let record = Record {
        id: id.to_owned(),
        bundle,
        rootfs,
        pid,
        start_time: proc_stat(pid).map(|s| s.1).unwrap_or(0),
        created: crate::clock::rfc3339_now(),
        cgroup,
        annotations: cfg
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        poststart: hooks.poststart().clone().unwrap_or_default(),
        poststop: hooks.poststop().clone().unwrap_or_default(),
    };
    let undo = |e: anyhow::Error| {
        destroy(&layout, &record);
        e
    };
    write_atomic(&dir.join(STATE), &serde_json::to_vec_pretty(&record)?).map_err(undo)?;
    // prestart (deprecated) and createRuntime run in the runtime's
    // namespaces once the container's exist: here, with its init held at
    // the gate.
    let state = state_json(&record, Status::Created);
    let mut before = hooks.prestart().clone().unwrap_or_default();
    before.extend(hooks.create_runtime().clone().unwrap_or_default());
    run_hooks("createRuntime", &before, &state).map_err(undo)?;
    if let Some(p) = &o.pid_file {
        write_atomic(p, pid.to_string().as_bytes()).map_err(undo)?;
    }
    guard.0 = None;
    Ok(())
}

/// The container's terminal: a new pty whose master goes to the engine
/// over `socket` (`SCM_RIGHTS`, as runc sends it; conmon and the shim
/// relay it), sized as the config asks. Returns the slave, which becomes
/// the container's controlling terminal and fds 0, 1 and 2.
fn console(socket: &Path, size: Option<oci_spec::runtime::Box>) -> Result<OwnedFd> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let pty = nix::pty::openpty(None, None).context("opening a pty for the container")?;
    if let Some(b) = size {
        let ws = libc::winsize {
            ws_row: b.height() as u16,
            ws_col: b.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on a pty master we own, with a winsize.
        unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow!(
            "the console socket {} cannot be reached ({e}): give the engine's listening socket",
            socket.display()
        )
    })?;
    let fds = [pty.master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"/dev/ptmx")];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| format!("sending the terminal to {}", socket.display()))?;
    Ok(pty.slave)
}

/// Kills what is left of a container and removes its cgroup.
fn destroy(layout: &isolab_runtime::cgroups::CgroupLayout, r: &Record) {
    if alive(r) {
        let _ = signal_init(r, libc::SIGKILL);
    }
    isolab_runtime::cgroups::kill_named(layout, &r.cgroup);
    // The init is reaped by whoever is its parent now; wait until it is
    // gone from the process table or a zombie.
    for _ in 0..400 {
        if !alive(r) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Sends `sig` to the init through a pidfd, checked against the recorded
/// start time after it is opened: never to a process that reused the pid.
fn signal_init(r: &Record, sig: i32) -> Result<()> {
    // SAFETY: pidfd_open with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, r.pid, 0) };
    if fd < 0 {
        bail!("container {} is not running", r.id);
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !alive(r) {
        bail!("container {} is not running", r.id);
    }
    // SAFETY: pidfd_send_signal on our pidfd, no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        bail!(
            "signalling container {}: {}",
            r.id,
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `start`: opens the gate; returns once the init is through it.
pub fn start(g: &Globals, id: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let r = load(g, id)?;
    let gate = g.dir(id).join(GATE);
    match status(g, &r) {
        Status::Created => {}
        s => bail!(
            "container {id} is {}, not created: only a created container starts",
            s.as_str()
        ),
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&gate)
        .with_context(|| format!("opening the start gate {}", gate.display()))?;
    // The init's open for writing completes now; it writes one byte once
    // through. Poll for it while checking the init is still there.
    let t0 = std::time::Instant::now();
    loop {
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            let mut b = [0u8; 1];
            let got = nix::unistd::read(f.as_raw_fd(), &mut b).unwrap_or(0);
            if got == 1 {
                break;
            }
        }
        if !alive(&r) {
            let _ = fs::remove_file(&gate);
            bail!("container {id} ended before it started: see its output");
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            bail!("container {id} did not pass its start gate in 30 s: delete it (isolab-oci delete --force {id})");
        }
    }
    let _ = fs::remove_file(&gate);
    // poststart failures are logged, not fatal (the spec's rule).
    if let Err(e) = run_hooks("poststart", &r.poststart, &state_json(&r, Status::Running)) {
        g.log_error(&format!("{e:#}"));
        eprintln!("isolab-oci: {e:#}");
    }
    Ok(())
}

/// `state`: the runtime spec's state JSON.
pub fn state(g: &Globals, id: &str) -> Result<serde_json::Value> {
    let r = load(g, id)?;
    Ok(state_json(&r, status(g, &r)))
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig: nix::sys::signal::Signal = format!("SIG{name}")
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a signal: give a name (TERM, KILL) or a number"))?;
    Ok(sig as i32)
}

/// `kill`: the signal to the init, or with `all` to every process in the
/// container's cgroup.
pub fn kill(g: &Globals, id: &str, sig: i32, all: bool) -> Result<()> {
    let r = load(g, id)?;
    if all {
        let layout = crate::backends::container::layout()?;
        let mut any = false;
        for p in isolab_runtime::cgroups::named_pids(&layout, &r.cgroup) {
            any = true;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::try_from(sig)?,
            );
        }
        if !any && !alive(&r) {
            bail!("container {id} is not running");
        }
        return Ok(());
    }
    signal_init(&r, sig)
}

/// `delete`: removes a stopped container (`force`: any), its cgroup and
/// its state; runs the poststop hooks.
pub fn delete(g: &Globals, id: &str, force: bool) -> Result<()> {
    let r = match load(g, id) {
        Ok(r) => r,
        Err(e) => {
            // A state directory without a record is a create that died
            // half-way: nothing runs there.
            let dir = g.dir(id);
            if check_id(id).is_ok() && dir.is_dir() && force {
                let _ = fs::remove_dir_all(dir);
                return Ok(());
            }
            return Err(e);
        }
    };
    let s = status(g, &r);
    if s != Status::Stopped && !force {
        bail!(
            "container {id} is {}: stop it (isolab-oci kill {id} KILL) or use delete --force",
            s.as_str()
        );
    }
    let layout = crate::backends::container::layout()?;
    destroy(&layout, &r);
    let _ = fs::remove_dir_all(g.dir(id));
    if let Err(e) = run_hooks("poststop", &r.poststop, &state_json(&r, Status::Stopped)) {
        g.log_error(&format!("{e:#}"));
        eprintln!("isolab-oci: {e:#}");
    }
    Ok(())
}

/// `run`: create and start in one, then wait; the exit status is the
/// container's (128 + signal for a signal), as `runc run` returns.
pub fn run(g: &Globals, id: &str, o: &CreateOptions) -> Result<i32> {
    let (cfg, bundle) = prepare(g, id, o)?;
    let dir = make_state_dir(g, id)?;
    let _guard = StateGuard(Some(dir.clone()));
    if cfg
        .hooks()
        .as_ref()
        .is_some_and(|h| h.prestart().is_some() || h.create_runtime().is_some())
    {
        bail!("isolab-oci run does not run hooks: use create and start");
    }
    if o.console_socket.is_some() {
        bail!("isolab-oci run keeps the caller's streams: drop --console-socket, or use create and start");
    }
    let spec = container_spec(&cfg, &bundle, id, &dir, None, None)?;
    let layout = crate::backends::container::layout()?;
    let running = container::launch(spec, &layout).map_err(|e| anyhow!("{e}"))?;
    if let Some(p) = &o.pid_file {
        let _ = write_atomic(p, running.pid.as_raw().to_string().as_bytes());
    }
    let exit = running.wait().map_err(|e| anyhow!("{e}"))?;
    Ok(exit.code)
}

/// `features`: what this runtime implements, in the runtime spec's
/// features document.
pub fn features() -> serde_json::Value {
    let caps: Vec<String> = isolab_runtime::container::DEFAULT_CAPS
        .iter()
        .map(|c| c.to_string())
        .collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {
            "namespaces": ["mount", "network", "pid", "ipc", "uts", "cgroup"],
            "capabilities": caps,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": true, "actions": ["SCMP_ACT_ERRNO"], "operators": [], "archs": ["SCMP_ARCH_X86_64"] },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false }
        },
        "annotations": {
            "org.isolab.runtime": "the lab's own namespace runtime",
            "org.isolab.policy": "capabilities, seccomp, masked paths, /proc, /dev and /sys are the runtime's own, whatever config.json asks"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle with a rootfs holding `bin/sh`, and its config from JSON.
    fn bundle(config: serde_json::Value) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rootfs/bin")).unwrap();
        fs::write(dir.path().join("rootfs/bin/sh"), b"").unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, config.to_string()).unwrap();
        let cfg = Config::load(&path).unwrap();
        (dir, cfg)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "terminal": false, "user": { "uid": 0, "gid": 0 }, "args": ["sh", "-c", "true"],
                         "env": ["PATH=/usr/bin:/bin"], "cwd": "/" },
            "root": { "path": "rootfs" },
            "hostname": "h1",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev/pts", "type": "devpts", "source": "devpts" },
                { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup" }
            ],
            "linux": {
                "namespaces": [ {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"} ],
                "resources": { "memory": { "limit": 67108864 }, "pids": { "limit": 64 }, "cpu": { "quota": 50000, "period": 100000 } },
                "cgroupsPath": "/libpod_parent/libpod-abc"
            }
        })
    }

    fn spec_of(v: serde_json::Value) -> Result<container::Spec> {
        let (dir, cfg) = bundle(v);
        container_spec(
            &cfg,
            dir.path(),
            "c1",
            &dir.path().join("state"),
            None,
            None,
        )
    }

    #[test]
    fn a_config_maps_onto_the_runtime_spec() {
        let s = spec_of(base()).unwrap();
        assert_eq!(s.argv, ["/bin/sh", "-c", "true"], "args[0] found on PATH");
        assert_eq!(s.hostname, "h1");
        assert_eq!(
            (
                s.namespaces.pid,
                s.namespaces.uts,
                s.namespaces.ipc,
                s.namespaces.cgroup
            ),
            (true, true, true, false)
        );
        assert_eq!(s.network, Network::None, "its own netns, lo only");
        assert_eq!(s.limits.memory_bytes, Some(64 << 20));
        assert_eq!(s.limits.pids, Some(64));
        assert_eq!(s.limits.cpus, Some(0.5));
        assert!(s.volumes.is_empty(), "the runtime's own /proc, /dev, /sys");
        assert!(s.seccomp && s.user.is_none() && !s.userns);
        assert_eq!(s.cgroup, "c1", "a cgroupsPath outside /isolab is replaced");
        assert!(matches!(s.stdio, Stdio::Inherit));

        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([
            {"type": "network", "path": "/run/netns/x"}, {"type": "mount"}, {"type": "uts"}
        ]);
        v["linux"]["cgroupsPath"] = "/isolab/tag-1/libpod-abc".into();
        v["process"]["user"] = serde_json::json!({ "uid": 1000, "gid": 100 });
        v["mounts"] = serde_json::json!([
            { "destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"] }
        ]);
        let s = spec_of(v).unwrap();
        assert_eq!(s.network, Network::Join("/run/netns/x".into()));
        assert!(!s.namespaces.pid);
        assert_eq!(s.cgroup, "tag-1/libpod-abc");
        assert_eq!(s.user, Some((1000, 100)));
        assert_eq!(s.volumes.len(), 1);
        assert!(s.volumes[0].read_only);

        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
        v["hostname"] = serde_json::Value::Null;
        assert_eq!(
            spec_of(v).unwrap().network,
            Network::Host,
            "no netns: the host's"
        );
    }

    #[test]
    fn what_the_runtime_cannot_honour_is_refused_in_one_sentence() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "terminal",
                Box::new(|v| v["process"]["terminal"] = true.into()),
                "--console-socket",
            ),
            (
                "no args",
                Box::new(|v| v["process"]["args"] = serde_json::json!([])),
                "process.args",
            ),
            (
                "not on PATH",
                Box::new(|v| v["process"]["args"] = serde_json::json!(["nothere"])),
                "PATH",
            ),
            (
                "not in rootfs",
                Box::new(|v| v["process"]["args"] = serde_json::json!(["/bin/nothere"])),
                "not in the bundle's rootfs",
            ),
            (
                "no rootfs",
                Box::new(|v| v["root"]["path"] = "missing".into()),
                "not a directory",
            ),
            (
                "read-only root",
                Box::new(|v| v["root"]["readonly"] = true.into()),
                "read-only",
            ),
            (
                "user ns",
                Box::new(|v| v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}])),
                "user namespace",
            ),
            (
                "pid join",
                Box::new(|v| {
                    v["linux"]["namespaces"] =
                        serde_json::json!([{"type": "pid", "path": "/proc/1/ns/pid"}])
                }),
                "joins only a network",
            ),
            (
                "hostname without uts",
                Box::new(|v| v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}])),
                "uts",
            ),
            (
                "tmpfs",
                Box::new(
                    |v| v["mounts"] = serde_json::json!([{ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs" }]),
                ),
                "tmpfs",
            ),
            (
                "missing source",
                Box::new(
                    |v| v["mounts"] = serde_json::json!([{ "destination": "/x", "type": "bind", "source": "/nonexistent-isolab" }]),
                ),
                "does not exist",
            ),
            (
                "relative cwd",
                Box::new(|v| v["process"]["cwd"] = "here".into()),
                "absolute",
            ),
        ];
        for (what, edit, needle) in cases {
            let mut v = base();
            edit(&mut v);
            let e = spec_of(v)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"));
            let msg = format!("{e:#}");
            assert!(msg.contains(needle), "{what}: {msg}");
            assert!(
                msg.contains(':') && !msg.contains('\n'),
                "{what}: one sentence with its fix: {msg}"
            );
        }
    }

    #[test]
    fn ids_signals_and_cgroup_paths_are_checked() {
        for ok in ["abc", "a-b_c.1", &"f".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("term").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), 9);
        for bad in ["0", "65", "NOPE", ""] {
            assert!(parse_signal(bad).is_err(), "{bad:?}");
        }
        for (path, want) in [
            ("/isolab/x", "x"),
            ("/isolab/t-1/libpod-a", "t-1/libpod-a"),
            ("/isolab", "c1"),
            ("/isolab/../etc", "c1"),
            ("/docker/abc", "c1"),
            ("isolab/x", "c1"),
        ] {
            let mut v = base();
            v["linux"]["cgroupsPath"] = path.into();
            let (_d, cfg) = bundle(v);
            assert_eq!(cgroup_name(&cfg, "c1"), want, "{path}");
        }
    }

    #[test]
    fn the_state_document_follows_the_runtime_spec() {
        let r = Record {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            pid: 42,
            start_time: 1,
            created: "2026-01-01T00:00:00Z".into(),
            cgroup: "c1".into(),
            annotations: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            poststart: vec![],
            poststop: vec![],
        };
        let s = state_json(&r, Status::Running);
        for key in ["ociVersion", "id", "status", "pid", "bundle"] {
            assert!(s.get(key).is_some(), "{key}");
        }
        assert_eq!(s["pid"], 42);
        assert_eq!(state_json(&r, Status::Stopped)["pid"], 0);
        assert_eq!(s["annotations"]["k"], "v");
        // A record whose pid is not its process (wrong start time) is
        // stopped, never another process's.
        let me = Record {
            pid: std::process::id() as i32,
            start_time: 1,
            ..r
        };
        assert!(!alive(&me));
        let real = Record {
            start_time: proc_stat(me.pid).unwrap().1,
            ..me
        };
        assert!(alive(&real));
    }
}
