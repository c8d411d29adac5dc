//! One task per Watch stream. It subscribes to the applied events first, then answers
//! creates by replaying history from `start_revision` and following live events, so no
//! revision is missed or repeated. The apply path never waits on a watcher: events go out
//! on a broadcast channel; a stream that lags past it replays from MVCC history, and a
//! watcher whose history was compacted away is cancelled with the compact revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use aether_proto::etcd::etcdserverpb as pb;
use aether_proto::etcd::mvccpb;
use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc};
use tonic::{Status, Streaming};
use tracing::Instrument as _;

use crate::mvcc::{KeyRange, RevisionEvents};
use crate::node::Node;

/// Responses queued per stream before the stream task waits for the client.
pub const STREAM_BUFFER: usize = 64;
/// At most this many events in one response while replaying history.
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// ... and about this many bytes (clients refuse messages over 4 MiB by default).
const MAX_BYTES_PER_RESPONSE: usize = 1024 * 1024;

const COMPACTED_REASON: &str = "etcdserver: mvcc: required revision has been compacted";

struct Watcher {
    range: KeyRange,
    /// The next revision this watcher has not been sent.
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    /// Send an empty response (a progress notification) every progress interval.
    progress_notify: bool,
}

impl Watcher {
    fn select(&self, events: &[mvccpb::Event]) -> Vec<mvccpb::Event> {
        let put = mvccpb::event::EventType::Put as i32;
        events
            .iter()
            .filter(|e| e.kv.as_ref().is_some_and(|kv| self.range.contains(&kv.key)))
            .filter(|e| if e.r#type == put { !self.no_put } else { !self.no_delete })
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

/// The client went away (its receiving side is closed).
struct Gone;

struct Session {
    node: Arc<Node>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

pub fn spawn_session(
    node: Arc<Node>,
    inbound: Streaming<pb::WatchRequest>,
) -> mpsc::Receiver<Result<pb::WatchResponse, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    // Subscribe before any create is handled: every revision after what a create reads
    // from history arrives here.
    let events = node.shared.events.subscribe();
    let session = Session { node, tx, watchers: BTreeMap::new(), next_id: 0 };
    tokio::spawn(session.run(inbound, events).instrument(tracing::Span::current()));
    rx
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::WatchRequest>,
        mut events: broadcast::Receiver<Arc<RevisionEvents>>,
    ) {
        let shutdown = self.node.shutdown.clone();
        let mut progress = tokio::time::interval(self.node.watch_progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await; // the first tick is immediate
        loop {
            let step = tokio::select! {
                () = shutdown.wait() => break,
                _ = progress.tick() => self.notify_progress().await,
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => self.handle(req).await,
                    Some(Err(status)) => {
                        tracing::debug!(error = %status, "watch stream ended by client error");
                        break;
                    }
                    None => break,
                },
                ev = events.recv() => match ev {
                    Ok(ev) => self.dispatch(&ev).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(skipped = n, watchers = self.watchers.len(), "watch stream lagged; replaying from history");
                        self.catch_up_all().await
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if step.is_err() {
                break;
            }
        }
    }

    /// Queue a response; waits while the client is slow (never the apply path), and gives
    /// up when the client went away or the server shuts down.
    async fn send(&self, resp: pb::WatchResponse) -> Result<(), Gone> {
        tokio::select! {
            r = self.tx.send(Ok(resp)) => r.map_err(|_| Gone),
            () = self.node.shutdown.wait() => Err(Gone),
        }
    }

    /// etcd's progress_notify: every watcher that asked for it and has been sent every
    /// revision so far gets an empty response carrying the current revision.
    async fn notify_progress(&mut self) -> Result<(), Gone> {
        let header = self.node.current_header();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.next_rev > header.revision)
            .map(|(id, _)| *id)
            .collect();
        for watch_id in due {
            self.send(pb::WatchResponse { header: Some(header), watch_id, ..Default::default() }).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, req: pb::WatchRequest) -> Result<(), Gone> {
        use pb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                self.watchers.remove(&c.watch_id);
                let header = Some(self.node.current_header());
                self.send(pb::WatchResponse { header, watch_id: c.watch_id, canceled: true, ..Default::default() })
                    .await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let header = Some(self.node.current_header());
                self.send(pb::WatchResponse { header, watch_id: -1, ..Default::default() }).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Gone> {
        use pb::watch_create_request::FilterType;
        // A watch created after a write answered here starts after it (etcd's members
        // answer a write once they applied it; ours once the leader did, see `write_fence`).
        // A member that cannot apply that far in the request timeout is stuck anyway.
        let _ = self.node.await_write_fence().await;
        let header = self.node.current_header();
        let id = if c.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        } else {
            c.watch_id
        };
        if self.watchers.contains_key(&id) {
            // etcd: the create fails with watch id -1 (mvcc.ErrWatcherDuplicateID).
            return self
                .send(pb::WatchResponse {
                    header: Some(header),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".to_string(),
                    ..Default::default()
                })
                .await;
        }
        let current = header.revision;
        let watcher = Watcher {
            range: KeyRange::new(&c.key, &c.range_end),
            next_rev: if c.start_revision <= 0 { current + 1 } else { c.start_revision },
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
        };
        let replay = c.start_revision > 0 && c.start_revision <= current;
        self.watchers.insert(id, watcher);
        self.send(pb::WatchResponse { header: Some(header), watch_id: id, created: true, ..Default::default() })
            .await?;
        if replay { self.catch_up(id).await } else { Ok(()) }
    }

    /// Send one applied revision's events to every watcher that wants them.
    async fn dispatch(&mut self, ev: &RevisionEvents) -> Result<(), Gone> {
        let mut out = Vec::new();
        for (id, w) in &mut self.watchers {
            if ev.revision < w.next_rev {
                continue;
            }
            w.next_rev = ev.revision + 1;
            let events = w.select(&ev.events);
            if !events.is_empty() {
                out.push((*id, events));
            }
        }
        for (watch_id, events) in out {
            let header = Some(self.node.header(ev.revision));
            self.send(pb::WatchResponse { header, watch_id, events, ..Default::default() }).await?;
        }
        Ok(())
    }

    async fn catch_up_all(&mut self) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Drop a watcher and tell the client why.
    async fn cancel(&mut self, id: i64, compact_revision: i64, reason: &str) -> Result<(), Gone> {
        self.watchers.remove(&id);
        let header = Some(self.node.current_header());
        let resp = pb::WatchResponse {
            header,
            watch_id: id,
            canceled: true,
            compact_revision,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        self.send(resp).await
    }

    /// Replay a watcher's events from `next_rev` up to the current revision from history,
    /// a page at a time.
    async fn catch_up(&mut self, id: i64) -> Result<(), Gone> {
        loop {
            let Some(w) = self.watchers.get(&id) else { return Ok(()) };
            let page = self.node.shared.db.events_since(&w.range, w.next_rev, MAX_EVENTS_PER_RESPONSE).await;
            let (revisions, current, complete) = match page {
                Ok(p) => p,
                Err(Ok(compact_revision)) => return self.cancel(id, compact_revision, COMPACTED_REASON).await,
                Err(Err(e)) => {
                    tracing::error!(error = %e, "watch replay failed");
                    return self.cancel(id, 0, &e.to_string()).await;
                }
            };
            let mut batch: Vec<mvccpb::Event> = Vec::new();
            let mut batch_rev = 0;
            let mut responses = Vec::new();
            let mut batch_bytes = 0;
            let last_rev = revisions.last().map(|r| r.revision);
            for rev in &revisions {
                let selected = w.select(&rev.events);
                batch_bytes += selected.iter().map(prost::Message::encoded_len).sum::<usize>();
                batch.extend(selected);
                batch_rev = rev.revision;
                if batch.len() >= MAX_EVENTS_PER_RESPONSE || batch_bytes >= MAX_BYTES_PER_RESPONSE {
                    responses.push((batch_rev, std::mem::take(&mut batch)));
                    batch_bytes = 0;
                }
            }
            if !batch.is_empty() {
                responses.push((batch_rev, batch));
            }
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev =
                    if complete { w.next_rev.max(current + 1) } else { last_rev.map_or(w.next_rev, |r| r + 1) };
            }
            for (rev, events) in responses {
                let header = Some(self.node.header(rev));
                self.send(pb::WatchResponse { header, watch_id: id, events, ..Default::default() }).await?;
            }
            if complete {
                return Ok(());
            }
        }
    }
}
