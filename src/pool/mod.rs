//! The hot pool: hot containers per function, handed out one call at a time.
//!
//! ```text
//! caller ──call(spec, request)──► Pool ── DashMap<FunctionKey, FunctionPool>
//!                                           idle: LIFO stack · waiting: bounded FIFO
//!                                           launcher: waiting > idle + starting
//!                                 ▼
//!                            HotContainer ── driver cookie, stdin/stdout pipes, watcher
//! ```
//!
//! Build one with [`Pool::builder`], call functions with [`Pool::call`], look at
//! it with [`Pool::status`], and end it with [`Pool::shutdown`], which removes
//! every container. A function's containers are keyed by its whole
//! [`FunctionSpec`]: change any field and new calls go to new containers while the
//! old ones drain.

mod budget;
mod call;
mod collector;
mod container;
pub(crate) mod format;
mod function;
mod function_log;
mod scheduler;
mod spec;

use std::sync::Arc;
use std::time::Duration;

pub use call::{Response, Start};
pub use container::EvictionReason;
pub use format::{FunctionResponse, Request};
pub use function::FunctionStatus;
pub use scheduler::POOL_LABEL;
pub use spec::{Eviction, Format, FunctionKey, FunctionSpec, KeepAlive};

use crate::driver::Driver;
use crate::error::CallError;
use scheduler::Inner;

/// Settings of a whole pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Labels its containers `hotpool.pool=<name>`; on start, containers left with
    /// that label by an earlier run are removed.
    pub name: String,
    /// The most memory the limits of live containers may add up to, in bytes.
    pub memory_budget: u64,
    /// How long in-flight calls get to finish on shutdown.
    pub shutdown_timeout: Duration,
    /// The largest response body a function may return, in bytes.
    pub max_response_bytes: usize,
    /// The most engine stats points kept per call ([`crate::stats::decimate`]).
    pub stats_max_points: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: "hotpool".into(),
            memory_budget: 2 << 30,
            shutdown_timeout: Duration::from_secs(30),
            // Lambda's and fn's payload limit.
            max_response_bytes: 6 << 20,
            stats_max_points: 240,
        }
    }
}

/// Builds a [`Pool`].
pub struct PoolBuilder<D: Driver> {
    driver: D,
    config: PoolConfig,
}

impl<D: Driver> PoolBuilder<D> {
    /// Replaces all settings.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets [`PoolConfig::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Sets [`PoolConfig::memory_budget`].
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.config.memory_budget = bytes;
        self
    }

    /// Sets [`PoolConfig::shutdown_timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Removes containers an earlier run of this pool left behind and starts the
    /// pool.
    pub async fn build(self) -> Result<Pool<D>, CallError> {
        let leftovers = self
            .driver
            .remove_labelled(POOL_LABEL, &self.config.name)
            .await?;
        if leftovers > 0 {
            tracing::info!(count = leftovers, pool = %self.config.name, "removed containers left by an earlier run");
        }
        let inner = Arc::new(Inner::new(self.driver, self.config));
        tokio::spawn(inner.clone().reaper());
        Ok(Pool { inner })
    }
}

/// A pool of hot containers on one driver. Cheap to clone; every clone is the
/// same pool.
pub struct Pool<D: Driver> {
    inner: Arc<Inner<D>>,
}

impl<D: Driver> Clone for Pool<D> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

/// A snapshot of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// [`PoolConfig::memory_budget`].
    pub memory_budget: u64,
    /// The memory limits of live containers, added up.
    pub memory_reserved: u64,
    /// Every function pool, current and draining, by name.
    pub functions: Vec<FunctionStatus>,
}

impl<D: Driver> Pool<D> {
    /// A builder with [`PoolConfig::default`] settings.
    pub fn builder(driver: D) -> PoolBuilder<D> {
        PoolBuilder {
            driver,
            config: PoolConfig::default(),
        }
    }

    /// Calls `function` with `request`: in a hot container of its own spec (started
    /// if none is free), or in a new container for `cold` functions.
    pub async fn call(
        &self,
        function: &FunctionSpec,
        request: Request,
    ) -> Result<Response, CallError> {
        self.inner.call(function, request).await
    }

    /// A snapshot of every function pool.
    pub fn status(&self) -> PoolStatus {
        let mut functions: Vec<_> = self
            .inner
            .functions
            .iter()
            .map(|entry| entry.value().clone())
            .collect::<Vec<_>>()
            .iter()
            .map(|pool| pool.status())
            .collect();
        functions.sort_by(|a, b| a.name.cmp(&b.name).then(a.draining.cmp(&b.draining)));
        PoolStatus {
            memory_budget: self.inner.budget.budget(),
            memory_reserved: self.inner.budget.reserved(),
            functions,
        }
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The driver the pool runs on.
    pub fn driver(&self) -> &D {
        &self.inner.driver
    }

    /// Stops taking calls (new ones get `busy`), lets calls in flight finish within
    /// [`PoolConfig::shutdown_timeout`], then removes every container and returns
    /// once they are gone.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}
