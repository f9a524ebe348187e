//! `hotpool serve --config hotpool.toml`: the pool behind an HTTP API.
//!
//! Startup raises the open-file limit to its maximum, binds the port, claims
//! the pool's name on the engine, takes over the idle hot containers an
//! earlier run of the same pool left running that its functions would have
//! started and removes the rest, and installs the direct transport's runtime
//! (which removes the pipe directories of containers that are gone). A port in
//! use exits 1, and a pool name that a running hotpool owns exits 2 at once,
//! with one line naming the owner: either way before anything is touched.
//!
//! `--take-over` takes the pool over from the server of it running on this
//! machine instead ([`super::handover`]): its listening socket, then, once it
//! has finished its calls and let its idle containers go, its name and those
//! containers. The server handing over exits 0.
//!
//! While it serves, a prober pings the engine every few seconds for
//! `/healthz` ([`hotpool::server::engine_health`]).
//!
//! SIGINT or SIGTERM stop taking calls and connections, let calls in flight
//! finish within the pool's shutdown timeout (a client that never finishes its
//! request is cut then), and remove every container before exiting 0. An
//! engine that stops answering is given up on once it has removed no container
//! for the driver's removal deadline: the exit (status 1) then comes at most
//! that long after the shutdown timeout, with one line saying what was left.
//! SIGHUP reloads the functions of the config ([`super::reload`]).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use hotpool::driver::{AnyDriver, ClaimError, Driver, PoolLock, Transport};
use hotpool::pool::{BuildError, Leftovers, POOL_LABEL, Pool, PoolBuilder};
use hotpool::server::auth::Tokens;
use hotpool::server::connections::{self, ConnectionLimits};
use hotpool::server::engine_health::{self, EngineHealth};
use hotpool::server::{AppState, router};

use super::handover::{self, HandoverListener};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The config file (TOML); see examples/hotpool.toml.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Take the pool over from the server of it running on this machine (an
    /// upgrade, a restart for a `[server]` or `[pool]` change): its listening
    /// socket and its idle containers, once it has finished its calls. With
    /// none running, start as usual.
    #[arg(long)]
    take_over: bool,
    /// Once it has handed the pool over, wait for SIGTERM or SIGINT and then
    /// exit 0, touching nothing, rather than exit at once (a Kubernetes pod
    /// that would otherwise be restarted, and take the pool back).
    #[arg(long)]
    wait_after_handover: bool,
}

