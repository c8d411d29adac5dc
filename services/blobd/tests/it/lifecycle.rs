use aether_proto::blob::v1::{CreateUploadRequest, GetUploadRequest, HeadRequest};

use crate::harness::*;

#[tokio::test]
async fn serves_while_registration_retries_and_restarts_on_same_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    // metad is unreachable: the API serves anyway, readiness stays false.
    let data = body(200_000, 9);
    assert!(put(&mut c, "b", "../../k", ver(7, "w"), &data).await.applied);
    c.create_upload(CreateUploadRequest { upload_id: "u".into(), meta: Some(meta("b", "m", ver(0, ""))) })
        .await
        .unwrap();
    assert_eq!(node.admin_status("/health").await, 200);
    assert_eq!(node.admin_status("/ready").await, 503);
    let metrics = node.admin_status("/metrics").await;
    assert_eq!(metrics, 200);
    let id = std::fs::read_to_string(tmp.path().join("node_id")).unwrap();
    assert_eq!(id.trim(), aether_blobd::read_or_create_node_id(tmp.path()).unwrap());
    // Keys never become file names.
    assert!(!tmp.path().join("k").exists() && !tmp.path().parent().unwrap().join("k").exists());
    drop(c);
    node.stop().await;

    // Same dir, same process: everything is still there, with the same node id.
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    let (m, got) = get(&mut c, get_req("b", "../../k")).await.unwrap();
    assert!(got == data);
    assert_eq!(m.version, Some(ver(7, "w")));
    let h = c.head(HeadRequest { bucket: "b".into(), key: "../../k".into() }).await.unwrap().into_inner();
    assert_eq!(h.etag, md5_hex(&data));
    c.get_upload(GetUploadRequest { bucket: "b".into(), key: "m".into(), upload_id: "u".into(), completed: false })
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(tmp.path().join("node_id")).unwrap(), id);
    node.stop().await;
}

#[tokio::test]
async fn staging_leftovers_are_swept_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("staging")).unwrap();
    std::fs::write(tmp.path().join("staging").join("leftover"), b"torn").unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    // Once it serves, start-up is done.
    put(&mut c, "b", "k", ver(1, "w"), b"x").await;
    assert_eq!(node.staging_files(), 0);
    node.stop().await;
}

#[test]
fn node_id_is_created_once() {
    let tmp = tempfile::tempdir().unwrap();
    let a = aether_blobd::read_or_create_node_id(tmp.path()).unwrap();
    let b = aether_blobd::read_or_create_node_id(tmp.path()).unwrap();
    assert_eq!(a, b);
    assert!(uuid::Uuid::parse_str(&a).is_ok());
}

#[test]
fn config_defaults_and_unknown_keys() {
    let c: aether_blobd::BlobdConfig = toml_like(r#"{"zone":"z1"}"#);
    assert_eq!(c.zone, "z1");
    assert_eq!(c.weight, 1);
    assert_eq!(c.metad_endpoints, ["127.0.0.1:2379"]);
    assert_eq!(c.catalog_prefix, "/aether/");
    assert!(c.auto_join);
    assert!(serde_json::from_str::<aether_blobd::BlobdConfig>(r#"{"bogus":1}"#).is_err());
}

fn toml_like(json: &str) -> aether_blobd::BlobdConfig {
    serde_json::from_str(json).unwrap()
}
