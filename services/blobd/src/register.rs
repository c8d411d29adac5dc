//! Registration in metad, through `etcd-client` only (so a real etcd works): the layout
//! entry `nodes/<id>` (persistent, written on join) and the liveness entry `alive/<id>`
//! attached to a lease that is kept alive while the process runs.

use std::time::{Duration, Instant};

use aether_common::admin::Readiness;
use aether_common::catalog::{AliveEntry, ClusterConfig, Keys, NodeEntry, NodeState};
use aether_common::shutdown::Shutdown;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("catalog value: {0}")]
    Json(#[from] serde_json::Error),
    #[error("lease lost")]
    LeaseLost,
    #[error("keep-alive stream ended")]
    StreamEnded,
    #[error("timed out")]
    Timeout,
    #[error("the layout entry changed concurrently")]
    Conflict,
}

#[derive(Debug, Clone)]
pub struct Registration {
    pub endpoints: Vec<String>,
    pub keys: Keys,
    pub node_id: String,
    pub node: NodeEntry,
    pub auto_join: bool,
    pub lease_ttl_secs: i64,
    pub started_at: String,
    /// Listening on every interface with no address given: the advertised address is the
    /// local end of the route to metad on this port, found again at every registration (a
    /// container reconnected to its network may have a new address).
    pub auto_port: Option<u16>,
    /// This daemon's configured replication factor: written to the catalog's cluster
    /// config if that has none yet.
    pub replication_factor: usize,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Register and keep the lease alive until shutdown; then revoke the lease. Retries
/// with backoff while metad is unreachable. `registered` is true while the liveness key
/// is held.
pub async fn run(reg: Registration, registered: Readiness, shutdown: Shutdown) {
    let mut backoff = MIN_BACKOFF;
    // Bounded by shutdown: every wait below races it.
    while !shutdown.is_triggered() {
        let attempt = tokio::select! {
            _ = shutdown.wait() => return,
            r = register_once(&reg) => r,
        };
        match attempt {
            Ok((mut client, lease)) => {
                backoff = MIN_BACKOFF;
                registered.set(true);
                tracing::info!(node_id = %reg.node_id, lease, "registered in metad");
                let lost = tokio::select! {
                    _ = shutdown.wait() => None,
                    e = keep_alive(&mut client, lease, reg.lease_ttl_secs) => Some(e),
                };
                registered.set(false);
                match lost {
                    None => {
                        match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
                            Ok(Ok(_)) => tracing::info!(lease, "lease revoked"),
                            Ok(Err(e)) => tracing::warn!(error = %e, "cannot revoke lease"),
                            Err(_) => tracing::warn!("lease revoke timed out"),
                        }
                        return;
                    }
                    Some(e) => tracing::warn!(error = %e, "lease lost; registering again"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot register in metad");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn timed<T>(f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, RegisterError> {
    match tokio::time::timeout(RPC_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RegisterError::Timeout),
    }
}

async fn register_once(reg: &Registration) -> Result<(Client, i64), RegisterError> {
    let mut reg = reg.clone();
    if let Some(port) = reg.auto_port
        && let Some(ip) = crate::outward_ip(&reg.endpoints).await
    {
        reg.node.addr = std::net::SocketAddr::new(ip, port).to_string();
    }
    let reg = &reg;
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3)).with_timeout(RPC_TIMEOUT);
    let mut client = timed(aether_common::etcd::connect(&reg.endpoints, Some(opts))).await?;
    if reg.auto_join {
        join(&mut client, reg).await?;
    }
    match timed(ClusterConfig::ensure(&mut client, &reg.keys, reg.replication_factor)).await? {
        Some(c) if c.replication_factor != reg.replication_factor => tracing::warn!(
            configured = reg.replication_factor,
            cluster = c.replication_factor,
            "the cluster's replication factor (catalog cluster/config) differs from this daemon's setting, which is ignored"
        ),
        Some(_) => {}
        None => tracing::warn!("the catalog's cluster/config is malformed; using this daemon's replication factor"),
    }
    let lease = timed(client.lease_grant(reg.lease_ttl_secs.max(1), None)).await?.id();
    let alive = AliveEntry { addr: reg.node.addr.clone(), started_at: reg.started_at.clone() };
    let put = timed(client.put(
        reg.keys.alive(&reg.node_id),
        serde_json::to_vec(&alive)?,
        Some(PutOptions::new().with_lease(lease)),
    ))
    .await;
    if let Err(e) = put {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
        return Err(e);
    }
    Ok((client, lease))
}

/// Write `nodes/<id>` if absent; if present with another address, update the address
/// and keep zone, weight and state.
async fn join(client: &mut Client, reg: &Registration) -> Result<(), RegisterError> {
    let key = reg.keys.node(&reg.node_id);
    let value = serde_json::to_vec(&reg.node)?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), value, None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = timed(client.txn(txn)).await?;
    if resp.succeeded() {
        tracing::info!(node_id = %reg.node_id, addr = %reg.node.addr, "joined the layout");
        return Ok(());
    }
    let existing = resp.op_responses().into_iter().find_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())),
        _ => None,
    });
    let Some((raw, mod_rev)) = existing else { return Ok(()) };
    let mut entry: NodeEntry = serde_json::from_slice(&raw)?;
    if entry.addr == reg.node.addr {
        return Ok(());
    }
    if entry.state == NodeState::Removed {
        tracing::warn!(node_id = %reg.node_id, "this node is marked removed in the layout");
    }
    entry.addr = reg.node.addr.clone();
    let txn = Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, mod_rev)]).and_then([TxnOp::put(
        key,
        serde_json::to_vec(&entry)?,
        None,
    )]);
    let resp = timed(client.txn(txn)).await?;
    if !resp.succeeded() {
        // Someone changed the entry meanwhile: the next registration round retries.
        return Err(RegisterError::Conflict);
    }
    tracing::info!(node_id = %reg.node_id, addr = %entry.addr, "updated the layout address");
    Ok(())
}

