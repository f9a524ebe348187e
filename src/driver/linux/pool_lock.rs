//! The claim of a pool name on this host: a lock file per engine and pool name
//! in the runtime directory, `pools/<engine>/<pool>.lock`, held locked
//! (`flock`) by its owner while it lives.
//!
//! The lock alone decides, never a pid: the kernel lets it go when its owner
//! dies, however it dies (`kill -9` included), and it holds across PID
//! namespaces (a hotpool in a container of its own, sharing the runtime
//! directory) and within one process (each claim opens the file anew, and a
//! `flock` belongs to one open file). Having taken it, the owner writes who it
//! is into the file (its pid, its PID namespace, its host name), so that one
//! turned away can name it. The owner removes the file as it lets go (one that
//! died leaves it, unlocked, to the next); a claim that finds it locked a file
//! removed meanwhile opens the name again.
//!
//! Engine-neutral: the caller names the engine (the Docker driver, by the
//! engine's ID), so two engines on one host each have their own names.
//!
//! What a pool's keep-alive policies learned goes to the next owner in a file
//! beside the lock, `<pool>.lock.policy` (mode 0600): written whole as the
//! owner hands over, before it lets go, and removed by the next owner as it
//! reads it ([`PoolClaim`]).

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::driver::claim::{self, ClaimError, MAX_POLICIES_BYTES, PoolClaim, PoolOwner};

/// A pool name claimed on one engine: held while this lives.
#[derive(Debug)]
pub struct PoolLock {
    /// Open, and locked, while this lives.
    _file: File,
    path: PathBuf,
}

impl PoolLock {
    /// Claims pool `pool` of engine `engine`, its lock file under runtime
    /// directory `root` (made if need be). Fails with [`ClaimError::Owned`] if
    /// a live owner holds it; then nothing was written.
    pub(crate) fn take(root: &Path, engine: &str, pool: &str) -> Result<PoolLock, ClaimError> {
        let failed = |error: io::Error| ClaimError::Io {
            pool: pool.to_owned(),
            error,
        };
        let path = lock_path(root, engine, pool);
        let dir = path.parent().expect("a lock file is in a directory");
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| failed(with_path(dir, e)))?;
        for _ in 0..OPEN_ATTEMPTS {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(|e| failed(with_path(&path, e)))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut record = String::new();
                    // An owner that cannot be read is still an owner.
                    let _ = file.read_to_string(&mut record);
                    let mut owner = owner_from(&record);
                    owner.handover = Some(handover_path(&path));
                    return Err(ClaimError::Owned {
                        pool: pool.to_owned(),
                        owner,
                    });
                }
                Err(TryLockError::Error(e)) => return Err(failed(with_path(&path, e))),
            }
            if !still_at(&file, &path) {
                // Its owner removed it as it let go: the name has a new file.
                continue;
            }
            let record = own_record();
            file.set_len(0)
                .and_then(|()| file.write_all_at(record.as_bytes(), 0))
                .map_err(|e| failed(with_path(&path, e)))?;
            return Ok(PoolLock { _file: file, path });
        }
        Err(failed(io::Error::other(format!(
            "{}: replaced {OPEN_ATTEMPTS} times while being locked",
            path.display()
        ))))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the owner takes a request to hand the pool over: in the runtime
    /// directory's `handover/`, named by a digest of the lock file's path, as
    /// a socket's path must be short.
    pub fn handover_path(&self) -> PathBuf {
        handover_path(&self.path)
    }
}

