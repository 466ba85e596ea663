//! Docker Engine as a peer: the daemon architecture the daemon chapter
//! describes — CLI → REST API → dockerd → containerd → shim → runc — run
//! twice, so the book can show what each layer adds:
//!
//! * `docker` times `docker run --rm …` as a user types it (a fresh CLI
//!   process that talks to the daemon, streams the output, waits);
//! * `docker-api` times the lab calling the Engine's REST API itself over
//!   its unix socket: create → start → logs (streamed) → wait → delete.
//!
//! The lab starts its own `dockerd` (own data root, exec root and socket
//! under the home; no iptables, no bridge, no IP forwarding: the host's
//! network is untouched), once per isolab process and before any timed
//! window, from a thread that lives as long as the process, so the daemon
//! dies with isolab (PR_SET_PDEATHSIG) and is stopped cleanly at exit.
//! The image is the lab's own, loaded with `docker load` from the
//! docker-archive `isolab image save` writes. Each container hangs under
//! a cgroup with the containers' limits (`--cgroup-parent`), so it is
//! charged like every backend.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use isolab_runtime::cgroups::PARENT;
use isolab_scenarios::protocol::{self, HOLD_LINE};

use super::monitor_cgroup::MonitorCgroup;
use crate::backend::{Attach, Backend, InstanceSpec, Kind, Outcome, Unavailable};
use crate::clock::monotonic_ns;
use crate::home::Home;

/// The Engine API version asked for (Debian 12's Engine speaks 1.41).
const API: &str = "v1.41";

/// Docker Engine, through its CLI or its REST API; `isolab`: `docker run
/// --runtime isolab`, the lab's own runtime registered in the lab's
/// dockerd (`--add-runtime isolab=…/isolab-oci`) and driven by
/// containerd's shim.
pub struct Docker {
    api: bool,
    isolab: bool,
}

pub static DOCKER: Docker = Docker {
    api: false,
    isolab: false,
};
pub static DOCKER_API: Docker = Docker {
    api: true,
    isolab: false,
};
pub static DOCKER_ISOLAB: Docker = Docker {
    api: false,
    isolab: true,
};

/// The name isolab-oci is registered under in the lab's dockerd.
const ISOLAB_RUNTIME: &str = "isolab";

impl Backend for Docker {
    fn name(&self) -> &'static str {
        if self.api {
            "docker-api"
        } else if self.isolab {
            "docker-isolab"
        } else {
            "docker"
        }
    }
    fn about(&self) -> &'static str {
        if self.isolab {
            "docker run --rm --runtime isolab: dockerd, containerd and its shim driving the lab's own runtime (isolab-oci)"
        } else if self.api {
            "Docker Engine through its REST API (create, start, logs, wait), the lab's own dockerd"
        } else {
            "docker run --rm, as a user types it, against the lab's own dockerd"
        }
    }
    fn kind(&self) -> Kind {
        Kind::Container
    }
    fn baseline(&self) -> Option<&'static str> {
        Some("container")
    }
    fn variant_of(&self) -> Option<&'static str> {
        self.api.then_some("docker")
    }
    fn available(&self) -> Result<(), Unavailable> {
        if self.isolab {
            super::oci::ISOLAB_OCI.available()?;
        }
        for (p, what) in [
            ("dockerd", "the Docker Engine daemon"),
            ("docker", "the docker CLI"),
            ("containerd", "containerd"),
        ] {
            if crate::host::which(p).is_none() {
                return Err(Unavailable {
                    reason: format!("{what} ({p}) is not installed"),
                    install: Some("apt-get install docker.io".into()),
                });
            }
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(Unavailable {
                reason: "the docker peer needs root here (its own dockerd): run it with sudo"
                    .into(),
                install: None,
            });
        }
        Ok(())
    }
    fn check(&self, spec: &InstanceSpec, attach: Attach) -> Result<()> {
        super::peer::check(self.name(), spec, attach)
    }
    fn run(&self, home: &Home, spec: &InstanceSpec) -> Result<Outcome> {
        run(home, spec, self)
    }
    fn prune(&self, home: &Home) -> Vec<String> {
        if self.api || self.isolab {
            return vec![];
        }
        let mut removed = Vec::new();
        let dir = daemon_dir(home);
        // A daemon a killed isolab left running.
        if let Some(pid) = std::fs::read_to_string(dir.join("dockerd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let is_ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains(&dir.display().to_string()));
            if is_ours {
                stop_pid(pid);
                removed.push(format!("dockerd {pid}"));
            }
        }
        if dir.exists() {
            unmount_under(&dir);
            if std::fs::remove_dir_all(&dir).is_ok() {
                removed.push(format!("docker data {}", dir.display()));
            }
        }
        removed
    }
}

