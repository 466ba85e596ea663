//! `isolab-vmm`: the microVM monitor as its own small process.
//!
//! `isolab` starts one per VM instance, as it starts QEMU for the peer, so
//! both monitors are measured the same way (launch = spawn, exit = reaped)
//! and the monitor's memory is its own process's, not the CLI's. It
//! depends on the monitor crate only — no argument-parsing or logging
//! framework — to stay small.
//!
//! Before the guest runs, the monitor jails itself (see
//! `isolab_microvm::jail`): an empty read-only root in its own mount
//! namespace, the user `nobody`, a seccomp allow-list. `--no-jail` is for
//! debugging, and for measuring what the jail costs.
//!
//! Usage: `isolab-vmm [--kernel PATH] [--initrd PATH] [--cmdline STR]
//! [--mem MIB] [--vcpus N] [--timeout SECS] [--echo] [--pit] [--interactive]
//! [--disk PATH | --disk-ro PATH]… [--net-fd N [--mac MAC]] [--no-jail]`;
//! prints one JSON
//! `VmReport` on stdout, or one sentence on stderr and exits 1.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use isolab_microvm::vmm::{self, KernelImage, VmConfig};

fn parse(args: &[String]) -> Result<VmConfig, String> {
    let mut cfg = VmConfig {
        jail: true,
        ..VmConfig::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--kernel" => cfg.kernel = KernelImage::File(PathBuf::from(val()?)),
            "--initrd" => cfg.initrd = Some(PathBuf::from(val()?)),
            "--cmdline" => cfg.cmdline = val()?,
            "--mem" => {
                cfg.mem_mib = val()?
                    .parse()
                    .map_err(|_| "--mem takes MiB as a whole number".to_owned())?
            }
            "--vcpus" => {
                cfg.vcpus = val()?
                    .parse()
                    .map_err(|_| "--vcpus takes a number from 1 to 255".to_owned())?
            }
            "--timeout" => {
                let s: f64 = val()?
                    .parse()
                    .map_err(|_| "--timeout takes seconds".to_owned())?;
                if !(s > 0.0 && s <= 3600.0) {
                    return Err("--timeout must be between 0 and 3600 seconds".into());
                }
                cfg.timeout = Duration::from_secs_f64(s);
            }
            "--echo" => cfg.echo_serial = true,
            "--pit" => cfg.pit = true,
            "--pvh" => cfg.pvh = true,
            "--no-unpack" => cfg.unpack_bzimage = false,
            "--interactive" => cfg.serial_input = true,
            "--no-jail" => cfg.jail = false,
            "--kvm-device" => cfg.kvm_device = PathBuf::from(val()?),
            "--disk" | "--disk-ro" => cfg.disks.push(vmm::DiskConfig {
                path: PathBuf::from(val()?),
                read_only: a == "--disk-ro",
            }),
            "--net-fd" => {
                let fd = val()?
                    .parse()
                    .map_err(|_| "--net-fd takes an open tap descriptor's number".to_owned())?;
                let mac = cfg.net.map_or(vmm::NetConfig::DEFAULT_MAC, |n| n.mac);
                cfg.net = Some(vmm::NetConfig { tap_fd: fd, mac });
            }
            "--mac" => {
                let mac = vmm::NetConfig::parse_mac(&val()?)?;
                let tap_fd = cfg.net.map_or(-1, |n| n.tap_fd);
                cfg.net = Some(vmm::NetConfig { tap_fd, mac });
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if cfg.net.is_some_and(|n| n.tap_fd < 0) {
        return Err(
            "--mac sets the network device's address: add --net-fd N, the tap it sends on".into(),
        );
    }
    Ok(cfg)
}

/// Puts stdin in raw mode; returns the attributes to restore.
fn raw_terminal() -> Option<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it for a tty.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::isatty(0) == 0 || libc::tcgetattr(0, &mut t) != 0 {
            return None;
        }
        let saved = t;
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(0, libc::TCSANOW, &t);
        Some(saved)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("isolab-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    // With --interactive on a terminal, the terminal goes raw (every key
    // to the guest) and is restored however the VM ends.
    let saved = cfg.serial_input.then(raw_terminal).flatten();
    let result = vmm::boot(&cfg);
    if let Some(t) = saved {
        // SAFETY: restoring the attributes read from fd 0 before.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
    match result {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(j) => {
                println!("{j}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("isolab-vmm: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("isolab-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}