/// The hand-over socket of the pool whose lock file is `lock`
/// (`ROOT/pools/ENGINE/POOL.lock`). An owner killed outright leaves it
/// behind, as it leaves its lock file; the pool's next owner binds over it.
pub fn handover_path(lock: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let root = lock.ancestors().nth(3).unwrap_or_else(|| Path::new("/"));
    let digest = Sha256::digest(lock.as_os_str().as_encoded_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    root.join("handover").join(name)
}

impl PoolClaim for PoolLock {
    /// Writes `<lock file>.policy`, whole or not at all: into a temporary file
    /// renamed over it.
    fn leave_policies(&self, policies: &[u8]) -> io::Result<()> {
        let path = policies_path(&self.path);
        let temporary = PathBuf::from(format!("{}.tmp", path.display()));
        let _ = std::fs::remove_file(&temporary);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| with_path(&temporary, e))?;
        file.write_all(policies)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                with_path(&path, e)
            })
    }

    /// Reads and removes `<lock file>.policy`; one that is no regular file
    /// (a link, a pipe) is not read.
    fn take_policies(&self) -> io::Result<Option<Vec<u8>>> {
        let path = policies_path(&self.path);
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        if matches!(&opened, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            return Ok(None);
        }
        // Whatever it holds, it is read once.
        let _ = std::fs::remove_file(&path);
        let read = || {
            let file = opened?;
            if !file.metadata()?.is_file() {
                return Err(io::Error::other("not a regular file"));
            }
            let mut policies = Vec::new();
            file.take(MAX_POLICIES_BYTES + 1)
                .read_to_end(&mut policies)?;
            if policies.len() as u64 > MAX_POLICIES_BYTES {
                return Err(io::Error::other(format!(
                    "larger than {MAX_POLICIES_BYTES} bytes"
                )));
            }
            Ok(Some(policies))
        };
        read().map_err(|e| with_path(&path, e))
    }
}

/// Where the policies left to the next owner of the pool locked by `lock` are.
fn policies_path(lock: &Path) -> PathBuf {
    PathBuf::from(format!("{}.policy", lock.display()))
}

impl Drop for PoolLock {
    /// Removes the file while still holding its lock; the lock goes with the
    /// file, just after.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How often a claim opens the name again when the file it locked was removed
/// meanwhile (each time, another owner came and went).
const OPEN_ATTEMPTS: usize = 16;

/// Whether `path` still names `file`.
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
        _ => false,
    }
}

/// `pools/<engine>/<pool>.lock` under `root`, each name encoded.
fn lock_path(root: &Path, engine: &str, pool: &str) -> PathBuf {
    root.join("pools")
        .join(file_name(engine))
        .join(format!("{}.lock", file_name(pool)))
}

