//! Many `hotpool serve` nodes behind HAProxy with the shipped config
//! (`deploy/haproxy/haproxy.cfg`), as `scripts/cluster` starts them on loopback:
//! three nodes on the one engine behind consistent hashing, and three more
//! behind the same config balancing round robin, for comparison.
//!
//! One test, so the cluster starts once: a steady stream over 20 functions
//! keeps each function on one node through hashing where round robin spreads
//! every one over all three (counted from the `Hotpool-Node` header HAProxy
//! adds, and the warm calls from `Hotpool-Start`); one function driven past one
//! node's `max_concurrency` spills to a second node and gets no `busy`; a
//! node's `503 busy` is tried once more on another node, a 502 never; a node
//! killed mid-load costs only the calls that were on it, each a prompt 502,
//! and once the health checks take it out every call lands on the others,
//! the functions of the surviving nodes where they were; and nothing is left
//! behind.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use support::cluster::{Cluster, alive};
use support::http::{self, HttpResponse};
use support::server::{containers_of, eventually};
use support::{pool_locks_of, runtime_dirs_of_process, testfn_image};

/// Functions in the stream.
const FUNCTIONS: usize = 20;
/// Times the stream goes over every function.
const PASSES: usize = 4;
/// The `max_concurrency` of the function driven past it.
const HOT_MAX_CONCURRENCY: usize = 2;

fn functions() -> String {
    let image = testfn_image();
    let mut toml = String::new();
    for i in 0..FUNCTIONS {
        toml.push_str(&format!(
            "[[function]]\nname = \"{}\"\nimage = \"{image}\"\ncmd = [\"line\"]\n\
             format = \"line\"\nmemory = \"16m\"\nkeep_alive = \"fixed:10m\"\ntimeout = \"15m\"\n\n",
            function(i)
        ));
    }
    // No queue: a call that finds every container busy gets `busy` at once.
    for (name, max_concurrency) in [("hot", HOT_MAX_CONCURRENCY), ("single", 1)] {
        toml.push_str(&format!(
            "[[function]]\nname = \"{name}\"\nimage = \"{image}\"\ncmd = [\"line\"]\n\
             format = \"line\"\nmemory = \"16m\"\nkeep_alive = \"fixed:10m\"\n\
             max_concurrency = {max_concurrency}\nmax_queue = 0\n\n"
        ));
    }
    toml
}

fn function(i: usize) -> String {
    format!("f{i:02}")
}

fn invoke(through: SocketAddr, function: &str, body: &str) -> HttpResponse {
    http::post(through, &format!("/invoke/{function}"), body.as_bytes())
        .unwrap_or_else(|e| panic!("POST /invoke/{function} through {through}: {e}"))
}

