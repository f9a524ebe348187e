//! The hot formats: how one call travels over a hot container's stdin and stdout.
//!
//! A hot container serves many calls over the same pipes, one at a time, each
//! framed by the function's [`Format`]. Every format implements [`Framing`]: write
//! a call's request, then read its response. [`Line`] frames a call as one line
//! each way; [`Http`] as one HTTP/1.1 message each way, whose response body may
//! be chunked and stream ([`Reply`], [`chunked`]);
//! [`Format`] picks one of the two at run time and hands each call to it, by a
//! `match`, with no allocation or dynamic dispatch. Each reports failures as a
//! [`FrameError`]: the pipe ended ([`FrameError::Closed`], the caller asks the
//! engine why), the function broke the framing ([`FrameError::Protocol`]), or the
//! pipe itself failed ([`FrameError::Io`]).
//!
//! A cold function has no format: one container serves one call, and the
//! container's life frames it (the body is its whole stdin, its whole stdout the
//! response), which is [`crate::pool::Lifecycle::Cold`].
//!
//! Readers take any [`AsyncBufRead`] (the pool holds a `tokio::io::BufReader`). Bytes
//! after a response count as unsolicited output only when they were already received
//! in the same buffer; nothing waits for more. The pool looks for output that
//! arrived between calls before it hands a container out.
//!
//! [`Framing`] and the formats are public (as `hotpool::format`) so that code
//! speaking to a container's pipes without the pool, like `hotpool bench`'s
//! floors, frames calls byte for byte as the pool does.

pub mod chunked;
pub mod http;
pub mod line;

use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite};

pub use http::Http;
pub use line::Line;

/// How many unsolicited bytes a protocol error quotes.
const QUOTED_BYTES: usize = 32;

/// What the pool sends: the body, and for `http` the caller's headers to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Request {
    /// The call's id: in logs, in `Hotpool-Call-Id`, and sent to `http` functions.
    pub id: String,
    /// The request body. For `line` it must not contain `\n`.
    pub body: Bytes,
    /// The caller's headers, in order; `http` forwards all but hop-by-hop, framing
    /// and `Hotpool-*` ones. `line` ignores them.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A request with this body, no headers and a new call id.
    pub fn new(body: impl Into<Bytes>) -> Request {
        Request {
            id: crate::id::new_id(),
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// The same request with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What came back from the function.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionResponse {
    /// The status the function answered with (`line` responses are 200).
    pub status: u16,
    /// The function's headers in order, without `Content-Length`.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Bytes,
}

/// A response read as far as its body may stream ([`Framing::read_reply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The whole response.
    Whole(FunctionResponse),
    /// A head whose chunked body follows on stdout, read with [`chunked::Chunks`].
    Chunked(StreamHead),
}

/// The head of a response whose body streams.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamHead {
    /// The status the function answered with.
    pub status: u16,
    /// The function's headers in order, without framing ones.
    pub headers: Vec<(String, String)>,
}

/// Why a call could not be framed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// stdout ended: the container died or closed it.
    #[error("the function's stdout ended")]
    Closed,
    /// The function broke the framing; the text says how.
    #[error("{0}")]
    Protocol(String),
    /// Reading or writing the pipe failed.
    #[error("the function's pipe failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How one call's request and response travel over a hot container's pipes.
///
/// A call writes its request with [`Framing::write_request`], then reads the
/// response with [`Framing::read_response`], on the same container's stdin and
/// stdout, one call at a time. [`Framing::read_reply`] reads a response that may
/// stream: its head apart from a body relayed as it comes.
pub trait Framing {
    /// Writes `request` to the function's stdin in one write, then flushes;
    /// `timeout` is how long the call may run (a format may tell the function).
    fn write_request<W: AsyncWrite + Unpin + Send>(
        &self,
        stdin: &mut W,
        request: &Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), FrameError>> + Send;

    /// Reads the function's response to `request`, whose body is at most
    /// `max_body` bytes.
    fn read_response<R: AsyncBufRead + Unpin + Send>(
        &self,
        stdout: &mut R,
        request: &Request,
        max_body: usize,
    ) -> impl Future<Output = Result<FunctionResponse, FrameError>> + Send;

