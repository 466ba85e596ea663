//! Networks (issue 16): `--network bridge`, `-p`, the lease store and
//! cleanup, for containers (veth) and both monitors (tap and virtio-net)
//! — reached with the host's ordinary tools (curl, ping) and sockets.
//!
//! Every test builds its own network namespace (`ip netns add`) and runs
//! isolab inside it with `nsenter --net`, so the lab bridge, the veths
//! and the NAT rules live there: nothing is added to the host's own
//! network, no packet leaves this machine, and each test checks that the
//! host's links, routes and nftables rules are as they were.
mod common;
use common::*;

use std::process::{Command, Output};

/// A private network namespace, deleted on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(tag: &str) -> NetNs {
        let name = format!("isolab-t{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed");
        let ns = NetNs { name };
        ns.sh("ip link set lo up");
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A shell command inside the namespace.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(["sh", "-c", script])
            .output()
            .expect("nsenter")
    }

    /// isolab inside the namespace, with its own home.
    fn isolab(&self, home: &str, args: &[&str]) -> Output {
        self.isolab_env(home, &[], args)
    }

    /// [`NetNs::isolab`] with extra environment.
    fn isolab_env(&self, home: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new("nsenter")
            .envs(env.iter().copied())
            .arg(format!("--net={}", self.path()))
            .arg(env!("CARGO_BIN_EXE_isolab"))
            .args(args)
            .env("ISOLAB_HOME", home)
            .env_remove("ISOLAB_BRIDGE")
            .env_remove("ISOLAB_SUBNET")
            .output()
            .expect("nsenter isolab")
    }

    /// Its links (names only), routes and nftables rules.
    fn state(&self) -> String {
        stdout(&self.sh(
            "ip -o link | awk '{print $2}'; ip -o route; ip -o -4 addr; nft list ruleset 2>/dev/null",
        ))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The host's own links, routes, addresses and nftables rules.
fn host_state() -> String {
    let o = Command::new("sh")
        .args([
            "-c",
            "ip -o link | awk '{print $2}'; ip -o route; ip -o -4 addr; nft list ruleset 2>/dev/null",
        ])
        .output()
        .expect("sh");
    stdout(&o)
}

fn tools_ready() -> bool {
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    require("root", is_root())
        && require(
            "ip, nsenter, curl and ping (apt-get install iproute2 util-linux curl iputils-ping)",
            ["ip", "nsenter", "curl", "ping"].iter().all(|t| have(t)),
        )
        && require(
            "nft (apt-get install nftables): the DNAT path is tested only with it",
            have("nft"),
        )
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        stderr(o),
        stdout(o)
    );
    stdout(o)
}

#[test]
fn a_bridged_container_has_eth0_a_route_and_its_own_etc_files_and_leaves_nothing() {
    if !tools_ready() {
        return;
    }
    let before = host_state();
    let ns = NetNs::new("eth0");
    let home = home();
    let h = home.path().to_str().unwrap();
    let empty = ns.state();
    let out = ok(
        &ns.isolab(
            h,
            &[
                "run",
                "--network",
                "bridge",
                "--hostname",
                "web1",
                "--",
                "/bin/sh",
                "-c",
                "ip -o -4 addr show eth0; ip route; cat /etc/hosts /etc/hostname; ping -c1 -W2 10.213.0.1",
            ],
        ),
        "a bridged run",
    );
    assert!(out.contains("inet 10.213.0.2/24"), "{out}");
    assert!(out.contains("default via 10.213.0.1 dev eth0"), "{out}");
    assert!(
        out.contains("10.213.0.2\tweb1"),
        "/etc/hosts names the container: {out}"
    );
    assert!(
        out.contains("1 packets received"),
        "the bridge answers: {out}"
    );
    // The run is over: its veth went with its namespace, its lease with it.
    let leases = std::fs::read_to_string(home.path().join("network/isolab0.json")).unwrap();
    assert!(leases.contains("\"leases\": {}"), "{leases}");
    let st = ns.state();
    assert!(
        st.contains("isolab0"),
        "the bridge stays until prune, as docker0 does: {st}"
    );
    assert!(!st.contains("vi"), "no veth left: {st}");
    let pr = ok(&ns.isolab(h, &["prune"]), "prune");
    assert!(pr.contains("bridge isolab0"), "{pr}");
    assert_eq!(ns.state(), empty, "prune leaves the namespace as it was");
    assert_eq!(host_state(), before, "the host's own network is untouched");
}

