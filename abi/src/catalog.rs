//! The scenario catalog: the one table of what the lab can run.
//!
//! Every part of the lab reads this table — the agent and the bare guest
//! to dispatch, the VM harness to build a guest's command line, the bench
//! to pick parameters and to know which backend runs what, the report to
//! name units, the tests to cover every entry. A new scenario is one row
//! here plus its code in the agent and/or the bare guest.
//!
//! Names are constants ([`name`]) so that no scenario name is typed as a
//! free string anywhere else.

/// Scenario names, as typed on the command line and written in results.
pub mod name {
    pub const STARTUP: &str = "startup";
    pub const IDLE: &str = "idle";
    pub const CPU: &str = "cpu";
    pub const MEMORY: &str = "memory";
    pub const SYSCALL: &str = "syscall";
    pub const FORK_EXEC: &str = "fork-exec";
    pub const FILE_IO: &str = "file-io";
    pub const NET_LOOPBACK: &str = "net-loopback";
    pub const NET_RTT: &str = "net-rtt";
    pub const NET_STREAM: &str = "net-stream";
    pub const NET_ECHO: &str = "net-echo";
    pub const DISK_READ: &str = "disk-read";
    pub const EXIT_COST: &str = "exit-cost";
    pub const INSPECT: &str = "inspect";
    pub const PROBES: &str = "probes";
    pub const SPIN: &str = "spin";
    pub const ECHO_INPUT: &str = "echo-input";
    pub const HANG: &str = "hang";
    pub const FLOOD: &str = "flood";
    pub const UNKNOWN_IO: &str = "unknown-io";
    pub const HOSTILE_IO: &str = "hostile-io";
    pub const FAULT: &str = "fault";
    /// The pseudo-scenario under which disk-footprint samples are filed.
    pub const DISK_FOOTPRINT: &str = "disk";
}

/// Who can run a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guests {
    /// The `isolab-agent` (every container backend, and a Linux guest's
    /// `/init`).
    pub agent: bool,
    /// The bare, no-OS lab guest (our monitor and QEMU).
    pub bare: bool,
}

/// One metric a scenario emits, with its unit as written in `samples.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
}

/// A parameter (`--param KEY=VALUE`), with the value the bench passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub key: &'static str,
    /// What it means.
    pub about: &'static str,
    /// The value `isolab bench` uses (the agent and guest have their own
    /// defaults for a single `run`).
    pub bench: Option<&'static str>,
}

/// One scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub guests: Guests,
    /// In the bench's default set.
    pub bench_default: bool,
    /// A bench may run it (misbehaving test guests may not).
    pub benchable: bool,
    pub params: &'static [Param],
    /// Workload metrics (besides the startup marks and memory every
    /// instance reports).
    pub metrics: &'static [Metric],
}

impl Scenario {
    /// Whether it talks to a peer on the host (`peer=IP:PORT`, which the
    /// harness serves): it runs only where the instance has a network to
    /// the host (the lab's container with `--network bridge` or `host`).
    pub fn needs_network(&self) -> bool {
        matches!(self.name, name::NET_RTT | name::NET_STREAM)
    }

    /// `KEY=VALUE` words the bench passes.
    pub fn bench_params(&self) -> impl Iterator<Item = (&'static str, &'static str)> {
        self.params
            .iter()
            .filter_map(|p| p.bench.map(|v| (p.key, v)))
    }
}

const AGENT: Guests = Guests {
    agent: true,
    bare: false,
};
const BARE: Guests = Guests {
    agent: false,
    bare: true,
};
const BOTH: Guests = Guests {
    agent: true,
    bare: true,
};

const fn p(key: &'static str, about: &'static str, bench: Option<&'static str>) -> Param {
    Param { key, about, bench }
}

const fn m(name: &'static str, unit: &'static str) -> Metric {
    Metric { name, unit }
}

