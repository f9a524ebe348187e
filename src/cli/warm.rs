//! `hotpool bench`'s warm tier, on containerd: a third start between cold and
//! hot (issue 20).
//!
//! containerd creates a task (`runc create`: namespaces, cgroup, mounted root
//! filesystem, runc's init waiting to exec) apart from starting it. A pool
//! that kept created tasks ready would start one per call with only `Start`.
//! The bench measures, one container at a time and alternating so that drift
//! hits both alike:
//!
//! - `cold`: a container of the hot function made, started and answering its
//!   first call (what a pool's cold start costs);
//! - `warm`: a created task of the same function started and answering its
//!   first call (its container and task were made beforehand, untimed);
//!
//! and what a created task holds while it waits, beside an idle hot container
//! of the same function: the processes in its cgroup, their resident,
//! proportional and anonymous memory, and the cgroup's charge (medians over
//! the samples). A created task is alone in mapping runc's binary here, so
//! its PSS counts all of that text; with many of them held, the text is
//! shared and each costs about its anonymous memory and its cgroup's charge.
//!
//! On Docker there is no such tier: dockerd creates a container's task only as
//! it starts it. The bench says so and measures the rest.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::floor::{FloorContainer, floor_task};
use super::samples::Samples;
use hotpool::driver::containerd::{ContainerdDriver, Footprint};
use hotpool::driver::{AnyCookie, AnyDriver, Cookie, Driver};
use hotpool::pool::{FunctionSpec, Pool, Request};

/// The warm tier as one bench measured it.
pub(crate) enum Warm {
    /// The engine has no such tier, or the bench made no starts: why.
    Unavailable(String),
    /// Measured on containerd.
    Measured(Box<Figures>),
}

/// The starts and footprints of the warm tier.
pub(crate) struct Figures {
    driver: ContainerdDriver,
    cold: Samples,
    warm: Samples,
    created: Vec<Footprint>,
    hot_idle: Vec<Footprint>,
}

impl Warm {
    /// The tier on `pool`'s engine, with nothing measured yet.
    pub(crate) fn new(pool: &Pool<AnyDriver>, starts: usize) -> Warm {
        match pool.driver() {
            AnyDriver::Containerd(driver) if starts > 0 => Warm::Measured(Box::new(Figures {
                driver: driver.clone(),
                cold: Samples::default(),
                warm: Samples::default(),
                created: Vec::new(),
                hot_idle: Vec::new(),
            })),
            AnyDriver::Containerd(_) => {
                Warm::Unavailable("no starts were asked (--cold-calls 0)".to_owned())
            }
            other => Warm::Unavailable(format!(
                "the {} engine creates a container's task only as it starts it: there is no created task to keep",
                other.traits().name
            )),
        }
    }

    /// `starts` cold and `starts` warm starts of `spec`'s containers,
    /// alternating; and the footprint of each idle hot container in `idle`.
    pub(crate) async fn round(
        &mut self,
        pool: &Pool<AnyDriver>,
        spec: &FunctionSpec,
        starts: usize,
        request: &Request,
        idle: &[FloorContainer],
    ) -> Result<(), String> {
        let Warm::Measured(figures) = self else {
            return Ok(());
        };
        figures
            .hot_idle
            .extend(idle.iter().filter_map(FloorContainer::footprint));
        for _ in 0..starts {
            let cold = cold_start(pool, spec, request).await?;
            figures.cold.latencies.push(cold);
            let (warm, created) = figures.warm_start(pool, spec, request).await?;
            figures.warm.latencies.push(warm);
            figures.created.extend(created);
        }
        Ok(())
    }

    /// The `warm` member of the bench's JSON object.
    pub(crate) fn json(&self) -> Value {
        match self {
            Warm::Unavailable(why) => json!({ "available": false, "why": why }),
            Warm::Measured(figures) => {
                let us = |d: Duration| d.as_micros() as u64;
                let (cold, warm) = (figures.cold.p50_p99(), figures.warm.p50_p99());
                json!({
                    "available": true,
                    "starts": figures.warm.latencies.len(),
                    "warm_p50_us": us(warm.0),
                    "warm_p99_us": us(warm.1),
                    "cold_p50_us": us(cold.0),
                    "cold_p99_us": us(cold.1),
                    "warm_over_cold_p50": round3(ratio(warm.0, cold.0)),
                    "created": footprint_json(&figures.created),
                    "hot_idle": footprint_json(&figures.hot_idle),
                })
            }
        }
    }

