//! The HTTP API of `hotpool serve`.
//!
//! - `POST /invoke/{name}`: the request body goes to the function, its output comes
//!   back, with `Hotpool-Call-Id` and `Hotpool-Start: hot|cold` headers (and
//!   `Hotpool-Stats: cpu_ratio=...; memory_bytes=...; samples=N`). Errors are JSON
//!   `{"error":{"kind":"...","message":"...","call_id":"..."}}` with the status of
//!   their kind; `busy` adds `Retry-After`.
//! - `GET /calls/{id}/log`: the stderr of call `id` (its `Hotpool-Call-Id`), one
//!   record a line, escaped as in the server's log, `text/plain; charset=utf-8`,
//!   with `Hotpool-Call-State: running|succeeded|failed`, while the pool keeps it
//!   ([`crate::pool::Pool::call_log`]; bounded by `[server] call_logs`). A
//!   404 `unknown_call` for a call that wrote nothing, once the log was
//!   dropped, or for a call never seen. `?follow=1` streams it instead:
//!   what it holds, then each record as it comes, until the call has ended (and
//!   [`crate::pool::FOLLOW_LINGER`] more for its last lines).
//! - `GET /functions`: the configured functions, their limits and keep-alive
//!   policy, their containers, and when the next idle one goes
//!   (`idle_deadline_ms`, null when none is idle).
//! - `GET /healthz`: 200 `{"status":"ok","engine":"ok"}` while the engine
//!   answers its probes ([`engine_health`]); 503
//!   `{"status":"engine_unreachable","engine":"<what failed, since when>"}` once
//!   it does not, so a load balancer takes the node out.
//! - `GET /livez`: 200 while the server runs, engine or not (for a liveness
//!   probe: restarting hotpool mends no engine, and it would drop the hot
//!   containers that still serve).
//! - `GET /metrics`: Prometheus text.
//!
//! Every error the API sends, unknown routes and wrong methods included, is one
//! [`error::ApiError`], in JSON. A request body is always read to its end (within
//! the size limit and the body timeout) before the answer, so a keep-alive
//! connection stays usable; an answer sent with the body unread says
//! `Connection: close`. With [`auth::Tokens`], every route but `/healthz`, `/livez` (and
//! `/metrics`, unless configured) needs a bearer token.
//! [`connections`] is the listener: connection cap, head timeout, drain on stop.

pub mod auth;
pub mod connections;
pub mod engine_health;
pub mod error;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::driver::Driver;
use crate::error::CallError;
use crate::pool::{Answer, Format, Lifecycle, Pool, Request, RequestBody};
use auth::Tokens;
use engine_health::EngineHealth;
use error::{ApiError, CALL_ID, Reason};

/// What every request handler shares.
pub struct AppState<D: Driver> {
    /// The pool calls run in; the functions registered in it may be invoked.
    pub pool: Pool<D>,
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long a request body may take to arrive (one read whole).
    pub body_timeout: Duration,
    /// The largest request body streamed into an `http` function (sent
    /// chunked), in bytes; such a body arrives within the call's timeout.
    pub max_stream: usize,
    /// Renders `/metrics`; `None` serves an empty page.
    pub metrics: Option<PrometheusHandle>,
    /// The bearer tokens that let requests in; `None`: no authentication.
    pub tokens: Option<Tokens>,
    /// Whether `/metrics` needs a token too (when there are tokens).
    pub metrics_auth: bool,
    /// Whether the engine answers, as its prober last found.
    pub engine: Arc<EngineHealth>,
}

/// The router of the API.
pub fn router<D: Driver>(state: Arc<AppState<D>>) -> Router {
    Router::new()
        .route("/invoke/{name}", post(invoke::<D>))
        .route("/calls/{id}/log", get(call_log::<D>))
        .route("/functions", get(functions::<D>))
        .route("/healthz", get(healthz::<D>))
        .route("/livez", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics::<D>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate::<D>,
        ))
        .with_state(state)
}

/// A JSON body.
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

async fn healthz<D: Driver>(State(state): State<Arc<AppState<D>>>) -> Response {
    match state.engine.problem(std::time::SystemTime::now()) {
        None => Json(json!({"status": "ok", "engine": "ok"})).into_response(),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "engine_unreachable", "engine": problem})),
        )
            .into_response(),
    }
}

async fn not_found(request: HttpRequest) -> ApiError {
    ApiError::from(Reason::NoRoute {
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
    })
}

async fn method_not_allowed(request: HttpRequest) -> ApiError {
    ApiError::from(Reason::MethodNotAllowed {
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
    })
}

/// Lets a request through if it needs no token or carries a good one.
async fn authenticate<D: Driver>(
    State(state): State<Arc<AppState<D>>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    let open = match request.uri().path() {
        "/healthz" | "/livez" => true,
        "/metrics" => !state.metrics_auth,
        _ => false,
    };
    match &state.tokens {
        Some(tokens) if !open && !tokens.admits(request.headers()) => {
            let call_id = crate::driver::new_id();
            tracing::info!(%call_id, method = %request.method(), path = request.uri().path(), "unauthorized: no good bearer token");
            ApiError::from(Reason::Unauthorized)
                .in_call(&call_id)
                .into_response()
        }
        _ => next.run(request).await,
    }
}

