//! What a call returns whole ([`Response`]), and whether it found its
//! container running ([`Start`]): shared by the call, its stream and the
//! function's metrics.

use bytes::Bytes;

use crate::stats::CallStats;

/// Whether a call found its container running, or waited for one to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Start {
    /// Served by a container that was already running.
    Hot,
    /// Served by a container started for it (every `cold` call).
    Cold,
}

impl Start {
    /// `hot` or `cold`, as in the `Hotpool-Start` header and the `start` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Hot => "hot",
            Start::Cold => "cold",
        }
    }
}

/// What a call returns.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Response {
    /// The call's id (`Hotpool-Call-Id`).
    pub call_id: String,
    /// Whether the call met a running container.
    pub start: Start,
    /// The function's status: its own for `http`, 200 for `line` and `cold`.
    pub status: u16,
    /// The function's headers (`http` only).
    pub headers: Vec<(String, String)>,
    /// The function's output.
    pub body: Bytes,
    /// What the call used: the engine's samples taken while it ran (decimated and
    /// averaged) and the container's counters; `None` where the driver has neither.
    pub stats: Option<CallStats>,
}