/// The scenarios, in the order the bench runs and the book shows them.
pub const CATALOG: &[Scenario] = &[
    Scenario {
        name: name::STARTUP,
        about: "start, report ready, exit: what an instance costs to start",
        guests: BOTH,
        bench_default: true,
        benchable: true,
        params: &[],
        metrics: &[],
    },
    Scenario {
        name: name::IDLE,
        about: "start and hold, idle: the host memory one instance is charged",
        guests: BOTH,
        bench_default: true,
        benchable: true,
        params: &[p("hold_ms", "how long to hold, idle", Some("200"))],
        metrics: &[],
    },
    Scenario {
        name: name::CPU,
        about: "SHA-256 over generated blocks, the same code in agent and guest",
        guests: BOTH,
        bench_default: true,
        benchable: true,
        params: &[p("blocks", "64-byte blocks to hash", None)],
        metrics: &[m("cpu.sha256", "bytes_per_s")],
    },
    Scenario {
        name: name::MEMORY,
        about: "touch fresh memory one page at a time: page-fault cost",
        guests: BOTH,
        bench_default: false,
        benchable: true,
        params: &[
            p("mib", "MiB to touch", None),
            p("hold_ms", "hold afterwards (agent)", None),
        ],
        metrics: &[
            m("memory.touch_rate", "bytes_per_s"),
            m("memory.fault_cost", "ns_per_page"),
        ],
    },
    Scenario {
        name: name::SYSCALL,
        about: "a trivial system call (getppid) in a loop",
        guests: AGENT,
        bench_default: true,
        benchable: true,
        params: &[p("iterations", "calls", Some("200000"))],
        metrics: &[m("syscall.getppid", "ns_per_op")],
    },
    Scenario {
        name: name::EXIT_COST,
        about: "a write to a no-op port in a loop: what one VM exit costs",
        guests: BARE,
        bench_default: true,
        benchable: true,
        params: &[p("exits", "port writes", Some("2000"))],
        metrics: &[m("vm.exit_cost", "ns_per_exit")],
    },
    Scenario {
        name: name::DISK_READ,
        about: "read the image's ext4 disk end to end, with a checksum",
        guests: BOTH,
        bench_default: true,
        benchable: true,
        params: &[
            p("kib", "read at most this much", None),
            p("device", "block device (agent; default /dev/vda)", None),
            p(
                "write",
                "1: also write and flush sector 0 (bare guest)",
                None,
            ),
        ],
        metrics: &[m("disk.read_rate", "bytes_per_s")],
    },
    Scenario {
        name: name::FORK_EXEC,
        about: "create a process that execs the agent, and wait for it",
        guests: AGENT,
        bench_default: false,
        benchable: true,
        params: &[p("iterations", "processes", Some("20"))],
        metrics: &[m("fork_exec.latency", "ns_per_op")],
    },
    Scenario {
        name: name::FILE_IO,
        about: "write, fsync and read back a file in the instance's /tmp",
        guests: AGENT,
        bench_default: false,
        benchable: true,
        params: &[p("mib", "MiB to write", Some("16"))],
        metrics: &[
            m("file_io.write", "bytes_per_s"),
            m("file_io.fsync", "ns"),
            m("file_io.read", "bytes_per_s"),
        ],
    },
    Scenario {
        name: name::NET_LOOPBACK,
        about: "TCP round trips and a bulk transfer over the instance's loopback",
        guests: AGENT,
        bench_default: false,
        benchable: true,
        params: &[
            p("round_trips", "1-byte round trips", Some("500")),
            p("mib", "MiB to send", Some("16")),
        ],
        metrics: &[
            m("net.tcp_round_trip", "ns_per_op"),
            m("net.tcp_throughput", "bytes_per_s"),
        ],
    },
    Scenario {
        name: name::NET_RTT,
        about: "UDP echo round trips between the host and the instance over its network (median, p99), beside the same over the instance's own loopback (the bare guest has none)",
        guests: BOTH,
        bench_default: false,
        benchable: true,
        params: &[
            p("pings", "UDP round trips", Some("2000")),
            p("peer", "the host's echo server, IP:PORT (the harness sets it)", None),
        ],
        metrics: &[
            m("net.udp_rtt_p50", "ns"),
            m("net.udp_rtt_p99", "ns"),
            m("net.udp_rtt_loopback_p50", "ns"),
        ],
    },
    Scenario {
        name: name::NET_STREAM,
        about: "one-way throughput from the host into the instance over its network: TCP for the agent, beside the same over the instance's own loopback; UDP in windows for the bare guest, which has no TCP (and no loopback)",
        guests: BOTH,
        bench_default: false,
        benchable: true,
        params: &[
            p("mib", "MiB the host sends", Some("64")),
            p("peer", "the host's stream server, IP:PORT (the harness sets it)", None),
        ],
        metrics: &[
            m("net.tcp_stream", "bytes_per_s"),
            m("net.tcp_stream_loopback", "bytes_per_s"),
            m("net.udp_stream", "bytes_per_s"),
        ],
    },
    Scenario {
        name: name::NET_ECHO,
        about: "answer ARP, ping and UDP echo on port 7 over the VM's network until a datagram \"stop\" comes (the bare guest's server, for -p and ping)",
        guests: BARE,
        bench_default: false,
        benchable: false,
        params: &[],
        metrics: &[],
    },
    Scenario {
        name: name::INSPECT,
        about: "what the instance sees from inside (JSON)",
        guests: AGENT,
        bench_default: false,
        benchable: false,
        params: &[],
        metrics: &[],
    },
    Scenario {
        name: name::PROBES,
        about: "the isolation probes, asked from inside",
        guests: AGENT,
        bench_default: false,
        benchable: false,
        params: &[],
        metrics: &[],
    },
    Scenario {
        name: name::SPIN,
        about: "a register-only loop (ring=0 shows PVM's emulated ring 0)",
        guests: BARE,
        bench_default: false,
        benchable: false,
        params: &[
            p("n", "iterations", None),
            p("mem", "1: touch memory in the loop", None),
            p("ring", "0: run it in ring 0", None),
        ],
        metrics: &[],
    },
    Scenario {
        name: name::ECHO_INPUT,
        about: "read a line from the serial port (the -it path)",
        guests: BARE,
        bench_default: false,
        benchable: false,
        params: &[],
        metrics: &[],
    },
    Scenario {
        name: name::HANG,
        about: "never finish (tests the monitor's timeout)",
        guests: BARE,
        bench_default: false,
        benchable: false,
        params: &[],
        metrics: &[],
    },
    Scenario {
        name: name::FLOOD,
        about: "flood the serial port (tests the monitor's bound)",
        guests: BARE,
        bench_default: false,
        benchable: false,
        params: &[],
        metrics: &[],
    },
    Scenario {
        name: name::UNKNOWN_IO,
        about: "touch ports no device answers",
        guests: BARE,
        bench_default: false,
        benchable: false,
        params: &[],
        metrics: &[],
    },
    Scenario {
        name: name::HOSTILE_IO,
        about: "hammer every port and the virtio windows with random values (tests the monitor)",
        guests: BARE,
        bench_default: false,
        benchable: false,
        params: &[
            p("seed", "the random generator's seed", None),
            p("ports", "how many ports from 0 to hammer", None),
            p("n", "random accesses per virtio window", None),
        ],
        metrics: &[],
    },
    Scenario {
        name: name::FAULT,
        about: "fault on purpose (a guest gets no exceptions under PVM)",
        guests: BARE,
        bench_default: false,
        benchable: false,
        params: &[],
        metrics: &[],
    },
];

