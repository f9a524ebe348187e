//! A unix-socket proxy in front of the Docker engine's socket that can be
//! wedged, as a deadlocked dockerd is: it then forwards no byte more, holds
//! every connection open, and accepts new ones without ever answering them.
//! Unwedged, it forwards again (what it held, then the rest). Tests point
//! `DOCKER_HOST` at it, so the real engine, which other tests share, is
//! never frozen.
//!
//! Plain threads and blocking sockets: one per direction of each connection.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The engine's socket the proxy forwards to.
const ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// Whether bytes may pass; passing waits while it is wedged.
#[derive(Default)]
struct Gate {
    wedged: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, wedged: bool) {
        *self.wedged.lock().unwrap() = wedged;
        self.changed.notify_all();
    }

    /// Returns once the gate is open.
    fn pass(&self) {
        let wedged = self.wedged.lock().unwrap();
        drop(self.changed.wait_while(wedged, |wedged| *wedged).unwrap());
    }
}

/// The proxy; dropping it unwedges it and stops taking connections.
pub struct WedgeProxy {
    socket: PathBuf,
    gate: Arc<Gate>,
    stopped: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl WedgeProxy {
    /// Listens on a socket of its own, forwarding to the engine's.
    pub fn start() -> WedgeProxy {
        let dir = tempfile::tempdir().expect("a directory for the proxy's socket");
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the proxy's socket");
        let gate = Arc::new(Gate::default());
        let stopped = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let (gate, stopped) = (gate.clone(), stopped.clone());
            move || {
                for client in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(client) = client {
                        let gate = gate.clone();
                        std::thread::spawn(move || relay(client, &gate));
                    }
                }
            }
        });
        WedgeProxy {
            socket,
            gate,
            stopped,
            _dir: dir,
        }
    }

    /// `DOCKER_HOST` for a client of the proxy.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Stops forwarding: every request, sent or to come, goes unanswered.
    pub fn wedge(&self) {
        self.gate.set(true);
    }

    /// Forwards again.
    pub fn unwedge(&self) {
        self.gate.set(false);
    }
}

impl Drop for WedgeProxy {
    fn drop(&mut self) {
        self.unwedge();
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees it is stopped.
        let _ = UnixStream::connect(&self.socket);
    }
}

/// Connects `client` to the engine (once the gate is open) and forwards both
/// ways until either side closes.
fn relay(client: UnixStream, gate: &Arc<Gate>) {
    gate.pass();
    let Ok(engine) = UnixStream::connect(ENGINE_SOCKET) else {
        return;
    };
    let (Ok(client_reader), Ok(engine_writer)) = (client.try_clone(), engine.try_clone()) else {
        return;
    };
    let upstream = std::thread::spawn({
        let gate = gate.clone();
        move || forward(client_reader, engine_writer, &gate)
    });
    forward(engine, client, gate);
    let _ = upstream.join();
}

/// Copies `from` into `to`, each chunk once the gate is open; at the end of
/// `from`, closes `to` for writing.
fn forward(mut from: UnixStream, mut to: UnixStream, gate: &Gate) {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        gate.pass();
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
