use aether_tests::{Cluster, ClusterOptions};
use sha2::Digest as _;

use crate::{body_bytes, bs, err_code, pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buckets_lifecycle_and_errors() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("alpha").send().await?;
    assert_eq!(err_code(s3.create_bucket().bucket("alpha").send().await), "BucketAlreadyOwnedByYou");
    for bad in ["ab", "Upper", "-lead", "trail-", "a..b", "192.168.1.1", &"x".repeat(64), "under_score"] {
        assert_eq!(err_code(s3.create_bucket().bucket(bad).send().await), "InvalidBucketName", "{bad}");
    }
    s3.head_bucket().bucket("alpha").send().await?;
    assert!(s3.head_bucket().bucket("nope").send().await.is_err());
    // The second gateway sees the bucket through its watched catalog.
    let s3b = c.s3(1);
    aether_tests::wait_for("bucket on gateway 2", std::time::Duration::from_secs(10), || {
        let s3b = s3b.clone();
        async move { s3b.head_bucket().bucket("alpha").send().await.ok().map(|_| ()) }
    })
    .await?;
    let names: Vec<String> =
        s3b.list_buckets().send().await?.buckets().iter().filter_map(|b| b.name().map(str::to_string)).collect();
    assert_eq!(names, vec!["alpha".to_string()]);

    s3.put_object().bucket("alpha").key("k").body(bs(b"x")).send().await?;
    assert_eq!(err_code(s3.delete_bucket().bucket("alpha").send().await), "BucketNotEmpty");
    s3.delete_object().bucket("alpha").key("k").send().await?;
    s3.delete_bucket().bucket("alpha").send().await?;
    assert_eq!(err_code(s3.delete_bucket().bucket("alpha").send().await), "NoSuchBucket");
    assert_eq!(err_code(s3.put_object().bucket("alpha").key("k").body(bs(b"x")).send().await), "NoSuchBucket");
    // etcd sees no bucket any more.
    let mut etcd = c.etcd().await?;
    let r = etcd.get("/aether/buckets/alpha", None).await?;
    assert_eq!(r.kvs().len(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_bucket_race_has_one_winner() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions { blobds: 1, ..ClusterOptions::default() }).await?;
    for round in 0..5 {
        let name = format!("race-{round}");
        let (a, b) =
            tokio::join!(c.s3(0).create_bucket().bucket(&name).send(), c.s3(1).create_bucket().bucket(&name).send());
        let ok = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(ok, 1, "round {round}: exactly one CreateBucket must win");
        let loser = if a.is_ok() { err_code(b) } else { err_code(a) };
        assert_eq!(loser, "BucketAlreadyOwnedByYou");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_round_trip_with_metadata_ranges_and_odd_keys() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("objs").send().await?;
    let data = pattern(100_000, 1);
    let put = s3
        .put_object()
        .bucket("objs")
        .key("dir/file.bin")
        .content_type("application/x-test")
        .metadata("color", "blue")
        .body(bs(&data))
        .send()
        .await?;
    let md5 = hex::encode(md5::Md5::digest(&data));
    assert_eq!(put.e_tag(), Some(format!("\"{md5}\"").as_str()));

    // Read through the other gateway.
    let got = c.s3(1).get_object().bucket("objs").key("dir/file.bin").send().await?;
    assert_eq!(got.content_type(), Some("application/x-test"));
    assert_eq!(got.metadata().and_then(|m| m.get("color")).map(String::as_str), Some("blue"));
    assert_eq!(got.content_length(), Some(100_000));
    assert_eq!(body_bytes(got).await, data);

    // User metadata is limited to 2 KiB (names and values), as S3 limits it.
    let r = s3.put_object().bucket("objs").key("meta").metadata("big", "x".repeat(2100)).body(bs(b"x")).send().await;
    assert_eq!(err_code(r), "MetadataTooLarge");
    s3.put_object().bucket("objs").key("meta").metadata("fits", "x".repeat(2000)).body(bs(b"x")).send().await?;

    let head = s3.head_object().bucket("objs").key("dir/file.bin").send().await?;
    assert_eq!(head.content_length(), Some(100_000));
    assert_eq!(head.e_tag(), Some(format!("\"{md5}\"").as_str()));

    // Ranges.
    for (range, lo, hi) in [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=-5", 99_995, 99_999),
        ("bytes=500-200000", 500, 99_999),
    ] {
        let r = s3.get_object().bucket("objs").key("dir/file.bin").range(range).send().await?;
        assert_eq!(r.content_range(), Some(format!("bytes {lo}-{hi}/100000").as_str()), "{range}");
        assert_eq!(body_bytes(r).await, data[lo..=hi], "{range}");
    }
    assert_eq!(
        err_code(s3.get_object().bucket("objs").key("dir/file.bin").range("bytes=100000-").send().await),
        "InvalidRange"
    );

    // Empty object, odd keys, the longest key.
    let long_key = "k".repeat(1024);
    let odd = ["empty", "../../etc/passwd", "sp ace+plus", "ünïcødé/日本語", "a//b/", "%2F%41", &long_key];
    for (i, key) in odd.iter().enumerate() {
        let body = if *key == "empty" { Vec::new() } else { pattern(i * 7 + 1, i as u64) };
        s3.put_object().bucket("objs").key(*key).body(bs(&body)).send().await?;
        let got = s3.get_object().bucket("objs").key(*key).send().await?;
        assert_eq!(body_bytes(got).await, body, "key {key:?}");
    }
    let too_long = "k".repeat(1025);
    assert_eq!(err_code(s3.put_object().bucket("objs").key(&too_long).body(bs(b"x")).send().await), "KeyTooLongError");

    // Overwrite, delete, missing.
    s3.put_object().bucket("objs").key("dir/file.bin").body(bs(b"v2")).send().await?;
    assert_eq!(body_bytes(s3.get_object().bucket("objs").key("dir/file.bin").send().await?).await, b"v2");
    s3.delete_object().bucket("objs").key("dir/file.bin").send().await?;
    assert_eq!(err_code(s3.get_object().bucket("objs").key("dir/file.bin").send().await), "NoSuchKey");
    s3.delete_object().bucket("objs").key("never-existed").send().await?;
    assert_eq!(err_code(s3.get_object().bucket("nobucket").key("x").send().await), "NoSuchBucket");
    Ok(())
}

/// DeleteObjects: verbose and quiet results, missing keys counted as deleted, odd keys,
/// per-key errors, and the request-level errors (no integrity header, a wrong Content-MD5,
/// more than 1000 keys, an empty list) that delete nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_objects_verbose_quiet_and_errors() -> anyhow::Result<()> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    use base64::Engine as _;
    use md5::Digest as _;
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("del").send().await?;
    let mut keys: Vec<String> = (0..24).map(|i| format!("k/{i:02}")).collect();
    keys.extend(["a b+c", "ünï/çødé", "x&<y>\"'", "trailing/"].map(str::to_string));
    for k in &keys {
        s3.put_object().bucket("del").key(k).body(bs(b"v")).send().await?;
    }
    let ids = |ks: &[String]| -> Vec<ObjectIdentifier> {
        ks.iter().map(|k| ObjectIdentifier::builder().key(k).build().unwrap()).collect()
    };
    let listed = |s3: aws_sdk_s3::Client| async move {
        let r = s3.list_objects_v2().bucket("del").send().await.unwrap();
        r.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect::<Vec<_>>()
    };

    // Verbose: 14 existing keys (the four odd ones among them) and two that never existed.
    let mut first: Vec<String> = keys[14..].to_vec();
    first.extend(["never/1".to_string(), "never/2".to_string()]);
    let r = s3
        .delete_objects()
        .bucket("del")
        .delete(Delete::builder().set_objects(Some(ids(&first))).build()?)
        .send()
        .await?;
    let mut deleted: Vec<String> = r.deleted().iter().filter_map(|d| d.key().map(str::to_string)).collect();
    deleted.sort();
    let mut want = first.clone();
    want.sort();
    assert_eq!(deleted, want);
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    let mut left = keys[..14].to_vec();
    left.sort();
    assert_eq!(listed(s3.clone()).await, left);

    // A version id other than "null" is a per-key error; the rest of the request proceeds.
    let mut objs = ids(&keys[..2]);
    objs.push(ObjectIdentifier::builder().key(&keys[2]).version_id("3HL4kqtJlcpXroDTDmJ").build()?);
    let r = s3.delete_objects().bucket("del").delete(Delete::builder().set_objects(Some(objs)).build()?).send().await?;
    assert_eq!(r.deleted().len(), 2);
    assert_eq!(r.errors().len(), 1);
    assert_eq!(r.errors()[0].key(), Some(keys[2].as_str()));
    assert_eq!(r.errors()[0].code(), Some("InvalidArgument"));

    // Request-level errors, sent by hand (presigned, so the body and headers are ours).
    let addr = &c.gateways[0].s3_addr;
    let secret = aether_gateway::auth::SecretKey::new(aether_tests::SECRET_KEY);
    let url = aether_gateway::auth::presign_url(
        &http::Method::POST,
        &format!("http://{addr}/del?delete"),
        aether_tests::ACCESS_KEY,
        &secret,
        aether_tests::REGION,
        time::OffsetDateTime::now_utc(),
        300,
    );
    let path = url.split_once(addr.as_str()).map(|(_, p)| p.to_string()).unwrap();
    let doc = |ks: &[String], quiet: bool| {
        let objects: String = ks.iter().map(|k| format!("<Object><Key>{k}</Key></Object>")).collect();
        format!("<Delete><Quiet>{quiet}</Quiet>{objects}</Delete>").into_bytes()
    };
    let md5 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(b));
    let send = |headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let (addr, path) = (addr.clone(), path.clone());
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            aether_tests::http1::request(&addr, "POST", &path, &h, body).await.unwrap()
        }
    };
    let body = doc(&keys[3..6], false);
    let r = send(vec![], body.clone()).await;
    assert_eq!((r.status, r.body_text().contains("<Code>InvalidRequest</Code>")), (400, true), "{}", r.body_text());
    let r = send(vec![("content-md5", md5(b"something else"))], body.clone()).await;
    assert_eq!((r.status, r.body_text().contains("<Code>BadDigest</Code>")), (400, true), "{}", r.body_text());
    let many: Vec<String> = (0..1001).map(|i| format!("m{i}")).collect();
    let body_many = doc(&many, true);
    let r = send(vec![("content-md5", md5(&body_many))], body_many).await;
    assert_eq!((r.status, r.body_text().contains("<Code>MalformedXML</Code>")), (400, true), "{}", r.body_text());
    let empty = doc(&[], false);
    let r = send(vec![("content-md5", md5(&empty))], empty).await;
    assert_eq!((r.status, r.body_text().contains("<Code>MalformedXML</Code>")), (400, true), "{}", r.body_text());
    let mut expect = keys[2..14].to_vec();
    expect.sort();
    assert_eq!(listed(s3.clone()).await, expect, "a refused request deleted nothing");

    // Quiet, by hand with a correct Content-MD5: an empty result, everything gone.
    let body = doc(&keys[2..14], true);
    let r = send(vec![("content-md5", md5(&body))], body).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(!r.body_text().contains("<Deleted>") && !r.body_text().contains("<Error>"), "{}", r.body_text());
    assert!(listed(s3.clone()).await.is_empty());
    s3.delete_bucket().bucket("del").send().await?;
    Ok(())
}

