//! Container networks as Docker users know them: `none`, `host` and
//! `bridge`, and `-p` publishing a container's port on the host.
//!
//! The bridge (`isolab0` unless `--bridge`/`ISOLAB_BRIDGE` names another)
//! is marked with the home that made it; its addresses come from a small
//! lease file in that home (`network/<bridge>.json`), released when the
//! container ends, by `rm` and by `prune`. A published port is served by
//! a userspace proxy in the process that owns the container, as Docker's
//! `docker-proxy` does, and by DNAT rules, so traffic to the host's
//! addresses skips the proxy: nftables rules in a table of the
//! container's own where `nft` is installed, else iptables rules in a
//! chain of its own in the `nat` table, jumped to from `OUTPUT` (and
//! `PREROUTING` with forwarding on), where `iptables` is. `ISOLAB_NAT=nft`,
//! `iptables` or `proxy` picks one. The proxy always serves the loopback
//! addresses, which DNAT cannot reach without `route_localnet`.
//!
//! Nothing here runs unless `--network bridge` is asked for: the default
//! (`none`) never touches the host's network.
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use isolab_runtime::net::{self, BridgeAttach, Subnet};
use serde::{Deserialize, Serialize};

use crate::home::Home;

/// The bridge's name unless `--bridge` or `ISOLAB_BRIDGE` says otherwise.
pub const DEFAULT_BRIDGE: &str = "isolab0";
/// Its subnet unless `--subnet` or `ISOLAB_SUBNET` says otherwise.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/24";

/// `--network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Its own network namespace with only `lo` (the lab's default).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// Its own namespace, a veth on the lab bridge.
    Bridge,
    /// Another container's network namespace ([`NetSpec::container`]).
    Container,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Host => "host",
            Mode::Bridge => "bridge",
            Mode::Container => "container",
        }
    }
}

/// `udp` or `tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl Publish {
    pub fn parse(s: &str) -> Result<Publish> {
        let bad = || {
            anyhow!("invalid -p {s:?}: use [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp], e.g. -p 8080:80 or -p 127.0.0.1:5353:53/udp")
        };
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(bad()),
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (ip, hp, cp) = match parts.as_slice() {
            [hp, cp] => ("0.0.0.0", *hp, *cp),
            [ip, hp, cp] => (*ip, *hp, *cp),
            _ => return Err(bad()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        Ok(Publish {
            host_ip: ip.parse().map_err(|_| {
                anyhow!("invalid -p {s:?}: {ip:?} is not an IPv4 address (IPv6 is not published in this build)")
            })?,
            host_port: port(hp).ok_or_else(bad)?,
            container_port: port(cp).ok_or_else(bad)?,
            proto,
        })
    }
}

impl std::fmt::Display for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_ip,
            self.host_port,
            self.container_port,
            self.proto.as_str()
        )
    }
}

/// Which bridge, which subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    pub name: String,
    pub subnet: Subnet,
}

impl BridgeConfig {
    /// From the flags, else the environment, else the defaults.
    pub fn resolve(name: Option<&str>, subnet: Option<&str>) -> Result<BridgeConfig> {
        let name = name
            .map(str::to_owned)
            .or_else(|| std::env::var("ISOLAB_BRIDGE").ok())
            .unwrap_or_else(|| DEFAULT_BRIDGE.into());
        if name.is_empty()
            || name.len() > 15
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            bail!("invalid bridge name {name:?}: use 1 to 15 letters, digits, '-' or '_'");
        }
        let subnet = subnet
            .map(str::to_owned)
            .or_else(|| std::env::var("ISOLAB_SUBNET").ok())
            .unwrap_or_else(|| DEFAULT_SUBNET.into());
        let subnet = Subnet::parse(&subnet).map_err(|e| anyhow!(e))?;
        Ok(BridgeConfig { name, subnet })
    }
}

/// What an instance's network is, as its spec asks.
#[derive(Debug, Clone, Default)]
pub struct NetSpec {
    pub mode: Mode,
    pub publish: Vec<Publish>,
    /// `--bridge`, `--subnet` (bridge mode).
    pub bridge: Option<String>,
    pub subnet: Option<String>,
    /// `--network container:NAME`: whose network namespace to join.
    pub container: Option<String>,
}

impl NetSpec {
    /// Parses `--network none|host|bridge|container:NAME`.
    pub fn mode_from(s: &str) -> Result<(Mode, Option<String>)> {
        Ok(match s {
            "none" => (Mode::None, None),
            "host" => (Mode::Host, None),
            "bridge" => (Mode::Bridge, None),
            _ => match s.strip_prefix("container:") {
                Some(name) if !name.is_empty() => (Mode::Container, Some(name.to_owned())),
                _ => bail!("invalid --network {s:?}: use none, host, bridge or container:NAME"),
            },
        })
    }
}

