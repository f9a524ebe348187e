//! `decimate` over 100k samples, against a straight port of fn's `Decimate`.
//!
//! The port is the baseline: hotpool's version must return exactly `max` points
//! for evenly spread input where the seed returned fewer, without being slower.

mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{BatchSize, Criterion};
use hotpool::stats::{Stat, average, decimate};

fn samples(count: usize) -> Vec<Stat> {
    (0..count)
        .map(|i| Stat {
            timestamp: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + i as u64 * 1000),
            metrics: BTreeMap::from([
                ("cpu_ratio".into(), (i % 100) as f64 / 100.0),
                ("memory_bytes".into(), (i * 4096) as f64),
            ]),
        })
        .collect()
}

/// fn's `Decimate`, ported line for line (windows by time, the last one open).
fn seed_decimate(max: usize, mut stats: Vec<Stat>) -> Vec<Stat> {
    if stats.len() <= max {
        return stats;
    }
    if max == 0 {
        return Vec::new();
    }
    let start = stats[0].timestamp;
    let span = stats[stats.len() - 1]
        .timestamp
        .duration_since(start)
        .unwrap_or_default();
    let window = span / max as u32;
    let (mut next_entry, mut current) = (0, start);
    let mut x = 0;
    while x < stats.len() {
        let is_last_entry = next_entry == max - 1;
        let mut end = x;
        while end < stats.len() && (is_last_entry || stats[end].timestamp <= current + window) {
            end += 1;
        }
        if let Some(entry) = average(&stats[x..end]) {
            stats[next_entry] = entry;
            next_entry += 1;
        }
        x = end.max(x + usize::from(end == x));
        current += window;
    }
    stats.truncate(next_entry);
    stats
}

fn bench(c: &mut Criterion) {
    let input = samples(100_000);
    let mut group = c.benchmark_group("decimate_100k");
    group.bench_function("hotpool", |b| {
        b.iter_batched(
            || input.clone(),
            |s| black_box(decimate(240, s)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("seed", |b| {
        b.iter_batched(
            || input.clone(),
            |s| black_box(seed_decimate(240, s)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
    println!(
        "points for 100k evenly spread samples, max 240: hotpool {}, seed {}",
        decimate(240, input.clone()).len(),
        seed_decimate(240, input).len()
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    support::print_ratio("decimate_100k", "hotpool", "seed");
}
