use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use aether_common::shutdown::Shutdown;
use aether_metad::{MetadConfig, MetadError, MetadListeners};
use etcd_client::Client;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Upper bound for any wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Server {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Shutdown,
    handle: JoinHandle<Result<(), MetadError>>,
}

pub fn config(dir: &Path) -> MetadConfig {
    MetadConfig { data_dir: dir.to_path_buf(), lease_check_interval_ms: 100, ..Default::default() }
}

impl Server {
    pub async fn start(dir: &Path) -> Server {
        Self::start_with(config(dir)).await
    }

    pub async fn start_with(cfg: MetadConfig) -> Server {
        init_logs();
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = client.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(aether_metad::run(
            cfg,
            MetadListeners { client, peer: None, admin: Some(admin) },
            shutdown.clone(),
        ));
        let server = Server { addr, admin: admin_addr, shutdown, handle };
        server.wait_ready().await;
        server
    }

    /// Poll Maintenance.Status until it answers (bounded by `DEADLINE`).
    async fn wait_ready(&self) {
        eventually("metad answering Status", || async {
            let mut c = tokio::time::timeout(Duration::from_secs(2), Client::connect([self.endpoint()], None))
                .await
                .ok()?
                .ok()?;
            tokio::time::timeout(Duration::from_secs(2), c.status()).await.ok()?.ok()
        })
        .await;
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None).await.unwrap()
    }

    /// Trigger shutdown and wait for `run` to return.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let res = tokio::time::timeout(DEADLINE, self.handle).await.expect("run did not return after shutdown");
        res.unwrap().unwrap();
    }
}

/// Logs only when asked for (RUST_LOG=aether_metad=debug cargo test ...).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The gRPC status inside an etcd-client error.
pub fn status(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// The status line of a plain HTTP/1.1 GET to the admin server.
pub async fn admin_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string()
}

/// Poll `f` until it returns `Some` (bounded by `DEADLINE`).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}
