//! The hot pool: hot containers per function, handed out one call at a time.
//!
//! ```text
//! caller ──Function::call(request)──► Pool ── current version of each name
//!                                             └ FunctionState: idle stack, waiting
//!                                               calls, starts (a state machine)
//!                                    ▼
//!                               HotContainer ── driver cookie, stdin/stdout, watcher
//! ```
//!
//! Build one with [`Pool::builder`], register functions with [`Pool::register`]
//! (which gives a [`Function`] handle to call), look at it with [`Pool::status`],
//! and end it with [`Pool::shutdown`], which removes every container.
//!
//! A pool owns its name on its engine while it lives: building claims the name
//! ([`Driver::claim_pool`]) before it touches what an earlier run of it left, so a
//! second pool of the name, in this process or another, fails to build
//! ([`BuildError::Claim`]) and touches nothing. What an earlier run left is
//! taken over where it is provably between calls and one of the functions the
//! build names ([`PoolBuilder::functions`]) would have started it, and removed
//! otherwise: a crash of its owner costs a pool no warm container. An owner
//! that hands over ([`Pool::hand_over`]) leaves the next what its keep-alive
//! policies learned besides.
//!
//! A name has one current version. Registering a spec again with the same
//! container spec (image, command, environment, lifecycle, memory, ...) applies its
//! limits (timeouts, keep-alive, concurrency, queue, logs) to the running
//! containers; a different container spec makes a new version, and the old one
//! drains: its idle containers go at once, its busy ones when their call ends.

mod budget;
mod call;
mod call_end;
mod call_logs;
mod checked_out;
mod collector;
mod container;
mod function;
mod function_log;
mod function_metrics;
mod learned;
mod policy;
mod readings;
mod response;
mod sampler;
mod scheduler;
mod spec;
pub(crate) mod state;
mod stdout;
mod stream;
mod teardown;
mod upload;

use std::sync::Arc;
use std::time::Duration;

pub use crate::format::{Format, Request};
pub use call_end::TIMEOUT_MARGIN;
pub use call_logs::{CallLog, CallLogFollower, CallLogs, CallState, ENTRY_OVERHEAD, FOLLOW_LINGER};
pub use function::FunctionStatus;
pub use response::{Response, Start};
pub use scheduler::{POOL_LABEL, SPEC_LABEL, STARTS_AT_ONCE};
pub use spec::{Eviction, FunctionKey, FunctionSpec, KeepAlive, Lifecycle};
pub use stream::{Answer, BodyStream, QUEUED_PIECES, StreamingResponse};
pub use teardown::{Leftovers, REMOVALS_AT_ONCE};
pub use upload::RequestBody;

use crate::driver::{ClaimError, Driver};
use crate::error::CallError;
use scheduler::Inner;

/// Settings of a whole pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Labels its containers `hotpool.pool=<name>`; the pool owns the name on its
    /// engine while it lives, and on start removes containers left with that
    /// label by an earlier run.
    pub name: String,
    /// The most memory the limits of live containers may add up to, in bytes.
    pub memory_budget: u64,
    /// How long in-flight calls get to finish on shutdown.
    pub shutdown_timeout: Duration,
    /// How long a shutdown removes containers after its calls, at most: those
    /// not removed by then are left to the next owner of the pool, or to their
    /// own end ([`PoolConfig::orphan_timeout`]); the shutdown says which.
    pub removal_timeout: Duration,
    /// The largest response body a function may return whole, in bytes.
    pub max_response_bytes: usize,
    /// The most body bytes a streamed response, or request, may carry
    /// ([`Function::call_streamed`], [`Function::call_with_body`]).
    pub max_stream_bytes: usize,
    /// The longest a streamed response may be silent between two pieces.
    pub stream_idle_timeout: Duration,
    /// The most engine stats points kept per call ([`crate::stats::decimate`]).
    pub stats_max_points: usize,
    /// How long a hot container on the direct transport outlives a pool that
    /// is gone without removing it (killed outright): it waits that long,
    /// warm, for an owner, then ends itself ([`crate::driver::Task::orphan_timeout`]).
    pub orphan_timeout: Duration,
    /// The most bytes the logs of recent calls may hold ([`Pool::call_log`]),
    /// each entry counted with its overhead ([`ENTRY_OVERHEAD`]); 0 keeps none.
    pub call_logs_bytes: u64,
    /// The most calls whose logs are kept; 0 keeps none.
    pub call_logs_entries: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: "hotpool".into(),
            memory_budget: 2 << 30,
            shutdown_timeout: Duration::from_secs(30),
            removal_timeout: Duration::from_secs(30),
            // Lambda's and fn's payload limit.
            max_response_bytes: 6 << 20,
            max_stream_bytes: 4 << 30,
            stream_idle_timeout: Duration::from_secs(30),
            stats_max_points: 240,
            orphan_timeout: Duration::from_secs(10 * 60),
            call_logs_bytes: 64 << 20,
            call_logs_entries: 100_000,
        }
    }
}

