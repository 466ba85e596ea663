//! The instance store and the Docker verbs over it: `ps`, `logs`, `stop`,
//! `rm`, `prune`, and `run -d` for every backend.
//!
//! Each instance has a directory under [`Home::instances_dir`] holding its
//! `state.json` (a [`State`]), its log when detached, and — for the lab's
//! container — its writable layer. A foreground instance is recorded while
//! it runs and removed when it ends; a detached one belongs to a *shim*, a
//! forked copy of `isolab` in a session of its own, which runs the
//! instance through its backend with its output in the log and records
//! its pid, then its exit code.
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, InstanceSpec};
use crate::home::Home;

/// Lifecycle of an instance, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// Per-instance state, `state.json` in the instance's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub name: String,
    pub image: String,
    /// The backend running it (records from before backends were named
    /// are containers).
    #[serde(default = "container_backend")]
    pub backend: String,
    pub command: Vec<String>,
    pub status: Status,
    /// Host pid of the process that is the instance: the container's pid
    /// 1, or a VM's monitor process.
    pub pid: i32,
    /// The isolab process that owns the instance (foreground isolab or the
    /// detached shim); when it is gone the instance is stale.
    pub owner_pid: i32,
    pub created_unix: u64,
    pub exit_code: Option<i32>,
    pub detached: bool,
    /// The image layers the instance runs on: `prune` keeps them while it
    /// lives, even if its image was removed.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Its address on the lab bridge, and its published ports
    /// (`--network bridge`, `-p`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::network::Publish>,
}

fn container_backend() -> String {
    "container".into()
}

/// What `ps` shows: the recorded status checked against the living.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effective {
    Created,
    Running,
    Exited(i32),
    /// Its owner is gone without recording an end.
    Dead,
}

impl std::fmt::Display for Effective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effective::Created => f.write_str("created"),
            Effective::Running => f.write_str("running"),
            Effective::Exited(c) => write!(f, "exited ({c})"),
            Effective::Dead => f.write_str("dead (run `isolab prune`)"),
        }
    }
}

impl State {
    pub fn effective(&self) -> Effective {
        match self.status {
            Status::Created | Status::Running if !alive(self.owner_pid) => Effective::Dead,
            Status::Created => Effective::Created,
            Status::Running => Effective::Running,
            Status::Exited => Effective::Exited(self.exit_code.unwrap_or(-1)),
        }
    }
}

/// Whether `pid` is a living process: a zombie (dead, not yet reaped —
/// an orphaned shim waits for an init that may be slow to reap) is not.
fn alive(pid: i32) -> bool {
    pid > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| process_state(&s))
            .is_some_and(|st| st != 'Z' && st != 'X')
}

/// The state letter of a `/proc/PID/stat` line (after the parenthesised
/// command name, which may itself hold spaces and parentheses).
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A short random id (12 hex digits).
pub fn new_id() -> String {
    let mut b = [0u8; 6];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks a user-chosen instance name.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "invalid container name {:?}: use 1 to 128 letters, digits, '-', '_' and '.'",
            crate::host::printable(name)
        );
    }
    Ok(())
}

/// An instance's record while it is being made or run. Unless kept
/// ([`Record::keep`]), dropping it removes the instance's directory, so an
/// early `?` can never leave a half-made instance behind.
pub struct Record {
    home: Home,
    pub state: State,
    keep: bool,
}

impl Record {
    /// Makes a new instance directory and records it as created.
    pub fn create(
        home: &Home,
        backend: &str,
        spec: &InstanceSpec,
        command: Vec<String>,
        detached: bool,
    ) -> Result<Record> {
        let rec = Record::unsaved(home, backend, spec, command, detached)?;
        rec.save()?;
        Ok(rec)
    }

