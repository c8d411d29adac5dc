//! The admin HTTP server each service runs apart from client traffic: `/health`
//! (liveness), `/ready` (readiness, decided by the service) and Prometheus `/metrics`.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first call).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// Serve `/health`, `/ready` (all `checks` true) and `/metrics` until shutdown.
pub async fn serve(listener: TcpListener, checks: Vec<Readiness>, shutdown: Shutdown) -> std::io::Result<()> {
    let _ = prometheus();
    let checks = Arc::new(checks);
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let checks = checks.clone();
                async move {
                    if checks.iter().all(Readiness::get) {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
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
        );
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await
}
