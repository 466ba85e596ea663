//! A container's network: the lab bridge, a veth pair per container, its
//! address and default route — through rtnetlink (the rust-netlink crates),
//! never by running `ip`.
//!
//! ```text
//!   host network namespace                 container's network namespace
//!   ----------------------                 -----------------------------
//!   isolab0 (bridge, 10.213.0.1/24)
//!     └── vi<id> (veth) ◀──── pair ────▶   eth0 (10.213.0.N/24)
//!                                          default via 10.213.0.1
//! ```
//!
//! Everything made here dies with the container's namespace: the kernel
//! deletes a veth pair when either end's namespace goes, so a container
//! that exits (or is killed) leaves no link behind. The bridge outlives
//! containers, as `docker0` does, until `prune` removes it unused.
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// An IPv4 subnet, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub len: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/len` (16 to 29 bits: room for a gateway and at
    /// least a few containers, and not a whole private range).
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let bad = || {
            format!(
                "invalid subnet {s:?}: use an IPv4 network such as 10.213.0.0/24 (prefix 16 to 29)"
            )
        };
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if !(16..=29).contains(&len) {
            return Err(bad());
        }
        let sub = Subnet { base: ip, len };
        if sub.network() != ip {
            return Err(format!(
                "invalid subnet {s:?}: host bits are set; the network is {}/{len}",
                sub.network()
            ));
        }
        Ok(sub)
    }
    fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0)
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) & self.mask())
    }
    /// The bridge's own address: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }
    /// The `n`th address after the gateway (n from 0), if inside.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - u32::from(self.len));
        // network, gateway, …, broadcast
        (n + 2 < size - 1).then(|| Ipv4Addr::from(u32::from(self.network()) + 2 + n))
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    /// Whether two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let len = self.len.min(other.len);
        let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        u32::from(self.base) & m == u32::from(other.base) & m
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

/// What the parent does to a container's network namespace before the
/// container goes on: the veth pair, the address, the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeAttach {
    pub bridge: String,
    /// The host end's name (`vi<id>`, at most 15 bytes).
    pub host_if: String,
    pub subnet: Subnet,
    pub ip: Ipv4Addr,
}

/// A route in the main table (for the clash check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: Subnet,
    pub oif: Option<u32>,
}

/// One rtnetlink socket, requests answered in order.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

fn nl_err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl Netlink {
    /// A socket in this thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0 })
    }

    /// Sends one request; returns the messages of its answer (a dump's
    /// entries, or nothing for an acknowledged change).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| nl_err("a netlink answer did not parse", e))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                        None => return Ok(out),
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn change(&mut self, msg: RouteNetlinkMessage, extra: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | extra).map(|_| ())
    }

    /// A link's index by name, or None.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.link(name)?.map(|l| l.header.index))
    }

    fn link(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(mut v) => Ok(match v.pop() {
                Some(RouteNetlinkMessage::NewLink(l)) => Some(l),
                _ => None,
            }),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A link's alias (`ip link set … alias`), which the lab uses to mark
    /// the bridge with the home that made it.
    pub fn link_alias(&mut self, name: &str) -> io::Result<Option<String>> {
        Ok(self.link(name)?.and_then(|l| {
            l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfAlias(s) => Some(s),
                _ => None,
            })
        }))
    }

    /// Every link's name, in index order.
    pub fn link_names(&mut self) -> io::Result<Vec<String>> {
        let all = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }

    /// Makes a bridge, marked with `alias`.
    pub fn create_bridge(&mut self, name: &str, alias: &str) -> io::Result<u32> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)?;
        let index = self
            .link_index(name)?
            .ok_or_else(|| nl_err("the new bridge", "not found"))?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfAlias(alias.into()));
        self.change(RouteNetlinkMessage::SetLink(m), 0)?;
        Ok(index)
    }

    /// Makes a veth pair: `host` here, `peer` moved at once into the
    /// network namespace `ns` (an open namespace file).
    pub fn create_veth(&mut self, host: &str, peer: &str, ns: &std::fs::File) -> io::Result<u32> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.into()));
        p.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.into()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)?;
        self.link_index(host)?
            .ok_or_else(|| nl_err("the new veth", "not found"))
    }

    /// Sets a link up, and optionally into a bridge.
    pub fn set_up(&mut self, index: u32, master: Option<u32>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags |= LinkFlags::Up;
        m.header.change_mask |= LinkFlags::Up;
        if let Some(master) = master {
            m.attributes.push(LinkAttribute::Controller(master));
        }
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.change(RouteNetlinkMessage::DelLink(m), 0)
    }

    /// Adds `ip/len` to a link.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, len: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = len;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip.into()));
        m.attributes.push(AddressAttribute::Address(ip.into()));
        let brd = Ipv4Addr::from(u32::from(ip) | (u32::MAX >> len));
        m.attributes.push(AddressAttribute::Broadcast(brd));
        self.change(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `default via gw`.
    pub fn add_default_route(&mut self, gw: Ipv4Addr) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        self.change(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let all = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in all {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let mut table = u32::from(r.header.table);
            let mut dest = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dest = *d,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            out.push(Route {
                dest: Subnet {
                    base: dest,
                    len: r.header.destination_prefix_length,
                },
                oif,
            });
        }
        Ok(out)
    }
}

