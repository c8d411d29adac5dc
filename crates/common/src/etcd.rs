//! Connecting to metad (or a real etcd) through `etcd-client`, with the caller's W3C trace
//! context injected into every call, so a CreateBucket's Txn shows up in the S3 request's
//! trace.
//!
//! Failover: the channel is pinned to one endpoint at a time (like etcd's own clients) and
//! moves to the next endpoint as soon as a call to the pinned one fails at the transport
//! level (connection refused or reset: the member is down). tonic's `balance_list` does not
//! do this: after a member dies, its reconnecting service still reports ready, so the
//! power-of-two-choices balancer keeps sending a share of the calls (and any new watch or
//! keep-alive stream) to the dead member, each one failing, for as long as it stays down.
//! Here the one call that hits the dead member fails (the caller retries, as it must for
//! any etcd error) and every later call goes to the next member. A call that fails with a
//! gRPC status (etcd answered) does not move the pin.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use etcd_client::{Client, ConnectOptions};
use tonic::transport::Channel;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::grpc;
use crate::telemetry;

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

/// Connect to the given endpoints (`host:port` or `http://host:port`). Connections are
/// made lazily, so this succeeds while every endpoint is down; calls fail until one is up.
pub async fn connect(endpoints: &[String], options: Option<ConnectOptions>) -> Result<Client, etcd_client::Error> {
    let channel = FailoverChannel::new(endpoints)?;
    let traced = ServiceBuilder::new()
        .map_request(|mut req: Request| {
            telemetry::inject_http(req.headers_mut());
            req
        })
        .service(channel);
    Client::from_channel(etcd_client::Channel::Custom(BoxCloneSyncService::new(traced)), options).await
}

/// One lazily connected channel per endpoint; calls go to the pinned one, and a transport
/// failure moves the pin (shared by every clone) to the next endpoint.
pub struct FailoverChannel {
    endpoints: Arc<[String]>,
    /// This clone's handles (a tonic `Channel` clone carries its own readiness slot, so
    /// `poll_ready` and `call` must use the same handle).
    channels: Vec<Channel>,
    pinned: Arc<AtomicUsize>,
    /// The index `poll_ready` readied, used by the following `call`.
    readied: Option<usize>,
}

impl Clone for FailoverChannel {
    fn clone(&self) -> Self {
        Self {
            endpoints: self.endpoints.clone(),
            channels: self.channels.clone(),
            pinned: self.pinned.clone(),
            readied: None,
        }
    }
}

impl FailoverChannel {
    pub fn new(endpoints: &[String]) -> Result<Self, etcd_client::Error> {
        if endpoints.is_empty() {
            return Err(etcd_client::Error::InvalidArgs("no metad endpoints configured".into()));
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let ep =
                grpc::endpoint(e).map_err(|err| etcd_client::Error::InvalidArgs(format!("endpoint {e:?}: {err}")))?;
            // Lazy: a failed connect never poisons the channel; the next call reconnects.
            channels.push(ep.connect_lazy());
        }
        Ok(Self { endpoints: endpoints.into(), channels, pinned: Arc::new(AtomicUsize::new(0)), readied: None })
    }
}

impl Service<Request> for FailoverChannel {
    type Response = Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let i = self.readied.unwrap_or_else(|| self.pinned.load(Ordering::Relaxed) % self.channels.len());
        self.readied = Some(i);
        self.channels[i].poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(i) = self.readied.take() else {
            return Box::pin(async { Err("FailoverChannel::call without poll_ready".into()) });
        };
        let fut = self.channels[i].call(req);
        let (pinned, endpoints) = (self.pinned.clone(), self.endpoints.clone());
        Box::pin(async move {
            match fut.await {
                Ok(resp) => Ok(resp),
                Err(e) => {
                    let next = (i + 1) % endpoints.len();
                    // Only the first failure seen on this endpoint moves the pin.
                    if endpoints.len() > 1
                        && pinned.compare_exchange(i, next, Ordering::AcqRel, Ordering::Relaxed).is_ok()
                    {
                        tracing::warn!(
                            from = %endpoints[i], to = %endpoints[next], error = %e,
                            "metad endpoint failed; failing over"
                        );
                    }
                    Err(e.into())
                }
            }
        })
    }
}