/// The busy containers of `function` on the node at `addr`.
fn busy(addr: SocketAddr, function: &str) -> Option<u64> {
    let listed = http::get(addr, "/functions").expect("the node's /functions");
    listed.json()["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .find(|f| f["name"] == function)
        .and_then(|f| f["containers"]["busy"].as_u64())
}

fn node_of(response: &HttpResponse) -> String {
    response
        .header("hotpool-node")
        .unwrap_or_else(|| panic!("HAProxy names the node: {response}"))
        .to_owned()
}

/// What a stream of calls saw: the nodes of each function, and how many calls
/// found a warm container.
struct Stream {
    nodes: BTreeMap<String, BTreeSet<String>>,
    calls: usize,
    warm: usize,
}

/// `PASSES` times over every function, one call at a time, each sent when
/// HAProxy counts none in flight in `backend`.
fn stream(cluster: &Cluster, through: SocketAddr, backend: &str) -> Stream {
    let mut seen = Stream {
        nodes: BTreeMap::new(),
        calls: 0,
        warm: 0,
    };
    for pass in 0..PASSES {
        for i in 0..FUNCTIONS {
            let body = format!("pass {pass} of {}", function(i));
            cluster.wait_until_idle(backend);
            let response = invoke(through, &function(i), &body);
            assert_eq!(response.status, 200, "{response}");
            assert_eq!(response.text(), body, "{response}");
            seen.nodes
                .entry(function(i))
                .or_default()
                .insert(node_of(&response));
            seen.calls += 1;
            if response.header("hotpool-start") == Some("hot") {
                seen.warm += 1;
            }
        }
    }
    seen
}

#[test]
fn hashing_keeps_functions_on_their_node_spills_under_load_and_survives_a_lost_node() {
    let cluster = Cluster::start("cluster-test", &functions());

    // Affinity against round robin, over the same stream.
    let hashed = stream(&cluster, cluster.hash, "hotpool");
    let round_robin = stream(&cluster, cluster.round_robin, "hotpool-round-robin");
    let spread = |seen: &Stream| seen.nodes.values().map(BTreeSet::len).sum::<usize>();
    eprintln!(
        "hashing: {} of {} calls warm, functions on {} nodes in all; \
         round robin: {} of {} warm, on {} nodes in all",
        hashed.warm,
        hashed.calls,
        spread(&hashed),
        round_robin.warm,
        round_robin.calls,
        spread(&round_robin)
    );
    for (name, nodes) in &hashed.nodes {
        assert_eq!(
            nodes.len(),
            1,
            "hashing keeps {name} on one node: {nodes:?}"
        );
    }
    for (name, nodes) in &round_robin.nodes {
        assert_eq!(nodes.len(), 3, "round robin spreads {name}: {nodes:?}");
    }
    // One cold start per function and node it was seen on, every other call warm.
    assert_eq!(hashed.warm, hashed.calls - spread(&hashed));
    assert_eq!(round_robin.warm, round_robin.calls - spread(&round_robin));
    assert!(hashed.warm > round_robin.warm);

    // Bounded load: twice one node's max_concurrency at once, no queue on the
    // nodes; hashing alone would put all on one node, and half would be busy.
    let callers = 2 * HOT_MAX_CONCURRENCY;
    let start = Arc::new(Barrier::new(callers));
    let hot_calls: Vec<_> = (0..callers)
        .map(|_| {
            let (start, through) = (start.clone(), cluster.hash);
            std::thread::spawn(move || {
                start.wait();
                invoke(through, "hot", "!sleep 3000")
            })
        })
        .collect();
    let mut hot_nodes: BTreeMap<String, usize> = BTreeMap::new();
    for call in hot_calls {
        let response = call.join().expect("a hot call");
        assert_eq!(
            response.status, 200,
            "no busy while capacity remains: {response}"
        );
        *hot_nodes.entry(node_of(&response)).or_default() += 1;
    }
    eprintln!("{callers} calls of hot at once, by node: {hot_nodes:?}");
    assert!(hot_nodes.len() >= 2, "hot spilled: {hot_nodes:?}");
    assert!(
        hot_nodes.values().all(|&n| n <= HOT_MAX_CONCURRENCY),
        "{hot_nodes:?}"
    );

    // A busy node's 503 is tried once more on another node: `single` (one
    // container at most, no queue) is kept busy on its node by a call sent to
    // the node itself, which HAProxy does not count, so HAProxy sends the next
    // call there.
    cluster.wait_until_idle("hotpool");
    let first = invoke(cluster.hash, "single", "first");
    assert_eq!(first.status, 200, "{first}");
    let home = cluster.node(&node_of(&first)).clone();
    let occupied = {
        let addr = home.addr;
        std::thread::spawn(move || {
            http::post(addr, "/invoke/single", b"!sleep 5000").expect("the call to the node")
        })
    };
    eventually("single is busy on its node", || {
        busy(home.addr, "single") == Some(1) && !occupied.is_finished()
    });
    let before = cluster.retries("hotpool");
    let retried = invoke(cluster.hash, "single", "retried");
    assert_eq!(retried.status, 200, "{retried}");
    assert_eq!(retried.text(), "retried");
    assert_ne!(node_of(&retried), home.name, "{retried}");
    let after = cluster.retries("hotpool");
    assert_eq!(
        after.1,
        before.1 + 1,
        "one redispatch: {before:?} {after:?}"
    );
    assert_eq!(occupied.join().expect("the call to the node").status, 200);

    // A call that ran and failed is not retried: its 502 comes from its node.
    cluster.wait_until_idle("hotpool");
    let before = cluster.retries("hotpool");
    let failed = invoke(cluster.hash, "single", "!exit 3");
    assert_eq!(failed.status, 502, "{failed}");
    assert_eq!(failed.json()["error"]["kind"], "exited", "{failed}");
    assert_eq!(node_of(&failed), home.name, "{failed}");
    assert_eq!(cluster.retries("hotpool"), before, "not retried");

    // A node lost mid-load: the node of f00 is killed with a call in flight on
    // it and three callers streaming over every function.
    let victim = hashed.nodes[&function(0)]
        .first()
        .expect("f00 has a node")
        .clone();
    let victim_node = cluster.node(&victim).clone();
    let through = cluster.hash;
    cluster.wait_until_idle("hotpool");
    let in_flight = std::thread::spawn(move || invoke(through, &function(0), "!sleep 600000"));
    eventually("the long call runs on its node", || {
        busy(victim_node.addr, "f00") == Some(1)
    });

    let stopping = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    // Each call's answer, and whether HAProxy had seen the victim down before
    // it was sent.
    let answers: Arc<Mutex<Vec<(HttpResponse, bool)>>> = Arc::default();
    let victim_down = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|caller| {
            let (stopping, done, answers, victim_down) = (
                stopping.clone(),
                done.clone(),
                answers.clone(),
                victim_down.clone(),
            );
            std::thread::spawn(move || {
                let mut i = caller;
                while !stopping.load(Ordering::SeqCst) {
                    let after_down = victim_down.load(Ordering::SeqCst);
                    let response = invoke(through, &function(i % FUNCTIONS), "!sleep 50");
                    answers.lock().unwrap().push((response, after_down));
                    done.fetch_add(1, Ordering::SeqCst);
                    i += 3;
                }
            })
        })
        .collect();
    let wait_for_calls = |n: usize| {
        let target = done.load(Ordering::SeqCst) + n;
        eventually(&format!("{n} more calls are answered"), || {
            done.load(Ordering::SeqCst) >= target
        });
    };
    wait_for_calls(30);
    // SAFETY: kill only sends a signal to the node's process.
    assert_eq!(
        unsafe { libc::kill(victim_node.pid as libc::pid_t, libc::SIGKILL) },
        0
    );

    let lost = in_flight.join().expect("the long call");
    assert_eq!(lost.status, 502, "{lost}");
    assert_eq!(node_of(&lost), victim, "{lost}");
    assert_eq!(lost.json()["error"]["kind"], "node_failed", "{lost}");

    cluster.wait_for_status("hotpool", &victim, "DOWN");
    victim_down.store(true, Ordering::SeqCst);
    wait_for_calls(60);
    stopping.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.join().expect("a caller");
    }
    let answers = answers.lock().unwrap();
    let failed = answers.iter().filter(|(r, _)| r.status != 200).count();
    eprintln!(
        "{} calls under load, {failed} lost with {victim}",
        answers.len()
    );
    for (response, after_down) in answers.iter() {
        if response.status == 200 {
            assert_eq!(response.text(), "slept", "{response}");
        } else {
            // The only failure: a call that was on the victim when it died.
            assert_eq!(response.status, 502, "{response}");
            assert_eq!(node_of(response), victim, "{response}");
            assert!(!after_down, "sent after the node was out: {response}");
        }
        if *after_down {
            assert_ne!(node_of(response), victim, "{response}");
        }
    }

    // The stream again: every function on one live node, and those that were
    // on the surviving nodes are where they were.
    for i in 0..FUNCTIONS {
        cluster.wait_until_idle("hotpool");
        let response = invoke(cluster.hash, &function(i), "again");
        assert_eq!(response.status, 200, "{response}");
        let node = node_of(&response);
        assert_ne!(node, victim, "{response}");
        let before = hashed.nodes[&function(i)].first().expect("a node");
        if *before != victim {
            assert_eq!(&node, before, "{} moved though its node lives", function(i));
        }
    }

    // Everything removed afterwards, the killed node's containers and pipe
    // directories included.
    let nodes = cluster.nodes.clone();
    let haproxy = cluster.haproxy_pid;
    let log = cluster.haproxy_log();
    cluster.stop();
    assert!(!alive(haproxy), "HAProxy is still running");
    for node in &nodes {
        assert!(!alive(node.pid), "node {} is still running", node.name);
        assert_eq!(
            containers_of(&node.pool),
            Vec::<String>::new(),
            "containers of {} are left",
            node.name
        );
        assert_eq!(
            runtime_dirs_of_process(node.pid),
            Vec::<std::path::PathBuf>::new(),
            "pipe directories of {} are left",
            node.name
        );
        assert_eq!(
            pool_locks_of(&node.pool),
            Vec::<std::path::PathBuf>::new(),
            "the pool lock of {} is left",
            node.name
        );
    }
    assert!(log.contains(&format!("{victim} is DOWN")), "{log}");
}
