//! The `http` hot format, [`Http`]: one HTTP/1.1 message each way, as fn's http
//! format did.
//!
//! The pool writes `POST /` with a Content-Length body, its own `Hotpool-Call-Id` and
//! `Hotpool-Deadline`, and the caller's end-to-end headers. The function answers with
//! a status line (200 to 599), headers that echo `Hotpool-Call-Id`, and a
//! Content-Length body, or a chunked one ([`super::chunked`]) that may stream to
//! the caller as it comes ([`Framing::read_reply`]); bodies are binary-safe. The echoed id
//! ties each answer to its call: a late or stray answer carries another id and is a
//! protocol error, never another caller's response. Hop-by-hop headers and the
//! function's `Hotpool-*` headers never reach the caller.
//!
//! As in `line`, stdout ending anywhere in a response (head or body, whether or not
//! bytes came) is [`FrameError::Closed`]: the engine says why the container died.
//! A head that cannot be HTTP, a missing or bad Content-Length or call id, a status
//! outside 200-599, and bytes already received after the body are
//! [`FrameError::Protocol`].

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::Chunks;
use super::{FrameError, Framing, FunctionResponse, Reply, Request, StreamHead, unsolicited};

/// The header carrying the call's id.
const CALL_ID_HEADER: &str = "Hotpool-Call-Id";
/// The header carrying the call's deadline, RFC 3339 with milliseconds.
const DEADLINE_HEADER: &str = "Hotpool-Deadline";

/// The most headers a response may have.
const MAX_HEADERS: usize = 64;
/// The most bytes a response head (status line and headers) may have.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Room for the request line and the pool's own headers.
const POOL_HEAD_BYTES: usize = 160;

/// The latest deadline RFC 3339 can write: 9999-12-31T23:59:59.999Z.
const LATEST_DEADLINE: Duration = Duration::from_millis(253_402_300_799_999);

/// Hop-by-hop headers (RFC 9110 7.6.1), never passed on either way; `Proxy-*` too,
/// by prefix.
const HOP_BY_HOP_HEADERS: [&str; 5] = ["connection", "keep-alive", "te", "trailer", "upgrade"];

/// Caller headers never forwarded besides hop-by-hop ones: framing, and `Expect`
/// (a `100 Continue` would break the framing). `Hotpool-*` goes by prefix.
const FRAMING_HEADERS: [&str; 4] = ["transfer-encoding", "content-length", "host", "expect"];

/// The `http` format.
#[derive(Debug, Clone, Copy)]
pub struct Http;

impl Framing for Http {
    async fn write_request<W: AsyncWrite + Unpin + Send>(
        &self,
        stdin: &mut W,
        request: &Request,
        timeout: Duration,
    ) -> Result<(), FrameError> {
        write_message(stdin, deadline_after(timeout), request).await
    }

    async fn read_response<R: AsyncBufRead + Unpin + Send>(
        &self,
        stdout: &mut R,
        request: &Request,
        max_body: usize,
    ) -> Result<FunctionResponse, FrameError> {
        read_message(stdout, &request.id, max_body).await
    }

    async fn read_reply<R: AsyncBufRead + Unpin + Send>(
        &self,
        stdout: &mut R,
        request: &Request,
        max_body: usize,
    ) -> Result<Reply, FrameError> {
        read_reply(stdout, &request.id, max_body).await
    }
}

/// When a call with `timeout` that starts now times out, for `Hotpool-Deadline`:
/// at the latest 9999-12-31T23:59:59.999Z, the latest RFC 3339 can write, also
/// when the sum does not fit a time.
fn deadline_after(timeout: Duration) -> SystemTime {
    let latest = UNIX_EPOCH + LATEST_DEADLINE;
    SystemTime::now()
        .checked_add(timeout)
        .map_or(latest, |deadline| deadline.min(latest))
}

/// Writes the request message of call `request.id` in one write, then flushes.
async fn write_message<W: AsyncWrite + Unpin>(
    stdin: &mut W,
    deadline: SystemTime,
    request: &Request,
) -> Result<(), FrameError> {
    let message = encode_request(deadline, request, false);
    stdin.write_all(&message).await?;
    stdin.flush().await?;
    Ok(())
}

