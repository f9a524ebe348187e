//! Embedding the pool in a program: build a pool on the real Docker engine,
//! register a function, call it hot, read each call's stats, and change its
//! limits in place.
//!
//! Needs the example images (`scripts/build-images`); run it with
//! `cargo run --example embed`. It calls the example http-format function
//! (`examples/functions/hello-http`) a few times and prints what comes back.

use std::time::Duration;

use hotpool::driver::docker::{DockerDriver, DockerOptions};
use hotpool::pool::{Format, FunctionSpec, Pool, Request};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The driver talks to the local engine; the pool keeps hot containers on it.
    // The pool owns its name on the engine while it lives: another pool of
    // "embed-example", in this program or another, fails to build
    // (`BuildError::Claim`, naming this one) and touches none of its containers.
    let driver = DockerDriver::connect(DockerOptions::default()).await?;
    let pool = Pool::builder(driver)
        .name("embed-example")
        .memory_budget(256 << 20)
        .build()
        .await?;

    // Register a function by name; the handle calls its current version.
    let mut spec = FunctionSpec::new("hello", "hotpool-hello-http:dev");
    spec.lifecycle = Format::Http.into();
    spec.memory = 32 << 20;
    spec.timeout = Duration::from_secs(5);
    spec.max_concurrency = 2;
    let hello = pool.register(spec.clone());

    for name in ["Ada", "Grace", "Barbara"] {
        let request = Request::new(name).with_header("Content-Type", "text/plain");
        match hello.call(request).await {
            Ok(response) => {
                println!(
                    "{} {} {}",
                    response.status,
                    response.start.as_str(),
                    String::from_utf8_lossy(&response.body)
                );
                if let Some(stats) = &response.stats {
                    println!("  stats: {}", stats.header_value());
                }
            }
            Err(error) => println!("failed: {} ({})", error, error.kind()),
        }
    }
    // New limits apply to the running containers; a new image, command,
    // environment or memory would start new ones while these drain.
    spec.timeout = Duration::from_secs(10);
    pool.register(spec);

    let status = pool.status();
    println!(
        "containers of hello: {} idle; memory reserved {} of {} bytes",
        status.functions[0].idle, status.memory_reserved, status.memory_budget
    );

    // Shutdown removes every container the pool started.
    pool.shutdown().await;
    Ok(())
}
