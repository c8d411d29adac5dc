//! The one `aether` binary. `main` parses flags over environment over the TOML file and
//! calls the services' `run`; nothing else lives here.

mod admin;
mod node;

use std::net::SocketAddr;
use std::path::PathBuf;

use aether_blobd::{BlobdConfig, BlobdListeners};
use aether_common::config::{Quorum, load_toml};
use aether_common::shutdown::Shutdown;
use aether_common::telemetry::{self, TelemetryConfig};
use aether_gateway::{GatewayConfig, GatewayListeners};
use aether_metad::{MetadConfig, MetadListeners};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(name = "aether", version, about = "A distributed, S3-compatible object store")]
struct Cli {
    /// TOML config file with [gateway], [blobd], [metad] sections (see docs/aether.example.toml).
    #[arg(long, env = "AETHER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `aether_gateway=debug,info`.
    #[arg(long, env = "AETHER_LOG_LEVEL", default_value = "info,openraft=warn", global = true)]
    log_level: String,
    /// Log as JSON lines.
    #[arg(long, env = "AETHER_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// metad + blobd + gateway in one process on one data dir (single node, for a laptop).
    Server(ServerArgs),
    /// The stateless S3 gateway.
    Gateway(GatewayArgs),
    /// A storage daemon (one per disk/host).
    Blobd(BlobdArgs),
    /// The metadata service (etcd v3 API).
    Metad(MetadArgs),
    /// GET an admin URL and exit 0 on a 2xx answer (a container healthcheck).
    Probe {
        /// e.g. http://127.0.0.1:9001/ready
        url: String,
        /// Print the answer's body (e.g. `/metrics` from a container that has no curl).
        #[arg(long)]
        print: bool,
    },
    /// Cluster-wide views, from a gateway's admin port.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// The storage layout in metad: list nodes, drain, remove, re-weight, move zones.
    Node {
        /// metad (or etcd) endpoints.
        #[arg(
            long,
            env = "AETHER_METAD_ENDPOINTS",
            value_delimiter = ',',
            default_value = "127.0.0.1:2379",
            global = true
        )]
        metad_endpoints: Vec<String>,
        #[arg(long, env = "AETHER_CATALOG_PREFIX", default_value = aether_common::catalog::DEFAULT_PREFIX, global = true)]
        catalog_prefix: String,
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Read or change a running service's log filter (its admin port's `/log_level`).
    LogLevel {
        /// The service's admin URL, e.g. http://127.0.0.1:9001
        #[arg(long, env = "AETHER_ADMIN_URL", default_value = "http://127.0.0.1:9001")]
        admin: String,
        /// A new filter (EnvFilter syntax, e.g. `aether_gateway=debug,info`); none: print it.
        filter: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// Every layout entry: address, zone, weight, state, liveness, objects and bytes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Stop placing keys on the node; its daemon hands every key it holds to the new
    /// owners and drops its copies (watch OBJECTS reach 0 in `aether node ls`).
    Drain { id: String },
    /// Put a drained (or removed) node back into placement.
    Activate { id: String },
    /// Take the node out of the layout for good; its keys get new owners, which the
    /// other replicas fill by anti-entropy. Drain a live node first.
    Remove { id: String },
    /// Relative capacity (0: receives nothing).
    SetWeight { id: String, weight: u32 },
    /// Failure domain; replicas prefer distinct zones.
    SetZone { id: String, zone: String },
    /// The cluster's replication factor (copies of every object; the catalog's
    /// `cluster/config`, which every gateway and blobd follows over its own setting).
    /// Anti-entropy then moves copies to the new owners.
    SetRf { replication_factor: usize },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Every node's view: metad members (leader, term, raft index), storage nodes (layout,
    /// liveness, objects and bytes), the gateway's readiness and repair backlog.
    Status {
        /// A gateway's admin URL.
        #[arg(long, env = "AETHER_ADMIN_URL", default_value = "http://127.0.0.1:9001")]
        admin: String,
        /// Print the JSON document as the gateway returns it.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// S3 port.
    #[arg(long, env = "AETHER_PORT", default_value_t = 9000)]
    port: u16,
    /// Health/ready/metrics port.
    #[arg(long, env = "AETHER_ADMIN_PORT", default_value_t = 9001)]
    admin_port: u16,
    /// Address the S3 and admin ports bind on.
    #[arg(long, env = "AETHER_BIND", default_value = "0.0.0.0")]
    bind: String,
    /// Data directory (metad/ and blobd/ beneath it).
    #[arg(long, env = "AETHER_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// etcd-compatible client address of the embedded metad.
    #[arg(long, env = "AETHER_METAD_LISTEN", default_value = "127.0.0.1:2379")]
    metad_listen: SocketAddr,
    /// gRPC address of the embedded blobd (port 0: any free port).
    #[arg(long, env = "AETHER_BLOBD_LISTEN", default_value = "127.0.0.1:0")]
    blobd_listen: SocketAddr,
    /// Abort multipart uploads idle this many seconds (unset: never).
    #[arg(long, env = "AETHER_MPU_REAP_AGE")]
    mpu_reap_age: Option<u64>,
    #[command(flatten)]
    gw: GatewayFlags,
}

#[derive(Args, Debug, Default)]
struct GatewayFlags {
    #[arg(long, env = "AETHER_REQUIRE_AUTH")]
    require_auth: Option<bool>,
    #[arg(long, env = "AETHER_ACCESS_KEY")]
    access_key: Option<String>,
    #[arg(long, env = "AETHER_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    #[arg(long, env = "AETHER_REGION")]
    region: Option<String>,
    #[arg(long, env = "AETHER_REPLICATION_FACTOR")]
    replication_factor: Option<usize>,
    /// 1 | quorum | all
    #[arg(long, env = "AETHER_WRITE_QUORUM")]
    write_quorum: Option<Quorum>,
    /// 1 | quorum | all
    #[arg(long, env = "AETHER_READ_QUORUM")]
    read_quorum: Option<Quorum>,
    /// Root domain for virtual-hosted-style requests (`<bucket>.<root-domain>`).
    #[arg(long, env = "AETHER_ROOT_DOMAIN")]
    root_domain: Option<String>,
    /// Smallest non-final multipart part in bytes (default S3's 5 MiB).
    #[arg(long, env = "AETHER_MIN_PART_SIZE")]
    min_part_size: Option<u64>,
    /// Local address connections to blobd leave from (default: the system's choice).
    #[arg(long, env = "AETHER_SOURCE_ADDR")]
    source_addr: Option<std::net::IpAddr>,
}

#[derive(Args, Debug)]
struct GatewayArgs {
    #[arg(long, env = "AETHER_LISTEN", default_value = "0.0.0.0:9000")]
    listen: SocketAddr,
    #[arg(long, env = "AETHER_ADMIN_LISTEN", default_value = "0.0.0.0:9001")]
    admin_listen: SocketAddr,
    /// Comma-separated metad (or etcd) client endpoints.
    #[arg(long, env = "AETHER_METAD_ENDPOINTS", value_delimiter = ',')]
    metad_endpoints: Vec<String>,
    #[command(flatten)]
    gw: GatewayFlags,
}

#[derive(Args, Debug)]
struct BlobdArgs {
    #[arg(long, env = "AETHER_LISTEN", default_value = "0.0.0.0:9100")]
    listen: SocketAddr,
    #[arg(long, env = "AETHER_ADMIN_LISTEN", default_value = "0.0.0.0:9101")]
    admin_listen: SocketAddr,
    #[arg(long, env = "AETHER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "AETHER_METAD_ENDPOINTS", value_delimiter = ',')]
    metad_endpoints: Vec<String>,
    /// Address other services reach this daemon on (default: the listen address).
    #[arg(long, env = "AETHER_ADVERTISE")]
    advertise: Option<String>,
    #[arg(long, env = "AETHER_NODE_ID")]
    node_id: Option<String>,
    #[arg(long, env = "AETHER_ZONE")]
    zone: Option<String>,
    #[arg(long, env = "AETHER_WEIGHT")]
    weight: Option<u32>,
    /// Abort multipart uploads idle this many seconds (unset: never).
    #[arg(long, env = "AETHER_MPU_REAP_AGE")]
    mpu_reap_age: Option<u64>,
    /// Replicas per object; must match the gateways'.
    #[arg(long, env = "AETHER_REPLICATION_FACTOR")]
    replication_factor: Option<usize>,
    /// Seconds between anti-entropy / handoff cycles (0: off).
    #[arg(long, env = "AETHER_SYNC_INTERVAL")]
    sync_interval: Option<u64>,
    /// Bytes per second anti-entropy and handoff may push (unset: no cap).
    #[arg(long, env = "AETHER_SYNC_MAX_BYTES_PER_SEC")]
    sync_max_bytes_per_sec: Option<u64>,
    /// Seconds tombstones are kept before they are collected.
    #[arg(long, env = "AETHER_TOMBSTONE_GRACE")]
    tombstone_grace: Option<u64>,
    /// Seconds an active node may be without a lease before it is marked removed (unset: never).
    #[arg(long, env = "AETHER_EVICT_GRACE")]
    evict_grace: Option<u64>,
    /// Seconds between scrub passes over every blob (0: off).
    #[arg(long, env = "AETHER_SCRUB_INTERVAL")]
    scrub_interval: Option<u64>,
    /// Bytes per second the scrub reads at most (0: no cap).
    #[arg(long, env = "AETHER_SCRUB_BYTES_PER_SEC")]
    scrub_bytes_per_sec: Option<u64>,
    /// Local address connections to other daemons leave from (default: the system's choice).
    #[arg(long, env = "AETHER_SOURCE_ADDR")]
    source_addr: Option<std::net::IpAddr>,
}

#[derive(Args, Debug)]
struct MetadArgs {
    /// etcd v3 client address (etcd's conventional 2379).
    #[arg(long, env = "AETHER_LISTEN", default_value = "0.0.0.0:2379")]
    listen: SocketAddr,
    #[arg(long, env = "AETHER_ADMIN_LISTEN", default_value = "0.0.0.0:2381")]
    admin_listen: SocketAddr,
    #[arg(long, env = "AETHER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Member name (etcd's --name).
    #[arg(long, env = "AETHER_NAME")]
    name: Option<String>,
    /// Raft peer address (etcd's conventional 2380).
    #[arg(long, env = "AETHER_LISTEN_PEER", default_value = "0.0.0.0:2380")]
    listen_peer: SocketAddr,
    /// `name=http://host:port,...`: every member of a new cluster, by peer URL.
    #[arg(long, env = "AETHER_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// `new` (form a cluster) or `existing` (join one after MemberAdd).
    #[arg(long, env = "AETHER_INITIAL_CLUSTER_STATE")]
    initial_cluster_state: Option<aether_metad::ClusterState>,
    #[arg(long, env = "AETHER_INITIAL_CLUSTER_TOKEN")]
    initial_cluster_token: Option<String>,
    /// Comma-separated client URLs other members and clients reach this member at.
    #[arg(long, env = "AETHER_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
}

/// The TOML file: one section per service, each denying unknown keys.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    gateway: GatewayConfig,
    blobd: BlobdConfig,
    metad: MetadConfig,
}

