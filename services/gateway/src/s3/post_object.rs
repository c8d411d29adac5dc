//! Browser uploads: `POST /<bucket>` with a `multipart/form-data` body whose fields carry
//! the key, the object's headers, a base64 POST policy and its SigV4 signature, and whose
//! last field, `file`, is the object. The policy is checked as S3 checks it (expiration,
//! every condition, no field it does not mention), the file streams into a W-of-RF write
//! like a PutObject (never held in memory), and the answer follows `success_action_status`
//! or `success_action_redirect`.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::object::{meta_from_headers, quoted_etag};
use super::{AppState, secret_for, writable_bucket};
use crate::auth::checksum::ChecksumAlgorithm;
use crate::auth::sigv4::{hmac_sha256, signature_matches, signing_key};
use crate::error::S3Error;
use crate::replicas::{BodyChecks, PutTarget};
use crate::xml;

/// URI encoding as AWS does it: everything but the unreserved characters.
/// Bytes of form fields before the file, at most.
const MAX_FIELDS: usize = 1 << 20;

fn malformed(why: &str) -> S3Error {
    S3Error::InvalidArgument(format!("Malformed POST request: {why}"))
}

fn policy_denied(why: impl std::fmt::Display) -> S3Error {
    S3Error::AccessDenied(format!("Invalid according to Policy: {why}"))
}

/// The request body, read as it arrives.
struct Reader {
    body: BoxStream<'static, Result<Bytes, S3Error>>,
    buf: BytesMut,
    read: usize,
}

impl Reader {
    async fn fill(&mut self) -> Result<bool, S3Error> {
        match self.body.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                self.read += chunk.len();
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Bytes up to `needle` (consumed, with the needle), reading more as needed.
    async fn until(&mut self, needle: &[u8]) -> Result<Bytes, S3Error> {
        loop {
            if let Some(i) = find(&self.buf, needle) {
                let out = self.buf.split_to(i).freeze();
                let _ = self.buf.split_to(needle.len());
                return Ok(out);
            }
            if self.buf.len() > MAX_FIELDS || self.read > 2 * MAX_FIELDS {
                return Err(malformed("form fields too large"));
            }
            if !self.fill().await? {
                return Err(malformed("the body ended inside a form field"));
            }
        }
    }

    async fn take(&mut self, n: usize) -> Result<Bytes, S3Error> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(malformed("the body ended early"));
            }
        }
        Ok(self.buf.split_to(n).freeze())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `name` and `filename` of a part's Content-Disposition.
fn disposition(headers: &str) -> Option<(String, Option<String>)> {
    let line = headers.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    let param = |key: &str| {
        line.split(';').map(str::trim).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().trim_matches('"').to_string())
        })
    };
    Some((param("name")?, param("filename")))
}

/// The file part: its bytes up to the closing boundary, read through the form's reader
/// (whose buffer holds what arrived past the part's headers), checked against the
/// policy's content-length-range as they stream.
struct FilePart {
    r: Reader,
    delimiter: Vec<u8>,
    sent: u64,
    min: u64,
    max: u64,
    done: bool,
}

impl FilePart {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, S3Error>> {
        if self.done {
            return None;
        }
        // Bytes that could begin the delimiter stay buffered until more arrive.
        let keep = self.delimiter.len() - 1;
        loop {
            if let Some(i) = find(&self.r.buf, &self.delimiter) {
                self.done = true;
                let out = self.r.buf.split_to(i).freeze();
                return Some(self.count(out, true));
            }
            if self.r.buf.len() > keep + (64 << 10) {
                let out = self.r.buf.split_to(self.r.buf.len() - keep).freeze();
                return Some(self.count(out, false));
            }
            match self.r.fill().await {
                Ok(true) => {}
                Ok(false) => return self.fail(S3Error::IncompleteBody),
                Err(e) => return self.fail(e),
            }
        }
    }

    fn count(&mut self, out: Bytes, last: bool) -> Result<Bytes, S3Error> {
        self.sent += out.len() as u64;
        if self.sent > self.max {
            self.done = true;
            return Err(S3Error::EntityTooLarge { proposed: self.sent, max: self.max });
        }
        if last && self.sent < self.min {
            return Err(S3Error::EntityTooSmall { proposed: self.sent, min: self.min });
        }
        Ok(out)
    }