fn daemon_dir(home: &Home) -> PathBuf {
    home.peers_dir().join("docker")
}

/// The running daemon this process started.
struct Daemon {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

static DAEMON: Mutex<Option<Daemon>> = Mutex::new(None);

fn stop_pid(pid: i32) {
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until && Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; harmless if it is gone.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Unmounts what dockerd may have left mounted under `dir` (overlays of
/// a killed daemon), deepest first.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: umount2 with a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

extern "C" fn stop_at_exit() {
    stop_daemon();
}

/// Stops the daemon this process started, if any.
pub fn stop_daemon() {
    let Ok(mut g) = DAEMON.lock() else { return };
    if let Some(mut d) = g.take() {
        stop_pid(d.child.id() as i32);
        let _ = d.child.wait();
        let _ = std::fs::remove_file(&d.sock);
        let _ = std::fs::remove_dir_all(d.dir.join("exec"));
    }
}

/// The daemon's socket, starting the daemon on first use.
fn daemon(home: &Home) -> Result<PathBuf> {
    let mut g = DAEMON
        .lock()
        .map_err(|_| anyhow!("the docker daemon lock is poisoned"))?;
    if let Some(d) = g.as_mut() {
        if d.child.try_wait().ok().flatten().is_none() {
            return Ok(d.sock.clone());
        }
        *g = None;
    }
    let dir = daemon_dir(home);
    for sub in ["data", "exec"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let sock = dir.join("docker.sock");
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::File::create(dir.join("dockerd.log"))?;
    let dockerd = crate::host::which("dockerd").ok_or_else(|| anyhow!("dockerd vanished"))?;
    let mut cmd = Command::new(dockerd);
    crate::host::in_host_mount_namespace(&mut cmd);
    crate::host::die_with_parent(&mut cmd);
    cmd.arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("dockerd.pid"))
        .arg("--host")
        .arg(format!("unix://{}", sock.display()))
        .args([
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
            "--ip-masq=false",
            "--storage-driver=overlay2",
        ])
        .args(
            super::oci::ISOLAB_OCI
                .program()
                .map(|p| format!("--add-runtime={ISOLAB_RUNTIME}={}", p.display())),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // From a thread that lives as long as the process: PR_SET_PDEATHSIG
    // fires when the spawning *thread* ends.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    let child = rx
        .recv()
        .map_err(|_| anyhow!("the thread starting dockerd died"))?
        .context("starting dockerd")?;
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: atexit with a function that only locks, signals and waits.
    REGISTER.call_once(|| unsafe {
        libc::atexit(stop_at_exit);
    });
    let mut d = Daemon {
        child,
        sock: sock.clone(),
        dir: dir.clone(),
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = request(&sock, "GET", "/_ping", None) {
            if r.status == 200 {
                break;
            }
        }
        if let Ok(Some(st)) = d.child.try_wait() {
            let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
            bail!(
                "dockerd exited ({st}) before answering: {}",
                protocol::tail(&log, 5)
            );
        }
        if Instant::now() > until {
            stop_pid(d.child.id() as i32);
            let _ = d.child.wait();
            bail!(
                "dockerd did not answer on {} within 30 s: see {}",
                sock.display(),
                dir.join("dockerd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    *g = Some(d);
    Ok(sock)
}

/// An HTTP/1.1 response from the Engine: status and a body reader
/// (chunked transfer decoded).
struct Response {
    status: u16,
    body: Box<dyn BufRead + Send>,
}

impl Response {
    fn text(mut self) -> Result<String> {
        let mut s = String::new();
        self.body.by_ref().take(4 << 20).read_to_string(&mut s)?;
        Ok(s)
    }
}

/// A chunked-transfer decoder.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        Ok(n)
    }
}

/// One request to the Engine over its unix socket.
fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Response> {
    let mut s =
        UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("the Engine answered {line:?}"))?;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        let l = line.to_ascii_lowercase();
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    let body: Box<dyn BufRead + Send> = if chunked {
        Box::new(BufReader::new(Chunked {
            inner: r,
            left: 0,
            done: false,
        }))
    } else {
        Box::new(r)
    };
    Ok(Response { status, body })
}

fn expect(r: Response, want: &[u16], what: &str) -> Result<Response> {
    if want.contains(&r.status) {
        return Ok(r);
    }
    let code = r.status;
    let text = r.text().unwrap_or_default();
    bail!("the Engine refused to {what} ({code}): {}", text.trim())
}

/// The lab's image in the daemon, loaded once (by its content).
fn ensure_image(home: &Home, sock: &Path, spec: &InstanceSpec) -> Result<String> {
    use sha2::Digest;
    let img = crate::images::open(home, &spec.image)?;
    let id = sha2::Sha256::digest(serde_json::to_vec(&(&img.layers, &img.config))?);
    let hex: String = id.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let repo: String = img
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let tag = format!("isolab/{repo}:{hex}");
    if request(sock, "GET", &format!("/{API}/images/{tag}/json"), None)?.status == 200 {
        return Ok(tag);
    }
    let dir = tempfile::Builder::new()
        .prefix(".tmp-docker-load-")
        .tempdir_in(home.root())?;
    let archive = dir.path().join("image.tar");
    isolab_runtime::archive::save(
        &home.store(),
        std::slice::from_ref(&img.name),
        &archive,
        isolab_runtime::archive::Format::DockerArchive,
    )?;
    let out = Command::new("docker")
        .arg("--host")
        .arg(format!("unix://{}", sock.display()))
        .args(["load", "-q", "-i"])
        .arg(&archive)
        .output()
        .context("running docker load")?;
    if !out.status.success() {
        bail!(
            "docker load refused the lab's image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // `docker load` names it as the archive does; give it the lab's tag.
    let loaded = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: ").map(str::to_owned))
        .ok_or_else(|| anyhow!("docker load named no image"))?;
    let (r, t) = tag.split_once(':').unwrap_or((&tag, "latest"));
    expect(
        request(
            sock,
            "POST",
            &format!("/{API}/images/{loaded}/tag?repo={r}&tag={t}"),
            None,
        )?,
        &[201],
        "tag the lab's image",
    )?;
    Ok(tag)
}

fn run(home: &Home, spec: &InstanceSpec, d: &Docker) -> Result<Outcome> {
    let (name, api) = (d.name(), d.api);
    // Before the timed window: the daemon (once per process) and the image.
    let sock = daemon(home)?;
    let image = ensure_image(home, &sock, spec)?;
    let id = format!("isolab-{name}-{}", crate::instances::new_id());
    let cgroup = MonitorCgroup::with_limits(home, &id, &spec.limits)?;
    let parent = format!("/{PARENT}/{}", home.cgroup_name(&id));
    let argv = crate::instances::describe(spec);
    let mut memory = BTreeMap::new();
    let mut on_line = |line: &str| {
        if line == HOLD_LINE {
            if let Some(v) = cgroup.charged_bytes() {
                memory.insert("hold_cgroup_charged".to_owned(), v);
            }
        }
    };
    let launch;
    let (output, code) = if api {
        launch = monotonic_ns();
        let created = expect(
            request(
                &sock,
                "POST",
                &format!("/{API}/containers/create?name={id}"),
                Some(&serde_json::json!({
                    "Image": image,
                    "Cmd": argv,
                    "Hostname": id,
                    "HostConfig": {
                        "NetworkMode": "none",
                        "CgroupParent": parent,
                        "Binds": spec.volumes.iter().map(super::podman::volume_spec).collect::<Vec<_>>(),
                    },
                })),
            )?,
            &[201],
            "create the container",
        )?;
        let cid = serde_json::from_str::<serde_json::Value>(&created.text()?)?["Id"]
            .as_str()
            .unwrap_or(&id)
            .to_owned();
        let result = (|| -> Result<(String, i32)> {
            expect(
                request(
                    &sock,
                    "POST",
                    &format!("/{API}/containers/{cid}/start"),
                    None,
                )?,
                &[204],
                "start the container",
            )?;
            let logs = expect(
                request(
                    &sock,
                    "GET",
                    &format!("/{API}/containers/{cid}/logs?follow=1&stdout=1&stderr=1"),
                    None,
                )?,
                &[200],
                "stream the logs",
            )?;
            let output = demux(logs.body, &mut on_line)?;
            let waited = expect(
                request(
                    &sock,
                    "POST",
                    &format!("/{API}/containers/{cid}/wait"),
                    None,
                )?,
                &[200],
                "wait for the container",
            )?;
            let code = serde_json::from_str::<serde_json::Value>(&waited.text()?)?["StatusCode"]
                .as_i64()
                .unwrap_or(255) as i32;
            Ok((output, code))
        })();
        let _ = request(
            &sock,
            "DELETE",
            &format!("/{API}/containers/{cid}?force=1"),
            None,
        );
        result?
    } else {
        let mut cmd = Command::new("docker");
        cmd.arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--name",
                &id,
                "--hostname",
                &id,
                "--cgroup-parent",
                &parent,
            ])
            .args(
                d.isolab
                    .then_some(["--runtime", ISOLAB_RUNTIME])
                    .into_iter()
                    .flatten(),
            )
            .args(super::podman::volume_args(&spec.volumes))
            .arg(&image)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        launch = monotonic_ns();
        let mut child = cmd.spawn().context("starting docker")?;
        if let Some(hook) = &spec.on_spawn {
            hook(child.id() as i32);
        }
        let err = child
            .stderr
            .take()
            .map(|e| std::thread::spawn(move || crate::capture::read_all(e)));
        let out = child
            .stdout
            .take()
            .map(|o| crate::capture::read_lines(o, &mut on_line))
            .unwrap_or_default();
        let status = child.wait()?;
        let err = err.and_then(|t| t.join().ok()).unwrap_or_default();
        (format!("{out}{err}"), status.code().unwrap_or(255))
    };
    let exit_ns = monotonic_ns();
    for dir in cgroup.paths() {
        super::podman::remove_children(&dir);
    }
    let limit_mib = spec.limits.memory_bytes.unwrap_or(0) >> 20;
    if let Some(p) = cgroup.finish(limit_mib).map_err(|_| {
        anyhow!("the docker container went over its memory limit ({limit_mib} MiB) and was killed")
    })? {
        memory.insert("instance_cgroup_peak".to_owned(), p);
    }
    super::peer::Finished {
        name,
        spec,
        id,
        launch,
        exit_ns,
        code,
        output,
        memory,
        host_clock: true,
        note: if d.isolab {
            "launch = spawn of the docker CLI with --runtime isolab (isolab-oci create/start through containerd's shim); exit = the CLI's exit; ready stamped by the agent (same host clock); the daemon was started, and the image loaded, before the timed window".to_owned()
        } else if api {
            "launch = the lab's first REST call (create); exit = the wait call's answer; ready stamped by the agent (same host clock); the daemon was started, and the image loaded, before the timed window".to_owned()
        } else {
            "launch = spawn of the docker CLI; exit = the CLI's exit; ready stamped by the agent (same host clock); the daemon was started, and the image loaded, before the timed window".to_owned()
        },
    }
    .outcome()
}

/// Demultiplexes the Engine's log stream (8-byte frame headers: stream,
/// 0, 0, 0, big-endian length) into text, line by line.
fn demux(mut r: Box<dyn BufRead + Send>, on_line: &mut dyn FnMut(&str)) -> Result<String> {
    let mut out = String::new();
    let mut pending = String::new();
    let mut head = [0u8; 8];
    loop {
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if len > 16 << 20 {
            bail!("the Engine sent a log frame of {len} bytes: refused");
        }
        let mut frame = vec![0u8; len];
        r.read_exact(&mut frame)?;
        pending.push_str(&String::from_utf8_lossy(&frame));
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            on_line(line.trim_end_matches('\n'));
            if out.len() < crate::capture::KEEP_BYTES {
                out.push_str(&line);
            }
        }
    }
    out.push_str(&pending);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_frames_and_chunks_are_decoded() {
        let mut frames = Vec::new();
        for (stream, text) in [(1u8, "hello\nwor"), (2, "ld\n"), (1, "tail")] {
            frames.extend_from_slice(&[stream, 0, 0, 0]);
            frames.extend_from_slice(&(text.len() as u32).to_be_bytes());
            frames.extend_from_slice(text.as_bytes());
        }
        let mut lines = Vec::new();
        let out = demux(Box::new(std::io::Cursor::new(frames)), &mut |l| {
            lines.push(l.to_owned())
        })
        .unwrap();
        assert_eq!(lines, ["hello", "world"]);
        assert_eq!(out, "hello\nworld\ntail");
        let chunked = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        let mut c = Chunked {
            inner: std::io::Cursor::new(&chunked[..]),
            left: 0,
            done: false,
        };
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
    }
}
