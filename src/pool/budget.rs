//! The pool's memory budget: the sum of the memory limits of live containers.
//!
//! Starting a container takes a [`Reservation`] of its memory limit; the
//! reservation is given back when it is dropped, which is when the container has
//! been removed. Whoever waits for memory is woken then.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// How much memory live containers may reserve in all.
pub(crate) struct MemoryBudget {
    budget: u64,
    reserved: AtomicU64,
    freed: Notify,
}

impl MemoryBudget {
    pub(crate) fn new(budget: u64) -> Arc<MemoryBudget> {
        metrics::gauge!(crate::metrics::MEMORY_BUDGET_BYTES).set(budget as f64);
        metrics::gauge!(crate::metrics::MEMORY_RESERVED_BYTES).set(0.0);
        Arc::new(MemoryBudget {
            budget,
            reserved: AtomicU64::new(0),
            freed: Notify::new(),
        })
    }

    /// The budget in bytes.
    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes reserved by live containers now.
    pub(crate) fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Reserves `amount` if it fits in what is left.
    pub(crate) fn try_reserve(self: &Arc<Self>, amount: u64) -> Option<Reservation> {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                reserved
                    .checked_add(amount)
                    .filter(|total| *total <= self.budget)
            })
            .ok()?;
        self.publish();
        Some(Reservation {
            budget: self.clone(),
            amount,
        })
    }

    /// Resolves the next time memory is given back. The future must be enabled
    /// (pinned and [`Notified::enable`]d) before the budget is checked, or a
    /// release in between is missed.
    pub(crate) fn freed(&self) -> Notified<'_> {
        self.freed.notified()
    }

    fn publish(&self) {
        metrics::gauge!(crate::metrics::MEMORY_RESERVED_BYTES).set(self.reserved() as f64);
    }
}

/// Memory held for one container; given back on drop.
pub(crate) struct Reservation {
    budget: Arc<MemoryBudget>,
    amount: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .reserved
            .fetch_sub(self.amount, Ordering::AcqRel);
        self.budget.publish();
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn reservations_fit_the_budget_and_come_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_reserve(60).expect("fits");
        assert!(budget.try_reserve(41).is_none(), "would exceed the budget");
        let b = budget.try_reserve(40).expect("fits exactly");
        assert_eq!(budget.reserved(), 100);
        drop(a);
        assert_eq!(budget.reserved(), 40);
        drop(b);
        assert_eq!(budget.reserved(), 0);
    }

    #[test]
    fn a_release_between_the_check_and_the_wait_is_not_missed() {
        let budget = MemoryBudget::new(100);
        let held = budget.try_reserve(100).expect("fits");
        let freed = budget.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        assert!(budget.try_reserve(1).is_none(), "the budget is full");
        // Memory comes back after the check and before anyone awaits.
        drop(held);
        assert!(
            freed.now_or_never().is_some(),
            "the waiter must see the release that happened before it awaited"
        );
    }
}
