//! Bucket CORS: the configuration through the SDK, preflights and cross-origin answers
//! through raw HTTP (browsers send preflights unsigned), across two gateways.

use std::time::Duration;

use aether_tests::{Cluster, ClusterOptions, http1, wait_for};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{CorsConfiguration, CorsRule};

use crate::{bs, err_code};

fn rule(id: &str, methods: &[&str], origins: &[&str], headers: &[&str]) -> CorsRule {
    let mut r = CorsRule::builder().id(id).max_age_seconds(600).expose_headers("ETag");
    for m in methods {
        r = r.allowed_methods(*m);
    }
    for o in origins {
        r = r.allowed_origins(*o);
    }
    for h in headers {
        r = r.allowed_headers(*h);
    }
    r.build().expect("cors rule")
}

async fn preflight(addr: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<http1::Response> {
    http1::request(addr, "OPTIONS", path, headers, Vec::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bucket_cors_configuration_preflight_and_response_headers() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions { blobds: 1, gateways: 2, ..ClusterOptions::default() }).await?;
    let (s3a, s3b) = (c.s3(0), c.s3(1));
    let addr_b = c.gateways[1].s3_addr.clone();
    s3a.create_bucket().bucket("web").send().await?;
    s3a.put_object().bucket("web").key("app/index.html").body(bs(b"<html/>")).send().await?;

    assert_eq!(err_code(s3a.get_bucket_cors().bucket("web").send().await), "NoSuchCORSConfiguration");
    // No configuration: every preflight is refused.
    let no_rules = preflight(
        &addr_b,
        "/web/app/index.html",
        &[("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "GET")],
    )
    .await?;
    assert_eq!(no_rules.status, 403, "{}", no_rules.body_text());
    assert!(no_rules.body_text().contains("<Code>AccessForbidden</Code>"), "{}", no_rules.body_text());
    assert!(no_rules.body_text().contains("CORS is not enabled for this bucket."), "{}", no_rules.body_text());

    // Invalid configurations are refused and change nothing.
    let bad = CorsConfiguration::builder().cors_rules(rule("bad", &["PATCH"], &["*"], &[])).build()?;
    assert_eq!(err_code(s3a.put_bucket_cors().bucket("web").cors_configuration(bad).send().await), "InvalidRequest");
    let two_wildcards =
        CorsConfiguration::builder().cors_rules(rule("w", &["GET"], &["https://*.*.com"], &[])).build()?;
    let r = s3a.put_bucket_cors().bucket("web").cors_configuration(two_wildcards).send().await;
    assert_eq!(err_code(r), "InvalidRequest");
    assert_eq!(err_code(s3a.get_bucket_cors().bucket("web").send().await), "NoSuchCORSConfiguration");

    let config = CorsConfiguration::builder()
        .cors_rules(rule("writers", &["PUT", "GET"], &["https://*.example.com"], &["Content-Type", "x-amz-*"]))
        .cors_rules(rule("readers", &["GET", "HEAD"], &["*"], &[]))
        .build()?;
    s3a.put_bucket_cors().bucket("web").cors_configuration(config).send().await?;
    // Read back through the other gateway, rule for rule.
    let got = s3b.get_bucket_cors().bucket("web").send().await?;
    let rules = got.cors_rules();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].id(), Some("writers"));
    assert_eq!(rules[0].allowed_methods(), ["PUT", "GET"]);
    assert_eq!(rules[0].allowed_origins(), ["https://*.example.com"]);
    assert_eq!(rules[0].allowed_headers(), ["Content-Type", "x-amz-*"]);
    assert_eq!(rules[0].expose_headers(), ["ETag"]);
    assert_eq!(rules[0].max_age_seconds(), Some(600));
    assert_eq!(rules[1].allowed_origins(), ["*"]);

    // Gateway 2 answers preflights from its catalog cache once the change reaches it.
    let put_preflight = [
        ("Origin", "https://app.example.com"),
        ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "content-type, X-Amz-Date"),
    ];
    let ok = wait_for("CORS rules on gateway 2", Duration::from_secs(10), || {
        let addr = addr_b.clone();
        async move {
            let r = preflight(&addr, "/web/app/index.html", &put_preflight).await.ok()?;
            (r.status == 200).then_some(r)
        }
    })
    .await?;
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("PUT, GET"));
    assert_eq!(ok.header("access-control-allow-headers"), Some("content-type, x-amz-date"));
    assert_eq!(ok.header("access-control-expose-headers"), Some("ETag"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));

    // A header no rule allows, a method no rule allows for that origin: refused.
    let r = preflight(
        &addr_b,
        "/web/app/index.html",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.body_text());
    let r = preflight(
        &addr_b,
        "/web/app/index.html",
        &[("Origin", "https://elsewhere.org"), ("Access-Control-Request-Method", "PUT")],
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.body_text());
    // Any origin may GET (the wildcard rule answers with `*`, without credentials).
    let r =
        preflight(&addr_b, "/web", &[("Origin", "https://elsewhere.org"), ("Access-Control-Request-Method", "GET")])
            .await?;
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // Malformed preflights.
    let r = preflight(&addr_b, "/web/app/index.html", &[("Access-Control-Request-Method", "GET")]).await?;
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert!(r.body_text().contains("<Code>BadRequest</Code>"), "{}", r.body_text());
    let r = preflight(&addr_b, "/web/app/index.html", &[("Origin", "https://app.example.com")]).await?;
    assert_eq!(r.status, 400, "{}", r.body_text());
    let r = preflight(
        &addr_b,
        "/nosuch/k",
        &[("Origin", "https://a.example.com"), ("Access-Control-Request-Method", "GET")],
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.body_text());
    assert!(r.body_text().contains("Bucket not found"), "{}", r.body_text());

    // The actual cross-origin GET (a presigned URL, as a browser would use) carries the
    // headers of the rule that allows it; without an Origin header it carries none.
    let get = s3b
        .get_object()
        .bucket("web")
        .key("app/index.html")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300))?)
        .await?;
    let uri = get.uri();
    let path = &uri[uri.find("/web/").expect("path-style presigned url")..];
    let r = http1::request(&addr_b, "GET", path, &[("Origin", "https://app.example.com")], Vec::new()).await?;
    assert_eq!((r.status, r.body.as_slice()), (200, b"<html/>".as_slice()));
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(r.header("access-control-expose-headers"), Some("ETag"));
    let r = http1::request(&addr_b, "GET", path, &[], Vec::new()).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    s3b.delete_bucket_cors().bucket("web").send().await?;
    assert_eq!(err_code(s3a.get_bucket_cors().bucket("web").send().await), "NoSuchCORSConfiguration");
    wait_for("CORS rules gone on gateway 2", Duration::from_secs(10), || {
        let addr = addr_b.clone();
        async move {
            let r = preflight(&addr, "/web/app/index.html", &put_preflight).await.ok()?;
            (r.status == 403).then_some(())
        }
    })
    .await?;
    Ok(())
}
