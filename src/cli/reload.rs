//! `hotpool serve` reloads its config on SIGHUP: new functions appear, removed
//! ones drain and go, changed limits apply to the running containers, and a
//! changed container spec starts new containers while the old ones drain.
//!
//! A config that does not load keeps the running one, with one log line giving
//! the error as `hotpool serve` would at start. `[server]` and `[pool]` are read at start only; a change to them is
//! said once and waits for the next start. `[pool]`'s `keep_alive` and
//! `eviction` are the exception: the config writes them into every function's
//! spec, so they reload with the functions, as limits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use hotpool::driver::Driver;
use hotpool::pool::Pool;

/// Reloads `path` into `pool` on every SIGHUP until `stopping`.
pub(crate) async fn on_hangup<D: Driver>(
    path: PathBuf,
    pool: Pool<D>,
    mut running: ServeConfig,
    stopping: CancellationToken,
) {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the config will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
                reload(&path, &pool, &mut running);
            }
        }
    }
}

/// Applies the config at `path` to `pool`, or keeps `running` if it is bad.
fn reload<D: Driver>(path: &Path, pool: &Pool<D>, running: &mut ServeConfig) {
    let new = match ServeConfig::load(path) {
        Ok(new) => new,
        Err(error) => {
            tracing::error!(
                file = %path.display(),
                "config not reloaded, the running one stays: {error}"
            );
            return;
        }
    };
    let budget = pool.config().memory_budget;
    if let Some((index, spec)) = new
        .functions
        .iter()
        .enumerate()
        .find(|(_, spec)| spec.memory > budget)
    {
        tracing::error!(
            "config not reloaded, the running one stays: {}: function[{index}].memory: {} bytes is more than the running pool's memory_budget of {budget} bytes ([pool] changes need a restart)",
            path.display(),
            spec.memory
        );
        return;
    }
    if new.server != running.server || new.pool != running.pool {
        tracing::warn!(
            "config reload: changes to [server] and [pool] take effect at the next start"
        );
    }
    let mut added = Vec::new();
    let mut changed = Vec::new();
    let mut replaced = Vec::new();
    for spec in &new.functions {
        match pool.function(&spec.name).and_then(|f| f.spec()) {
            None => added.push(spec.name.clone()),
            Some(old) if old == *spec => continue,
            Some(old) if old.key() == spec.key() => changed.push(spec.name.clone()),
            Some(_) => replaced.push(spec.name.clone()),
        }
        pool.register(spec.clone());
    }
    let kept: BTreeSet<&str> = new.functions.iter().map(|s| s.name.as_str()).collect();
    let mut removed = Vec::new();
    for spec in pool.specs() {
        if !kept.contains(spec.name.as_str()) && pool.remove(&spec.name) {
            removed.push(spec.name);
        }
    }
    tracing::info!(
        added = %added.join(","),
        limits_changed = %changed.join(","),
        replaced = %replaced.join(","),
        removed = %removed.join(","),
        "config reloaded"
    );
    running.functions = new.functions;
}
