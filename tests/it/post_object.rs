//! Browser POST uploads: a multipart/form-data body with a SigV4-signed policy, sent raw
//! (no SDK builds them), checked the way S3 checks it.

use aether_tests::{ACCESS_KEY, Cluster, ClusterOptions, REGION, SECRET_KEY, http1};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{body_bytes, pattern};

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The form fields of a POST upload signed with `secret`: policy, credential, date,
/// algorithm, signature, plus `extra`.
fn signed_fields(
    secret: &str,
    conditions: serde_json::Value,
    expiration: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let date = "20261129";
    let credential = format!("{ACCESS_KEY}/{date}/{REGION}/s3/aws4_request");
    let amz_date = format!("{date}T000000Z");
    let mut conds = conditions.as_array().cloned().unwrap_or_default();
    conds.push(serde_json::json!({"x-amz-algorithm": "AWS4-HMAC-SHA256"}));
    conds.push(serde_json::json!({"x-amz-credential": credential}));
    conds.push(serde_json::json!({"x-amz-date": amz_date}));
    let policy = serde_json::json!({"expiration": expiration, "conditions": conds});
    let policy_b64 = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, policy_b64.as_bytes()));
    let mut fields: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    fields.extend([
        ("x-amz-algorithm".to_string(), "AWS4-HMAC-SHA256".to_string()),
        ("x-amz-credential".to_string(), credential),
        ("x-amz-date".to_string(), amz_date),
        ("policy".to_string(), policy_b64),
        ("x-amz-signature".to_string(), signature),
    ]);
    fields
}

async fn post(addr: &str, bucket: &str, fields: &[(String, String)], file: &[u8]) -> anyhow::Result<http1::Response> {
    let boundary = "----aetherFormBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes());
    }
    body.extend(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo 1.png\"\r\nContent-Type: image/png\r\n\r\n")
            .as_bytes(),
    );
    body.extend(file);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    http1::request(addr, "POST", &format!("/{bucket}"), &[("Content-Type", ct.as_str())], body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browser_post_uploads_with_signed_policies() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("forms").send().await?;
    let addr = c.gateways[0].s3_addr.clone();
    let conditions = serde_json::json!([
        {"bucket": "forms"},
        ["starts-with", "$key", "uploads/"],
        ["starts-with", "$Content-Type", "image/"],
        {"success_action_status": "201"},
        ["content-length-range", 1, 2_000_000]
    ]);
    let ok_fields = [("key", "uploads/${filename}"), ("Content-Type", "image/png"), ("success_action_status", "201")];
    // A body larger than one read, with the boundary's prefix bytes inside it.
    let mut file = pattern(1_500_000, 4);
    file[700_000..700_004].copy_from_slice(b"\r\n--");

    let fields = signed_fields(SECRET_KEY, conditions.clone(), "2999-01-01T00:00:00Z", &ok_fields);
    let r = post(&addr, "forms", &fields, &file).await?;
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert!(r.body_text().contains("<Key>uploads/photo 1.png</Key>"), "{}", r.body_text());
    let location = format!("http://{addr}/forms/uploads%2Fphoto%201.png");
    assert!(r.body_text().contains(&format!("<Location>{location}</Location>")), "{}", r.body_text());
    assert_eq!(r.header("location"), Some(location.as_str()));
    let got = s3.get_object().bucket("forms").key("uploads/photo 1.png").send().await?;
    assert_eq!(got.content_type(), Some("image/png"));
    assert_eq!(got.e_tag(), r.header("etag"));
    assert_eq!(body_bytes(got).await, file);

    // Refusals, and nothing stored by them.
    let expect = |r: &http1::Response, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.body_text());
        assert!(r.body_text().contains(&format!("<Code>{code}</Code>")), "{}", r.body_text());
    };
    let bad_key = [("key", "elsewhere/x"), ("Content-Type", "image/png"), ("success_action_status", "201")];
    let r =
        post(&addr, "forms", &signed_fields(SECRET_KEY, conditions.clone(), "2999-01-01T00:00:00Z", &bad_key), b"x")
            .await?;
    expect(&r, 403, "AccessDenied");
    let r =
        post(&addr, "forms", &signed_fields(SECRET_KEY, conditions.clone(), "2001-01-01T00:00:00Z", &ok_fields), b"x")
            .await?;
    expect(&r, 403, "AccessDenied");
    assert!(r.body_text().contains("Policy expired"), "{}", r.body_text());
    let r = post(
        &addr,
        "forms",
        &signed_fields("wrong-secret", conditions.clone(), "2999-01-01T00:00:00Z", &ok_fields),
        b"x",
    )
    .await?;
    expect(&r, 403, "SignatureDoesNotMatch");
    let extra = [
        ("key", "uploads/extra"),
        ("Content-Type", "image/png"),
        ("success_action_status", "201"),
        ("x-amz-meta-unlisted", "1"),
    ];
    let r = post(&addr, "forms", &signed_fields(SECRET_KEY, conditions.clone(), "2999-01-01T00:00:00Z", &extra), b"x")
        .await?;
    expect(&r, 403, "AccessDenied");
    assert!(r.body_text().contains("Extra input fields"), "{}", r.body_text());
    let big = pattern(2_000_001, 5);
    let r =
        post(&addr, "forms", &signed_fields(SECRET_KEY, conditions.clone(), "2999-01-01T00:00:00Z", &ok_fields), &big)
            .await?;
    expect(&r, 400, "EntityTooLarge");
    assert!(r.body_text().contains("<MaxSizeAllowed>2000000</MaxSizeAllowed>"), "{}", r.body_text());
    assert!(r.body_text().contains("<ProposedSize>"), "{}", r.body_text());
    let r =
        post(&addr, "forms", &signed_fields(SECRET_KEY, conditions.clone(), "2999-01-01T00:00:00Z", &ok_fields), b"")
            .await?;
    expect(&r, 400, "EntityTooSmall");
    for field in ["<ProposedSize>0</ProposedSize>", "<MinSizeAllowed>1</MinSizeAllowed>"] {
        assert!(r.body_text().contains(field), "{field}: {}", r.body_text());
    }
    let listed = s3.list_objects_v2().bucket("forms").send().await?;
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["uploads/photo 1.png"]);

    // No policy on an authenticated gateway: refused. Default status 204.
    let r = post(&addr, "forms", &[("key".into(), "uploads/anon".into())], b"x").await?;
    expect(&r, 403, "AccessDenied");
    let plain = serde_json::json!([{"bucket": "forms"}, ["starts-with", "$key", ""]]);
    let r = post(&addr, "forms", &signed_fields(SECRET_KEY, plain, "2999-01-01T00:00:00Z", &[("key", "plain")]), b"hi")
        .await?;
    assert_eq!(r.status, 204, "{}", r.body_text());
    assert_eq!(body_bytes(s3.get_object().bucket("forms").key("plain").send().await?).await, b"hi");
    Ok(())
}
