//! Scheduler throughput and decision latency at 1,000, 5,000 and 10,000 simulated nodes.
//!
//! `cargo bench -p diplo-control-plane --bench scheduler`
//!
//! Criterion measures placing 1 replica and placing 100 replicas per call (throughput in
//! decisions/s, a decision being one replica placed). After it, a plain loop times single
//! calls one by one and prints p50/p99/max, which criterion does not report.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use diplo_api::container::Protocol;
use diplo_api::runtime::Runtime;
use diplo_control_plane::model::{Constraints, Strategy};
use diplo_control_plane::scheduler::{NodeCandidate, PlacementRequest, place};

const SIZES: [usize; 3] = [1_000, 5_000, 10_000];
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// SplitMix64: a tiny seeded generator, so every run simulates the same cluster.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A varied cluster: mostly x86, a third ARM (half of it Raspberry Pis), random runtime sets,
/// zone/rack/role labels, 0–70% usage, a few bound ports, cached images and running instances.
fn cluster(size: usize, seed: u64) -> Vec<NodeCandidate> {
    let mut rng = Rng(seed);
    (0..size)
        .map(|index| {
            let arch = match rng.below(100) {
                0..55 => "amd64",
                55..85 => "arm64",
                _ => "arm",
            };
            let raspberry_pi = arch != "amd64" && rng.chance(50);
            let mut runtimes: Vec<Runtime> = Runtime::ALL.into_iter().filter(|_| rng.chance(50)).collect();
            if runtimes.is_empty() {
                runtimes.push(Runtime::Docker);
            }
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_owned(), format!("z{}", rng.below(5)));
            labels.insert("rack".to_owned(), format!("r{}", rng.below(20)));
            labels.insert("role".to_owned(), rng.pick(&["edge", "core"]).to_string());
            if rng.chance(5) {
                labels.insert("gpu".to_owned(), "true".to_owned());
            }
            let cpu_millis = *rng.pick(&[2_000, 4_000, 8_000, 16_000]);
            let memory_bytes = *rng.pick(&[2, 4, 8, 16, 32, 64]) * GIB;
            let used_ports: HashSet<(u16, Protocol)> =
                (0..rng.below(5)).map(|_| (*rng.pick(&[80, 443, 8080, 5432, 6379, 9090]), Protocol::Tcp)).collect();
            let images: BTreeSet<String> = (0..rng.below(7)).map(|_| format!("registry.example/app-{}:1.0", rng.below(20))).collect();
            let instances: BTreeMap<String, u32> =
                (0..rng.below(7)).map(|_| (format!("dep-{}", rng.below(200)), 1 + rng.below(3) as u32)).collect();
            NodeCandidate {
                id: format!("{:016x}", rng.next()),
                name: format!("node-{index:05}"),
                os: "linux".to_owned(),
                arch: arch.to_owned(),
                raspberry_pi,
                ready: rng.chance(98),
                cordoned: rng.chance(1),
                labels,
                reported_labels: BTreeMap::new(),
                runtimes,
                cpu_millis,
                memory_bytes,
                used_cpu_millis: cpu_millis * rng.below(71) / 100,
                used_memory_bytes: memory_bytes / 100 * rng.below(71),
                used_ports,
                images,
                instances,
            }
        })
        .collect()
}

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
