//! Taking a pool's containers off its engine: a bounded number at a time, with
//! a record of those still there, so that a shutdown whose engine stops
//! answering gives up on it in bounded time and says what it left behind.
//!
//! A shutdown's teardown goes on while the engine makes progress (a container
//! removed, however slowly a thousand of them go), and stops once it has
//! removed none for the driver's
//! [`Driver::removal_deadline`](crate::driver::Driver::removal_deadline), or
//! at the pool's removal timeout: a stop ends within the shutdown timeout plus
//! that, whatever the engine's pace, and what it left goes to the next owner
//! of the pool or ends by itself (the orphan timeout).

use std::future::Future;
use std::time::Duration;

use dashmap::DashSet;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use crate::driver::Cookie;

/// How many containers are killed and removed at once, at most.
pub const REMOVALS_AT_ONCE: usize = 16;

/// The containers a pool has on its engine, and the removals in flight.
pub(crate) struct Removals {
    /// Bounds the containers being killed and removed at once: a thousand
    /// removals at once overload the engine (this one then lists a container
    /// it no longer knows as "Removal In Progress" until it restarts).
    at_once: Semaphore,
    /// The ids of the containers prepared and not closed yet.
    unremoved: DashSet<String>,
    /// Rung each time a container is closed.
    closed: Notify,
}

impl Removals {
    pub(crate) fn new() -> Removals {
        Removals {
            at_once: Semaphore::new(REMOVALS_AT_ONCE),
            unremoved: DashSet::new(),
            closed: Notify::new(),
        }
    }

    /// Waits for a turn to kill and remove a container.
    pub(crate) async fn turn(&self) -> SemaphorePermit<'_> {
        self.at_once
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Notes the container of task `id` as on the engine until it is closed.
    pub(crate) fn prepared(&self, id: &str) {
        self.unremoved.insert(id.to_owned());
    }

    /// Removes the container of task `id` through its cookie.
    pub(crate) async fn close<C: Cookie>(&self, id: &str, cookie: &C) {
        cookie.close().await;
        self.unremoved.remove(id);
        self.closed.notify_one();
    }

    /// Lets go of the container of task `id` through its cookie, for a next
    /// owner; removes it if the driver cannot let it go.
    pub(crate) async fn release<C: Cookie>(&self, id: &str, cookie: &C) {
        cookie.release().await;
        self.unremoved.remove(id);
        self.closed.notify_one();
    }

    /// The ids of the containers not closed yet, sorted.
    pub(crate) fn unremoved(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.unremoved.iter().map(|id| id.clone()).collect();
        ids.sort();
        ids
    }

    /// Runs `teardown` to its end while containers keep being closed; `None`
    /// once none has been for `patience`.
    pub(crate) async fn while_progressing<T>(
        &self,
        teardown: impl Future<Output = T>,
        patience: Duration,
    ) -> Option<T> {
        tokio::pin!(teardown);
        loop {
            tokio::select! {
                done = &mut teardown => return Some(done),
                () = self.closed.notified() => {}
                () = tokio::time::sleep(patience) => return None,
            }
        }
    }
}

/// What a shutdown left on the engine: nothing, unless the engine stopped
/// answering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leftovers {
    /// The containers whose removal did not finish, by the ids of hotpool's
    /// log (a Docker container is named `hotpool-<id>`).
    pub containers: Vec<String>,
    /// Whether the engine may hold more of the pool's containers: the final
    /// sweep by the pool's label did not finish.
    pub unswept: bool,
}

impl Leftovers {
    /// Whether nothing was left.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && !self.unswept
    }
}
