//! One pull of an image however many prepares ask for it at once, for every
//! driver that pulls: the pulls in flight by image, shared by their waiters,
//! counted, and recorded in `hotpool_image_pulls_total{result}`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::error::CallError;

/// A pull in flight that several prepares may await.
type PullFuture = Shared<BoxFuture<'static, Result<(), CallError>>>;

/// The pulls in flight of one driver.
#[derive(Default)]
pub(crate) struct SharedPulls {
    in_flight: DashMap<String, PullFuture>,
    started: AtomicU64,
}

impl SharedPulls {
    /// How many pulls were started.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Awaits the pull of `image`: the one in flight, or a new one that `pull`
    /// makes, run in a task of its own so that no waiter's leaving ends it.
    pub(crate) async fn pull<F>(
        &self,
        image: &str,
        pull: impl FnOnce() -> F,
    ) -> Result<(), CallError>
    where
        F: Future<Output = Result<(), CallError>> + Send + 'static,
    {
        let shared = self
            .in_flight
            .entry(image.to_owned())
            .or_insert_with(|| self.start(pull()))
            .clone();
        let result = shared.await;
        self.in_flight
            .remove_if(image, |_, pull| pull.peek().is_some());
        result
    }

    fn start(
        &self,
        pull: impl Future<Output = Result<(), CallError>> + Send + 'static,
    ) -> PullFuture {
        self.started.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(async move {
            let result = pull.await;
            let outcome = match &result {
                Ok(()) => "success",
                Err(e) => e.kind().as_str(),
            };
            metrics::counter!(crate::metrics::IMAGE_PULLS_TOTAL, "result" => outcome).increment(1);
            result
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(CallError::engine(format!("the pull task failed: {e}"))))
        }
        .boxed()
        .shared()
    }
}
