//! AWS Signature Version 4 for S3: the `Authorization` header form and the presigned-URL
//! (query) form, verified as pure functions of method, URI, headers and the clock.
//!
//! Canonicalisation follows S3 (not the generic SigV4 rules): the path is taken as sent,
//! never normalised (`//`, `.`/`..` segments and trailing `/` are kept) and each segment's
//! percent-decoded bytes are re-encoded once with the AWS unreserved set
//! (`A-Z a-z 0-9 - . _ ~`). Query parameters are decoded then re-encoded the same way and
//! sorted by encoded key, then encoded value.
//!
//! Region: a credential scope is accepted only if its region equals the configured
//! `region` exactly (no `us-east-1` / `auto` aliases); clients must be configured with the
//! gateway's region. Service must be `s3`.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, Method, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

use super::checksum::ChecksumAlgorithm;
use super::chunked::{ChunkSigning, ChunkedMode};
use crate::error::S3Error;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
pub const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
pub const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// Hex SHA-256 of the empty string.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Largest allowed difference between the request time and the server clock.
const MAX_SKEW: Duration = Duration::minutes(15);
/// Largest `X-Amz-Expires` (one week), as S3.
const MAX_PRESIGN_EXPIRES: i64 = 604_800;

/// Characters that stay unencoded: the AWS unreserved set `A-Z a-z 0-9 - . _ ~`.
const AWS_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

const AMZ_DATE: &[BorrowedFormatItem<'static>] = format_description!("[year][month][day]T[hour][minute][second]Z");
const HTTP_DATE: &[BorrowedFormatItem<'static>] =
    format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");

/// A secret access key. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(****)")
    }
}

/// Who sent an authenticated request, and how its body must be checked.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub access_key: String,
    pub payload: PayloadCheck,
}

/// How the handler must check the request body.
#[derive(Debug, Clone)]
pub enum PayloadCheck {
    /// `UNSIGNED-PAYLOAD` (header or presigned URL): nothing to check.
    Unsigned,
    /// Hex `x-amz-content-sha256`: hash the body and compare (`XAmzContentSHA256Mismatch`).
    Sha256([u8; 32]),
    /// `aws-chunked`: wrap the body with [`super::decode_chunked`].
    Chunked(ChunkedMode),
}

// ---------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // Invariant: HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The SigV4 signing key for `date` (`YYYYMMDD`), `region` and service `s3`.
#[doc(hidden)]
pub fn signing_key(secret: &SecretKey, date: &str, region: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{}", secret.expose()).as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, b"s3");
    hmac_sha256(&k_service, b"aws4_request")
}

/// Constant-time comparison of a computed signature with a hex one from the request.
pub(crate) fn signature_matches(expected: &[u8; 32], provided_hex: &str) -> bool {
    let mut provided = [0u8; 32];
    if hex::decode_to_slice(provided_hex.trim(), &mut provided).is_err() {
        return false;
    }
    expected.ct_eq(&provided).into()
}

fn aws_encode(bytes: &[u8]) -> String {
    percent_encode(bytes, AWS_ENCODE).to_string()
}

fn decode_component(s: &str) -> Vec<u8> {
    percent_decode_str(s).collect()
}

/// S3's canonical URI: the raw path, each segment decoded then re-encoded once.
pub fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(raw_path.len() + 16);
    for (i, segment) in raw_path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&aws_encode(&decode_component(segment)));
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

/// The canonical query string, optionally without `X-Amz-Signature` (presigned form).
pub fn canonical_query(raw_query: &str, skip_signature: bool) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (aws_encode(&decode_component(k)), aws_encode(&decode_component(v)))
        })
        .filter(|(k, _)| !(skip_signature && k == "X-Amz-Signature"))
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(raw_query.len() + 16);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Decoded query parameters, in order.
fn query_params(raw_query: &str) -> Vec<(String, String)> {
    raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&decode_component(k)).into_owned(),
                String::from_utf8_lossy(&decode_component(v)).into_owned(),
            )
        })
        .collect()
}

fn normalize_header_value(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// `name:value\n` for each signed header; several values of one header are joined by `,`.
/// `host` falls back to the URI authority (HTTP/2 `:authority`).
fn canonical_headers(headers: &HeaderMap, uri: &Uri, signed: &[&str]) -> String {
    let mut out = String::new();
    for name in signed {
        let lower = name.to_ascii_lowercase();
        let values: Vec<String> =
            headers.get_all(lower.as_str()).iter().map(|v| normalize_header_value(v.as_bytes())).collect();
        out.push_str(&lower);
        out.push(':');
        if values.is_empty() && lower == "host" {
            if let Some(authority) = uri.authority() {
                out.push_str(authority.as_str());
            }
        } else {
            out.push_str(&values.join(","));
        }
        out.push('\n');
    }
    out
}

struct SignInput<'a> {
    method: &'a Method,
    canonical_uri: String,
    canonical_query: String,
    canonical_headers: String,
    signed_headers: &'a str,
    payload_hash: &'a str,
    datetime: &'a str,
    scope: &'a str,
}

