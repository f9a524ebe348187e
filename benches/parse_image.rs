//! `parse_image` against a straight port of fn's `ParseImage`, over a mix of names.

mod support;

use std::hint::black_box;

use criterion::Criterion;
use hotpool::image::parse_image;

const NAMES: [&str; 8] = [
    "alpine",
    "alpine:3.19",
    "user/app:v1",
    "quay.io/org/app:1",
    "localhost/x",
    "host:5000/a/b:tag",
    "repo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "127.0.0.1:5000/fn/echo:v3",
];

/// fn's `ParseImage`, ported line for line: (registry, repo, tag).
fn seed_parse_image(image: &str) -> (String, String, String) {
    let repo_tag = image.split('@').next().unwrap_or(image);
    let (mut repo, mut tag) = match repo_tag.rfind(':') {
        Some(n) if !repo_tag[n + 1..].contains('/') => {
            (repo_tag[..n].to_owned(), repo_tag[n + 1..].to_owned())
        }
        _ => (repo_tag.to_owned(), String::new()),
    };
    let mut registry = String::new();
    let parts: Vec<&str> = repo.split('/').collect();
    match parts.len() {
        1 => repo = format!("library/{repo}"),
        2 if repo.contains('.') => {
            registry = parts[0].to_owned();
            repo = parts[1].to_owned();
        }
        3 => {
            registry = parts[0].to_owned();
            repo = format!("{}/{}", parts[1], parts[2]);
        }
        _ => {}
    }
    if tag.is_empty() {
        tag = "latest".to_owned();
    }
    (registry, repo, tag)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_image_8_names");
    group.bench_function("hotpool", |b| {
        b.iter(|| {
            for name in NAMES {
                black_box(parse_image(black_box(name)));
            }
        })
    });
    group.bench_function("seed", |b| {
        b.iter(|| {
            for name in NAMES {
                black_box(seed_parse_image(black_box(name)));
            }
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    support::print_ratio("parse_image_8_names", "hotpool", "seed");
}