#[test]
fn a_published_port_reaches_busybox_httpd_with_curl_and_is_cleaned_up() {
    if !tools_ready() {
        return;
    }
    let before = host_state();
    let ns = NetNs::new("pub");
    let empty = ns.state();
    let home = home();
    let h = home.path().to_str().unwrap();
    let web =
        "mkdir -p /www && echo hello-from-isolab > /www/index.html && exec httpd -f -p 80 -h /www";
    let o = ns.isolab(
        h,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "bridge",
            "-p",
            "18080:80",
            "--",
            "/bin/sh",
            "-c",
            web,
        ],
    );
    let id = ok(&o, "run -d -p 18080:80").trim().to_owned();
    assert_eq!(id.len(), 12, "{id}");
    let ps = ok(&ns.isolab(h, &["ps"]), "ps");
    assert!(ps.contains("10.213.0.2 18080->80/tcp"), "{ps}");
    // Through the userspace proxy (loopback) and through DNAT (the
    // namespace's own address on the bridge).
    let mut served = String::new();
    for _ in 0..50 {
        served = stdout(&ns.sh("curl -s -m 2 http://127.0.0.1:18080/"));
        if served.contains("hello-from-isolab") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        served.contains("hello-from-isolab"),
        "curl via the proxy: {served:?}"
    );
    let dnat = stdout(&ns.sh("curl -s -m 2 http://10.213.0.1:18080/"));
    assert!(
        dnat.contains("hello-from-isolab"),
        "curl via DNAT: {dnat:?}"
    );
    // The proxy listens on 0.0.0.0 too: the rule's counter shows that
    // the second request went through DNAT, not through the proxy.
    let rules = stdout(&ns.sh("nft list ruleset"));
    assert!(
        rules.contains(&format!("_{id}")) && rules.contains("dnat to 10.213.0.2:80"),
        "{rules}"
    );
    let counted = rules
        .lines()
        .find(|l| l.contains("ip daddr != 127.0.0.0/8"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|x| x.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        counted.is_some_and(|n| n >= 1),
        "the DNAT rule counted the request: {rules}"
    );
    let ping = ns.sh("ping -c1 -W2 10.213.0.2");
    assert!(
        ping.status.success(),
        "the container answers ping on the bridge"
    );
    // A second container on the same bridge reaches the first by address.
    let o = ns.isolab(
        h,
        &[
            "run",
            "--network",
            "bridge",
            "--",
            "/bin/sh",
            "-c",
            "wget -qO- http://10.213.0.2/",
        ],
    );
    assert!(ok(&o, "a neighbour's wget").contains("hello-from-isolab"));
    // A container in web's own network namespace (a pod) reaches it on
    // their shared loopback.
    let o = ns.isolab(
        h,
        &[
            "run",
            "--network",
            "container:web",
            "--",
            "/bin/sh",
            "-c",
            "wget -qO- http://127.0.0.1/",
        ],
    );
    assert!(ok(&o, "a pod member's wget").contains("hello-from-isolab"));
    // The same host port again: one sentence, nothing left behind.
    let o = ns.isolab(
        h,
        &[
            "run",
            "--network",
            "bridge",
            "-p",
            "18080:80",
            "--",
            "/bin/true",
        ],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("host port 18080/tcp on 0.0.0.0 is already in use"),
        "{e}"
    );
    let ps = ok(&ns.isolab(h, &["ps", "-a"]), "ps -a");
    assert_eq!(
        ps.lines().count(),
        2,
        "only web: the refused run left no record: {ps}"
    );
    ok(&ns.isolab(h, &["rm", "-f", "web"]), "rm -f");
    let pr = ok(&ns.isolab(h, &["prune"]), "prune");
    assert!(pr.contains("bridge isolab0"), "{pr}");
    assert_eq!(ns.state(), empty, "no link, route, address or rule is left");
    let refused = ns.sh("curl -s -m 2 http://127.0.0.1:18080/");
    assert!(
        !refused.status.success(),
        "the proxy is gone with the container"
    );
    assert_eq!(host_state(), before, "the host's own network is untouched");
}

