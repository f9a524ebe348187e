//! Chaos on the real engines, Docker (over both transports) and containerd
//! (over direct, its only one): calls at high concurrency over several
//! functions while a saboteur kills, removes and pauses their containers from
//! outside.
//!
//! Every successful call must carry exactly its own body (never another call's),
//! every failure must be one of the typed reasons a dead or frozen container
//! gives, no call may hang, and nothing of the pool may be left afterwards.
//! Bounded: a fixed number of calls per worker (more, up to a cap, until the
//! saboteur has acted a few times), well under a minute here.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hotpool::driver::Transport;
use hotpool::pool::{Format, FunctionSpec, Request};

use support::OnEngine;
use support::engine::TestEngine;
use support::pool::{containers_of, test_pool};

const WORKERS: usize = 12;
const CALLS_PER_WORKER: usize = 600;
/// How many acts of the saboteur the calls must meet: a worker that is done
/// before then (an engine whose calls are fast) calls on, up to ten times
/// [`CALLS_PER_WORKER`].
const MIN_ACTS: usize = 3;
/// Far longer than any call takes; a call still running then has hung.
const HANG: Duration = Duration::from_secs(90);

fn spec(image: &str, name: &str, format: Format) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, image);
    spec.lifecycle = format.into();
    spec.cmd = vec![format.as_str().to_owned()];
    spec.memory = 32 << 20;
    spec.timeout = Duration::from_secs(1);
    spec.max_concurrency = 4;
    spec.queue_timeout = Duration::from_secs(60);
    spec
}

/// Until `done`, every 150 ms does one of kill, remove, pause (undone two seconds
/// later) to one of the pool's running containers, counting in `hits` the acts
/// that worked; returns how many of each.
async fn sabotage<D: TestEngine>(
    driver: D,
    pool: String,
    done: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
) -> BTreeMap<&'static str, usize> {
    let mut acts = BTreeMap::new();
    let mut round = 0usize;
    while !done.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        round += 1;
        let victims: Vec<String> = driver.containers(&pool, true).await.into_iter().collect();
        if victims.is_empty() {
            continue;
        }
        let victim = victims[(round * 7) % victims.len()].clone();
        let act = ["kill", "remove", "pause"][round % 3];
        let result = match act {
            "kill" => driver.kill(&victim).await,
            "remove" => driver.remove(&victim).await,
            _ => {
                let paused = driver.pause(&victim).await;
                let driver = driver.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    // The pool may have removed it meanwhile.
                    let _ = driver.resume(&victim).await;
                });
                paused
            }
        };
        if result.is_ok() {
            hits.fetch_add(1, Ordering::AcqRel);
            *acts.entry(act).or_insert(0) += 1;
        }
    }
    acts
}

mod calls_get_their_own_answer_or_a_typed_error_while_containers_are_sabotaged {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn docker_attach() {
        chaos(support::on_docker().await, Transport::Attach).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn docker_direct() {
        chaos(support::on_docker().await, Transport::Direct).await;
    }

    // containerd has no attach transport: direct alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn containerd_direct() {
        chaos(support::on_containerd().await, Transport::Direct).await;
    }
}

async fn chaos<D: TestEngine>(engine: OnEngine<D>, transport: Transport) {
    let pool = test_pool(engine, &format!("test-chaos-{transport}"), 1 << 30).await;
    let name = pool.config().name.clone();
    let image = pool.engine.image.clone();
    let functions = Arc::new(
        [
            spec(&image, "chaos-line", Format::Line),
            spec(&image, "chaos-http", Format::Http),
            spec(&image, "chaos-line-2", Format::Line),
        ]
        .map(|mut spec| {
            spec.transport = transport;
            spec
        }),
    );
    // Warm every function before the saboteur starts.
    for function in functions.iter() {
        let warm = pool
            .register(function.clone())
            .call(Request::new("warm"))
            .await
            .expect("warm call");
        assert_eq!(warm.body, "warm");
    }

    let done = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let saboteur = tokio::spawn(sabotage(
        pool.driver().clone(),
        name.clone(),
        done.clone(),
        hits.clone(),
    ));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (pool, functions, hits) = (pool.clone(), functions.clone(), hits.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
            let mut wrong = Vec::new();
            for i in 0.. {
                let met = hits.load(Ordering::Acquire) >= MIN_ACTS;
                if i >= CALLS_PER_WORKER && (met || i >= 10 * CALLS_PER_WORKER) {
                    break;
                }
                let function = &functions[(worker + i) % functions.len()];
                let body = format!("{}:{worker}:{i}", function.name);
                let function = pool.register(function.clone());
                let call = function.call(Request::new(body.clone()));
                let outcome = match tokio::time::timeout(HANG, call).await {
                    Err(_) => panic!("call {body} hung for {HANG:?}"),
                    Ok(Ok(response)) => {
                        if response.body != body.as_bytes() {
                            wrong.push(format!(
                                "{body} got {:?}",
                                String::from_utf8_lossy(&response.body)
                            ));
                        }
                        "success".to_owned()
                    }
                    Ok(Err(error)) => error.kind().as_str().to_owned(),
                };
                *outcomes.entry(outcome).or_insert(0) += 1;
            }
            (outcomes, wrong)
        }));
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for worker in workers {
        let (counts, bad) = worker.await.expect("a worker panicked");
        for (outcome, n) in counts {
            *outcomes.entry(outcome).or_insert(0) += n;
        }
        wrong.extend(bad);
    }
    done.store(true, Ordering::Release);
    let acts = saboteur.await.expect("the saboteur");
    println!("outcomes {outcomes:?}; sabotage {acts:?}");

    assert!(
        wrong.is_empty(),
        "calls got bodies not their own: {wrong:?}"
    );
    let typed = ["success", "exited", "timeout", "protocol_error"];
    for (outcome, n) in &outcomes {
        assert!(
            typed.contains(&outcome.as_str()),
            "{n} calls failed with {outcome}, not a reason a dead or frozen container gives: {outcomes:?}"
        );
    }
    let calls = outcomes.values().sum::<usize>();
    assert!(calls >= WORKERS * CALLS_PER_WORKER, "{outcomes:?}");
    assert!(
        outcomes.get("success").copied().unwrap_or(0) > calls / 2,
        "most calls succeed: {outcomes:?}"
    );
    assert!(
        acts.values().sum::<usize>() >= MIN_ACTS,
        "the saboteur must have hit something: {acts:?}"
    );

    pool.shutdown().await;
    assert_eq!(
        containers_of(&pool, false).await,
        Default::default(),
        "shutdown left containers of the pool"
    );
}