impl NetSpec {
    pub fn check(&self) -> Result<()> {
        if !self.publish.is_empty() && self.mode != Mode::Bridge {
            bail!(
                "-p publishes a port of a container on the lab bridge: add --network bridge (with --network {} the container {})",
                self.mode.as_str(),
                match self.mode {
                    Mode::Host => "already listens on the host's own ports",
                    Mode::Container => "shares another container's network: publish the ports of that one",
                    _ => "has no interface to publish from",
                }
            );
        }
        if (self.bridge.is_some() || self.subnet.is_some()) && self.mode != Mode::Bridge {
            bail!("--bridge and --subnet choose the lab bridge: add --network bridge");
        }
        if self.mode == Mode::Bridge {
            BridgeConfig::resolve(self.bridge.as_deref(), self.subnet.as_deref())?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.publish {
            if !seen.insert((p.host_port, p.proto)) {
                bail!(
                    "host port {}/{} is published twice: give each -p its own host port",
                    p.host_port,
                    p.proto.as_str()
                );
            }
        }
        Ok(())
    }
}

/// The lease file of one bridge in one home.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Leases {
    subnet: Option<Subnet>,
    /// address → instance id
    leases: BTreeMap<Ipv4Addr, String>,
}

fn leases_path(home: &Home, bridge: &str) -> PathBuf {
    home.root().join("network").join(format!("{bridge}.json"))
}

/// Runs `f` on a bridge's leases with the file locked.
fn with_leases<T>(
    home: &Home,
    bridge: &str,
    f: impl FnOnce(&mut Leases) -> Result<T>,
) -> Result<T> {
    let path = leases_path(home, bridge);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file we hold open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut leases: Leases = if text.trim().is_empty() {
        Leases::default()
    } else {
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a lease file: remove it with `isolab prune` once no container uses the bridge",
                path.display()
            )
        })?
    };
    let out = f(&mut leases)?;
    let text = serde_json::to_string_pretty(&leases)?;
    use std::io::Seek;
    file.set_len(0)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    Ok(out)
}

/// The mark on a bridge this home made.
fn bridge_mark(home: &Home) -> String {
    format!("isolab home {}", home.cgroup_tag())
}

/// The host end of instance `id`'s veth pair.
pub fn host_if(id: &str) -> String {
    let mut n = format!("vi{id}");
    n.truncate(15);
    n
}

/// Makes the bridge unless this home already has it.
pub fn ensure_bridge(home: &Home, cfg: &BridgeConfig) -> Result<()> {
    net::ensure_bridge(&cfg.name, &cfg.subnet, &bridge_mark(home)).map_err(|e| anyhow!(e))
}

/// The host's server for a scenario that talks to the host (`net-rtt`,
/// `net-stream`): on the bridge's gateway address, or on the host's
/// loopback with `--network host`. Returns the `peer=` parameter and the
/// server, which serves until dropped. None when the scenario needs no
/// peer or the user gave one.
pub fn scenario_peer(
    home: &Home,
    spec: &crate::backend::InstanceSpec,
) -> Result<Option<(String, isolab_scenarios::workloads::peer::Server)>> {
    let sc = spec.scenario_entry()?;
    if !sc.needs_network()
        || !spec.command.is_empty()
        || spec.params.iter().any(|p| p.starts_with("peer="))
    {
        return Ok(None);
    }
    let ip: Ipv4Addr = match spec.net.mode {
        Mode::None | Mode::Container => bail!(
            "the {} scenario talks to a server on the host: run it with --network bridge (through a veth and the bridge) or --network host (over the host's loopback)",
            sc.name
        ),
        Mode::Host => Ipv4Addr::LOCALHOST,
        Mode::Bridge => {
            let cfg = BridgeConfig::resolve(spec.net.bridge.as_deref(), spec.net.subnet.as_deref())?;
            ensure_bridge(home, &cfg)?;
            cfg.subnet.gateway()
        }
    };
    let server = isolab_scenarios::workloads::peer::Server::start(ip.into())
        .with_context(|| format!("starting the {} server on {ip}", sc.name))?;
    Ok(Some((format!("peer={}", server.addr), server)))
}

