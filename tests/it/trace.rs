//! One trace per S3 request, across services: the gateway continues an incoming
//! `traceparent`, injects it into its blobd and metad calls, and both continue it.

use std::sync::OnceLock;
use std::time::Duration;

use aether_tests::{Cluster, ClusterOptions, http1, wait_for};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();

fn exporter() -> &'static InMemorySpanExporter {
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("aether-tests"));
        let _ = tracing_subscriber::registry().with(tracing_subscriber::EnvFilter::new("info")).with(layer).try_init();
        exporter
    })
}

fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_spans_gateway_blobd_and_metad() -> anyhow::Result<()> {
    if aether_tests::skip_on_etcd(
        "one_trace_spans_gateway_blobd_and_metad",
        "it asserts the spans metad's server emits for a Txn; etcd is not instrumented",
    ) {
        return Ok(());
    }
    exporter();
    let c = Cluster::start(ClusterOptions { blobds: 2, gateways: 1, require_auth: false, ..ClusterOptions::default() })
        .await?;
    let addr = c.gateways[0].s3_addr.clone();
    let client_span = "00f067aa0ba902b7";

    // CreateBucket: gateway span + metad Txn span in one trace.
    let t1 = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{t1}-{client_span}-01");
    let r = http1::request(&addr, "PUT", "/traced", &[("traceparent", tp.as_str())], Vec::new()).await?;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let trace1 = TraceId::from_hex(t1)?;
    let spans = wait_for("CreateBucket spans from gateway and metad", Duration::from_secs(10), || async {
        let s = spans_of(trace1);
        (s.iter().any(|s| s.name == "CreateBucket") && s.iter().any(|s| s.name.starts_with("etcd."))).then_some(s)
    })
    .await?;
    let gw = spans.iter().find(|s| s.name == "CreateBucket").expect("gateway span");
    assert_eq!(gw.parent_span_id, SpanId::from_hex(client_span)?, "gateway continues the incoming traceparent");
    let ids: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    for m in spans.iter().filter(|s| s.name.starts_with("etcd.")) {
        assert!(ids.contains(&m.parent_span_id), "metad span's parent is a span of this trace");
    }
    let txn = spans.iter().find(|s| s.name == "etcd.Txn").expect("the bucket's Txn in metad");
    let propose = spans.iter().find(|s| s.name == "raft.propose_apply").expect("metad's proposal span");
    assert_eq!(propose.parent_span_id, txn.span_context.span_id(), "the proposal is a child of the Txn");

    // PutObject: gateway span + one blob.put per replica, children of the gateway's spans.
    let t2 = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{t2}-{client_span}-01");
    let r = http1::request(&addr, "PUT", "/traced/obj", &[("traceparent", tp.as_str())], b"hello".to_vec()).await?;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let trace2 = TraceId::from_hex(t2)?;
    let spans = wait_for("PutObject spans from gateway and both blobd", Duration::from_secs(10), || async {
        let s = spans_of(trace2);
        (s.iter().any(|s| s.name == "PutObject") && s.iter().filter(|s| s.name == "blob.put").count() == 2).then_some(s)
    })
    .await?;
    let ids: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    for b in spans.iter().filter(|s| s.name == "blob.put") {
        assert!(ids.contains(&b.parent_span_id), "blob.put's parent is a span of this trace");
    }
    // Each replica's write: a gateway span per replica, and blobd's fsync and index commit
    // under its blob.put.
    let spans = wait_for("blobd's fsync and index spans", Duration::from_secs(10), || async {
        let s = spans_of(trace2);
        (s.iter().filter(|s| s.name == "index.commit").count() == 2).then_some(s)
    })
    .await?;
    assert_eq!(spans.iter().filter(|s| s.name == "replica.put").count(), 2, "one gateway span per replica");
    let puts: Vec<SpanId> = spans.iter().filter(|s| s.name == "blob.put").map(|s| s.span_context.span_id()).collect();
    for name in ["blob.fsync", "index.commit"] {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 2, "{name} once per replica");
        for s in found {
            assert!(puts.contains(&s.parent_span_id), "{name}'s parent is a blob.put");
        }
    }
    Ok(())
}
