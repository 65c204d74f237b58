//! Logs and traces of the two daemons, set up in one place.
//!
//! * Logs go to stderr, filtered by `DIPLO_LOG` (an `EnvFilter` directive), in the human
//!   format or, with `DIPLO_LOG_FORMAT=json`, one JSON object per line. Any other value of
//!   `DIPLO_LOG_FORMAT` is an error at start.
//! * When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//!   `tracing` spans are also exported over OTLP/gRPC, batched on the tokio runtime, with the
//!   resource attribute `service.name` from `OTEL_SERVICE_NAME` or the daemon's default
//!   name. When neither is set no exporter is built and nothing leaves the process.
//! * Trace context crosses process boundaries as a W3C `traceparent`
//!   ([`current_traceparent`], [`continue_trace`]): in REST and gRPC request headers and in
//!   the commands the control plane sends to agents.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that chooses the log format.
pub const LOG_FORMAT_VAR: &str = "DIPLO_LOG_FORMAT";
/// The variable whose presence turns the OTLP trace exporter on.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The trace-specific endpoint, which also turns the exporter on.
pub const OTLP_TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The variable that overrides the exported `service.name`.
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";
/// The HTTP header (and gRPC metadata key) carrying W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `DIPLO_LOG_FORMAT` holds something else than `text` or `json`.
    #[error("invalid {LOG_FORMAT_VAR} {0:?}: expected \"text\" (the default) or \"json\"")]
    LogFormat(String),
    /// The OTLP exporter could not be built from the `OTEL_*` variables.
    #[error("cannot export traces to {OTLP_ENDPOINT_VAR}: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's human-readable format (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The format named by the value of `DIPLO_LOG_FORMAT`: unset or empty is the human
    /// format; names are case-insensitive.
    pub fn parse(value: Option<&str>) -> Result<Self, TelemetryError> {
        match value.map(str::trim).unwrap_or("").to_ascii_lowercase().as_str() {
            "" | "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(TelemetryError::LogFormat(value.unwrap_or_default().to_owned())),
        }
    }

    /// The format `DIPLO_LOG_FORMAT` asks for.
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::parse(std::env::var(LOG_FORMAT_VAR).ok().as_deref())
    }
}

/// The log layer for `format`, writing through `writer`.
pub fn log_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => Box::new(tracing_subscriber::fmt::layer().with_writer(writer)),
        LogFormat::Json => Box::new(tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(writer)),
    }
}

/// Whether the `OTEL_*` variables ask for trace export.
pub fn otlp_enabled() -> bool {
    [OTLP_ENDPOINT_VAR, OTLP_TRACES_ENDPOINT_VAR].iter().any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// The `service.name` to export under: `OTEL_SERVICE_NAME` when set, else `default`.
pub fn service_name(default: &str) -> String {
    std::env::var(SERVICE_NAME_VAR).ok().filter(|name| !name.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans not exported yet.
#[must_use = "spans not exported yet are lost unless shutdown is called"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still batched and stops the exporter (a no-op without one).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The batch processor runs on the runtime; waiting for it must not hold a worker.
            let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = result {
                eprintln!("telemetry: flushing spans failed: {err}");
            }
        }
    }
}

/// Installs the process's subscriber: the `DIPLO_LOG` filter (else `default_filter`), the
/// log layer in the `DIPLO_LOG_FORMAT` format on stderr, and the OTLP layer when
/// [`otlp_enabled`]. Must run inside a tokio runtime (the exporter's batches run on it).
pub fn init(default_service: &str, default_filter: &str) -> Result<Telemetry, TelemetryError> {
    let format = LogFormat::from_env()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIPLO_LOG").unwrap_or_else(|_| default_filter.into());
    let provider = if otlp_enabled() { Some(tracer_provider(&service_name(default_service))?) } else { None };
    let otel = provider.as_ref().map(|provider| {
        // The propagation of this crate is explicit (`traceparent` strings); the global
        // provider lets libraries that ask for one find it.
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing_opentelemetry::layer().with_tracer(provider.tracer("diplo"))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(log_layer(format, std::io::stderr))
        .with(otel)
        .try_init()
        .map_err(|err| TelemetryError::Subscriber(err.to_string()))?;
    Ok(Telemetry { provider })
}

fn tracer_provider(service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter =
        opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(|err| TelemetryError::Exporter(err.to_string()))?;
    let batches = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build();
    Ok(SdkTracerProvider::builder().with_span_processor(batches).with_resource(resource).build())
}

/// The W3C `traceparent` of the current span, when it is part of an exported trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`, when it is part of an exported trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| format_traceparent(&span_context))
}

/// Makes `span` a child of the remote span named by `traceparent`; a value that is not a
/// valid W3C traceparent is ignored (the span starts a trace of its own).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if let Some(remote) = parse_traceparent(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// Renames `span` as exported (a span's name is fixed when it starts, but an HTTP
/// request's route is known only after routing).
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

/// `00-<trace id>-<span id>-<flags>`.
fn format_traceparent(context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())
}

/// The span context in a version-00 W3C traceparent; `None` unless every part is
/// well-formed and the ids are not all zeros.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if version != "00" || parts.next().is_some() || !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn the_log_format_is_text_json_or_an_error_naming_the_variable() {
        for (value, expected) in [(None, LogFormat::Text), (Some(""), LogFormat::Text), (Some("text"), LogFormat::Text)] {
            assert_eq!(LogFormat::parse(value).expect("accepted"), expected, "{value:?}");
        }
        assert_eq!(LogFormat::parse(Some("JSON")).expect("accepted"), LogFormat::Json);
        let err = LogFormat::parse(Some("yaml")).expect_err("refused").to_string();
        assert!(err.contains(LOG_FORMAT_VAR) && err.contains("yaml"), "{err}");
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_are_one_parseable_object_per_line() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(log_layer(LogFormat::Json, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("deploy", deployment = "web");
            let _entered = span.enter();
            tracing::info!(node_id = "n1", count = 3, "container created\nwith a newline");
            tracing::warn!("second line");
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON object");
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["fields"]["message"], "container created\nwith a newline");
        assert_eq!(first["fields"]["node_id"], "n1");
        assert_eq!(first["fields"]["count"], 3);
        assert_eq!(first["span"]["deployment"], "web");
        let second: serde_json::Value = serde_json::from_str(lines[1]).expect("a JSON object");
        assert_eq!(second["level"], "WARN");
    }

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_refused() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(value).expect("valid");
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(format_traceparent(&context), value);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn without_an_exporter_there_is_no_traceparent() {
        let span = tracing::info_span!("untraced");
        assert_eq!(traceparent_of(&span), None);
        continue_trace(&span, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    }
}
