//! Lease expiry: deadlines are leader-local (a new leader, or a restarted node, gives every
//! lease its full TTL again, as etcd does); an expired lease is revoked through the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_common::shutdown::Shutdown;

use crate::error::EtcdError;
use crate::node::Node;
use crate::raft::Command;

#[derive(Debug, Default)]
pub struct LeaseClock(Mutex<HashMap<i64, Instant>>);

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start (or restart) a lease's TTL from now.
    pub fn refresh(&self, id: i64, ttl: i64) {
        self.lock().insert(id, Instant::now() + ttl_duration(ttl));
    }

    pub fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Time left, if this leader tracks the lease.
    pub fn remaining(&self, id: i64) -> Option<Duration> {
        self.lock().get(&id).map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Every `interval`, while leader: revoke leases whose deadline passed.
pub async fn expiry_loop(node: Arc<Node>, interval: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        let leader = node.is_leader();
        if !leader {
            was_leader = false;
            continue;
        }
        let now = Instant::now();
        let expired: Vec<i64> = {
            let st = node.shared.read();
            let mut clock = node.leases.lock();
            if !was_leader {
                clock.clear();
            }
            clock.retain(|id, _| st.leases.contains_key(id));
            st.leases
                .iter()
                .filter_map(|(&id, &ttl)| {
                    let deadline = *clock.entry(id).or_insert_with(|| now + ttl_duration(ttl));
                    (deadline <= now).then_some(id)
                })
                .collect()
        };
        was_leader = true;
        for id in expired {
            match node.write_local(Command::LeaseRevoke { id }).await {
                Ok((out, _)) => {
                    node.leases.remove(id);
                    tracing::info!(lease = id, revision = out.revision, "lease expired");
                }
                Err(EtcdError::LeaseNotFound) => node.leases.remove(id),
                Err(e) => tracing::warn!(lease = id, error = %e, "revoking an expired lease failed"),
            }
        }
    }
}
