//! A harness for 3-member (or larger) metad clusters in one test process. Each member runs
//! on its own thread with its own tokio runtime, so `kill` can drop the runtime mid-flight
//! (no graceful shutdown: tasks vanish, files stay as the last fsync left them), and
//! `start` brings it back on the same ports and data dir.
//!
//! Peer traffic goes through TCP proxies on real sockets: member k's peer listener is on
//! 127.0.0.(10+k), its outgoing peer connections leave from that address (metad binds them
//! to its peer listener's IP), and its advertised peer URL is a proxy on 127.0.0.1 that
//! forwards to it. `isolate(k)` makes every proxy drop connections from member k and k's own
//! proxy drop everything — k is cut off from its peers, clients still reach it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use aether_common::shutdown::Shutdown;
use aether_metad::{ClusterState, MetadConfig, MetadError, MetadListeners};
use etcd_client::Client;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::harness::DEADLINE;
pub use crate::harness::eventually;

/// A port for a member (chosen once: a restarted member binds the same one again).
fn free_port(ip: Ipv4Addr) -> u16 {
    aether_common::ports::unassigned_port(ip).expect("a free port")
}

fn bind_reuse(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// Which source IPs a proxy refuses (`all` refuses every connection).
#[derive(Debug, Clone, Default, PartialEq)]
struct Blocked {
    all: bool,
    ips: HashSet<IpAddr>,
}

impl Blocked {
    fn refuses(&self, ip: IpAddr) -> bool {
        self.all || self.ips.contains(&ip)
    }
}

/// A TCP forwarder in front of one member's peer listener.
pub struct Proxy {
    pub addr: SocketAddr,
    blocked: watch::Sender<Blocked>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blocked, rx) = watch::channel(Blocked::default());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, from)) = listener.accept().await else { return };
                let mut rx = rx.clone();
                if rx.borrow().refuses(from.ip()) {
                    continue; // dropped: the connection closes at once
                }
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut a, mut b) = (inbound, outbound);
                    let cut = async {
                        loop {
                            if rx.changed().await.is_err() || rx.borrow().refuses(from.ip()) {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        () = cut => {}
                    }
                });
            }
        });
        Proxy { addr, blocked, task }
    }

    fn set(&self, b: Blocked) {
        self.blocked.send_replace(b);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Running {
    shutdown: Shutdown,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: std::thread::JoinHandle<Result<(), MetadError>>,
    /// Closed when the member's thread ends.
    ended: std::sync::mpsc::Receiver<()>,
}

pub struct Member {
    pub name: String,
    pub dir: PathBuf,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub proxy: Proxy,
    pub admin: SocketAddr,
    running: Option<Running>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None).await.unwrap()
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }
}

pub struct MultiCluster {
    pub members: Vec<Member>,
    pub base: MetadConfig,
    _tmp: Option<tempfile::TempDir>,
}

/// Config every member of a test cluster shares: fast elections, small lease tick.
pub fn base_config() -> MetadConfig {
    MetadConfig {
        heartbeat_interval_ms: 50,
        election_timeout_ms: 300,
        lease_check_interval_ms: 100,
        ..MetadConfig::default()
    }
}

impl MultiCluster {
    /// Start `n` members forming a new cluster and wait until one leads.
    pub async fn start(n: usize, base: MetadConfig) -> MultiCluster {
        crate::harness::init_logs();
        let tmp = tempfile::tempdir().unwrap();
        let mut members = Vec::new();
        for k in 0..n {
            members.push(Self::new_member(tmp.path().join(format!("m{k}")), k).await);
        }
        let mut c = MultiCluster { members, base, _tmp: Some(tmp) };
        let initial = c.initial_cluster();
        for k in 0..n {
            c.start_member(k, &initial, ClusterState::New);
        }
        c.wait_leader(&[]).await;
        c
    }

