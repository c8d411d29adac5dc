use etcd_client::{GetOptions, PutOptions};

use crate::harness::{Server, config};

#[tokio::test]
async fn restart_keeps_keys_revision_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    // A low snapshot threshold so snapshots are built and the log purged under them.
    let cfg = aether_metad::MetadConfig { snapshot_threshold: 5, ..config(dir.path()) };
    let server = Server::start_with(cfg.clone()).await;
    let mut c = server.client().await;
    for i in 0..40 {
        c.put(format!("k/{i:02}"), format!("v{i}"), None).await.unwrap();
    }
    c.delete("k/00", None).await.unwrap();
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("leased", "x", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    let before = c.get("k/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let rev = before.header().unwrap().revision();
    drop(c);
    server.stop().await;
    assert!(dir.path().join("snapshot.db").exists(), "a snapshot file was written");
    let first_index = first_log_index(&dir.path().join("raft-log.db")).await;
    assert!(first_index > 10, "the log was purged below the snapshot (first index {first_index})");

    for round in 0..2 {
        let server = Server::start_with(cfg.clone()).await;
        let mut c = server.client().await;
        let after = c.get("k/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(after.header().unwrap().revision(), rev, "round {round}");
        let flat = |r: &etcd_client::GetResponse| {
            r.kvs()
                .iter()
                .map(|kv| {
                    (kv.key().to_vec(), kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(flat(&after), flat(&before), "round {round}");
        let kv = c.get("leased", None).await.unwrap().kvs()[0].clone();
        assert_eq!(kv.lease(), lease);
        assert_eq!(c.lease_time_to_live(lease, None).await.unwrap().granted_ttl(), 60);
        // History survives too.
        let old = c.get("k/00", Some(GetOptions::new().with_revision(2))).await.unwrap();
        assert_eq!(old.kvs()[0].value(), b"v0");
        drop(c);
        server.stop().await;
    }
}

async fn first_log_index(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    let first: Option<i64> = conn.query_row("SELECT MIN(idx) FROM log", [], |r| r.get(0)).unwrap();
    first.unwrap_or(0)
}
