//! The chunked transfer coding (RFC 9112 7.1) of an `http` function's streamed
//! response body, decoded from its stdout as it comes.
//!
//! [`Chunks::next`] hands out the body a piece at a time, each at most
//! [`PIECE`] bytes of one chunk, so a chunk of any declared size is never held
//! whole. The decoder is strict, as the function's framing must be exact for
//! the pipe to serve the next call: a size line is hex digits, optionally
//! followed by `;` and extensions (ignored), ended by CRLF; a chunk's data is
//! followed by CRLF; trailers after the last chunk are read and dropped. A size
//! line, a missing CRLF after a chunk's data (the size lied), too long a size
//! line or trailer section are [`FrameError::Protocol`]; stdout ending
//! anywhere is [`FrameError::Closed`], as in the other formats. Bytes already
//! received after the last chunk are unsolicited output.
//!
//! A request body streamed into a function is written with [`write_chunk`]
//! and [`write_last`].

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::{FrameError, unsolicited};

/// The most body bytes one piece holds.
pub const PIECE: usize = 64 << 10;
/// The longest size line, extensions included.
const MAX_SIZE_LINE: usize = 1024;
/// The most bytes of trailers after the last chunk.
const MAX_TRAILERS: usize = 64 << 10;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a size line.
    Size,
    /// In a chunk's data, with this many bytes left, of a chunk of the size.
    Data { left: u64, size: u64 },
    /// After a chunk's data of this size, before its CRLF.
    DataEnd { size: u64 },
    /// After the last chunk, in the trailers.
    Trailers,
    /// The body has ended.
    Done,
}

/// A chunked body being read.
#[derive(Debug)]
pub struct Chunks {
    state: State,
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks::new()
    }
}

impl Chunks {
    /// A body whose first size line comes next.
    pub fn new() -> Chunks {
        Chunks { state: State::Size }
    }

    /// The next piece of the body, at most [`PIECE`] bytes; `None` once the last
    /// chunk and its trailers were read (and nothing unasked came with them).
    pub async fn next<R: AsyncBufRead + Unpin>(
        &mut self,
        stdout: &mut R,
    ) -> Result<Option<Bytes>, FrameError> {
        loop {
            match self.state {
                State::Size => {
                    let line = read_line(stdout, MAX_SIZE_LINE, "chunk size line").await?;
                    let size = parse_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data { left: size, size }
                    };
                }
                State::Data { left, size } => {
                    let received = stdout.fill_buf().await?;
                    if received.is_empty() {
                        return Err(FrameError::Closed);
                    }
                    let take = received
                        .len()
                        .min(PIECE)
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    let piece = Bytes::copy_from_slice(&received[..take]);
                    stdout.consume(take);
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd { size }
                    } else {
                        State::Data { left, size }
                    };
                    return Ok(Some(piece));
                }
                State::DataEnd { size } => {
                    let line = read_line(stdout, 2, "chunk's end")
                        .await
                        .map_err(|e| match e {
                            FrameError::Protocol(_) => lying_size(size),
                            other => other,
                        })?;
                    if !line.is_empty() {
                        return Err(lying_size(size));
                    }
                    self.state = State::Size;
                }
                State::Trailers => {
                    let mut read = 0;
                    loop {
                        let line = read_line(stdout, MAX_TRAILERS - read, "trailers").await?;
                        if line.is_empty() {
                            break;
                        }
                        read += line.len() + 2;
                    }
                    self.state = State::Done;
                    return match stdout.fill_buf().now_or_never() {
                        Some(Ok(extra)) if !extra.is_empty() => {
                            Err(unsolicited("after its streamed response", extra))
                        }
                        _ => Ok(None),
                    };
                }
                State::Done => return Ok(None),
            }
        }
    }
}

/// Writes `data` as one chunk (nothing for no data: an empty chunk would end
/// the body) and flushes.
pub async fn write_chunk<W: AsyncWrite + Unpin>(stdin: &mut W, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    stdin
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    stdin.write_all(data).await?;
    stdin.write_all(b"\r\n").await?;
    stdin.flush().await
}

/// Writes the last chunk, which ends the body, and flushes.
pub async fn write_last<W: AsyncWrite + Unpin>(stdin: &mut W) -> std::io::Result<()> {
    stdin.write_all(b"0\r\n\r\n").await?;
    stdin.flush().await
}

/// The error for a chunk of `size` bytes not followed by CRLF.
fn lying_size(size: u64) -> FrameError {
    FrameError::Protocol(format!(
        "the function's chunk of {size} bytes was not followed by CRLF: its size was wrong"
    ))
}

/// Reads one CRLF-ended line of at most `max` bytes before the CRLF, which it
/// drops; `what` names the line in errors.
async fn read_line<R: AsyncBufRead + Unpin>(
    stdout: &mut R,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, FrameError> {
    let mut line = Vec::new();
    loop {
        let received = stdout.fill_buf().await?;
        if received.is_empty() {
            return Err(FrameError::Closed);
        }
        let room = (max + 2).saturating_sub(line.len()).min(received.len());
        let (take, ended) = match received[..room].iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (room, false),
        };
        line.extend_from_slice(&received[..take]);
        stdout.consume(take);
        if ended {
            return match line.strip_suffix(b"\r\n") {
                Some(content) => Ok(content.to_vec()),
                None => Err(FrameError::Protocol(format!(
                    "the function's {what} ended with a bare LF, not CRLF"
                ))),
            };
        }
        if line.len() >= max + 2 {
            return Err(FrameError::Protocol(format!(
                "the function's {what} is longer than {max} bytes"
            )));
        }
    }
}