/// Reads a request body of at most `max` bytes within `timeout`.
async fn read_body(body: Body, max: usize, timeout: Duration) -> Result<Bytes, Reason> {
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(Reason::BodyTooLarge { max }),
        Ok(Err(error)) => Err(Reason::MalformedBody {
            detail: error.to_string(),
        }),
        Err(_) => Err(Reason::BodyTimeout { timeout }),
    }
}

const START: HeaderName = HeaderName::from_static("hotpool-start");
const CALL_STATE: HeaderName = HeaderName::from_static("hotpool-call-state");
const STATS: HeaderName = HeaderName::from_static("hotpool-stats");

/// Logs a call whose client went away before it ended (status 499).
struct Abandoned<'a> {
    function: &'a str,
    call_id: &'a str,
    finished: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(
                function = self.function,
                call_id = self.call_id,
                status = 499,
                "the client went away; call cancelled"
            );
        }
    }
}

async fn invoke<D: Driver>(
    State(state): State<Arc<AppState<D>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let call_id = crate::driver::new_id();
    let refused = |reason: Reason| ApiError::from(reason).in_call(&call_id);
    let found = state.pool.function(&name).and_then(|f| {
        let lifecycle = f.lifecycle()?;
        Some((f, lifecycle))
    });
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .is_some_and(|coding| coding.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if let Some((function, Lifecycle::Hot(Format::Http))) = &found
        && chunked
    {
        let (upload, cut) = upload(body, state.max_stream);
        let request = request_of(&call_id, Bytes::new(), &headers);
        let called = function.call_with_body(request, upload);
        return answer(&name, &call_id, Lifecycle::Hot(Format::Http), called)
            .await
            .map_err(|error| match (error, cut.lock().unwrap().take()) {
                (CallError::RequestBody { .. }, Some(reason)) => refused(reason),
                (error, _) => refused(Reason::Call(error)),
            });
    }
    let body = read_body(body, state.max_body, state.body_timeout)
        .await
        .map_err(refused)?;
    let Some((function, lifecycle)) = found else {
        return Err(refused(Reason::Call(CallError::UnknownFunction { name })));
    };
    if lifecycle == Lifecycle::Hot(Format::Line) && body.contains(&b'\n') {
        return Err(refused(Reason::NotOneLine { function: name }));
    }
    let request = request_of(&call_id, body, &headers);
    answer(&name, &call_id, lifecycle, function.call_streamed(request))
        .await
        .map_err(|error| refused(Reason::Call(error)))
}

/// The request of call `call_id` with `body` and the caller's `headers`.
fn request_of(call_id: &str, body: Bytes, headers: &HeaderMap) -> Request {
    let mut request = Request::new(body);
    request.id = call_id.to_owned();
    request.headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    request
}

/// A request body streamed into a function, at most `max` bytes; a body
/// past it, or one that fails, ends in an error, and says why in the reason
/// the second half holds then.
fn upload(body: Body, max: usize) -> (RequestBody, Arc<std::sync::Mutex<Option<Reason>>>) {
    let cut = Arc::new(std::sync::Mutex::new(None));
    let said = cut.clone();
    let mut received = 0usize;
    let pieces = body.into_data_stream().map(move |piece| {
        let refused = |reason: Reason| {
            let message = reason.to_string();
            *said.lock().unwrap() = Some(reason);
            std::io::Error::other(message)
        };
        let piece = piece.map_err(|error| {
            refused(Reason::MalformedBody {
                detail: error.to_string(),
            })
        })?;
        received += piece.len();
        if received > max {
            return Err(refused(Reason::BodyTooLarge { max }));
        }
        Ok(piece)
    });
    (RequestBody::new(pieces), cut)
}

/// The answer to call `call_id` of function `name`, whose `lifecycle` is
/// given, once `called` has it: whole or streaming, with hotpool's headers.
async fn answer(
    name: &str,
    call_id: &str,
    lifecycle: Lifecycle,
    called: impl Future<Output = Result<Answer, CallError>>,
) -> Result<Response, CallError> {
    let started = Instant::now();
    let mut abandoned = Abandoned {
        function: name,
        call_id,
        finished: false,
    };
    let result = called.await;
    abandoned.finished = true;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let answer = match result {
        Ok(answer) => answer,
        Err(error) => {
            tracing::info!(function = %name, %call_id, kind = error.kind().as_str(), elapsed_ms, error = %error, "call failed");
            return Err(error);
        }
    };
    let (status, start, headers, body, stats) = match answer {
        Answer::Whole(whole) => (
            whole.status,
            whole.start,
            whole.headers,
            Body::from(whole.body),
            whole.stats,
        ),
        Answer::Streaming(streaming) => (
            streaming.status,
            streaming.start,
            streaming.headers,
            Body::from_stream(streaming.body),
            None,
        ),
    };
    tracing::debug!(function = %name, %call_id, status, elapsed_ms, start = start.as_str(), "call");
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let out = response.headers_mut();
    for (key, value) in &headers {
        if let (Ok(key), Ok(value)) = (
            HeaderName::try_from(key.as_str()),
            HeaderValue::from_str(value),
        ) {
            out.append(key, value);
        }
    }
    if lifecycle != Lifecycle::Hot(Format::Http) {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    out.insert(
        CALL_ID,
        HeaderValue::from_str(call_id).unwrap_or(HeaderValue::from_static("-")),
    );
    out.insert(START, HeaderValue::from_static(start.as_str()));
    if let Some(stats) = &stats
        && let Ok(value) = HeaderValue::from_str(&stats.header_value())
    {
        out.insert(STATS, value);
    }
    Ok(response)
}

/// Whether a call log's query string (`follow=1`) asks to follow it.
fn follows(query: Option<&str>) -> Result<bool, Reason> {
    let mut follow = false;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "1"));
        if key != "follow" {
            return Err(Reason::BadQuery {
                detail: format!("{key}: the only parameter is follow=1"),
            });
        }
        follow = match value {
            "1" | "true" => true,
            "0" | "false" => false,
            other => {
                return Err(Reason::BadQuery {
                    detail: format!("follow={other}: use follow=1 or follow=0"),
                });
            }
        };
    }
    Ok(follow)
}

