//! Shim groups: which runc shim process serves which containers.
//!
//! Every container names a group in its spec (`io.containerd.runc.v2.group`),
//! and the runc shim serves all containers of one group from one process,
//! which exits with the group's last task. A container joins a group when it
//! is prepared and leaves it when it is removed; a group takes members up to
//! the driver's group size. A group that empties is never joined again: its
//! name belongs to a shim on its way out.
//!
//! A shim creates its tasks one at a time (containerd 1.6's runc shim holds
//! one lock over each `runc create`), so containers starting together are
//! spread over up to [`FILL_WIDTH`] groups: a container joins the group with
//! room that has the fewest tasks still to create (the oldest of those), or a
//! new one if every such group has one under way and fewer than
//! [`FILL_WIDTH`] have room. One at a time, containers fill one group.
//!
//! One race is the driver's to prevent: a shim whose last task is deleted
//! shuts down, and a task being created in its group at that moment would be
//! handed to the dying shim. So in each group, task creations and the deletion
//! of what may be its last task never overlap ([`Membership::create_task`],
//! [`Membership::delete_task`]). Creations overlap freely.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::RwLock;

/// How many groups with room take the containers that start together.
pub(crate) const FILL_WIDTH: usize = 4;

/// The groups of one driver.
pub(crate) struct ShimGroups {
    /// Names this driver's groups apart from any other's, in any process.
    prefix: String,
    size: usize,
    state: Mutex<GroupsState>,
}

struct GroupsState {
    /// Groups that have members, oldest first.
    open: Vec<Arc<Group>>,
    next: u64,
}

/// One shim group.
struct Group {
    name: String,
    /// Containers prepared in it and not yet removed (under the groups' lock).
    members: AtomicUsize,
    /// Tasks created in it and not yet deleted.
    tasks: AtomicUsize,
    /// Held shared by task creations, alone by the deletion of what may be
    /// the group's last task.
    shim: RwLock<()>,
}

impl Group {
    /// Its members whose task is not created yet.
    fn to_create(&self) -> usize {
        self.members
            .load(Ordering::Relaxed)
            .saturating_sub(self.tasks.load(Ordering::Acquire))
    }
}

impl ShimGroups {
    /// Groups of at most `size` containers, named `<prefix>-<n>`.
    pub(crate) fn new(prefix: String, size: usize) -> ShimGroups {
        ShimGroups {
            prefix,
            size: size.max(1),
            state: Mutex::new(GroupsState {
                open: Vec::new(),
                next: 0,
            }),
        }
    }

    /// Joins the group with room with the fewest tasks to create (the oldest
    /// of those), or a new one where each has one under way and fewer than
    /// [`FILL_WIDTH`] have room.
    pub(crate) fn join(self: &Arc<Self>) -> Membership {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let size = self.size;
        let with_room: Vec<&Arc<Group>> = state
            .open
            .iter()
            .filter(|group| group.members.load(Ordering::Relaxed) < size)
            .collect();
        let least_busy = with_room
            .iter()
            .min_by_key(|group| group.to_create())
            .filter(|group| group.to_create() == 0 || with_room.len() >= FILL_WIDTH)
            .map(|group| Arc::clone(group));
        let group = match least_busy {
            Some(group) => group,
            None => {
                let group = Arc::new(Group {
                    name: format!("{}-{}", self.prefix, state.next),
                    members: AtomicUsize::new(0),
                    tasks: AtomicUsize::new(0),
                    shim: RwLock::new(()),
                });
                state.next += 1;
                state.open.push(group.clone());
                group
            }
        };
        group.members.fetch_add(1, Ordering::Relaxed);
        Membership {
            groups: self.clone(),
            group,
        }
    }

    /// How many groups have members now.
    #[cfg(test)]
    fn open_groups(&self) -> usize {
        self.state.lock().unwrap().open.len()
    }
}

/// A container's place in a group, until dropped.
pub(crate) struct Membership {
    groups: Arc<ShimGroups>,
    group: Arc<Group>,
}

impl Membership {
    /// The group's name, for the container's spec.
    pub(crate) fn name(&self) -> &str {
        &self.group.name
    }

