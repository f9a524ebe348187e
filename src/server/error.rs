//! The errors `hotpool serve` answers with: one [`ApiError`] for every 4xx and 5xx.
//!
//! Each answer is JSON, `{"error":{"kind":"...","message":"...","call_id":"..."}}`
//! with the status of its kind. An answer to a request that was given an id (every
//! `POST /invoke`, and every request refused for its token) carries that id in
//! `call_id` and in the `Hotpool-Call-Id` header, so the log line of the same id
//! can be found; an unknown route or method has none (`call_id` is `-`). A failed
//! call adds what its [`CallError`] knows (`exit_code` and `stderr_tail`,
//! `memory_limit_bytes`, `timeout_ms`, `retry_after_s`), and `busy` a
//! `Retry-After` header. An answer sent before the request
//! body was read to its end says `Connection: close`. [`call_error_json`] is the
//! same JSON for a failed call, as `hotpool run` prints it.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Json;
use crate::error::{CallError, ErrorKind};

/// The header carrying the id of the call an answer belongs to.
pub(super) const CALL_ID: HeaderName = HeaderName::from_static("hotpool-call-id");

/// An error answer of the API: why, and the call it belongs to, if any.
#[derive(Debug)]
pub struct ApiError {
    reason: Reason,
    call_id: Option<String>,
}

/// Why the API refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// No route has this path.
    #[error(
        "no route {method} {path}; the API has POST /invoke/{{name}}, GET /calls/{{id}}/log, GET /functions, GET /healthz, GET /livez, GET /metrics"
    )]
    NoRoute {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// The route exists, but not for this method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// No log of this call is kept: the server never saw the call, it was refused
    /// before it ran, or its log was dropped to make room.
    #[error(
        "no log of call {call_id} is kept: the call wrote nothing to stderr, is unknown, or its log was dropped to keep [server] call_logs"
    )]
    UnknownCall {
        /// The id asked for.
        call_id: String,
    },
    /// The query string asks for what the route does not have.
    #[error("bad query: {detail}")]
    BadQuery {
        /// What was wrong with it.
        detail: String,
    },
    /// The request carries no configured bearer token.
    #[error("this server needs `Authorization: Bearer <token>` with a configured token")]
    Unauthorized,
    /// The request body is over the limit.
    #[error("the request body is larger than {max} bytes")]
    BodyTooLarge {
        /// The largest body accepted, in bytes.
        max: usize,
    },
    /// The request body could not be read.
    #[error("the request body is malformed: {detail}")]
    MalformedBody {
        /// What was wrong with it.
        detail: String,
    },
    /// The request body did not arrive in time.
    #[error("the request body did not arrive within {}", humantime::format_duration(*timeout))]
    BodyTimeout {
        /// How long it could take.
        timeout: Duration,
    },
    /// A body with a newline for a function of the `line` format.
    #[error("{function} speaks the line format: the body must be one line, without a newline")]
    NotOneLine {
        /// The function called.
        function: String,
    },
    /// The call ran and failed.
    #[error(transparent)]
    Call(#[from] CallError),
}

impl Reason {
    /// The stable `kind` string of the JSON body.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::NoRoute { .. } => "not_found",
            Reason::MethodNotAllowed { .. } => "method_not_allowed",
            Reason::UnknownCall { .. } => "unknown_call",
            Reason::Unauthorized => "unauthorized",
            Reason::BodyTooLarge { .. } => "body_too_large",
            Reason::MalformedBody { .. } | Reason::NotOneLine { .. } | Reason::BadQuery { .. } => {
                "bad_request"
            }
            Reason::BodyTimeout { .. } => "body_timeout",
            Reason::Call(error) => error.kind().as_str(),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Reason::NoRoute { .. } | Reason::UnknownCall { .. } => StatusCode::NOT_FOUND,
            Reason::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Reason::Unauthorized => StatusCode::UNAUTHORIZED,
            Reason::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::MalformedBody { .. } | Reason::NotOneLine { .. } | Reason::BadQuery { .. } => {
                StatusCode::BAD_REQUEST
            }
            Reason::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Reason::Call(error) => call_status(error.kind()),
        }
    }

    /// Whether the answer goes before the request body was read to its end, so the
    /// connection cannot carry another request.
    fn body_unread(&self) -> bool {
        match self {
            Reason::NoRoute { .. }
            | Reason::MethodNotAllowed { .. }
            | Reason::Unauthorized
            | Reason::BodyTooLarge { .. }
            | Reason::MalformedBody { .. }
            | Reason::BodyTimeout { .. } => true,
            Reason::NotOneLine { .. }
            | Reason::UnknownCall { .. }
            | Reason::BadQuery { .. }
            | Reason::Call(_) => false,
        }
    }
}

