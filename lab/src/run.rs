//! `isolab run`: one instance on one backend, attached as the user asked.
use anyhow::{bail, Result};
use isolab_reports::InstanceReport;

use crate::backend::{Attach, Backend, InstanceSpec};
use crate::home::Home;

/// The environment variable through which a harness that spawned `isolab
/// run` passes the instant it spawned it (`CLOCK_MONOTONIC`, ns).
pub const LAUNCH_ENV: &str = "ISOLAB_LAUNCH_NS";

/// The launch instant a spawning harness passed, if any.
pub fn launch_from_env() -> Option<u64> {
    std::env::var(LAUNCH_ENV).ok().and_then(|v| v.parse().ok())
}

/// How a run ended, as the CLI shows it.
#[derive(Debug)]
pub enum Ran {
    /// `--json`: the report.
    Report(Box<InstanceReport>),
    /// Attached to the terminal: the instance's exit code.
    Exited(i32),
    /// `-d`: the new instance's id.
    Detached(String),
}

/// Runs one instance of `spec` on `backend`. A program that makes
/// containers as root should first re-execute itself from a sealed copy
/// ([`crate::selfprotect::ensure_sealed`]); the `isolab` binary does.
pub fn run(
    home: &Home,
    backend: &'static dyn Backend,
    spec: &InstanceSpec,
    attach: Attach,
) -> Result<Ran> {
    backend.check(spec, attach)?;
    if let Err(u) = backend.available() {
        bail!("{}", u.sentence());
    }
    Ok(match attach {
        Attach::Captured => Ran::Report(Box::new(backend.run(home, spec)?.report)),
        Attach::Terminal { tty, interactive } => {
            Ran::Exited(backend.run_attached(home, spec, tty, interactive)?)
        }
        Attach::Detached => Ran::Detached(crate::instances::run_detached(home, backend, spec)?),
    })
}

/// Removes what dead instances and killed runs left, for every backend,
/// and the generated-artefact cache. Returns a line per removed thing.
pub fn prune(home: &Home) -> Result<Vec<String>> {
    let (mut removed, _running) = crate::instances::prune_records(home)?;
    for b in crate::backend::registry() {
        removed.extend(b.prune(home));
    }
    let (files, bytes) = crate::images::prune_cache(home);
    if files > 0 {
        removed.push(format!(
            "{files} cached file(s) in {} ({} KiB; rebuilt when needed)",
            home.cache_dir().display(),
            bytes / 1024
        ));
    }
    Ok(removed)
}
