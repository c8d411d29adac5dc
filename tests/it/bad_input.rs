use std::time::{Duration, SystemTime};

use aether_tests::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY, http1, s3_client, wait_for};
use aws_sdk_s3::presigning::PresigningConfig;
use base64::Engine;

use crate::{body_bytes, bs, err_code};

#[derive(Debug)]
struct SkewedClock(Duration);

impl aws_smithy_async::time::TimeSource for SkewedClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() - self.0
    }
}

fn path_and_query(uri: &str) -> String {
    let after_scheme = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    after_scheme.find('/').map(|i| after_scheme[i..].to_string()).unwrap_or_else(|| "/".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_errors_presigned_urls_and_digests() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions { blobds: 3, gateways: 1, ..ClusterOptions::default() }).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("sec").send().await?;

    let wrong_secret = s3_client(&c.endpoint(0), ACCESS_KEY, "not-the-secret");
    assert_eq!(err_code(wrong_secret.list_buckets().send().await), "SignatureDoesNotMatch");
    let unknown = s3_client(&c.endpoint(0), "AKIAUNKNOWNUNKNOWN00", SECRET_KEY);
    assert_eq!(err_code(unknown.list_buckets().send().await), "InvalidAccessKeyId");
    // Unsigned requests are refused.
    let r = http1::request(&c.gateways[0].s3_addr, "GET", "/", &[], Vec::new()).await?;
    assert_eq!(r.status, 403, "{}", r.body_text());
    // Refused before its body was sent (Expect: 100-continue): the answer closes the
    // connection, so the unsent body can never be read as the next request.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&c.gateways[0].s3_addr).await?;
        let req = "PUT /sec/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n";
        s.write_all(req.as_bytes()).await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .map_err(|_| anyhow::anyhow!("the connection stayed open after an error answer"))??;
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 403"), "{text}");
        assert!(text.contains("connection: close"), "{text}");
    }

    // A client clock 20 minutes behind. Retries are off: the SDK would otherwise correct
    // its clock from our Date header and retry (which is what a client should do).
    let creds = aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "t");
    let skewed = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(aether_tests::REGION))
            .endpoint_url(c.endpoint(0))
            .credentials_provider(creds)
            .force_path_style(true)
            .time_source(SkewedClock(Duration::from_secs(20 * 60)))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build(),
    );
    assert_eq!(err_code(skewed.list_buckets().send().await), "RequestTimeTooSkewed");

    // Wrong Content-MD5: BadDigest and nothing stored.
    let wrong_md5 = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
    let r = s3.put_object().bucket("sec").key("md5").content_md5(wrong_md5).body(bs(b"hello")).send().await;
    assert_eq!(err_code(r), "BadDigest");
    assert_eq!(err_code(s3.get_object().bucket("sec").key("md5").send().await), "NoSuchKey");

    // A wrong x-amz-checksum-crc32 header: BadDigest and nothing stored.
    let r = s3.put_object().bucket("sec").key("crc").checksum_crc32("AAAAAA==").body(bs(b"hello")).send().await;
    assert_eq!(err_code(r), "BadDigest");
    assert_eq!(err_code(s3.get_object().bucket("sec").key("crc").send().await), "NoSuchKey");
    // The right one is accepted (CRC32 of "hello" is 0x3610a686).
    let right = base64::engine::general_purpose::STANDARD.encode(0x3610_a686u32.to_be_bytes());
    s3.put_object().bucket("sec").key("crc").checksum_crc32(right).body(bs(b"hello")).send().await?;

    // Presigned PUT then GET with a plain HTTP client.
    let addr = c.gateways[0].s3_addr.clone();
    let put = s3
        .put_object()
        .bucket("sec")
        .key("pre signed")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300))?)
        .await?;
    let r = http1::request(&addr, "PUT", &path_and_query(put.uri()), &[], b"via presigned".to_vec()).await?;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let get = s3
        .get_object()
        .bucket("sec")
        .key("pre signed")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300))?)
        .await?;
    let r = http1::request(&addr, "GET", &path_and_query(get.uri()), &[], Vec::new()).await?;
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.body, b"via presigned");
    // Tampered: another key with the same signature.
    let tampered = path_and_query(get.uri()).replace("pre%20signed", "pre%20signee");
    let r = http1::request(&addr, "GET", &tampered, &[], Vec::new()).await?;
    assert_eq!(r.status, 403);
    assert!(r.body_text().contains("SignatureDoesNotMatch"), "{}", r.body_text());
    // Expired.
    let old = PresigningConfig::builder()
        .start_time(SystemTime::now() - Duration::from_secs(3600))
        .expires_in(Duration::from_secs(60))
        .build()?;
    let get = s3.get_object().bucket("sec").key("pre signed").presigned(old).await?;
    let r = http1::request(&addr, "GET", &path_and_query(get.uri()), &[], Vec::new()).await?;
    assert_eq!(r.status, 403);
    assert!(r.body_text().contains("AccessDenied"), "{}", r.body_text());
    // Expiry beyond 7 days is refused.
    let week = s3
        .get_object()
        .bucket("sec")
        .key("pre signed")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(7 * 86400))?)
        .await?;
    let too_long = path_and_query(week.uri()).replace("X-Amz-Expires=604800", "X-Amz-Expires=604801");
    let r = http1::request(&addr, "GET", &too_long, &[], Vec::new()).await?;
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert!(r.body_text().contains("AuthorizationQueryParametersError"), "{}", r.body_text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncated_and_mismatched_bodies_store_nothing() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions { gateways: 1, require_auth: false, ..ClusterOptions::default() }).await?;
    let addr = c.gateways[0].s3_addr.clone();
    let r = http1::request(&addr, "PUT", "/raw", &[], Vec::new()).await?;
    assert_eq!(r.status, 200, "{}", r.body_text());

    // Truncated body: the client declares 1 MiB, sends 1000 bytes and closes.
    let _ = http1::truncated_put(&addr, "/raw/trunc", 1 << 20, &[7u8; 1000]).await?;
    let r = http1::request(&addr, "GET", "/raw/trunc", &[], Vec::new()).await?;
    assert_eq!(r.status, 404, "{}", r.body_text());
    wait_for("staging dirs to be empty", Duration::from_secs(10), || async {
        (c.staging_leftovers() == 0).then_some(())
    })
    .await?;

    // Payload hash that does not match the body.
    let wrong = "0".repeat(64);
    let r = http1::request(&addr, "PUT", "/raw/hash", &[("x-amz-content-sha256", wrong.as_str())], b"body".to_vec())
        .await?;
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert!(r.body_text().contains("XAmzContentSHA256Mismatch"), "{}", r.body_text());
    let r = http1::request(&addr, "GET", "/raw/hash", &[], Vec::new()).await?;
    assert_eq!(r.status, 404);

    // Over the 5 GiB single-PUT limit: refused before any byte is read.
    let r = http1::request(&addr, "PUT", "/raw/huge", &[("content-length", "5368709121")], Vec::new()).await?;
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert!(r.body_text().contains("EntityTooLarge"), "{}", r.body_text());
    for field in ["<ProposedSize>5368709121</ProposedSize>", "<MaxSizeAllowed>5368709120</MaxSizeAllowed>"] {
        assert!(r.body_text().contains(field), "{field}: {}", r.body_text());
    }

    // And a correct request still works, read back through the SDK.
    let s3 = s3_client(&c.endpoint(0), "anything", "anything");
    s3.put_object().bucket("raw").key("ok").body(bs(b"fine")).send().await?;
    assert_eq!(body_bytes(s3.get_object().bucket("raw").key("ok").send().await?).await, b"fine");
    assert_eq!(c.staging_leftovers(), 0);
    Ok(())
}