    /// Reads the function's response to `request` as [`Framing::read_response`]
    /// does, but stops after the head of one whose body streams
    /// ([`Reply::Chunked`]); by default no response streams.
    fn read_reply<R: AsyncBufRead + Unpin + Send>(
        &self,
        stdout: &mut R,
        request: &Request,
        max_body: usize,
    ) -> impl Future<Output = Result<Reply, FrameError>> + Send {
        self.read_response(stdout, request, max_body)
            .map(|read| read.map(Reply::Whole))
    }
}

/// The format of a hot function's calls, as its config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One request line in, one response line out: [`Line`].
    Line,
    /// HTTP/1.1 messages with Content-Length bodies: [`Http`].
    Http,
}

impl Format {
    /// The name used in config: `line` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Line => "line",
            Format::Http => "http",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hands each call to [`Line`] or [`Http`].
impl Framing for Format {
    async fn write_request<W: AsyncWrite + Unpin + Send>(
        &self,
        stdin: &mut W,
        request: &Request,
        timeout: Duration,
    ) -> Result<(), FrameError> {
        match self {
            Format::Line => Line.write_request(stdin, request, timeout).await,
            Format::Http => Http.write_request(stdin, request, timeout).await,
        }
    }

    async fn read_response<R: AsyncBufRead + Unpin + Send>(
        &self,
        stdout: &mut R,
        request: &Request,
        max_body: usize,
    ) -> Result<FunctionResponse, FrameError> {
        match self {
            Format::Line => Line.read_response(stdout, request, max_body).await,
            Format::Http => Http.read_response(stdout, request, max_body).await,
        }
    }

    async fn read_reply<R: AsyncBufRead + Unpin + Send>(
        &self,
        stdout: &mut R,
        request: &Request,
        max_body: usize,
    ) -> Result<Reply, FrameError> {
        match self {
            Format::Line => Line.read_reply(stdout, request, max_body).await,
            Format::Http => Http.read_reply(stdout, request, max_body).await,
        }
    }
}

/// Before a call: `Ok` if nothing is waiting on stdout.
///
/// Bytes already buffered or readable at once are unsolicited output, a
/// [`FrameError::Protocol`]; an ended stdout is [`FrameError::Closed`]. Polls the
/// reader once and never waits: a pending reader is quiet.
pub(crate) fn check_quiet<R: AsyncBufRead + Unpin>(stdout: &mut R) -> Result<(), FrameError> {
    match stdout.fill_buf().now_or_never() {
        None => Ok(()),
        Some(Ok([])) => Err(FrameError::Closed),
        Some(Ok(waiting)) => Err(unsolicited("before the call", waiting)),
        Some(Err(error)) => Err(FrameError::Io(error)),
    }
}

/// The protocol error for bytes the function wrote when nothing was asked (`when`
/// says at which point), quoting their start.
fn unsolicited(when: &str, bytes: &[u8]) -> FrameError {
    let quoted = &bytes[..bytes.len().min(QUOTED_BYTES)];
    FrameError::Protocol(format!(
        "the function wrote unsolicited output {when}: {:?}",
        String::from_utf8_lossy(quoted)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, BufReader, duplex};

    #[test]
    fn request_builder_keeps_headers_in_order() {
        let request = Request::new("body")
            .with_header("X-One", "1")
            .with_header("X-Two", "2");
        assert_eq!(request.body, Bytes::from_static(b"body"));
        assert_eq!(
            request.headers,
            [("X-One".into(), "1".into()), ("X-Two".into(), "2".into())]
        );
    }

    #[tokio::test]
    async fn quiet_pipe_is_ok() {
        let (_function, pool) = duplex(64);
        let mut stdout = BufReader::new(pool);
        assert!(check_quiet(&mut stdout).is_ok());
    }

    #[tokio::test]
    async fn readable_bytes_are_unsolicited_output() {
        let (mut function, pool) = duplex(64);
        function.write_all(b"surprise\n").await.unwrap();
        let mut stdout = BufReader::new(pool);
        let error = check_quiet(&mut stdout).unwrap_err();
        assert!(
            matches!(&error, FrameError::Protocol(m) if m.contains("unsolicited output") && m.contains("surprise")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn buffered_bytes_are_unsolicited_output() {
        let mut stdout: &[u8] = b"left over";
        let error = check_quiet(&mut stdout).unwrap_err();
        assert!(
            matches!(&error, FrameError::Protocol(m) if m.contains("unsolicited output")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn ended_pipe_is_closed() {
        let (function, pool) = duplex(64);
        drop(function);
        let mut stdout = BufReader::new(pool);
        assert!(matches!(check_quiet(&mut stdout), Err(FrameError::Closed)));
    }
}