/// Serves until a signal; returns the exit status.
pub(crate) async fn serve(args: ServeArgs) -> i32 {
    let config = match ServeConfig::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hotpool: bad config {}: {error}", args.config.display());
            return 2;
        }
    };
    let tokens = match &config.server.auth_tokens_file {
        Some(path) => match Tokens::load(path) {
            Ok(tokens) => Some(tokens),
            Err(error) => {
                eprintln!(
                    "hotpool: bad config {}: server.auth_tokens_file: {error}",
                    args.config.display()
                );
                return 2;
            }
        },
        None => None,
    };
    raise_open_file_limit();
    let metrics = match crate::exporter::install() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("hotpool: cannot set up metrics: {error}");
            return 1;
        }
    };
    let driver = match AnyDriver::connect(&config.engine).await {
        Ok(driver) => driver,
        Err(error) => {
            eprintln!("hotpool: {error}");
            return 1;
        }
    };
    if let Err(error) = config.check_engine(&driver.traits()) {
        eprintln!("hotpool: bad config {}: {error}", args.config.display());
        return 2;
    }
    let builder = Pool::builder(driver.clone())
        .config(config.pool.clone())
        .functions(config.functions.iter().cloned());
    let started = if args.take_over {
        take_over(builder, &config, &driver).await
    } else {
        bind_and_build(builder, &config).await
    };
    let (listener, pool) = match started {
        Ok(started) => started,
        Err(status) => return status,
    };
    let direct = config
        .functions
        .iter()
        .any(|function| function.transport == Transport::Direct);
    if direct {
        // Now rather than at the first start: a problem shows at once.
        match driver.install_runtime().await {
            Ok(init) => tracing::debug!(init = %init.display(), "hotpool-init installed"),
            Err(error) => tracing::warn!(%error, "direct functions will fail to start"),
        }
    }
    let address = listener.local_addr().map_or(config.server.listen, |a| a);
    let names: Vec<&str> = config.functions.iter().map(|f| f.name.as_str()).collect();
    println!(
        "hotpool serving {} on http://{address} (pid {})",
        names.join(", "),
        std::process::id()
    );
    let stopping = CancellationToken::new();
    let engine = Arc::new(EngineHealth::default());
    tokio::spawn(engine_health::probe(
        driver.clone(),
        engine.clone(),
        stopping.clone(),
    ));
    let state = Arc::new(AppState {
        pool: pool.clone(),
        max_body: usize::try_from(config.server.max_body).unwrap_or(usize::MAX),
        body_timeout: config.server.body_timeout,
        max_stream: usize::try_from(config.server.max_stream).unwrap_or(usize::MAX),
        metrics: Some(metrics),
        tokens,
        metrics_auth: config.server.metrics_auth,
        engine,
    });
    let limits = ConnectionLimits {
        max_connections: config.server.max_connections,
        header_timeout: config.server.header_timeout,
        drain_timeout: config.pool.shutdown_timeout,
    };
    let pool_name = config.pool.name.clone();
    tokio::spawn(super::reload::on_hangup(
        args.config.clone(),
        pool.clone(),
        config,
        stopping.clone(),
    ));
    let handover_path = pool.with_claim(PoolLock::handover_path);
    let handover = match handover_path.map(|path| HandoverListener::bind(&path)) {
        Some(Ok(handover)) => Some(handover),
        None => None,
        Some(Err(error)) => {
            tracing::warn!(%error, "no hand-over socket: `serve --take-over` cannot take this pool over");
            None
        }
    };
    let socket = listener.as_raw_fd();
    let shutdown = tokio::spawn({
        let (pool, stopping) = (pool.clone(), stopping.clone());
        async move {
            let asked = async {
                match &handover {
                    Some(handover) => handover.requested(socket).await,
                    None => std::future::pending().await,
                }
            };
            let handing_over = tokio::select! {
                () = super::stop_signal() => false,
                asked = asked => asked.is_ok(),
            };
            stopping.cancel();
            if handing_over {
                // The calls of the connections still open finish first.
                println!(
                    "hotpool: handing over to the next server: finishing calls in flight, letting idle containers go"
                );
                return None;
            }
            println!("hotpool: shutting down: finishing calls in flight, removing containers");
            Some(pool.shutdown().await)
        }
    });
    connections::serve(listener, router(state), limits, stopping).await;
    let (handed_over, leftovers) = match shutdown.await {
        Ok(Some(leftovers)) => (false, leftovers),
        Ok(None) => (true, pool.hand_over().await),
        Err(_) => {
            // The shutdown itself failed: nothing says what it removed.
            let mut unknown = Leftovers::default();
            unknown.unswept = true;
            (false, unknown)
        }
    };
    let status = if leftovers.is_empty() {
        if handed_over {
            println!("hotpool: handed over; idle containers left to the next server");
        } else {
            println!("hotpool: stopped; every container removed");
        }
        0
    } else {
        println!("hotpool: stopped; {}", left_behind(&leftovers, &pool_name));
        1
    };
    if handed_over && args.wait_after_handover {
        println!("hotpool: waiting for SIGTERM or SIGINT");
        super::stop_signal().await;
    }
    status
}

/// Binds the server's address, then builds the pool (claiming its name): a
/// port in use exits 1 before the pool is touched, a name owned by a running
/// server exits 2.
async fn bind_and_build(
    builder: PoolBuilder<AnyDriver>,
    config: &ServeConfig,
) -> Result<(TcpListener, Pool<AnyDriver>), i32> {
    let listener = bind(config.server.listen).await?;
    let pool = match builder.build().await {
        Ok(pool) => pool,
        Err(error @ BuildError::Claim(ClaimError::Owned { .. })) => {
            eprintln!("hotpool: {error} (`hotpool serve --take-over` takes it over)");
            return Err(2);
        }
        Err(error) => {
            eprintln!("hotpool: {error}");
            return Err(1);
        }
    };
    Ok((listener, pool))
}