    /// Makes a new instance directory and its record, for the caller to
    /// complete and [`save`](Record::save) once (every save is a file
    /// replaced on the launch path).
    pub fn unsaved(
        home: &Home,
        backend: &str,
        spec: &InstanceSpec,
        command: Vec<String>,
        detached: bool,
    ) -> Result<Record> {
        let id = new_id();
        let name = spec.name.clone().unwrap_or_else(|| id.clone());
        check_name(&name)?;
        // Only a chosen name can clash (an id is fresh); no need to read
        // every instance's state on the launch path otherwise.
        if spec.name.is_some() && list(home).iter().any(|s| s.name == name) {
            bail!("a container named {name:?} already exists: remove it with `isolab rm {name}` or pick another --name");
        }
        let dir = home.instance_dir(&id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let rec = Record {
            home: home.clone(),
            state: State {
                id,
                name,
                image: spec.image.clone(),
                backend: backend.to_owned(),
                command,
                status: Status::Created,
                pid: 0,
                owner_pid: std::process::id() as i32,
                created_unix: crate::clock::unix_now(),
                exit_code: None,
                detached,
                layers: vec![],
                ip: None,
                ports: vec![],
            },
            keep: false,
        };
        Ok(rec)
    }

    /// Re-opens a record another process made (the shim's, for the
    /// backend that fills it in). It is kept when dropped.
    pub fn open(home: &Home, id: &str) -> Result<Record> {
        let state =
            read_state(home, id).ok_or_else(|| anyhow::anyhow!("instance {id} has no state"))?;
        Ok(Record {
            home: home.clone(),
            state,
            keep: true,
        })
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn dir(&self) -> PathBuf {
        self.home.instance_dir(&self.state.id)
    }

    /// Writes the state (atomically: a temp file renamed into place).
    pub fn save(&self) -> Result<()> {
        write_state(&self.home, &self.state)
    }

    /// Records the instance's process as running.
    pub fn running(&mut self, pid: i32) {
        self.state.status = Status::Running;
        self.state.pid = pid;
        let _ = self.save();
    }

    /// Records the end of the instance.
    pub fn exited(&mut self, code: i32) {
        self.state.status = Status::Exited;
        self.state.exit_code = Some(code);
        let _ = self.save();
    }

    /// Keeps the directory when dropped (a detached instance, until `rm`).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(self.dir());
        }
    }
}

/// A directory removed when this goes out of scope.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_state(home: &Home, st: &State) -> Result<()> {
    let path = home.state_file(&st.id);
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(st)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path)?;
    Ok(())
}

fn read_state(home: &Home, id: &str) -> Option<State> {
    serde_json::from_slice(&fs::read(home.state_file(id)).ok()?).ok()
}

/// All instances with their state, oldest first.
pub fn list(home: &Home) -> Vec<State> {
    let mut v: Vec<State> = fs::read_dir(home.instances_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_state(home, &e.file_name().to_string_lossy()))
        .collect();
    v.sort_by_key(|s| s.created_unix);
    v
}

/// Finds an instance by name, id or id prefix.
pub fn find(home: &Home, key: &str) -> Result<State> {
    if key.is_empty() {
        bail!("no container named \"\": give a name or an id (`isolab ps -a` lists them)");
    }
    let all = list(home);
    let hits: Vec<&State> = match all.iter().find(|s| s.name == key || s.id == key) {
        Some(exact) => vec![exact],
        None => all.iter().filter(|s| s.id.starts_with(key)).collect(),
    };
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "no container {:?}: `isolab ps -a` lists them",
            crate::host::printable(key)
        ),
        _ => bail!(
            "{:?} matches several containers: give more of the id",
            crate::host::printable(key)
        ),
    }
}

/// `isolab ps`: a table of running instances (all with `all`).
pub fn ps(home: &Home, all: bool) -> String {
    let mut out = format!(
        "{:<14} {:<16} {:<10} {:<10} {:<28} {:<24} {}\n",
        "ID", "NAME", "BACKEND", "IMAGE", "STATUS", "NETWORK", "COMMAND"
    );
    for s in list(home) {
        let st = s.effective();
        if !all && st != Effective::Running {
            continue;
        }
        out.push_str(&format!(
            "{:<14} {:<16} {:<10} {:<10} {:<28} {:<24} {}\n",
            s.id,
            s.name,
            s.backend,
            s.image,
            st.to_string(),
            network_column(&s),
            s.command.join(" ")
        ));
    }
    out
}

