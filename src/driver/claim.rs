//! One owner per pool name on one engine: what [`super::Driver::claim_pool`]
//! fails with, and how it names the owner it found.
//!
//! A pool removes whatever containers carry its name's label when it starts, so
//! two live pools of one name on one engine would remove each other's
//! containers. A driver therefore gives a pool name to one claim at a time, and
//! a pool claims its name before it touches any container.
//!
//! A claim also carries what a pool hands the next owner of its name besides
//! its containers ([`PoolClaim`]): what its keep-alive policies learned.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The most bytes of learned policies a claim takes from an earlier owner:
/// more is refused unread.
pub const MAX_POLICIES_BYTES: u64 = 32 << 20;

/// A claimed pool name ([`super::Driver::claim_pool`]), held until dropped.
/// Through it a pool leaves what its keep-alive policies learned to the next
/// owner of the name as it hands over, and that owner takes it; a claim that
/// keeps nothing (the default) makes every next owner's policies start afresh.
pub trait PoolClaim: Send + Sync + 'static {
    /// Keeps `policies` (opaque to the claim) for the next owner of the name,
    /// replacing any kept before. Called by the holder just before it lets go.
    fn leave_policies(&self, policies: &[u8]) -> io::Result<()> {
        let _ = policies;
        Ok(())
    }

    /// Takes what an earlier owner left ([`PoolClaim::leave_policies`]), so it
    /// is kept no more: `None` if nothing was. More than
    /// [`MAX_POLICIES_BYTES`] fails, and is gone all the same.
    fn take_policies(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// Why a pool name could not be claimed. Nothing was touched either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// A live owner holds the name on this engine: another process, or another
    /// pool of this one.
    #[error("pool {pool:?} on this engine is owned by {owner}")]
    Owned {
        /// The pool name.
        pool: String,
        /// Who holds it, as far as it said.
        owner: PoolOwner,
    },
    /// The claim could neither be taken nor tested: its lock file, or the
    /// engine's identity, could not be read or made.
    #[error("cannot claim pool {pool:?}: {error}")]
    Io {
        /// The pool name.
        pool: String,
        /// What failed.
        error: io::Error,
    },
}

/// The live owner of a pool name, as it described itself when it claimed it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolOwner {
    /// Its process id, as its own PID namespace numbers it; `None` if it has not
    /// said yet (it is just starting).
    pub pid: Option<u32>,
    /// Whether it runs in this process's PID namespace, so that `pid` names a
    /// process here too.
    pub same_pid_namespace: bool,
    /// Its host name (a container's own, if it runs in one), if it said.
    pub hostname: Option<String>,
    /// Where it takes a request to hand the pool over (`hotpool serve
    /// --take-over`), if it may.
    pub handover: Option<PathBuf>,
}

impl PoolOwner {
    /// This process.
    pub fn this_process() -> PoolOwner {
        PoolOwner {
            pid: Some(std::process::id()),
            same_pid_namespace: true,
            hostname: this_hostname(),
            handover: None,
        }
    }
}

impl fmt::Display for PoolOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a running hotpool")?;
        match (self.same_pid_namespace, self.pid) {
            (true, Some(pid)) => write!(f, " (pid {pid})"),
            (true, None) => f.write_str(" (pid not known yet)"),
            (false, pid) => {
                f.write_str(" in another PID namespace")?;
                let host = self.hostname.as_deref().map(|host| format!("host {host}"));
                let pid = pid.map(|pid| format!("pid {pid} there"));
                let known: Vec<String> = host.into_iter().chain(pid).collect();
                if !known.is_empty() {
                    write!(f, " ({})", known.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// This process's host name (its UTS namespace's), if it can be read.
pub(crate) fn this_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_named_by_pid_only_where_its_pid_means_something_here() {
        let here = PoolOwner {
            pid: Some(1234),
            same_pid_namespace: true,
            hostname: Some("node-1".into()),
            handover: None,
        };
        let error = ClaimError::Owned {
            pool: "serve".into(),
            owner: here.clone(),
        };
        assert_eq!(
            error.to_string(),
            "pool \"serve\" on this engine is owned by a running hotpool (pid 1234)"
        );
        let elsewhere = PoolOwner {
            same_pid_namespace: false,
            pid: Some(7),
            ..here.clone()
        };
        assert_eq!(
            elsewhere.to_string(),
            "a running hotpool in another PID namespace (host node-1, pid 7 there)"
        );
        let starting = PoolOwner { pid: None, ..here };
        assert_eq!(
            starting.to_string(),
            "a running hotpool (pid not known yet)"
        );
    }
}