/// The whole request message in one buffer, allocated once; `chunked`: only
/// its head, saying its body follows chunked.
fn encode_request(deadline: SystemTime, request: &Request, chunked: bool) -> Vec<u8> {
    let call_id = &request.id;
    let forwarded = || request.headers.iter().filter(|(n, v)| forwards(n, v));
    let headers_len: usize = forwarded().map(|(n, v)| n.len() + v.len() + 4).sum();
    let body = &request.body;
    let mut message =
        Vec::with_capacity(POOL_HEAD_BYTES + call_id.len() + headers_len + body.len());
    message.extend_from_slice(b"POST / HTTP/1.1\r\nHost: hotpool\r\n");
    if chunked {
        message.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else {
        write!(message, "Content-Length: {}\r\n", body.len()).expect("a Vec takes any write");
    }
    write!(
        message,
        "{CALL_ID_HEADER}: {call_id}\r\n{DEADLINE_HEADER}: {}\r\n",
        humantime::format_rfc3339_millis(deadline),
    )
    .expect("writing to a Vec cannot fail");
    for (name, value) in forwarded() {
        for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            message.extend_from_slice(part);
        }
    }
    message.extend_from_slice(b"\r\n");
    if !chunked {
        message.extend_from_slice(body);
    }
    message
}

impl Http {
    /// Writes the head of `request`, whose body follows in chunks
    /// ([`super::chunked::write_chunk`], then [`super::chunked::write_last`]),
    /// and flushes; `timeout` as in [`Framing::write_request`].
    pub async fn write_streamed_head<W: AsyncWrite + Unpin + Send>(
        &self,
        stdin: &mut W,
        request: &Request,
        timeout: Duration,
    ) -> Result<(), FrameError> {
        let head = encode_request(deadline_after(timeout), request, true);
        stdin.write_all(&head).await?;
        stdin.flush().await?;
        Ok(())
    }
}

/// Whether a caller header goes to the function: end-to-end, not framing, not the
/// pool's, and unable to inject anything (a token name, a value without CR, LF or
/// NUL).
fn forwards(name: &str, value: &str) -> bool {
    is_token(name)
        && !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0'))
        && !is_hop_by_hop(name)
        && !FRAMING_HEADERS.iter().any(|f| name.eq_ignore_ascii_case(f))
        && !has_prefix(name, "hotpool-")
}

/// Whether a header of a function's response goes back to the caller: end-to-end
/// and not claiming to be the pool's.
fn passes_back(name: &str) -> bool {
    !is_hop_by_hop(name) && !has_prefix(name, "hotpool-")
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP_HEADERS
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        || has_prefix(name, "proxy-")
}

