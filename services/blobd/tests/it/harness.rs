use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aether_blobd::{BlobdConfig, BlobdError, BlobdListeners};
use aether_common::shutdown::Shutdown;
use aether_proto::blob::v1::blob_service_client::BlobServiceClient;
use aether_proto::blob::v1::{
    GetRequest, ObjectMeta, PutCommit, PutHeader, PutRequest, Version, WriteResponse, get_response, put_request,
};
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub type Client = BlobServiceClient<Channel>;

pub struct Node {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<Result<(), BlobdError>>,
}

/// A 127.0.0.1 port where nothing listens.
pub async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

pub async fn start(dir: &Path) -> Node {
    start_with(dir, vec![format!("127.0.0.1:{}", dead_port().await)]).await
}

pub async fn start_with(dir: &Path, metad_endpoints: Vec<String>) -> Node {
    start_cfg(dir, metad_endpoints, |_| {}).await
}

/// Start with the default test config changed by `change`.
pub async fn start_cfg(dir: &Path, metad_endpoints: Vec<String>, change: impl FnOnce(&mut BlobdConfig)) -> Node {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
    let mut cfg = BlobdConfig { data_dir: dir.to_path_buf(), metad_endpoints, lease_ttl_secs: 2, ..Default::default() };
    change(&mut cfg);
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(aether_blobd::run(cfg, BlobdListeners { grpc, admin: Some(admin) }, shutdown.clone()));
    Node { grpc: grpc_addr, admin: admin_addr, dir: dir.to_path_buf(), shutdown, handle }
}

impl Node {
    pub async fn client(&self) -> Client {
        let ch = aether_common::grpc::endpoint(&self.grpc.to_string()).unwrap().connect().await.unwrap();
        BlobServiceClient::new(ch).max_decoding_message_size(16 << 20).max_encoding_message_size(16 << 20)
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let res = tokio::time::timeout(Duration::from_secs(20), self.handle).await.expect("blobd stops in time");
        res.unwrap().unwrap();
    }

    /// Status line of GET `path` on the admin port.
    pub async fn admin_status(&self, path: &str) -> u16 {
        let mut s = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Files under staging/.
    pub fn staging_files(&self) -> usize {
        std::fs::read_dir(self.dir.join("staging")).unwrap().count()
    }

    /// Files under blobs/*/.
    pub fn blob_files(&self) -> usize {
        let mut n = 0;
        for shard in std::fs::read_dir(self.dir.join("blobs")).unwrap() {
            n += std::fs::read_dir(shard.unwrap().path()).unwrap().count();
        }
        n
    }
}

/// Poll `cond` until true or panic after `secs`.
pub async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let ready = std::future::ready;
    wait_until(what, Instant::now() + Duration::from_secs(secs), || ready(cond())).await
}

/// `wait_for` with an async condition and an absolute deadline.
pub async fn wait_until<F, Fut>(what: &str, deadline: Instant, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn ver(hlc: u64, writer: &str) -> Version {
    Version { hlc, writer: writer.to_string() }
}

pub fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

pub fn meta(bucket: &str, key: &str, v: Version) -> ObjectMeta {
    ObjectMeta {
        bucket: bucket.into(),
        key: key.into(),
        version: Some(v),
        content_type: "text/plain".into(),
        last_modified_ms: 1_700_000_000_000,
        user_metadata: [("color".to_string(), "blue".to_string())].into(),
        ..Default::default()
    }
}

/// The messages of a complete put of `body` in `chunk`-sized pieces.
pub fn put_msgs(bucket: &str, key: &str, v: Version, body: &[u8], chunk: usize) -> Vec<PutRequest> {
    let mut msgs = vec![PutRequest {
        msg: Some(put_request::Msg::Header(PutHeader {
            meta: Some(meta(bucket, key, v)),
            verbatim: false,
            heal: false,
        })),
    }];
    for c in body.chunks(chunk.max(1)) {
        msgs.push(PutRequest { msg: Some(put_request::Msg::Chunk(c.to_vec().into())) });
    }
    msgs.push(PutRequest {
        msg: Some(put_request::Msg::Commit(PutCommit {
            size: body.len() as u64,
            md5_hex: md5_hex(body),
            ..Default::default()
        })),
    });
    msgs
}

pub async fn put(c: &mut Client, bucket: &str, key: &str, v: Version, body: &[u8]) -> WriteResponse {
    c.put(tokio_stream::iter(put_msgs(bucket, key, v, body, 64 * 1024))).await.unwrap().into_inner()
}

/// Meta and body of a get.
pub async fn get(c: &mut Client, req: GetRequest) -> Result<(ObjectMeta, Vec<u8>), tonic::Status> {
    let mut s = c.get(req).await?.into_inner();
    let first = s.message().await?.expect("a first message");
    let Some(get_response::Msg::Meta(meta)) = first.msg else { panic!("first message is not meta") };
    let mut body = Vec::new();
    while let Some(m) = s.message().await? {
        match m.msg {
            Some(get_response::Msg::Chunk(c)) => body.extend_from_slice(&c),
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok((meta, body))
}

pub fn get_req(bucket: &str, key: &str) -> GetRequest {
    GetRequest { bucket: bucket.into(), key: key.into(), ..Default::default() }
}

pub fn code(s: &tonic::Status) -> String {
    s.metadata().get(aether_blobd::CODE_KEY).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Deterministic test bytes.
pub fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8)).collect()
}