/// CopyObject: same and cross bucket, metadata COPY and REPLACE, copy onto itself (refused
/// without REPLACE, a metadata change with it), x-amz-copy-source-if-* conditions, odd keys,
/// a multi-chunk body, and the errors for a missing source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_object_directives_conditions_and_errors() -> anyhow::Result<()> {
    use aws_sdk_s3::types::MetadataDirective;
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("src").send().await?;
    s3.create_bucket().bucket("dst").send().await?;
    let body = pattern(700_000, 7);
    let put = s3
        .put_object()
        .bucket("src")
        .key("dir/ünï code+k")
        .content_type("text/x-original")
        .cache_control("max-age=60")
        .metadata("colour", "blue")
        .body(bs(&body))
        .send()
        .await?;
    let src_etag = put.e_tag().unwrap().to_string();
    let source = "src/dir/%C3%BCn%C3%AF%20code%2Bk";

    // COPY (default) into another bucket: same bytes, ETag and metadata.
    let r = s3.copy_object().bucket("dst").key("copy 1").copy_source(source).send().await?;
    let result = r.copy_object_result().unwrap();
    assert_eq!(result.e_tag(), Some(src_etag.as_str()));
    assert!(result.last_modified().is_some());
    let got = s3.get_object().bucket("dst").key("copy 1").send().await?;
    assert_eq!(got.content_type(), Some("text/x-original"));
    assert_eq!(got.cache_control(), Some("max-age=60"));
    assert_eq!(got.metadata().and_then(|m| m.get("colour")).map(String::as_str), Some("blue"));
    assert_eq!(got.e_tag(), Some(src_etag.as_str()));
    assert_eq!(body_bytes(got).await, body);

    // REPLACE within the bucket: this request's metadata, none of the source's.
    s3.copy_object()
        .bucket("src")
        .key("copy 2")
        .copy_source(source)
        .metadata_directive(MetadataDirective::Replace)
        .content_type("application/x-new")
        .metadata("shape", "square")
        .send()
        .await?;
    let head = s3.head_object().bucket("src").key("copy 2").send().await?;
    assert_eq!(head.content_type(), Some("application/x-new"));
    assert_eq!(head.cache_control(), None);
    let m = head.metadata().cloned().unwrap_or_default();
    assert_eq!((m.get("shape").map(String::as_str), m.get("colour")), (Some("square"), None));

    // Onto itself: refused with COPY, a metadata change with REPLACE.
    let r = s3.copy_object().bucket("src").key("dir/ünï code+k").copy_source(source).send().await;
    assert_eq!(err_code(r), "InvalidRequest");
    s3.copy_object()
        .bucket("src")
        .key("dir/ünï code+k")
        .copy_source(source)
        .metadata_directive(MetadataDirective::Replace)
        .metadata("colour", "green")
        .send()
        .await?;
    let head = s3.head_object().bucket("src").key("dir/ünï code+k").send().await?;
    assert_eq!(head.metadata().and_then(|m| m.get("colour")).map(String::as_str), Some("green"));
    assert_eq!(head.e_tag(), Some(src_etag.as_str()));

    // Conditions on the source: every failure is 412, nothing written.
    let copy = || s3.copy_object().bucket("dst").key("cond").copy_source(source);
    assert_eq!(err_code(copy().copy_source_if_match("\"0000\"").send().await), "PreconditionFailed");
    assert_eq!(err_code(copy().copy_source_if_none_match(src_etag.as_str()).send().await), "PreconditionFailed");
    let future = aws_sdk_s3::primitives::DateTime::from_secs(4_000_000_000);
    let past = aws_sdk_s3::primitives::DateTime::from_secs(1_000_000_000);
    assert_eq!(err_code(copy().copy_source_if_modified_since(future).send().await), "PreconditionFailed");
    assert_eq!(err_code(copy().copy_source_if_unmodified_since(past).send().await), "PreconditionFailed");
    assert_eq!(err_code(s3.head_object().bucket("dst").key("cond").send().await), "NotFound");
    copy().copy_source_if_match(src_etag.as_str()).copy_source_if_unmodified_since(future).send().await?;
    copy().copy_source_if_none_match("\"0000\"").copy_source_if_modified_since(past).send().await?;

    // Missing source key / bucket, a bad directive, a malformed source.
    let r = s3.copy_object().bucket("dst").key("x").copy_source("src/nope").send().await;
    assert_eq!(err_code(r), "NoSuchKey");
    let r = s3.copy_object().bucket("dst").key("x").copy_source("nobucket/k").send().await;
    assert_eq!(err_code(r), "NoSuchBucket");
    let r = s3.copy_object().bucket("dst").key("x").copy_source("src").send().await;
    assert_eq!(err_code(r), "InvalidArgument");
    let r = s3
        .copy_object()
        .bucket("dst")
        .key("x")
        .copy_source(source)
        .metadata_directive(MetadataDirective::from("MOVE"))
        .send()
        .await;
    assert_eq!(err_code(r), "InvalidArgument");
    assert_eq!(err_code(s3.head_object().bucket("dst").key("x").send().await), "NotFound");
    Ok(())
}

