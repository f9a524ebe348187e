//! A hot container's stdout, buffered only while a call reads it.
//!
//! Reading a response wants a large buffer (a pipe holds 64 KiB, and one read
//! should take all of it), but an idle container should hold none: at a
//! thousand hot containers, 64 KiB each is 64 MB of hotpool's memory spent on
//! waiting. So the buffer is taken when a call first reads, without being
//! zeroed, and given back when the call leaves the container with nothing
//! unread.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use crate::driver::BoxRead;

/// How much one read may take.
const READ_BYTES: usize = 64 * 1024;

/// The reading end of a hot container's stdout.
pub(crate) struct Stdout {
    pipe: BoxRead,
    buffer: BytesMut,
}

impl Stdout {
    pub(crate) fn new(pipe: BoxRead) -> Stdout {
        Stdout {
            pipe,
            buffer: BytesMut::new(),
        }
    }

    /// Gives the buffer back if nothing in it is left to read.
    pub(crate) fn release(&mut self) {
        if self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        }
    }

    /// Bytes the buffer holds now, read or not.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buffer.capacity()
    }
}

impl AsyncRead for Stdout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.buffer.is_empty() {
            return Pin::new(&mut self.pipe).poll_read(cx, out);
        }
        let taken = self.buffer.len().min(out.remaining());
        out.put_slice(&self.buffer[..taken]);
        self.buffer.advance(taken);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for Stdout {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.buffer.is_empty() {
            this.buffer.reserve(READ_BYTES);
            ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.pipe),
                cx,
                &mut this.buffer
            ))?;
        }
        Poll::Ready(Ok(&this.buffer[..]))
    }

    fn consume(mut self: Pin<&mut Self>, amount: usize) {
        self.buffer.advance(amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn holds_a_buffer_only_between_a_read_and_its_release() {
        let (mut function, pool) = duplex(1024);
        let mut stdout = Stdout::new(Box::new(pool));
        assert_eq!(stdout.held(), 0, "no buffer before the first read");
        function.write_all(b"one\ntwo\n").await.unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        assert_eq!(line, "one\n");
        assert!(stdout.held() > 0);
        stdout.release();
        assert!(stdout.held() > 0, "unread bytes are kept");
        line.clear();
        stdout.read_line(&mut line).await.unwrap();
        assert_eq!(line, "two\n");
        stdout.release();
        assert_eq!(stdout.held(), 0, "given back once all is read");
    }
}
