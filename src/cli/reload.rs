//! `hotpool serve` reloads its config on SIGHUP: new functions appear, removed
//! ones drain and go, changed limits apply to the running containers, and a
//! changed container spec starts new containers while the old ones drain.
//!
//! A config that does not load keeps the running one, with one log line giving
//! the error as `hotpool serve` would at start. `[server]` and `[pool]` are read
//! at start only; each changed key of theirs is named, once per reload, as
//! waiting for the next start. `[pool]`'s `keep_alive`, `eviction`, `min_idle` and
//! `transport` are the exception: the config writes them into every function's
//! spec, so they reload with the functions. One line says which functions were
//! added, changed, replaced and removed, or that the config is unchanged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::field::DisplayValue;

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
    let loaded = ServeConfig::load(path).and_then(|new| {
        new.check_engine(&pool.driver().traits())?;
        new.check_memory_within(pool.config().memory_budget)?;
        Ok(new)
    });
    let new = match loaded {
        Ok(new) => new,
        Err(error) => {
            tracing::error!(
                file = %path.display(),
                "config not reloaded, the running one stays: {error}"
            );
            return;
        }
    };
    let waiting = running.start_only_changes(&new);
    for key in &waiting {
        tracing::warn!("{key} changed; it takes effect at the next start");
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
    running.functions = new.functions;
    if [&added, &changed, &replaced, &removed]
        .iter()
        .all(|names| names.is_empty())
    {
        if waiting.is_empty() {
            tracing::info!("config unchanged");
        }
        return;
    }
    tracing::info!(
        added = listed(&added),
        limits_changed = listed(&changed),
        replaced = listed(&replaced),
        removed = listed(&removed),
        "config reloaded"
    );
}

/// `names` as one log field, `a,b`; none when empty, so the line leaves it out.
fn listed(names: &[String]) -> Option<DisplayValue<String>> {
    (!names.is_empty()).then(|| tracing::field::display(names.join(",")))
}
