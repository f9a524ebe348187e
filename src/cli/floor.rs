//! The engine's own floor for `hotpool bench`: containers of the pool's own
//! driver task (hardening included), made by the same driver, spoken to
//! without the pool, their calls framed by the pool's format code; and a cold
//! call run the same way. What the pool adds over them is what the bench's
//! ratios measure.

use std::time::Duration;

use tokio::io::BufReader;
use tokio_util::sync::CancellationToken;

use hotpool::driver::containerd::Footprint;
use hotpool::driver::{AnyCookie, AnyDriver, BoxRead, BoxWrite, Cookie, Driver, Task};
use hotpool::format::{FrameError, Framing};
use hotpool::pool::{Format, FunctionSpec, Lifecycle, POOL_LABEL, Pool, Request};

/// The driver task of a floor container: the pool's own for `spec`, labelled
/// as `pool` labels its containers.
pub(super) fn floor_task(pool: &Pool<AnyDriver>, spec: &FunctionSpec) -> Task {
    let mut task = spec.task(&format!("floor-{}", hotpool::driver::new_id()));
    task.labels
        .insert(POOL_LABEL.to_owned(), pool.config().name.clone());
    task
}

/// A hot container of the bench's function spoken to without the pool.
pub(super) struct FloorContainer {
    cookie: AnyCookie,
    stdin: BoxWrite,
    stdout: BufReader<BoxRead>,
    format: Format,
    timeout: Duration,
    max_response: usize,
}

impl FloorContainer {
    /// Makes and starts a container of `spec` and takes its pipes.
    pub(super) async fn start(
        pool: &Pool<AnyDriver>,
        spec: &FunctionSpec,
        max_response: usize,
    ) -> Result<FloorContainer, String> {
        let cookie = pool
            .driver()
            .prepare(floor_task(pool, spec))
            .await
            .map_err(|e| format!("a floor container of {} was not made: {e}", spec.name))?;
        FloorContainer::started(cookie, spec, max_response).await
    }

    /// Starts `cookie`, a container of `spec` (a hot function's), and takes
    /// its pipes; removes it if it does not start.
    pub(super) async fn started(
        mut cookie: AnyCookie,
        spec: &FunctionSpec,
        max_response: usize,
    ) -> Result<FloorContainer, String> {
        let Lifecycle::Hot(format) = spec.lifecycle else {
            cookie.close().await;
            return Err(format!("{} is cold: it has no hot pipes", spec.name));
        };
        let failed = |e| format!("a floor container of {} did not start: {e}", spec.name);
        let running = match cookie.run().await {
            Ok(running) => running,
            Err(error) => {
                cookie.close().await;
                return Err(failed(error));
            }
        };
        let (Some(stdin), Some(stdout)) = (running.stdin, running.stdout) else {
            cookie.close().await;
            return Err("the driver did not hand out a floor container's pipes".into());
        };
        Ok(FloorContainer {
            cookie,
            stdin,
            stdout: BufReader::new(stdout),
            format,
            timeout: spec.timeout,
            max_response,
        })
    }

    /// Writes one request and reads its response, framed as the pool frames them.
    pub(super) async fn round_trip(&mut self, request: &Request) -> Result<(), String> {
        self.exchange(request)
            .await
            .map_err(|e| format!("a floor call failed: {e}"))
    }

    /// What the container holds now, where its driver can tell (containerd's).
    pub(super) fn footprint(&self) -> Option<Footprint> {
        match &self.cookie {
            AnyCookie::Containerd(cookie) => cookie.footprint(),
            AnyCookie::Docker(_) => None,
        }
    }

    async fn exchange(&mut self, request: &Request) -> Result<(), FrameError> {
        self.format
            .write_request(&mut self.stdin, request, self.timeout)
            .await?;
        self.format
            .read_response(&mut self.stdout, request, self.max_response)
            .await?;
        Ok(())
    }

    /// Removes the container.
    pub(super) async fn close(self) {
        self.cookie.close().await;
    }
}

/// One cold call without the pool: a container of `spec` with `body` on its
/// stdin, run to its end by the driver, its stdout discarded.
pub(super) async fn floor_cold_call(
    pool: &Pool<AnyDriver>,
    spec: &FunctionSpec,
    body: &[u8],
) -> Result<(), String> {
    let driver = pool.driver();
    let mut task = floor_task(pool, spec);
    task.timeout = Some(spec.timeout);
    task.input = Some(Box::new(std::io::Cursor::new(body.to_vec())));
    task.stdout = Some(Box::new(tokio::io::sink()));
    let result = match driver.prepare(task).await {
        Ok(mut cookie) => {
            let result = match cookie.run().await {
                Ok(_) => cookie.wait(&CancellationToken::new()).await,
                Err(error) => Err(error),
            };
            cookie.close().await;
            result
        }
        Err(error) => Err(error),
    };
    result.map_err(|e| format!("a floor_cold call failed: {e}"))
}
