//! `tracing` set-up (env filter, optional JSON, OTLP export when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and W3C trace-context propagation over gRPC
//! metadata and HTTP headers.

use std::sync::{Mutex, OnceLock};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub service_name: String,
    /// An `EnvFilter` directive, e.g. `info` or `aether_gateway=debug,info`.
    pub log_level: String,
    pub json: bool,
    /// Parent-based ratio sampler for new root traces (0.0 ..= 1.0).
    pub sample_ratio: f64,
}

/// Keeps the OTLP pipeline alive; flushes spans when dropped.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

static INIT: OnceLock<()> = OnceLock::new();

type Reload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static RELOAD: OnceLock<Reload> = OnceLock::new();
static LOG_LEVEL: OnceLock<Mutex<String>> = OnceLock::new();

/// The log filter in force (`None` when [`init`] did not install the subscriber).
pub fn log_level() -> Option<String> {
    LOG_LEVEL.get().map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Change the log filter at runtime (EnvFilter syntax, e.g. `aether_gateway=debug,info`).
pub fn set_log_level(directives: &str) -> Result<(), String> {
    let (Some(reload), Some(level)) = (RELOAD.get(), LOG_LEVEL.get()) else {
        return Err("logging is not set up by this process".to_string());
    };
    reload(directives)?;
    *level.lock().unwrap_or_else(|e| e.into_inner()) = directives.to_string();
    tracing::info!(log_level = directives, "log level changed");
    Ok(())
}

/// Install the global subscriber once per process (later calls are no-ops, so tests and
/// `aether server` may call it for each service).
pub fn init(cfg: &TelemetryConfig) -> TelemetryGuard {
    let mut guard = TelemetryGuard { provider: None };
    if INIT.set(()).is_err() {
        return guard;
    }
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());

    let (filter, level) = match EnvFilter::try_new(&cfg.log_level) {
        Ok(f) => (f, cfg.log_level.clone()),
        Err(e) => {
            eprintln!("invalid log level {:?} ({e}); using info", cfg.log_level);
            (EnvFilter::new("info"), "info".to_string())
        }
    };
    // The filter sits behind a reload handle: `PUT /log_level` on the admin port changes it.
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_LEVEL.set(Mutex::new(level));
    let _ = RELOAD.set(Box::new(move |directives: &str| {
        let f = EnvFilter::try_new(directives).map_err(|e| format!("invalid log filter {directives:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    }));
    let otel_layer = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|s| !s.is_empty()).and_then(|_| {
        // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT itself.
        let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("OTLP exporter disabled: {e}");
                return None;
            }
        };
        let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(cfg.sample_ratio.clamp(0.0, 1.0)),
        ));
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(cfg.service_name.clone()).build())
            .build();
        let tracer = provider.tracer("aether");
        opentelemetry::global::set_tracer_provider(provider.clone());
        guard.provider = Some(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    });

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let res = if cfg.json {
        registry.with(tracing_subscriber::fmt::layer().json()).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_target(true)).try_init()
    };
    if let Err(e) = res {
        eprintln!("tracing subscriber already set: {e}");
    }
    guard
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

/// Write the current span's context into outgoing HTTP (or raw gRPC) headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// Write the current span's context into outgoing gRPC metadata (`traceparent`).
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// Make `span` a child of the trace context carried in incoming gRPC metadata.
pub fn continue_grpc(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)));
    let _ = span.set_parent(cx);
}

/// Make `span` a child of an incoming HTTP request's `traceparent`, if any.
pub fn continue_http(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        let _ = span.set_parent(cx);
    }
}

/// The current span's W3C `traceparent`, for a message that carries it in its own field
/// (empty if there is no trace context).
pub fn current_traceparent() -> String {
    let mut headers = http::HeaderMap::new();
    inject_http(&mut headers);
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_default()
}

/// Make `span` a child of a `traceparent` carried in a message field (ignored if empty or
/// malformed).
pub fn continue_traceparent(span: &tracing::Span, traceparent: &str) {
    if let Ok(v) = http::HeaderValue::from_str(traceparent)
        && !traceparent.is_empty()
    {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", v);
        continue_http(span, &headers);
    }
}

/// A tonic client interceptor that injects the current trace context into every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_grpc(req.metadata_mut());
        Ok(req)
    }
}