    async fn new_member(dir: PathBuf, k: usize) -> Member {
        let ip = Ipv4Addr::new(127, 0, 0, 10 + k as u8);
        let peer = SocketAddr::new(ip.into(), free_port(ip));
        let client = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port(Ipv4Addr::LOCALHOST));
        let admin = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port(Ipv4Addr::LOCALHOST));
        let proxy = Proxy::start(peer).await;
        Member { name: format!("m{k}"), dir, client, peer, proxy, admin, running: None }
    }

    /// `name=peer_url,...` of every member.
    pub fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }

    /// Start member `k` (again) on its ports and data dir.
    pub fn start_member(&mut self, k: usize, initial_cluster: &str, state: ClusterState) {
        let m = &mut self.members[k];
        assert!(m.running.is_none(), "member {k} is already running");
        let cfg = MetadConfig {
            name: m.name.clone(),
            data_dir: m.dir.clone(),
            initial_cluster: initial_cluster.to_string(),
            initial_cluster_state: state,
            ..self.base.clone()
        };
        let (client, peer, admin) = (m.client, m.peer, m.admin);
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("metad-{}", m.name))
            .spawn(move || {
                let _ended = ended_tx; // dropped when this thread returns
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                let result = rt.block_on(async move {
                    let listeners = MetadListeners {
                        client: bind_reuse(client).expect("bind client"),
                        peer: Some(bind_reuse(peer).expect("bind peer")),
                        admin: Some(bind_reuse(admin).expect("bind admin")),
                    };
                    tokio::select! {
                        r = aether_metad::run(cfg, listeners, sd) => r,
                        _ = kill_rx => Ok(()),
                    }
                });
                // After a kill, `run` was dropped mid-flight; dropping the runtime now
                // drops every task it spawned, without any of them finishing.
                rt.shutdown_background();
                result
            })
            .unwrap();
        m.running = Some(Running { shutdown, kill: Some(kill_tx), thread, ended });
    }

    /// Drop member `k` abruptly (its runtime and every task in it).
    pub fn kill(&mut self, k: usize) {
        let r = self.members[k].running.take().expect("member not running");
        if let Some(tx) = r.kill {
            let _ = tx.send(());
        }
        let _ = r.thread.join().unwrap();
    }

    /// Graceful stop of member `k`; panics if it has not stopped within `DEADLINE` (a
    /// graceful shutdown waits for open streams, so one left open would hang it).
    pub fn stop(&mut self, k: usize) {
        let r = self.members[k].running.take().expect("member not running");
        r.shutdown.trigger();
        let ended = r.ended.recv_timeout(DEADLINE);
        assert!(
            matches!(ended, Err(std::sync::mpsc::RecvTimeoutError::Disconnected)),
            "member {k} did not stop after a graceful shutdown"
        );
        r.thread.join().unwrap().unwrap();
    }

    /// Wait (up to `DEADLINE`) for member `k` to stop by itself, as a removed member does,
    /// and return what `run` returned; panics if it is still running then.
    pub fn wait_exit(&mut self, k: usize) -> Result<(), MetadError> {
        let r = self.members[k].running.take().expect("member not running");
        let ended = r.ended.recv_timeout(DEADLINE);
        assert!(
            matches!(ended, Err(std::sync::mpsc::RecvTimeoutError::Disconnected)),
            "member {k} did not stop by itself"
        );
        r.thread.join().unwrap()
    }

    /// Cut member `k` off from every peer (both directions).
    pub fn isolate(&self, k: usize) {
        let ip = self.members[k].peer.ip();
        for (j, m) in self.members.iter().enumerate() {
            if j == k {
                m.proxy.set(Blocked { all: true, ips: HashSet::new() });
            } else {
                m.proxy.set(Blocked { all: false, ips: HashSet::from([ip]) });
            }
        }
    }

    pub fn heal(&self) {
        for m in &self.members {
            m.proxy.set(Blocked::default());
        }
    }

    /// Index of the member every running, non-excluded member agrees leads (waits).
    pub async fn wait_leader(&self, exclude: &[usize]) -> usize {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut ids = Vec::new();
            for (k, m) in self.members.iter().enumerate() {
                if !m.is_running() || exclude.contains(&k) {
                    continue;
                }
                let status = async {
                    let mut c = Client::connect([m.endpoint()], None).await.ok()?;
                    let s = c.status().await.ok()?;
                    Some((s.leader(), s.header().map(|h| h.member_id()).unwrap_or(0)))
                };
                ids.push(tokio::time::timeout(Duration::from_secs(2), status).await.ok().flatten());
            }
            if let Some(Some((leader, _))) = ids.first()
                && *leader != 0
                && ids.iter().all(|s| matches!(s, Some((l, _)) if l == leader))
            {
                let leader = *leader;
                if let Some(k) = ids.iter().position(|s| matches!(s, Some((_, me)) if *me == leader)) {
                    // `ids` skipped stopped/excluded members; map back to the member index.
                    let running: Vec<usize> = (0..self.members.len())
                        .filter(|k| self.members[*k].is_running() && !exclude.contains(k))
                        .collect();
                    return running[k];
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no agreed leader: {ids:?}");
            tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
        }
    }
}

impl Drop for MultiCluster {
    fn drop(&mut self) {
        for k in 0..self.members.len() {
            if self.members[k].is_running() {
                self.kill(k);
            }
        }
    }
}