impl GatewayFlags {
    fn apply(self, cfg: &mut GatewayConfig) {
        if let Some(v) = self.require_auth {
            cfg.require_auth = v;
        }
        if let Some(v) = self.access_key {
            cfg.access_key = v;
        }
        if let Some(v) = self.secret_key {
            cfg.secret_key = v;
        }
        if let Some(v) = self.region {
            cfg.region = v;
        }
        if let Some(v) = self.replication_factor {
            cfg.replication_factor = v;
        }
        if let Some(v) = self.write_quorum {
            cfg.write_quorum = v;
        }
        if let Some(v) = self.read_quorum {
            cfg.read_quorum = v;
        }
        if let Some(v) = self.root_domain {
            cfg.root_domain = Some(v);
        }
        if let Some(v) = self.min_part_size {
            cfg.min_part_size = v;
        }
        if let Some(v) = self.source_addr {
            cfg.source_addr = Some(v);
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the {what} port {addr}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Admin commands: no config file, no runtime, no logging set-up.
    match &cli.cmd {
        Command::Probe { url, print } => return admin::probe(url, *print),
        Command::Cluster { cmd: ClusterCmd::Status { admin, json } } => return admin::cluster_status(admin, *json),
        Command::LogLevel { admin, filter } => return admin::log_level(admin, filter.as_deref()),
        Command::Node { metad_endpoints: ep, catalog_prefix: p, cmd } => {
            use aether_common::catalog::NodeState;
            return match cmd {
                NodeCmd::Ls { json } => node::ls(ep, p, *json),
                NodeCmd::Drain { id } => node::change(ep, p, id, node::Change::State(NodeState::Draining)),
                NodeCmd::Activate { id } => node::change(ep, p, id, node::Change::State(NodeState::Active)),
                NodeCmd::Remove { id } => node::change(ep, p, id, node::Change::State(NodeState::Removed)),
                NodeCmd::SetWeight { id, weight } => node::change(ep, p, id, node::Change::Weight(*weight)),
                NodeCmd::SetZone { id, zone } => node::change(ep, p, id, node::Change::Zone(zone.clone())),
                NodeCmd::SetRf { replication_factor } => node::set_rf(ep, p, *replication_factor),
            };
        }
        _ => {}
    }
    let file: FileConfig = match &cli.config {
        Some(p) => load_toml(p)?,
        None => FileConfig::default(),
    };
    let service = match &cli.cmd {
        Command::Server(_) => "aether",
        Command::Gateway(_) => "aether-gateway",
        Command::Blobd(_) => "aether-blobd",
        Command::Metad(_) => "aether-metad",
        Command::Probe { .. } | Command::Cluster { .. } | Command::LogLevel { .. } | Command::Node { .. } => {
            unreachable!("handled above")
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let _telemetry = telemetry::init(&TelemetryConfig {
            service_name: service.to_string(),
            log_level: cli.log_level.clone(),
            json: cli.log_json,
            sample_ratio: std::env::var("AETHER_TRACE_SAMPLE_RATIO").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0),
        });
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        match cli.cmd {
            Command::Server(a) => server(file, a, shutdown).await,
            Command::Gateway(a) => {
                let mut cfg = file.gateway;
                if !a.metad_endpoints.is_empty() {
                    cfg.metad_endpoints = a.metad_endpoints;
                }
                a.gw.apply(&mut cfg);
                let listeners = GatewayListeners {
                    s3: bind(a.listen, "S3").await?,
                    admin: Some(bind(a.admin_listen, "admin").await?),
                };
                aether_gateway::run(cfg, listeners, shutdown).await?;
                Ok(())
            }
            Command::Blobd(a) => {
                let mut cfg = file.blobd;
                if let Some(v) = a.data_dir {
                    cfg.data_dir = v;
                }
                if !a.metad_endpoints.is_empty() {
                    cfg.metad_endpoints = a.metad_endpoints;
                }
                if a.advertise.is_some() {
                    cfg.advertise_addr = a.advertise;
                }
                if a.node_id.is_some() {
                    cfg.node_id = a.node_id;
                }
                if let Some(v) = a.zone {
                    cfg.zone = v;
                }
                if let Some(v) = a.weight {
                    cfg.weight = v;
                }
                if a.mpu_reap_age.is_some() {
                    cfg.mpu_reap_age_secs = a.mpu_reap_age;
                }
                if let Some(v) = a.replication_factor {
                    cfg.replication_factor = v;
                }
                if let Some(v) = a.sync_interval {
                    cfg.sync_interval_secs = v;
                }
                if a.sync_max_bytes_per_sec.is_some() {
                    cfg.sync_max_bytes_per_sec = a.sync_max_bytes_per_sec;
                }
                if let Some(v) = a.tombstone_grace {
                    cfg.tombstone_grace_secs = v;
                }
                if a.evict_grace.is_some() {
                    cfg.evict_grace_secs = a.evict_grace;
                }
                if let Some(v) = a.scrub_interval {
                    cfg.scrub_interval_secs = v;
                }
                if let Some(v) = a.scrub_bytes_per_sec {
                    cfg.scrub_bytes_per_sec = v;
                }
                if a.source_addr.is_some() {
                    cfg.source_addr = a.source_addr;
                }
                let listeners = BlobdListeners {
                    grpc: bind(a.listen, "gRPC").await?,
                    admin: Some(bind(a.admin_listen, "admin").await?),
                };
                aether_blobd::run(cfg, listeners, shutdown).await?;
                Ok(())
            }
            Command::Metad(a) => {
                let mut cfg = file.metad;
                if let Some(v) = a.data_dir {
                    cfg.data_dir = v;
                }
                if let Some(v) = a.name {
                    cfg.name = v;
                }
                if let Some(v) = a.initial_cluster {
                    cfg.initial_cluster = v;
                }
                if let Some(v) = a.initial_cluster_state {
                    cfg.initial_cluster_state = v;
                }
                if let Some(v) = a.initial_cluster_token {
                    cfg.initial_cluster_token = v;
                }
                if !a.advertise_client_urls.is_empty() {
                    cfg.advertise_client_urls = a.advertise_client_urls;
                }
                let listeners = MetadListeners {
                    client: bind(a.listen, "client").await?,
                    peer: Some(bind(a.listen_peer, "peer").await?),
                    admin: Some(bind(a.admin_listen, "admin").await?),
                };
                aether_metad::run(cfg, listeners, shutdown).await?;
                Ok(())
            }
            Command::Probe { .. } | Command::Cluster { .. } | Command::LogLevel { .. } | Command::Node { .. } => Ok(()),
        }
    })
}

/// All three services in one process: metad on 2379, blobd on a loopback port, the
/// gateway on AETHER_PORT; one data dir.
async fn server(file: FileConfig, a: ServerArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let metad_listener = bind(a.metad_listen, "metad client").await?;
    let metad_addr = metad_listener.local_addr()?.to_string();
    let blobd_listener = bind(a.blobd_listen, "blobd gRPC").await?;
    let s3 = bind(format!("{}:{}", a.bind, a.port).parse()?, "S3").await?;
    let admin = bind(format!("{}:{}", a.bind, a.admin_port).parse()?, "admin").await?;

    let mut metad = file.metad;
    metad.data_dir = a.data_dir.join("metad");
    let mut blobd = file.blobd;
    blobd.data_dir = a.data_dir.join("blobd");
    blobd.metad_endpoints = vec![metad_addr.clone()];
    if a.mpu_reap_age.is_some() {
        blobd.mpu_reap_age_secs = a.mpu_reap_age;
    }
    let mut gateway = file.gateway;
    gateway.metad_endpoints = vec![metad_addr.clone()];
    a.gw.apply(&mut gateway);
    blobd.replication_factor = gateway.replication_factor;

    tracing::info!(
        s3 = %s3.local_addr()?, admin = %admin.local_addr()?, metad = %metad_addr,
        data_dir = %a.data_dir.display(), "starting aether server (metad + blobd + gateway)"
    );
    let mut tasks = tokio::task::JoinSet::new();
    let sd = shutdown.clone();
    tasks.spawn(async move {
        (
            "metad",
            aether_metad::run(metad, MetadListeners { client: metad_listener, peer: None, admin: None }, sd)
                .await
                .map_err(anyhow::Error::from),
        )
    });
    let sd = shutdown.clone();
    tasks.spawn(async move {
        (
            "blobd",
            aether_blobd::run(blobd, BlobdListeners { grpc: blobd_listener, admin: None }, sd)
                .await
                .map_err(anyhow::Error::from),
        )
    });
    let sd = shutdown.clone();
    tasks.spawn(async move {
        (
            "gateway",
            aether_gateway::run(gateway, GatewayListeners { s3, admin: Some(admin) }, sd)
                .await
                .map_err(anyhow::Error::from),
        )
    });

    // Whichever service stops first (error or shutdown) stops the others.
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        shutdown.trigger();
        let (name, r) = joined.context("a service task panicked")?;
        if let Err(e) = r {
            tracing::error!(service = name, error = %format!("{e:#}"), "service stopped with an error");
            if result.is_ok() {
                result = Err(e.context(format!("{name} failed")));
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_config_parses() {
        let text = include_str!("../../../docs/aether.example.toml");
        let cfg: FileConfig = aether_common::config::parse_toml(text).expect("docs/aether.example.toml");
        assert_eq!(cfg.gateway.replication_factor, 3);
        assert_eq!(cfg.gateway.write_quorum, Quorum::Quorum);
        assert_eq!(cfg.blobd.lease_ttl_secs, 10);
        assert_eq!(cfg.metad.snapshot_threshold, 10_000);
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let err = aether_common::config::parse_toml::<FileConfig>("[gateway]\nreplication_factr = 2\n").unwrap_err();
        assert!(err.contains("replication_factr"), "{err}");
        let err = aether_common::config::parse_toml::<FileConfig>("[gatewy]\n").unwrap_err();
        assert!(err.contains("gatewy"), "{err}");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
