//! The control plane's metrics, served as Prometheus text at `GET /metrics`.
//!
//! Every series is named `diplo_…` and every label takes its values from a fixed set
//! (node states, command kinds and outcomes, gRPC methods of the served services, REST
//! route templates, HTTP methods and status codes), so a caller cannot grow the number of
//! series by sending odd paths or ids. Counters and histograms are updated where things
//! happen; gauges of live state (nodes by state, sessions, pending commands, output
//! streams) are read from that state when the metrics are rendered.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::NodeStatus;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label value for a gRPC service or method that is not one of the served ones.
pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    service: String,
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    kind: &'static str,
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latencies: 1 ms to about 65 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Live state read when the metrics are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Nodes ready, unhealthy and down.
    pub ready: usize,
    /// Nodes that missed heartbeats.
    pub unhealthy: usize,
    /// Nodes silent past the grace period.
    pub down: usize,
    /// Agent sessions open.
    pub sessions: usize,
    /// Commands sent and awaiting their result.
    pub pending_commands: usize,
    /// Output streams (followed logs, builds) open.
    pub output_streams: usize,
}

/// The registry and its series.
pub struct Metrics {
    registry: Registry,
    nodes: Family<StateLabel, Gauge>,
    heartbeats: Counter,
    sessions: Gauge,
    grpc: Histograms<GrpcLabels>,
    rest: Histograms<RestLabels>,
    deploy_to_running: Histogram,
    reconcile_pass: Histogram,
    commands: Family<CommandLabels, Counter>,
    pending_commands: Gauge,
    output_streams: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series, registered under the `diplo_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("diplo");
        let nodes = Family::<StateLabel, Gauge>::default();
        registry.register("nodes", "Nodes by state (ready, unhealthy, down)", nodes.clone());
        let heartbeats = Counter::default();
        registry.register("heartbeats_received", "Heartbeats received from agents", heartbeats.clone());
        let sessions = Gauge::default();
        registry.register("agent_sessions", "Agent sessions open", sessions.clone());
        let grpc: Histograms<GrpcLabels> = Family::new_with_constructor(request_histogram);
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC requests by service, method and status code, until the response headers",
            grpc.clone(),
        );
        let rest: Histograms<RestLabels> = Family::new_with_constructor(request_histogram);
        registry.register("rest_request_duration_seconds", "REST requests by route template, method and status", rest.clone());
        // A deployment reaches running within seconds to minutes (pulls included).
        let deploy_to_running = Histogram::new(exponential_buckets(0.1, 2.0, 14));
        registry.register(
            "deploy_to_running_seconds",
            "From a deployment's creation or update to all its instances running",
            deploy_to_running.clone(),
        );
        let reconcile_pass = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register("reconcile_pass_duration_seconds", "Duration of one reconcile pass", reconcile_pass.clone());
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register("commands_sent", "Commands sent to agents by kind and outcome", commands.clone());
        let pending_commands = Gauge::default();
        registry.register("pending_commands", "Commands sent to agents and awaiting their result", pending_commands.clone());
        let output_streams = Gauge::default();
        registry.register("output_streams", "Output streams from agents open (followed logs, builds)", output_streams.clone());
        Metrics {
            registry,
            nodes,
            heartbeats,
            sessions,
            grpc,
            rest,
            deploy_to_running,
            reconcile_pass,
            commands,
            pending_commands,
            output_streams,
        }
    }

    /// One heartbeat received.
    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    /// A gRPC request answered: `path` is the request's `/package.Service/Method` (a
    /// method that is not served is counted as `unknown`), `code` the gRPC status code.
    pub fn grpc_request(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        let (service, method) = grpc_method(path);
        let labels = GrpcLabels { service: service.to_owned(), method: method.to_owned(), code: code_name(code) };
        self.grpc.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// A REST request answered: `route` is the matched route template (never the raw
    /// path), `method` the HTTP method.
    pub fn rest_request(&self, route: &str, method: &http::Method, status: u16, elapsed: Duration) {
        let labels = RestLabels { route: route.to_owned(), method: bounded_method(method).to_owned(), status };
        self.rest.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// A deployment's instances all run, `elapsed` after its creation or last update.
    pub fn deployment_running(&self, elapsed: Duration) {
        self.deploy_to_running.observe(elapsed.as_secs_f64());
    }

    /// One reconcile pass took `elapsed`.
    pub fn reconcile_pass(&self, elapsed: Duration) {
        self.reconcile_pass.observe(elapsed.as_secs_f64());
    }

    /// A command of `kind` ended with `outcome` (`ok` or an error class).
    pub fn command(&self, kind: &'static str, outcome: &'static str) {
        self.commands.get_or_create(&CommandLabels { kind, outcome }).inc();
    }

    /// The metrics in the Prometheus (OpenMetrics) text format, gauges set from `live`.
    pub fn render(&self, live: LiveCounts) -> String {
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        for (status, count) in [(NodeStatus::Ready, live.ready), (NodeStatus::Unhealthy, live.unhealthy), (NodeStatus::Down, live.down)] {
            self.nodes.get_or_create(&StateLabel { state: status.as_str() }).set(gauge(count));
        }
        self.sessions.set(gauge(live.sessions));
        self.pending_commands.set(gauge(live.pending_commands));
        self.output_streams.set(gauge(live.output_streams));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The gRPC methods served, as `(service, method)`: every method of the `diplo.v1`
/// services, health and reflection.
fn served_methods() -> &'static std::collections::HashSet<(String, String)> {
    static METHODS: std::sync::OnceLock<std::collections::HashSet<(String, String)>> = std::sync::OnceLock::new();
    METHODS.get_or_init(|| {
        use prost::Message;
        let mut methods = std::collections::HashSet::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(diplo_api::pb::FILE_DESCRIPTOR_SET) {
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = format!("{package}.{}", service.name.unwrap_or_default());
                    for method in service.method {
                        methods.insert((name.clone(), method.name.unwrap_or_default()));
                    }
                }
            }
        }
        for (service, method) in [
            ("grpc.health.v1.Health", "Check"),
            ("grpc.health.v1.Health", "Watch"),
            ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo"),
            ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo"),
        ] {
            methods.insert((service.to_owned(), method.to_owned()));
        }
        methods
    })
}

/// The service and method of a gRPC request path, both [`UNKNOWN`] unless the method
/// is served.
pub fn grpc_method(path: &str) -> (&str, &str) {
    let parts = path.strip_prefix('/').and_then(|rest| rest.split_once('/'));
    match parts {
        Some((service, method)) if served_methods().contains(&(service.to_owned(), method.to_owned())) => (service, method),
        _ => (UNKNOWN, UNKNOWN),
    }
}

/// The standard HTTP methods by name; any other is `OTHER`.
fn bounded_method(method: &http::Method) -> &str {
    match *method {
        http::Method::GET
        | http::Method::POST
        | http::Method::PUT
        | http::Method::PATCH
        | http::Method::DELETE
        | http::Method::HEAD
        | http::Method::OPTIONS => method.as_str(),
        _ => "OTHER",
    }
}

/// The gRPC status code's name, as in the gRPC specification (`OK`, `NOT_FOUND`, …).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_labels_name_served_methods_only() {
        assert_eq!(grpc_method("/diplo.v1.ClusterService/GetStatus"), ("diplo.v1.ClusterService", "GetStatus"));
        assert_eq!(grpc_method("/diplo.v1.AgentService/Session"), ("diplo.v1.AgentService", "Session"));
        assert_eq!(grpc_method("/grpc.health.v1.Health/Check"), ("grpc.health.v1.Health", "Check"));
        for odd in ["/diplo.v1.ClusterService/Nope", "/x.Y/Z", "", "/", "/diplo.v1.ClusterService", "/a/b/c"] {
            assert_eq!(grpc_method(odd), (UNKNOWN, UNKNOWN), "{odd:?}");
        }
    }

    #[test]
    fn rendered_series_are_prefixed_and_bounded() {
        let metrics = Metrics::new();
        metrics.heartbeat();
        metrics.heartbeat();
        metrics.command("create", "ok");
        metrics.grpc_request("/diplo.v1.ClusterService/GetStatus", tonic::Code::Ok, Duration::from_millis(3));
        metrics.grpc_request("/evil/aaaaaaaa", tonic::Code::Unimplemented, Duration::from_millis(1));
        metrics.rest_request("/api/v1/containers/{id}", &http::Method::GET, 200, Duration::from_millis(2));
        metrics.rest_request("/api/v1/containers/{id}", &"BREW".parse().expect("method"), 405, Duration::from_millis(2));
        metrics.deployment_running(Duration::from_secs(4));
        metrics.reconcile_pass(Duration::from_millis(1));
        let text = metrics.render(LiveCounts { ready: 1, down: 2, sessions: 1, pending_commands: 3, ..Default::default() });
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(line.starts_with("diplo_"), "{line}");
        }
        for expected in [
            "diplo_heartbeats_received_total 2",
            r#"diplo_nodes{state="ready"} 1"#,
            r#"diplo_nodes{state="down"} 2"#,
            "diplo_agent_sessions 1",
            "diplo_pending_commands 3",
            "diplo_output_streams 0",
            r#"diplo_commands_sent_total{kind="create",outcome="ok"} 1"#,
            r#"diplo_grpc_request_duration_seconds_count{service="diplo.v1.ClusterService",method="GetStatus",code="OK"} 1"#,
            r#"diplo_grpc_request_duration_seconds_count{service="unknown",method="unknown",code="UNIMPLEMENTED"} 1"#,
            r#"diplo_rest_request_duration_seconds_count{route="/api/v1/containers/{id}",method="GET",status="200"} 1"#,
            r#"diplo_rest_request_duration_seconds_count{route="/api/v1/containers/{id}",method="OTHER",status="405"} 1"#,
            "diplo_deploy_to_running_seconds_count 1",
            "diplo_reconcile_pass_duration_seconds_count 1",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
        assert!(!text.contains("evil") && !text.contains("BREW"), "{text}");
    }
}