/// Makes (or reuses) the bridge and leases an address for `id`.
pub fn attach(home: &Home, cfg: &BridgeConfig, id: &str) -> Result<BridgeAttach> {
    ensure_bridge(home, cfg)?;
    let ip = with_leases(home, &cfg.name, |l| {
        if let Some(s) = l.subnet.filter(|s| *s != cfg.subnet) {
            if !l.leases.is_empty() {
                bail!(
                    "bridge {} has leases in {s}, not {}: drop --subnet, or stop its containers and run `isolab prune`",
                    cfg.name,
                    cfg.subnet
                );
            }
        }
        l.subnet = Some(cfg.subnet);
        let free = (0..)
            .map_while(|n| cfg.subnet.host(n))
            .find(|ip| !l.leases.contains_key(ip))
            .ok_or_else(|| {
                anyhow!(
                    "bridge {}'s subnet {} is full: remove stopped containers (`isolab rm`, `isolab prune`) or use a larger --subnet",
                    cfg.name,
                    cfg.subnet
                )
            })?;
        l.leases.insert(free, id.to_owned());
        Ok(free)
    })?;
    Ok(BridgeAttach {
        bridge: cfg.name.clone(),
        host_if: host_if(id),
        subnet: cfg.subnet,
        ip,
    })
}

/// Releases `id`'s lease on every bridge of this home and its NAT table
/// (for an instance whose owner is gone); returns what was released.
pub fn release(home: &Home, id: &str) -> Vec<String> {
    let mut out = release_leases(home, id);
    if let Some(t) = Nat::table_name(home, id) {
        if nft_delete_table(&t) {
            out.push(format!("nftables table {t}"));
        }
    }
    if let Some(c) = Nat::chain_name(home, id) {
        if iptables_delete_chain(&c) {
            out.push(format!("iptables chain nat/{c}"));
        }
    }
    out
}

/// Releases `id`'s leases only (its owner knows it has no NAT table, and
/// spares the end of every bridged run an `nft` process).
fn release_leases(home: &Home, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for bridge in bridges(home) {
        let r = with_leases(home, &bridge, |l| {
            let mine: Vec<Ipv4Addr> = l
                .leases
                .iter()
                .filter(|(_, v)| *v == id)
                .map(|(k, _)| *k)
                .collect();
            for ip in &mine {
                l.leases.remove(ip);
            }
            Ok(mine)
        });
        if let Ok(ips) = r {
            out.extend(ips.iter().map(|ip| format!("lease {ip} on {bridge}")));
        }
    }
    out
}

/// The bridges this home holds lease files for.
fn bridges(home: &Home) -> Vec<String> {
    let dir = home.root().join("network");
    let mut out: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_owned)
        })
        .collect();
    out.sort();
    out
}

/// `prune`: leases, NAT tables and links of instances that are not
/// running; then each of this home's bridges that no lease holds.
pub fn prune(home: &Home, running: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mark = bridge_mark(home);
    let mut all = bridges(home);
    // Bridges marked as this home's, lease file or not.
    if let Ok(mut nl) = net::Netlink::open() {
        for name in nl.link_names().unwrap_or_default() {
            if !all.contains(&name) && nl.link_alias(&name).ok().flatten().as_deref() == Some(&mark)
            {
                all.push(name);
            }
        }
    }
    for bridge in all {
        let left = with_leases(home, &bridge, |l| {
            l.leases.retain(|ip, id| {
                let keep = running.contains(id);
                if !keep {
                    out.push(format!("lease {ip} on {bridge} (instance {id})"));
                }
                keep
            });
            Ok(l.leases.len())
        });
        if left.unwrap_or(1) == 0 {
            let mine = net::Netlink::open()
                .and_then(|mut nl| nl.link_alias(&bridge))
                .ok()
                .flatten()
                .is_some_and(|m| m == mark);
            if mine && net::remove_link(&bridge).unwrap_or(false) {
                out.push(format!("bridge {bridge}"));
            }
            let _ = fs::remove_file(leases_path(home, &bridge));
        }
    }
    // Host ends of veth pairs whose container is gone but whose
    // namespace something else still holds.
    if let Ok(mut nl) = net::Netlink::open() {
        for name in nl.link_names().unwrap_or_default() {
            let Some(id) = name.strip_prefix("vi") else {
                continue;
            };
            let ours = crate::instances::list(home).iter().any(|s| s.id == id);
            if ours && !running.iter().any(|r| r == id) && net::remove_link(&name).unwrap_or(false)
            {
                out.push(format!("link {name}"));
            }
        }
    }
    let prefix = format!("{}_", Nat::table_prefix(home));
    for t in nft_tables() {
        if let Some(id) = t.strip_prefix(&prefix) {
            if !running.iter().any(|r| r == id) && nft_delete_table(&t) {
                out.push(format!("nftables table {t}"));
            }
        }
    }
    let prefix = format!("{}_", Nat::chain_prefix(home));
    for c in iptables_chains() {
        if let Some(id) = c.strip_prefix(&prefix) {
            if !running.iter().any(|r| r == id) && iptables_delete_chain(&c) {
                out.push(format!("iptables chain nat/{c}"));
            }
        }
    }
    out
}

