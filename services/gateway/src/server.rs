//! The S3 HTTP server: accept (TCP_NODELAY), give every request an id and a span named
//! after its operation, parse the [`Endpoint`], authenticate, dispatch, and render errors
//! in one place ([`error_response`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_common::shutdown::Shutdown;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::serve::ListenerExt as _;
use http::{HeaderValue, Method, StatusCode};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::auth::{self, AuthContext, SecretKey};
use crate::catalog::Catalog;
use crate::config::{DEV_ACCESS_KEY, DEV_SECRET_KEY, GatewayConfig};
use crate::endpoint::{Endpoint, Query};
use crate::error::S3Error;
use crate::replicas::Store;
use crate::s3::{AppState, Ctx, ReqBody, dispatch};
use crate::xml;

/// The sockets the gateway serves on (bound by the caller, port 0 in tests).
pub struct GatewayListeners {
    pub s3: TcpListener,
    pub admin: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("S3 listener: {0}")]
    Serve(std::io::Error),
    #[error("admin listener: {0}")]
    Admin(std::io::Error),
}

/// Serve S3 until `shutdown` is triggered; in-flight requests finish first.
pub async fn run(cfg: GatewayConfig, listeners: GatewayListeners, shutdown: Shutdown) -> Result<(), GatewayError> {
    // The metrics recorder first: what is recorded before it is installed is lost.
    let _ = aether_common::admin::prometheus();
    if cfg.access_key == DEV_ACCESS_KEY || cfg.secret_key == DEV_SECRET_KEY {
        // Only the published development secret is ever logged.
        let secret = if cfg.secret_key == DEV_SECRET_KEY { DEV_SECRET_KEY } else { "<configured>" };
        tracing::warn!(
            access_key = %cfg.access_key,
            secret_key = secret,
            "using the development credentials; configure access_key/secret_key for anything but a laptop"
        );
    }
    if !cfg.require_auth {
        tracing::warn!("authentication is disabled (require_auth = false)");
    }
    let gateway_id = cfg.gateway_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let catalog = Catalog::new(&cfg.catalog_prefix);
    let catalog_task = tokio::spawn(catalog.clone().run(cfg.metad_endpoints.clone(), shutdown.clone()));
    let store = Store::new(
        catalog,
        gateway_id.clone(),
        cfg.replication_factor,
        cfg.write_quorum,
        cfg.read_quorum,
        Duration::from_secs(cfg.request_timeout_secs.max(1)),
        cfg.source_addr,
    );
    let state = Arc::new(AppState { cfg, store });
    crate::cluster::register_metrics();
    let admin_task = listeners.admin.map(|l| {
        let checks = crate::cluster::readiness(&state);
        let routes = crate::cluster::routes(state.clone(), checks.clone());
        tokio::spawn(aether_common::admin::serve(l, checks, routes, shutdown.clone()))
    });
    let addr = listeners.s3.local_addr().ok();
    tracing::info!(addr = ?addr, gateway_id = %gateway_id, "gateway serving S3");

    let app = axum::Router::new().fallback(handle).with_state(state);
    let listener = listeners.s3.tap_io(|s| {
        let _ = s.set_nodelay(true);
    });
    let wait = shutdown.clone();
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { wait.wait().await }).await;
    catalog_task.abort();
    let admin = match admin_task {
        // After a normal return the shutdown signal has fired and the admin server stops
        // on it too; after a failure, stop it here.
        Some(t) if served.is_ok() => t.await.unwrap_or(Ok(())),
        Some(t) => {
            t.abort();
            Ok(())
        }
        None => Ok(()),
    };
    served.map_err(GatewayError::Serve)?;
    admin.map_err(GatewayError::Admin)?;
    tracing::info!("gateway stopped");
    Ok(())
}

