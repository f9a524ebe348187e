//! What a pool's keep-alive policies learned, handed to the next owner of its
//! name with its containers: each function's, by name, with the keep-alive
//! policy it was learned under, as JSON left through the pool's claim
//! ([`PoolClaim`]) just before the pool lets go of its name.
//!
//! The next pool takes it as it is built, before it takes over containers,
//! and restores the policies of the functions whose keep-alive is the same;
//! the others start afresh. What it cannot read (a file broken, hostile, or
//! of another version) is logged and forgotten: it never fails a build. A
//! pool that crashed left nothing, and its next owner's policies start afresh.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::policy::Learned;
use super::scheduler::{Inner, now};
use super::spec::KeepAlive;
use crate::driver::{Driver, MAX_POLICIES_BYTES, PoolClaim};

/// The version of what is left; another one is not read.
const VERSION: u32 = 1;

/// What a pool leaves.
#[derive(Debug, Serialize, Deserialize)]
struct LeftPolicies {
    version: u32,
    functions: BTreeMap<String, LeftPolicy>,
}

/// What one function's keep-alive policy learned.
#[derive(Debug, Serialize, Deserialize)]
struct LeftPolicy {
    /// The keep-alive policy, as a spec writes it (`adaptive`).
    keep_alive: String,
    learned: Learned,
}

impl<D: Driver> Inner<D> {
    /// Leaves what the keep-alive policies of the current functions learned
    /// to the next owner of the pool's name, through `claim`.
    pub(crate) fn leave_policies(&self, claim: &D::Claim) {
        let at = now();
        let functions: BTreeMap<String, LeftPolicy> = self
            .current
            .iter()
            .filter_map(|entry| {
                let (keep_alive, learned) = entry.value().lock().learned(at)?;
                let left = LeftPolicy {
                    keep_alive: keep_alive.to_string(),
                    learned,
                };
                Some((entry.key().to_string(), left))
            })
            .collect();
        let count = functions.len();
        let mut left = serde_json::to_vec(&LeftPolicies {
            version: VERSION,
            functions,
        })
        .expect("learned policies serialize");
        if left.len() as u64 > MAX_POLICIES_BYTES {
            tracing::warn!(pool = %self.config.name, bytes = left.len(), "what the keep-alive policies learned is too large to hand over: the next owner's start afresh");
            left = serde_json::to_vec(&LeftPolicies {
                version: VERSION,
                functions: BTreeMap::new(),
            })
            .expect("nothing serializes");
        }
        match claim.leave_policies(&left) {
            Ok(()) => {
                tracing::info!(pool = %self.config.name, functions = count, "left what the keep-alive policies learned to the next owner")
            }
            Err(error) => {
                tracing::warn!(pool = %self.config.name, %error, "could not leave what the keep-alive policies learned: the next owner's start afresh")
            }
        }
    }

    /// Restores the keep-alive policies of the current functions from what
    /// an earlier owner of the pool's name left through `claim`, where each
    /// one's keep-alive policy is the same; logs what it cannot restore.
    pub(crate) fn restore_policies(&self, claim: &D::Claim) {
        let pool = &self.config.name;
        let left = match claim.take_policies() {
            Ok(Some(left)) => left,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(pool = %pool, %error, "cannot read what the keep-alive policies of the last owner learned: they start afresh");
                return;
            }
        };
        let left = match serde_json::from_slice::<LeftPolicies>(&left) {
            Ok(left) if left.version == VERSION => left,
            Ok(left) => {
                tracing::warn!(pool = %pool, version = left.version, "what the keep-alive policies of the last owner learned is of another version: they start afresh");
                return;
            }
            Err(error) => {
                tracing::warn!(pool = %pool, %error, "what the keep-alive policies of the last owner learned is corrupt: they start afresh");
                return;
            }
        };
        let at = now();
        let mut restored = 0;
        for (name, left) in left.functions {
            let Some(function) = self.current.get(name.as_str()).map(|f| f.clone()) else {
                continue;
            };
            let choice: Result<KeepAlive, String> = left.keep_alive.parse();
            let outcome =
                choice.and_then(|choice| function.lock().restore(choice, left.learned, at));
            match outcome {
                Ok(()) => restored += 1,
                Err(why) => {
                    tracing::info!(pool = %pool, function = %name, %why, "not restoring what its keep-alive policy learned: it starts afresh")
                }
            }
        }
        tracing::info!(pool = %pool, functions = restored, "restored what the keep-alive policies of the last owner learned");
    }
}