/// ACLs as aether has them (private to the bucket's owner) and the versioning status
/// (never enabled): the canned `private` ACL is accepted everywhere S3 takes one, any other
/// is NotImplemented and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acls_are_private_and_versioning_is_off() -> anyhow::Result<()> {
    use aws_sdk_s3::types::{BucketCannedAcl, ObjectCannedAcl, Permission, Type};
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("acl").acl(BucketCannedAcl::Private).send().await?;
    let r = s3.create_bucket().bucket("acl-public").acl(BucketCannedAcl::PublicRead).send().await;
    assert_eq!(err_code(r), "NotImplemented");
    assert_eq!(err_code(s3.head_bucket().bucket("acl-public").send().await), "NotFound");

    let check = |owner: Option<&aws_sdk_s3::types::Owner>, grants: &[aws_sdk_s3::types::Grant]| {
        assert_eq!(owner.and_then(|o| o.id()), Some(aether_tests::ACCESS_KEY));
        assert_eq!(grants.len(), 1);
        let g = grants[0].grantee().unwrap();
        assert_eq!((g.r#type(), g.id()), (&Type::CanonicalUser, Some(aether_tests::ACCESS_KEY)));
        assert_eq!(grants[0].permission(), Some(&Permission::FullControl));
    };
    let acl = s3.get_bucket_acl().bucket("acl").send().await?;
    check(acl.owner(), acl.grants());
    s3.put_bucket_acl().bucket("acl").acl(BucketCannedAcl::Private).send().await?;
    let r = s3.put_bucket_acl().bucket("acl").acl(BucketCannedAcl::PublicReadWrite).send().await;
    assert_eq!(err_code(r), "NotImplemented");

    s3.put_object().bucket("acl").key("k").acl(ObjectCannedAcl::Private).body(bs(b"x")).send().await?;
    let r = s3.put_object().bucket("acl").key("pub").acl(ObjectCannedAcl::PublicRead).body(bs(b"x")).send().await;
    assert_eq!(err_code(r), "NotImplemented");
    assert_eq!(err_code(s3.head_object().bucket("acl").key("pub").send().await), "NotFound");
    let r = s3.put_object().bucket("acl").key("grant").grant_read("id=someone").body(bs(b"x")).send().await;
    assert_eq!(err_code(r), "NotImplemented");
    let acl = s3.get_object_acl().bucket("acl").key("k").send().await?;
    check(acl.owner(), acl.grants());
    assert_eq!(err_code(s3.get_object_acl().bucket("acl").key("nope").send().await), "NoSuchKey");
    s3.put_object_acl().bucket("acl").key("k").acl(ObjectCannedAcl::Private).send().await?;
    let r = s3.put_object_acl().bucket("acl").key("k").acl(ObjectCannedAcl::AuthenticatedRead).send().await;
    assert_eq!(err_code(r), "NotImplemented");

    let v = s3.get_bucket_versioning().bucket("acl").send().await?;
    assert_eq!((v.status(), v.mfa_delete()), (None, None));
    assert_eq!(err_code(s3.get_bucket_versioning().bucket("nobucket").send().await), "NoSuchBucket");
    Ok(())
}

/// `response-*` overrides on GetObject and HeadObject replace the stored headers in that
/// response only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn response_header_overrides() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("resp").send().await?;
    s3.put_object()
        .bucket("resp")
        .key("k")
        .content_type("text/plain")
        .cache_control("no-cache")
        .body(bs(b"hi"))
        .send()
        .await?;
    let disposition = "attachment; filename=\"report 1.csv\"";
    let got = s3
        .get_object()
        .bucket("resp")
        .key("k")
        .response_content_type("text/csv")
        .response_content_disposition(disposition)
        .response_cache_control("max-age=5")
        .response_content_language("de")
        .response_content_encoding("identity")
        .send()
        .await?;
    assert_eq!(got.content_type(), Some("text/csv"));
    assert_eq!(got.content_disposition(), Some(disposition));
    assert_eq!(got.cache_control(), Some("max-age=5"));
    assert_eq!(got.content_language(), Some("de"));
    assert_eq!(got.content_encoding(), Some("identity"));
    assert_eq!(body_bytes(got).await, b"hi");
    let head = s3.head_object().bucket("resp").key("k").response_content_type("image/png").send().await?;
    assert_eq!(head.content_type(), Some("image/png"));
    assert_eq!(head.cache_control(), Some("no-cache"));
    // The stored headers are unchanged.
    let plain = s3.head_object().bucket("resp").key("k").send().await?;
    assert_eq!((plain.content_type(), plain.content_disposition()), (Some("text/plain"), None));
    Ok(())
}