async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let start = Instant::now();
    let request_id = uuid::Uuid::new_v4().simple().to_string().to_ascii_uppercase()[..16].to_string();
    let (parts, body) = req.into_parts();
    let parsed = Endpoint::parse(&parts.method, &parts.uri, &parts.headers, state.cfg.root_domain.as_deref());
    let operation = parsed.as_ref().map(Endpoint::name).unwrap_or("Unknown");
    let span = tracing::info_span!(
        "s3_request",
        otel.name = operation,
        operation,
        request_id = %request_id,
        bucket = tracing::field::Empty,
        key = tracing::field::Empty,
        status = tracing::field::Empty,
        size = tracing::field::Empty,
    );
    aether_common::telemetry::continue_http(&span, &parts.headers);
    if let Ok(e) = &parsed {
        if let Some(b) = e.bucket() {
            span.record("bucket", b);
        }
        if let Some(k) = e.key() {
            span.record("key", k);
        }
    }
    let resource = parts.uri.path().to_string();
    let names = match &parsed {
        Ok(e) => (e.bucket().map(str::to_string), e.key().map(str::to_string)),
        Err(_) => (None, None),
    };
    // A cross-origin request's answer carries the bucket's CORS headers (see below).
    let method = parts.method.clone();
    // A request with a body answered with an error may not have had its body read (a 404
    // before the upload, or no `100 Continue` sent): the connection is closed after the
    // answer, so unread body bytes are never taken for the next request (RFC 9110 10.1.1).
    let has_body = parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    // The object bytes the request carries (aws-chunked bodies declare them apart).
    let header_u64 = |h: &http::HeaderMap, name: &str| h.get(name).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let request_size = header_u64(&parts.headers, "x-amz-decoded-content-length")
        .or_else(|| header_u64(&parts.headers, "content-length"))
        .filter(|n| *n > 0);
    let cors = match (parts.headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()), &parsed) {
        (Some(origin), Ok(e)) if method != Method::OPTIONS => e.bucket().map(|b| (origin.to_string(), b.to_string())),
        _ => None,
    };
    let result = async {
        let endpoint = parsed?;
        if let Endpoint::CorsPreflight { bucket } = &endpoint {
            // Browsers send preflights without credentials.
            return crate::s3::cors::handle_preflight(&state, bucket, &parts.headers);
        }
        if let Endpoint::PostObject { bucket } = &endpoint {
            // Authenticated by the signed policy inside the form.
            return crate::s3::post_object::handle_post_object(&state, bucket, &parts.headers, body).await;
        }
        let auth = authenticate(&state, &parts)?;
        let ctx = Ctx {
            request_id: request_id.clone(),
            access_key: auth.access_key,
            headers: parts.headers,
            query: Query::parse(parts.uri.query()),
        };
        dispatch(&state, &ctx, endpoint, ReqBody { body, payload: auth.payload }).await
    }
    .instrument(span.clone())
    .await;

    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let _enter = span.enter();
            error_response_for(&e, &resource, &request_id, names.0.as_deref(), names.1.as_deref())
        }
    };
    if let Some((origin, bucket)) = &cors {
        crate::s3::cors::decorate(&state, bucket, origin, &method, &mut resp);
    }
    let status = resp.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    span.record("status", status.as_u16());
    // Bytes in for a write, else the answer's bytes out.
    if let Some(n) = request_size.or_else(|| header_u64(resp.headers(), "content-length")) {
        span.record("size", n);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    let status_label = status.as_u16().to_string();
    metrics::counter!("gateway_requests_total", "operation" => operation, "status" => status_label.clone())
        .increment(1);
    metrics::histogram!("gateway_request_duration_seconds", "operation" => operation, "status" => status_label)
        .record(start.elapsed().as_secs_f64());
    resp
}

fn authenticate(state: &AppState, parts: &http::request::Parts) -> Result<AuthContext, S3Error> {
    if !state.cfg.require_auth {
        let payload = auth::sigv4::payload_check_without_auth(&parts.headers)?;
        return Ok(AuthContext { access_key: state.cfg.access_key.clone(), payload });
    }
    let lookup = |access_key: &str| -> Option<SecretKey> { crate::s3::secret_for(state, access_key) };
    auth::authenticate(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &state.cfg.region,
        time::OffsetDateTime::now_utc(),
        &lookup,
    )
}

/// The one place an `S3Error` becomes a response: status, XML `Error` document
/// (code, message, resource, request id), `x-amz-request-id`. Internal details are
/// logged, never sent; 5xx logs at warn/error, 4xx at debug.
pub fn error_response(err: &S3Error, resource: &str, request_id: &str) -> Response {
    error_response_for(err, resource, request_id, None, None)
}