/// `ps`'s NETWORK: the bridge address and published ports, as
/// `10.213.0.2 8080->80/tcp`.
fn network_column(s: &State) -> String {
    let mut words: Vec<String> = s.ip.iter().map(|ip| ip.to_string()).collect();
    words.extend(s.ports.iter().map(|p| {
        let ip = if p.host_ip.is_unspecified() {
            String::new()
        } else {
            format!("{}:", p.host_ip)
        };
        format!("{ip}{}", p.to_string().rsplit_once(':').map_or("", |x| x.1))
    }));
    if words.is_empty() {
        "-".into()
    } else {
        words.join(" ")
    }
}

/// `isolab logs [-f]`: a detached instance's output.
pub fn logs(home: &Home, key: &str, follow: bool, raw: bool, out: &mut dyn Write) -> Result<()> {
    if !raw {
        let mut h = crate::capture::Human::new(out);
        let r = logs(home, key, follow, true, &mut h);
        h.finish()?;
        return r;
    }
    let s = find(home, key)?;
    let mut f = fs::File::open(home.log_file(&s.id))
        .with_context(|| format!("{} has no log (it was not run with -d)", s.name))?;
    let mut buf = [0u8; 8192];
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        let running =
            read_state(home, &s.id).is_some_and(|st| st.effective() == Effective::Running);
        if !follow || !running {
            // One last read after the state changed.
            let mut rest = Vec::new();
            f.read_to_end(&mut rest)?;
            out.write_all(&rest)?;
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `isolab stop`: SIGTERM, then SIGKILL after `timeout_s`.
pub fn stop(home: &Home, key: &str, timeout_s: u64) -> Result<()> {
    let s = find(home, key)?;
    if s.effective() != Effective::Running {
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(s.pid);
    let ended = || read_state(home, &s.id).is_none_or(|st| st.status != Status::Running);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    while std::time::Instant::now() < deadline {
        if ended() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // pid 1 of a pid namespace ignores signals it has no handler for:
    // SIGKILL from outside always works.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..250 {
        if ended() || !alive(s.owner_pid) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!("container {} did not stop", s.name)
}

/// `isolab rm [-f]`.
pub fn rm(home: &Home, key: &str, force: bool) -> Result<()> {
    let s = find(home, key)?;
    if s.effective() == Effective::Running {
        if !force {
            bail!(
                "container {} is running: stop it first (`isolab stop {}`) or use rm -f",
                s.name,
                s.name
            );
        }
        stop(home, &s.id, 0)?;
    }
    fs::remove_dir_all(home.instance_dir(&s.id)).with_context(|| format!("removing {}", s.id))
}

/// Removes stopped and stale instances, then asks every backend to clean
/// what a killed run of it left. Returns a line per removed thing, and
/// the ids of instances still running.
pub fn prune_records(home: &Home) -> Result<(Vec<String>, Vec<String>)> {
    let mut removed = Vec::new();
    let mut keep = Vec::new();
    for e in fs::read_dir(home.instances_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        match read_state(home, &e.file_name().to_string_lossy()) {
            Some(s) if s.effective() == Effective::Running => keep.push(s.id),
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
    Ok((removed, keep))
}

/// `isolab run -d` on any backend: forks a shim that owns the instance
/// and prints its id once the instance runs (or its error).
pub fn run_detached(
    home: &Home,
    backend: &'static dyn Backend,
    spec: &InstanceSpec,
) -> Result<String> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: isolab is single-threaded here; the shim continues as a plain
    // copy of this process and ends with _exit.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            let _ = nix::unistd::setsid();
            let code = match shim(home, backend, spec, ready_w) {
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
                None if msg.is_empty() => {
                    bail!("the detached instance's shim died before it started")
                }
                None => bail!("{}", msg.trim_start_matches("err ").trim()),
            }
        }
    }
}

fn shim(
    home: &Home,
    backend: &'static dyn Backend,
    spec: &InstanceSpec,
    ready_w: OwnedFd,
) -> Result<()> {
    let ready = Arc::new(std::sync::Mutex::new(Some(fs::File::from(ready_w))));
    let tell = |msg: String| {
        if let Some(mut f) = ready.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = f.write_all(msg.as_bytes());
        }
    };
    let mut rec = match Record::create(home, backend.name(), spec, describe(spec), true) {
        Ok(r) => r,
        Err(e) => {
            tell(format!("err {e:#}"));
            return Ok(());
        }
    };
    // Detach from the terminal: stdin from /dev/null, output to the log.
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(home.log_file(rec.id()))
    };
    let null = fs::OpenOptions::new().read(true).open("/dev/null");
    let (log, null) = match (log, null) {
        (Ok(l), Ok(n)) => (l, n),
        (Err(e), _) | (_, Err(e)) => {
            tell(format!("err opening the instance's log: {e}"));
            return Ok(());
        }
    };
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    nix::unistd::dup2(log.as_raw_fd(), 1)?;
    nix::unistd::dup2(log.as_raw_fd(), 2)?;
    let mut spec = spec.clone();
    let id = rec.id().to_owned();
    spec.record = Some(id.clone());
    let spawned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    spec.on_spawn = Some(Arc::new({
        let (ready, spawned, home, id) = (ready.clone(), spawned.clone(), home.clone(), id.clone());
        move |pid: i32| {
            spawned.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Ok(mut r) = Record::open(&home, &id) {
                r.running(pid);
            }
            if let Some(mut f) = ready.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = write!(f, "ok {id}");
            }
        }
    }));
    let result = backend.run_attached(home, &spec, false, false);
    if !spawned.load(std::sync::atomic::Ordering::SeqCst) {
        // Nothing ran: leave nothing behind (the record's drop removes its
        // directory) before saying why, so the caller never sees a rest.
        let msg = match &result {
            Err(e) => format!("{e:#}"),
            Ok(code) => format!("the instance ended before it started (exit code {code})"),
        };
        drop(rec);
        tell(format!("err {msg}"));
        return Ok(());
    }
    rec.keep();
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("isolab: {e:#}");
            125
        }
    };
    if let Ok(mut r) = Record::open(home, &id) {
        r.exited(code);
    }
    Ok(())
}

