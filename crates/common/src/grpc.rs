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
