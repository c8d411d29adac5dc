//! The in-process `Cluster` harness: N metad (1 for now), N blobd and M gateways, each
//! started through its crate's `run` on 127.0.0.1 port 0, with real gRPC, real SQLite
//! files and real fsyncs. Every wait is a condition polled against a deadline.
//!
//! The catalog backend is metad by default; `AETHER_TEST_CATALOG=etcd` (or
//! `ClusterOptions::catalog`) runs a real `etcd` process instead (1 member, or 3 with
//! `etcd_members: 3`), killed when the cluster is dropped.

pub mod http1;
pub mod proxy;

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
/// The gateways' root domain for virtual-hosted-style requests (`<bucket>.<ROOT_DOMAIN>`).
pub const ROOT_DOMAIN: &str = "s3.aether.test";

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

/// What the services use as their metadata store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogBackend {
    /// aether's own metad, in-process.
    Metad,
    /// Real `etcd` processes (the binary on PATH, or `AETHER_ETCD_BIN`).
    Etcd,
}

impl CatalogBackend {
    /// `AETHER_TEST_CATALOG=etcd` selects etcd; unset or `metad` selects metad.
    pub fn from_env() -> Self {
        match std::env::var("AETHER_TEST_CATALOG").as_deref() {
            Ok("etcd") => Self::Etcd,
            Ok("metad") | Ok("") | Err(_) => Self::Metad,
            Ok(other) => panic!("AETHER_TEST_CATALOG={other:?}: expected \"etcd\" or \"metad\""),
        }
    }
}

/// True (after printing why) when the tests run against etcd: for tests that check
/// metad itself and have no etcd counterpart.
pub fn skip_on_etcd(test: &str, reason: &str) -> bool {
    let skip = CatalogBackend::from_env() == CatalogBackend::Etcd;
    if skip {
        println!("SKIPPED {test} (AETHER_TEST_CATALOG=etcd): {reason}");
    }
    skip
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// metad (default) or real etcd; the default follows `AETHER_TEST_CATALOG`.
    pub catalog: CatalogBackend,
    /// etcd members to start when `catalog` is `Etcd` (1 or 3).
    pub etcd_members: usize,
    pub blobds: usize,
    pub gateways: usize,
    pub require_auth: bool,
    pub replication_factor: usize,
    pub write_quorum: Quorum,
    pub read_quorum: Quorum,
    /// The gateways' smallest non-final part (S3's 5 MiB by default).
    pub min_part_size: u64,
    /// blobd's anti-entropy / handoff interval in seconds (0: off, the default here so
    /// tests of placement and read repair see exactly what the gateways did).
    pub sync_interval_secs: u64,
    pub tombstone_grace_secs: u64,
    pub evict_grace_secs: Option<u64>,
    /// blobd's scrub interval in seconds (0: off, the default here).
    pub scrub_interval_secs: u64,
    /// blobd (by index) that advertise a fault-injecting proxy's address instead of their
    /// own, so a test can cut them off from the gateways and the other blobd.
    pub proxied_blobds: Vec<usize>,
    /// blobd (by index) whose connections to other daemons leave from the given loopback
    /// address (a proxy can then block one side of a partition: `FaultProxy::block_from`).
    pub blobd_sources: Vec<(usize, std::net::IpAddr)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            catalog: CatalogBackend::from_env(),
            etcd_members: 1,
            blobds: 3,
            gateways: 2,
            require_auth: true,
            replication_factor: 3,
            write_quorum: Quorum::Quorum,
            read_quorum: Quorum::Quorum,
            min_part_size: GatewayConfig::default().min_part_size,
            sync_interval_secs: 0,
            tombstone_grace_secs: BlobdConfig::default().tombstone_grace_secs,
            evict_grace_secs: None,
            scrub_interval_secs: 0,
            proxied_blobds: Vec::new(),
            blobd_sources: Vec::new(),
        }
    }
}