/// The command an instance runs, as `ps` shows it.
pub fn describe(spec: &InstanceSpec) -> Vec<String> {
    if !spec.command.is_empty() {
        return spec.command.clone();
    }
    let mut v = vec![
        crate::images::AGENT_PATH.to_owned(),
        "--scenario".into(),
        spec.scenario.clone(),
    ];
    for p in &spec.params {
        v.push("--param".into());
        v.push(p.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: Status, owner: i32) -> State {
        State {
            id: "abc".into(),
            name: "n".into(),
            image: "default".into(),
            backend: "container".into(),
            command: vec![],
            status,
            pid: 0,
            owner_pid: owner,
            created_unix: 0,
            exit_code: Some(3),
            detached: true,
            layers: vec![],
            ip: None,
            ports: vec![],
        }
    }

    #[test]
    fn zombies_are_not_alive() {
        assert_eq!(process_state("12 (a b) c) S 1 2"), Some('S'));
        assert_eq!(process_state("12 (sh) Z 1"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
        assert!(alive(std::process::id() as i32));
        assert!(!alive(0));
    }

    #[test]
    fn effective_status_checks_the_owner() {
        let me = std::process::id() as i32;
        assert_eq!(state(Status::Running, me).effective(), Effective::Running);
        assert_eq!(state(Status::Running, 0).effective(), Effective::Dead);
        assert_eq!(state(Status::Exited, 0).effective(), Effective::Exited(3));
        assert_eq!(Effective::Exited(3).to_string(), "exited (3)");
    }

    #[test]
    fn state_json_keeps_its_shape_and_reads_old_records() {
        let v = serde_json::to_value(state(Status::Running, 1)).unwrap();
        assert_eq!(v["status"], "running");
        let old = r#"{"id":"a","name":"a","image":"default","command":[],"status":"exited","pid":1,"owner_pid":1,"created_unix":0,"exit_code":0,"detached":true}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert_eq!(
            (s.backend.as_str(), s.status),
            ("container", Status::Exited)
        );
    }

    #[test]
    fn names_and_lookups() {
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"x".repeat(129)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        assert!(find(&home, "")
            .unwrap_err()
            .to_string()
            .contains("give a name"));
        let spec = InstanceSpec::default();
        let rec = Record::create(&home, "container", &spec, vec![], false).unwrap();
        let id = rec.id().to_owned();
        assert_eq!(find(&home, &id[..4]).unwrap().id, id);
        drop(rec);
        assert!(
            !home.instance_dir(&id).exists(),
            "a dropped record leaves nothing"
        );
    }
}
