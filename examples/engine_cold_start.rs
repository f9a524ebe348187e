//! Cold start through each engine's driver, no pool: a container prepared,
//! started, run to its end and removed (create, start, wait, delete), one
//! engine then the other in turn so the machine's noise hits both alike.
//! Prints the p50 and p90 of each and their ratio.
//!
//! ```text
//! cargo run --release --example engine_cold_start -- DOCKER_IMAGE CONTAINERD_IMAGE [RUNS]
//! ```
//!
//! The function is the test function's `echo` with no input (`scripts/build-images`
//! builds it for Docker as `hotpool-testfn:dev`). containerd pulls its image
//! itself, so `CONTAINERD_IMAGE` names one in a registry (credentials from the
//! Docker config file); the first run of each engine, pull included, is not
//! counted.

use std::io::Cursor;
use std::time::{Duration, Instant};

use hotpool::driver::containerd::{ContainerdDriver, ContainerdOptions};
use hotpool::driver::docker::{DockerDriver, DockerOptions};
use hotpool::driver::{Cookie, Driver, Task};
use hotpool::pool::POOL_LABEL;
use tokio_util::sync::CancellationToken;

/// The label of every container this example makes, removed at its end.
const POOL: &str = "engine-cold-start";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(docker_image), Some(containerd_image)) = (args.first(), args.get(1)) else {
        return Err("usage: engine_cold_start DOCKER_IMAGE CONTAINERD_IMAGE [RUNS]".into());
    };
    let runs: usize = args.get(2).map_or(Ok(20), |runs| runs.parse())?;
    let docker = DockerDriver::connect(DockerOptions::default()).await?;
    let containerd = ContainerdDriver::connect(ContainerdOptions::default()).await?;
    // Not counted: the pull, the init's install, the first shim.
    cold_start(&docker, docker_image).await?;
    cold_start(&containerd, containerd_image).await?;
    let (mut through_docker, mut through_containerd) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        through_docker.push(cold_start(&docker, docker_image).await?);
        through_containerd.push(cold_start(&containerd, containerd_image).await?);
    }
    docker.remove_labelled(POOL_LABEL, POOL).await?;
    containerd.remove_labelled(POOL_LABEL, POOL).await?;
    let docker_p50 = percentile(&mut through_docker, 50);
    let containerd_p50 = percentile(&mut through_containerd, 50);
    println!("{runs} cold starts each (create, start, wait, delete), alternating:");
    for (engine, times, p50) in [
        ("docker", &mut through_docker, docker_p50),
        ("containerd", &mut through_containerd, containerd_p50),
    ] {
        println!(
            "  {engine:<11} p50 {:>6.1} ms   p90 {:>6.1} ms",
            millis(p50),
            millis(percentile(times, 90))
        );
    }
    println!(
        "  containerd/docker p50: {:.2}",
        containerd_p50.as_secs_f64() / docker_p50.as_secs_f64()
    );
    Ok(())
}

/// One container of `image` through `driver`, from prepare to close.
async fn cold_start<D: Driver>(
    driver: &D,
    image: &str,
) -> Result<Duration, hotpool::error::CallError> {
    let mut task = Task::new(hotpool::driver::new_id(), "cold-start", image);
    task.command = vec!["echo".to_owned()];
    task.memory = 64 << 20;
    task.input = Some(Box::new(Cursor::new(Vec::new())));
    task.stdout = Some(Box::new(tokio::io::sink()));
    task.labels.insert(POOL_LABEL.to_owned(), POOL.to_owned());
    let started = Instant::now();
    let mut cookie = driver.prepare(task).await?;
    let ran = match cookie.run().await {
        Ok(_) => cookie.wait(&CancellationToken::new()).await,
        Err(e) => Err(e),
    };
    cookie.close().await;
    ran.map(|()| started.elapsed())
}

fn percentile(times: &mut [Duration], percent: usize) -> Duration {
    times.sort();
    times[(times.len() * percent / 100).min(times.len() - 1)]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