/// Whether `name` starts with `prefix`, ignoring ASCII case.
fn has_prefix(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Whether `name` is an RFC 9110 token, the only thing a header name may be.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads the response to call `call_id`, whose body is at most `max_body` bytes;
/// a chunked one is read to its end too.
async fn read_message<R: AsyncBufRead + Unpin>(
    stdout: &mut R,
    call_id: &str,
    max_body: usize,
) -> Result<FunctionResponse, FrameError> {
    match read_reply(stdout, call_id, max_body).await? {
        Reply::Whole(response) => Ok(response),
        Reply::Chunked(head) => {
            let mut chunks = Chunks::new();
            let mut body = BytesMut::new();
            while let Some(piece) = chunks.next(stdout).await? {
                if body.len() + piece.len() > max_body {
                    return Err(too_large(max_body));
                }
                body.extend_from_slice(&piece);
            }
            Ok(FunctionResponse {
                status: head.status,
                headers: head.headers,
                body: body.freeze(),
            })
        }
    }
}

/// Reads the response to call `call_id` whole if it has a Content-Length (at
/// most `max_body` bytes), or up to its chunked body.
async fn read_reply<R: AsyncBufRead + Unpin>(
    stdout: &mut R,
    call_id: &str,
    max_body: usize,
) -> Result<Reply, FrameError> {
    let (head, buffered_after) = read_head(stdout, call_id).await?;
    let content_length = match head.body {
        BodyLength::Chunked => {
            return Ok(Reply::Chunked(StreamHead {
                status: head.status,
                headers: head.headers,
            }));
        }
        BodyLength::Fixed(length) => length,
    };
    if content_length > max_body {
        return Err(FrameError::Protocol(format!(
            "the function's response body of {content_length} bytes is larger than {max_body} bytes"
        )));
    }
    if content_length == 0 && buffered_after > 0 {
        let extra = stdout.fill_buf().await?;
        return Err(unsolicited("after its response", extra));
    }
    let body = read_body(stdout, content_length).await?;
    Ok(Reply::Whole(FunctionResponse {
        status: head.status,
        headers: head.headers,
        body,
    }))
}

/// The error for a chunked body past `max_body` bytes.
fn too_large(max_body: usize) -> FrameError {
    FrameError::Protocol(format!(
        "the function's chunked response body is larger than {max_body} bytes"
    ))
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: u16,
    /// The headers that pass back to the caller, in order.
    headers: Vec<(String, String)>,
    body: BodyLength,
}

/// How a response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    /// `Content-Length` bytes.
    Fixed(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Reads and parses the head, consuming exactly its bytes; also says how many bytes
/// the read that ended the head held after it.
///
/// Parses straight from the reader's buffer; only a head split over several reads
/// is copied.
async fn read_head<R: AsyncBufRead + Unpin>(
    stdout: &mut R,
    call_id: &str,
) -> Result<(Head, usize), FrameError> {
    let mut split_head = Vec::new();
    loop {
        let received = stdout.fill_buf().await?;
        if received.is_empty() {
            return Err(FrameError::Closed);
        }
        let before = split_head.len();
        let take = received.len().min(MAX_HEAD_BYTES - before);
        let parsed = if before == 0 {
            parse_head(&received[..take], call_id)?
        } else {
            split_head.extend_from_slice(&received[..take]);
            parse_head(&split_head, call_id)?
        };
        if let Some((head_len, head)) = parsed {
            let used = head_len - before;
            let buffered_after = received.len() - used;
            stdout.consume(used);
            return Ok((head, buffered_after));
        }
        if before + take == MAX_HEAD_BYTES {
            return Err(FrameError::Protocol(format!(
                "the function's response head is larger than {MAX_HEAD_BYTES} bytes"
            )));
        }
        if before == 0 {
            split_head.extend_from_slice(&received[..take]);
        }
        stdout.consume(take);
    }
}

/// The head at the start of `bytes` and its length, or `None` if it is incomplete.
/// It must answer call `call_id`.
fn parse_head(bytes: &[u8], call_id: &str) -> Result<Option<(usize, Head)>, FrameError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => {
            return Err(FrameError::Protocol(format!(
                "the function's response is not valid HTTP: {error}"
            )));
        }
    };
    let mut content_length = None;
    let mut chunked = false;
    let mut answers_the_call = false;
    let mut has_connection = false;
    let mut headers = Vec::with_capacity(response.headers.len());
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(FrameError::Protocol(format!(
                    "the function's response has Transfer-Encoding {:?}: only one, chunked, is supported",
                    String::from_utf8_lossy(header.value)
                )));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(merge_content_length(content_length, header.value)?);
        } else if name.eq_ignore_ascii_case(CALL_ID_HEADER) {
            if header.value != call_id.as_bytes() {
                // Never quoted: the id (and the answer) belong to another call.
                return Err(FrameError::Protocol(format!(
                    "the function answered with another call's {CALL_ID_HEADER}: a late or stray response"
                )));
            }
            answers_the_call = true;
        } else if passes_back(name) {
            let value = String::from_utf8_lossy(header.value).into_owned();
            headers.push((name.to_owned(), value));
        } else {
            has_connection |= name.eq_ignore_ascii_case("connection");
        }
    }
    if !answers_the_call {
        return Err(FrameError::Protocol(format!(
            "the function's response has no {CALL_ID_HEADER}: it must echo the request's"
        )));
    }
    let status = response
        .code
        .expect("httparse sets the code of a complete response");
    if !(200..=599).contains(&status) {
        return Err(FrameError::Protocol(format!(
            "the function answered with status {status}: a response's status is 200 to 599"
        )));
    }
    let body = match (content_length, chunked) {
        (Some(length), false) => BodyLength::Fixed(length),
        (None, true) => BodyLength::Chunked,
        (Some(_), true) => {
            return Err(FrameError::Protocol(
                "the function's response has both Content-Length and Transfer-Encoding".into(),
            ));
        }
        (None, false) => {
            return Err(FrameError::Protocol(
                "the function sent a response without Content-Length or Transfer-Encoding: chunked"
                    .into(),
            ));
        }
    };
    if has_connection {
        headers.retain(|(name, _)| !listed_in_connection(response.headers, name));
    }
    let head = Head {
        status,
        headers,
        body,
    };
    Ok(Some((head_len, head)))
}