    fn fail(&mut self, e: S3Error) -> Option<Result<Bytes, S3Error>> {
        self.done = true;
        Some(Err(e))
    }
}

fn file_stream(r: Reader, delimiter: Vec<u8>, min: u64, max: u64) -> BoxStream<'static, Result<Bytes, S3Error>> {
    let part = FilePart { r, delimiter, sent: 0, min, max, done: false };
    futures::stream::unfold(part, |mut part| async move { part.next_chunk().await.map(|c| (c, part)) }).boxed()
}

/// A policy condition's target field value (`$key`, `$Content-Type`, …; names compare
/// case-insensitively, `bucket` is the request's bucket).
fn field<'a>(fields: &'a HashMap<String, String>, bucket: &'a str, name: &str) -> Option<&'a str> {
    let name = name.trim_start_matches('$').to_ascii_lowercase();
    if name == "bucket" {
        return Some(bucket);
    }
    fields.get(&name).map(String::as_str)
}

/// Check the decoded policy against the form: (min, max) of content-length-range.
fn check_policy(
    policy: &serde_json::Value,
    fields: &HashMap<String, String>,
    bucket: &str,
    now: time::OffsetDateTime,
) -> Result<(u64, u64), S3Error> {
    let expiration =
        policy.get("expiration").and_then(|e| e.as_str()).ok_or_else(|| policy_denied("Policy missing expiration."))?;
    let expires = time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
        .map_err(|_| policy_denied("Invalid Policy: Invalid 'expiration' value."))?;
    if expires < now {
        return Err(policy_denied("Policy expired."));
    }
    let conditions = policy
        .get("conditions")
        .and_then(|c| c.as_array())
        .ok_or_else(|| policy_denied("Policy missing conditions."))?;
    let mut covered: Vec<String> = vec!["bucket".into()];
    let mut range = (0, u64::MAX);
    let failed = |c: &serde_json::Value| policy_denied(format!("Policy Condition failed: {c}"));
    for c in conditions {
        if let Some(obj) = c.as_object() {
            for (name, want) in obj {
                let want = want.as_str().ok_or_else(|| failed(c))?;
                covered.push(name.to_ascii_lowercase());
                if field(fields, bucket, name) != Some(want) {
                    return Err(failed(c));
                }
            }
            continue;
        }
        let arr = c.as_array().ok_or_else(|| failed(c))?;
        let op = arr.first().and_then(|v| v.as_str()).unwrap_or("").to_ascii_lowercase();
        match op.as_str() {
            "eq" | "starts-with" => {
                let name = arr.get(1).and_then(|v| v.as_str()).ok_or_else(|| failed(c))?;
                let want = arr.get(2).and_then(|v| v.as_str()).ok_or_else(|| failed(c))?;
                covered.push(name.trim_start_matches('$').to_ascii_lowercase());
                let got = field(fields, bucket, name).unwrap_or("");
                let ok = if op == "eq" { got == want } else { got.starts_with(want) };
                if !ok {
                    return Err(failed(c));
                }
            }
            "content-length-range" => {
                let num = |v: Option<&serde_json::Value>| {
                    v.and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
                };
                let (min, max) = (num(arr.get(1)), num(arr.get(2)));
                range = (min.ok_or_else(|| failed(c))?, max.ok_or_else(|| failed(c))?);
            }
            _ => return Err(failed(c)),
        }
    }
    for name in fields.keys() {
        let exempt = ["policy", "x-amz-signature", "file"].contains(&name.as_str()) || name.starts_with("x-ignore-");
        if !exempt && !covered.contains(name) {
            return Err(policy_denied(format!("Extra input fields: {name}")));
        }
    }
    Ok(range)
}