/// `GET /calls/{id}/log`: the call's stderr as the pool keeps it; with
/// `follow=1`, streamed as it grows.
async fn call_log<D: Driver>(
    State(state): State<Arc<AppState<D>>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let follow = follows(query.as_deref()).map_err(|reason| ApiError::from(reason).in_call(&id))?;
    let unknown = || {
        ApiError::from(Reason::UnknownCall {
            call_id: id.clone(),
        })
        .in_call(&id)
    };
    let log = state.pool.call_log(&id).ok_or_else(unknown)?;
    let body = if follow {
        let follower = state.pool.follow_call_log(&id).ok_or_else(unknown)?;
        Body::from_stream(futures_util::stream::unfold(
            follower,
            |mut follower| async {
                let chunk = follower.next().await?;
                Some((Ok::<_, std::convert::Infallible>(chunk), follower))
            },
        ))
    } else {
        Body::from(log.text)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CALL_STATE, HeaderValue::from_static(log.state.as_str()));
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(CALL_ID, value);
    }
    Ok(response)
}

async fn functions<D: Driver>(State(state): State<Arc<AppState<D>>>) -> Json {
    let status = state.pool.status();
    let list: Vec<Value> = state
        .pool
        .specs()
        .iter()
        .map(|spec| {
            let live = status.functions.iter().find(|f| f.key == spec.key());
            json!({
                "name": spec.name,
                "image": spec.image,
                "cmd": spec.cmd,
                "format": spec.lifecycle.as_str(),
                "memory_bytes": spec.memory,
                "timeout_ms": spec.timeout.as_millis(),
                "keep_alive": spec.keep_alive.to_string(),
                "eviction": spec.eviction.to_string(),
                "max_concurrency": spec.max_concurrency,
                "min_idle": spec.min_idle,
                "cpus": f64::from(spec.cpus.millis()) / 1000.0,
                "user": spec.user,
                "read_only": spec.read_only,
                "transport": spec.transport.as_str(),
                "tmp_size_bytes": spec.tmp_size,
                "network": spec.network,
                "containers": {
                    "idle": live.map_or(0, |f| f.idle),
                    "busy": live.map_or(0, |f| f.busy),
                    "starting": live.map_or(0, |f| f.starting),
                },
                "waiting": live.map_or(0, |f| f.waiting),
                "idle_deadline_ms": live
                    .and_then(|f| f.idle_deadline)
                    .map(|deadline| deadline.as_millis()),
            })
        })
        .collect();
    Json(json!({
        "functions": list,
        "memory_budget_bytes": status.memory_budget,
        "memory_reserved_bytes": status.memory_reserved,
    }))
}

async fn metrics<D: Driver>(State(state): State<Arc<AppState<D>>>) -> Response {
    let text = state
        .metrics
        .as_ref()
        .map(|m| m.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_log_follows_with_follow_1_and_refuses_other_parameters() {
        for (query, follow) in [
            (None, false),
            (Some(""), false),
            (Some("follow=1"), true),
            (Some("follow"), true),
            (Some("follow=true"), true),
            (Some("follow=0"), false),
            (Some("follow=1&follow=0"), false),
        ] {
            assert_eq!(follows(query).unwrap(), follow, "{query:?}");
        }
        for query in ["follow=yes", "tail=10", "follow=1&x"] {
            let refused = follows(Some(query)).unwrap_err();
            assert_eq!(refused.kind(), "bad_request", "{query}");
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        }
    }
}