    /// Creates the container's task with `create`, never while what may be
    /// the group's last task is being deleted.
    pub(crate) async fn create_task<T, E>(
        &self,
        create: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let _shared = self.group.shim.read().await;
        let created = create.await;
        if created.is_ok() {
            self.group.tasks.fetch_add(1, Ordering::AcqRel);
        }
        created
    }

    /// Deletes the container's task (created with [`Membership::create_task`])
    /// with `delete`; if it may be the group's last, no creation overlaps.
    pub(crate) async fn delete_task<T, E>(
        &self,
        delete: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let before = self
            .group
            .tasks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tasks| {
                Some(tasks.saturating_sub(1))
            })
            .unwrap_or_default();
        if before <= 1 {
            let _alone = self.group.shim.write().await;
            delete.await
        } else {
            let _shared = self.group.shim.read().await;
            delete.await
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = self.groups.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.group.members.fetch_sub(1, Ordering::Relaxed) == 1 {
            state.open.retain(|group| !Arc::ptr_eq(group, &self.group));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Joins and creates the member's task at once: one container at a time.
    async fn started(groups: &Arc<ShimGroups>) -> Membership {
        let member = groups.join();
        member
            .create_task(async { Ok::<(), ()>(()) })
            .await
            .unwrap();
        member
    }

    #[tokio::test]
    async fn one_at_a_time_groups_fill_up_to_their_size_and_empty_ones_are_not_reused() {
        let groups = Arc::new(ShimGroups::new("g".into(), 2));
        let a = started(&groups).await;
        let b = started(&groups).await;
        let c = started(&groups).await;
        assert_eq!((a.name(), b.name(), c.name()), ("g-0", "g-0", "g-1"));
        drop(b);
        let d = started(&groups).await;
        assert_eq!(d.name(), "g-0", "a group with room is joined");
        drop(a);
        drop(d);
        assert_eq!(groups.open_groups(), 1);
        let e = started(&groups).await;
        assert_eq!(e.name(), "g-1");
        let f = started(&groups).await;
        assert_eq!(f.name(), "g-2", "g-0 emptied: its name is not used again");
        drop((c, e, f));
        assert_eq!(groups.open_groups(), 0);
    }

    #[tokio::test]
    async fn containers_starting_together_spread_over_the_fill_width() {
        let groups = Arc::new(ShimGroups::new("g".into(), 64));
        let starting: Vec<Membership> = (0..2 * FILL_WIDTH).map(|_| groups.join()).collect();
        let names: std::collections::BTreeSet<&str> =
            starting.iter().map(Membership::name).collect();
        assert_eq!(names.len(), FILL_WIDTH, "{names:?}");
        for member in &starting {
            member
                .create_task(async { Ok::<(), ()>(()) })
                .await
                .unwrap();
        }
        let next = started(&groups).await;
        assert_eq!(
            next.name(),
            "g-0",
            "once created, the oldest group is joined"
        );
        assert_eq!(groups.open_groups(), FILL_WIDTH);
    }

    #[tokio::test(start_paused = true)]
    async fn deleting_the_last_task_waits_for_creations_and_holds_them_off() {
        let groups = Arc::new(ShimGroups::new("g".into(), 4));
        let first = started(&groups).await;
        let second = groups.join();
        assert_eq!(first.name(), second.name());
        let (created, mut creation_done) = tokio::sync::oneshot::channel::<()>();
        let creating = async {
            second
                .create_task(async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = created.send(());
                    Ok::<(), ()>(())
                })
                .await
        };
        let deleting = async {
            // Starts once the creation is under way: the first task is the
            // last one counted, so its deletion waits for the creation.
            tokio::time::sleep(Duration::from_millis(10)).await;
            first
                .delete_task(async {
                    assert!(
                        creation_done.try_recv().is_ok(),
                        "the last task's deletion overlapped a creation"
                    );
                    Ok::<(), ()>(())
                })
                .await
        };
        let (created, deleted) = tokio::join!(creating, deleting);
        assert_eq!((created, deleted), (Ok(()), Ok(())));
    }
}