/// Bucket tagging: none at first (NoSuchTagSet), a put replaces the whole set and every
/// gateway reads it back, S3's tag rules (InvalidTag), delete; the bucket keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bucket_tagging_put_get_delete_and_rules() -> anyhow::Result<()> {
    use aws_sdk_s3::types::{Tag, Tagging};
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("tagged").send().await?;
    let tagging = |pairs: &[(&str, &str)]| {
        let tags = pairs.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build().unwrap()).collect();
        Tagging::builder().set_tag_set(Some(tags)).build().unwrap()
    };
    let get = |s3: aws_sdk_s3::Client| async move {
        s3.get_bucket_tagging()
            .bucket("tagged")
            .send()
            .await
            .map(|r| r.tag_set().iter().map(|t| (t.key().to_string(), t.value().to_string())).collect::<Vec<_>>())
    };
    assert_eq!(err_code(get(s3.clone()).await), "NoSuchTagSet");
    s3.put_bucket_tagging()
        .bucket("tagged")
        .tagging(tagging(&[("team", "storage"), ("cost centre", "ünï 42")]))
        .send()
        .await?;
    let want = vec![("cost centre".to_string(), "ünï 42".to_string()), ("team".to_string(), "storage".to_string())];
    assert_eq!(get(s3.clone()).await?, want);
    assert_eq!(get(c.s3(1)).await?, want, "another gateway reads the same tags");
    s3.put_bucket_tagging().bucket("tagged").tagging(tagging(&[("only", "")])).send().await?;
    assert_eq!(get(s3.clone()).await?, vec![("only".to_string(), String::new())]);

    let bad = |pairs: Vec<(String, String)>| {
        let s3 = s3.clone();
        async move {
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            err_code(s3.put_bucket_tagging().bucket("tagged").tagging(tagging(&refs)).send().await)
        }
    };
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(bad(vec![s("a", "1"), s("a", "2")]).await, "InvalidTag");
    assert_eq!(bad(vec![s("aws:reserved", "1")]).await, "InvalidTag");
    assert_eq!(bad(vec![(String::from("k").repeat(129), "v".into())]).await, "InvalidTag");
    assert_eq!(bad(vec![("k".into(), "v".repeat(257))]).await, "InvalidTag");
    assert_eq!(bad((0..51).map(|i| (format!("k{i}"), "v".into())).collect()).await, "InvalidTag");
    assert_eq!(get(s3.clone()).await?, vec![("only".to_string(), String::new())], "a refused put changed nothing");

    s3.delete_bucket_tagging().bucket("tagged").send().await?;
    assert_eq!(err_code(get(s3.clone()).await), "NoSuchTagSet");
    assert_eq!(err_code(s3.get_bucket_tagging().bucket("untagged-missing").send().await), "NoSuchBucket");
    // The bucket (its catalog entry rewritten) still serves objects and deletes.
    s3.put_object().bucket("tagged").key("k").body(bs(b"x")).send().await?;
    s3.delete_object().bucket("tagged").key("k").send().await?;
    s3.delete_bucket().bucket("tagged").send().await?;
    Ok(())
}

