//! The `line` hot format, [`Line`]: one request line in, one response line out.
//!
//! The request is the body and `\n` (the caller guarantees the body has no `\n`); the
//! response is the function's next line, without its `\n`, with status 200 and no
//! headers.
//!
//! stdout ending before the `\n`, even in the middle of a line, is
//! [`FrameError::Closed`]: the container died mid-answer and the engine says why
//! (exit code, OOM) better than a half line does. A line longer than the limit and a
//! second line already received with the first are [`FrameError::Protocol`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::{FrameError, Framing, FunctionResponse, Request, unsolicited};

/// The `line` format.
#[derive(Debug, Clone, Copy)]
pub struct Line;

impl Framing for Line {
    async fn write_request<W: AsyncWrite + Unpin + Send>(
        &self,
        stdin: &mut W,
        request: &Request,
        _timeout: Duration,
    ) -> Result<(), FrameError> {
        write_line(stdin, &request.body).await
    }

    async fn read_response<R: AsyncBufRead + Unpin + Send>(
        &self,
        stdout: &mut R,
        _request: &Request,
        max_body: usize,
    ) -> Result<FunctionResponse, FrameError> {
        Ok(FunctionResponse {
            status: 200,
            headers: Vec::new(),
            body: read_line(stdout, max_body).await?,
        })
    }
}

/// Writes `body` and `\n` in one write, then flushes.
async fn write_line<W: AsyncWrite + Unpin>(stdin: &mut W, body: &[u8]) -> Result<(), FrameError> {
    debug_assert!(!body.contains(&b'\n'), "a line body must not contain \\n");
    let mut line = Vec::with_capacity(body.len() + 1);
    line.extend_from_slice(body);
    line.push(b'\n');
    stdin.write_all(&line).await?;
    stdin.flush().await?;
    Ok(())
}

/// Reads one response line of at most `max_bytes` bytes (without the `\n`).
///
/// Never waits past the `\n`: bytes behind it count only if they came in the same
/// read, and then they are unsolicited output.
async fn read_line<R: AsyncBufRead + Unpin>(
    stdout: &mut R,
    max_bytes: usize,
) -> Result<Bytes, FrameError> {
    let mut line = BytesMut::new();
    loop {
        let received = stdout.fill_buf().await?;
        if received.is_empty() {
            return Err(FrameError::Closed);
        }
        let newline = received.iter().position(|&b| b == b'\n');
        let part = newline.unwrap_or(received.len());
        if line.len() + part > max_bytes {
            return Err(too_long(max_bytes));
        }
        line.extend_from_slice(&received[..part]);
        let Some(end) = newline else {
            stdout.consume(part);
            continue;
        };
        if let Some(extra) = received.get(end + 1..).filter(|rest| !rest.is_empty()) {
            return Err(unsolicited("after its response line", extra));
        }
        stdout.consume(end + 1);
        return Ok(line.freeze());
    }
}

/// The protocol error for a line over the limit.
fn too_long(max_bytes: usize) -> FrameError {
    FrameError::Protocol(format!(
        "the function's response line is longer than {max_bytes} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncReadExt, BufReader, duplex, split};

    const MAX: usize = 2 << 20;

    /// Counts the writes it is given.
    #[derive(Default)]
    struct CountingWriter {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn protocol_error(result: Result<Bytes, FrameError>) -> String {
        match result {
            Err(FrameError::Protocol(message)) => message,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn request_is_the_body_and_a_newline_in_one_write() {
        let mut stdin = CountingWriter::default();
        write_line(&mut stdin, b"hello").await.unwrap();
        assert_eq!(stdin.bytes, b"hello\n");
        assert_eq!(stdin.writes, 1);
    }

    #[tokio::test]
    async fn calls_round_trip_over_the_same_pipes() {
        let (pool, function) = duplex(1024);
        let (function_out, mut function_in) = split(function);
        // The function: upper-cases each line.
        let server = tokio::spawn(async move {
            let mut lines = BufReader::new(function_out).lines();
            while let Some(line) = lines.next_line().await.unwrap() {
                let reply = format!("{}\n", line.to_uppercase());
                function_in.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let (pool_out, mut stdin) = split(pool);
        let mut stdout = BufReader::new(pool_out);
        for body in ["one", "two", ""] {
            let request = Request::new(body);
            let timeout = Duration::from_secs(1);
            Line.write_request(&mut stdin, &request, timeout)
                .await
                .unwrap();
            let response = Line
                .read_response(&mut stdout, &request, MAX)
                .await
                .unwrap();
            assert_eq!(response.status, 200);
            assert!(response.headers.is_empty());
            assert_eq!(response.body, body.to_uppercase().as_bytes());
        }
        stdin.shutdown().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn one_mib_line_is_read_across_many_reads() {
        let body = vec![b'x'; 1 << 20];
        let (mut function, pool) = duplex(4096);
        let sent = body.clone();
        tokio::spawn(async move {
            function.write_all(&sent).await.unwrap();
            function.write_all(b"\n").await.unwrap();
        });
        let mut stdout = BufReader::new(pool);
        let response = read_line(&mut stdout, MAX).await.unwrap();
        assert_eq!(response.len(), body.len());
        assert_eq!(response, body);
    }

    #[tokio::test]
    async fn line_split_over_tiny_reads_is_joined() {
        let mut stdout = BufReader::with_capacity(2, &b"hello\n"[..]);
        assert_eq!(read_line(&mut stdout, MAX).await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn eof_before_any_byte_is_closed() {
        let mut stdout: &[u8] = b"";
        assert!(matches!(
            read_line(&mut stdout, MAX).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn eof_in_the_middle_of_a_line_is_closed() {
        let mut stdout: &[u8] = b"half a li";
        assert!(matches!(
            read_line(&mut stdout, MAX).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn line_of_exactly_max_bytes_is_accepted() {
        let mut stdout: &[u8] = b"12345\n";
        assert_eq!(read_line(&mut stdout, 5).await.unwrap(), "12345");
    }

    #[tokio::test]
    async fn line_longer_than_max_is_protocol() {
        let mut stdout: &[u8] = b"123456\n";
        let message = protocol_error(read_line(&mut stdout, 5).await);
        assert!(message.contains("longer than 5 bytes"), "{message}");
    }

    #[tokio::test]
    async fn overlong_line_fails_without_waiting_for_its_end() {
        // The writer stays open and never sends a newline: this must not hang.
        let (mut function, pool) = duplex(64);
        function.write_all(b"0123456789").await.unwrap();
        let mut stdout = BufReader::new(pool);
        let message = protocol_error(read_line(&mut stdout, 5).await);
        assert!(message.contains("longer than"), "{message}");
        drop(function);
    }

    #[tokio::test]
    async fn second_line_already_received_is_protocol() {
        let mut stdout: &[u8] = b"one\ntwo\n";
        let message = protocol_error(read_line(&mut stdout, MAX).await);
        assert!(message.contains("unsolicited output"), "{message}");
        assert!(message.contains("two"), "{message}");
    }

    #[tokio::test]
    async fn later_bytes_are_left_for_the_next_read() {
        let (mut function, pool) = duplex(64);
        let mut stdout = BufReader::new(pool);
        function.write_all(b"first\n").await.unwrap();
        assert_eq!(read_line(&mut stdout, MAX).await.unwrap(), "first");
        function.write_all(b"second\n").await.unwrap();
        drop(function);
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"second\n");
    }
}