/// Builds a [`Pool`].
#[derive(Clone)]
pub struct PoolBuilder<D: Driver> {
    driver: D,
    config: PoolConfig,
    functions: Vec<FunctionSpec>,
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

    /// Sets [`PoolConfig::removal_timeout`].
    pub fn removal_timeout(mut self, timeout: Duration) -> Self {
        self.config.removal_timeout = timeout;
        self
    }

    /// Registers `specs` as the pool's functions as it is built, before it
    /// looks at what an earlier run of it left: hot containers of these
    /// functions that are provably between calls are then taken over
    /// ([`PoolBuilder::build`]). Functions registered after the build start
    /// cold.
    pub fn functions(mut self, specs: impl IntoIterator<Item = FunctionSpec>) -> Self {
        self.functions.extend(specs);
        self
    }

    /// Claims the pool's name on the driver's engine, deals with the
    /// containers an earlier run of it left (one that crashed, say), and
    /// starts the pool. A left container is taken over, idle and hot, if it
    /// is provably between calls (the driver says: [`Driver::adopt`]) and one
    /// of the [`PoolBuilder::functions`] would have started it (its spec
    /// fingerprint matches), as far as that function's concurrency and the
    /// memory budget allow; every other one is removed. Before that, if the
    /// earlier owner handed over ([`Pool::hand_over`]), the keep-alive policy
    /// of each of those functions whose keep-alive is unchanged starts from
    /// what it had learned; one that cannot be read is logged and ignored. If
    /// a live pool owns the name, fails with [`BuildError::Claim`] having
    /// touched nothing. The pool holds the claim until it is dropped.
    pub async fn build(self) -> Result<Pool<D>, BuildError> {
        let claim = self.driver.claim_pool(&self.config.name).await?;
        let inner = Inner::new(self.driver, self.config, claim);
        for spec in self.functions {
            inner.register(spec);
        }
        inner.with_claim(|claim| inner.restore_policies(claim));
        let (adopted, removed) = inner.adopt_leftovers().await.map_err(BuildError::Sweep)?;
        tracing::info!(adopted, removed, pool = %inner.config.name, "took over and removed the containers an earlier run left");
        inner.tracker.spawn(inner.clone().reaper());
        Ok(Pool { inner })
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The name is owned by a live pool on this engine
    /// ([`ClaimError::Owned`]), or could not be claimed; nothing was touched.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Looking at or removing the containers an earlier run left failed.
    #[error("taking over or removing the containers an earlier run of the pool left: {0}")]
    Sweep(CallError),
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
#[non_exhaustive]
pub struct PoolStatus {
    /// [`PoolConfig::memory_budget`].
    pub memory_budget: u64,
    /// The memory limits of live containers, added up.
    pub memory_reserved: u64,
    /// Every function version, current and draining, by name.
    pub functions: Vec<FunctionStatus>,
}

impl<D: Driver> Pool<D> {
    /// A builder with [`PoolConfig::default`] settings.
    pub fn builder(driver: D) -> PoolBuilder<D> {
        PoolBuilder {
            driver,
            config: PoolConfig::default(),
            functions: Vec::new(),
        }
    }

    /// Makes `spec` the current version of its name and returns its handle. A
    /// spec with the running version's container spec changes its limits in
    /// place; any other makes a new version, and the old one drains.
    pub fn register(&self, spec: FunctionSpec) -> Function<D> {
        let name: Arc<str> = spec.name.as_str().into();
        self.inner.register(spec);
        Function {
            inner: self.inner.clone(),
            name,
        }
    }

    /// The handle of function `name`, if it is registered.
    pub fn function(&self, name: &str) -> Option<Function<D>> {
        let pool = self.inner.current(name).ok()?;
        Some(Function {
            inner: self.inner.clone(),
            name: pool.name.clone(),
        })
    }

    /// Removes function `name`: its containers drain and go, and calls to it get
    /// `unknown_function`. Says whether it was registered.
    pub fn remove(&self, name: &str) -> bool {
        self.inner.remove(name)
    }

    /// The current spec of every registered function, by name.
    pub fn specs(&self) -> Vec<FunctionSpec> {
        let mut specs: Vec<_> = self
            .inner
            .specs()
            .into_iter()
            .map(|spec| (*spec).clone())
            .collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// A snapshot of every function pool.
    pub fn status(&self) -> PoolStatus {
        let mut functions: Vec<_> = self
            .inner
            .versions
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

    /// The stderr of call `call_id` (by [`Request::id`], the server's
    /// `Hotpool-Call-Id`) as its function's containers logged it, while the
    /// pool keeps it: from the call's first record, with lines that come shortly
    /// after it ended, until the store of recent calls' logs
    /// ([`PoolConfig::call_logs_bytes`]) drops it to make room, those of calls
    /// that succeeded first. `None` for a call that logged nothing, one it never
    /// saw, or one it no longer keeps.
    pub fn call_log(&self, call_id: &str) -> Option<CallLog> {
        self.inner.call_logs.get(call_id)
    }

    /// A reader of the log of call `call_id` as it grows (a call in flight),
    /// while the pool keeps it: what it holds, then each record as it comes,
    /// until the call has ended and [`FOLLOW_LINGER`] passed.
    pub fn follow_call_log(&self, call_id: &str) -> Option<CallLogFollower> {
        self.inner.call_logs.follow(call_id)
    }

    /// The store of recent calls' logs, to see what it holds.
    pub fn call_logs(&self) -> &CallLogs {
        &self.inner.call_logs
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
    /// once they are gone. The pool still owns its name until it is dropped,
    /// every clone and [`Function`] handle of it.
    ///
    /// The removals take [`PoolConfig::removal_timeout`] at most, and an
    /// engine that stops answering is given up on sooner, once it has removed
    /// no container for the driver's [`Driver::removal_deadline`]: shutdown
    /// then returns the containers it left (their removals go on in the
    /// background while the process lives), so it ends at most the shutdown
    /// timeout plus the removal timeout after it began.
    pub async fn shutdown(&self) -> Leftovers {
        self.inner.shutdown().await
    }

    /// What `with` makes of the pool's claim of its name
    /// ([`Driver::claim_pool`]); `None` once the pool handed over.
    pub fn with_claim<R>(&self, with: impl FnOnce(&D::Claim) -> R) -> Option<R> {
        self.inner.with_claim(with)
    }

    /// Hands the pool over to its next owner: as [`Pool::shutdown`], but its
    /// idle hot containers (and those whose call ends in time) are let go
    /// rather than removed ([`crate::driver::Cookie::release`]), to be taken
    /// over by the next pool of the name as it is built
    /// ([`PoolBuilder::functions`]); the rest are removed. The pool lets go
    /// of its name as this returns, so the next owner can build; it takes no
    /// more calls. Containers the driver cannot let go are removed. What each
    /// function's keep-alive policy learned is left to the next owner too,
    /// through the claim ([`crate::driver::PoolClaim::leave_policies`]), just
    /// before the name is let go.
    pub async fn hand_over(&self) -> Leftovers {
        self.inner.hand_over().await
    }
}

/// A registered function. Cheap to clone; calls go to the current version of its
/// name.
pub struct Function<D: Driver> {
    inner: Arc<Inner<D>>,
    name: Arc<str>,
}

impl<D: Driver> Clone for Function<D> {
    fn clone(&self) -> Self {
        Function {
            inner: self.inner.clone(),
            name: self.name.clone(),
        }
    }
}

impl<D: Driver> Function<D> {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the function with `request`: in a hot container (started if none is
    /// free), or in a new container for `cold` functions. A function removed since
    /// gives `unknown_function`. A chunked response is read whole, up to
    /// [`PoolConfig::max_response_bytes`] as any other. The call does not borrow
    /// the handle.
    pub fn call(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Response, CallError>> + 'static {
        let (inner, name) = (self.inner.clone(), self.name.clone());
        async move {
            let limit = inner.config.max_response_bytes;
            match inner.call(&name, request, limit, None).await? {
                Answer::Whole(response) => Ok(response),
                Answer::Streaming(streaming) => streaming.collect().await,
            }
        }
    }

    /// Calls the function as [`Function::call`] does, but a chunked response
    /// streams: its body comes as the function writes it, up to
    /// [`PoolConfig::max_stream_bytes`], and is cut as [`BodyStream`] says.
    pub fn call_streamed(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Answer, CallError>> + 'static {
        let (inner, name) = (self.inner.clone(), self.name.clone());
        async move {
            let limit = inner.config.max_stream_bytes;
            inner.call(&name, request, limit, None).await
        }
    }

    /// Calls the function as [`Function::call_streamed`] does, its request's
    /// body streaming in from `body` (`request.body` is not sent): to an `http`
    /// function, as a chunked request written as `body` yields it, at most
    /// [`PoolConfig::max_stream_bytes`], while its answer is read (it may
    /// answer, or stream, before the body is all in). Functions of other
    /// formats need their body whole: they give [`CallError::RequestBody`]
    /// (of kind `cancelled`), as does a body that fails or passes the limit,
    /// which cuts the call.
    pub fn call_with_body(
        &self,
        request: Request,
        body: RequestBody,
    ) -> impl Future<Output = Result<Answer, CallError>> + 'static {
        let (inner, name) = (self.inner.clone(), self.name.clone());
        async move {
            let limit = inner.config.max_stream_bytes;
            inner.call(&name, request, limit, Some(body)).await
        }
    }

    /// The lifecycle of its current version; `None` once it was removed.
    pub fn lifecycle(&self) -> Option<Lifecycle> {
        Some(self.inner.current(&self.name).ok()?.lifecycle())
    }

    /// Its current spec; `None` once it was removed.
    pub fn spec(&self) -> Option<FunctionSpec> {
        let pool = self.inner.current(&self.name).ok()?;
        Some((*pool.spec()).clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::driver::Task;
    use crate::driver::in_process::{InProcessClaim, InProcessCookie, InProcessDriver};

    /// The in-process driver, writing down each claim and each label sweep.
    #[derive(Clone)]
    struct Recording {
        driver: InProcessDriver,
        done: Arc<Mutex<Vec<String>>>,
    }

    impl Recording {
        fn done(&self) -> Vec<String> {
            self.done.lock().unwrap().clone()
        }
    }

    impl Driver for Recording {
        type Cookie = InProcessCookie;
        type Claim = InProcessClaim;

        fn traits(&self) -> crate::driver::EngineTraits {
            self.driver.traits()
        }

        async fn prepare(&self, task: Task) -> Result<InProcessCookie, CallError> {
            self.driver.prepare(task).await
        }

        async fn claim_pool(&self, pool: &str) -> Result<InProcessClaim, ClaimError> {
            let claimed = self.driver.claim_pool(pool).await;
            let outcome = if claimed.is_ok() { "claim" } else { "refused" };
            self.done.lock().unwrap().push(format!("{outcome} {pool}"));
            claimed
        }

        async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, CallError> {
            self.done
                .lock()
                .unwrap()
                .push(format!("sweep {key}={value}"));
            self.driver.remove_labelled(key, value).await
        }

        async fn leftovers(
            &self,
            key: &str,
            value: &str,
        ) -> Result<Vec<crate::driver::Leftover>, CallError> {
            self.done
                .lock()
                .unwrap()
                .push(format!("look {key}={value}"));
            self.driver.leftovers(key, value).await
        }

        async fn ping(&self) -> Result<(), CallError> {
            self.driver.ping().await
        }

        fn removal_deadline(&self) -> Duration {
            self.driver.removal_deadline()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_build_claims_before_it_looks_at_leftovers_and_a_refused_one_touches_nothing() {
        let driver = Recording {
            driver: InProcessDriver::new(Duration::ZERO),
            done: Arc::default(),
        };
        let first = Pool::builder(driver.clone())
            .name("p")
            .build()
            .await
            .unwrap();
        assert_eq!(driver.done(), ["claim p", "look hotpool.pool=p"]);

        let refused = Pool::builder(driver.clone()).name("p").build().await;
        match refused {
            Err(BuildError::Claim(ClaimError::Owned { pool, owner })) => {
                assert_eq!(pool, "p");
                assert_eq!(owner.pid, Some(std::process::id()));
            }
            Err(other) => panic!("not refused as owned: {other}"),
            Ok(_) => panic!("a second pool of one name was built"),
        }
        assert_eq!(
            driver.done(),
            ["claim p", "look hotpool.pool=p", "refused p"],
            "a refused build touches nothing"
        );

        // Shutdown's last sweep, still under the claim; then the name is free.
        first.shutdown().await;
        drop(first);
        Pool::builder(driver.clone())
            .name("p")
            .build()
            .await
            .unwrap();
        assert_eq!(
            driver.done()[3..],
            ["sweep hotpool.pool=p", "claim p", "look hotpool.pool=p"]
        );
    }
}