/// The catalog entry for `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    CATALOG
        .iter()
        .find(|s| s.name.as_bytes() == name.as_bytes())
}

/// The catalog entry for a name given as bytes (the bare guest reads its
/// command line as bytes).
pub fn find_bytes(name: &[u8]) -> Option<&'static Scenario> {
    CATALOG.iter().find(|s| s.name.as_bytes() == name)
}

/// The unit of a workload metric, when the catalog declares it.
pub fn unit_of(metric: &str) -> Option<&'static str> {
    CATALOG
        .iter()
        .flat_map(|s| s.metrics.iter())
        .find(|m| m.name == metric)
        .map(|m| m.unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for (i, s) in CATALOG.iter().enumerate() {
            assert!(
                CATALOG[i + 1..].iter().all(|t| t.name != s.name),
                "{} twice",
                s.name
            );
            assert_eq!(find(s.name), Some(s));
            assert_eq!(find_bytes(s.name.as_bytes()), Some(s));
            assert!(s.guests.agent || s.guests.bare, "{} runs nowhere", s.name);
            assert!(
                !s.bench_default || s.benchable,
                "{} is in the default bench but not benchable",
                s.name
            );
        }
        assert!(find("nope").is_none());
        assert_eq!(unit_of("cpu.sha256"), Some("bytes_per_s"));
        assert_eq!(unit_of("vm.exit_cost"), Some("ns_per_exit"));
    }

    #[test]
    fn bench_params_come_from_the_table() {
        let idle = find(name::IDLE).unwrap();
        assert_eq!(
            idle.bench_params().collect::<std::vec::Vec<_>>(),
            [("hold_ms", "200")]
        );
        assert_eq!(find(name::STARTUP).unwrap().bench_params().count(), 0);
    }
}