/// The iptables path for `-p` (a host with iptables and no nft; forced
/// here with ISOLAB_NAT=iptables): a chain of the container's own, its
/// DNAT rule counting the request, and nothing of it left after `rm`.
#[test]
fn a_published_port_through_iptables_dnat_is_counted_and_removed() {
    if !tools_ready()
        || !require(
            "iptables (apt-get install iptables)",
            Command::new("sh")
                .args(["-c", "command -v iptables"])
                .output()
                .is_ok_and(|o| o.status.success()),
        )
    {
        return;
    }
    let before = host_state();
    let ns = NetNs::new("ipt");
    let rules_before = stdout(&ns.sh("iptables -w -t nat -S"));
    let home = home();
    let h = home.path().to_str().unwrap();
    let env = [("ISOLAB_NAT", "iptables")];
    let web =
        "mkdir -p /www && echo hello-via-iptables > /www/index.html && exec httpd -f -p 80 -h /www";
    let o = ns.isolab_env(
        h,
        &env,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "bridge",
            "-p",
            "18081:80",
            "--",
            "/bin/sh",
            "-c",
            web,
        ],
    );
    let id = ok(&o, "run -d -p 18081:80").trim().to_owned();
    let rules = stdout(&ns.sh("iptables -w -t nat -S"));
    let chain = rules
        .lines()
        .find_map(|l| l.strip_prefix("-N ").filter(|c| c.ends_with(&id)))
        .unwrap_or_else(|| panic!("no chain of {id}: {rules}"))
        .to_owned();
    assert!(
        rules.contains(&format!("-A OUTPUT ! -d 127.0.0.0/8 -j {chain}"))
            && rules.contains("--to-destination 10.213.0.2:80"),
        "{rules}"
    );
    let mut served = String::new();
    for _ in 0..50 {
        served = stdout(&ns.sh("curl -s -m 2 http://10.213.0.1:18081/"));
        if served.contains("hello-via-iptables") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        served.contains("hello-via-iptables"),
        "curl via DNAT: {served:?}"
    );
    // Counted by the chain's DNAT rule, so not served by the proxy.
    let counters = stdout(&ns.sh(&format!("iptables -w -t nat -L {chain} -n -v -x")));
    let packets = counters
        .lines()
        .find(|l| l.contains("DNAT"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(packets.is_some_and(|n| n >= 1), "{counters}");
    let ps = ok(&ns.isolab_env(h, &env, &["ps"]), "ps");
    assert!(ps.contains("18081->80/tcp"), "{ps}");
    ok(&ns.isolab_env(h, &env, &["rm", "-f", "web"]), "rm -f");
    ok(&ns.isolab_env(h, &env, &["prune"]), "prune");
    assert_eq!(
        stdout(&ns.sh("iptables -w -t nat -S")),
        rules_before,
        "no chain or jump is left"
    );
    // iptables-nft leaves at most the empty `nat` table it made (no
    // chains, so no effect on any packet); nft shows it.
    let nft = stdout(&ns.sh("nft list ruleset 2>/dev/null"));
    assert!(
        !nft.contains("chain") && !nft.contains("dnat"),
        "only an empty table may stay: {nft}"
    );
    assert_eq!(host_state(), before, "the host's own network is untouched");
}

#[test]
fn bad_network_input_gets_one_sentence_and_leaves_nothing() {
    if !tools_ready() {
        return;
    }
    let ns = NetNs::new("bad");
    // A link and a route of the "host's" that the lab must not take over.
    let o = ns.sh("ip link add isoltest0 type veth peer name isoltest1 && ip addr add 10.77.0.1/24 dev isoltest0 && ip link set isoltest0 up && ip link set isoltest1 up");
    ok(&o, "making a veth with a route in the test namespace");
    let empty = ns.state();
    let home = home();
    let h = home.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "run",
                "--network",
                "bridge",
                "--subnet",
                "10.77.0.0/24",
                "--",
                "/bin/true",
            ],
            "subnet 10.77.0.0/24 clashes with the host's route to 10.77.0.0/24",
        ),
        (
            &[
                "run",
                "--network",
                "bridge",
                "--subnet",
                "10.0.0.0/8",
                "--",
                "/bin/true",
            ],
            "prefix 16 to 29",
        ),
        (
            &["run", "-p", "8080:80", "--", "/bin/true"],
            "add --network bridge",
        ),
        (
            &["run", "--network", "bridge", "-p", "80", "--", "/bin/true"],
            "[HOSTIP:]HOSTPORT:CONTAINERPORT",
        ),
        (
            &[
                "run",
                "--network",
                "bridge",
                "--bridge",
                "isoltest0",
                "--",
                "/bin/true",
            ],
            "is not this lab home's bridge",
        ),
    ];
    let vm_cases: &[(&[&str], &str)] = &[
        (
            &["run", "--backend", "microvm", "--network", "host"],
            "only a container has",
        ),
        (
            &["run", "--backend", "qemu-tcg", "--network", "bridge"],
            "qemu-tcg has no network device",
        ),
        (
            &["run", "--backend", "qemu", "--scenario", "net-echo"],
            "add --network bridge",
        ),
    ];
    // The VM cases need KVM to get past the backend's availability.
    let cases: Vec<_> = cases
        .iter()
        .chain(vm_cases.iter().filter(|_| has_kvm()))
        .collect();
    for (args, want) in cases {
        let o = ns.isolab(h, args);
        assert!(!o.status.success(), "{args:?} must fail");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one sentence: {e}");
    }
    assert_eq!(
        ns.state(),
        empty,
        "refused runs leave the namespace as it was"
    );
}

