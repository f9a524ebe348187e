//! A request body that streams into an `http` function: chunked, written as
//! the caller sends it, in full duplex with the function's answer.
//!
//! [`RequestBody`] is the caller's side: pieces as they arrive. A call given
//! one writes the request's head saying its body is chunked, then a [`Pump`]
//! copies each piece into the container's stdin as one chunk and ends the body
//! with the last chunk. The pump holds the container's stdin, taken from its
//! pipes for the time, and runs beside the reading of the answer, so a
//! function may answer (or stream its answer) while its request still comes;
//! the call gives the container back only once both are done. At most one
//! piece is in hotpool at a time: a function that reads slowly holds the
//! caller back, never hotpool's memory. A body past the call's stream limit, or
//! one whose caller failed to send it, cuts the call (`cancelled`): the
//! container holds half a request and is evicted.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::driver::BoxWrite;
use crate::error::CallError;
use crate::format::FrameError;
use crate::format::chunked::{write_chunk, write_last};

/// A request body that comes in pieces, as its caller sends it.
pub struct RequestBody {
    pieces: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
}

impl RequestBody {
    /// The body `pieces` yield, in order; an error ends it as failed.
    pub fn new(pieces: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static) -> RequestBody {
        RequestBody {
            pieces: Box::pin(pieces),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

/// Why a streamed request body could not be written whole.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// The caller's body failed or passed the limit: the call is cut.
    Body(CallError),
    /// The container's stdin failed: it died or closed it.
    Pipe(FrameError),
}

/// The writing of a streamed request body: done, it hands back the container's
/// stdin it held.
pub(crate) type Pump = Pin<Box<dyn Future<Output = (BoxWrite, Result<(), PumpError>)> + Send>>;

/// Writes `body` into `stdin` as chunks, at most `limit` bytes, then the last
/// chunk.
pub(crate) fn pump(mut stdin: BoxWrite, mut body: RequestBody, limit: usize) -> Pump {
    Box::pin(async move {
        let mut written = 0usize;
        let result = async {
            while let Some(piece) = body.pieces.next().await {
                let piece = piece.map_err(|error| {
                    PumpError::Body(CallError::RequestBody {
                        detail: error.to_string(),
                    })
                })?;
                written += piece.len();
                if written > limit {
                    return Err(PumpError::Body(CallError::RequestBody {
                        detail: format!("the request body passed its limit of {limit} bytes"),
                    }));
                }
                write_chunk(&mut stdin, &piece)
                    .await
                    .map_err(|e| PumpError::Pipe(e.into()))?;
            }
            write_last(&mut stdin)
                .await
                .map_err(|e| PumpError::Pipe(e.into()))
        }
        .await;
        (stdin, result)
    })
}
