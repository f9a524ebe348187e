//! Which processes of this host are the engine's, for the density bench's idle
//! CPU: found by the sockets they serve, not by their names alone, since a host
//! may run more than one containerd (dockerd runs its own beside a node's).
//!
//! The engine's daemons are the process listening on its API socket and, for
//! Docker, the `containerd` dockerd runs as its child. Its shims are the
//! `containerd-shim` processes started with `-address` naming a socket one of
//! those daemons listens on. Where the socket's listener cannot be found (an
//! engine in another PID namespace, or over TCP), every process of the
//! engine's names is counted, as before this module.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The engine's processes on this host.
pub(crate) struct EngineProcesses {
    pub(crate) daemons: Vec<u32>,
    pub(crate) shims: Vec<u32>,
}

/// The `comm` of a shim (`containerd-shim-runc-v2`, cut to the kernel's 15 bytes).
const SHIM: &str = "containerd-shim";

/// The processes of the engine `engine` (`docker` or `containerd`) serving
/// `socket` (`None`: the engine's default).
pub(crate) fn of(engine: &str, socket: Option<&Path>) -> EngineProcesses {
    let socket = socket.map_or_else(|| default_socket(engine), Path::to_path_buf);
    let bound = unix_sockets();
    let Some(listener) = processes_named(&["dockerd", "containerd"])
        .into_iter()
        .find(|pid| serves(*pid, &socket, &bound))
    else {
        return by_names(engine);
    };
    let mut daemons = vec![listener];
    if engine == "docker" {
        daemons.extend(
            processes_named(&["containerd"])
                .into_iter()
                .filter(|pid| parent_of(*pid) == Some(listener)),
        );
    }
    let addresses: HashSet<PathBuf> = daemons
        .iter()
        .flat_map(|pid| socket_inodes(*pid))
        .filter_map(|inode| bound.get(&inode).cloned())
        .map(|path| canonical(&path))
        .collect();
    let shims = processes_named(&[SHIM])
        .into_iter()
        .filter(|pid| shim_address(*pid).is_some_and(|a| addresses.contains(&canonical(&a))))
        .collect();
    EngineProcesses { daemons, shims }
}

/// Every process of the engine's names: its daemons' and every shim.
fn by_names(engine: &str) -> EngineProcesses {
    let daemons: &[&str] = match engine {
        "docker" => &["dockerd", "containerd"],
        _ => &["containerd"],
    };
    EngineProcesses {
        daemons: processes_named(daemons),
        shims: processes_named(&[SHIM]),
    }
}

fn default_socket(engine: &str) -> PathBuf {
    match engine {
        "docker" => std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock")),
        _ => PathBuf::from("/run/containerd/containerd.sock"),
    }
}

/// `path` with its directories resolved (`/var/run` is `/run`), or as given.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The unix sockets of this host bound to a path, by inode.
fn unix_sockets() -> HashMap<u64, PathBuf> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(6)?.parse().ok()?;
            let path = fields.get(7).filter(|p| p.starts_with('/'))?;
            Some((inode, PathBuf::from(path)))
        })
        .collect()
}

/// Whether process `pid` holds a socket bound to `socket`.
fn serves(pid: u32, socket: &Path, bound: &HashMap<u64, PathBuf>) -> bool {
    let socket = canonical(socket);
    socket_inodes(pid)
        .into_iter()
        .filter_map(|inode| bound.get(&inode))
        .any(|path| canonical(path) == socket)
}

/// The inodes of the sockets process `pid` has open.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The socket a shim reports to: its `-address` argument.
fn shim_address(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|b| *b == 0);
    args.find(|arg| *arg == b"-address")?;
    let address = std::str::from_utf8(args.next()?).ok()?;
    Some(PathBuf::from(
        address.strip_prefix("unix://").unwrap_or(address),
    ))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) end with ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The processes on this host whose `comm` is one of `names`.
fn processes_named(names: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| names.contains(&comm.trim()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_by_its_socket_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let bound = unix_sockets();
        let me = std::process::id();
        assert!(
            serves(me, &path, &bound),
            "this process listens on {path:?}"
        );
        assert!(!serves(me, &dir.path().join("other.sock"), &bound));
    }

    #[test]
    fn the_parent_of_this_process_is_read() {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        assert_eq!(parent_of(std::process::id()), Some(parent));
    }
}
