use std::collections::BTreeSet;

use aether_tests::{Cluster, ClusterOptions};

use crate::bs;

/// Everything ListObjectsV2 returns for (prefix, delimiter), following continuation tokens.
async fn list_all(
    s3: &aws_sdk_s3::Client,
    prefix: &str,
    delimiter: Option<&str>,
    page: i32,
) -> anyhow::Result<(Vec<String>, Vec<String>, usize)> {
    let mut keys = Vec::new();
    let mut prefixes = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 1000, "too many pages");
        let mut req = s3.list_objects_v2().bucket("lst").prefix(prefix).max_keys(page);
        if let Some(d) = delimiter {
            req = req.delimiter(d);
        }
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let out = req.send().await?;
        let n = out.contents().len() + out.common_prefixes().len();
        assert!(n <= page as usize, "page holds {n} > max-keys {page}");
        assert_eq!(out.key_count(), Some(n as i32));
        keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        prefixes.extend(out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_string)));
        if out.is_truncated() == Some(true) {
            token = Some(out.next_continuation_token().expect("truncated page without a token").to_string());
        } else {
            break;
        }
    }
    Ok((keys, prefixes, pages))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_over_2500_keys_with_delimiters() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("lst").send().await?;
    // 2,500 keys: 25 "directories" of 90 files, 250 top-level files.
    let mut all = BTreeSet::new();
    for d in 0..25 {
        for f in 0..90 {
            all.insert(format!("dir{d:02}/file{f:03}"));
        }
    }
    for f in 0..250 {
        all.insert(format!("top{f:03}"));
    }
    let keys: Vec<String> = all.iter().cloned().collect();
    futures::future::try_join_all(keys.chunks(100).map(|chunk| {
        let s3 = s3.clone();
        async move {
            for k in chunk {
                s3.put_object().bucket("lst").key(k).body(bs(k.as_bytes())).send().await?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;

    // No delimiter: every key exactly once, in order.
    let (got, prefixes, pages) = list_all(&s3, "", None, 1000).await?;
    assert_eq!(got, keys);
    assert!(prefixes.is_empty());
    assert_eq!(pages, 3);

    // Delimiter at the root: 25 common prefixes + 250 keys, across pages of 7.
    let (got, prefixes, _) = list_all(&c.s3(1), "", Some("/"), 7).await?;
    let want_prefixes: Vec<String> = (0..25).map(|d| format!("dir{d:02}/")).collect();
    assert_eq!(prefixes, want_prefixes);
    assert_eq!(got, keys.iter().filter(|k| k.starts_with("top")).cloned().collect::<Vec<_>>());

    // Prefix + delimiter inside one directory.
    let (got, prefixes, _) = list_all(&s3, "dir07/", Some("/"), 40).await?;
    assert_eq!(got.len(), 90);
    assert!(prefixes.is_empty());
    assert!(got.iter().all(|k| k.starts_with("dir07/")));

    // start-after, and a deleted key disappears from listings.
    let out = s3.list_objects_v2().bucket("lst").start_after("top247").send().await?;
    let after: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(after, vec!["top248", "top249"]);
    s3.delete_object().bucket("lst").key("top248").send().await?;
    let out = s3.list_objects_v2().bucket("lst").start_after("top247").send().await?;
    let after: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(after, vec!["top249"]);

    // Owners: always in v1, in v2 only with fetch-owner (the bucket owner's key).
    let out = s3.list_objects_v2().bucket("lst").start_after("top247").send().await?;
    assert!(out.contents().iter().all(|o| o.owner().is_none()));
    let out = s3.list_objects_v2().bucket("lst").start_after("top247").fetch_owner(true).send().await?;
    let owners: Vec<Option<&str>> = out.contents().iter().map(|o| o.owner().and_then(|w| w.id())).collect();
    assert_eq!(owners, vec![Some(aether_tests::ACCESS_KEY)]);
    let out = s3.list_objects().bucket("lst").marker("top248").send().await?;
    let owners: Vec<Option<&str>> = out.contents().iter().map(|o| o.owner().and_then(|w| w.display_name())).collect();
    assert_eq!(owners, vec![Some(aether_tests::ACCESS_KEY)]);
    Ok(())
}
