//! The simulated cluster both benches place on: seeded, so every run sees the same nodes.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use diplo_api::container::Protocol;
use diplo_api::runtime::Runtime;
use diplo_control_plane::scheduler::NodeCandidate;

const GIB: u64 = 1 << 30;

/// SplitMix64: a tiny seeded generator, so every run simulates the same cluster.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A varied cluster: mostly x86, a third ARM (half of it Raspberry Pis), random runtime sets,
/// zone/rack/role labels, 0–70% usage, a few bound ports, cached images and running instances.
pub fn cluster(size: usize, seed: u64) -> Vec<NodeCandidate> {
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
                volumes: BTreeMap::new(),
            }
        })
        .collect()
}
