//! Dispatch through the pool with the in-process driver, against the same round
//! trip over the same in-memory pipes without the pool: what the pool itself costs
//! per call (checkout, framing, check-in, metrics), with no engine in the way.
//! `pool` is on the library's default keep-alive (fixed), `pool_adaptive` on
//! `hotpool serve`'s (`adaptive`, which reckons at every arrival and return).
//!
//! Target: at least 200k calls/s on one function.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hotpool::driver::in_process::InProcessDriver;
use hotpool::driver::{Cookie, Driver, Task};
use hotpool::pool::{Function, FunctionSpec, KeepAlive, Pool, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let driver = InProcessDriver::new(Duration::ZERO);
    let mut spec = FunctionSpec::new("echo", "in-process");
    spec.cmd = vec!["line".into()];
    let mut adaptive_spec = spec.clone();
    adaptive_spec.name = "echo-adaptive".into();
    adaptive_spec.keep_alive = KeepAlive::ADAPTIVE;
    let (pool, echo, adaptive) = runtime.block_on(async {
        let pool = Pool::builder(driver.clone()).build().await.expect("pool");
        let echo = pool.register(spec);
        let adaptive = pool.register(adaptive_spec);
        for function in [&echo, &adaptive] {
            function
                .call(Request::new("warm"))
                .await
                .expect("warm call");
        }
        (pool, echo, adaptive)
    });
    // The floor: one container of the same driver, driven by hand.
    let (mut stdin, mut stdout, _cookie) = runtime.block_on(async {
        let mut task = Task::new("floor", "echo", "in-process");
        task.command = vec!["line".into()];
        let mut cookie = driver.prepare(task).await.expect("prepare");
        let running = cookie.run().await.expect("run");
        (
            running.stdin.unwrap(),
            BufReader::new(running.stdout.unwrap()),
            cookie,
        )
    });

    let mut group = c.benchmark_group("dispatch_line_echo");
    let through = |function: &Function<InProcessDriver>, iters: u64| {
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let response = function.call(Request::new("hello")).await.expect("call");
                black_box(response);
            }
            start.elapsed()
        })
    };
    group.bench_function("pool", |b| b.iter_custom(|iters| through(&echo, iters)));
    group.bench_function("pool_adaptive", |b| {
        b.iter_custom(|iters| through(&adaptive, iters))
    });
    group.bench_function("pipes", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut line = String::new();
                let start = Instant::now();
                for _ in 0..iters {
                    stdin.write_all(b"hello\n").await.expect("write");
                    line.clear();
                    stdout.read_line(&mut line).await.expect("read");
                    black_box(&line);
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    runtime.block_on(pool.shutdown());
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    support::print_ratio("dispatch_line_echo", "pool", "pipes");
    support::print_ratio("dispatch_line_echo", "pool_adaptive", "pool");
    support::print_rate("dispatch_line_echo", "pool", 200_000.0);
}
