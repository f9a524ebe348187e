//! Unique ids for calls and containers.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A new id: 16 hex digits, never repeated within this process and unlikely to
/// repeat across processes: a counter, offset by a key drawn at random once per
/// process, through a mixing function that is a bijection (so distinct counts
/// give distinct ids). No clock read and no fresh key per id: ids are made on
/// every call.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEY: OnceLock<u64> = OnceLock::new();
    let key = *KEY.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", mix(count.wrapping_add(key)))
}

/// splitmix64's finalizer: each step (xor-shift, multiply by an odd number) is
/// invertible, so the whole is a bijection on `u64`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 16));
    }
}