fn compute_signature(key: &[u8; 32], input: &SignInput<'_>) -> [u8; 32] {
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method.as_str(),
        input.canonical_uri,
        input.canonical_query,
        input.canonical_headers,
        input.signed_headers,
        input.payload_hash
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        input.datetime,
        input.scope,
        hex::encode(sha256(canonical_request.as_bytes()))
    );
    hmac_sha256(key, string_to_sign.as_bytes())
}

pub(crate) fn format_amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(s.trim(), AMZ_DATE).ok().map(PrimitiveDateTime::assume_utc)
}

fn parse_http_date(s: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(s.trim(), HTTP_DATE).ok().map(PrimitiveDateTime::assume_utc)
}

struct Credential<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminal: &'a str,
}

fn parse_credential(s: &str) -> Option<Credential<'_>> {
    let mut parts = s.trim().rsplitn(5, '/');
    let terminal = parts.next()?;
    let service = parts.next()?;
    let region = parts.next()?;
    let date = parts.next()?;
    let access_key = parts.next()?;
    if access_key.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Credential { access_key, date, region, service, terminal })
}

enum PayloadForm {
    Unsigned,
    Sha256([u8; 32]),
    Streaming { signed: bool, trailer: bool },
}

fn parse_payload_form(value: &str) -> Result<PayloadForm, S3Error> {
    match value {
        UNSIGNED_PAYLOAD => Ok(PayloadForm::Unsigned),
        STREAMING_SIGNED => Ok(PayloadForm::Streaming { signed: true, trailer: false }),
        STREAMING_SIGNED_TRAILER => Ok(PayloadForm::Streaming { signed: true, trailer: true }),
        STREAMING_UNSIGNED_TRAILER => Ok(PayloadForm::Streaming { signed: false, trailer: true }),
        v if v.starts_with("STREAMING-AWS4-ECDSA-P256-SHA256") => {
            Err(S3Error::NotImplemented("SigV4a streaming (AWS4-ECDSA-P256-SHA256)".into()))
        }
        v => {
            let mut hash = [0u8; 32];
            if v.len() == 64 && hex::decode_to_slice(v, &mut hash).is_ok() {
                Ok(PayloadForm::Sha256(hash))
            } else {
                Err(S3Error::InvalidArgument(
                    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, \
                     STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid \
                     sha256 value."
                        .into(),
                ))
            }
        }
    }
}

/// The checksum named by the `x-amz-trailer` request header, if any.
fn declared_trailer(headers: &HeaderMap) -> Result<Option<ChecksumAlgorithm>, S3Error> {
    let mut found = None;
    for value in headers.get_all("x-amz-trailer") {
        let text = value.to_str().map_err(|_| S3Error::InvalidRequest("Invalid x-amz-trailer header.".into()))?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if let Some(algorithm) = ChecksumAlgorithm::from_header_name(name) {
                if found.is_some() {
                    return Err(S3Error::InvalidRequest(
                        "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.".into(),
                    ));
                }
                found = Some(algorithm);
            }
        }
    }
    Ok(found)
}

fn decoded_content_length(headers: &HeaderMap) -> Result<u64, S3Error> {
    let value = headers.get("x-amz-decoded-content-length").ok_or(S3Error::MissingContentLength)?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| S3Error::InvalidArgument("Invalid x-amz-decoded-content-length header.".into()))
}