/// A bridged instance's network while it runs: its lease, its NAT table
/// and its port proxies. Dropping it releases all three.
pub struct Attached {
    home: Home,
    id: String,
    pub attach: BridgeAttach,
    proxies: Vec<Proxy>,
    nat: Option<Nat>,
    released: bool,
}

impl Attached {
    /// Leases an address, and binds the published ports (a port in use
    /// is refused here, before anything starts).
    pub fn new(home: &Home, spec: &NetSpec, id: &str) -> Result<Attached> {
        let cfg = BridgeConfig::resolve(spec.bridge.as_deref(), spec.subnet.as_deref())?;
        let attach = attach(home, &cfg, id)?;
        let mut me = Attached {
            home: home.clone(),
            id: id.to_owned(),
            attach,
            proxies: vec![],
            nat: None,
            released: false,
        };
        for p in &spec.publish {
            me.proxies.push(Proxy::bind(p, me.attach.ip)?);
        }
        if !spec.publish.is_empty() {
            me.nat = Nat::install(home, id, me.attach.ip, &spec.publish);
        }
        Ok(me)
    }

    /// Attaches a held network namespace (an OCI runtime's) to the bridge.
    pub fn attach_netns(&self, ns: &HeldNetns) -> Result<()> {
        net::attach_netns(&ns.file, &self.attach).map_err(|e| anyhow!(e))
    }

    /// One line per published port: what serves it.
    pub fn describe(&self) -> Vec<String> {
        let how = match &self.nat {
            Some(n) => format!(
                "{}{}, a userspace proxy for loopback",
                match n.kind {
                    NatKind::Nft => format!("nftables DNAT (table ip {})", n.table),
                    NatKind::Iptables => format!("iptables DNAT (chain nat/{})", n.table),
                },
                if n.prerouting {
                    " for local and remote clients"
                } else {
                    " for local clients (ip_forward is off, so remote clients reach the proxy)"
                }
            ),
            None => "a userspace proxy (no nft or iptables on this host, or ISOLAB_NAT=proxy)"
                .to_owned(),
        };
        self.proxies
            .iter()
            .map(|p| {
                format!(
                    "{} -> {}:{}/{} via {how}",
                    p.listen,
                    self.attach.ip,
                    p.publish.container_port,
                    p.publish.proto.as_str()
                )
            })
            .collect()
    }

    /// Stops the proxies and releases the lease and NAT table.
    pub fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for p in self.proxies.drain(..) {
            p.stop();
        }
        if let Some(n) = self.nat.take() {
            match n.kind {
                NatKind::Nft => nft_delete_table(&n.table),
                NatKind::Iptables => iptables_delete_chain(&n.table),
            };
        }
        // The kernel deletes a veth pair when the namespace of one end
        // goes, but asynchronously (a work queue), after the container has
        // been reaped: delete the host end now, so that nothing is left
        // when the run returns. Gone already is fine.
        let _ = net::remove_link(&self.attach.host_if);
        release_leases(&self.home, &self.id);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.release();
    }
}

/// A VM's network for one run (both monitors): with `--network bridge`,
/// a lease, published ports, and a tap on the bridge that the monitor
/// gets as an open descriptor; and, for a scenario that talks to the
/// host, the host's server. Everything is made before the monitor is
/// launched (outside its timed window, as for crun and runc) and goes when
/// this is dropped, after the monitor has been reaped.
pub struct VmNetwork {
    pub attached: Option<Attached>,
    /// The tap, to pass to the monitor.
    pub tap: Option<fs::File>,
    /// `key=value` scenario parameters for the guest: `ip=`, `gw=`,
    /// `peer=`.
    pub params: Vec<String>,
    _server: Option<isolab_scenarios::workloads::peer::Server>,
}

impl VmNetwork {
    pub fn new(home: &Home, spec: &crate::backend::InstanceSpec, id: &str) -> Result<VmNetwork> {
        let server = scenario_peer(home, spec)?;
        let mut me = VmNetwork {
            attached: None,
            tap: None,
            params: server.iter().map(|(p, _)| p.clone()).collect(),
            _server: server.map(|(_, s)| s),
        };
        if spec.net.mode == Mode::Bridge {
            let attached = Attached::new(home, &spec.net, id)?;
            let a = &attached.attach;
            me.params.extend([
                format!("ip={}/{}", a.ip, a.subnet.len),
                format!("gw={}", a.subnet.gateway()),
            ]);
            // Dropped (and the lease released) if the tap fails.
            let tap = net::attach_tap(a).map_err(|e| anyhow!(e))?;
            me.tap = Some(tap);
            me.attached = Some(attached);
        }
        Ok(me)
    }

