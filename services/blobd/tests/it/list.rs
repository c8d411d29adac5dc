use aether_proto::blob::v1::{DeleteRequest, ListRequest, ListResponse};

use crate::harness::*;

fn keys(r: &ListResponse) -> Vec<(String, bool)> {
    r.entries.iter().map(|e| (e.meta.as_ref().unwrap().key.clone(), e.is_prefix)).collect()
}

async fn list(c: &mut Client, prefix: &str, start_after: &str, limit: u32, delimiter: &str) -> ListResponse {
    c.list(ListRequest {
        bucket: "b".into(),
        prefix: prefix.into(),
        start_after: start_after.into(),
        limit,
        delimiter: delimiter.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn list_orders_bytewise_and_rolls_up() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    let all = [
        "a",
        "a/b/c",
        "a/b/d",
        "a/c",
        "a/d/e",
        "a/d/f/g",
        "../etc/passwd",
        "..",
        "z",
        "é",
        "日本/語",
        "Z",
        "a b",
        "ab",
        "a/t/x",
    ];
    for (i, k) in all.iter().enumerate() {
        put(&mut c, "b", k, ver(100 + i as u64, "w"), k.as_bytes()).await;
    }
    put(&mut c, "other", "a", ver(1, "w"), b"x").await;
    // a/t/ holds only a tombstone: not rolled up. Tombstones are listed without a delimiter.
    c.delete(DeleteRequest {
        bucket: "b".into(),
        key: "a/t/x".into(),
        version: Some(ver(1000, "w")),
        last_modified_ms: 1,
    })
    .await
    .unwrap();

    let mut want: Vec<&str> = all.to_vec();
    want.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    let r = list(&mut c, "", "", 0, "").await;
    assert!(!r.truncated);
    let got: Vec<String> = keys(&r).into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, want);
    let tomb = r.entries.iter().find(|e| e.meta.as_ref().unwrap().key == "a/t/x").unwrap();
    assert!(tomb.meta.as_ref().unwrap().tombstone);
    assert_eq!(r.entries[0].meta.as_ref().unwrap().bucket, "b");

    // Paging without a delimiter.
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..100 {
        let r = list(&mut c, "", &after, 4, "").await;
        assert!(r.entries.len() <= 4);
        seen.extend(keys(&r).into_iter().map(|(k, _)| k));
        after = seen.last().cloned().unwrap_or_default();
        if !r.truncated {
            break;
        }
    }
    assert_eq!(seen, want);

    // Prefix + start_after.
    let r = list(&mut c, "a/", "a/b/c", 0, "").await;
    let got: Vec<String> = keys(&r).into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, ["a/b/d", "a/c", "a/d/e", "a/d/f/g", "a/t/x"]);
    let r = list(&mut c, "..", "", 0, "").await;
    assert_eq!(keys(&r), [("..".to_string(), false), ("../etc/passwd".to_string(), false)]);

    // Delimiter rollup.
    let r = list(&mut c, "", "", 0, "/").await;
    let e = |k: &str, p: bool| (k.to_string(), p);
    assert_eq!(
        keys(&r),
        [
            e("..", false),
            e("../", true),
            e("Z", false),
            e("a", false),
            e("a b", false),
            e("a/", true),
            e("ab", false),
            e("z", false),
            e("é", false),
            e("日本/", true)
        ]
    );
    let r = list(&mut c, "a/", "", 0, "/").await;
    assert_eq!(keys(&r), [e("a/b/", true), e("a/c", false), e("a/d/", true)]);
    assert!(!r.truncated);

    // Rollup + paging: the last entry (key or prefix) is the next start_after.
    let mut pages = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let r = list(&mut c, "a/", &after, 1, "/").await;
        pages.push((keys(&r), r.truncated));
        match r.entries.last() {
            Some(l) if r.truncated => after = l.meta.as_ref().unwrap().key.clone(),
            _ => break,
        }
    }
    assert_eq!(pages, [(vec![e("a/b/", true)], true), (vec![e("a/c", false)], true), (vec![e("a/d/", true)], false)]);
    // start_after inside a rolled-up prefix does not repeat it.
    let r = list(&mut c, "a/", "a/b/c", 0, "/").await;
    assert_eq!(keys(&r), [e("a/c", false), e("a/d/", true)]);
    // Limit is capped, 0 means 1000.
    let r = list(&mut c, "", "", 50_000, "").await;
    assert_eq!(r.entries.len(), all.len());
    node.stop().await;
}