/// Makes `name` with `subnet`'s gateway address and sets it up, unless it
/// exists. Refuses a subnet that overlaps a route of the host's (other
/// than the bridge's own), and a bridge another home made (`alias` is the
/// home's mark).
pub fn ensure_bridge(name: &str, subnet: &Subnet, alias: &str) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("{what}: {e}");
    let mut nl = Netlink::open().map_err(|e| fail("opening rtnetlink", e))?;
    if let Some(index) = nl
        .link_index(name)
        .map_err(|e| fail("looking up the bridge", e))?
    {
        let mark = nl
            .link_alias(name)
            .map_err(|e| fail("reading the bridge", e))?;
        if mark.as_deref() != Some(alias) {
            return Err(format!(
                "a link named {name} exists and is not this lab home's bridge ({}): pick another with --bridge NAME or ISOLAB_BRIDGE",
                mark.unwrap_or_else(|| "no isolab mark".into())
            ));
        }
        // Ours: its subnet is the one its routes say.
        let routes = nl.routes().map_err(|e| fail("reading routes", e))?;
        if let Some(r) = routes
            .iter()
            .find(|r| r.oif == Some(index) && r.dest.len > 0)
        {
            if r.dest.network() != subnet.network() || r.dest.len != subnet.len {
                return Err(format!(
                    "bridge {name} already has subnet {}, not {subnet}: drop --subnet, or remove the bridge with `isolab prune` once no container uses it",
                    r.dest
                ));
            }
        }
        return Ok(());
    }
    let routes = nl.routes().map_err(|e| fail("reading routes", e))?;
    if let Some(r) = routes
        .iter()
        .find(|r| r.dest.len > 0 && r.dest.overlaps(subnet))
    {
        return Err(format!(
            "subnet {subnet} clashes with the host's route to {}: choose a free one with --subnet CIDR (or ISOLAB_SUBNET)",
            r.dest
        ));
    }
    let index = nl
        .create_bridge(name, alias)
        .map_err(|e| fail(&format!("creating bridge {name}"), e))?;
    let made = nl
        .add_address(index, subnet.gateway(), subnet.len)
        .and_then(|_| nl.set_up(index, None));
    if let Err(e) = made {
        let _ = nl.delete_link(index);
        return Err(fail(&format!("configuring bridge {name}"), e));
    }
    Ok(())
}

/// Makes tap device `a.host_if` (`IFF_TAP | IFF_NO_PI`: bare Ethernet
/// frames, no vnet header) on the bridge, up, and returns its open file:
/// a VM monitor's end. The tap is not persistent: it goes when the last
/// holder closes it, or earlier by [`remove_link`].
pub fn attach_tap(a: &BridgeAttach) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            format!("opening /dev/net/tun for a VM's tap: {e} (load the tun module: modprobe tun)")
        })?;
    // struct ifreq: the name (16 bytes), then the flags (a short).
    let mut ifr = [0u8; 40];
    let name = a.host_if.as_bytes();
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "tap name {:?} does not fit the kernel's 15 bytes",
            a.host_if
        ));
    }
    ifr[..name.len()].copy_from_slice(name);
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: TUNSETIFF reads (and may update) an ifreq-sized buffer we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
        return Err(format!(
            "making tap {}: {}",
            a.host_if,
            io::Error::last_os_error()
        ));
    }
    let fail = |what: &str, e: io::Error| format!("{what}: {e}");
    let (mut nl, bridge) = open_bridge(&a.bridge)?;
    let tap = nl
        .link_index(&a.host_if)
        .map_err(|e| fail("looking up the tap", e))?
        .ok_or_else(|| format!("tap {} vanished", a.host_if))?;
    nl.set_up(tap, Some(bridge)).map_err(|e| {
        fail(
            &format!("putting tap {} on bridge {}", a.host_if, a.bridge),
            e,
        )
    })?;
    Ok(tun)
}