#[test]
fn the_network_probes_tell_none_bridge_and_host_apart() {
    if !tools_ready() {
        return;
    }
    let ns = NetNs::new("probes");
    let home = home();
    let h = home.path().to_str().unwrap();
    let verdict = |json: &serde_json::Value, col: &str, probe: &str| {
        json[col][probe]["verdict"]
            .as_str()
            .unwrap_or("missing")
            .to_owned()
    };
    for (net, col) in [("bridge", "container-bridge"), ("host", "container-host")] {
        let o = ns.isolab(h, &["probes", "--json", "--network", net]);
        let json: serde_json::Value = serde_json::from_str(&ok(&o, "probes")).unwrap();
        // The default column is closed on all three.
        for probe in [
            "network_interfaces",
            "host_loopback_service",
            "raw_frames_on_link",
        ] {
            assert_eq!(
                verdict(&json, "container", probe),
                "isolated",
                "container {probe}"
            );
        }
        let want = match net {
            "bridge" => [
                ("network_interfaces", "isolated"),
                ("host_loopback_service", "isolated"),
                ("raw_frames_on_link", "exposed"),
            ],
            _ => [
                ("network_interfaces", "exposed"),
                ("host_loopback_service", "exposed"),
                ("raw_frames_on_link", "exposed"),
            ],
        };
        for (probe, v) in want {
            assert_eq!(
                verdict(&json, col, probe),
                v,
                "{col} {probe}: {}",
                json[col][probe]
            );
        }
    }
    ok(&ns.isolab(h, &["prune"]), "prune");
}