    /// The warm tier's lines of the bench's table.
    pub(crate) fn print(&self) {
        let figures = match self {
            Warm::Unavailable(why) => {
                println!("warm tier (a created task, started on call): not available: {why}");
                return;
            }
            Warm::Measured(figures) => figures,
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (cold, warm) = (figures.cold.p50_p99(), figures.warm.p50_p99());
        println!(
            "warm tier (a created task, started on call), {} starts each, one at a time:",
            figures.warm.latencies.len()
        );
        println!(
            "  cold start (create, start, first answer)  p50 {:>7.1} ms  p99 {:>7.1} ms",
            ms(cold.0),
            ms(cold.1)
        );
        println!(
            "  warm start (start, first answer)          p50 {:>7.1} ms  p99 {:>7.1} ms",
            ms(warm.0),
            ms(warm.1)
        );
        println!("  warm/cold p50 {:.3}", ratio(warm.0, cold.0));
        println!(
            "  a created task holds:        {}",
            footprint_text(&figures.created)
        );
        println!(
            "  an idle hot container holds: {}",
            footprint_text(&figures.hot_idle)
        );
    }
}

impl Figures {
    /// One warm start: a container made and its task created (untimed, its
    /// footprint read), then started and answering one call (timed).
    async fn warm_start(
        &self,
        pool: &Pool<AnyDriver>,
        spec: &FunctionSpec,
        request: &Request,
    ) -> Result<(Duration, Option<Footprint>), String> {
        let failed = |e| format!("a warm start of {} failed: {e}", spec.name);
        let mut cookie = self
            .driver
            .prepare(floor_task(pool, spec))
            .await
            .map_err(failed)?;
        if let Err(error) = cookie.create_task().await {
            cookie.close().await;
            return Err(failed(error));
        }
        let created = cookie.footprint();
        let start = Instant::now();
        let max_response = pool.config().max_response_bytes;
        let mut container =
            FloorContainer::started(AnyCookie::Containerd(cookie), spec, max_response).await?;
        let answered = container.round_trip(request).await;
        let latency = start.elapsed();
        container.close().await;
        answered.map(|()| (latency, created))
    }
}

/// One cold start: a container of `spec` made, started and answering one call.
async fn cold_start(
    pool: &Pool<AnyDriver>,
    spec: &FunctionSpec,
    request: &Request,
) -> Result<Duration, String> {
    let start = Instant::now();
    let max_response = pool.config().max_response_bytes;
    let mut container = FloorContainer::start(pool, spec, max_response).await?;
    let answered = container.round_trip(request).await;
    let latency = start.elapsed();
    container.close().await;
    answered.map(|()| latency)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::EPSILON)
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// The median of each figure over `footprints` (of those that could be read).
fn median_footprint(footprints: &[Footprint]) -> MedianFootprint {
    fn median(mut values: Vec<u64>) -> Option<u64> {
        values.sort_unstable();
        values.get(values.len() / 2).copied()
    }
    let kib = |field: fn(&Footprint) -> Option<u64>| {
        median(footprints.iter().filter_map(field).collect()).map(|bytes| bytes / 1024)
    };
    MedianFootprint {
        processes: median(footprints.iter().map(|f| f.processes as u64).collect()),
        rss_kib: kib(|f| f.rss_bytes),
        pss_kib: kib(|f| f.pss_bytes),
        anonymous_kib: kib(|f| f.anonymous_bytes),
        cgroup_kib: kib(|f| f.cgroup_memory_bytes),
    }
}

/// The medians of a container's footprints, in KiB; `None`: never read.
struct MedianFootprint {
    processes: Option<u64>,
    rss_kib: Option<u64>,
    pss_kib: Option<u64>,
    anonymous_kib: Option<u64>,
    cgroup_kib: Option<u64>,
}

fn footprint_json(footprints: &[Footprint]) -> Value {
    let median = median_footprint(footprints);
    json!({
        "samples": footprints.len(),
        "processes": median.processes,
        "rss_kib": median.rss_kib,
        "pss_kib": median.pss_kib,
        "anonymous_kib": median.anonymous_kib,
        "cgroup_kib": median.cgroup_kib,
    })
}

fn footprint_text(footprints: &[Footprint]) -> String {
    let median = median_footprint(footprints);
    let kib = |value: Option<u64>| value.map_or("n/a".to_owned(), |kib| format!("{kib} KiB"));
    match median.processes {
        None => "n/a (its cgroup could not be read from here)".to_owned(),
        Some(processes) => format!(
            "{processes} process(es), RSS {}, PSS {}, anonymous {}, cgroup {}",
            kib(median.rss_kib),
            kib(median.pss_kib),
            kib(median.anonymous_kib),
            kib(median.cgroup_kib)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footprint(processes: usize, rss: Option<u64>, cgroup: Option<u64>) -> Footprint {
        let mut footprint = Footprint::default();
        footprint.processes = processes;
        footprint.rss_bytes = rss;
        footprint.cgroup_memory_bytes = cgroup;
        footprint
    }

    #[test]
    fn medians_skip_what_could_not_be_read() {
        let footprints = [
            footprint(1, Some(2048 * 1024), None),
            footprint(1, None, None),
            footprint(3, Some(4096 * 1024), None),
        ];
        let median = median_footprint(&footprints);
        assert_eq!(median.processes, Some(1));
        assert_eq!(median.rss_kib, Some(4096));
        assert_eq!(median.cgroup_kib, None);
        let text = footprint_text(&footprints);
        assert_eq!(
            text, "1 process(es), RSS 4096 KiB, PSS n/a, anonymous n/a, cgroup n/a",
            "{text}"
        );
        assert!(footprint_text(&[]).starts_with("n/a"));
    }
}