/// The status of a failed call (499, `cancelled`, is only ever logged: the
/// client is gone).
fn call_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Oom
        | ErrorKind::Exited
        | ErrorKind::ProtocolError
        | ErrorKind::ImageNotFound
        | ErrorKind::ImageUnauthorized
        | ErrorKind::PullFailed => StatusCode::BAD_GATEWAY,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Cancelled => StatusCode::from_u16(499).expect("499 is a status code"),
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::UnknownFunction => StatusCode::NOT_FOUND,
        // `engine_error`, and any kind a newer library adds before this table knows it.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The same error, belonging to call `call_id`.
    pub fn in_call(mut self, call_id: &str) -> ApiError {
        self.call_id = Some(call_id.to_owned());
        self
    }

    /// The JSON body of the answer.
    fn json(&self) -> Value {
        let mut fields = match &self.reason {
            Reason::Call(error) => call_error_fields(error),
            other => json!({"kind": other.kind(), "message": other.to_string()}),
        };
        fields["call_id"] = json!(self.call_id.as_deref().unwrap_or("-"));
        json!({ "error": fields })
    }
}

impl From<Reason> for ApiError {
    fn from(reason: Reason) -> ApiError {
        ApiError {
            reason,
            call_id: None,
        }
    }
}

impl From<CallError> for ApiError {
    fn from(error: CallError) -> ApiError {
        ApiError::from(Reason::Call(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.reason.status(), Json(self.json())).into_response();
        let headers = response.headers_mut();
        if self.reason.body_unread() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        match &self.reason {
            Reason::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Reason::Call(CallError::Busy { retry_after, .. }) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_s(*retry_after)),
                );
            }
            _ => {}
        }
        if let Some(call_id) = &self.call_id
            && let Ok(value) = HeaderValue::from_str(call_id)
        {
            headers.insert(CALL_ID, value);
        }
        response
    }
}

/// A failed call as JSON, `{"error":{"kind":"...","message":"...", ...}}`: what
/// `hotpool run` prints, and what the API sends (with `call_id`).
pub fn call_error_json(error: &CallError) -> Value {
    json!({ "error": call_error_fields(error) })
}

/// The fields of a failed call: its kind and message, `exit_code` and
/// `stderr_tail` for `exited`, `memory_limit_bytes` for `oom`, `timeout_ms` for
/// `timeout`, `retry_after_s` for `busy`.
fn call_error_fields(error: &CallError) -> Value {
    let mut fields = json!({ "kind": error.kind().as_str(), "message": error.to_string() });
    match error {
        CallError::Exited { code, stderr_tail } => {
            fields["exit_code"] = json!(code);
            fields["stderr_tail"] = json!(stderr_tail);
        }
        CallError::Oom { limit_bytes } => fields["memory_limit_bytes"] = json!(limit_bytes),
        CallError::Timeout { timeout } => fields["timeout_ms"] = json!(timeout.as_millis()),
        CallError::Busy { retry_after, .. } => {
            fields["retry_after_s"] = json!(retry_after_s(*retry_after))
        }
        _ => {}
    }
    fields
}