/// Takes the pool over from the server of it running here, if one is: gets
/// its listening socket, waits for it to finish its calls and let its
/// containers go, and builds the pool, taking them over. With none running,
/// binds and builds as usual.
///
/// Nothing of the pool is touched until the address is this server's own or
/// the owner has handed it over: with the address in use and no owner (a
/// server that took the pool over an instant ago and has not claimed it yet),
/// it exits 2, so two servers taking over at once never both build, and the
/// one that loses never removes the containers the other is about to take.
async fn take_over(
    builder: PoolBuilder<AnyDriver>,
    config: &ServeConfig,
    driver: &AnyDriver,
) -> Result<(TcpListener, Pool<AnyDriver>), i32> {
    let pool_name = &config.pool.name;
    let address = config.server.listen;
    let (owner, own_listener) = match TcpListener::bind(address).await {
        // Nobody listens here: start, unless an owner listens elsewhere.
        Ok(listener) => match builder.clone().build().await {
            Ok(pool) => {
                println!("hotpool: no server of pool {pool_name} runs here; starting");
                return Ok((listener, pool));
            }
            Err(BuildError::Claim(ClaimError::Owned { owner, .. })) => (owner, Some(listener)),
            Err(error) => {
                eprintln!("hotpool: {error}");
                return Err(1);
            }
        },
        // Someone listens: only ask who owns the pool, touching nothing.
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            match driver.claim_pool(pool_name).await {
                Ok(claim) => {
                    drop(claim);
                    eprintln!(
                        "hotpool: cannot listen on {address}: {error}, and no server owns pool {pool_name} \
                         (another server may be taking it over): touched nothing"
                    );
                    return Err(2);
                }
                Err(ClaimError::Owned { owner, .. }) => (owner, None),
                Err(error) => {
                    eprintln!("hotpool: {error}");
                    return Err(1);
                }
            }
        }
        Err(error) => {
            eprintln!("hotpool: cannot listen on {address}: {error}");
            return Err(1);
        }
    };
    let Some(path) = owner.handover.clone() else {
        eprintln!("hotpool: pool {pool_name} is owned by {owner}, which takes no hand-over");
        return Err(2);
    };
    let handed = match handover::request(&path).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("hotpool: {owner} did not hand pool {pool_name} over: {error}");
            return Err(2);
        }
    };
    println!("hotpool: {owner} is handing pool {pool_name} over");
    let listener = match own_listener {
        Some(listener) if address.port() != 0 => {
            let theirs = handed
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string());
            println!("hotpool: the server listened on {theirs}; listening on {address} instead");
            listener
        }
        _ => TcpListener::from_std(handed).map_err(|error| {
            eprintln!("hotpool: cannot use the socket handed over: {error}");
            1
        })?,
    };
    // The owner lets go of the name once its calls are done and its
    // containers let go: at most its shutdown and removal timeouts.
    let patience = config.pool.shutdown_timeout + config.pool.removal_timeout + HANDOVER_MARGIN;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match builder.clone().build().await {
            Ok(pool) => return Ok((listener, pool)),
            Err(BuildError::Claim(ClaimError::Owned { .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(CLAIM_PAUSE).await;
            }
            Err(error) => {
                eprintln!("hotpool: {error}");
                return Err(1);
            }
        }
    }
}

/// How much longer than its timeouts a server handing over may take.
const HANDOVER_MARGIN: Duration = Duration::from_secs(10);
/// How often the next server tries the name while the owner lets it go.
const CLAIM_PAUSE: Duration = Duration::from_millis(20);

/// Listens on `address`; a port in use exits 1.
async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, i32> {
    TcpListener::bind(address).await.map_err(|error| {
        eprintln!("hotpool: cannot listen on {address}: {error}");
        1
    })
}

/// The line that says what a stop left on the engine.
fn left_behind(leftovers: &Leftovers, pool: &str) -> String {
    /// The most container ids the line names.
    const NAMED: usize = 10;
    let find = format!("`docker ps -a --filter label={POOL_LABEL}={pool}` lists what is left");
    let ids = &leftovers.containers;
    if ids.is_empty() {
        return format!(
            "the engine did not confirm it removed every container of pool {pool}: {find}"
        );
    }
    let mut named = ids[..ids.len().min(NAMED)].join(", ");
    if ids.len() > NAMED {
        named.push_str(&format!(" and {} more", ids.len() - NAMED));
    }
    format!(
        "the engine did not remove {} container{} of pool {pool} ({named}): {find}",
        ids.len(),
        if ids.len() == 1 { "" } else { "s" }
    )
}

/// Raises the soft limit on open files to the hard limit: each connection and each
/// hot container's pipes take descriptors, and the usual soft limit of 1024 is
/// far below what a server needs.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        tracing::debug!(open_files = limit.rlim_cur, "raised the open-file limit");
    } else {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not raise the open-file limit"
        );
    }
}