fn tag_pairs(tags: &[aws_sdk_s3::types::Tag]) -> Vec<(String, String)> {
    let mut v: Vec<_> = tags.iter().map(|t| (t.key().to_string(), t.value().to_string())).collect();
    v.sort();
    v
}

fn tagging(pairs: &[(&str, &str)]) -> anyhow::Result<aws_sdk_s3::types::Tagging> {
    let mut b = aws_sdk_s3::types::Tagging::builder();
    for (k, v) in pairs {
        b = b.tag_set(aws_sdk_s3::types::Tag::builder().key(*k).value(*v).build()?);
    }
    Ok(b.build()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_tagging_on_write_and_by_itself() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let (s3a, s3b) = (c.s3(0), c.s3(1));
    s3a.create_bucket().bucket("tags").send().await?;
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());

    // x-amz-tagging on PutObject; GetObject counts them, GetObjectTagging lists them.
    let put = s3a
        .put_object()
        .bucket("tags")
        .key("doc")
        .tagging("project=blue%20sky&team=storage")
        .body(bs(b"tagged body"))
        .send()
        .await?;
    let got = s3b.get_object().bucket("tags").key("doc").send().await?;
    assert_eq!(got.tag_count(), Some(2));
    let t = s3b.get_object_tagging().bucket("tags").key("doc").send().await?;
    assert_eq!(tag_pairs(t.tag_set()), vec![pair("project", "blue sky"), pair("team", "storage")]);

    // PutObjectTagging through the other gateway replaces the set; body and ETag stay.
    s3b.put_object_tagging()
        .bucket("tags")
        .key("doc")
        .tagging(tagging(&[("a", "1"), ("b", ""), ("c", "3")])?)
        .send()
        .await?;
    let t = s3a.get_object_tagging().bucket("tags").key("doc").send().await?;
    assert_eq!(tag_pairs(t.tag_set()), vec![pair("a", "1"), pair("b", ""), pair("c", "3")]);
    let got = s3a.get_object().bucket("tags").key("doc").send().await?;
    assert_eq!(got.e_tag(), put.e_tag());
    assert_eq!(got.tag_count(), Some(3));
    assert_eq!(body_bytes(got).await, b"tagged body");

    // S3's rules, and nothing changes when they are broken.
    let eleven: Vec<(String, String)> = (0..11).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let eleven: Vec<(&str, &str)> = eleven.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = s3a.put_object_tagging().bucket("tags").key("doc").tagging(tagging(&eleven)?).send().await;
    assert_eq!(err_code(r), "BadRequest");
    for bad in [tagging(&[("aws:x", "1")])?, tagging(&[("k", "1"), ("k", "2")])?] {
        let r = s3a.put_object_tagging().bucket("tags").key("doc").tagging(bad).send().await;
        assert_eq!(err_code(r), "InvalidTag");
    }
    let r = s3a.put_object().bucket("tags").key("bad").tagging("aws:secret=1").body(bs(b"x")).send().await;
    assert_eq!(err_code(r), "InvalidTag");
    assert_eq!(err_code(s3a.head_object().bucket("tags").key("bad").send().await), "NotFound");
    let t = s3a.get_object_tagging().bucket("tags").key("doc").send().await?;
    assert_eq!(t.tag_set().len(), 3);
    assert_eq!(err_code(s3a.get_object_tagging().bucket("tags").key("missing").send().await), "NoSuchKey");
    assert_eq!(err_code(s3a.delete_object_tagging().bucket("tags").key("missing").send().await), "NoSuchKey");
    let r = s3a.put_object_tagging().bucket("tags").key("missing").tagging(tagging(&[("a", "1")])?).send().await;
    assert_eq!(err_code(r), "NoSuchKey");

    // CopyObject copies the tags unless told to replace them.
    s3a.copy_object().bucket("tags").key("copy").copy_source("tags/doc").send().await?;
    let t = s3b.get_object_tagging().bucket("tags").key("copy").send().await?;
    assert_eq!(t.tag_set().len(), 3);
    s3a.copy_object()
        .bucket("tags")
        .key("copy2")
        .copy_source("tags/doc")
        .tagging_directive(aws_sdk_s3::types::TaggingDirective::Replace)
        .tagging("only=this")
        .send()
        .await?;
    let t = s3b.get_object_tagging().bucket("tags").key("copy2").send().await?;
    assert_eq!(tag_pairs(t.tag_set()), vec![pair("only", "this")]);

    // A multipart upload carries the tags given at its creation.
    let up = s3a.create_multipart_upload().bucket("tags").key("mp").tagging("mp=yes").send().await?;
    let upload_id = up.upload_id().unwrap_or_default().to_string();
    let part = s3a
        .upload_part()
        .bucket("tags")
        .key("mp")
        .upload_id(&upload_id)
        .part_number(1)
        .body(bs(b"one part"))
        .send()
        .await?;
    let done = aws_sdk_s3::types::CompletedMultipartUpload::builder()
        .parts(
            aws_sdk_s3::types::CompletedPart::builder().part_number(1).e_tag(part.e_tag().unwrap_or_default()).build(),
        )
        .build();
    s3a.complete_multipart_upload()
        .bucket("tags")
        .key("mp")
        .upload_id(&upload_id)
        .multipart_upload(done)
        .send()
        .await?;
    let t = s3b.get_object_tagging().bucket("tags").key("mp").send().await?;
    assert_eq!(tag_pairs(t.tag_set()), vec![pair("mp", "yes")]);

    // DeleteObjectTagging empties the set; an overwrite without tags has none.
    s3b.delete_object_tagging().bucket("tags").key("doc").send().await?;
    let t = s3a.get_object_tagging().bucket("tags").key("doc").send().await?;
    assert!(t.tag_set().is_empty());
    assert_eq!(s3a.get_object().bucket("tags").key("doc").send().await?.tag_count(), None);
    s3a.put_object().bucket("tags").key("copy").body(bs(b"new")).send().await?;
    let t = s3a.get_object_tagging().bucket("tags").key("copy").send().await?;
    assert!(t.tag_set().is_empty());
    Ok(())
}

