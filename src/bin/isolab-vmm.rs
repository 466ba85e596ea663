//! `isolab-vmm`: the microVM monitor as its own small process.
//!
//! `isolab` starts one per VM instance, as it starts QEMU for the peer, so
//! both monitors are measured the same way (launch = spawn, exit = reaped)
//! and the monitor's memory is its own process's, not the CLI's. It
//! depends on the monitor crate only — no argument-parsing or logging
//! framework — to stay small.
//!
//! Usage: `isolab-vmm [--kernel PATH] [--initrd PATH] [--cmdline STR]
//! [--mem MIB] [--vcpus N] [--timeout SECS] [--echo] [--pit]`; prints one JSON
//! `VmReport` on stdout, or one sentence on stderr and exits 1.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use isolab_microvm::vmm::{self, KernelImage, VmConfig};

fn parse(args: &[String]) -> Result<VmConfig, String> {
    let mut cfg = VmConfig::default();
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
            "--no-unpack" => cfg.unpack_bzimage = false,
            "--kvm-device" => cfg.kvm_device = PathBuf::from(val()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(cfg)
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
    match vmm::boot(&cfg) {
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