#[test]
fn net_rtt_runs_on_the_bridge_under_the_lab_crun_and_runc_and_leaves_nothing() {
    if !tools_ready() {
        return;
    }
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !require(
        "crun and runc (apt-get install crun runc)",
        have("crun") && have("runc"),
    ) {
        return;
    }
    let before = host_state();
    let ns = NetNs::new("rtt");
    let empty = ns.state();
    let home = home();
    let h = home.path().to_str().unwrap();
    for backend in ["container", "crun", "runc"] {
        for scenario in ["net-rtt", "net-stream"] {
            let o = ns.isolab(
                h,
                &[
                    "run",
                    "--json",
                    "--backend",
                    backend,
                    "--network",
                    "bridge",
                    "--scenario",
                    scenario,
                    "--param",
                    "pings=200",
                    "--param",
                    "mib=8",
                ],
            );
            let v: serde_json::Value = serde_json::from_str(&ok(&o, backend)).unwrap();
            let metrics = v["result"]["metrics"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                metrics.len() >= 2
                    && metrics
                        .iter()
                        .all(|m| m["value"].as_f64().unwrap_or(0.0) > 0.0),
                "{backend} {scenario}: {v}"
            );
        }
    }
    // Without a network there is no host to talk to: one sentence.
    let o = ns.isolab(h, &["run", "--scenario", "net-rtt"]);
    assert!(stderr(&o).contains("--network bridge"), "{}", stderr(&o));
    let leases = std::fs::read_to_string(home.path().join("network/isolab0.json")).unwrap();
    assert!(
        leases.contains("\"leases\": {}"),
        "every lease released: {leases}"
    );
    ok(&ns.isolab(h, &["prune"]), "prune");
    assert_eq!(ns.state(), empty);
    assert_eq!(host_state(), before);
}

/// Runs `f` on a thread that entered network namespace `path`: sockets it
/// makes live there, as a client in that namespace would.
fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(path).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Sends `msg` over UDP to `to` and returns the answer, if one comes.
fn udp_ask(to: &str, msg: &[u8]) -> Option<Vec<u8>> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    s.send_to(msg, to).ok()?;
    let mut b = [0u8; 256];
    let (n, _) = s.recv_from(&mut b).ok()?;
    Some(b[..n].to_vec())
}

fn vm_ready() -> bool {
    tools_ready()
        && require("KVM (/dev/kvm)", has_kvm())
        && require(
            "qemu-system-x86_64 (apt-get install qemu-system-x86)",
            Command::new("sh")
                .args(["-c", "command -v qemu-system-x86_64"])
                .output()
                .is_ok_and(|o| o.status.success()),
        )
}

