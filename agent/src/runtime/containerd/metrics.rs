//! Decoding Tasks.Metrics: the shim reports cgroup statistics as an `Any` holding
//! `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`
//! (containerd/cgroups' protos; only the fields Diplo reads are declared here).
//! Network counters are not in the cgroup: they come from `/proc/<pid>/net/dev`.

/// cgroup v1 `type_url`s (containerd 1.6 uses the bare name).
const V1: &str = "io.containerd.cgroups.v1.Metrics";
const V2: &str = "io.containerd.cgroups.v2.Metrics";

#[allow(missing_docs)]
mod v1 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuUsage {
        #[prost(uint64, tag = "1")]
        pub total: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "30")]
        pub total_inactive_file: u64,
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
    }
}

#[allow(missing_docs)]
mod v2 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "2")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(uint64, tag = "1")]
        pub usage_usec: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "13")]
        pub inactive_file: u64,
        #[prost(uint64, tag = "32")]
        pub usage: u64,
        #[prost(uint64, tag = "33")]
        pub usage_limit: u64,
    }
}

/// What one metrics sample says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use (without inactive page cache), bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes; 0 when unlimited.
    pub memory_limit_bytes: u64,
}

/// Limits at or above this are "unlimited" (cgroup v1 reports ~2^63, v2 u64::MAX).
const UNLIMITED: u64 = 1 << 62;

/// Decodes a metrics `Any` of either cgroup version.
pub fn decode(any: &prost_types::Any) -> Result<Sample, String> {
    use prost::Message;
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let limit = |l: u64| if l >= UNLIMITED { 0 } else { l };
    match type_name {
        V1 => {
            let m = v1::Metrics::decode(any.value.as_slice()).map_err(|e| format!("bad cgroup v1 metrics: {e}"))?;
            let memory = m.memory.unwrap_or_default();
            let usage = memory.usage.unwrap_or_default();
            Ok(Sample {
                cpu_nanos: m.cpu.and_then(|c| c.usage).map_or(0, |u| u.total),
                memory_bytes: usage.usage.saturating_sub(memory.total_inactive_file),
                memory_limit_bytes: limit(usage.limit),
            })
        }
        V2 => {
            let m = v2::Metrics::decode(any.value.as_slice()).map_err(|e| format!("bad cgroup v2 metrics: {e}"))?;
            let memory = m.memory.unwrap_or_default();
            Ok(Sample {
                cpu_nanos: m.cpu.map_or(0, |c| c.usage_usec.saturating_mul(1000)),
                memory_bytes: memory.usage.saturating_sub(memory.inactive_file),
                memory_limit_bytes: limit(memory.usage_limit),
            })
        }
        other => Err(format!("unknown metrics type {other:?}")),
    }
}

/// Bytes received and sent on all interfaces but `lo`, from a `/proc/<pid>/net/dev` text.
pub fn network_bytes(net_dev: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in net_dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if fields.len() >= 9 {
            rx = rx.saturating_add(fields[0]);
            tx = tx.saturating_add(fields[8]);
        }
    }
    (rx, tx)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn cgroup_v1_and_v2_metrics_decode() {
        let m = v1::Metrics {
            cpu: Some(v1::CpuStat { usage: Some(v1::CpuUsage { total: 5_000 }) }),
            memory: Some(v1::MemoryStat { total_inactive_file: 100, usage: Some(v1::MemoryEntry { limit: u64::MAX >> 1, usage: 1100 }) }),
        };
        let any = prost_types::Any { type_url: V1.into(), value: m.encode_to_vec() };
        assert_eq!(decode(&any).unwrap(), Sample { cpu_nanos: 5_000, memory_bytes: 1000, memory_limit_bytes: 0 });
        let m = v2::Metrics {
            cpu: Some(v2::CpuStat { usage_usec: 3 }),
            memory: Some(v2::MemoryStat { inactive_file: 0, usage: 10, usage_limit: 64 }),
        };
        let any = prost_types::Any { type_url: format!("types.containerd.io/{V2}"), value: m.encode_to_vec() };
        assert_eq!(decode(&any).unwrap(), Sample { cpu_nanos: 3000, memory_bytes: 10, memory_limit_bytes: 64 });
        assert!(decode(&prost_types::Any { type_url: "x".into(), value: vec![] }).is_err());
    }

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    2000      10    0    0    0     0          0         0      300       3    0    0    0     0       0          0\n";
        assert_eq!(network_bytes(text), (2000, 300));
    }
}
