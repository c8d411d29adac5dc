//! gRPC channels: one lazily connected, reused channel per peer address, with
//! `TCP_NODELAY` (small responses on kept-alive connections otherwise stall on delayed
//! ACKs) and HTTP/2 keep-alive.

use std::collections::HashMap;

/// Metadata key of a blobd error's machine-readable code (`bucket_deleted`, …).
pub const ERROR_CODE_KEY: &str = "x-aether-code";
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Default)]
pub struct ChannelPool {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
    /// Local address connections are made from (`None`: the system's choice).
    source: Option<std::net::IpAddr>,
}

impl ChannelPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool whose connections leave from `source` (a multi-homed host choosing the
    /// interface of its storage network).
    pub fn with_source(source: Option<std::net::IpAddr>) -> Self {
        Self { source, ..Self::default() }
    }

    /// The channel for `addr` (`host:port` or a full `http://` URI), created on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = endpoint(addr)?.local_address(self.source).connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// The endpoint settings every aether gRPC client uses.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20)))
}

/// Metadata naming the storage node a call to blobd is meant for (its id, binary metadata so
/// any id fits). blobd answers `UNAVAILABLE` to a call meant for another node: an address
/// the layout still gives an old node may now be another's (a container restarted on a
/// reused IP), and that node must not take or confirm writes in the old one's place.
pub const NODE_HEADER: &str = "x-aether-node-bin";

/// A blobd client interceptor: the current trace context, and the node the call is for.
#[derive(Debug, Clone)]
pub struct ToNode(tonic::metadata::BinaryMetadataValue);

impl ToNode {
    pub fn new(node_id: &str) -> Self {
        Self(tonic::metadata::BinaryMetadataValue::from_bytes(node_id.as_bytes()))
    }
}

impl tonic::service::Interceptor for ToNode {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        crate::telemetry::inject_grpc(req.metadata_mut());
        req.metadata_mut().insert_bin(NODE_HEADER, self.0.clone());
        Ok(req)
    }
}

/// blobd's side of [`NODE_HEADER`]: a server interceptor refusing calls meant for another
/// node (calls without the header, from the CLI or older clients, pass).
#[derive(Debug, Clone)]
pub struct ForNode {
    node_id: std::sync::Arc<str>,
}

impl ForNode {
    pub fn new(node_id: &str) -> Self {
        Self { node_id: node_id.into() }
    }
}

impl tonic::service::Interceptor for ForNode {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(value) = req.metadata().get_bin(NODE_HEADER) else { return Ok(req) };
        let wanted =
            value.to_bytes().map_err(|_| tonic::Status::invalid_argument(format!("malformed {NODE_HEADER}")))?;
        if wanted.as_ref() == self.node_id.as_bytes() {
            return Ok(req);
        }
        let wanted = String::from_utf8_lossy(&wanted);
        metrics::counter!("blobd_wrong_node_calls_total").increment(1);
        tracing::warn!(this = %self.node_id, wanted = %wanted, "refused a call meant for another node (stale layout or reused address)");
        Err(tonic::Status::unavailable(format!(
            "wrong node: this is storage node {}, the call is for {wanted}",
            self.node_id
        )))
    }
}

#[cfg(test)]
mod node_header_tests {
    use super::*;
    use tonic::service::Interceptor as _;

    #[test]
    fn a_call_for_another_node_is_refused_and_one_for_this_node_or_none_passes() {
        let mut to_a = ToNode::new("node-a");
        let mut to_odd = ToNode::new("nœud b\n");
        let mut server = ForNode::new("node-a");
        let req = to_a.call(tonic::Request::new(())).unwrap();
        assert!(server.call(req).is_ok());
        assert!(server.call(tonic::Request::new(())).is_ok(), "no header: passes");
        let req = to_odd.call(tonic::Request::new(())).unwrap();
        let e = server.call(req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert_eq!(e.message(), "wrong node: this is storage node node-a, the call is for nœud b\n");
        let mut server_b = ForNode::new("nœud b\n");
        let req = to_odd.call(tonic::Request::new(())).unwrap();
        assert!(server_b.call(req).is_ok(), "any id fits in binary metadata");
    }
}