pub struct BlobdNode {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub addr: Option<String>,
    running: Option<Running>,
    /// Each blobd runs on its own runtime, so killing it (dropping the runtime) ends
    /// every task it started at once, like a SIGKILL: no lease revoke, no clean close.
    runtime: Option<tokio::runtime::Runtime>,
    /// The proxy everyone else reaches it through (`ClusterOptions::proxied_blobds`).
    pub proxy: Option<proxy::FaultProxy>,
}

pub struct GatewayNode {
    pub s3_addr: String,
    pub admin_addr: String,
    running: Option<Running>,
}

pub struct Cluster {
    pub opts: ClusterOptions,
    root: tempfile::TempDir,
    /// metad's client address (empty with etcd).
    pub metad_addr: String,
    metad: Option<Running>,
    /// The etcd members (empty with metad).
    pub etcd_members: Vec<EtcdMember>,
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
        let mut c = Cluster {
            opts,
            root,
            metad_addr: String::new(),
            metad: None,
            etcd_members: Vec::new(),
            blobds: Vec::new(),
            gateways: Vec::new(),
        };
        for i in 0..c.opts.blobds {
            let data_dir = c.root.path().join(format!("blobd-{i}"));
            std::fs::create_dir_all(&data_dir)?;
            let node_id = aether_blobd::read_or_create_node_id(&data_dir)?;
            c.blobds.push(BlobdNode { node_id, data_dir, addr: None, running: None, runtime: None, proxy: None });
        }
        c.start_all().await?;
        Ok(c)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Start metad (or etcd), then every blobd, wait until all of them are registered and
    /// alive, then the gateways (so their first catalog load already holds the whole layout).
    async fn start_all(&mut self) -> anyhow::Result<()> {
        match self.opts.catalog {
            CatalogBackend::Metad => self.start_metad().await?,
            CatalogBackend::Etcd if self.etcd_members.is_empty() => self.start_etcd().await?,
            // etcd is not ours to restart with the services: it keeps running.
            CatalogBackend::Etcd => {}
        }
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
            aether_metad::run(cfg, MetadListeners { client, peer: None, admin: None }, sd)
                .await
                .map_err(anyhow::Error::from)
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

    async fn start_etcd(&mut self) -> anyhow::Result<()> {
        let bin = etcd_bin().context("AETHER_TEST_CATALOG=etcd but no etcd binary (install etcd-server)")?;
        let n = self.opts.etcd_members.max(1);
        // etcd binds these itself, and again after a restart: ports outside the ephemeral
        // range, so no outgoing connection takes one meanwhile.
        let ports: Vec<u16> = (0..2 * n)
            .map(|_| aether_common::ports::unassigned_port(std::net::Ipv4Addr::LOCALHOST))
            .collect::<Result<_, _>>()?;
        let token = format!("aether-test-{}", std::process::id());
        let mut members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", ports[2 * i]),
                peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                data_dir: self.root.path().join(format!("etcd-m{i}")),
                log: self.root.path().join(format!("etcd-m{i}.log")),
                bin: bin.clone(),
                initial_cluster: String::new(),
                token: token.clone(),
                child: None,
            })
            .collect();
        let initial = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        for m in &mut members {
            m.initial_cluster = initial.clone();
            m.spawn()?;
        }
        self.etcd_members = members;
        for i in 0..n {
            self.wait_etcd_member(i).await?;
        }
        Ok(())
    }

    /// Wait until etcd member `i` answers a (linearizable, so quorum-backed) Range.
    pub async fn wait_etcd_member(&self, i: usize) -> anyhow::Result<()> {
        let ep = self.etcd_members[i].endpoint();
        let log = self.etcd_members[i].log.clone();
        wait_for(&format!("etcd member {i} to answer"), Duration::from_secs(30), || {
            let ep = ep.clone();
            async move {
                let mut c = etcd_client::Client::connect([ep], None).await.ok()?;
                c.get("health", None).await.ok().map(|_| ())
            }
        })
        .await
        .with_context(|| format!("etcd log: {}", log.display()))
    }

    /// Kill etcd member `i` with SIGKILL (no graceful leave) and reap it.
    pub fn kill_etcd(&mut self, i: usize) -> anyhow::Result<()> {
        self.etcd_members[i].kill()
    }

    /// Start killed etcd member `i` again on its data dir and ports; wait until it answers.
    pub async fn restart_etcd(&mut self, i: usize) -> anyhow::Result<()> {
        self.etcd_members[i].spawn()?;
        self.wait_etcd_member(i).await
    }

    /// The catalog endpoints the services are given (`host:port`).
    pub fn catalog_endpoints(&self) -> Vec<String> {
        match self.opts.catalog {
            CatalogBackend::Metad => vec![self.metad_addr.clone()],
            CatalogBackend::Etcd => self.etcd_members.iter().map(EtcdMember::endpoint).collect(),
        }
    }

    /// The endpoints of the catalog members that are running now.
    fn live_endpoints(&self) -> Vec<String> {
        match self.opts.catalog {
            CatalogBackend::Metad => vec![self.metad_addr.clone()],
            CatalogBackend::Etcd => {
                self.etcd_members.iter().filter(|m| m.child.is_some()).map(EtcdMember::endpoint).collect()
            }
        }
    }

    /// An etcd-client to the catalog (metad, or the running etcd members).
    pub async fn etcd(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect(self.live_endpoints(), None).await?)
    }

    /// Wait until exactly `n` blobd hold a liveness lease in metad.
    pub async fn wait_alive(&self, n: usize) -> anyhow::Result<()> {
        let prefix = Keys::default().alive_all();
        let addr = self.live_endpoints();
        wait_for(&format!("{n} live blobd"), Duration::from_secs(30), || {
            let (prefix, addr) = (prefix.clone(), addr.clone());
            async move {
                let mut c = etcd_client::Client::connect(addr, None).await.ok()?;
                let r =
                    c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.ok()?;
                (r.count() as usize == n).then_some(())
            }
        })
        .await
    }

    pub async fn start_blobd(&mut self, i: usize) -> anyhow::Result<()> {
        let grpc = std::net::TcpListener::bind("127.0.0.1:0")?;
        grpc.set_nonblocking(true)?;
        let addr = grpc.local_addr()?.to_string();
        let metad_endpoints = self.catalog_endpoints();
        let proxied = self.opts.proxied_blobds.contains(&i);
        let source_addr = self.opts.blobd_sources.iter().find(|(b, _)| *b == i).map(|(_, ip)| *ip);
        let node = &mut self.blobds[i];
        let advertise_addr = if proxied {
            match &node.proxy {
                Some(p) => p.retarget(&addr),
                None => node.proxy = Some(proxy::FaultProxy::start(&addr).await?),
            }
            node.proxy.as_ref().map(|p| p.addr.clone())
        } else {
            None
        };
        let cfg = BlobdConfig {
            advertise_addr,
            data_dir: node.data_dir.clone(),
            node_id: Some(node.node_id.clone()),
            metad_endpoints,
            lease_ttl_secs: 5,
            replication_factor: self.opts.replication_factor,
            sync_interval_secs: self.opts.sync_interval_secs,
            tombstone_grace_secs: self.opts.tombstone_grace_secs,
            evict_grace_secs: self.opts.evict_grace_secs,
            scrub_interval_secs: self.opts.scrub_interval_secs,
            source_addr,
            ..BlobdConfig::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("blobd-{i}"))
            .enable_all()
            .build()?;
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let task = rt.spawn(async move {
            let grpc = TcpListener::from_std(grpc)?;
            aether_blobd::run(cfg, BlobdListeners { grpc, admin: None }, sd).await.map_err(anyhow::Error::from)
        });
        if let Some(old) = node.runtime.replace(rt) {
            old.shutdown_background();
        }
        node.addr = Some(addr);
        node.running = Some(Running { shutdown, task });
        Ok(())
    }

    /// Add a blobd with a new data dir and start it; its index. It joins the layout as
    /// `active` by itself (auto-join).
    pub async fn add_blobd(&mut self) -> anyhow::Result<usize> {
        let i = self.blobds.len();
        let data_dir = self.root.path().join(format!("blobd-{i}"));
        std::fs::create_dir_all(&data_dir)?;
        let node_id = aether_blobd::read_or_create_node_id(&data_dir)?;
        self.blobds.push(BlobdNode { node_id, data_dir, addr: None, running: None, runtime: None, proxy: None });
        self.start_blobd(i).await?;
        Ok(i)
    }

    /// Kill blobd `i` as SIGKILL would: every task it runs ends where it is (its runtime
    /// is dropped), its sockets close, its lease stays until it expires.
    pub fn kill_blobd(&mut self, i: usize) {
        let node = &mut self.blobds[i];
        node.running = None;
        if let Some(rt) = node.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Stop blobd `i` gracefully (it revokes its lease) and wait until metad shows it dead.
    pub async fn stop_blobd(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(r) = self.blobds[i].running.take() {
            r.stop().await?;
        }
        if let Some(rt) = self.blobds[i].runtime.take() {
            rt.shutdown_background();
        }
        let live = self.blobds.iter().filter(|b| b.running.is_some()).count();
        self.wait_alive(live).await
    }

    /// Change blobd `i`'s layout entry in metad (state, weight or zone), as `aether node`
    /// does.
    pub async fn set_node(
        &self,
        i: usize,
        change: impl FnOnce(&mut aether_common::catalog::NodeEntry),
    ) -> anyhow::Result<()> {
        let key = Keys::default().node(&self.blobds[i].node_id);
        let mut c = self.etcd().await?;
        let r = c.get(key.as_str(), None).await?;
        let kv = r.kvs().first().context("no layout entry")?;
        let mut entry: aether_common::catalog::NodeEntry = serde_json::from_slice(kv.value())?;
        change(&mut entry);
        c.put(key, serde_json::to_vec(&entry)?, None).await?;
        Ok(())
    }

    pub async fn start_gateway(&mut self) -> anyhow::Result<usize> {
        self.start_gateway_from(None).await
    }

    /// A gateway whose connections to blobd leave from `source` (one side of a partition).
    pub async fn start_gateway_from(&mut self, source: Option<std::net::IpAddr>) -> anyhow::Result<usize> {
        let (s3, s3_addr) = local().await?;
        let (admin, admin_addr) = local().await?;
        let cfg = GatewayConfig {
            metad_endpoints: self.catalog_endpoints(),
            require_auth: self.opts.require_auth,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            region: REGION.into(),
            replication_factor: self.opts.replication_factor,
            write_quorum: self.opts.write_quorum,
            read_quorum: self.opts.read_quorum,
            root_domain: Some(ROOT_DOMAIN.into()),
            min_part_size: self.opts.min_part_size,
            source_addr: source,
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
            if let Some(rt) = b.runtime.take() {
                rt.shutdown_background();
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
        for b in &mut self.blobds {
            if let Some(rt) = b.runtime.take() {
                rt.shutdown_background();
            }
        }
        // Before the temp dir goes (fields drop after this): etcd writes into it.
        for m in &mut self.etcd_members {
            let _ = m.kill();
        }
    }
}

/// The etcd binary: `AETHER_ETCD_BIN`, else `etcd` on PATH.
pub fn etcd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AETHER_ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("etcd")).find(|p| p.is_file())
}

/// One real etcd process of the test cluster; killed (SIGKILL) and reaped on drop.
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    /// etcd's own log (stdout and stderr).
    pub log: PathBuf,
    bin: PathBuf,
    initial_cluster: String,
    token: String,
    child: Option<std::process::Child>,
}

impl EtcdMember {
    /// `host:port` of its client URL.
    pub fn endpoint(&self) -> String {
        self.client_url.trim_start_matches("http://").to_string()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "etcd member {} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        // With an existing data dir (a restart) etcd ignores the --initial-* flags.
        let child = std::process::Command::new(&self.bin)
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={}", self.client_url))
            .arg(format!("--advertise-client-urls={}", self.client_url))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--initial-cluster-state=new")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        let _ = self.kill();
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
        // A gateway that hangs fails the test instead of hanging it forever.
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_secs(300)).build(),
        )
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

/// Deterministic pseudo-random bytes (xorshift), so content mismatches are caught.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
