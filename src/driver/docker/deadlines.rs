//! How long the Docker driver waits for dockerd to answer each call: one table.
//!
//! dockerd can deadlock for good (under a mass teardown, libnetwork's store
//! lock: docker/for-linux#1319, moby#27761): every later call then hangs. A
//! call past its deadline is given up and fails as an `engine_error` ("the
//! docker engine did not answer create within 30s"), counted with result
//! `timeout` in `hotpool_engine_api_seconds`.
//!
//! A stream's deadline covers its connection (attach's upgrade, the first
//! stats sample, wait's answer head), never the stream: a wait lasts as long as
//! its container, an attach as long as its calls.

use std::time::Duration;

/// The deadline of each kind of engine call. Each is far above what a loaded
/// engine takes, so that only one that does not answer meets it; and what a
/// stop gives such an engine (a kill and a removal, 40 s) on top of the
/// default `shutdown_timeout` (30 s) stays under systemd's stop timeout (90 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deadlines {
    /// `/_ping` and `/version`, 3 s: answered from memory, in milliseconds
    /// even under load; the health probe asks it every few seconds and must
    /// hear soon.
    pub ping: Duration,
    /// Reads, 10 s: inspecting a container or an image, listing containers,
    /// `/info`. They queue behind a container's lock while it changes:
    /// seconds at worst.
    pub inspect: Duration,
    /// A SIGKILL, 10 s: dockerd signals, then waits a few seconds for the
    /// exit before it gives up.
    pub kill: Duration,
    /// Creating a container (its layer and config), 30 s: 0.1-0.4 s here,
    /// seconds when hundreds start at once.
    pub create: Duration,
    /// Starting one (network sandbox, cgroups, runc), 30 s: like `create`.
    pub start: Duration,
    /// Force-removing one (kill, wait, tear down the sandbox, unmount and
    /// delete the layer), 30 s: seconds under a mass teardown.
    pub remove: Duration,
    /// Connecting a stream (attach, wait, stats), 30 s: like `start`.
    pub stream: Duration,
    /// Pulling an image, every layer of it, 10 min: a large image over a slow
    /// link to its registry.
    pub pull: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            ping: Duration::from_secs(3),
            inspect: Duration::from_secs(10),
            kill: Duration::from_secs(10),
            create: Duration::from_secs(30),
            start: Duration::from_secs(30),
            remove: Duration::from_secs(30),
            stream: Duration::from_secs(30),
            pull: Duration::from_secs(10 * 60),
        }
    }
}

impl Deadlines {
    /// The deadline of `op`.
    pub(crate) fn of(&self, op: Op) -> Duration {
        match op {
            Op::Ping | Op::Version => self.ping,
            Op::Info | Op::Inspect | Op::InspectImage | Op::ListContainers => self.inspect,
            Op::Kill => self.kill,
            Op::Create => self.create,
            Op::Start => self.start,
            Op::Remove => self.remove,
            Op::Attach | Op::Wait | Op::Stats => self.stream,
            Op::PullImage => self.pull,
        }
    }

    /// The longest of them.
    pub(crate) fn longest(&self) -> Duration {
        [
            self.ping,
            self.inspect,
            self.kill,
            self.create,
            self.start,
            self.remove,
            self.stream,
            self.pull,
        ]
        .into_iter()
        .max()
        .unwrap_or_default()
    }

    /// How long killing and removing one container may take, each to its
    /// deadline.
    pub fn removal(&self) -> Duration {
        self.kill + self.remove
    }
}

/// A kind of engine call: its deadline, and its `op` label in the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Ping,
    Version,
    Info,
    Inspect,
    InspectImage,
    ListContainers,
    Kill,
    Create,
    Start,
    Remove,
    Attach,
    Wait,
    Stats,
    PullImage,
}

impl Op {
    /// The `op` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::Version => "version",
            Op::Info => "info",
            Op::Inspect => "inspect",
            Op::InspectImage => "inspect_image",
            Op::ListContainers => "list_containers",
            Op::Kill => "kill",
            Op::Create => "create",
            Op::Start => "start",
            Op::Remove => "remove",
            Op::Attach => "attach",
            Op::Wait => "wait",
            Op::Stats => "stats",
            Op::PullImage => "pull_image",
        }
    }
}
