//! The listener of `hotpool serve`: accepts connections within a cap and serves
//! them over HTTP/1.1 with a deadline on every request head.
//!
//! A slow or idle client can hold one connection slot at most until the head
//! timeout; past `max_connections` the server stops accepting, so waiting clients
//! queue in the kernel's backlog instead of costing file descriptors. On stop, the
//! listener closes, connections finish the request they are serving (one
//! accepted whose first request had not begun yet is served that request: its
//! client connected to send it), and whatever is still open when the drain
//! deadline passes (a client holding a half-sent head, say) is cut: stopping
//! never waits on a client.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How the listener treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// The most connections served at once.
    pub max_connections: usize,
    /// How long a client may take to send a request head (also how long an idle
    /// keep-alive connection stays open).
    pub header_timeout: Duration,
    /// How long connections get to finish once `stop` fires.
    pub drain_timeout: Duration,
}

/// How long to back off when `accept` fails (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` fires, then drains connections within
/// [`ConnectionLimits::drain_timeout`] and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (begin, begun) = watch::channel(false);
        let app = app.clone();
        let service = service_fn(move |request| {
            begin.send_replace(true);
            TowerToHyperService::new(app.clone()).call(request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let stop = stop.clone();
        connections.spawn(async move {
            // A client that resets or times out is its own problem, not the server's.
            let _ = serve_until_stopped(connection, begun, &stop).await;
            drop(slot);
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open at the drain deadline are cut"
        );
    }
    connections.shutdown().await;
}

/// Serves `connection` until it ends, or until `stop` fires and it has then
/// finished the request it serves. One accepted but whose first request has
/// not begun yet (`begun`) is given until it begins, as the head timeout
/// bounds: its client connected to send one, and may have sent it already.
async fn serve_until_stopped<C: GracefulConnection>(
    connection: C,
    mut begun: watch::Receiver<bool>,
    stop: &CancellationToken,
) -> Result<(), C::Error> {
    tokio::pin!(connection);
    tokio::select! {
        done = connection.as_mut() => return done,
        () = stop.cancelled() => {}
    }
    tokio::select! {
        done = connection.as_mut() => return done,
        _ = begun.wait_for(|begun| *begun) => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}
