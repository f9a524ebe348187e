//! A hot container lent to one call, and the way it goes back.
//!
//! [`CheckedOut`] is what a waiting call receives. It knows the scheduler only as
//! a [`Lender`], so this module depends on the container alone.

use std::sync::Arc;

use super::container::{EvictionReason, Slot};
use crate::driver::Driver;

/// Where lent containers go back: the scheduler.
pub(crate) trait Lender<D: Driver>: Send + Sync {
    /// Takes back a container whose call ended cleanly, or that no call used.
    fn check_in(&self, slot: Slot<D>);

    /// Takes back a container that must go, for `reason`.
    fn evict(&self, slot: Slot<D>, reason: EvictionReason);
}

/// A hot container lent to one call. Give it back with [`CheckedOut::check_in`]
/// or [`CheckedOut::evict`]. Dropped otherwise (the caller went away), it goes back
/// if no call began in it, and is evicted if one did, since its pipes may hold
/// half a call.
pub(crate) struct CheckedOut<D: Driver> {
    lender: Arc<dyn Lender<D>>,
    slot: Option<Slot<D>>,
    in_call: bool,
}

impl<D: Driver> CheckedOut<D> {
    pub(crate) fn new(lender: Arc<dyn Lender<D>>, slot: Slot<D>) -> CheckedOut<D> {
        CheckedOut {
            lender,
            slot: Some(slot),
            in_call: false,
        }
    }

    pub(crate) fn slot(&mut self) -> &mut Slot<D> {
        self.slot
            .as_mut()
            .expect("a checked-out container has its slot")
    }

    /// The slot, for a call that begins writing into it now.
    pub(crate) fn begin_call(&mut self) -> &mut Slot<D> {
        self.in_call = true;
        self.slot()
    }

    /// The container, without giving it back (to hand it on to another call).
    pub(crate) fn into_slot(mut self) -> Slot<D> {
        self.take()
    }

    /// The call ended cleanly: the container serves the next one.
    pub(crate) fn check_in(mut self) {
        let slot = self.take();
        self.lender.check_in(slot);
    }

    /// The container must go, for `reason`.
    pub(crate) fn evict(mut self, reason: EvictionReason) {
        let slot = self.take();
        self.lender.evict(slot, reason);
    }

    fn take(&mut self) -> Slot<D> {
        self.slot
            .take()
            .expect("a checked-out container has its slot")
    }
}

impl<D: Driver> Drop for CheckedOut<D> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if self.in_call {
                self.lender.evict(slot, EvictionReason::Cancelled);
            } else {
                self.lender.check_in(slot);
            }
        }
    }
}
