//! A fault-injecting TCP proxy on 127.0.0.1: a blobd advertises the proxy's address, so
//! every gateway and every other blobd reaches it only through here. `cut` drops every
//! connection and refuses new ones (a partition, as the others see it); `block_from` does
//! the same for connections from some source addresses only (clients bound to their own
//! loopback address: one side of a partition); `heal` lets traffic through again.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    target: Mutex<String>,
    blocked: Mutex<HashSet<IpAddr>>,
    conns: Mutex<Vec<(IpAddr, AbortHandle)>>,
}

pub struct FaultProxy {
    pub addr: String,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a new loopback port and forward to `target`.
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?.to_string();
        let state = Arc::new(State { target: Mutex::new(target.to_string()), ..State::default() });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, from)) = l.accept().await {
                let blocked = st.blocked.lock().unwrap_or_else(|e| e.into_inner()).contains(&from.ip());
                if blocked || st.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = st.target.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let task = tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
                    let _ = upstream.set_nodelay(true);
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
                let mut conns = st.conns.lock().unwrap_or_else(|e| e.into_inner());
                conns.retain(|(_, h)| !h.is_finished());
                conns.push((from.ip(), task.abort_handle()));
            }
        });
        Ok(Self { addr, state, accept })
    }

    /// Forward new connections to `target` (the proxied service restarted on a new port).
    pub fn retarget(&self, target: &str) {
        *self.state.target.lock().unwrap_or_else(|e| e.into_inner()) = target.to_string();
    }

    /// Drop every connection through the proxy and refuse new ones.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for (_, h) in self.state.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
    }

    /// Drop the connections from `sources` and refuse their new ones.
    pub fn block_from(&self, sources: &[IpAddr]) {
        self.state.blocked.lock().unwrap_or_else(|e| e.into_inner()).extend(sources.iter().copied());
        let mut conns = self.state.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|(ip, h)| {
            let drop = sources.contains(ip);
            if drop {
                h.abort();
            }
            !drop
        });
    }

    pub fn heal(&self) {
        self.state.blocked.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
