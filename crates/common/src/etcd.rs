//! Connecting to metad (or a real etcd) through `etcd-client`, with the caller's W3C trace
//! context injected into every call, so a CreateBucket's Txn shows up in the S3 request's
//! trace. The channel balances over all endpoints and fails over between them.

use etcd_client::{Client, ConnectOptions};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::grpc;
use crate::telemetry;

/// Connect to the given endpoints (`host:port` or `http://host:port`).
pub async fn connect(endpoints: &[String], options: Option<ConnectOptions>) -> Result<Client, etcd_client::Error> {
    if endpoints.is_empty() {
        return Err(etcd_client::Error::InvalidArgs("no metad endpoints configured".into()));
    }
    let mut eps = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        eps.push(grpc::endpoint(e).map_err(|err| etcd_client::Error::InvalidArgs(format!("endpoint {e:?}: {err}")))?);
    }
    let channel = tonic::transport::Channel::balance_list(eps.into_iter());
    let traced = ServiceBuilder::new()
        .map_request(|mut req: http::Request<tonic::body::Body>| {
            telemetry::inject_http(req.headers_mut());
            req
        })
        .map_err(tower::BoxError::from)
        .service(channel);
    Client::from_channel(etcd_client::Channel::Custom(BoxCloneSyncService::new(traced)), options).await
}
