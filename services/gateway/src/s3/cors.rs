//! Bucket CORS: Get/Put/DeleteBucketCors (the rules live in the bucket's metad entry, like
//! its tags), the unauthenticated preflight (`OPTIONS` on a bucket or object), and the
//! `Access-Control-*` headers on the answers to cross-origin requests, as S3 gives them.

use aether_common::catalog::CorsRule;
use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::bucket::{stored_entry, update_entry};
use super::{AppState, Ctx, ReqBody, empty_response, existing_bucket, xml_response};
use crate::error::S3Error;
use crate::xml;

/// S3's limit on rules per bucket.
const MAX_RULES: usize = 100;
/// Methods a rule may allow.
const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "HEAD"];

#[derive(Debug, Serialize, Deserialize)]
pub struct CorsConfiguration {
    #[serde(rename = "@xmlns", skip_deserializing, skip_serializing_if = "str::is_empty")]
    pub xmlns: &'static str,
    #[serde(rename = "CORSRule", default)]
    pub rules: Vec<CorsRuleXml>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CorsRuleXml {
    #[serde(rename = "ID", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "AllowedHeader", default)]
    pub allowed_headers: Vec<String>,
    #[serde(rename = "AllowedMethod", default)]
    pub allowed_methods: Vec<String>,
    #[serde(rename = "AllowedOrigin", default)]
    pub allowed_origins: Vec<String>,
    #[serde(rename = "ExposeHeader", default)]
    pub expose_headers: Vec<String>,
    #[serde(rename = "MaxAgeSeconds", default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
}

pub async fn handle_get_bucket_cors(state: &AppState, bucket: &str) -> Result<Response, S3Error> {
    let entry = stored_entry(state, bucket).await?;
    if entry.cors.is_empty() {
        return Err(S3Error::NoSuchCORSConfiguration);
    }
    let doc = CorsConfiguration {
        xmlns: xml::S3_NS,
        rules: entry
            .cors
            .into_iter()
            .map(|r| CorsRuleXml {
                id: r.id,
                allowed_headers: r.allowed_headers,
                allowed_methods: r.allowed_methods,
                allowed_origins: r.allowed_origins,
                expose_headers: r.expose_headers,
                max_age_seconds: r.max_age_seconds,
            })
            .collect(),
    };
    xml_response(xml::to_xml("CORSConfiguration", &doc)?)
}

/// PutBucketCors: the whole rule set is replaced (Content-MD5 or a checksum required, as
/// S3 requires one).
pub async fn handle_put_bucket_cors(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    body: ReqBody,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let doc: CorsConfiguration = super::read_checked_document(ctx, body, 64 << 10).await?;
    let rules = validate(doc.rules)?;
    update_entry(state, bucket, |e| e.cors = rules.clone()).await?;
    empty_response(StatusCode::OK)
}

pub async fn handle_delete_bucket_cors(state: &AppState, bucket: &str) -> Result<Response, S3Error> {
    update_entry(state, bucket, |e| e.cors.clear()).await?;
    empty_response(StatusCode::NO_CONTENT)
}

/// S3's rules for a CORS configuration.
fn validate(rules: Vec<CorsRuleXml>) -> Result<Vec<CorsRule>, S3Error> {
    if rules.is_empty() {
        return Err(S3Error::MalformedXML);
    }
    if rules.len() > MAX_RULES {
        return Err(S3Error::InvalidRequest(format!(
            "The CORS configuration must not have more than {MAX_RULES} rules."
        )));
    }
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        if r.allowed_methods.is_empty() || r.allowed_origins.is_empty() {
            return Err(S3Error::MalformedXML);
        }
        if let Some(m) = r.allowed_methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
            return Err(S3Error::InvalidRequest(format!(
                "Found unsupported HTTP method in CORS config. Unsupported method is {m}"
            )));
        }
        if let Some(o) = r.allowed_origins.iter().find(|o| o.matches('*').count() > 1) {
            return Err(S3Error::InvalidRequest(format!("AllowedOrigin \"{o}\" can not have more than one wildcard.")));
        }
        if let Some(h) = r.allowed_headers.iter().find(|h| h.matches('*').count() > 1) {
            return Err(S3Error::InvalidRequest(format!("AllowedHeader \"{h}\" can not have more than one wildcard.")));
        }
        if r.id.as_ref().is_some_and(|id| id.len() > 255) {
            return Err(S3Error::InvalidRequest(
                "The ID of a CORS rule must not be longer than 255 characters.".into(),
            ));
        }
        out.push(CorsRule {
            id: r.id,
            allowed_methods: r.allowed_methods,
            allowed_origins: r.allowed_origins,
            allowed_headers: r.allowed_headers,
            expose_headers: r.expose_headers,
            max_age_seconds: r.max_age_seconds,
        });
    }
    Ok(out)
}