    /// The guest NIC's address: locally administered, unicast, and the
    /// leased IPv4 address in its last four bytes, so it is unique on the
    /// bridge as the lease is.
    pub fn mac(&self) -> Option<String> {
        let ip = self.attached.as_ref()?.attach.ip.octets();
        Some(format!(
            "02:15:{:02x}:{:02x}:{:02x}:{:02x}",
            ip[0], ip[1], ip[2], ip[3]
        ))
    }

    /// What each published port goes through, for the run's notes.
    pub fn describe(&self) -> Vec<String> {
        self.attached
            .as_ref()
            .map(Attached::describe)
            .unwrap_or_default()
    }
}

/// A network namespace this process holds open for an OCI runtime, which
/// joins it by path (`linux.namespaces[].path` in `config.json`): a thread
/// that entered a new one and waits, so the path is
/// `/proc/<pid>/task/<tid>/ns/net` — valid from any mount namespace, and
/// nothing to unmount. The namespace (and the veth end in it) goes when
/// the holder is dropped and the runtime's container has exited.
pub struct HeldNetns {
    pub path: PathBuf,
    file: fs::File,
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeldNetns {
    pub fn new() -> Result<HeldNetns> {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel::<std::io::Result<i32>>();
        let (rel_tx, rel_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare with a constant flag; it affects this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let _ = tid_tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            let _ = tid_tx.send(Ok(nix::unistd::gettid().as_raw()));
            let _ = rel_rx.recv();
        });
        let tid = tid_rx
            .recv()
            .map_err(|_| anyhow!("the network namespace holder ended early"))?
            .context("unshare(CLONE_NEWNET) for the peer's network namespace")?;
        let path = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(HeldNetns {
            path,
            file,
            release: Some(rel_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for HeldNetns {
    fn drop(&mut self) {
        self.release.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A published port's userspace proxy: a listener in this process.
struct Proxy {
    publish: Publish,
    listen: SocketAddrV4,
    stop: Arc<AtomicBool>,
    fd: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn bind(p: &Publish, target_ip: Ipv4Addr) -> Result<Proxy> {
        let listen = SocketAddrV4::new(p.host_ip, p.host_port);
        let target = SocketAddrV4::new(target_ip, p.container_port);
        let in_use = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow!(
                    "host port {}/{} on {} is already in use: publish on another host port (-p OTHER:{})",
                    p.host_port,
                    p.proto.as_str(),
                    p.host_ip,
                    p.container_port
                )
            } else if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                anyhow!(
                    "{} is not an address of this host: publish on one it has, or on 0.0.0.0",
                    p.host_ip
                )
            } else {
                anyhow!("binding {listen}/{}: {e}", p.proto.as_str())
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (fd, thread) = match p.proto {
            Proto::Tcp => {
                let l = TcpListener::bind(listen).map_err(in_use)?;
                let fd = l.as_raw_fd();
                let stop2 = stop.clone();
                (fd, std::thread::spawn(move || tcp_proxy(l, target, stop2)))
            }
            Proto::Udp => {
                let s = UdpSocket::bind(listen).map_err(in_use)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                let fd = s.as_raw_fd();
                let stop2 = stop.clone();
                (fd, std::thread::spawn(move || udp_proxy(s, target, stop2)))
            }
        };
        Ok(Proxy {
            publish: *p,
            listen,
            stop,
            fd,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes a blocked accept() (it returns EINVAL); the UDP loop sees
        // the flag at its next read timeout.
        // SAFETY: shutdown on the listener's fd, which the thread owns
        // until it sees the flag and returns.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tcp_proxy(l: TcpListener, target: SocketAddrV4, stop: Arc<AtomicBool>) {
    for conn in l.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(upstream) = TcpStream::connect_timeout(&target.into(), Duration::from_secs(5))
            else {
                return; // the container does not listen: the client sees a close
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                return;
            };
            let t = std::thread::spawn(move || pipe(c2, u2));
            pipe(upstream, client);
            let _ = t.join();
        });
    }
}

/// Copies `from` → `to` until EOF, then half-closes `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn udp_proxy(s: UdpSocket, target: SocketAddrV4, stop: Arc<AtomicBool>) {
    // One upstream socket per client, each with a thread relaying the
    // container's answers back to that client.
    let clients: Arc<Mutex<BTreeMap<std::net::SocketAddr, UdpSocket>>> = Default::default();
    // Joined before returning: each holds a clone of the published socket,
    // which must be closed when the proxy stops.
    let mut relays = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        let mut map = clients.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::btree_map::Entry::Vacant(slot) = map.entry(from) {
            let Ok(up) = UdpSocket::bind("0.0.0.0:0").and_then(|u| u.connect(target).map(|_| u))
            else {
                continue;
            };
            let _ = up.set_read_timeout(Some(Duration::from_millis(200)));
            let (Ok(up2), Ok(back)) = (up.try_clone(), s.try_clone()) else {
                continue;
            };
            let stop2 = stop.clone();
            relays.push(std::thread::spawn(move || {
                let mut b = vec![0u8; 65536];
                while !stop2.load(Ordering::SeqCst) {
                    if let Ok(n) = up2.recv(&mut b) {
                        let _ = back.send_to(&b[..n], from);
                    }
                }
            }));
            slot.insert(up);
        }
        if let Some(up) = map.get(&from) {
            let _ = up.send(&buf[..n]);
        }
    }
    for r in relays {
        let _ = r.join();
    }
}

/// How DNAT rules are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Nft,
    Iptables,
}

/// What serves `-p` besides the proxy on this host: `ISOLAB_NAT`
/// (`nft`, `iptables`, `proxy`) if set, else nftables where `nft` is
/// installed, else iptables where `iptables` is, else nothing.
pub fn nat_kind() -> Option<NatKind> {
    let have = |p: &str| crate::host::which(p).is_some();
    match std::env::var("ISOLAB_NAT").as_deref() {
        Ok("nft") => have("nft").then_some(NatKind::Nft),
        Ok("iptables") => have("iptables").then_some(NatKind::Iptables),
        Ok("proxy") => None,
        _ if have("nft") => Some(NatKind::Nft),
        _ if have("iptables") => Some(NatKind::Iptables),
        _ => None,
    }
}

/// An instance's DNAT rules: an nftables table, or an iptables chain in
/// the `nat` table.
struct Nat {
    kind: NatKind,
    /// The nftables table's or the iptables chain's name.
    table: String,
    /// Whether remote clients are DNATed too (only with forwarding on).
    prerouting: bool,
}

impl Nat {
    fn table_prefix(home: &Home) -> String {
        format!("isolab_{}", home.cgroup_tag())
    }
    fn table_name(home: &Home, id: &str) -> Option<String> {
        id.chars()
            .all(|c| c.is_ascii_alphanumeric())
            .then(|| format!("{}_{id}", Nat::table_prefix(home)))
    }
    /// iptables chain names are at most 28 characters.
    fn chain_prefix(home: &Home) -> String {
        format!("ISL_{}", home.cgroup_tag())
    }
    fn chain_name(home: &Home, id: &str) -> Option<String> {
        let name = format!("{}_{id}", Nat::chain_prefix(home));
        (id.chars().all(|c| c.is_ascii_alphanumeric()) && name.len() <= 28).then_some(name)
    }

    /// Installs the rules with what this host has (see [`nat_kind`]);
    /// None if nothing works (the proxy serves every client then).
    fn install(home: &Home, id: &str, ip: Ipv4Addr, publish: &[Publish]) -> Option<Nat> {
        let forwarding =
            fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|s| s.trim() == "1");
        match nat_kind()? {
            NatKind::Nft => Nat::install_nft(home, id, ip, publish, forwarding),
            NatKind::Iptables => Nat::install_iptables(home, id, ip, publish, forwarding),
        }
    }

    /// iptables: a chain of the instance's own with one DNAT rule per
    /// port, jumped to from `OUTPUT` for non-loopback destinations (the
    /// proxy serves loopback) and, with forwarding on, from `PREROUTING`.
    fn install_iptables(
        home: &Home,
        id: &str,
        ip: Ipv4Addr,
        publish: &[Publish],
        forwarding: bool,
    ) -> Option<Nat> {
        let chain = Nat::chain_name(home, id)?;
        let mut steps: Vec<Vec<String>> = vec![vec!["-N".into(), chain.clone()]];
        for p in publish {
            let mut rule: Vec<String> = vec!["-A".into(), chain.clone()];
            if p.host_ip.is_unspecified() {
                rule.extend(["-m", "addrtype", "--dst-type", "LOCAL"].map(String::from));
            } else {
                rule.extend(["-d".into(), p.host_ip.to_string()]);
            }
            rule.extend([
                "-p".into(),
                p.proto.as_str().into(),
                "--dport".into(),
                p.host_port.to_string(),
                "-j".into(),
                "DNAT".into(),
                "--to-destination".into(),
                format!("{ip}:{}", p.container_port),
            ]);
            steps.push(rule);
        }
        steps.push(iptables_jump("-A", "OUTPUT", &chain));
        if forwarding {
            steps.push(iptables_jump("-A", "PREROUTING", &chain));
        }
        for step in &steps {
            if !iptables(step) {
                iptables_delete_chain(&chain);
                return None;
            }
        }
        Some(Nat {
            kind: NatKind::Iptables,
            table: chain,
            prerouting: forwarding,
        })
    }

    fn install_nft(
        home: &Home,
        id: &str,
        ip: Ipv4Addr,
        publish: &[Publish],
        forwarding: bool,
    ) -> Option<Nat> {
        let table = Nat::table_name(home, id)?;
        let mut pre = String::new();
        let mut out = String::new();
        for p in publish {
            let dst = if p.host_ip.is_unspecified() {
                "fib daddr type local".to_owned()
            } else {
                format!("ip daddr {}", p.host_ip)
            };
            let rule = format!(
                "{dst} {proto} dport {hp} counter dnat to {ip}:{cp}",
                proto = p.proto.as_str(),
                hp = p.host_port,
                cp = p.container_port
            );
            pre.push_str(&format!("    {rule}\n"));
            out.push_str(&format!("    ip daddr != 127.0.0.0/8 {rule}\n"));
        }
        let mut text = format!("table ip {table} {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{out}  }}\n");
        if forwarding {
            text.push_str(&format!("  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n"));
        }
        text.push_str("}\n");
        let ok = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .and_then(|mut c| {
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(text.as_bytes())?;
                }
                c.wait()
            })
            .is_ok_and(|s| s.success());
        ok.then_some(Nat {
            kind: NatKind::Nft,
            table,
            prerouting: forwarding,
        })
    }
}

/// The rule that sends `from`'s traffic to `chain` (`-A` adds, `-D`
/// deletes): from `OUTPUT`, only for destinations off loopback.
fn iptables_jump(op: &str, from: &str, chain: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![op.into(), from.into()];
    if from == "OUTPUT" {
        v.extend(["!", "-d", "127.0.0.0/8"].map(String::from));
    }
    v.extend(["-j".into(), chain.into()]);
    v
}

/// `iptables -w -t nat ARGS`; whether it succeeded.
fn iptables(args: &[String]) -> bool {
    crate::host::which("iptables").is_some()
        && std::process::Command::new("iptables")
            .args(["-w", "-t", "nat"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// The `nat` table's chains (`iptables -S`), for prune. Only where
/// iptables is this host's DNAT path: listing the `nat` table on a host
/// that does not use it could load its kernel module, a change `prune`
/// must not make.
fn iptables_chains() -> Vec<String> {
    if nat_kind() != Some(NatKind::Iptables) {
        return vec![];
    }
    lines_after("iptables", &["-w", "-t", "nat", "-S"], "-N ")
}

/// Removes an instance's chain and the jumps to it; true if the chain
/// existed. The built-in chains it was jumped from are removed too when
/// nothing else is left in them (iptables-nft makes them on first use):
/// an empty built-in nat chain with an ACCEPT policy does nothing, and
/// iptables makes it again when anyone adds a rule.
fn iptables_delete_chain(chain: &str) -> bool {
    if !iptables_chains().iter().any(|c| c == chain) {
        return false;
    }
    for from in ["OUTPUT", "PREROUTING"] {
        while iptables(&iptables_jump("-D", from, chain)) {}
    }
    iptables(&["-F".into(), chain.into()]);
    let gone = iptables(&["-X".into(), chain.into()]);
    for from in ["OUTPUT", "PREROUTING"] {
        let rules = std::process::Command::new("iptables")
            .args(["-w", "-t", "nat", "-S", from])
            .stderr(std::process::Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let only_policy = rules.lines().all(|l| l == format!("-P {from} ACCEPT"));
        if only_policy {
            // iptables-legacy refuses to delete a built-in chain: fine.
            iptables(&["-X".into(), from.into()]);
        }
    }
    gone
}

fn nft_tables() -> Vec<String> {
    if crate::host::which("nft").is_none() {
        return vec![];
    }
    lines_after("nft", &["list", "tables", "ip"], "table ip ")
}

/// What follows `prefix` on each line `program args` prints.
fn lines_after(program: &str, args: &[&str], prefix: &str) -> Vec<String> {
    std::process::Command::new(program)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn nft_delete_table(table: &str) -> bool {
    crate::host::which("nft").is_some()
        && std::process::Command::new("nft")
            .args(["delete", "table", "ip", table])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_names_fit_and_jumps_skip_loopback() {
        let home = Home::new("/var/lib/isolab");
        let id = crate::instances::new_id();
        let chain = Nat::chain_name(&home, &id).expect("a 12-character id fits");
        assert!(chain.len() <= 28, "{chain}");
        assert!(chain.starts_with(&format!("{}_", Nat::chain_prefix(&home))));
        assert_eq!(Nat::chain_name(&home, "a/b"), None, "only alphanumeric ids");
        assert_eq!(Nat::chain_name(&home, &"x".repeat(30)), None, "too long");
        assert_eq!(
            iptables_jump("-A", "OUTPUT", "C").join(" "),
            "-A OUTPUT ! -d 127.0.0.0/8 -j C"
        );
        assert_eq!(
            iptables_jump("-D", "PREROUTING", "C").join(" "),
            "-D PREROUTING -j C"
        );
    }

    #[test]
    fn publish_parses_like_docker() {
        let p = Publish::parse("8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.proto),
            (Ipv4Addr::UNSPECIFIED, 8080, 80, Proto::Tcp)
        );
        let p = Publish::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p.host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.to_string(), "127.0.0.1:5353->53/udp");
        for bad in [
            "80",
            "x:80",
            "8080:80/sctp",
            "0:80",
            "70000:80",
            "::1:80:80",
            "a:1:2",
        ] {
            let e = Publish::parse(bad).unwrap_err().to_string();
            assert!(e.contains("-p"), "{bad}: {e}");
        }
    }

    #[test]
    fn publishing_needs_the_bridge_and_distinct_ports() {
        let p = Publish::parse("8080:80").unwrap();
        let mut s = NetSpec {
            mode: Mode::None,
            publish: vec![p],
            ..Default::default()
        };
        assert!(s
            .check()
            .unwrap_err()
            .to_string()
            .contains("--network bridge"));
        s.mode = Mode::Bridge;
        s.check().unwrap();
        s.publish.push(Publish::parse("8080:81").unwrap());
        assert!(s.check().unwrap_err().to_string().contains("twice"));
        s.publish[1] = Publish::parse("8080:81/udp").unwrap();
        s.check().unwrap();
    }

    #[test]
    fn the_udp_proxy_relays_each_client_and_stops() {
        // A UDP echo server stands in for the container.
        let server =
            isolab_scenarios::workloads::peer::Server::start(Ipv4Addr::LOCALHOST.into()).unwrap();
        // A free port (another process could take it between the probe
        // and the bind: try again then).
        let (p, proxy) = (0..20)
            .find_map(|_| {
                let free = UdpSocket::bind("127.0.0.1:0").ok()?;
                let port = free.local_addr().ok()?.port();
                drop(free);
                let p = Publish {
                    host_ip: Ipv4Addr::LOCALHOST,
                    host_port: port,
                    container_port: server.addr.port(),
                    proto: Proto::Udp,
                };
                Proxy::bind(&p, Ipv4Addr::LOCALHOST).ok().map(|x| (p, x))
            })
            .expect("a free UDP port");
        let port = p.host_port;
        // The same port again is refused in one sentence.
        let again = Proxy::bind(&p, Ipv4Addr::LOCALHOST)
            .err()
            .unwrap()
            .to_string();
        assert!(again.contains("already in use"), "{again}");
        for client in 0..2u8 {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            c.connect(("127.0.0.1", port)).unwrap();
            for i in 0..3u8 {
                c.send(&[client, i]).unwrap();
                let mut b = [0u8; 8];
                let n = c.recv(&mut b).unwrap();
                assert_eq!(&b[..n], &[client, i], "client {client} datagram {i}");
            }
        }
        proxy.stop();
        assert!(
            UdpSocket::bind(("127.0.0.1", port)).is_ok(),
            "a stopped proxy frees its port"
        );
    }

    #[test]
    fn bridge_names_fit_the_kernel() {
        assert!(BridgeConfig::resolve(Some("isolab-test-0"), Some("10.9.0.0/24")).is_ok());
        assert!(BridgeConfig::resolve(Some("much-too-long-name"), None).is_err());
        assert!(BridgeConfig::resolve(Some("a b"), None).is_err());
        assert!(BridgeConfig::resolve(Some("b"), Some("10.9.0.1/24")).is_err());
        assert_eq!(host_if("0123456789ab"), "vi0123456789ab");
    }
}