/// Keep `lease` alive every ttl/3. When the keep-alive stream breaks (the metad member
/// it went to died), reopen it on the same lease (the client fails over to another
/// endpoint) with backoff, for as long as the lease can still be alive; returns when the
/// lease is lost (metad says so, or no keep-alive got through for a whole TTL).
async fn keep_alive(client: &mut Client, lease: i64, ttl: i64) -> RegisterError {
    let ttl = Duration::from_secs(ttl.max(1) as u64);
    let period = (ttl / 3).max(MIN_BACKOFF);
    let mut last_ok = Instant::now();
    let mut backoff = MIN_BACKOFF;
    loop {
        let err = match keep_alive_stream(client, lease, period, &mut last_ok, &mut backoff).await {
            Err(RegisterError::LeaseLost) => return RegisterError::LeaseLost,
            Err(e) => e,
        };
        let left = ttl.saturating_sub(last_ok.elapsed());
        if left.is_zero() {
            tracing::warn!(lease, error = %err, "no keep-alive got through for a whole TTL");
            return err;
        }
        tracing::warn!(lease, error = %err, retry_in_ms = backoff.as_millis() as u64, "keep-alive stream broke; reopening");
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(period);
    }
}

/// One keep-alive stream; `last_ok` is when metad last confirmed the lease.
async fn keep_alive_stream(
    client: &mut Client,
    lease: i64,
    period: Duration,
    last_ok: &mut Instant,
    backoff: &mut Duration,
) -> Result<std::convert::Infallible, RegisterError> {
    let (mut keeper, mut stream) = timed(client.lease_keep_alive(lease)).await?;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        timed(keeper.keep_alive()).await?;
        match timed(stream.message()).await? {
            Some(r) if r.ttl() > 0 => {
                *last_ok = Instant::now();
                *backoff = MIN_BACKOFF;
            }
            Some(_) => return Err(RegisterError::LeaseLost),
            None => return Err(RegisterError::StreamEnded),
        }
    }
}
