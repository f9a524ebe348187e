//! containerd's task events, followed once per driver: the exit of each
//! container's task and its OOM kills, handed to the cookie watching it.
//!
//! One subscription, filtered to `/tasks/exit` and `/tasks/oom` in the
//! driver's namespace, runs on a task of its own. containerd answers a
//! subscription only with its first event (the headers come with it), so the
//! follower publishes a sentinel of its own until the subscription yields it:
//! then it is live. Events are decoded by topic (their type URLs carry no
//! leading `/`). When the stream ends (containerd restarted, say), the follower
//! subscribes again and asks containerd for the state of every started task it
//! watches, so an exit missed meanwhile is still seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::{GetRequest, PublishRequest, SubscribeRequest};
use containerd_client::types::Envelope;
use containerd_client::types::v1::Status as TaskStatus;
use dashmap::DashMap;
use prost::Message;
use tokio::task::JoinHandle;
use tonic::codec::Streaming;
use tonic::{Code, Status};

use super::ENGINE;
use super::client::{Client, QUICK, call, into_status};
use crate::id::new_id;

const EXIT_TOPIC: &str = "/tasks/exit";
const OOM_TOPIC: &str = "/tasks/oom";
/// The topics of the follower's sentinels (a nonce follows).
const SYNC_TOPIC: &str = "/hotpool/sync";

/// How often the sentinel goes out while a subscription waits for its first event.
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// How long subscribing may take: the subscription answers once the first
/// event (our own sync event, published every `SYNC_EVERY`) arrives.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(10);
/// The first pause before subscribing again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The exit status containerd gives a task whose shim died under it.
pub(crate) const KILLED: u32 = 128 + 9;

/// The events of one driver's containers.
pub(crate) struct Events {
    watches: Arc<DashMap<String, Arc<Watch>>>,
    follower: JoinHandle<()>,
}

/// What the events said of one container.
pub(crate) struct Watch {
    exit: tokio::sync::watch::Sender<Option<u32>>,
    oom: AtomicBool,
    /// Whether its task was started: only then is its state asked after.
    started: AtomicBool,
}

impl Events {
    /// Follows the events of `client`'s namespace until dropped.
    pub(crate) fn follow(client: Client) -> Events {
        let watches: Arc<DashMap<String, Arc<Watch>>> = Arc::default();
        let follower = tokio::spawn(follow(client, watches.clone()));
        Events { watches, follower }
    }

