//! containerd's content store, as a pull and a prepare use it: whether a blob
//! is there, reading a small one (a manifest, an image config), and writing
//! one as its bytes arrive from a registry.
//!
//! A write streams `WRITE` messages of up to [`CHUNK`] bytes and ends with a
//! `COMMIT` that names the expected digest and size, so containerd checks the
//! blob and a short or corrupt download never becomes content. It goes under
//! a lease (the pull's): an abandoned write leaves nothing once the lease goes.
//! A blob committed meanwhile by someone else is as good as our own.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use containerd_client::services::v1::{
    InfoRequest, ReadContentRequest, WriteAction, WriteContentRequest,
};
use futures_util::{Stream, StreamExt};
use tonic::{Code, Status};

use super::client::{Client, QUICK, SLOW, call};

/// The most bytes in one `WRITE` message.
const CHUNK: usize = 1 << 20;
/// The largest blob [`read_small`] reads: manifests and configs are far smaller.
const SMALL_MAX: usize = 4 << 20;

/// Whether the content store has blob `digest`.
pub(crate) async fn has(client: &Client, digest: &str) -> Result<bool, Status> {
    let request = client.request(InfoRequest {
        digest: digest.to_owned(),
    });
    match call("content_info", QUICK, client.content().info(request)).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::NotFound => Ok(false),
        Err(status) => Err(status),
    }
}

/// Reads blob `digest` whole, refusing one over [`SMALL_MAX`] bytes.
pub(crate) async fn read_small(client: &Client, digest: &str) -> Result<Vec<u8>, Status> {
    let request = client.request(ReadContentRequest {
        digest: digest.to_owned(),
        offset: 0,
        size: 0,
    });
    let mut stream = call("content_read", QUICK, client.content().read(request)).await?;
    let mut blob = Vec::new();
    let read = async {
        while let Some(message) = stream.message().await? {
            blob.extend_from_slice(&message.data);
            if blob.len() > SMALL_MAX {
                return Err(Status::out_of_range(format!(
                    "blob {digest} is over {SMALL_MAX} bytes: no manifest or config is"
                )));
            }
        }
        Ok(())
    };
    tokio::time::timeout(QUICK, read)
        .await
        .map_err(|_| Status::deadline_exceeded(format!("reading blob {digest}")))??;
    Ok(blob)
}

/// Why writing a blob failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// Its bytes did not arrive (the registry's download failed).
    Source(String),
    /// containerd refused or failed the write.
    Store(Status),
}

/// Writes blob `digest` of `size` bytes, carrying `labels`, from `bytes` as
/// they arrive, under `lease`; `reference` names the write while it is open.
pub(crate) async fn write<E: std::fmt::Display + Send + 'static>(
    client: &Client,
    lease: &str,
    reference: &str,
    digest: &str,
    size: i64,
    labels: HashMap<String, String>,
    bytes: impl Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
) -> Result<(), WriteError> {
    let (messages, receiver) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let requests = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|message| (message, receiver))
    });
    let feeder = tokio::spawn(feed(
        messages,
        reference.to_owned(),
        digest.to_owned(),
        size,
        labels,
        bytes,
    ));
    let written = async {
        let mut replies = call(
            "content_write",
            SLOW,
            client.content().write(client.leased(requests, lease)),
        )
        .await?;
        while replies.message().await?.is_some() {}
        Ok::<(), Status>(())
    }
    .await;
    // The feeder ends once its messages are sent or the store stopped taking them.
    let fed = feeder
        .await
        .unwrap_or_else(|e| Err(format!("the download task failed: {e}")));
    match (fed, written) {
        (Err(source), _) => Err(WriteError::Source(source)),
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(status)) if status.code() == Code::AlreadyExists => Ok(()),
        (Ok(()), Err(status)) => Err(WriteError::Store(status)),
    }
}

/// Sends the `STAT`, the `WRITE`s of `bytes` and the `COMMIT` of one write.
/// Sends no `COMMIT` if the bytes fail to arrive: containerd then drops the
/// write, and the lease what it had.
async fn feed<E: std::fmt::Display + Send + 'static>(
    messages: tokio::sync::mpsc::Sender<WriteContentRequest>,
    reference: String,
    digest: String,
    size: i64,
    labels: HashMap<String, String>,
    mut bytes: impl Stream<Item = Result<Bytes, E>> + Send + Unpin,
) -> Result<(), String> {
    let message = |action: WriteAction, offset: i64, data: Vec<u8>| WriteContentRequest {
        action: action as i32,
        r#ref: reference.clone(),
        total: size,
        expected: digest.clone(),
        offset,
        data,
        ..Default::default()
    };
    // A closed channel means the store ended the write: its status says why.
    if messages
        .send(message(WriteAction::Stat, 0, Vec::new()))
        .await
        .is_err()
    {
        return Ok(());
    }
    let mut offset = 0i64;
    let mut pending = BytesMut::new();
    loop {
        let next = bytes.next().await;
        let done = match next {
            Some(Ok(chunk)) => {
                pending.extend_from_slice(&chunk);
                // A registry that sends more than the manifest says must not
                // fill the disk until the pull's deadline.
                if offset + pending.len() as i64 > size {
                    return Err(format!(
                        "downloading {digest}: more than the {size} bytes its manifest gives"
                    ));
                }
                false
            }
            Some(Err(e)) => return Err(format!("downloading {digest}: {e}")),
            None => true,
        };
        while pending.len() >= CHUNK || (done && !pending.is_empty()) {
            let data = pending.split_to(pending.len().min(CHUNK));
            let length = data.len() as i64;
            if messages
                .send(message(WriteAction::Write, offset, data.to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
            offset += length;
        }
        if done {
            break;
        }
    }
    let mut commit = message(WriteAction::Commit, offset, Vec::new());
    commit.labels = labels;
    let _ = messages.send(commit).await;
    Ok(())
}