/// A PUT that passed every gateway check before DeleteBucket started and commits after it
/// succeeded is refused by blobd's fence: no object written after a successful DeleteBucket
/// survives. The re-created bucket (a new incarnation) takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_racing_delete_bucket_does_not_survive_it() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let c = Cluster::start(ClusterOptions { require_auth: false, ..ClusterOptions::default() }).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("doomed").send().await?;
    let addr = c.gateways[1].s3_addr.clone();
    let s3b = c.s3(1);
    aether_tests::wait_for("bucket on gateway 2", std::time::Duration::from_secs(10), || {
        let s3b = s3b.clone();
        async move { s3b.head_bucket().bucket("doomed").send().await.ok() }
    })
    .await?;

    // Half a body through gateway 2; the write is under way on the replicas.
    let body = pattern(4 << 20, 9);
    let mut sock = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "PUT /doomed/late HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(&body[..body.len() / 2]).await?;
    sock.flush().await?;
    aether_tests::wait_for("the put to reach the replicas", std::time::Duration::from_secs(10), || {
        let n = c.staging_leftovers();
        async move { (n > 0).then_some(()) }
    })
    .await?;

    // Nothing is committed yet: the bucket is empty, and deleted.
    s3.delete_bucket().bucket("doomed").send().await?;
    sock.write_all(&body[body.len() / 2..]).await?;
    let r = aether_tests::http1::read_response(sock).await?;
    assert_eq!(r.status, 404, "the late write must not be acknowledged: {}", r.body_text());
    assert!(r.body_text().contains("<Code>NoSuchBucket</Code>"), "{}", r.body_text());
    for i in 0..c.blobds.len() {
        let mut b = c.blob_client(i).await?;
        let req = aether_proto::blob::v1::BucketStatsRequest { bucket: "doomed".into(), ..Default::default() };
        let s = b.bucket_stats(req).await?.into_inner();
        assert_eq!((s.objects, s.uploads), (0, 0), "blobd {i} holds the late write");
    }

    // The name re-created is a new bucket: writes go in, the old write is not there.
    s3.create_bucket().bucket("doomed").send().await?;
    s3.put_object().bucket("doomed").key("fresh").body(bs(b"new life")).send().await?;
    let listed = s3.list_objects_v2().bucket("doomed").send().await?;
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["fresh"]);
    Ok(())
}