/// Verify the policy's signature (SigV4: HMAC of the base64 policy with the signing key of
/// the credential's date and region).
fn check_signature(state: &AppState, fields: &HashMap<String, String>, policy_b64: &str) -> Result<(), S3Error> {
    let get = |n: &str| fields.get(n).map(String::as_str);
    if get("x-amz-algorithm") != Some("AWS4-HMAC-SHA256") {
        return Err(S3Error::InvalidArgument(
            "Only the AWS4-HMAC-SHA256 algorithm is supported for POST uploads".into(),
        ));
    }
    let credential =
        get("x-amz-credential").ok_or_else(|| S3Error::InvalidArgument("Missing x-amz-credential".into()))?;
    let signature = get("x-amz-signature").ok_or_else(|| S3Error::InvalidArgument("Missing x-amz-signature".into()))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, "s3", "aws4_request"] = parts[..] else {
        return Err(S3Error::InvalidArgument(format!("Invalid credential: {credential}")));
    };
    if region != state.cfg.region {
        return Err(S3Error::AuthorizationHeaderMalformed(format!(
            "the region '{region}' is wrong; expecting '{}'",
            state.cfg.region
        )));
    }
    let secret = secret_for(state, access_key).ok_or(S3Error::InvalidAccessKeyId)?;
    let expected = hmac_sha256(&signing_key(&secret, date, region), policy_b64.as_bytes());
    if !signature_matches(&expected, signature) {
        return Err(S3Error::SignatureDoesNotMatch);
    }
    Ok(())
}