/// A netlink socket and the bridge's index, or why not.
fn open_bridge(name: &str) -> Result<(Netlink, u32), String> {
    let mut nl = Netlink::open().map_err(|e| format!("opening rtnetlink: {e}"))?;
    let bridge = nl
        .link_index(name)
        .map_err(|e| format!("looking up the bridge: {e}"))?
        .ok_or_else(|| format!("bridge {name} is gone"))?;
    Ok((nl, bridge))
}

/// Removes a link by name if it exists; returns whether it did.
pub fn remove_link(name: &str) -> io::Result<bool> {
    let mut nl = Netlink::open()?;
    match nl.link_index(name)? {
        Some(i) => nl.delete_link(i).map(|_| true),
        None => Ok(false),
    }
}

/// Attaches process `pid`'s network namespace to the bridge: the veth
/// pair, then — from a thread that enters that namespace — `eth0`'s
/// address, `lo` and `eth0` up, and the default route. On failure the
/// pair is removed.
pub fn attach(pid: u32, a: &BridgeAttach) -> Result<(), String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("opening the container's network namespace: {e}"))?;
    attach_netns(&ns, a)
}

/// [`attach`] for a network namespace given as an open file (one the lab
/// holds for an OCI runtime, which joins it by path).
pub fn attach_netns(ns: &std::fs::File, a: &BridgeAttach) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("{what}: {e}");
    let (mut nl, bridge) = open_bridge(&a.bridge)?;
    let host = nl
        .create_veth(&a.host_if, "eth0", ns)
        .map_err(|e| fail(&format!("creating veth {}", a.host_if), e))?;
    let mut inside = || -> Result<(), String> {
        nl.set_up(host, Some(bridge))
            .map_err(|e| fail("attaching the veth to the bridge", e))?;
        let (ip, gw, len) = (a.ip, a.subnet.gateway(), a.subnet.len);
        std::thread::scope(|s| {
            s.spawn(|| -> Result<(), String> {
                // SAFETY: setns on a valid namespace fd; it changes only
                // this thread's network namespace, and the thread ends here.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(fail(
                        "entering the container's network namespace",
                        io::Error::last_os_error(),
                    ));
                }
                let mut inner = Netlink::open().map_err(|e| fail("rtnetlink inside", e))?;
                let lo = inner.link_index("lo").ok().flatten().unwrap_or(1);
                let eth0 = inner
                    .link_index("eth0")
                    .map_err(|e| fail("finding eth0", e))?
                    .ok_or("eth0 did not arrive in the container")?;
                inner.set_up(lo, None).map_err(|e| fail("lo up", e))?;
                inner
                    .add_address(eth0, ip, len)
                    .map_err(|e| fail("eth0's address", e))?;
                inner.set_up(eth0, None).map_err(|e| fail("eth0 up", e))?;
                inner
                    .add_default_route(gw)
                    .map_err(|e| fail("the default route", e))?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err("the network setup thread panicked".into()))
        })
    };
    let r = inside();
    if r.is_err() {
        let _ = nl.delete_link(host);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_hand_out_addresses() {
        let s = Subnet::parse("10.213.0.0/24").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(s.host(0), Some(Ipv4Addr::new(10, 213, 0, 2)));
        assert_eq!(s.host(252), Some(Ipv4Addr::new(10, 213, 0, 254)));
        assert_eq!(s.host(253), None, "never the broadcast address");
        assert!(s.contains(Ipv4Addr::new(10, 213, 0, 77)));
        assert!(!s.contains(Ipv4Addr::new(10, 213, 1, 1)));
        assert!(s.overlaps(&Subnet::parse("10.213.0.0/16").unwrap()));
        assert!(!s.overlaps(&Subnet::parse("10.214.0.0/24").unwrap()));
        assert_eq!(s.to_string(), "10.213.0.0/24");
        for bad in [
            "10.213.0.0",
            "10.213.0.1/24",
            "10.0.0.0/8",
            "x/24",
            "10.0.0.0/30",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }
}