/// Checksums are stored and returned with `x-amz-checksum-mode: ENABLED` (whole-object
/// reads only): the one the client sent, or S3's default CRC64NVME computed by the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checksums_are_stored_and_returned_in_checksum_mode() -> anyhow::Result<()> {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType};
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("sums").send().await?;
    let body = pattern(100_000, 3);

    let put = s3
        .put_object()
        .bucket("sums")
        .key("crc32c")
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .body(bs(&body))
        .send()
        .await?;
    let sent = put.checksum_crc32_c().expect("the put echoes its checksum").to_string();
    let got = s3.get_object().bucket("sums").key("crc32c").checksum_mode(ChecksumMode::Enabled).send().await?;
    assert_eq!(got.checksum_crc32_c(), Some(sent.as_str()));
    assert_eq!(got.checksum_type(), Some(&ChecksumType::FullObject));
    assert_eq!(body_bytes(got).await, body);
    let head = s3.head_object().bucket("sums").key("crc32c").checksum_mode(ChecksumMode::Enabled).send().await?;
    assert_eq!(head.checksum_crc32_c(), Some(sent.as_str()));
    // Without checksum mode, or for a range, none.
    let plain = s3.head_object().bucket("sums").key("crc32c").send().await?;
    assert_eq!(plain.checksum_crc32_c(), None);
    let ranged = s3
        .get_object()
        .bucket("sums")
        .key("crc32c")
        .range("bytes=0-9")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await?;
    assert_eq!(ranged.checksum_crc32_c(), None);

    // A client that sends no checksum gets S3's default, CRC64NVME, computed by the gateway
    // over what arrived; the SDK checks it against the body it reads back.
    let no_sums = aws_sdk_s3::Client::from_conf(
        s3.config()
            .to_builder()
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .build(),
    );
    let put = no_sums.put_object().bucket("sums").key("default").body(bs(&body)).send().await?;
    let computed = put.checksum_crc64_nvme().expect("the default checksum in the answer").to_string();
    assert_eq!(put.checksum_crc32(), None);
    let got = s3.get_object().bucket("sums").key("default").checksum_mode(ChecksumMode::Enabled).send().await?;
    assert_eq!(got.checksum_crc64_nvme(), Some(computed.as_str()));
    assert_eq!(body_bytes(got).await, body, "validated by the SDK against the stored CRC64NVME");

    // A 304 carries the validators (ETag, Last-Modified), as S3 and RFC 9110 have it.
    let presigned = s3
        .get_object()
        .bucket("sums")
        .key("default")
        .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(60))?)
        .await?;
    let uri = presigned.uri();
    let path = &uri[uri.find("/sums/").expect("path-style url")..];
    let etag = put.e_tag().expect("etag");
    let r = aether_tests::http1::request(&c.gateways[0].s3_addr, "GET", path, &[("If-None-Match", etag)], Vec::new())
        .await?;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(etag));
    assert!(r.header("last-modified").is_some());
    assert!(r.body.is_empty());

    // Error documents name the missing key or bucket, as S3's do.
    for (bucket, key, element) in
        [("sums", "no such", "<Key>no such</Key>"), ("nobucket", "k", "<BucketName>nobucket</BucketName>")]
    {
        let p = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(60))?)
            .await?;
        let uri = p.uri();
        let path = &uri[uri.find(&format!("/{bucket}/")).expect("path-style url")..];
        let r = aether_tests::http1::request(&c.gateways[0].s3_addr, "GET", path, &[], Vec::new()).await?;
        assert_eq!(r.status, 404);
        assert!(r.body_text().contains(element), "{}", r.body_text());
    }
    Ok(())
}