/// `name` as one file name, one name to one file: letters, digits, `-` and
/// `_` as they are, every other byte as `%XX`.
fn file_name(name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// What the owner writes: one `key value` line each.
fn own_record() -> String {
    let mut record = format!("pid {}\n", std::process::id());
    if let Some(namespace) = pid_namespace() {
        record.push_str(&format!("pid_namespace {namespace}\n"));
    }
    if let Some(host) = claim::this_hostname() {
        record.push_str(&format!("hostname {host}\n"));
    }
    record
}

/// The owner a record describes, as seen from this process.
fn owner_from(record: &str) -> PoolOwner {
    let field = |key: &str| {
        record.lines().find_map(|line| {
            let (k, value) = line.split_once(' ')?;
            (k == key).then(|| value.to_owned())
        })
    };
    let namespace = field("pid_namespace");
    PoolOwner {
        pid: field("pid").and_then(|pid| pid.parse().ok()),
        same_pid_namespace: namespace.is_some() && namespace == pid_namespace(),
        hostname: field("hostname"),
        handover: None,
    }
}

/// This process's PID namespace, as `/proc/self/ns/pid` names it
/// (`pid:[4026531836]`).
fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(link.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_and_names_the_owner_until_the_first_goes() {
        let root = tempfile::tempdir().unwrap();
        let first = PoolLock::take(root.path(), "engine-a", "serve").unwrap();
        let record = std::fs::read_to_string(first.path()).unwrap();
        assert!(
            record.starts_with(&format!("pid {}\n", std::process::id())),
            "{record}"
        );
        match PoolLock::take(root.path(), "engine-a", "serve") {
            Err(ClaimError::Owned { pool, owner }) => {
                assert_eq!(pool, "serve");
                assert_eq!(owner.pid, Some(std::process::id()));
                assert!(owner.same_pid_namespace, "{owner:?}");
            }
            other => panic!("a second claim of a held name: {other:?}"),
        }
        // Another name, or the same name on another engine, is free.
        let other_pool = PoolLock::take(root.path(), "engine-a", "bench").unwrap();
        let other_engine = PoolLock::take(root.path(), "engine-b", "serve").unwrap();
        drop((other_pool, other_engine));
        let path = first.path().to_owned();
        drop(first);
        assert!(!path.exists(), "the owner removes its file as it lets go");
        let again = PoolLock::take(root.path(), "engine-a", "serve").unwrap();
        assert!(again.path().exists());
    }

    #[test]
    fn a_lock_on_a_file_removed_meanwhile_is_no_claim() {
        let root = tempfile::tempdir().unwrap();
        let path = lock_path(root.path(), "engine", "serve");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A claim that opened the file just before its owner removed it and
        // let go: locking it now takes nothing.
        let opened_before = File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        opened_before.try_lock().unwrap();
        assert!(!still_at(&opened_before, &path));
        let claim = PoolLock::take(root.path(), "engine", "serve").unwrap();
        assert!(still_at(&claim._file, &path));
        assert!(matches!(
            PoolLock::take(root.path(), "engine", "serve"),
            Err(ClaimError::Owned { .. })
        ));
    }

    #[test]
    fn a_held_lock_decides_whatever_its_record_says() {
        let root = tempfile::tempdir().unwrap();
        let path = lock_path(root.path(), "engine", "serve");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // An owner in another PID namespace, as a hotpool in a container of
        // its own writes it; no pid this large runs here.
        std::fs::write(
            &path,
            format!("pid {}\npid_namespace pid:[1]\nhostname box\n", u32::MAX),
        )
        .unwrap();
        let held = File::open(&path).unwrap();
        held.lock().unwrap();
        match PoolLock::take(root.path(), "engine", "serve") {
            Err(ClaimError::Owned { owner, .. }) => {
                assert!(!owner.same_pid_namespace);
                assert_eq!(owner.hostname.as_deref(), Some("box"));
                assert_eq!(
                    owner.to_string(),
                    format!(
                        "a running hotpool in another PID namespace (host box, pid {} there)",
                        u32::MAX
                    )
                );
            }
            other => panic!("a held lock: {other:?}"),
        }
        // Its owner gone (without removing the file, as a crash leaves it),
        // the stale record does not matter.
        drop(held);
        let taken = PoolLock::take(root.path(), "engine", "serve").unwrap();
        let record = std::fs::read_to_string(taken.path()).unwrap();
        assert!(!record.contains("hostname box"), "{record}");
    }

    #[test]
    fn names_map_to_one_file_each() {
        assert_eq!(file_name("serve-1_a"), "serve-1_a");
        assert_eq!(file_name("a/b"), "a%2Fb");
        assert_eq!(file_name(".."), "%2E%2E");
        assert_eq!(file_name("J6XR:GSSN"), "J6XR%3AGSSN");
        assert_ne!(file_name("a%2Fb"), file_name("a/b"));
    }

    #[test]
    fn policies_left_beside_the_lock_are_taken_once_by_the_next_claim() {
        let root = tempfile::tempdir().unwrap();
        let first = PoolLock::take(root.path(), "engine", "serve").unwrap();
        assert_eq!(first.take_policies().unwrap(), None, "nothing left yet");
        first.leave_policies(b"old").unwrap();
        first.leave_policies(b"learned").unwrap();
        let path = policies_path(first.path());
        assert_eq!(path.file_name().unwrap(), "serve.lock.policy");
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(first);
        let next = PoolLock::take(root.path(), "engine", "serve").unwrap();
        assert_eq!(
            next.take_policies().unwrap().as_deref(),
            Some(&b"learned"[..])
        );
        assert!(!path.exists(), "removed as it is read");
        assert_eq!(next.take_policies().unwrap(), None);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["serve.lock"], "no temporary file stays");
    }

    #[test]
    fn policies_too_large_or_not_in_a_file_are_refused_unread_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let claim = PoolLock::take(root.path(), "engine", "serve").unwrap();
        let path = policies_path(claim.path());
        let large = File::create(&path).unwrap();
        large.set_len(MAX_POLICIES_BYTES + 1).unwrap();
        let error = claim.take_policies().unwrap_err();
        assert!(error.to_string().contains("larger than"), "{error}");
        assert!(!path.exists());
        // A pipe nobody writes to: opening or reading it would wait forever.
        let fifo = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let error = claim.take_policies().unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        assert!(!path.exists());
        std::os::unix::fs::symlink(claim.path(), &path).unwrap();
        assert!(claim.take_policies().is_err(), "a link is not followed");
        assert!(!path.exists() && claim.path().exists());
    }
}