/// When to try again, in whole seconds (at least one).
fn retry_after_s(retry_after: Duration) -> u64 {
    retry_after.as_secs().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn exited_json_carries_code_and_tail() {
        let error = CallError::Exited {
            code: 3,
            stderr_tail: "boom\n".into(),
        };
        let json = call_error_json(&error);
        assert_eq!(json["error"]["kind"], "exited");
        assert_eq!(json["error"]["exit_code"], 3);
        assert_eq!(json["error"]["stderr_tail"], "boom\n");
        assert_eq!(
            json["error"]["message"],
            "the container exited with code 3; stderr: boom"
        );
        assert!(json["error"].get("call_id").is_none(), "{json}");
        assert_eq!(ApiError::from(error).into_response().status(), 502);
    }

    #[test]
    fn statuses_follow_the_design_table() {
        let status = |error: CallError| ApiError::from(error).into_response().status().as_u16();
        assert_eq!(
            status(CallError::Timeout {
                timeout: Duration::from_secs(1)
            }),
            504
        );
        assert_eq!(
            status(CallError::Busy {
                reason: "full".into(),
                retry_after: Duration::from_secs(1)
            }),
            503
        );
        assert_eq!(status(CallError::engine("down")), 500);
        assert_eq!(status(CallError::Cancelled), 499);
        assert_eq!(status(CallError::Oom { limit_bytes: 1 }), 502);
    }

    #[test]
    fn a_call_error_carries_its_call_id_in_body_and_header() {
        let error = ApiError::from(CallError::Timeout {
            timeout: Duration::from_millis(1500),
        })
        .in_call("abc123");
        let json = error.json();
        assert_eq!(json["error"]["call_id"], "abc123");
        assert_eq!(json["error"]["timeout_ms"], 1500);
        let response = error.into_response();
        assert_eq!(response.status(), 504);
        assert_eq!(header(&response, "hotpool-call-id"), Some("abc123"));
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        assert_eq!(header(&response, "connection"), None);
    }

    #[test]
    fn busy_says_when_to_retry_in_whole_seconds() {
        let error = ApiError::from(CallError::Busy {
            reason: "the queue is full".into(),
            retry_after: Duration::from_millis(300),
        })
        .in_call("c");
        assert_eq!(error.json()["error"]["retry_after_s"], 1);
        let response = error.into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(header(&response, "retry-after"), Some("1"));
    }

    #[test]
    fn an_api_error_before_any_call_has_no_call_id() {
        let error = ApiError::from(Reason::NoRoute {
            method: Method::GET,
            path: "/nowhere".into(),
        });
        let json = error.json();
        assert_eq!(json["error"]["kind"], "not_found");
        assert_eq!(json["error"]["call_id"], "-");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("no route GET /nowhere;"),
            "{json}"
        );
        let response = error.into_response();
        assert_eq!(response.status(), 404);
        assert_eq!(header(&response, "hotpool-call-id"), None);
        assert_eq!(header(&response, "connection"), Some("close"));
    }

    #[test]
    fn an_unknown_call_log_is_404_naming_the_call() {
        let error = ApiError::from(Reason::UnknownCall {
            call_id: "c9".into(),
        })
        .in_call("c9");
        let json = error.json();
        assert_eq!(json["error"]["kind"], "unknown_call");
        assert_eq!(json["error"]["call_id"], "c9");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("no log of call c9 is kept"),
            "{json}"
        );
        let response = error.into_response();
        assert_eq!(response.status(), 404);
        assert_eq!(header(&response, "hotpool-call-id"), Some("c9"));
        assert_eq!(header(&response, "connection"), None);
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token_and_closes() {
        let error = ApiError::from(Reason::Unauthorized).in_call("u1");
        assert_eq!(error.json()["error"]["call_id"], "u1");
        let response = error.into_response();
        assert_eq!(response.status(), 401);
        assert_eq!(header(&response, "www-authenticate"), Some("Bearer"));
        assert_eq!(header(&response, "connection"), Some("close"));
        assert_eq!(header(&response, "hotpool-call-id"), Some("u1"));
    }

    #[test]
    fn a_refused_body_after_reading_it_keeps_the_connection() {
        let error = ApiError::from(Reason::NotOneLine {
            function: "echo".into(),
        })
        .in_call("c");
        assert_eq!(error.json()["error"]["kind"], "bad_request");
        assert_eq!(error.json()["error"]["call_id"], "c");
        let response = error.into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(header(&response, "connection"), None);
        assert_eq!(header(&response, "hotpool-call-id"), Some("c"));
    }
}
