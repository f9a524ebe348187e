//! The stats thread: engine samples taken while a call runs belong to that call.
//!
//! Each container's stats sink tags every sample with the call in flight (none
//! while idle: those samples are dropped) and sends it over a crossbeam channel to
//! one thread. At the end of a call the thread decimates the call's samples,
//! averages them, joins the container's counter readings, and hands the
//! [`CallStats`] back (the call records them in its function's metrics). A call
//! that saw no sample (most calls are far shorter than the engine's one-second
//! interval) has nothing to decimate: its stats are the counters alone, computed
//! in place, so the hot path never waits for (or wakes) the thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::driver::StatSink;
use crate::stats::{CallStats, Stat, Usage};

/// Which call a container is serving, as its stats sink sees it.
#[derive(Default)]
pub(crate) struct CallTag {
    /// The call in flight; 0 while idle.
    call: AtomicU64,
    /// Samples sent for that call so far.
    samples: AtomicU32,
}

impl CallTag {
    /// Marks `call` as in flight.
    pub(crate) fn begin(&self, call: u64) {
        self.samples.store(0, Ordering::Release);
        self.call.store(call, Ordering::Release);
    }

    /// Marks the container idle; whether samples were sent for the call.
    pub(crate) fn end(&self) -> bool {
        self.call.store(0, Ordering::Release);
        self.samples.load(Ordering::Acquire) > 0
    }
}

enum Event {
    Sample {
        container: u64,
        call: u64,
        stat: Stat,
    },
    CallEnd {
        container: u64,
        call: u64,
        usage: Option<Usage>,
        reply: oneshot::Sender<CallStats>,
    },
    Forget {
        container: u64,
    },
}

/// The sending side of the stats thread.
pub(crate) struct StatsCollector {
    events: Sender<Event>,
    max_points: usize,
    next_id: AtomicU64,
}

impl StatsCollector {
    /// Starts the thread; it ends when the collector is dropped.
    pub(crate) fn start(max_points: usize) -> StatsCollector {
        let (events, receiver) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("hotpool-stats".into())
            .spawn(move || run(receiver, max_points))
            .expect("start the stats thread");
        StatsCollector {
            events,
            max_points,
            next_id: AtomicU64::new(1),
        }
    }

    /// A new id for a container or a call (never 0).
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The stats sink of container `container`, whose calls `tag` names.
    pub(crate) fn sink(&self, container: u64, tag: Arc<CallTag>) -> StatSink {
        let events = self.events.clone();
        Arc::new(move |stat| {
            let call = tag.call.load(Ordering::Acquire);
            if call != 0
                && events
                    .send(Event::Sample {
                        container,
                        call,
                        stat,
                    })
                    .is_ok()
            {
                tag.samples.fetch_add(1, Ordering::AcqRel);
            }
        })
    }

    /// The stats of call `call` in `container`, which has ended (`sampled`: the
    /// engine delivered samples during it).
    pub(crate) async fn finish(
        &self,
        container: u64,
        call: u64,
        usage: Option<Usage>,
        sampled: bool,
    ) -> CallStats {
        let counters_only = || CallStats::new(self.max_points, Vec::new(), usage);
        if !sampled {
            return counters_only();
        }
        let (reply, answer) = oneshot::channel();
        let end = Event::CallEnd {
            container,
            call,
            usage,
            reply,
        };
        if self.events.send(end).is_err() {
            return counters_only();
        }
        answer.await.unwrap_or_else(|_| counters_only())
    }

    /// Drops what is kept for `container`, which is gone.
    pub(crate) fn forget(&self, container: u64) {
        let _ = self.events.send(Event::Forget { container });
    }
}

fn run(events: Receiver<Event>, max_points: usize) {
    // Per container: the call whose samples are kept, and them.
    let mut kept: HashMap<u64, (u64, Vec<Stat>)> = HashMap::new();
    for event in events {
        match event {
            Event::Sample {
                container,
                call,
                stat,
            } => {
                let entry = kept.entry(container).or_insert((call, Vec::new()));
                if entry.0 < call {
                    *entry = (call, Vec::new());
                }
                if entry.0 == call {
                    entry.1.push(stat);
                }
            }
            Event::CallEnd {
                container,
                call,
                usage,
                reply,
            } => {
                let samples = match kept.remove(&container) {
                    Some((kept_call, samples)) if kept_call == call => samples,
                    Some(later) if later.0 > call => {
                        kept.insert(container, later);
                        Vec::new()
                    }
                    _ => Vec::new(),
                };
                let _ = reply.send(CallStats::new(max_points, samples, usage));
            }
            Event::Forget { container } => {
                kept.remove(&container);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn sample(value: f64) -> Stat {
        Stat {
            timestamp: SystemTime::now(),
            metrics: BTreeMap::from([("cpu_ratio".into(), value)]),
        }
    }

    #[tokio::test]
    async fn samples_belong_to_the_call_in_flight_only() {
        let collector = StatsCollector::start(240);
        let tag = Arc::new(CallTag::default());
        let sink = collector.sink(7, tag.clone());

        sink(sample(9.0)); // idle: dropped
        tag.begin(1);
        sink(sample(1.0));
        sink(sample(3.0));
        assert!(tag.end(), "samples were sent");
        let stats = collector.finish(7, 1, None, true).await;
        assert_eq!(stats.sample_count, 2);
        assert_eq!(stats.cpu_ratio(), Some(2.0));

        tag.begin(2);
        assert!(!tag.end());
        let usage = Usage {
            cpu_ratio: 0.25,
            cpu_seconds: 0.001,
            memory_bytes: 10,
        };
        let quiet = collector.finish(7, 2, Some(usage), false).await;
        assert_eq!((quiet.sample_count, quiet.cpu_ratio()), (0, Some(0.25)));
    }
}