/// `pattern` with at most one `*` standing for any run of characters.
fn wildcard_match(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => s.len() >= head.len() + tail.len() && s.starts_with(head) && s.ends_with(tail),
    }
}

/// The first rule allowing `origin` to use `method` with `headers` (lower-case), and the
/// origin pattern that matched.
fn find_rule<'r>(
    rules: &'r [CorsRule],
    origin: &str,
    method: &str,
    headers: &[String],
) -> Option<(&'r CorsRule, &'r str)> {
    rules.iter().find_map(|r| {
        let pattern = r.allowed_origins.iter().find(|o| wildcard_match(o, origin))?;
        let method_ok = r.allowed_methods.iter().any(|m| m == method);
        let headers_ok =
            headers.iter().all(|h| r.allowed_headers.iter().any(|a| wildcard_match(&a.to_ascii_lowercase(), h)));
        (method_ok && headers_ok).then_some((r, pattern.as_str()))
    })
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The headers of an allowed cross-origin request or preflight.
fn allow(headers: &mut HeaderMap, rule: &CorsRule, pattern: &str, origin: &str) {
    if pattern == "*" {
        set(headers, "access-control-allow-origin", "*");
    } else {
        set(headers, "access-control-allow-origin", origin);
        set(headers, "access-control-allow-credentials", "true");
    }
    set(headers, "access-control-allow-methods", &rule.allowed_methods.join(", "));
    if !rule.expose_headers.is_empty() {
        set(headers, "access-control-expose-headers", &rule.expose_headers.join(", "));
    }
    if let Some(age) = rule.max_age_seconds {
        set(headers, "access-control-max-age", &age.to_string());
    }
}

/// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`): no
/// authentication, answered from the cached rules.
pub fn handle_preflight(state: &AppState, bucket: &str, req: &HeaderMap) -> Result<Response, S3Error> {
    let text = |name: &str| req.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let origin = text("origin")
        .ok_or_else(|| S3Error::BadRequest("Insufficient information. Origin request header needed.".into()))?;
    // As S3: a missing bucket or one without rules is refused before the method is looked at.
    let entry = existing_bucket(state, bucket).map_err(|_| S3Error::CorsForbidden("Bucket not found"))?.entry;
    if entry.cors.is_empty() {
        return Err(S3Error::CorsForbidden("CORS is not enabled for this bucket."));
    }
    let method = text("access-control-request-method")
        .ok_or_else(|| S3Error::BadRequest("Invalid Access-Control-Request-Method: null".into()))?;
    if !METHODS.contains(&method) {
        return Err(S3Error::BadRequest(format!("Invalid Access-Control-Request-Method: {method}")));
    }
    let requested: Vec<String> = text("access-control-request-headers")
        .map(|h| h.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let (rule, pattern) = find_rule(&entry.cors, origin, method, &requested).ok_or(S3Error::CorsForbidden(
        "This CORS request is not allowed. This is usually because the evalution of Origin, request method / \
         Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
    ))?;
    let mut resp = Response::new(Body::empty());
    let headers = resp.headers_mut();
    allow(headers, rule, pattern, origin);
    if !requested.is_empty() {
        set(headers, "access-control-allow-headers", &requested.join(", "));
    }
    set(headers, "vary", "Origin, Access-Control-Request-Headers, Access-Control-Request-Method");
    Ok(resp)
}

/// A cross-origin request's answer gets the `Access-Control-*` headers when a rule of the
/// bucket allows the origin and method (from the cached rules; no rule, no headers).
pub fn decorate(state: &AppState, bucket: &str, origin: &str, method: &Method, resp: &mut Response) {
    let Ok(cached) = existing_bucket(state, bucket) else { return };
    if cached.entry.cors.is_empty() {
        return;
    }
    // HEAD is allowed by a rule that allows it, or GET's answer without a body.
    if let Some((rule, pattern)) = find_rule(&cached.entry.cors, origin, method.as_str(), &[]) {
        let headers = resp.headers_mut();
        allow(headers, rule, pattern, origin);
        set(headers, "vary", "Origin, Access-Control-Request-Headers, Access-Control-Request-Method");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_run() {
        assert!(wildcard_match("*", "https://a.example"));
        assert!(wildcard_match("https://*.example.com", "https://app.example.com"));
        assert!(!wildcard_match("https://*.example.com", "http://app.example.com"));
        assert!(!wildcard_match("https://*.example.com", "https://.example.co"));
        assert!(wildcard_match("x-amz-*", "x-amz-date"));
        assert!(wildcard_match("https://a.example", "https://a.example"));
        assert!(!wildcard_match("https://a.example", "https://b.example"));
    }

    #[test]
    fn rules_match_origin_method_and_every_requested_header() {
        let rules = vec![
            CorsRule {
                allowed_methods: vec!["GET".into()],
                allowed_origins: vec!["https://read.example".into()],
                ..Default::default()
            },
            CorsRule {
                allowed_methods: vec!["PUT".into(), "GET".into()],
                allowed_origins: vec!["https://*.example".into()],
                allowed_headers: vec!["Content-Type".into(), "x-amz-*".into()],
                ..Default::default()
            },
        ];
        let (r, p) = find_rule(&rules, "https://read.example", "GET", &[]).expect("first rule");
        assert_eq!((r.allowed_methods.len(), p), (1, "https://read.example"));
        let hs = vec!["content-type".to_string(), "x-amz-date".to_string()];
        let (r, _) = find_rule(&rules, "https://read.example", "PUT", &hs).expect("second rule");
        assert_eq!(r.allowed_methods.len(), 2);
        assert!(find_rule(&rules, "https://read.example", "PUT", &["authorization".into()]).is_none());
        assert!(find_rule(&rules, "https://other.org", "GET", &[]).is_none());
        assert!(find_rule(&rules, "https://read.example", "DELETE", &[]).is_none());
    }

    #[test]
    fn validation_follows_s3() {
        let rule = |methods: &[&str], origins: &[&str]| CorsRuleXml {
            id: None,
            allowed_headers: vec![],
            allowed_methods: methods.iter().map(|s| s.to_string()).collect(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            expose_headers: vec![],
            max_age_seconds: None,
        };
        assert!(validate(vec![rule(&["GET"], &["*"])]).is_ok());
        assert!(matches!(validate(vec![]), Err(S3Error::MalformedXML)));
        assert!(matches!(validate(vec![rule(&[], &["*"])]), Err(S3Error::MalformedXML)));
        assert!(
            matches!(validate(vec![rule(&["PATCH"], &["*"])]), Err(S3Error::InvalidRequest(m)) if m.contains("PATCH"))
        );
        assert!(matches!(validate(vec![rule(&["GET"], &["*.*"])]), Err(S3Error::InvalidRequest(_))));
    }
}
