//! The admin HTTP server each service runs apart from client traffic: `/health`
//! (liveness), `/ready` (readiness, decided by the service), Prometheus `/metrics`,
//! `GET`/`PUT /log_level` (the tracing filter, changed at runtime), plus whatever routes the
//! service adds (the gateway's `/cluster`).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// A readiness flag a service sets once it can serve.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    /// This flag as a readiness check; `what` names it when it is not set.
    pub fn check(&self, what: &'static str) -> ReadyCheck {
        let flag = self.clone();
        ReadyCheck::new(move || if flag.get() { Ok(()) } else { Err(what.to_string()) })
    }
}

/// One condition of readiness: `Err(reason)` while it does not hold.
#[derive(Clone)]
pub struct ReadyCheck(Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl ReadyCheck {
    pub fn new(f: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
    pub fn eval(&self) -> Result<(), String> {
        (self.0)()
    }
}

impl std::fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadyCheck")
    }
}

/// Histogram buckets (seconds) for every `*_seconds` metric: exported as Prometheus
/// histograms, so latency quantiles aggregate across instances in PromQL.
const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first call).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets not set");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Serve `/health`, `/ready` (every check passes), `/metrics`, `/log_level` and the
/// service's `extra` routes until shutdown.
pub async fn serve(
    listener: TcpListener,
    checks: Vec<ReadyCheck>,
    extra: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let _ = prometheus();
    let checks = Arc::new(checks);
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let checks = checks.clone();
                async move {
                    let failing: Vec<String> = checks.iter().filter_map(|c| c.eval().err()).collect();
                    if failing.is_empty() {
                        (StatusCode::OK, "ready\n".to_string())
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", failing.join("; ")))
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                match prometheus() {
                    Some(h) => (StatusCode::OK, h.render()),
                    None => (StatusCode::SERVICE_UNAVAILABLE, String::from("no recorder\n")),
                }
            }),
        )
        .route(
            "/log_level",
            get(|| async {
                match crate::telemetry::log_level() {
                    Some(l) => (StatusCode::OK, format!("{l}\n")),
                    None => (StatusCode::NOT_FOUND, "logging is not set up by this process\n".to_string()),
                }
            })
            .put(|body: String| async move {
                match crate::telemetry::set_log_level(body.trim()) {
                    Ok(()) => (StatusCode::OK, format!("{}\n", body.trim())),
                    Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }),
        )
        .merge(extra);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await
}