#[test]
fn both_monitors_put_the_bare_guest_on_the_bridge_with_virtio_net_and_leave_nothing() {
    if !vm_ready() {
        return;
    }
    let before = host_state();
    let ns = NetNs::new("vm");
    let empty = ns.state();
    let home = home();
    let h = home.path().to_str().unwrap();
    // net-rtt: the guest's UDP round trips to the host's echo server.
    for backend in ["microvm", "qemu"] {
        let o = ns.isolab(
            h,
            &[
                "run",
                "--json",
                "--backend",
                backend,
                "--network",
                "bridge",
                "--scenario",
                "net-rtt",
                "--param",
                "pings=200",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&ok(&o, backend)).unwrap();
        let data = &v["result"]["data"];
        assert_eq!(data["pings"], 200, "{backend}: {v}");
        assert_eq!(data["lost"], 0, "{backend}: {v}");
        let metric = |name: &str| {
            v["result"]["metrics"]
                .as_array()
                .and_then(|a| a.iter().find(|m| m["name"] == name))
                .and_then(|m| m["value"].as_f64())
                .unwrap_or(0.0)
        };
        let (p50, p99) = (metric("net.udp_rtt_p50"), metric("net.udp_rtt_p99"));
        assert!(p50 > 0.0 && p99 >= p50, "{backend}: p50 {p50} p99 {p99}");
        // net-stream: 4 MiB over UDP in windows, every datagram counted.
        let o = ns.isolab(
            h,
            &[
                "run",
                "--json",
                "--backend",
                backend,
                "--network",
                "bridge",
                "--scenario",
                "net-stream",
                "--param",
                "mib=4",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&ok(&o, backend)).unwrap();
        let data = &v["result"]["data"];
        let got = data["stream_datagrams"].as_u64().unwrap_or(0);
        let lost = data["stream_lost"].as_u64().unwrap_or(u64::MAX);
        assert_eq!(got + lost, (4u64 << 20).div_ceil(1472), "{backend}: {v}");
        assert!(lost * 100 <= got, "{backend}: at most 1% lost: {v}");
        assert_eq!(
            data["stream_bytes"].as_u64(),
            Some(got * 1472),
            "{backend}: {v}"
        );
        let stream = v["result"]["metrics"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["name"] == "net.udp_stream"))
            .and_then(|m| m["value"].as_f64())
            .unwrap_or(0.0);
        assert!(stream > 0.0, "{backend}: {v}");
    }
    // net-echo under our monitor, with a published port: ping, UDP echo
    // through the proxy (loopback), through DNAT (the gateway address)
    // and straight to the guest, then "stop".
    let mut vm = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(env!("CARGO_BIN_EXE_isolab"))
        .args([
            "run",
            "--raw",
            "--backend",
            "microvm",
            "--network",
            "bridge",
            "-p",
            "9007:7/udp",
            "--timeout",
            "60",
            "--scenario",
            "net-echo",
        ])
        .env("ISOLAB_HOME", h)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the echo VM");
    let mut up = false;
    for _ in 0..40 {
        if ns.sh("ping -c1 -W1 10.213.0.2").status.success() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    if !up {
        let _ = vm.kill();
        let o = vm.wait_with_output().unwrap();
        panic!("the guest never answered ping: {}", stderr(&o));
    }
    ok(&ns.sh("ping -c3 -i0.2 -W2 10.213.0.2"), "ping the guest");
    let answers = in_netns(&ns.path(), || {
        ["127.0.0.1:9007", "10.213.0.1:9007", "10.213.0.2:7"]
            .map(|to| udp_ask(to, format!("hello {to}").as_bytes()))
    });
    for (to, a) in ["127.0.0.1:9007", "10.213.0.1:9007", "10.213.0.2:7"]
        .iter()
        .zip(&answers)
    {
        assert_eq!(
            a.as_deref(),
            Some(format!("hello {to}").as_bytes()),
            "echo via {to}"
        );
    }
    let rules = stdout(&ns.sh("nft list ruleset"));
    let counted = rules
        .lines()
        .find(|l| l.contains("ip daddr != 127.0.0.0/8") && l.contains("dnat to 10.213.0.2:7"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|x| x.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        counted.is_some_and(|n| n >= 1),
        "the gateway address went through DNAT to the VM: {rules}"
    );
    let stop = in_netns(&ns.path(), || udp_ask("10.213.0.2:7", b"stop"));
    assert_eq!(stop.as_deref(), Some(&b"stop"[..]));
    let o = vm.wait_with_output().unwrap();
    let out = ok(&o, "the echo VM");
    let line = out
        .lines()
        .find(|l| l.starts_with("@isolab "))
        .unwrap_or_else(|| panic!("no result line: {out}"));
    let v: serde_json::Value = serde_json::from_str(&line["@isolab ".len()..]).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["data"]["pings_answered"].as_u64().unwrap_or(0) >= 4,
        "{v}"
    );
    assert_eq!(v["data"]["udp_echoes"], 4, "{v}");
    let leases = std::fs::read_to_string(home.path().join("network/isolab0.json")).unwrap();
    assert!(
        leases.contains("\"leases\": {}"),
        "every lease released: {leases}"
    );
    let links = stdout(&ns.sh("ip -o link | awk '{print $2}'"));
    assert!(
        !links.lines().any(|l| l.starts_with("vi")),
        "no tap is left: {links}"
    );
    ok(&ns.isolab(h, &["prune"]), "prune");
    assert_eq!(ns.state(), empty);
    assert_eq!(host_state(), before);
}
