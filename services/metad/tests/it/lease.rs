use etcd_client::{EventType, LeaseTimeToLiveOptions, PutOptions, WatchOptions};

use crate::harness::{DEADLINE, Server, status};
use crate::watch::next;

#[tokio::test]
async fn grant_keepalive_revoke_deletes_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;
    let lease = c.lease_grant(30, None).await.unwrap();
    assert_eq!(lease.ttl(), 30);
    let id = lease.id();
    assert!(id > 0);
    c.put("alive/1", "node", Some(PutOptions::new().with_lease(id))).await.unwrap();
    assert_eq!(c.get("alive/1", None).await.unwrap().kvs()[0].lease(), id);

    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(DEADLINE, responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((r.id(), r.ttl()), (id, 30));

    let ttl = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 30);
    assert_eq!(ttl.keys(), [b"alive/1".to_vec()]);
    assert!(c.leases().await.unwrap().leases().iter().any(|l| l.id() == id));

    let mut stream = c.watch("alive/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(next(&mut stream).await.created());
    c.lease_revoke(id).await.unwrap();
    let r = next(&mut stream).await;
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    assert_eq!(r.events()[0].kv().unwrap().key(), b"alive/1");
    assert!(c.get("alive/1", None).await.unwrap().kvs().is_empty());

    // An unknown lease: keepalive answers TTL 0, TimeToLive -1, revoke NotFound.
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(DEADLINE, responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(r.ttl(), 0);
    assert_eq!(c.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
    let e = c.lease_revoke(id).await.unwrap_err();
    assert_eq!(status(e), (tonic::Code::NotFound, "etcdserver: requested lease not found".into()));

    // A requested id is honoured; a duplicate is refused.
    let l = c.lease_grant(10, Some(etcd_client::LeaseGrantOptions::new().with_id(4242))).await.unwrap();
    assert_eq!(l.id(), 4242);
    let e = c.lease_grant(10, Some(etcd_client::LeaseGrantOptions::new().with_id(4242))).await.unwrap_err();
    assert_eq!(status(e).1, "etcdserver: lease already exists");
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn lease_expiry_deletes_keys_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;
    let id = c.lease_grant(1, None).await.unwrap().id();
    c.put("ephemeral", "x", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let mut stream = c.watch("ephemeral", None).await.unwrap();
    assert!(next(&mut stream).await.created());
    // Wait on the event itself (bounded by DEADLINE inside `next`).
    let r = next(&mut stream).await;
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    assert!(c.get("ephemeral", None).await.unwrap().kvs().is_empty());
    assert_eq!(c.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
    drop(stream);
    server.stop().await;
}
