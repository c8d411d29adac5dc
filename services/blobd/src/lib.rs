//! blobd: aether's storage daemon. Object bodies live as files under the data dir
//! (named by random blob ids, never by key), the object index in SQLite; served over the
//! `blob.v1` gRPC API. Registers itself in metad (layout entry + liveness lease).

mod blocks;
mod convert;
mod error;
mod files;
mod index;
mod reap;
mod register;
mod scrub;
mod service;
mod sync;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aether_common::admin::Readiness;
use aether_common::catalog::{Keys, NodeEntry, NodeState};
use aether_common::shutdown::Shutdown;
use aether_proto::blob::v1::blob_service_server::BlobServiceServer;
use tonic::transport::server::TcpIncoming;

pub use error::{BlobdError, CODE_KEY, RETRYABLE_KEY};

/// Largest gRPC message accepted (body chunks are ~1 MiB).
const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobdConfig {
    /// Blobs, staging area, index and node id live here.
    pub data_dir: PathBuf,
    /// `None`: read `<data_dir>/node_id`, or generate a uuid v4 once and store it there.
    pub node_id: Option<String>,
    pub zone: String,
    pub weight: u32,
    pub metad_endpoints: Vec<String>,
    /// The address other services dial; default: the gRPC listener's local address.
    pub advertise_addr: Option<String>,
    pub catalog_prefix: String,
    pub lease_ttl_secs: i64,
    /// Write this node's layout entry (`nodes/<id>`) when absent.
    pub auto_join: bool,
    /// Abort multipart uploads idle this long (initiated and no part uploaded since),
    /// freeing their parts; `None`: never (S3 keeps them until a lifecycle rule says).
    pub mpu_reap_age_secs: Option<u64>,
    /// Replicas per object: must equal the gateways' (placement decides which keys this
    /// daemon owns and hands off the rest).
    pub replication_factor: usize,
    /// Seconds between anti-entropy / handoff cycles; 0 turns the loop off.
    pub sync_interval_secs: u64,
    /// Body bytes per second anti-entropy and handoff push at most; `None`: no cap.
    pub sync_max_bytes_per_sec: Option<u64>,
    /// Pushes in flight at once per peer.
    pub sync_concurrency: usize,
    /// Tombstones are kept this long, then dropped; it must exceed the longest time a
    /// replica can stay behind (down or cut off) and still rejoin.
    pub tombstone_grace_secs: u64,
    /// Mark an `active` node `removed` after this many seconds without a liveness lease,
    /// so its keys re-replicate to other nodes; `None`: never (opt-in).
    pub evict_grace_secs: Option<u64>,
    /// Seconds between the end of one scrub pass (every blob read against its block
    /// checksums) and the next; 0 turns the scrub off.
    pub scrub_interval_secs: u64,
    /// Bytes per second the scrub reads at most (0: no cap).
    pub scrub_bytes_per_sec: u64,
    /// Each scrub pass first removes blob files the index does not reference, and staging
    /// files, older than this (younger ones may be writes in flight).
    pub orphan_min_age_secs: u64,
    /// Local address connections to other daemons leave from (`None`: the system's choice).
    pub source_addr: Option<std::net::IpAddr>,
}

impl Default for BlobdConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data/blobd"),
            node_id: None,
            zone: String::new(),
            weight: 1,
            metad_endpoints: vec![String::from("127.0.0.1:2379")],
            advertise_addr: None,
            catalog_prefix: aether_common::catalog::DEFAULT_PREFIX.to_string(),
            lease_ttl_secs: 10,
            auto_join: true,
            mpu_reap_age_secs: None,
            replication_factor: 3,
            sync_interval_secs: 30,
            sync_max_bytes_per_sec: None,
            sync_concurrency: 4,
            tombstone_grace_secs: 7 * 24 * 3600,
            evict_grace_secs: None,
            scrub_interval_secs: 24 * 3600,
            scrub_bytes_per_sec: 16 << 20,
            orphan_min_age_secs: 3600,
            source_addr: None,
        }
    }
}

pub struct BlobdListeners {
    pub grpc: tokio::net::TcpListener,
    pub admin: Option<tokio::net::TcpListener>,
}

/// The node id stored in `<data_dir>/node_id`, created (uuid v4, fsynced) on first use.
pub fn read_or_create_node_id(data_dir: &Path) -> std::io::Result<String> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = data_dir.join("node_id.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(id.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    files::fsync_dir(data_dir)?;
    Ok(id)
}