/// `error_response` for a request on `bucket` / `key` (named in NoSuchBucket / NoSuchKey).
pub fn error_response_for(
    err: &S3Error,
    resource: &str,
    request_id: &str,
    bucket: Option<&str>,
    key: Option<&str>,
) -> Response {
    let status = err.status();
    match err {
        S3Error::InternalError(detail) => {
            tracing::error!(request_id, code = err.code(), detail = %detail, "internal error")
        }
        e if e.is_server_error() => {
            tracing::warn!(request_id, code = err.code(), status = status.as_u16(), "request failed")
        }
        _ => tracing::debug!(request_id, code = err.code(), status = status.as_u16(), "client error"),
    }
    if status == StatusCode::NOT_MODIFIED {
        // 304 carries no body.
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = status;
        return resp;
    }
    let message = err.message();
    let doc = xml::ErrorDoc {
        code: err.code(),
        message: &message,
        bucket_name: bucket.filter(|_| matches!(err, S3Error::NoSuchBucket)),
        key: key.filter(|_| matches!(err, S3Error::NoSuchKey)),
        range_requested: match err {
            S3Error::InvalidRange { range, .. } => Some(range.as_str()),
            _ => None,
        },
        actual_object_size: match err {
            S3Error::InvalidRange { size, .. } => Some(*size),
            _ => None,
        },
        proposed_size: match err {
            S3Error::EntityTooLarge { proposed, .. } | S3Error::EntityTooSmall { proposed, .. } => Some(*proposed),
            _ => None,
        },
        min_size_allowed: match err {
            S3Error::EntityTooSmall { min, .. } => Some(*min),
            _ => None,
        },
        max_size_allowed: match err {
            S3Error::EntityTooLarge { max, .. } => Some(*max),
            _ => None,
        },
        condition: match err {
            S3Error::PreconditionFailed(c) => Some(*c),
            _ => None,
        },
        resource: Some(resource),
        request_id,
    };
    let body = xml::to_xml("Error", &doc).unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amz-request-id", v);
    }
    if let S3Error::InvalidRange { size, .. } = err
        && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
    {
        h.insert(http::header::CONTENT_RANGE, v);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn http(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `run` serves (without metad: empty catalog), answers errors as S3 XML with a
    /// request id, stops on shutdown and can start again in the same process.
    #[tokio::test]
    async fn serves_and_restarts_without_metad() {
        for _ in 0..2 {
            let s3 = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = s3.local_addr().unwrap();
            let cfg = GatewayConfig {
                metad_endpoints: vec!["127.0.0.1:1".into()],
                require_auth: false,
                ..GatewayConfig::default()
            };
            let shutdown = Shutdown::new();
            let task = tokio::spawn(run(cfg, GatewayListeners { s3, admin: None }, shutdown.clone()));

            let r = http(addr, "GET /nope/key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            assert!(r.starts_with("HTTP/1.1 404"), "{r}");
            assert!(r.contains("<Code>NoSuchBucket</Code>"), "{r}");
            assert!(r.to_ascii_lowercase().contains("x-amz-request-id:"), "{r}");
            let r = http(addr, "GET /b?website HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            assert!(r.starts_with("HTTP/1.1 501"), "{r}");
            assert!(r.contains("GetBucketWebsite"), "{r}");
            let r = http(addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            assert!(r.contains("<ListAllMyBucketsResult"), "{r}");
            let r =
                http(addr, "PUT /Bad_Name HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            assert!(r.contains("<Code>InvalidBucketName</Code>"), "{r}");

            shutdown.trigger();
            tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn errors_render_once() {
        let resp = error_response(&S3Error::InvalidRange { size: 10, range: "bytes=20-30".into() }, "/b/k", "REQ1");
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(resp.headers().get("content-range").unwrap(), "bytes */10");
        assert_eq!(resp.headers().get("x-amz-request-id").unwrap(), "REQ1");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let s = String::from_utf8(body.to_vec()).unwrap();
        assert!(s.contains("<Code>InvalidRange</Code>"), "{s}");
        assert!(
            s.contains("<RangeRequested>bytes=20-30</RangeRequested><ActualObjectSize>10</ActualObjectSize>"),
            "{s}"
        );
        assert!(s.contains("<RequestId>REQ1</RequestId>"), "{s}");

        let resp = error_response(&S3Error::InternalError("secret detail".into()), "/b", "REQ2");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let s = String::from_utf8(body.to_vec()).unwrap();
        assert!(!s.contains("secret detail"), "{s}");
        assert!(s.contains("<Code>InternalError</Code>"), "{s}");

        let resp = error_response(&S3Error::PreconditionFailed("If-None-Match"), "/b/k", "REQ3");
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let s = String::from_utf8(body.to_vec()).unwrap();
        assert!(s.contains("<Condition>If-None-Match</Condition>"), "{s}");
    }
}