pub async fn handle_post_object(
    state: &AppState,
    bucket: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, S3Error> {
    let target = writable_bucket(state, bucket)?;
    let content_type = super::header_str(headers, "content-type").unwrap_or("");
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .filter(|_| content_type.to_ascii_lowercase().starts_with("multipart/form-data"))
        .ok_or_else(|| {
            S3Error::InvalidRequest("Bucket POST must be of the enclosure-type multipart/form-data".into())
        })?;
    let raw = body.into_data_stream().map(|r| r.map_err(|_| S3Error::IncompleteBody)).boxed();
    let mut r = Reader { body: raw, buf: BytesMut::new(), read: 0 };
    let dash = format!("--{boundary}");
    r.until(dash.as_bytes()).await?;
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    // Fields, up to the file.
    let mut fields: HashMap<String, String> = HashMap::new();
    let filename = loop {
        let after = r.take(2).await?;
        if &after[..] == b"--" {
            return Err(S3Error::InvalidArgument("POST requires exactly one file upload per request.".into()));
        }
        let part_headers = r.until(b"\r\n\r\n").await?;
        let text = String::from_utf8_lossy(&part_headers).into_owned();
        let (name, filename) = disposition(&text).ok_or_else(|| malformed("a part without a name"))?;
        let name = name.to_ascii_lowercase();
        if name == "file" {
            break filename.unwrap_or_default();
        }
        let value = r.until(&delimiter).await?;
        let value = String::from_utf8(value.to_vec()).map_err(|_| malformed("a field that is not UTF-8"))?;
        fields.insert(name, value);
    };

    let require_auth = state.cfg.require_auth;
    let policy = match fields.get("policy") {
        Some(p) => {
            check_signature(state, &fields, p)?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(p.trim().as_bytes())
                .map_err(|_| S3Error::InvalidArgument("Invalid Policy: Invalid Base64 encoding.".into()))?;
            Some(
                serde_json::from_slice::<serde_json::Value>(&decoded)
                    .map_err(|_| S3Error::InvalidArgument("Invalid Policy: Invalid JSON.".into()))?,
            )
        }
        None if require_auth => return Err(S3Error::AccessDenied("Access Denied".into())),
        None => None,
    };
    let key_template = fields.get("key").cloned().ok_or_else(|| {
        S3Error::InvalidArgument(
            "Bucket POST must contain a field named 'key'.  If it is specified, please check the order of the fields."
                .into(),
        )
    })?;
    let (min, max) = match &policy {
        Some(p) => check_policy(p, &fields, bucket, time::OffsetDateTime::now_utc())?,
        None => (0, u64::MAX),
    };
    let key = key_template.replace("${filename}", &filename);
    if key.is_empty() || key.len() > 1024 {
        return Err(S3Error::KeyTooLongError);
    }

    // The object's headers come from the form.
    let mut object_headers = HeaderMap::new();
    for (name, value) in &fields {
        let is_header = matches!(
            name.as_str(),
            "content-type" | "cache-control" | "content-disposition" | "content-encoding" | "expires" | "x-amz-tagging"
        ) || name.starts_with("x-amz-meta-");
        if is_header && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            object_headers.insert(n, v);
        }
    }
    let mut meta = meta_from_headers(&object_headers, bucket, &key)?;
    meta.version = Some(state.store.new_version());
    meta.bucket_rev = target.create_revision;
    let max_len = max.min(state.cfg.max_object_size);
    let checks = BodyChecks { max_len, record: Some(ChecksumAlgorithm::Crc64Nvme), ..Default::default() };
    let replicas = state.store.replica_set(bucket, &key)?;
    let stream = file_stream(r, delimiter, min, max_len);
    let outcome = state.store.put_stream(&replicas, PutTarget::Object(Box::new(meta)), stream, checks).await?;
    metrics::counter!("gateway_bytes_in_total").increment(outcome.size);
    let etag = quoted_etag(&hex::encode(outcome.md5));

    if let Some(url) = fields.get("success_action_redirect").filter(|u| u.starts_with("http")) {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, super::URL_KEY_ENCODE).to_string();
        let sep = if url.contains('?') { '&' } else { '?' };
        let location = format!("{url}{sep}bucket={}&key={}&etag={}", enc(bucket), enc(&key), enc(&etag));
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(http::header::LOCATION, location)
            .header(http::header::ETAG, etag)
            .body(Body::empty())
            .map_err(|e| S3Error::InternalError(format!("response: {e}")));
    }
    // An absolute URL, as S3 gives (the key URL-encoded; the scheme a proxy in front says).
    let location = super::object_url(headers, state.cfg.root_domain.as_deref(), bucket, &key);
    match fields.get("success_action_status").map(String::as_str) {
        Some("201") => {
            let doc = xml::PostResponse {
                location: location.clone(),
                bucket: bucket.to_string(),
                key: key.clone(),
                etag: etag.clone(),
            };
            let mut resp = Response::new(Body::from(xml::to_xml("PostResponse", &doc)?));
            *resp.status_mut() = StatusCode::CREATED;
            let h = resp.headers_mut();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(http::header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(http::header::LOCATION, v);
            }
            Ok(resp)
        }
        status => {
            let code = if status == Some("200") { StatusCode::OK } else { StatusCode::NO_CONTENT };
            Response::builder()
                .status(code)
                .header(http::header::ETAG, etag)
                .header(http::header::LOCATION, location)
                .body(Body::empty())
                .map_err(|e| S3Error::InternalError(format!("response: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn policies_are_checked_as_s3_checks_them() {
        let now = time::OffsetDateTime::now_utc();
        let policy = serde_json::json!({
            "expiration": "2999-01-01T00:00:00Z",
            "conditions": [
                {"bucket": "b"},
                ["starts-with", "$key", "uploads/"],
                {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
                ["eq", "$x-amz-credential", "c"],
                {"x-amz-date": "d"},
                ["starts-with", "$Content-Type", "image/"],
                ["content-length-range", 1, 100]
            ]
        });
        let base = [
            ("key", "uploads/a.png"),
            ("x-amz-algorithm", "AWS4-HMAC-SHA256"),
            ("x-amz-credential", "c"),
            ("x-amz-date", "d"),
            ("content-type", "image/png"),
            ("policy", "p"),
            ("x-amz-signature", "s"),
        ];
        assert_eq!(check_policy(&policy, &fields(&base), "b", now).unwrap(), (1, 100));
        assert!(check_policy(&policy, &fields(&base), "other", now).is_err());
        let mut wrong_key = base;
        wrong_key[0] = ("key", "elsewhere/a.png");
        assert!(
            matches!(check_policy(&policy, &fields(&wrong_key), "b", now), Err(S3Error::AccessDenied(m)) if m.contains("starts-with"))
        );
        let mut extra = base.to_vec();
        extra.push(("x-amz-meta-color", "red"));
        assert!(
            matches!(check_policy(&policy, &fields(&extra), "b", now), Err(S3Error::AccessDenied(m)) if m.contains("Extra input fields"))
        );
        extra.pop();
        extra.push(("x-ignore-me", "fine"));
        assert!(check_policy(&policy, &fields(&extra), "b", now).is_ok());
        let expired = serde_json::json!({"expiration": "2000-01-01T00:00:00Z", "conditions": []});
        assert!(
            matches!(check_policy(&expired, &fields(&[]), "b", now), Err(S3Error::AccessDenied(m)) if m.contains("expired"))
        );
    }

    #[test]
    fn dispositions() {
        let h = "Content-Disposition: form-data; name=\"file\"; filename=\"a b.png\"\r\nContent-Type: image/png";
        assert_eq!(disposition(h), Some(("file".into(), Some("a b.png".into()))));
        assert_eq!(disposition("content-disposition: form-data; name=key"), Some(("key".into(), None)));
        assert_eq!(disposition("Content-Type: x"), None);
    }
}
