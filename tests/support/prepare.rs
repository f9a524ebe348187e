//! Prepares of the test function in the pull tests: a task in a pool of its
//! own, what a prepare came to (an error's kind, or none), and a cold call of
//! the image that a prepare pulled.

use std::io::Cursor;
use std::time::Duration;

use hotpool::driver::{Cookie, Driver, Task};
use hotpool::error::ErrorKind;
use hotpool::pool::POOL_LABEL;
use tokio_util::sync::CancellationToken;

use super::SharedBuf;

/// A task of the test function on `image`, in pool `pool`.
pub fn task(image: &str, pool: &str) -> Task {
    let mut task = Task::new(hotpool::driver::new_id(), "pull-test", image);
    task.labels.insert(POOL_LABEL.to_owned(), pool.to_owned());
    task.memory = 64 << 20;
    task.timeout = Some(Duration::from_secs(60));
    task
}

/// Prepares `image` (pulling it if missing) and closes the container: the
/// error's kind, or `None` when it worked.
pub async fn prepare_kind<D: Driver>(driver: &D, image: &str, pool: &str) -> Option<ErrorKind> {
    match driver.prepare(task(image, pool)).await {
        Ok(cookie) => {
            cookie.close().await;
            None
        }
        Err(e) => {
            eprintln!("prepare {image}: {e}");
            Some(e.kind())
        }
    }
}

/// A cold call of the test function's `echo` on `image` with `input`: what
/// it wrote. Fails the test unless the call succeeds.
pub async fn cold_echo<D: Driver>(driver: &D, image: &str, pool: &str, input: &[u8]) -> Vec<u8> {
    let stdout = SharedBuf::default();
    let stderr = SharedBuf::default();
    let mut call = task(image, pool);
    call.command = vec!["echo".to_owned()];
    call.input = Some(Box::new(Cursor::new(input.to_vec())));
    call.stdout = Some(Box::new(stdout.clone()));
    call.stderr = Box::new(stderr.clone());
    let mut cookie = driver
        .prepare(call)
        .await
        .expect("prepare pulls and creates");
    cookie.run().await.expect("run");
    let result = cookie.wait(&CancellationToken::new()).await;
    cookie.close().await;
    assert_eq!(result, Ok(()), "stderr: {}", stderr.text());
    stdout.bytes()
}
