//! A minimal OTLP/gRPC trace receiver for the compose e2e test, which cannot pull Jaeger:
//! it accepts `TraceService/Export` on the given address (default `0.0.0.0:4317`) and
//! prints every span as one JSON line on stdout —
//! `{"service":…,"trace_id":…,"span_id":…,"parent_span_id":…,"name":…}` (ids in hex,
//! the parent empty for a root span) — for the test to read from the container's log.

use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = std::io::stdout().lock();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.iter().flat_map(|s| s.spans.iter()) {
                let line = serde_json::json!({
                    "service": service,
                    "trace_id": hex::encode(&span.trace_id),
                    "span_id": hex::encode(&span.span_id),
                    "parent_span_id": hex::encode(&span.parent_span_id),
                    "name": span.name,
                });
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "0.0.0.0:4317".to_string()).parse()?;
    eprintln!("otlpsink listening on {addr}");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink))
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}
