//! The errors a caller sees, in the stable vocabulary of DESIGN.md.
//!
//! Every failure of a call is one [`CallError`]; its [`ErrorKind`] is the stable
//! `kind` string that the CLI prints, the server returns and the metrics count.

use std::fmt;
use std::time::Duration;

/// The stable kind of a [`CallError`]: one string each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The engine says the container was OOM-killed.
    Oom,
    /// The container exited with a code during the call.
    Exited,
    /// The function broke the framing of its format.
    ProtocolError,
    /// The call ran past its timeout; the container was killed.
    Timeout,
    /// The caller went away.
    Cancelled,
    /// No slot within the queue limit or wait time.
    Busy,
    /// The registry has no such image.
    ImageNotFound,
    /// The registry refused the credentials (or their absence).
    ImageUnauthorized,
    /// Pulling failed for another reason.
    PullFailed,
    /// The container engine failed or is unreachable.
    EngineError,
    /// No function of that name is registered.
    UnknownFunction,
}

impl ErrorKind {
    /// Every kind, in the order of DESIGN.md.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Oom,
        ErrorKind::Exited,
        ErrorKind::ProtocolError,
        ErrorKind::Timeout,
        ErrorKind::Cancelled,
        ErrorKind::Busy,
        ErrorKind::ImageNotFound,
        ErrorKind::ImageUnauthorized,
        ErrorKind::PullFailed,
        ErrorKind::EngineError,
        ErrorKind::UnknownFunction,
    ];

    /// The stable string: `oom`, `exited`, `protocol_error`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Oom => "oom",
            ErrorKind::Exited => "exited",
            ErrorKind::ProtocolError => "protocol_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Busy => "busy",
            ErrorKind::ImageNotFound => "image_not_found",
            ErrorKind::ImageUnauthorized => "image_unauthorized",
            ErrorKind::PullFailed => "pull_failed",
            ErrorKind::EngineError => "engine_error",
            ErrorKind::UnknownFunction => "unknown_function",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The engine reported an OOM kill.
    #[error("the container ran out of memory (limit {limit_bytes} bytes)")]
    Oom {
        /// The container's memory limit.
        limit_bytes: u64,
    },
    /// The container exited (or was killed from outside) during the call.
    #[error("the container exited with code {code}{}{}", signal_note(*code), tail_suffix(stderr_tail))]
    Exited {
        /// The exit code (137 for a SIGKILL that was not an OOM kill).
        code: i64,
        /// The last bytes the container wrote to stderr.
        stderr_tail: String,
    },
    /// The function broke the framing of its format.
    #[error("the function broke the framing: {detail}")]
    ProtocolError {
        /// What was wrong.
        detail: String,
    },
    /// The call ran past its timeout.
    #[error("the call ran past its timeout of {}", humantime::format_duration(*timeout))]
    Timeout {
        /// The timeout that was exceeded.
        timeout: Duration,
    },
    /// A streamed response went silent for longer than its idle timeout.
    #[error("the function's stream was silent longer than {}", humantime::format_duration(*idle_timeout))]
    StreamStalled {
        /// The longest silence allowed between two pieces of a stream.
        idle_timeout: Duration,
    },
    /// The caller's streamed request body failed, or passed its limit; the
    /// call was cut.
    #[error("the request body failed: {detail}")]
    RequestBody {
        /// What failed.
        detail: String,
    },
    /// The caller went away.
    #[error("the call was cancelled")]
    Cancelled,
    /// No container was free in time.
    #[error("no container free: {reason}")]
    Busy {
        /// Which limit was hit.
        reason: String,
        /// When trying again is likely to help.
        retry_after: Duration,
    },
    /// The registry has no such image.
    #[error("image {image} not found: {message}")]
    ImageNotFound {
        /// The image as the function names it.
        image: String,
        /// The engine's words.
        message: String,
    },
    /// The registry refused the credentials.
    #[error("not authorized to pull {image}: {message}")]
    ImageUnauthorized {
        /// The image as the function names it.
        image: String,
        /// The engine's words.
        message: String,
    },
    /// Pulling failed for another reason.
    #[error("pulling {image} failed: {message}")]
    PullFailed {
        /// The image as the function names it.
        image: String,
        /// The engine's words.
        message: String,
    },
    /// The engine failed or is unreachable.
    #[error("container engine error: {message}")]
    Engine {
        /// What failed.
        message: String,
    },
    /// No function of that name is registered (or it was removed).
    #[error("no function is named {name:?}")]
    UnknownFunction {
        /// The name called.
        name: String,
    },
}

/// Says which signal an exit code above 128 stands for; a SIGKILL is not an OOM
/// kill unless the engine says so, and then the error is `oom`, not `exited`.
fn signal_note(code: i64) -> String {
    match code {
        137 => " (SIGKILL, and the engine reports no OOM kill)".to_owned(),
        129..=192 => format!(" (signal {})", code - 128),
        _ => String::new(),
    }
}

fn tail_suffix(stderr_tail: &str) -> String {
    let tail = stderr_tail.trim_end();
    if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {tail}")
    }
}

impl CallError {
    /// Builds an engine error from anything displayable.
    pub fn engine(message: impl fmt::Display) -> Self {
        CallError::Engine {
            message: message.to_string(),
        }
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallError::Oom { .. } => ErrorKind::Oom,
            CallError::Exited { .. } => ErrorKind::Exited,
            CallError::ProtocolError { .. } => ErrorKind::ProtocolError,
            CallError::Timeout { .. } | CallError::StreamStalled { .. } => ErrorKind::Timeout,
            CallError::Cancelled | CallError::RequestBody { .. } => ErrorKind::Cancelled,
            CallError::Busy { .. } => ErrorKind::Busy,
            CallError::ImageNotFound { .. } => ErrorKind::ImageNotFound,
            CallError::ImageUnauthorized { .. } => ErrorKind::ImageUnauthorized,
            CallError::PullFailed { .. } => ErrorKind::PullFailed,
            CallError::UnknownFunction { .. } => ErrorKind::UnknownFunction,
            CallError::Engine { .. } => ErrorKind::EngineError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_distinct_stable_strings() {
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn every_error_has_its_kind() {
        let errors = [
            (CallError::Oom { limit_bytes: 1 }, ErrorKind::Oom),
            (
                CallError::Timeout {
                    timeout: Duration::from_secs(1),
                },
                ErrorKind::Timeout,
            ),
            (CallError::Cancelled, ErrorKind::Cancelled),
            (CallError::engine("down"), ErrorKind::EngineError),
        ];
        for (error, kind) in errors {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn exited_message_carries_code_and_tail() {
        let error = CallError::Exited {
            code: 3,
            stderr_tail: "boom\n".into(),
        };
        assert_eq!(error.kind(), ErrorKind::Exited);
        assert_eq!(
            error.to_string(),
            "the container exited with code 3; stderr: boom"
        );
    }

    #[test]
    fn exit_codes_over_128_name_their_signal() {
        let exited = |code| CallError::Exited {
            code,
            stderr_tail: String::new(),
        };
        assert_eq!(
            exited(137).to_string(),
            "the container exited with code 137 (SIGKILL, and the engine reports no OOM kill)"
        );
        assert_eq!(
            exited(143).to_string(),
            "the container exited with code 143 (signal 15)"
        );
    }
}
