//! Log output (readable lines for people, JSON lines for production) and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry traces over OTLP.
//!
//! A reply's trace is the span of the request that accepted it: its W3C
//! `traceparent` is stored with the reply, and every delivery attempt and the
//! webhook that confirms it join that trace, from any process, after any
//! restart. Only spans of [`TARGET`] are exported, never log events, and their
//! fields are ids, counts and outcomes: never a token, a URL or a reply's text.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of every span that becomes part of a reply's trace. Log lines
/// never show these spans, so the log reads the same with traces on or off.
pub const TARGET: &str = "goldrelay::trace";

/// Set once traces are exported; until then nothing here does any work.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Keeps the trace exporter alive; [`Traces::shutdown`] sends what is left.
pub struct Traces(Option<SdkTracerProvider>);

impl Traces {
    /// Exports the spans still buffered and stops. Blocks for at most the
    /// exporter's timeout, on a thread of its own.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.0.take() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info`
/// level. Traces are exported only when an OTLP endpoint is configured
/// (see [`exporting_wanted`]); otherwise no OpenTelemetry layer exists.
pub fn init(format: LogFormat) -> Traces {
    init_with(format, |name| std::env::var(name).ok())
}

fn init_with(format: LogFormat, env: impl Fn(&str) -> Option<String>) -> Traces {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,actix_server=warn"))
        .add_directive(format!("{TARGET}=off").parse().expect("a valid directive"));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Text => log.compact().with_filter(filter).boxed(),
        LogFormat::Json => log.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let provider = exporting_wanted(&env).then(|| provider(&env)).flatten();
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("goldrelay"))
            .with_filter(filter_fn(|meta| meta.is_span() && meta.target() == TARGET))
            .with_filter(LevelFilter::INFO)
    });
    let installed = tracing_subscriber::registry()
        .with(log)
        .with(traces)
        .try_init();
    if installed.is_ok() && provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Traces(provider)
}

/// Whether the standard variables ask for traces: an OTLP endpoint is set,
/// and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says no.
pub fn exporting_wanted(env: &impl Fn(&str) -> Option<String>) -> bool {
    let set = |name| env(name).is_some_and(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter =
        env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    endpoint && !disabled && !no_exporter
}

/// The OTLP/HTTP exporter, configured by the standard `OTEL_*` variables
/// (endpoint, headers, timeout, sampler, batch sizes, resource attributes).
fn provider(env: &impl Fn(&str) -> Option<String>) -> Option<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(e) => {
            // Before the subscriber exists: standard error is the only voice.
            eprintln!("goldrelay: traces are off: the OTLP exporter could not start: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("goldrelay");
    }
    Some(
        SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build(),
    )
}

/// The current span's W3C `traceparent`, to store with what it creates;
/// `None` when traces are off.
pub fn traceparent() -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    span.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the span `traceparent` names (an incoming
/// header, or the one stored with a reply). A missing or malformed one
/// leaves `span` where it was: a root of its own trace.
pub fn join(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| EXPORTING.load(Ordering::Relaxed)) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.trim().to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Whether traces are being exported (to skip work only a trace needs).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn traces_are_wanted_only_with_an_endpoint_and_not_disabled() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(!exporting_wanted(&env(&[])));
        assert!(!exporting_wanted(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(exporting_wanted(&env(&[endpoint])));
        assert!(exporting_wanted(&env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )])));
        assert!(!exporting_wanted(&env(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "TRUE")
        ])));
        assert!(!exporting_wanted(&env(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
    }

    #[test]
    fn with_traces_off_nothing_is_stored_or_joined() {
        assert_eq!(traceparent(), None);
        join(
            &tracing::Span::none(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
    }
}
