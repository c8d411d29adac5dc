//! The in-process `Cluster` harness: N metad (1 for now), N blobd and M gateways, each
//! started through its crate's `run` on 127.0.0.1 port 0, with real gRPC, real SQLite
//! files and real fsyncs. Every wait is a condition polled against a deadline.

pub mod http1;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aether_blobd::{BlobdConfig, BlobdListeners};
use aether_common::catalog::Keys;
use aether_common::config::Quorum;
use aether_common::shutdown::Shutdown;
use aether_gateway::{GatewayConfig, GatewayListeners};
use aether_metad::{MetadConfig, MetadListeners};
use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ACCESS_KEY: &str = "AKIATESTCLUSTER00001";
pub const SECRET_KEY: &str = "test-secret-key-for-the-cluster-harness";
pub const REGION: &str = "us-east-1";

/// Wait until `check` returns `Some`, polling every 20 ms, for at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Running {
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(joined) => joined.context("service task panicked")?,
            Err(_) => bail!("service did not stop within 30 s"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub blobds: usize,
    pub gateways: usize,
    pub require_auth: bool,
    pub replication_factor: usize,
    pub write_quorum: Quorum,
    pub read_quorum: Quorum,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            blobds: 3,
            gateways: 2,
            require_auth: true,
            replication_factor: 3,
            write_quorum: Quorum::Quorum,
            read_quorum: Quorum::Quorum,
        }
    }
}

pub struct BlobdNode {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub addr: Option<String>,
    running: Option<Running>,
}

pub struct GatewayNode {
    pub s3_addr: String,
    pub admin_addr: String,
    running: Option<Running>,
}

pub struct Cluster {
    pub opts: ClusterOptions,
    root: tempfile::TempDir,
    pub metad_addr: String,
    metad: Option<Running>,
    pub blobds: Vec<BlobdNode>,
    pub gateways: Vec<GatewayNode>,
}