fn payload_check(
    form: PayloadForm,
    headers: &HeaderMap,
    signing: Option<ChunkSigning>,
) -> Result<PayloadCheck, S3Error> {
    match form {
        PayloadForm::Unsigned => Ok(PayloadCheck::Unsigned),
        PayloadForm::Sha256(hash) => Ok(PayloadCheck::Sha256(hash)),
        PayloadForm::Streaming { signed, trailer } => {
            let length = decoded_content_length(headers)?;
            let expected = if trailer { declared_trailer(headers)? } else { None };
            let signing = if signed { signing } else { None };
            Ok(PayloadCheck::Chunked(ChunkedMode::new(signing, trailer, expected, Some(length))))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------

fn header_malformed_three() -> S3Error {
    S3Error::AuthorizationHeaderMalformed(
        "The authorization header is malformed; the authorization header requires three components: Credential, \
         SignedHeaders, and Signature."
            .into(),
    )
}

fn unsupported_mechanism() -> S3Error {
    S3Error::InvalidRequest(
        "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.".into(),
    )
}

/// Checks a request's SigV4 signature (header or presigned form) and says how its body
/// must be checked. `lookup` maps an access key id to its secret.
pub fn authenticate(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    region: &str,
    now: OffsetDateTime,
    lookup: &dyn Fn(&str) -> Option<SecretKey>,
) -> Result<AuthContext, S3Error> {
    let query = uri.query().unwrap_or("");
    let params = query_params(query);
    let has_param = |name: &str| params.iter().any(|(k, _)| k == name);
    let presigned = has_param("X-Amz-Algorithm") || has_param("X-Amz-Credential") || has_param("X-Amz-Signature");
    match (headers.get(http::header::AUTHORIZATION), presigned) {
        (Some(_), true) => Err(S3Error::InvalidArgument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string \
             parameter or the Authorization header should be specified"
                .into(),
        )),
        (Some(value), false) => {
            let value = value.to_str().map_err(|_| header_malformed_three())?;
            header_auth(method, uri, headers, value, region, now, lookup)
        }
        (None, true) => presigned_auth(method, uri, headers, &params, region, now, lookup),
        (None, false) => {
            if has_param("AWSAccessKeyId") || has_param("Signature") {
                Err(unsupported_mechanism())
            } else {
                Err(S3Error::AccessDenied("Access Denied".into()))
            }
        }
    }
}

fn header_auth(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    authorization: &str,
    region: &str,
    now: OffsetDateTime,
    lookup: &dyn Fn(&str) -> Option<SecretKey>,
) -> Result<AuthContext, S3Error> {
    let authorization = authorization.trim();
    let Some(rest) = authorization.strip_prefix(ALGORITHM).filter(|r| r.starts_with([' ', '\t'])) else {
        if authorization.starts_with("AWS ") {
            return Err(unsupported_mechanism());
        }
        if authorization.starts_with("AWS4-ECDSA-P256-SHA256") {
            return Err(S3Error::NotImplemented("SigV4a (AWS4-ECDSA-P256-SHA256)".into()));
        }
        return Err(S3Error::InvalidArgument("Unsupported Authorization Type".into()));
    };
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(header_malformed_three)?;
        match k.trim() {
            "Credential" => credential = Some(v.trim()),
            "SignedHeaders" => signed_headers = Some(v.trim()),
            "Signature" => signature = Some(v.trim()),
            _ => return Err(header_malformed_three()),
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) = (credential, signed_headers, signature) else {
        return Err(header_malformed_three());
    };
    let cred = parse_credential(credential).ok_or_else(|| {
        S3Error::AuthorizationHeaderMalformed(
            "The authorization header is malformed; the Credential is mal-formed; expecting \
             \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"."
                .into(),
        )
    })?;
    if cred.region != region {
        return Err(S3Error::AuthorizationHeaderMalformed(format!(
            "The authorization header is malformed; the region '{}' is wrong; expecting '{region}'",
            cred.region
        )));
    }
    if cred.service != "s3" {
        return Err(S3Error::AuthorizationHeaderMalformed(format!(
            "The authorization header is malformed; incorrect service \"{}\". This endpoint belongs to \"s3\".",
            cred.service
        )));
    }
    if cred.terminal != "aws4_request" {
        return Err(S3Error::AuthorizationHeaderMalformed(format!(
            "The authorization header is malformed; incorrect terminal \"{}\". This endpoint uses \"aws4_request\".",
            cred.terminal
        )));
    }

    // Request time: x-amz-date, else Date.
    let no_date = || S3Error::AccessDenied("AWS authentication requires a valid Date or x-amz-date header".into());
    let (datetime, request_time) = if let Some(v) = headers.get("x-amz-date") {
        let text = v.to_str().map_err(|_| no_date())?.trim();
        (text.to_owned(), parse_amz_date(text).ok_or_else(no_date)?)
    } else if let Some(v) = headers.get(http::header::DATE) {
        let t = v.to_str().ok().and_then(parse_http_date).ok_or_else(no_date)?;
        (format_amz_date(t), t)
    } else {
        return Err(no_date());
    };
    if datetime.get(..8) != Some(cred.date) {
        return Err(S3Error::AuthorizationHeaderMalformed(
            "The authorization header is malformed; Invalid credential date. Date is not the same as X-Amz-Date."
                .into(),
        ));
    }
    let secret = lookup(cred.access_key).ok_or(S3Error::InvalidAccessKeyId)?;
    if (now - request_time).abs() > MAX_SKEW {
        return Err(S3Error::RequestTimeTooSkewed);
    }

    let payload_hash = headers
        .get("x-amz-content-sha256")
        .ok_or_else(|| {
            S3Error::InvalidRequest("Missing required header for this request: x-amz-content-sha256".into())
        })?
        .to_str()
        .map_err(|_| S3Error::InvalidArgument("Invalid x-amz-content-sha256 header.".into()))?
        .trim();
    let form = parse_payload_form(payload_hash)?;

    let names: Vec<&str> = signed_headers.split(';').filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Err(header_malformed_three());
    }
    let key = signing_key(&secret, cred.date, region);
    let scope = format!("{}/{region}/s3/aws4_request", cred.date);
    let computed = compute_signature(
        &key,
        &SignInput {
            method,
            canonical_uri: canonical_uri(uri.path()),
            canonical_query: canonical_query(uri.query().unwrap_or(""), false),
            canonical_headers: canonical_headers(headers, uri, &names),
            signed_headers,
            payload_hash,
            datetime: &datetime,
            scope: &scope,
        },
    );
    if !signature_matches(&computed, signature) {
        tracing::debug!(access_key = cred.access_key, "SigV4 header signature mismatch");
        return Err(S3Error::SignatureDoesNotMatch);
    }
    let signing = ChunkSigning { key, datetime, scope, seed: computed };
    let payload = payload_check(form, headers, Some(signing))?;
    Ok(AuthContext { access_key: cred.access_key.to_owned(), payload })
}

fn presigned_auth(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    params: &[(String, String)],
    region: &str,
    now: OffsetDateTime,
    lookup: &dyn Fn(&str) -> Option<SecretKey>,
) -> Result<AuthContext, S3Error> {
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let qerr = |m: String| S3Error::AuthorizationQueryParametersError(m);
    let (Some(algorithm), Some(credential), Some(signature), Some(date), Some(signed_headers), Some(expires)) = (
        get("X-Amz-Algorithm"),
        get("X-Amz-Credential"),
        get("X-Amz-Signature"),
        get("X-Amz-Date"),
        get("X-Amz-SignedHeaders"),
        get("X-Amz-Expires"),
    ) else {
        return Err(qerr(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, \
             X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
                .into(),
        ));
    };
    if algorithm != ALGORITHM {
        return Err(qerr("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"".into()));
    }
    let cred = parse_credential(credential).ok_or_else(|| {
        qerr(
            "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; expecting \
             \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"."
                .into(),
        )
    })?;
    if cred.region != region {
        return Err(qerr(format!(
            "Error parsing the X-Amz-Credential parameter; the region '{}' is wrong; expecting '{region}'",
            cred.region
        )));
    }
    if cred.service != "s3" {
        return Err(qerr(format!(
            "Error parsing the X-Amz-Credential parameter; incorrect service \"{}\". This endpoint belongs to \"s3\".",
            cred.service
        )));
    }
    if cred.terminal != "aws4_request" {
        return Err(qerr(format!(
            "Error parsing the X-Amz-Credential parameter; incorrect terminal \"{}\". This endpoint uses \
             \"aws4_request\".",
            cred.terminal
        )));
    }
    let request_time = parse_amz_date(date)
        .ok_or_else(|| qerr("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"".into()))?;
    let expires: i64 = expires.trim().parse().map_err(|_| qerr("X-Amz-Expires should be a number".into()))?;
    if expires < 0 {
        return Err(qerr("X-Amz-Expires must be non-negative".into()));
    }
    if expires == 0 {
        return Err(qerr("X-Amz-Expires must be at least 1 second".into()));
    }
    if expires > MAX_PRESIGN_EXPIRES {
        return Err(qerr("X-Amz-Expires must be less than a week (in seconds) that is 604800".into()));
    }
    let date = date.trim();
    if date.get(..8) != Some(cred.date) {
        return Err(qerr(format!(
            "Invalid credential date \"{}\". This date is not the same as X-Amz-Date: \"{}\".",
            cred.date,
            date.get(..8).unwrap_or(date)
        )));
    }
    let secret = lookup(cred.access_key).ok_or(S3Error::InvalidAccessKeyId)?;
    if request_time - now > MAX_SKEW {
        return Err(S3Error::AccessDenied("Request is not valid yet".into()));
    }
    if now > request_time + Duration::seconds(expires) {
        return Err(S3Error::AccessDenied("Request has expired".into()));
    }

    let payload_hash = get("X-Amz-Content-Sha256").unwrap_or(UNSIGNED_PAYLOAD).trim();
    let form = parse_payload_form(payload_hash)?;
    let names: Vec<&str> = signed_headers.split(';').filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Err(qerr("X-Amz-SignedHeaders must not be empty".into()));
    }
    let key = signing_key(&secret, cred.date, region);
    let scope = format!("{}/{region}/s3/aws4_request", cred.date);
    let computed = compute_signature(
        &key,
        &SignInput {
            method,
            canonical_uri: canonical_uri(uri.path()),
            canonical_query: canonical_query(uri.query().unwrap_or(""), true),
            canonical_headers: canonical_headers(headers, uri, &names),
            signed_headers,
            payload_hash,
            datetime: date,
            scope: &scope,
        },
    );
    if !signature_matches(&computed, signature) {
        tracing::debug!(access_key = cred.access_key, "SigV4 presigned signature mismatch");
        return Err(S3Error::SignatureDoesNotMatch);
    }
    let signing = ChunkSigning { key, datetime: date.to_owned(), scope, seed: computed };
    let payload = payload_check(form, headers, Some(signing))?;
    Ok(AuthContext { access_key: cred.access_key.to_owned(), payload })
}

/// For `require_auth = false`: no signature check, but the body encoding still has to be
/// understood. Chunk and trailer signatures are skipped; lengths and trailing checksums
/// are still verified.
pub fn payload_check_without_auth(headers: &HeaderMap) -> Result<PayloadCheck, S3Error> {
    match headers.get("x-amz-content-sha256") {
        Some(v) => {
            let v = v.to_str().map_err(|_| S3Error::InvalidArgument("Invalid x-amz-content-sha256 header.".into()))?;
            payload_check(parse_payload_form(v.trim())?, headers, None)
        }
        None => {
            let chunked = headers
                .get_all(http::header::CONTENT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|e| e.trim().eq_ignore_ascii_case("aws-chunked")));
            if chunked {
                payload_check(PayloadForm::Streaming { signed: false, trailer: true }, headers, None)
            } else {
                Ok(PayloadCheck::Unsigned)
            }
        }
    }
}

/// Builds a presigned URL (for tests and the admin CLI). `url` = `"http://host:port/path?query"`;
/// the path may be raw (unencoded) or percent-encoded: each segment is decoded then
/// re-encoded once. The authority must be exactly what the client will send as `Host`.
/// Only `host` is signed; the payload is `UNSIGNED-PAYLOAD`.
pub fn presign_url(
    method: &Method,
    url: &str,
    access_key: &str,
    secret: &SecretKey,
    region: &str,
    now: OffsetDateTime,
    expires_secs: u64,
) -> String {
    let (scheme, after) = url.split_once("://").unwrap_or(("http", url));
    let split = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, path_query) = after.split_at(split);
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let path = canonical_uri(path);
    let datetime = format_amz_date(now);
    let date = &datetime[..8];
    let scope = format!("{date}/{region}/s3/aws4_request");
    let credential = format!("{access_key}/{scope}");
    let mut full_query = String::from(query);
    for (k, v) in [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", credential.as_str()),
        ("X-Amz-Date", datetime.as_str()),
        ("X-Amz-Expires", &expires_secs.to_string()),
        ("X-Amz-SignedHeaders", "host"),
    ] {
        if !full_query.is_empty() {
            full_query.push('&');
        }
        full_query.push_str(k);
        full_query.push('=');
        full_query.push_str(&aws_encode(v.as_bytes()));
    }
    let canonical_query = canonical_query(&full_query, true);
    let key = signing_key(secret, date, region);
    let signature = compute_signature(
        &key,
        &SignInput {
            method,
            canonical_uri: path.clone(),
            canonical_query: canonical_query.clone(),
            canonical_headers: format!("host:{authority}\n"),
            signed_headers: "host",
            payload_hash: UNSIGNED_PAYLOAD,
            datetime: &datetime,
            scope: &scope,
        },
    );
    format!("{scheme}://{authority}{path}?{canonical_query}&X-Amz-Signature={}", hex::encode(signature))
}

/// Test helper: signs a request in place like an SDK does (header form). Sets `host` (from
/// the URI authority, if absent), `x-amz-date`, `x-amz-content-sha256` and `authorization`,
/// signing every header present except `authorization`, `user-agent` and `expect`.
/// Returns the hex signature (the seed of a signed aws-chunked body).
///
/// # Panics
/// If `payload_hash` or an existing header is not a valid header value.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn sign_request(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    access_key: &str,
    secret: &SecretKey,
    region: &str,
    now: OffsetDateTime,
    payload_hash: &str,
) -> String {
    use http::HeaderValue;
    let value = |s: &str| HeaderValue::from_str(s).expect("sign_request: header values must be visible ASCII");
    if !headers.contains_key(http::header::HOST)
        && let Some(authority) = uri.authority()
    {
        headers.insert(http::header::HOST, value(authority.as_str()));
    }
    let datetime = format_amz_date(now);
    headers.insert("x-amz-date", value(&datetime));
    headers.insert("x-amz-content-sha256", value(payload_hash));
    headers.remove(http::header::AUTHORIZATION);
    let mut names: Vec<String> = headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| !matches!(k.as_str(), "authorization" | "user-agent" | "expect"))
        .collect();
    names.sort();
    names.dedup();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let signed_headers = names.join(";");
    let date = &datetime[..8];
    let scope = format!("{date}/{region}/s3/aws4_request");
    let key = signing_key(secret, date, region);
    let signature = hex::encode(compute_signature(
        &key,
        &SignInput {
            method,
            canonical_uri: canonical_uri(uri.path()),
            canonical_query: canonical_query(uri.query().unwrap_or(""), false),
            canonical_headers: canonical_headers(headers, uri, &name_refs),
            signed_headers: &signed_headers,
            payload_hash,
            datetime: &datetime,
            scope: &scope,
        },
    ));
    headers.insert(
        http::header::AUTHORIZATION,
        value(&format!(
            "{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        )),
    );
    signature
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const T0: OffsetDateTime = datetime!(2013-05-24 00:00:00 UTC);

    fn lookup(ak: &str) -> Option<SecretKey> {
        (ak == AK).then(|| SecretKey::new(SK))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn auth(method: Method, uri: &str, h: &HeaderMap, now: OffsetDateTime) -> Result<AuthContext, S3Error> {
        authenticate(&method, &uri.parse().unwrap(), h, "us-east-1", now, &lookup)
    }

    fn authz(signed: &str, sig: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request,SignedHeaders={signed},Signature={sig}"
        )
    }

    #[test]
    fn secret_key_debug_is_hidden() {
        let k = SecretKey::new("hunter2");
        assert_eq!(format!("{k:?}"), "SecretKey(****)");
        assert_eq!(k.expose(), "hunter2");
    }

    // --- AWS's published examples (sig-v4-header-based-auth) ---------------------------

    #[test]
    fn aws_example_get_object() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
            (
                "authorization",
                &authz(
                    "host;range;x-amz-content-sha256;x-amz-date",
                    "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
                ),
            ),
        ]);
        let ctx = auth(Method::GET, "/test.txt", &h, T0).unwrap();
        assert_eq!(ctx.access_key, AK);
        assert!(matches!(ctx.payload, PayloadCheck::Sha256(h) if hex::encode(h) == EMPTY_SHA256));
    }

    #[test]
    fn aws_example_put_object() {
        let body_hash = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
        assert_eq!(hex::encode(sha256(b"Welcome to Amazon S3.")), body_hash);
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", body_hash),
            (
                "authorization",
                &authz(
                    "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                    "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
                ),
            ),
        ]);
        let ctx = auth(Method::PUT, "/test$file.text", &h, T0).unwrap();
        assert!(matches!(ctx.payload, PayloadCheck::Sha256(x) if hex::encode(x) == body_hash));
        // The same request with %24 in the path is the same canonical request.
        auth(Method::PUT, "/test%24file.text", &h, T0).unwrap();
        // Any change in a signed header breaks it.
        let mut bad = h.clone();
        bad.insert("x-amz-storage-class", "STANDARD".parse().unwrap());
        assert_eq!(auth(Method::PUT, "/test$file.text", &bad, T0).unwrap_err().code(), "SignatureDoesNotMatch");
        assert_eq!(auth(Method::POST, "/test$file.text", &h, T0).unwrap_err().code(), "SignatureDoesNotMatch");
    }

    #[test]
    fn aws_example_get_lifecycle_and_list_objects() {
        let base = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let signed = "host;x-amz-content-sha256;x-amz-date";
        let mut h = headers(&base);
        let a = authz(signed, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
        h.insert("authorization", a.parse().unwrap());
        auth(Method::GET, "/?lifecycle", &h, T0).unwrap();
        let mut h = headers(&base);
        let a = authz(signed, "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
        h.insert("authorization", a.parse().unwrap());
        auth(Method::GET, "/?max-keys=2&prefix=J", &h, T0).unwrap();
        // Query order on the wire does not matter; values do.
        auth(Method::GET, "/?prefix=J&max-keys=2", &h, T0).unwrap();
        assert_eq!(auth(Method::GET, "/?max-keys=3&prefix=J", &h, T0).unwrap_err().code(), "SignatureDoesNotMatch");
    }

    #[test]
    fn aws_example_presigned_get() {
        let url = "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let h = headers(&[("host", "examplebucket.s3.amazonaws.com")]);
        let ctx = auth(Method::GET, url, &h, T0 + Duration::hours(1)).unwrap();
        assert!(matches!(ctx.payload, PayloadCheck::Unsigned));
        // Our presigner produces exactly AWS's URL.
        let built = presign_url(
            &Method::GET,
            "https://examplebucket.s3.amazonaws.com/test.txt",
            AK,
            &SecretKey::new(SK),
            "us-east-1",
            T0,
            86400,
        );
        assert_eq!(built, format!("https://examplebucket.s3.amazonaws.com{url}"));
        // Expired one second after the window.
        let err = auth(Method::GET, url, &h, T0 + Duration::seconds(86401)).unwrap_err();
        assert_eq!(err.code(), "AccessDenied");
        assert_eq!(err.message(), "Request has expired");
    }

    /// AWS's chunked-upload examples: the seed signatures of both requests.
    #[test]
    fn aws_example_streaming_seed_signatures() {
        let h = headers(&[
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", STREAMING_SIGNED),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
            (
                "authorization",
                &authz(
                    "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class",
                    "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
                ),
            ),
        ]);
        let ctx = auth(Method::PUT, "/examplebucket/chunkObject.txt", &h, T0).unwrap();
        let PayloadCheck::Chunked(mode) = ctx.payload else { panic!("expected chunked") };
        assert_eq!(mode.decoded_length(), Some(66560));
        assert!(mode.is_signed() && !mode.has_trailer());

        let h = headers(&[
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", STREAMING_SIGNED_TRAILER),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("x-amz-trailer", "x-amz-checksum-crc32c"),
            (
                "authorization",
                &authz(
                    "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer",
                    "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
                ),
            ),
        ]);
        let ctx = auth(Method::PUT, "/examplebucket/chunkObject.txt", &h, T0).unwrap();
        let PayloadCheck::Chunked(mode) = ctx.payload else { panic!("expected chunked") };
        assert!(mode.is_signed() && mode.has_trailer());
        assert_eq!(mode.trailer_checksum(), Some(ChecksumAlgorithm::Crc32c));

        // Without x-amz-decoded-content-length: MissingContentLength.
        let h2 = signed(&Method::PUT, "http://s3.amazonaws.com/b/k", &[], STREAMING_SIGNED, T0);
        assert!(matches!(auth(Method::PUT, "/b/k", &h2, T0), Err(S3Error::MissingContentLength)));
    }

    // --- Round trips with our own signer -----------------------------------------------

    fn signed(method: &Method, uri: &str, extra: &[(&str, &str)], payload: &str, t: OffsetDateTime) -> HeaderMap {
        let mut h = headers(extra);
        sign_request(method, &uri.parse().unwrap(), &mut h, AK, &SecretKey::new(SK), "us-east-1", t, payload);
        h
    }

    #[test]
    fn odd_keys_round_trip() {
        let now = datetime!(2026-01-02 03:04:05 UTC);
        for uri in [
            "http://127.0.0.1:9000/bucket/a%20b",
            "http://127.0.0.1:9000/bucket/a+b",
            "http://127.0.0.1:9000/bucket/a%2Bb",
            "http://127.0.0.1:9000/bucket/%C3%BCn%C3%AFc%C3%B8d%C3%A9/%E6%97%A5%E6%9C%AC",
            "http://127.0.0.1:9000/bucket/a//b",
            "http://127.0.0.1:9000/bucket/dir/",
            "http://127.0.0.1:9000/bucket/./x/../y",
            "http://127.0.0.1:9000/bucket/100%25/%3F%23%26=;,:@$!*'()[]~",
            "http://127.0.0.1:9000/bucket?list-type=2&prefix=a%20b%2Bc&delimiter=%2F",
            "http://127.0.0.1:9000/bucket/k?uploads",
        ] {
            let h = signed(&Method::PUT, uri, &[("content-type", "text/plain")], UNSIGNED_PAYLOAD, now);
            let ctx = authenticate(&Method::PUT, &uri.parse().unwrap(), &h, "us-east-1", now, &lookup)
                .unwrap_or_else(|e| panic!("{uri}: {e:?}"));
            assert!(matches!(ctx.payload, PayloadCheck::Unsigned));
        }
    }

    #[test]
    fn canonical_uri_follows_s3_rules() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/b/a b+c"), "/b/a%20b%2Bc");
        assert_eq!(canonical_uri("/b/a%20b%2Bc"), "/b/a%20b%2Bc");
        assert_eq!(canonical_uri("/b//c/"), "/b//c/");
        assert_eq!(canonical_uri("/b/./../c"), "/b/./../c");
        assert_eq!(canonical_uri("/b/ü"), "/b/%C3%BC");
        assert_eq!(canonical_uri("/b/a%2Fb"), "/b/a%2Fb");
        assert_eq!(canonical_uri("/b/~_-."), "/b/~_-.");
        assert_eq!(canonical_query("b=2&a=1&a=0&c", false), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("p=a%20b&X-Amz-Signature=x", true), "p=a%20b");
    }

    #[test]
    fn chunked_round_trip_headers() {
        let now = datetime!(2026-01-02 03:04:05 UTC);
        let h = signed(
            &Method::PUT,
            "http://localhost:9000/b/k",
            &[
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", "5"),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
            ],
            STREAMING_UNSIGNED_TRAILER,
            now,
        );
        let uri: Uri = "/b/k".parse().unwrap();
        let ctx = authenticate(&Method::PUT, &uri, &h, "us-east-1", now, &lookup).unwrap();
        let PayloadCheck::Chunked(mode) = ctx.payload else { panic!("expected chunked") };
        assert!(!mode.is_signed() && mode.has_trailer());
        assert_eq!(mode.trailer_checksum(), Some(ChecksumAlgorithm::Crc32));
    }

    #[test]
    fn skew_and_dates() {
        let now = datetime!(2026-01-02 03:04:05 UTC);
        let uri = "http://localhost:9000/b/k";
        let h = signed(&Method::GET, uri, &[], EMPTY_SHA256, now);
        auth(Method::GET, uri, &h, now + Duration::minutes(14)).unwrap();
        auth(Method::GET, uri, &h, now - Duration::minutes(14)).unwrap();
        assert!(matches!(auth(Method::GET, uri, &h, now + Duration::minutes(16)), Err(S3Error::RequestTimeTooSkewed)));
        assert!(matches!(auth(Method::GET, uri, &h, now - Duration::minutes(16)), Err(S3Error::RequestTimeTooSkewed)));
        let mut no_date = h.clone();
        no_date.remove("x-amz-date");
        assert_eq!(auth(Method::GET, uri, &no_date, now).unwrap_err().code(), "AccessDenied");
    }

    #[test]
    fn header_errors() {
        let now = datetime!(2026-01-02 03:04:05 UTC);
        let uri = "http://localhost:9000/b/k";
        let h = signed(&Method::GET, uri, &[], EMPTY_SHA256, now);
        let a = h.get("authorization").unwrap().to_str().unwrap().to_owned();

        // No credentials at all.
        let err = auth(Method::GET, uri, &HeaderMap::new(), now).unwrap_err();
        assert_eq!((err.code(), err.message().as_str()), ("AccessDenied", "Access Denied"));

        let with = |value: &str| {
            let mut h2 = h.clone();
            h2.insert("authorization", value.parse().unwrap());
            auth(Method::GET, uri, &h2, now).unwrap_err()
        };
        assert_eq!(with(&a.replace(AK, "AKIDUNKNOWN")).code(), "InvalidAccessKeyId");
        let err = with(&a.replace("us-east-1", "eu-west-1"));
        assert_eq!(err.code(), "AuthorizationHeaderMalformed");
        assert_eq!(
            err.message(),
            "The authorization header is malformed; the region 'eu-west-1' is wrong; expecting 'us-east-1'"
        );
        assert_eq!(with("AWS4-HMAC-SHA256 garbage").code(), "AuthorizationHeaderMalformed");
        assert_eq!(with("AWS4-HMAC-SHA256 Credential=x/y").code(), "AuthorizationHeaderMalformed");
        assert_eq!(with(&a.replace("/s3/", "/ec2/")).code(), "AuthorizationHeaderMalformed");
        assert_eq!(with("AWS AKIAIOSFODNN7EXAMPLE:abc").code(), "InvalidRequest");
        let sig_pos = a.find("Signature=").unwrap() + "Signature=".len();
        let mut flipped = a.clone();
        let c = if &a[sig_pos..sig_pos + 1] == "0" { "1" } else { "0" };
        flipped.replace_range(sig_pos..sig_pos + 1, c);
        assert_eq!(with(&flipped).code(), "SignatureDoesNotMatch");
        assert_eq!(with(&format!("{}zz", &a[..a.len() - 2])).code(), "SignatureDoesNotMatch");

        // Missing or invalid x-amz-content-sha256.
        let mut h2 = h.clone();
        h2.remove("x-amz-content-sha256");
        assert_eq!(auth(Method::GET, uri, &h2, now).unwrap_err().code(), "InvalidRequest");
        h2.insert("x-amz-content-sha256", "nope".parse().unwrap());
        assert_eq!(auth(Method::GET, uri, &h2, now).unwrap_err().code(), "InvalidArgument");

        // Header and query auth together.
        let err = auth(Method::GET, "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256", &h, now).unwrap_err();
        assert_eq!(err.code(), "InvalidArgument");
    }

    #[test]
    fn presign_round_trip_expiry_and_tamper() {
        let now = datetime!(2026-01-02 03:04:05 UTC);
        let secret = SecretKey::new(SK);
        let url = presign_url(
            &Method::GET,
            "http://127.0.0.1:9000/bucket/a b+c/ü?versionId=3",
            AK,
            &secret,
            "us-east-1",
            now,
            600,
        );
        let path_query = &url["http://127.0.0.1:9000".len()..];
        let h = headers(&[("host", "127.0.0.1:9000")]);
        let ctx = auth(Method::GET, path_query, &h, now + Duration::seconds(599)).unwrap();
        assert_eq!(ctx.access_key, AK);
        assert!(matches!(ctx.payload, PayloadCheck::Unsigned));

        let err = auth(Method::GET, path_query, &h, now + Duration::seconds(601)).unwrap_err();
        assert_eq!((err.code(), err.message().as_str()), ("AccessDenied", "Request has expired"));
        let err = auth(Method::GET, path_query, &h, now - Duration::minutes(20)).unwrap_err();
        assert_eq!(err.code(), "AccessDenied");

        // Tampering: path, query, method, host.
        let tampered = path_query.replace("versionId=3", "versionId=4");
        assert_eq!(auth(Method::GET, &tampered, &h, now).unwrap_err().code(), "SignatureDoesNotMatch");
        let tampered = path_query.replace("/bucket/", "/bucket2/");
        assert_eq!(auth(Method::GET, &tampered, &h, now).unwrap_err().code(), "SignatureDoesNotMatch");
        assert_eq!(auth(Method::PUT, path_query, &h, now).unwrap_err().code(), "SignatureDoesNotMatch");
        let other_host = headers(&[("host", "127.0.0.1:9001")]);
        assert_eq!(auth(Method::GET, path_query, &other_host, now).unwrap_err().code(), "SignatureDoesNotMatch");
        // Extending the lifetime invalidates the signature.
        let longer = path_query.replace("X-Amz-Expires=600", "X-Amz-Expires=6000");
        assert_eq!(auth(Method::GET, &longer, &h, now).unwrap_err().code(), "SignatureDoesNotMatch");

        // X-Amz-Expires limits.
        for (bad, msg) in [
            ("X-Amz-Expires=604801", "X-Amz-Expires must be less than a week (in seconds) that is 604800"),
            ("X-Amz-Expires=0", "X-Amz-Expires must be at least 1 second"),
            ("X-Amz-Expires=-1", "X-Amz-Expires must be non-negative"),
            ("X-Amz-Expires=ten", "X-Amz-Expires should be a number"),
        ] {
            let q = path_query.replace("X-Amz-Expires=600", bad);
            let err = auth(Method::GET, &q, &h, now).unwrap_err();
            assert_eq!((err.code(), err.message().as_str()), ("AuthorizationQueryParametersError", msg));
        }
        // Missing parameter, wrong region, unknown key.
        let q = path_query.replace("X-Amz-SignedHeaders=host&", "");
        assert_eq!(auth(Method::GET, &q, &h, now).unwrap_err().code(), "AuthorizationQueryParametersError");
        let q = path_query.replace("us-east-1", "eu-west-1");
        assert_eq!(auth(Method::GET, &q, &h, now).unwrap_err().code(), "AuthorizationQueryParametersError");
        let q = path_query.replace(AK, "AKIDUNKNOWN");
        assert_eq!(auth(Method::GET, &q, &h, now).unwrap_err().code(), "InvalidAccessKeyId");
    }

    #[test]
    fn without_auth_payload_forms() {
        assert!(matches!(payload_check_without_auth(&HeaderMap::new()), Ok(PayloadCheck::Unsigned)));
        let h = headers(&[("x-amz-content-sha256", EMPTY_SHA256)]);
        assert!(matches!(payload_check_without_auth(&h), Ok(PayloadCheck::Sha256(_))));
        let h = headers(&[("x-amz-content-sha256", STREAMING_SIGNED_TRAILER), ("x-amz-decoded-content-length", "3")]);
        let Ok(PayloadCheck::Chunked(mode)) = payload_check_without_auth(&h) else { panic!() };
        assert!(!mode.is_signed() && mode.has_trailer());
        assert_eq!(mode.decoded_length(), Some(3));
        let h = headers(&[("x-amz-content-sha256", STREAMING_SIGNED)]);
        assert!(matches!(payload_check_without_auth(&h), Err(S3Error::MissingContentLength)));
        let h = headers(&[("content-encoding", "aws-chunked"), ("x-amz-decoded-content-length", "3")]);
        assert!(matches!(payload_check_without_auth(&h), Ok(PayloadCheck::Chunked(_))));
    }
}
