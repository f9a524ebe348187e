//! A cluster of `hotpool serve` nodes behind HAProxy, started and stopped by
//! `scripts/cluster` (the shipped HAProxy config with its node list filled in,
//! and a round-robin copy over nodes of its own), and read back from the
//! `cluster.env` it writes. Dropping a [`Cluster`] stops it, so a test that
//! fails half-way leaves no node, HAProxy or container behind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::http;
use super::server::eventually;
use super::{free_port, repo_root};

/// One `hotpool serve` of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its server name in HAProxy, which answers name in `Hotpool-Node`.
    pub name: String,
    /// Its `[pool] name`, which labels its containers.
    pub pool: String,
    pub pid: u32,
    pub addr: SocketAddr,
    /// The HAProxy backend it is in: `hotpool` (hashing) or `hotpool-round-robin`.
    pub backend: String,
}

/// A running cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub haproxy_pid: u32,
    /// HAProxy with the shipped config: consistent hashing.
    pub hash: SocketAddr,
    /// The same config balancing round robin, over nodes of its own.
    pub round_robin: SocketAddr,
    stats: SocketAddr,
    stopped: bool,
}

impl Cluster {
    /// Runs `scripts/cluster start` with `functions` (`[[function]]` tables) on
    /// every node, pools named `<name>-<pid>-<node>`, each node the hotpool
    /// built for this test run.
    pub fn start(name: &str, functions: &str) -> Cluster {
        assert!(
            Command::new("haproxy").arg("-v").output().is_ok(),
            "the cluster tests need HAProxy (Debian's haproxy package); \
             scripts/prerequisites installs it"
        );
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let functions_file = dir.path().join("functions.toml");
        std::fs::write(&functions_file, functions).expect("write the functions");
        let state = dir.path().join("cluster");
        let (port, round_robin_port, stats_port) = (free_port(), free_port(), free_port());
        let output = Command::new(repo_root().join("scripts/cluster"))
            .arg("start")
            .arg(&state)
            .arg(&functions_file)
            .env("HOTPOOL", env!("CARGO_BIN_EXE_hotpool"))
            .env("CLUSTER_NAME", format!("{name}-{}", std::process::id()))
            .env("CLUSTER_PORT", port.to_string())
            .env("CLUSTER_ROUND_ROBIN_PORT", round_robin_port.to_string())
            .env("CLUSTER_STATS_PORT", stats_port.to_string())
            .output()
            .expect("run scripts/cluster start");
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            haproxy_pid: 0,
            hash: loopback(port),
            round_robin: loopback(round_robin_port),
            stats: loopback(stats_port),
            stopped: false,
        };
        assert!(
            output.status.success(),
            "scripts/cluster start failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.read_env();
        cluster
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("cluster")
    }

    fn read_env(&mut self) {
        let env = std::fs::read_to_string(self.state().join("cluster.env"))
            .expect("scripts/cluster writes cluster.env");
        for line in env.lines() {
            if let Some(fields) = line.strip_prefix("node ") {
                let field = |key: &str| {
                    fields
                        .split(' ')
                        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                        .to_owned()
                };
                self.nodes.push(Node {
                    name: field("name"),
                    pool: field("pool"),
                    pid: field("pid").parse().expect("a pid"),
                    addr: field("addr").parse().expect("an address"),
                    backend: field("backend"),
                });
            } else if let Some(pid) = line.strip_prefix("haproxy_pid=") {
                self.haproxy_pid = pid.parse().expect("a pid");
            }
        }
        assert_eq!(self.nodes.len(), 6, "three nodes per backend: {env}");
    }

    /// The nodes behind the backend `backend`.
    pub fn nodes_of(&self, backend: &str) -> Vec<&Node> {
        self.nodes.iter().filter(|n| n.backend == backend).collect()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// HAProxy's view of a server: `UP`, `DOWN`, ... (its stats page, CSV).
    pub fn server_status(&self, backend: &str, server: &str) -> String {
        self.stats_row(backend, server)[17].clone()
    }

    /// Waits until no call is in flight in `backend`, as HAProxy counts them
    /// (a call's stream may outlive its answer by a moment). HAProxy bounds
    /// each node's load against the calls in flight, so a call sent while
    /// another is still counted may spill to the next node of its ring; sent
    /// when none is, it goes where its hash says.
    pub fn wait_until_idle(&self, backend: &str) {
        eventually(&format!("nothing is in flight in {backend}"), || {
            // The current sessions of the backend and of each of its servers.
            self.stats_rows()
                .iter()
                .filter(|row| row[0] == backend)
                .all(|row| row[4] == "0")
        });
    }

    fn stats_rows(&self) -> Vec<Vec<String>> {
        let page = http::get(self.stats, "/stats;csv").expect("HAProxy's stats page");
        page.text()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split(',').map(str::to_owned).collect::<Vec<_>>())
            .filter(|row| row.len() > 17)
            .collect()
    }

    fn stats_row(&self, backend: &str, server: &str) -> Vec<String> {
        self.stats_rows()
            .into_iter()
            .find(|row| row[0] == backend && row[1] == server)
            .unwrap_or_else(|| panic!("{backend}/{server} is not in HAProxy's stats"))
    }

    /// How many times HAProxy has retried a call of `backend` (`wretr`) and
    /// sent it to another node (`wredis`), from its stats.
    pub fn retries(&self, backend: &str) -> (u64, u64) {
        let row = self.stats_row(backend, "BACKEND");
        let count = |column: usize| row[column].parse().unwrap_or(0);
        (count(15), count(16))
    }

    /// Waits until HAProxy's health checks put `server` in `status`.
    pub fn wait_for_status(&self, backend: &str, server: &str, status: &str) {
        eventually(&format!("HAProxy sees {server} {status}"), || {
            self.server_status(backend, server).starts_with(status)
        });
    }

    /// HAProxy's log so far.
    pub fn haproxy_log(&self) -> String {
        std::fs::read_to_string(self.state().join("haproxy.log")).unwrap_or_default()
    }

    /// Runs `scripts/cluster stop` and asserts that it succeeded.
    pub fn stop(mut self) {
        self.stopped = true;
        let output = self.run_stop();
        assert!(
            output.status.success(),
            "scripts/cluster stop failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn run_stop(&self) -> std::process::Output {
        Command::new(repo_root().join("scripts/cluster"))
            .arg("stop")
            .arg(self.state())
            .output()
            .expect("run scripts/cluster stop")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.run_stop();
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether the process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).is_ok_and(
        |status| {
            !status
                .lines()
                .any(|line| line.starts_with("State:") && line.contains('Z'))
        },
    )
}
