//! Chaos on the real engine: calls at high concurrency over several functions
//! while a saboteur kills, removes and pauses their containers from outside.
//!
//! Every successful call must carry exactly its own body (never another call's),
//! every failure must be one of the typed reasons a dead or frozen container
//! gives, no call may hang, and nothing of the pool may be left afterwards.
//! Bounded: a fixed number of calls per worker, well under a minute here.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use hotpool::driver::docker::DockerDriver;
use hotpool::pool::{Format, FunctionSpec, POOL_LABEL, Pool, Request};

use hotpool::driver::Transport;
use support::{PoolGuard, driver, testfn_image};

const WORKERS: usize = 12;
const CALLS_PER_WORKER: usize = 600;
/// Far longer than any call takes; a call still running then has hung.
const HANG: Duration = Duration::from_secs(90);

fn spec(name: &str, format: Format) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, testfn_image());
    spec.format = format;
    spec.cmd = vec![format.as_str().to_owned()];
    spec.memory = 32 << 20;
    spec.timeout = Duration::from_secs(1);
    spec.max_concurrency = 4;
    spec.queue_timeout = Duration::from_secs(60);
    spec
}

/// The running containers of `pool`.
async fn running(docker: &Docker, pool: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![format!("{POOL_LABEL}={pool}")])]);
    let options = ListContainersOptionsBuilder::default()
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .map(|list| list.into_iter().filter_map(|c| c.id).collect())
        .unwrap_or_default()
}

/// Until `done`, every 150 ms does one of kill, remove, pause (undone two seconds
/// later) to one of the pool's running containers; returns how many of each.
async fn sabotage(
    docker: Docker,
    pool: String,
    done: Arc<AtomicBool>,
) -> BTreeMap<&'static str, usize> {
    let mut acts = BTreeMap::new();
    let mut round = 0usize;
    while !done.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        round += 1;
        let victims = running(&docker, &pool).await;
        if victims.is_empty() {
            continue;
        }
        let victim = victims[(round * 7) % victims.len()].clone();
        let act = ["kill", "remove", "pause"][round % 3];
        let result = match act {
            "kill" => {
                let options = KillContainerOptionsBuilder::default()
                    .signal("KILL")
                    .build();
                docker.kill_container(&victim, Some(options)).await
            }
            "remove" => {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                docker.remove_container(&victim, Some(options)).await
            }
            _ => {
                let paused = docker.pause_container(&victim).await;
                let docker = docker.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    // The pool may have removed it meanwhile.
                    let _ = docker.unpause_container(&victim).await;
                });
                paused
            }
        };
        if result.is_ok() {
            *acts.entry(act).or_insert(0) += 1;
        }
    }
    acts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_get_their_own_answer_or_a_typed_error_while_containers_are_sabotaged_attached() {
    calls_get_their_own_answer_or_a_typed_error_while_containers_are_sabotaged(Transport::Attach)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_get_their_own_answer_or_a_typed_error_while_containers_are_sabotaged_direct() {
    calls_get_their_own_answer_or_a_typed_error_while_containers_are_sabotaged(Transport::Direct)
        .await;
}

async fn calls_get_their_own_answer_or_a_typed_error_while_containers_are_sabotaged(
    transport: Transport,
) {
    let name = format!("test-chaos-{transport}-{}", std::process::id());
    let _guard = PoolGuard(name.clone());
    let pool: Pool<DockerDriver> = Pool::builder(driver().await)
        .name(name.clone())
        .memory_budget(1 << 30)
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("pool");
    let functions = Arc::new(
        [
            spec("chaos-line", Format::Line),
            spec("chaos-http", Format::Http),
            spec("chaos-line-2", Format::Line),
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
    let saboteur = tokio::spawn(sabotage(
        pool.driver().docker().clone(),
        name.clone(),
        done.clone(),
    ));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (pool, functions) = (pool.clone(), functions.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
            let mut wrong = Vec::new();
            for i in 0..CALLS_PER_WORKER {
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
    assert_eq!(outcomes.values().sum::<usize>(), WORKERS * CALLS_PER_WORKER);
    assert!(
        outcomes.get("success").copied().unwrap_or(0) > WORKERS * CALLS_PER_WORKER / 2,
        "most calls succeed: {outcomes:?}"
    );
    assert!(
        acts.values().sum::<usize>() > 0,
        "the saboteur must have hit something"
    );

    pool.shutdown().await;
    assert_eq!(
        running(pool.driver().docker(), &name).await,
        Vec::<String>::new()
    );
    assert_eq!(
        support::remove_pool_containers(&name),
        0,
        "shutdown left containers of the pool"
    );
}