/// A size line's size: hex digits, optionally `;` and extensions after them.
fn parse_size(line: &[u8]) -> Result<u64, FrameError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let invalid = || {
        FrameError::Protocol(format!(
            "the function sent an invalid chunk size line: {:?}",
            String::from_utf8_lossy(&line[..line.len().min(32)])
        ))
    };
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid());
    }
    digits.iter().try_fold(0u64, |size, &b| {
        let digit = (b as char).to_digit(16).ok_or_else(invalid)?;
        Ok(size << 4 | u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, BufReader, duplex};

    /// The whole body of `bytes`, or the first error.
    async fn decode(bytes: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut stdout = BufReader::new(bytes);
        let mut chunks = Chunks::new();
        let mut body = Vec::new();
        while let Some(piece) = chunks.next(&mut stdout).await? {
            assert!(piece.len() <= PIECE);
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    fn protocol_error(result: Result<Vec<u8>, FrameError>) -> String {
        match result {
            Err(FrameError::Protocol(message)) => message,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn chunks_decode_to_the_body_extensions_and_trailers_dropped() {
        let body = decode(
            b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n\r\n\0binary\xff\r\n0\r\nX-Sum: 1\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(body, b"hello \r\n\0binary\xff");
        assert_eq!(decode(b"0\r\n\r\n").await.unwrap(), b"");
    }

    #[tokio::test]
    async fn a_large_chunk_comes_in_pieces_of_at_most_64_kib() {
        let size = 3 * PIECE + 7;
        let mut bytes = format!("{size:x}\r\n").into_bytes();
        bytes.extend(std::iter::repeat_n(b'x', size));
        bytes.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut stdout = BufReader::with_capacity(4 * PIECE, &bytes[..]);
        let mut chunks = Chunks::new();
        let mut pieces = Vec::new();
        while let Some(piece) = chunks.next(&mut stdout).await.unwrap() {
            pieces.push(piece.len());
        }
        assert!(pieces.len() >= 4, "{pieces:?}");
        assert!(pieces.iter().all(|&len| len <= PIECE), "{pieces:?}");
        assert_eq!(pieces.iter().sum::<usize>(), size);
    }

    #[tokio::test]
    async fn a_size_that_lies_or_a_bad_size_line_is_a_protocol_error() {
        let lie = protocol_error(decode(b"3\r\nhello\r\n0\r\n\r\n").await);
        assert!(
            lie.contains("chunk of 3 bytes was not followed by CRLF"),
            "{lie}"
        );
        for line in [
            &b"zz\r\n"[..],
            b"-1\r\n",
            b" 5\r\n",
            b"\r\n",
            b"1000000000000000\r\n",
        ] {
            let bad = protocol_error(decode(line).await);
            assert!(bad.contains("invalid chunk size line"), "{bad}");
        }
        let bare = protocol_error(decode(b"5\nhello\r\n").await);
        assert!(bare.contains("bare LF"), "{bare}");
        let long = [b"1;".as_slice(), &[b'x'; 2000]].concat();
        let too_long = protocol_error(decode(&long).await);
        assert!(too_long.contains("longer than 1024 bytes"), "{too_long}");
    }

    #[tokio::test]
    async fn endless_trailers_are_cut() {
        let mut bytes = b"0\r\n".to_vec();
        for _ in 0..5000 {
            bytes.extend_from_slice(b"X-Trailer: yes yes yes\r\n");
        }
        let cut = protocol_error(decode(&bytes).await);
        assert!(cut.contains("trailers is longer than"), "{cut}");
    }

    #[tokio::test]
    async fn stdout_ending_anywhere_is_closed() {
        for bytes in [
            &b""[..],
            b"5\r\nhel",
            b"5\r\nhello",
            b"5\r\nhello\r\n",
            b"0\r\n",
        ] {
            assert!(
                matches!(decode(bytes).await, Err(FrameError::Closed)),
                "{bytes:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_second_response_received_with_the_end_is_unsolicited() {
        let bytes = b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        let unasked = protocol_error(decode(bytes).await);
        assert!(unasked.contains("unsolicited output"), "{unasked}");
    }

    #[tokio::test]
    async fn written_chunks_decode_to_what_was_written() {
        let mut written = Vec::new();
        for data in [&b"first"[..], b"", &[b'x'; 70_000][..]] {
            write_chunk(&mut written, data).await.unwrap();
        }
        write_last(&mut written).await.unwrap();
        let body = decode(&written).await.unwrap();
        assert_eq!(body.len(), 5 + 70_000);
        assert!(body.starts_with(b"firstxx"));
    }

    #[tokio::test]
    async fn each_piece_comes_as_soon_as_it_is_written() {
        let (mut function, pool) = duplex(1024);
        let mut stdout = BufReader::new(pool);
        let mut chunks = Chunks::new();
        function.write_all(b"5\r\nfirst\r\n").await.unwrap();
        assert_eq!(
            chunks.next(&mut stdout).await.unwrap().unwrap(),
            Bytes::from_static(b"first")
        );
        function
            .write_all(b"6\r\nsecond\r\n0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            chunks.next(&mut stdout).await.unwrap().unwrap(),
            Bytes::from_static(b"second")
        );
        assert!(chunks.next(&mut stdout).await.unwrap().is_none());
        assert!(chunks.next(&mut stdout).await.unwrap().is_none());
    }
}