/// Serve until `shutdown`, then stop cleanly (revoke the lease, close the index).
pub async fn run(cfg: BlobdConfig, listeners: BlobdListeners, shutdown: Shutdown) -> Result<(), BlobdError> {
    // The metrics recorder first: what is recorded before it is installed is lost.
    let _ = aether_common::admin::prometheus();
    let data_dir = cfg.data_dir.clone();
    let node_id = match &cfg.node_id {
        Some(id) => id.clone(),
        None => {
            let d = data_dir.clone();
            tokio::task::spawn_blocking(move || read_or_create_node_id(&d)).await??
        }
    };
    let d = data_dir.clone();
    let dir = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&d)?;
        files::BlobDir::open(&d)
    })
    .await??;
    let index = index::Index::open(&data_dir).await?;
    let store = match service::Store::new(dir, index.clone(), node_id.clone()).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            index.close().await;
            return Err(e);
        }
    };
    // Before serving: a daemon back from an absence longer than the tombstone grace serves
    // nothing of what it holds until its first sync cycle has reconciled it.
    if cfg.sync_interval_secs > 0
        && let Err(e) = sync::check_absence(&store, Duration::from_secs(cfg.tombstone_grace_secs)).await
    {
        index.close().await;
        return Err(e);
    }
    // A local stop signal: follows the caller's, and also fires when the server ends on
    // its own (without stopping the caller's other services).
    let stop = Shutdown::new();
    let forward = {
        let (outer, stop) = (shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            outer.wait().await;
            stop.trigger();
        })
    };
    let index_ready = Readiness::default();
    index_ready.set(true);
    let registered = Readiness::default();

    let local = listeners.grpc.local_addr()?;
    let addr = match &cfg.advertise_addr {
        Some(a) => a.clone(),
        // Listening on every interface says nothing about which address others reach:
        // advertise the one the route to metad leaves from (a container's own address).
        None if local.ip().is_unspecified() => match outward_ip(&cfg.metad_endpoints).await {
            Some(ip) => std::net::SocketAddr::new(ip, local.port()).to_string(),
            None => local.to_string(),
        },
        None => local.to_string(),
    };
    metrics::gauge!("blobd_node_info", "node_id" => node_id.clone(), "zone" => cfg.zone.clone()).set(1.0);
    // Every counter exists (at zero) from the start, for scrapers and dashboards.
    for name in [
        "blobd_puts_total",
        "blobd_gets_total",
        "blobd_bytes_written_total",
        "blobd_bytes_read_total",
        "blobd_mpu_reaped_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    tracing::info!(%node_id, grpc = %local, advertise = %addr, data_dir = %data_dir.display(), "blobd starting");

    let admin = listeners.admin.map(|l| {
        let checks = vec![index_ready.check("index not open"), registered.check("not registered in metad")];
        tokio::spawn(aether_common::admin::serve(l, checks, Default::default(), stop.clone()))
    });

    let reg = register::Registration {
        endpoints: cfg.metad_endpoints.clone(),
        keys: Keys::new(&cfg.catalog_prefix),
        node_id: node_id.clone(),
        node: NodeEntry { addr: addr.clone(), zone: cfg.zone.clone(), weight: cfg.weight, state: NodeState::Active },
        auto_join: cfg.auto_join,
        lease_ttl_secs: cfg.lease_ttl_secs,
        started_at: now_rfc3339(),
        auto_port: (cfg.advertise_addr.is_none() && local.ip().is_unspecified()).then_some(local.port()),
        replication_factor: cfg.replication_factor.max(1),
    };
    let registration = tokio::spawn(register::run(reg, registered.clone(), stop.clone()));

    let reaper = cfg
        .mpu_reap_age_secs
        .map(|age| tokio::spawn(reap::run(Arc::clone(&store), Duration::from_secs(age), stop.clone())));

    let syncer = (cfg.sync_interval_secs > 0).then(|| {
        let sc = sync::SyncConfig {
            interval: Duration::from_secs(cfg.sync_interval_secs),
            replication_factor: cfg.replication_factor.max(1),
            max_bytes_per_sec: cfg.sync_max_bytes_per_sec,
            concurrency: cfg.sync_concurrency.max(1),
            tombstone_grace: Duration::from_secs(cfg.tombstone_grace_secs),
            evict_grace: cfg.evict_grace_secs.map(Duration::from_secs),
            endpoints: cfg.metad_endpoints.clone(),
            keys: Keys::new(&cfg.catalog_prefix),
            source_addr: cfg.source_addr,
        };
        tokio::spawn(sync::run(Arc::clone(&store), sc, stop.clone()))
    });

    let scrubber = (cfg.scrub_interval_secs > 0).then(|| {
        tokio::spawn(scrub::run(
            Arc::clone(&store),
            Duration::from_secs(cfg.scrub_interval_secs),
            cfg.scrub_bytes_per_sec,
            Duration::from_secs(cfg.orphan_min_age_secs),
            stop.clone(),
        ))
    });

    let svc = BlobServiceServer::new(service::BlobSvc::new(store))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // Calls meant for another node (a stale layout, a reused address) are refused.
    let svc = tonic::service::interceptor::InterceptedService::new(svc, aether_common::grpc::ForNode::new(&node_id));
    let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    let sd = stop.clone();
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async move { sd.wait().await })
        .await;
    // Whatever ended the server, stop the rest.
    stop.trigger();
    forward.abort();
    index_ready.set(false);
    if let Some(r) = reaper {
        let _ = r.await;
    }
    if let Some(s) = syncer {
        let _ = s.await;
    }
    if let Some(s) = scrubber {
        let _ = s.await;
    }
    if tokio::time::timeout(Duration::from_secs(5), registration).await.is_err() {
        tracing::warn!("registration did not stop in time");
    }
    if let Some(a) = admin {
        match a.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "admin server failed"),
            Err(e) => tracing::warn!(error = %e, "admin server task failed"),
        }
    }
    index.close().await;
    tracing::info!(%node_id, "blobd stopped");
    served.map_err(BlobdError::from)
}

/// The local address of the route to the first metad endpoint that resolves (a UDP
/// `connect` sends nothing; it only picks the route).
pub(crate) async fn outward_ip(endpoints: &[String]) -> Option<std::net::IpAddr> {
    for ep in endpoints {
        let hostport = ep.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
        let Ok(mut addrs) = tokio::net::lookup_host(hostport).await else { continue };
        let Some(target) = addrs.next() else { continue };
        let bind: std::net::SocketAddr =
            if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else { continue };
        if sock.connect(target).await.is_ok()
            && let Ok(local) = sock.local_addr()
        {
            return Some(local.ip());
        }
    }
    None
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
