//! Handing a pool from one `hotpool serve` to the next on this machine
//! (`hotpool serve --take-over`), with no connection refused and no warm
//! container lost.
//!
//! The owner of a pool listens on a Unix socket in the runtime directory
//! (`handover/<digest of its lock file's path>`, its user's alone). The next server,
//! refused the pool's name, asks there and gets back the listening TCP socket
//! itself (`SCM_RIGHTS`): one socket, never closed, so connections that arrive
//! while the two change places wait in its queue. The owner then stops
//! accepting, finishes its calls, lets its idle containers go
//! ([`hotpool::pool::Pool::hand_over`]) and exits, which frees the pool's
//! name; the next server claims it, takes the containers over as it builds
//! its pool, and accepts on the socket.
//!
//! A server refuses a process that started before it began to listen here:
//! that one set out to take the pool from the server before it, and lost the
//! race to this one; taking the pool from the winner would only start the
//! hand-over again.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the next server sends, and what the owner answers with the socket.
const REQUEST: &[u8] = b"hand over\n";
const REPLY: &[u8] = b"handing over\n";
/// What the owner answers a process that started before it listened.
const RACED: &[u8] = b"refused: you started before this server took the pool\n";

/// How long either side waits for the other's few bytes.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The owner's hand-over socket; removed when dropped.
pub(crate) struct HandoverListener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// When it began to listen, in clock ticks since boot (as
    /// `/proc/PID/stat` gives a process's start); `None` if unknown.
    listening_since: Option<u64>,
}

impl HandoverListener {
    /// Listens at `path` (its directory made, for its user alone). The
    /// pool's owner alone binds it, so what is there already was left by an
    /// owner that died.
    pub(crate) fn bind(path: &Path) -> io::Result<HandoverListener> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(HandoverListener {
            listener,
            path: path.to_owned(),
            listening_since: ticks_since_boot(),
        })
    }

    /// Waits for a process of this user (or root) to ask for the pool, and
    /// sends it `socket`, the listening TCP socket. Anything else that
    /// connects is sent away, and a process that started before this
    /// listener is refused.
    pub(crate) async fn requested(&self, socket: RawFd) -> io::Result<()> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let Ok(peer) = stream.peer_cred() else {
                continue;
            };
            if peer.uid() != 0 && peer.uid() != current_uid() {
                continue;
            }
            let raced = match (peer.pid().and_then(process_start), self.listening_since) {
                (Some(started), Some(listening)) => started < listening,
                // A process of another PID namespace, or no /proc: allowed.
                _ => false,
            };
            let stream = stream.into_std()?;
            let answered = tokio::task::spawn_blocking(move || answer(stream, socket, raced))
                .await
                .map_err(io::Error::other)?;
            match answered {
                Ok(()) if raced => tracing::warn!(
                    pid = peer.pid(),
                    "refused the pool to a server that started before this one took it"
                ),
                Ok(()) => return Ok(()),
                Err(error) => tracing::warn!(%error, "a hand-over request failed"),
            }
        }
    }
}

impl Drop for HandoverListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads the request on `stream` and answers it with `socket`, or refuses
/// it if `raced`.
fn answer(mut stream: UnixStream, socket: RawFd, raced: bool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut request = [0u8; REQUEST.len()];
    stream.read_exact(&mut request)?;
    if request != REQUEST {
        return Err(io::Error::other("not a hand-over request"));
    }
    if raced {
        return stream.write_all(RACED);
    }
    send_with_fd(&stream, REPLY, socket)
}

/// Asks the owner listening at `path` to hand the pool over; returns the
/// listening socket it sends.
pub(crate) async fn request(path: &Path) -> io::Result<std::net::TcpListener> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = UnixStream::connect(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
        stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
        stream.write_all(REQUEST)?;
        let (reply, socket) = receive_with_fd(&stream, RACED.len().max(REPLY.len()))?;
        if reply != REPLY {
            let said = String::from_utf8_lossy(&reply);
            return Err(io::Error::other(match said.trim() {
                "" => "the owner closed the request unanswered".to_owned(),
                said => format!("the owner answered {said:?}"),
            }));
        }
        let socket = socket.ok_or_else(|| io::Error::other("the owner sent no socket"))?;
        let listener = std::net::TcpListener::from(socket);
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .await
    .map_err(io::Error::other)?
}

/// Sends `bytes` on `stream` with a copy of descriptor `fd` attached.
fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: RawFd) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the
    // call, and the control buffer is CMSG_SPACE bytes for one descriptor.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = iov.as_ptr() as *mut libc::iovec;
        message.msg_iovlen = iov.len();
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
        if libc::sendmsg(stream.as_raw_fd(), &message, 0) != bytes.len() as isize {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives `length` bytes from `stream`, and the descriptor sent with them.
fn receive_with_fd(stream: &UnixStream, length: usize) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut bytes = vec![0u8; length];
    let mut iov = [IoSliceMut::new(&mut bytes)];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: as in `send_with_fd`; a descriptor received is owned here at once.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = iov.as_mut_ptr().cast();
        message.msg_iovlen = iov.len();
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space;
        let received = libc::recvmsg(stream.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC);
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        bytes.truncate(received as usize);
        let header = libc::CMSG_FIRSTHDR(&message);
        let fd = (!header.is_null()
            && (*header).cmsg_level == libc::SOL_SOCKET
            && (*header).cmsg_type == libc::SCM_RIGHTS)
            .then(|| {
                OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(header).cast()))
            });
        Ok((bytes, fd))
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`).
fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Clock ticks since boot now, on the clock of [`process_start`].
fn ticks_since_boot() -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then_some((seconds * per_second as f64) as u64)
}

fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_next_server_gets_the_owners_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.handover");
        let mut owner = HandoverListener::bind(&path).unwrap();
        // This test process asks, and it started before the owner listened.
        owner.listening_since = Some(0);
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let (handed, received) = tokio::join!(owner.requested(socket.as_raw_fd()), request(&path));
        handed.unwrap();
        let received = received.unwrap();
        assert_eq!(received.local_addr().unwrap(), address, "the same socket");
        // A connection made while both hold it waits in its one queue, and
        // the next server accepts it after the owner let go of its copy.
        let client = std::net::TcpStream::connect(address).unwrap();
        drop(socket);
        let received = tokio::net::TcpListener::from_std(received).unwrap();
        let (accepted, _) = received.accept().await.unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
        drop(owner);
        assert!(!path.exists(), "the owner's socket goes with it");
    }

    #[tokio::test]
    async fn a_process_started_before_the_owner_listened_is_refused_and_the_owner_waits_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.handover");
        let mut owner = HandoverListener::bind(&path).unwrap();
        // The owner began to listen a clock tick after this process started
        // (here the two may fall in one tick, which counts as not before).
        let started = process_start(std::process::id() as i32).expect("this process's start");
        owner.listening_since = Some(started + 1);
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let waiting = owner.requested(socket.as_raw_fd());
        tokio::pin!(waiting);
        let refused = tokio::select! {
            refused = request(&path) => refused,
            _ = &mut waiting => panic!("the owner handed over to a process that raced"),
        };
        let error = refused.unwrap_err().to_string();
        assert!(error.contains("started before this server"), "{error}");
        // The owner still waits for a request it may answer.
        let still = tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting).await;
        assert!(still.is_err(), "the owner stopped waiting: {still:?}");
    }

    #[tokio::test]
    async fn a_request_without_an_owner_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let error = request(&dir.path().join("none.handover"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("none.handover"), "{error}");
    }
}