/// Whether a `Connection` header among `headers` names `name` as hop-by-hop too.
fn listed_in_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|listed| listed.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

/// The Content-Length `value` says, which must agree with one seen before.
fn merge_content_length(seen: Option<usize>, value: &[u8]) -> Result<usize, FrameError> {
    let invalid = || {
        FrameError::Protocol(format!(
            "the function's response has an invalid Content-Length: {:?}",
            String::from_utf8_lossy(value)
        ))
    };
    let length = parse_decimal(value).ok_or_else(invalid)?;
    match seen {
        Some(earlier) if earlier != length => Err(invalid()),
        _ => Ok(length),
    }
}

/// Digits only (no sign, no spaces), and no overflow.
fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(digit as usize)
    })
}

/// Reads exactly `len` body bytes; bytes received with its last part are
/// unsolicited output.
async fn read_body<R: AsyncBufRead + Unpin>(
    stdout: &mut R,
    len: usize,
) -> Result<Bytes, FrameError> {
    let mut body = BytesMut::with_capacity(len);
    while body.len() < len {
        let received = stdout.fill_buf().await?;
        if received.is_empty() {
            return Err(FrameError::Closed);
        }
        let take = received.len().min(len - body.len());
        body.extend_from_slice(&received[..take]);
        if body.len() == len && received.len() > take {
            return Err(unsolicited("after its response", &received[take..]));
        }
        stdout.consume(take);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use tokio::io::{AsyncReadExt, BufReader, duplex, split};

    const MAX: usize = 2 << 20;

    /// Bytes that would break a text or head-scanning parser.
    const BINARY: &[u8] = b"a\r\n\r\nb\0c\xff\xfe\r\n";

    fn deadline() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
    }

    fn response_bytes(head: &str, body: &[u8]) -> Vec<u8> {
        [head.as_bytes(), body].concat()
    }

    /// The call id of the tests' responses.
    const ID: &str = "call-1";

    /// `bytes` with `Hotpool-Call-Id: ID` after the status line, if they start as
    /// a response.
    fn stamped(bytes: &[u8]) -> Vec<u8> {
        let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return bytes.to_vec();
        };
        if !bytes.starts_with(b"HTTP/") {
            return bytes.to_vec();
        }
        let id_line = format!("{CALL_ID_HEADER}: {ID}\r\n");
        [&bytes[..end + 2], id_line.as_bytes(), &bytes[end + 2..]].concat()
    }

    /// Reads `bytes`, stamped with the call id, as the response to call `ID`.
    async fn read_all(bytes: &[u8]) -> Result<FunctionResponse, FrameError> {
        let stamped = stamped(bytes);
        let mut stdout = &stamped[..];
        read_message(&mut stdout, ID, MAX).await
    }

    fn protocol_error(result: Result<FunctionResponse, FrameError>) -> String {
        match result {
            Err(FrameError::Protocol(message)) => message,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    /// The request as a server sees it: header pairs in order, and the body.
    fn parse_request(bytes: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut slots);
        let httparse::Status::Complete(len) = request.parse(bytes).unwrap() else {
            panic!("incomplete request head");
        };
        assert_eq!(request.method, Some("POST"));
        assert_eq!(request.path, Some("/"));
        assert_eq!(request.version, Some(1));
        let headers = request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (headers, bytes[len..].to_vec())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[tokio::test]
    async fn request_carries_framing_call_id_deadline_and_body() {
        let mut stdin = Vec::new();
        let mut request = Request::new(BINARY);
        request.id = "call-1".into();
        write_message(&mut stdin, deadline(), &request)
            .await
            .unwrap();
        let (headers, body) = parse_request(&stdin);
        assert_eq!(header(&headers, "host"), ["hotpool"]);
        assert_eq!(
            header(&headers, "content-length"),
            [BINARY.len().to_string()]
        );
        assert_eq!(header(&headers, CALL_ID_HEADER), ["call-1"]);
        let sent = header(&headers, DEADLINE_HEADER);
        assert_eq!(sent, ["2023-11-14T22:13:20.123Z"]);
        assert_eq!(humantime::parse_rfc3339(sent[0]).unwrap(), deadline());
        assert_eq!(body, BINARY);
    }

    #[tokio::test]
    async fn request_is_one_write() {
        struct Counting(usize);
        impl AsyncWrite for Counting {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.0 += 1;
                std::task::Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let mut stdin = Counting(0);
        let request = Request::new("body").with_header("X-A", "1");
        write_message(&mut stdin, deadline(), &request)
            .await
            .unwrap();
        assert_eq!(stdin.0, 1);
    }

    #[tokio::test]
    async fn caller_headers_are_forwarded_in_order_but_hop_by_hop_and_hotpool_are_not() {
        let mut request = Request::new("x").with_header("X-First", "1");
        for name in [
            "Connection",
            "keep-alive",
            "Transfer-Encoding",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Authorization",
            "Content-Length",
            "Host",
            "Expect",
            "Hotpool-Call-Id",
            "hotpool-deadline",
            "Hotpool-Anything",
        ] {
            request = request.with_header(name, "caller");
        }
        let mut request = request.with_header("X-Last", "2");
        request.id = "pool-id".into();
        let mut stdin = Vec::new();
        write_message(&mut stdin, deadline(), &request)
            .await
            .unwrap();
        let (headers, _) = parse_request(&stdin);
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Host",
                "Content-Length",
                CALL_ID_HEADER,
                DEADLINE_HEADER,
                "X-First",
                "X-Last"
            ]
        );
        assert_eq!(header(&headers, CALL_ID_HEADER), ["pool-id"]);
        assert!(!headers.iter().any(|(_, v)| v == "caller"));
    }

    #[tokio::test]
    async fn header_injection_is_dropped() {
        let request = Request::new("body")
            .with_header("X-Value", "a\r\nContent-Length: 0")
            .with_header("X-Lf", "a\nInjected: 1")
            .with_header("X-Nul", "a\0b")
            .with_header("X-Name\r\nInjected", "1")
            .with_header("Content-Length ", "0")
            .with_header("X-Colon: Injected", "1")
            .with_header("", "empty")
            .with_header("X-Fine", "tab\tand unicode \u{e9}");
        let mut stdin = Vec::new();
        write_message(&mut stdin, deadline(), &request)
            .await
            .unwrap();
        let (headers, body) = parse_request(&stdin);
        assert_eq!(headers.len(), 5, "{headers:?}");
        assert_eq!(header(&headers, "x-fine"), ["tab\tand unicode \u{e9}"]);
        assert!(!stdin.windows(8).any(|w| w == b"Injected"));
        assert_eq!(body, b"body");
    }

    #[tokio::test]
    async fn binary_calls_round_trip_over_the_same_pipes() {
        let (pool, function) = duplex(1 << 10);
        let (function_out, mut function_in) = split(function);
        // The function: echoes the body, says which call it was.
        let server = tokio::spawn(async move {
            let mut input = BufReader::new(function_out);
            let mut head = Vec::new();
            loop {
                head.clear();
                while !head.ends_with(b"\r\n\r\n") {
                    if input.read_until(b'\n', &mut head).await.unwrap() == 0 {
                        return;
                    }
                }
                let (headers, _) = parse_request(&head);
                let len: usize = header(&headers, "content-length")[0].parse().unwrap();
                let mut body = vec![0; len];
                input.read_exact(&mut body).await.unwrap();
                let call_id = header(&headers, CALL_ID_HEADER)[0];
                let reply = format!(
                    "HTTP/1.1 201 Created\r\nX-Call: {call_id}\r\n{CALL_ID_HEADER}: {call_id}\r\n\
                     Content-Length: {len}\r\n\r\n"
                );
                function_in
                    .write_all(&[reply.as_bytes(), &body].concat())
                    .await
                    .unwrap();
            }
        });
        let (pool_out, mut stdin) = split(pool);
        let mut stdout = BufReader::new(pool_out);
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 256) as u8).collect();
        for body in [BINARY.to_vec(), Vec::new(), big] {
            let request = Request::new(body.clone());
            let timeout = Duration::from_secs(1);
            Http.write_request(&mut stdin, &request, timeout)
                .await
                .unwrap();
            let response = Http
                .read_response(&mut stdout, &request, MAX)
                .await
                .unwrap();
            assert_eq!(response.status, 201);
            assert_eq!(response.headers, [("X-Call".to_owned(), request.id)]);
            assert_eq!(response.body, body);
        }
        stdin.shutdown().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn binary_body_is_read_verbatim() {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            BINARY.len()
        );
        let response = read_all(&response_bytes(&head, BINARY)).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, BINARY);
    }

    #[tokio::test]
    async fn headers_come_back_in_order_without_content_length() {
        let bytes = b"HTTP/1.1 404 Not Found\r\nX-One: 1\r\ncontent-length: 2\r\n\
                      Content-Type: text/plain\r\nX-One: again\r\n\r\nno";
        let response = read_all(bytes).await.unwrap();
        assert_eq!(response.status, 404);
        let expected = [
            ("X-One", "1"),
            ("Content-Type", "text/plain"),
            ("X-One", "again"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(response.headers, expected);
        assert_eq!(response.body, "no");
    }

    #[tokio::test]
    async fn head_and_body_split_over_tiny_reads_are_joined() {
        let head = format!(
            "HTTP/1.1 200 OK\r\nX-A: b\r\nContent-Length: {}\r\n\r\n",
            BINARY.len()
        );
        let bytes = stamped(&response_bytes(&head, BINARY));
        let mut stdout = BufReader::with_capacity(3, &bytes[..]);
        let response = read_message(&mut stdout, ID, MAX).await.unwrap();
        assert_eq!(response.headers, [("X-A".to_owned(), "b".to_owned())]);
        assert_eq!(response.body, BINARY);
    }

    #[tokio::test]
    async fn one_mib_body_is_read_from_a_pipe() {
        let body: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let (mut function, pool) = duplex(4096);
        let sent = stamped(&response_bytes(
            &format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()),
            &body,
        ));
        tokio::spawn(async move { function.write_all(&sent).await.unwrap() });
        let mut stdout = BufReader::new(pool);
        let response = read_message(&mut stdout, ID, MAX).await.unwrap();
        assert_eq!(response.body, body);
    }

    #[tokio::test]
    async fn empty_body_is_fine() {
        let response = read_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response.status, 204);
        assert!(response.body.is_empty());
    }

    #[tokio::test]
    async fn eof_before_any_byte_is_closed() {
        assert!(matches!(read_all(b"").await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn eof_in_the_middle_of_the_head_is_closed() {
        let result = read_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
        assert!(matches!(result, Err(FrameError::Closed)), "{result:?}");
    }

    #[tokio::test]
    async fn eof_in_the_middle_of_the_body_is_closed() {
        let result = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
        assert!(matches!(result, Err(FrameError::Closed)), "{result:?}");
    }

    #[tokio::test]
    async fn garbage_is_protocol_with_httparse_reason() {
        let message = protocol_error(read_all(b"this is not HTTP\r\n\r\n").await);
        let reason = httparse::Response::new(&mut [])
            .parse(b"this is not HTTP\r\n\r\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("not valid HTTP"), "{message}");
        assert!(message.ends_with(&reason), "{message} / {reason}");
    }

    #[tokio::test]
    async fn missing_content_length_is_protocol() {
        let message = protocol_error(read_all(b"HTTP/1.1 200 OK\r\n\r\nbody").await);
        assert!(message.contains("without Content-Length"), "{message}");
    }

    #[tokio::test]
    async fn a_chunked_body_is_read_whole_within_the_limit() {
        let bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nX-Kept: yes\r\n\r\n4\r\nbody\r\n3\r\n \r\n\r\n0\r\n\r\n";
        let response = read_all(bytes).await.unwrap();
        assert_eq!(response.body, Bytes::from_static(b"body \r\n"));
        assert_eq!(response.headers, [("X-Kept".into(), "yes".into())]);
        let stamped = stamped(bytes);
        let mut stdout = &stamped[..];
        let error = read_message(&mut stdout, ID, 5).await.unwrap_err();
        assert!(
            matches!(&error, FrameError::Protocol(m) if m.contains("larger than 5 bytes")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_chunked_head_is_read_alone_for_its_body_to_stream() {
        let stamped = stamped(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
        );
        let mut stdout = &stamped[..];
        let Reply::Chunked(head) = read_reply(&mut stdout, ID, MAX).await.unwrap() else {
            panic!("a chunked response streams");
        };
        assert_eq!(head.status, 201);
        assert!(head.headers.is_empty(), "{:?}", head.headers);
        assert!(stdout.starts_with(b"4\r\nbody"), "the body is left to read");
    }

    #[tokio::test]
    async fn other_transfer_codings_and_two_framings_are_protocol() {
        for framing in [
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 4",
        ] {
            let bytes = format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\n4\r\nbody\r\n0\r\n\r\n");
            let message = protocol_error(read_all(bytes.as_bytes()).await);
            assert!(
                message.contains("Transfer-Encoding"),
                "{framing}: {message}"
            );
        }
    }

    #[tokio::test]
    async fn invalid_content_length_is_protocol() {
        for value in ["abc", "+5", "-1", "", "5 5", "99999999999999999999999"] {
            let bytes = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\nhello");
            let message = protocol_error(read_all(bytes.as_bytes()).await);
            assert!(
                message.contains("invalid Content-Length"),
                "{value}: {message}"
            );
        }
    }

    #[tokio::test]
    async fn conflicting_content_lengths_are_protocol_but_repeats_are_not() {
        let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc";
        let message = protocol_error(read_all(conflicting).await);
        assert!(message.contains("invalid Content-Length"), "{message}");
        let repeated = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(read_all(repeated).await.unwrap().body, "abc");
    }

    #[tokio::test]
    async fn body_larger_than_max_is_protocol() {
        let bytes = stamped(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n123456");
        let message = protocol_error(read_message(&mut &bytes[..], ID, 5).await);
        assert!(message.contains("larger than 5 bytes"), "{message}");
    }

    #[tokio::test]
    async fn head_larger_than_64_kib_fails_without_waiting_for_its_end() {
        // The writer stays open and never ends the head: this must not hang.
        let (mut function, pool) = duplex(1 << 20);
        let head = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(MAX_HEAD_BYTES));
        function.write_all(head.as_bytes()).await.unwrap();
        let mut stdout = BufReader::new(pool);
        let message = protocol_error(read_message(&mut stdout, ID, MAX).await);
        assert!(
            message.contains("head is larger than 65536 bytes"),
            "{message}"
        );
        drop(function);
    }

    #[tokio::test]
    async fn too_many_headers_is_protocol() {
        let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        for i in 0..MAX_HEADERS {
            head.push_str(&format!("X-{i}: {i}\r\n"));
        }
        head.push_str("\r\n");
        let message = protocol_error(read_all(head.as_bytes()).await);
        assert!(message.contains("too many headers"), "{message}");
    }

    #[tokio::test]
    async fn bytes_received_after_the_body_are_protocol() {
        let message =
            protocol_error(read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").await);
        assert!(message.contains("unsolicited output"), "{message}");
        assert!(message.contains("EXTRA"), "{message}");
    }

    #[tokio::test]
    async fn bytes_received_after_an_empty_body_are_protocol() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n";
        let message = protocol_error(read_all(bytes).await);
        assert!(message.contains("unsolicited output"), "{message}");
    }

    #[tokio::test]
    async fn later_responses_are_left_for_the_next_read() {
        let (mut function, pool) = duplex(1024);
        let mut stdout = BufReader::new(pool);
        function
            .write_all(b"HTTP/1.1 200 OK\r\nHotpool-Call-Id: a\r\nContent-Length: 1\r\n\r\na")
            .await
            .unwrap();
        let first = read_message(&mut stdout, "a", MAX).await.unwrap();
        assert_eq!(first.body, "a");
        function
            .write_all(b"HTTP/1.1 200 OK\r\nHotpool-Call-Id: b\r\nContent-Length: 1\r\n\r\nb")
            .await
            .unwrap();
        assert_eq!(read_message(&mut stdout, "b", MAX).await.unwrap().body, "b");
    }

    #[tokio::test]
    async fn response_without_the_call_id_is_protocol() {
        let mut stdout: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let message = protocol_error(read_message(&mut stdout, ID, MAX).await);
        assert!(message.contains("no Hotpool-Call-Id"), "{message}");
    }

    #[tokio::test]
    async fn a_late_answer_to_an_earlier_call_is_protocol_and_never_quoted() {
        // The function answered call `earlier` again while `later` was asked.
        let (mut function, pool) = duplex(1024);
        let mut stdout = BufReader::new(pool);
        let answer =
            b"HTTP/1.1 200 OK\r\nhotpool-call-id: earlier\r\nContent-Length: 6\r\n\r\nsecret";
        function.write_all(answer).await.unwrap();
        let message = protocol_error(read_message(&mut stdout, "later", MAX).await);
        assert!(
            message.contains("another call's Hotpool-Call-Id"),
            "{message}"
        );
        assert!(
            !message.contains("earlier") && !message.contains("secret"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_second_call_id_that_differs_is_protocol() {
        let bytes = b"HTTP/1.1 200 OK\r\nHotpool-Call-Id: call-0\r\nContent-Length: 0\r\n\r\n";
        let message = protocol_error(read_all(bytes).await);
        assert!(message.contains("another call's"), "{message}");
    }

    #[tokio::test]
    async fn the_call_id_is_not_passed_back_as_a_function_header() {
        let response = read_all(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(response.headers, [("X-A".to_owned(), "1".to_owned())]);
    }

    #[tokio::test]
    async fn statuses_outside_200_to_599_are_protocol() {
        for status in [
            "100 Continue",
            "101 Switching Protocols",
            "199 X",
            "600 X",
            "999 X",
        ] {
            let head =
                format!("HTTP/1.1 {status}\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n");
            let message = protocol_error(read_all(head.as_bytes()).await);
            assert!(message.contains("200 to 599"), "{status}: {message}");
        }
        for status in [200, 599] {
            let head = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(read_all(head.as_bytes()).await.unwrap().status, status);
        }
    }

    #[tokio::test]
    async fn hop_by_hop_and_hotpool_response_headers_are_dropped() {
        let bytes = b"HTTP/1.1 200 OK\r\nX-Kept: 1\r\nConnection: close, X-Private\r\n\
                      Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\n\
                      Upgrade: h2c\r\nProxy-Authenticate: Basic\r\nx-private: secret\r\n\
                      Hotpool-Start: cold\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n";
        let response = read_all(bytes).await.unwrap();
        let names: Vec<&str> = response.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["X-Kept", "Content-Type"]);
    }

    #[test]
    fn deadline_of_the_longest_timeout_is_the_latest_writable_time() {
        let latest = deadline_after(Duration::MAX);
        assert_eq!(
            humantime::format_rfc3339_millis(latest).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        let soon = deadline_after(Duration::from_secs(5));
        assert!(soon > SystemTime::now() && soon < latest);
    }

    #[tokio::test]
    async fn request_with_the_longest_timeout_carries_a_deadline() {
        let mut stdin = Vec::new();
        let deadline = deadline_after(Duration::MAX);
        write_message(&mut stdin, deadline, &Request::new("x"))
            .await
            .unwrap();
        let (headers, _) = parse_request(&stdin);
        assert_eq!(
            header(&headers, DEADLINE_HEADER),
            ["9999-12-31T23:59:59.999Z"]
        );
    }
}
