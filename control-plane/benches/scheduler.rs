//! Scheduler throughput and decision latency at 1,000, 5,000 and 10,000 simulated nodes.
//!
//! `cargo bench -p diplo-control-plane --bench scheduler`
//!
//! Criterion measures placing 1 replica and placing 100 replicas per call (throughput in
//! decisions/s, a decision being one replica placed). After it, a plain loop times single
//! calls one by one and prints p50/p99/max, which criterion does not report.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use diplo_api::container::Protocol;
use diplo_control_plane::model::{Constraints, Strategy};
use diplo_control_plane::scheduler::{NodeCandidate, PlacementRequest, place};

#[path = "support/cluster.rs"]
mod support;
use support::cluster;

const SIZES: [usize; 3] = [1_000, 5_000, 10_000];
const MIB: u64 = 1 << 20;

/// A typical web replica: multi-arch image (amd64 + arm64, so 32-bit ARM nodes drop out),
/// 250m CPU and 256 MiB, binpack.
fn web(count: u32) -> PlacementRequest {
    PlacementRequest {
        deployment_id: "dep-7".to_owned(),
        count,
        image: "registry.example/app-3:1.0".to_owned(),
        image_platforms: Some(vec![("linux".to_owned(), "amd64".to_owned()), ("linux".to_owned(), "arm64".to_owned())]),
        runtime: None,
        constraints: Constraints::default(),
        cpu_millis: 250,
        memory_bytes: 256 * MIB,
        ports: Vec::new(),
        strategy: Strategy::Binpack,
        volumes: Vec::new(),
    }
}

/// A pickier one: spread, a zone label, a host port.
fn constrained(count: u32) -> PlacementRequest {
    PlacementRequest {
        constraints: Constraints { labels: BTreeMap::from([("role".to_owned(), "edge".to_owned())]), ..Constraints::default() },
        ports: vec![(8080, Protocol::Tcp)],
        strategy: Strategy::Spread,
        ..web(count)
    }
}

fn throughput(criterion: &mut Criterion) {
    for replicas in [1u32, 100] {
        let mut group = criterion.benchmark_group(format!("place_{replicas}"));
        group.throughput(Throughput::Elements(u64::from(replicas)));
        for size in SIZES {
            let nodes = cluster(size, 42);
            let request = web(replicas);
            assert_eq!(place(&nodes, &request).expect("the cluster fits").len(), replicas as usize);
            group.bench_with_input(BenchmarkId::from_parameter(size), &nodes, |bench, nodes| {
                bench.iter(|| place(black_box(nodes), black_box(&request)))
            });
        }
        group.finish();
    }
}

/// Times `runs` calls one by one; returns sorted nanoseconds.
fn timings(nodes: &[NodeCandidate], request: &PlacementRequest, runs: usize) -> Vec<u128> {
    for _ in 0..runs / 10 {
        black_box(place(black_box(nodes), black_box(request)).ok());
    }
    let mut samples: Vec<u128> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(place(black_box(nodes), black_box(request)).ok());
            start.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    samples
}

fn percentile(sorted: &[u128], p: usize) -> u128 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn micros(nanos: u128) -> String {
    format!("{:.1}µs", nanos as f64 / 1_000.0)
}

fn percentiles() {
    println!("\ndecision latency (one call at a time, single thread)");
    println!("{:<12} {:>6} {:>9} {:>10} {:>10} {:>10} {:>14}", "request", "nodes", "replicas", "p50", "p99", "max", "decisions/s");
    for size in SIZES {
        let nodes = cluster(size, 42);
        for (label, replicas, runs) in [("web", 1u32, 3_000), ("constrained", 1, 3_000), ("web", 100, 300)] {
            let request = if label == "web" { web(replicas) } else { constrained(replicas) };
            let sorted = timings(&nodes, &request, runs);
            let mean = sorted.iter().sum::<u128>() as f64 / sorted.len() as f64;
            println!(
                "{:<12} {:>6} {:>9} {:>10} {:>10} {:>10} {:>14.0}",
                label,
                size,
                replicas,
                micros(percentile(&sorted, 50)),
                micros(percentile(&sorted, 99)),
                micros(*sorted.last().expect("samples")),
                f64::from(replicas) * 1e9 / mean,
            );
        }
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    throughput(&mut criterion);
    criterion.final_summary();
    // `cargo test --benches` runs benches once in test mode, without `--bench`.
    if std::env::args().any(|arg| arg == "--bench") {
        percentiles();
    }
}