/// Virtual-hosted-style addressing (`<bucket>.<root domain>` in Host) works next to
/// path-style, signed by the SDK for that host (presigned, sent to the gateway's socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn virtual_hosted_style_requests() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions { blobds: 1, gateways: 1, ..ClusterOptions::default() }).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("vhost").send().await?;
    let addr = c.gateways[0].s3_addr.clone();
    let port = addr.rsplit(':').next().unwrap_or_default();
    let root = format!("{}:{port}", aether_tests::ROOT_DOMAIN);
    let creds = aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "t");
    let virtual_client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(aether_tests::REGION))
            .endpoint_url(format!("http://{root}"))
            .credentials_provider(creds)
            .force_path_style(false)
            .build(),
    );
    let split = |uri: &str| -> (String, String) {
        let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
        let i = rest.find('/').unwrap_or(rest.len());
        (rest[..i].to_string(), rest[i..].to_string())
    };
    let put = virtual_client
        .put_object()
        .bucket("vhost")
        .key("dir/a b.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60))?)
        .await?;
    let (host, path) = split(put.uri());
    assert_eq!(host, format!("vhost.{root}"));
    assert!(path.starts_with("/dir/a%20b.txt?"), "{path}");
    let r = http1::request(&addr, "PUT", &path, &[("Host", host.as_str())], b"virtually".to_vec()).await?;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let get = virtual_client
        .get_object()
        .bucket("vhost")
        .key("dir/a b.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60))?)
        .await?;
    let (host, path) = split(get.uri());
    let r = http1::request(&addr, "GET", &path, &[("Host", host.as_str())], Vec::new()).await?;
    assert_eq!((r.status, r.body.as_slice()), (200, b"virtually".as_slice()));
    // The same object path-style.
    let got = s3.get_object().bucket("vhost").key("dir/a b.txt").send().await?;
    assert_eq!(body_bytes(got).await, b"virtually");
    // A host under the root domain naming no bucket.
    let (_, path) = split(get.uri());
    let other = format!("nosuchbucket.{root}");
    let r = http1::request(&addr, "GET", &path, &[("Host", other.as_str())], Vec::new()).await?;
    assert_eq!(r.status, 403, "signed for another host: {}", r.body_text());
    Ok(())
}