/// Conditional writes: `If-None-Match: *` creates only if absent, `If-Match` replaces only
/// the named version, and of racing conditional creates through two gateways exactly one
/// wins (the others get 412 or 409), its bytes the ones stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_writes_are_atomic_across_gateways() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let (s3a, s3b) = (c.s3(0), c.s3(1));
    s3a.create_bucket().bucket("cond").send().await?;
    aether_tests::wait_for("bucket on gateway 2", std::time::Duration::from_secs(10), || {
        let s3b = s3b.clone();
        async move { s3b.head_bucket().bucket("cond").send().await.ok() }
    })
    .await?;

    let first = s3a.put_object().bucket("cond").key("k").if_none_match("*").body(bs(b"one")).send().await?;
    let r = s3b.put_object().bucket("cond").key("k").if_none_match("*").body(bs(b"two")).send().await;
    assert_eq!(err_code(r), "PreconditionFailed");
    let r =
        s3b.put_object().bucket("cond").key("k").if_match("\"0123456789abcdef0123456789abcdef\"").body(bs(b"x")).send();
    assert_eq!(err_code(r.await), "PreconditionFailed");
    let etag = first.e_tag().expect("etag");
    let second = s3b.put_object().bucket("cond").key("k").if_match(etag).body(bs(b"three")).send().await?;
    // The old ETag no longer matches.
    let r = s3a.put_object().bucket("cond").key("k").if_match(etag).body(bs(b"four")).send().await;
    assert_eq!(err_code(r), "PreconditionFailed");
    let got = s3a.get_object().bucket("cond").key("k").send().await?;
    assert_eq!(got.e_tag(), second.e_tag());
    assert_eq!(body_bytes(got).await, b"three");
    let r = s3a.put_object().bucket("cond").key("missing").if_match(etag).body(bs(b"x")).send().await;
    assert_eq!(err_code(r), "NoSuchKey");
    let r = s3a.put_object().bucket("cond").key("k").if_none_match("\"abc\"").body(bs(b"x")).send().await;
    assert_eq!(err_code(r), "NotImplemented");

    // CompleteMultipartUpload honours them too.
    let up = s3a.create_multipart_upload().bucket("cond").key("k").send().await?;
    let upload_id = up.upload_id().unwrap_or_default().to_string();
    let part =
        s3a.upload_part().bucket("cond").key("k").upload_id(&upload_id).part_number(1).body(bs(b"mp")).send().await?;
    let parts = aws_sdk_s3::types::CompletedMultipartUpload::builder()
        .parts(
            aws_sdk_s3::types::CompletedPart::builder().part_number(1).e_tag(part.e_tag().unwrap_or_default()).build(),
        )
        .build();
    let complete = |cond: &str| {
        s3a.complete_multipart_upload()
            .bucket("cond")
            .key("k")
            .upload_id(&upload_id)
            .multipart_upload(parts.clone())
            .if_none_match(cond)
            .send()
    };
    assert_eq!(err_code(complete("*").await), "PreconditionFailed");
    s3a.delete_object().bucket("cond").key("k").send().await?;
    complete("*").await?;
    assert_eq!(body_bytes(s3b.get_object().bucket("cond").key("k").send().await?).await, b"mp");

    // Racing creates of one key, through both gateways: one winner per round.
    for round in 0..4 {
        let key = format!("race-{round}");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let client = if i % 2 == 0 { s3a.clone() } else { s3b.clone() };
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let body = format!("writer {i}");
                let r =
                    client.put_object().bucket("cond").key(&key).if_none_match("*").body(bs(body.as_bytes())).send();
                (body, r.await.map_err(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_string)))
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (body, r) = t.await?;
            match r {
                Ok(_) => winners.push(body),
                Err(Some(code)) if code == "PreconditionFailed" || code == "ConditionalRequestConflict" => {}
                Err(other) => anyhow::bail!("round {round}: unexpected failure {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one conditional create wins: {winners:?}");
        let stored = body_bytes(s3a.get_object().bucket("cond").key(&key).send().await?).await;
        assert_eq!(stored, winners[0].as_bytes(), "round {round}");
    }
    Ok(())
}