    /// Starts watching container `id`.
    pub(crate) fn watch(&self, id: &str) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            exit: tokio::sync::watch::Sender::new(None),
            oom: AtomicBool::new(false),
            started: AtomicBool::new(false),
        });
        self.watches.insert(id.to_owned(), watch.clone());
        watch
    }

    /// Stops watching container `id`.
    pub(crate) fn unwatch(&self, id: &str) {
        self.watches.remove(id);
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Watch {
    /// Marks the container's task started.
    pub(crate) fn started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// The task's exit status, once it exited.
    pub(crate) fn exit_status(&self) -> Option<u32> {
        *self.exit.borrow()
    }

    /// Waits for the task's exit; yields its status.
    pub(crate) async fn exited(&self) -> u32 {
        let mut exit = self.exit.subscribe();
        let status = exit.wait_for(Option::is_some).await.map(|status| *status);
        match status {
            Ok(status) => status.unwrap_or(KILLED),
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }

    /// Whether the kernel OOM-killed a process of the container.
    pub(crate) fn oom_killed(&self) -> bool {
        self.oom.load(Ordering::Acquire)
    }

    fn exit_with(&self, status: u32) {
        self.exit.send_if_modified(|exit| {
            let first = exit.is_none();
            if first {
                *exit = Some(status);
            }
            first
        });
    }
}

/// Subscribes, hands events out, and subscribes again when the stream ends.
async fn follow(client: Client, watches: Arc<DashMap<String, Arc<Watch>>>) {
    let mut pause = FIRST_PAUSE;
    loop {
        let subscribed = crate::driver::timed_engine_call(
            ENGINE,
            "events_subscribe",
            SUBSCRIBE_DEADLINE,
            subscribe(&client),
        );
        match subscribed.await.map_err(into_status) {
            Ok(mut events) => {
                pause = FIRST_PAUSE;
                reconcile(&client, &watches).await;
                loop {
                    match events.message().await {
                        Ok(Some(envelope)) => hand_out(&envelope, &watches),
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(error = %status.message(), "containerd's event stream ended");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::debug!(error = %status.message(), "cannot subscribe to containerd's events yet");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// A live subscription to the namespace's task exits and OOM kills.
async fn subscribe(client: &Client) -> Result<Streaming<Envelope>, Status> {
    let namespace = client.namespace();
    let sync_topic = format!("{SYNC_TOPIC}/{}", new_id());
    let filters = [EXIT_TOPIC, OOM_TOPIC, &sync_topic]
        .iter()
        .map(|topic| format!("namespace=={namespace},topic==\"{topic}\""))
        .collect();
    let mut events = client.events();
    let subscription = events.subscribe(client.request(SubscribeRequest { filters }));
    tokio::pin!(subscription);
    let sentinel = PublishRequest {
        topic: sync_topic.clone(),
        event: Some(prost_types::Any {
            type_url: "containerd.events.TaskExit".to_owned(),
            value: TaskExit::default().encode_to_vec(),
        }),
    };
    let deadline = tokio::time::Instant::now() + QUICK;
    let mut publisher = client.events();
    loop {
        let published = call(
            "events_publish",
            QUICK,
            publisher.publish(client.request(sentinel.clone())),
        );
        tokio::select! {
            answered = &mut subscription => return answered.map(tonic::Response::into_inner),
            _ = published => {}
        }
        tokio::select! {
            answered = &mut subscription => return answered.map(tonic::Response::into_inner),
            () = tokio::time::sleep(SYNC_EVERY) => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Status::deadline_exceeded(
                "containerd's event subscription yielded nothing",
            ));
        }
    }
}

/// Passes one event to the watch of its container.
fn hand_out(envelope: &Envelope, watches: &DashMap<String, Arc<Watch>>) {
    let Some(event) = &envelope.event else {
        return;
    };
    match envelope.topic.as_str() {
        EXIT_TOPIC => {
            let Ok(exit) = TaskExit::decode(event.value.as_slice()) else {
                return;
            };
            // The init process's exit is the task's; an exec's is not.
            if exit.id != exit.container_id {
                return;
            }
            if let Some(watch) = watches.get(&exit.container_id) {
                watch.exit_with(exit.exit_status);
            }
        }
        OOM_TOPIC => {
            let Ok(oom) = TaskOom::decode(event.value.as_slice()) else {
                return;
            };
            if let Some(watch) = watches.get(&oom.container_id) {
                watch.oom.store(true, Ordering::Release);
            }
        }
        _ => {}
    }
}

/// Asks containerd for the state of every started task watched and not yet
/// seen exiting: its exit may have come while no subscription was live.
async fn reconcile(client: &Client, watches: &DashMap<String, Arc<Watch>>) {
    let pending: Vec<(String, Arc<Watch>)> = watches
        .iter()
        .filter(|entry| entry.started.load(Ordering::Acquire) && entry.exit_status().is_none())
        .map(|entry| (entry.key().clone(), entry.value().clone()))
        .collect();
    for (id, watch) in pending {
        if let Some(status) = exit_status(client, &id).await {
            watch.exit_with(status);
        }
    }
}

/// The exit status of container `id`'s task if it has exited (or is gone:
/// then it was killed), `None` while it runs or containerd cannot say.
pub(crate) async fn exit_status(client: &Client, id: &str) -> Option<u32> {
    let request = client.request(GetRequest {
        container_id: id.to_owned(),
        exec_id: String::new(),
    });
    match call("task_get", QUICK, client.tasks().get(request)).await {
        Ok(answer) => answer
            .process
            .filter(|process| process.status == TaskStatus::Stopped as i32)
            .map(|process| process.exit_status),
        Err(status) if status.code() == Code::NotFound => Some(KILLED),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope<M: Message>(topic: &str, event: &M) -> Envelope {
        Envelope {
            topic: topic.to_owned(),
            namespace: "hotpool".to_owned(),
            event: Some(prost_types::Any {
                // As containerd sends them: no leading slash.
                type_url: "containerd.events.Whatever".to_owned(),
                value: event.encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    fn watch() -> Arc<Watch> {
        Arc::new(Watch {
            exit: tokio::sync::watch::Sender::new(None),
            oom: AtomicBool::new(false),
            started: AtomicBool::new(true),
        })
    }

    #[tokio::test]
    async fn exits_and_oom_kills_reach_their_containers_watch() {
        let watches = DashMap::new();
        let (c1, c2) = (watch(), watch());
        watches.insert("c1".to_owned(), c1.clone());
        watches.insert("c2".to_owned(), c2.clone());
        let oom = TaskOom {
            container_id: "c1".into(),
        };
        hand_out(&envelope(OOM_TOPIC, &oom), &watches);
        let exec_exit = TaskExit {
            container_id: "c1".into(),
            id: "exec-1".into(),
            exit_status: 3,
            ..Default::default()
        };
        hand_out(&envelope(EXIT_TOPIC, &exec_exit), &watches);
        assert_eq!(c1.exit_status(), None, "an exec's exit is not the task's");
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            exit_status: 137,
            ..Default::default()
        };
        hand_out(&envelope(EXIT_TOPIC, &exit), &watches);
        assert!(c1.oom_killed());
        assert_eq!(c1.exited().await, 137);
        assert!(!c2.oom_killed());
        assert_eq!(c2.exit_status(), None);
        c1.exit_with(0);
        assert_eq!(c1.exit_status(), Some(137), "the first exit stays");
    }
}