async fn local() -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?.to_string();
    Ok((l, a))
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("aether-cluster-").tempdir()?;
        let mut c =
            Cluster { opts, root, metad_addr: String::new(), metad: None, blobds: Vec::new(), gateways: Vec::new() };
        for i in 0..c.opts.blobds {
            let data_dir = c.root.path().join(format!("blobd-{i}"));
            std::fs::create_dir_all(&data_dir)?;
            let node_id = aether_blobd::read_or_create_node_id(&data_dir)?;
            c.blobds.push(BlobdNode { node_id, data_dir, addr: None, running: None });
        }
        c.start_all().await?;
        Ok(c)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Start metad, then every blobd, wait until all of them are registered and alive,
    /// then the gateways (so their first catalog load already holds the whole layout).
    async fn start_all(&mut self) -> anyhow::Result<()> {
        self.start_metad().await?;
        for i in 0..self.blobds.len() {
            self.start_blobd(i).await?;
        }
        self.wait_alive(self.blobds.len()).await?;
        let n = if self.gateways.is_empty() { self.opts.gateways } else { self.gateways.len() };
        self.gateways.clear();
        for _ in 0..n {
            self.start_gateway().await?;
        }
        Ok(())
    }

    async fn start_metad(&mut self) -> anyhow::Result<()> {
        let (client, addr) = local().await?;
        let cfg = MetadConfig {
            data_dir: self.root.path().join("metad"),
            lease_check_interval_ms: 100,
            ..MetadConfig::default()
        };
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let task = tokio::spawn(async move {
            aether_metad::run(cfg, MetadListeners { client, peer: None, admin: None }, sd).await.map_err(anyhow::Error::from)
        });
        self.metad = Some(Running { shutdown, task });
        self.metad_addr = addr.clone();
        wait_for("metad to answer", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move {
                let mut c = etcd_client::Client::connect([addr], None).await.ok()?;
                c.get("health", None).await.ok().map(|_| ())
            }
        })
        .await
    }

    pub async fn etcd(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.metad_addr.clone()], None).await?)
    }

    /// Wait until exactly `n` blobd hold a liveness lease in metad.
    pub async fn wait_alive(&self, n: usize) -> anyhow::Result<()> {
        let prefix = Keys::default().alive_all();
        let addr = self.metad_addr.clone();
        wait_for(&format!("{n} live blobd"), Duration::from_secs(30), || {
            let (prefix, addr) = (prefix.clone(), addr.clone());
            async move {
                let mut c = etcd_client::Client::connect([addr], None).await.ok()?;
                let r =
                    c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.ok()?;
                (r.count() as usize == n).then_some(())
            }
        })
        .await
    }

    pub async fn start_blobd(&mut self, i: usize) -> anyhow::Result<()> {
        let (grpc, addr) = local().await?;
        let node = &mut self.blobds[i];
        let cfg = BlobdConfig {
            data_dir: node.data_dir.clone(),
            node_id: Some(node.node_id.clone()),
            metad_endpoints: vec![self.metad_addr.clone()],
            lease_ttl_secs: 5,
            ..BlobdConfig::default()
        };
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let task = tokio::spawn(async move {
            aether_blobd::run(cfg, BlobdListeners { grpc, admin: None }, sd).await.map_err(anyhow::Error::from)
        });
        node.addr = Some(addr);
        node.running = Some(Running { shutdown, task });
        Ok(())
    }

    /// Stop blobd `i` gracefully (it revokes its lease) and wait until metad shows it dead.
    pub async fn stop_blobd(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(r) = self.blobds[i].running.take() {
            r.stop().await?;
        }
        let live = self.blobds.iter().filter(|b| b.running.is_some()).count();
        self.wait_alive(live).await
    }

    pub async fn start_gateway(&mut self) -> anyhow::Result<usize> {
        let (s3, s3_addr) = local().await?;
        let (admin, admin_addr) = local().await?;
        let cfg = GatewayConfig {
            metad_endpoints: vec![self.metad_addr.clone()],
            require_auth: self.opts.require_auth,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            region: REGION.into(),
            replication_factor: self.opts.replication_factor,
            write_quorum: self.opts.write_quorum,
            read_quorum: self.opts.read_quorum,
            ..GatewayConfig::default()
        };
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let task = tokio::spawn(async move {
            aether_gateway::run(cfg, GatewayListeners { s3, admin: Some(admin) }, sd).await.map_err(anyhow::Error::from)
        });
        let a = admin_addr.clone();
        wait_for("gateway /ready", Duration::from_secs(30), || {
            let a = a.clone();
            async move {
                let r = http1::request(&a, "GET", "/ready", &[], Vec::new()).await.ok()?;
                (r.status == 200).then_some(())
            }
        })
        .await?;
        self.gateways.push(GatewayNode { s3_addr, admin_addr, running: Some(Running { shutdown, task }) });
        Ok(self.gateways.len() - 1)
    }

    /// Stop every service, then start them all again on the same data dirs.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        self.stop_all().await?;
        self.start_all().await
    }

    pub async fn stop_all(&mut self) -> anyhow::Result<()> {
        for g in &mut self.gateways {
            if let Some(r) = g.running.take() {
                r.stop().await?;
            }
        }
        for b in &mut self.blobds {
            if let Some(r) = b.running.take() {
                r.stop().await?;
            }
        }
        if let Some(m) = self.metad.take() {
            m.stop().await?;
        }
        Ok(())
    }

    pub fn endpoint(&self, gateway: usize) -> String {
        format!("http://{}", self.gateways[gateway].s3_addr)
    }

    /// An aws-sdk-s3 client for gateway `i`, configured only by endpoint and credentials.
    pub fn s3(&self, gateway: usize) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint(gateway), ACCESS_KEY, SECRET_KEY)
    }

    /// A blob gRPC client straight to blobd `i` (for checking where bytes live).
    pub async fn blob_client(
        &self,
        i: usize,
    ) -> anyhow::Result<aether_proto::blob::v1::blob_service_client::BlobServiceClient<tonic::transport::Channel>> {
        let addr = self.blobds[i].addr.clone().context("blobd not started")?;
        Ok(aether_proto::blob::v1::blob_service_client::BlobServiceClient::connect(format!("http://{addr}")).await?)
    }

    /// Files left in every blobd's staging directory (should be none at rest).
    pub fn staging_leftovers(&self) -> usize {
        self.blobds.iter().map(|b| std::fs::read_dir(b.data_dir.join("staging")).map(|d| d.count()).unwrap_or(0)).sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let all = self
            .gateways
            .iter_mut()
            .filter_map(|g| g.running.take())
            .chain(self.blobds.iter_mut().filter_map(|b| b.running.take()))
            .chain(self.metad.take());
        for r in all {
            r.shutdown.trigger();
            r.task.abort();
        }
    }
}

pub fn s3_client(endpoint: &str, access_key: &str, secret: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(access_key, secret, None, None, "aether-tests");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Peak and current RSS of this process in KiB (from /proc/self/status).
pub fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
