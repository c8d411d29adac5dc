//! Parse, then dispatch: every S3 request becomes an [`Endpoint`] (method + path + query +
//! Host; path-style and virtual-hosted-style) before authentication and before any handler
//! runs. Operations aether does not implement are recognised and named (501), never
//! answered with a silent 200.

use http::{HeaderMap, Method, Uri};
use percent_encoding::percent_decode_str;

use crate::error::S3Error;

/// Decoded query parameters in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let Some(raw) = raw else { return Self::default() };
        Self(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode_query(k), decode_query(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

fn decode_query(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

/// One S3 operation with the names it addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    ListBuckets,
    CreateBucket {
        bucket: String,
    },
    DeleteBucket {
        bucket: String,
    },
    HeadBucket {
        bucket: String,
    },
    GetBucketLocation {
        bucket: String,
    },
    /// `v2`: ListObjectsV2 (`list-type=2`), else ListObjects (v1).
    ListObjects {
        bucket: String,
        v2: bool,
    },
    PutObject {
        bucket: String,
        key: String,
    },
    GetObject {
        bucket: String,
        key: String,
    },
    HeadObject {
        bucket: String,
        key: String,
    },
    DeleteObject {
        bucket: String,
        key: String,
    },
    /// `PUT` with `x-amz-copy-source`.
    CopyObject {
        bucket: String,
        key: String,
    },
    /// `?tagging` on a bucket.
    GetObjectTagging {
        bucket: String,
        key: String,
    },
    PutObjectTagging {
        bucket: String,
        key: String,
    },
    DeleteObjectTagging {
        bucket: String,
        key: String,
    },
    GetBucketCors {
        bucket: String,
    },
    PutBucketCors {
        bucket: String,
    },
    DeleteBucketCors {
        bucket: String,
    },
    /// A CORS preflight (`OPTIONS`), on the bucket or one of its keys.
    CorsPreflight {
        bucket: String,
    },
    /// A browser upload (`POST` of a form with a signed policy).
    PostObject {
        bucket: String,
    },
    GetBucketTagging {
        bucket: String,
    },
    PutBucketTagging {
        bucket: String,
    },
    DeleteBucketTagging {
        bucket: String,
    },
    /// `GET /bucket?uploads`.
    ListMultipartUploads {
        bucket: String,
    },
    /// `GET ?versioning`: never enabled (versioning does not exist yet).
    GetBucketVersioning {
        bucket: String,
    },
    /// `GET ?acl` on a bucket (`key` None) or an object: the owner with FULL_CONTROL.
    GetAcl {
        bucket: String,
        key: Option<String>,
    },
    /// `PUT ?acl`: only the canned `private` ACL (what every bucket and object has).
    PutAcl {
        bucket: String,
        key: Option<String>,
    },
    /// `GET ?attributes`.
    GetObjectAttributes {
        bucket: String,
        key: String,
    },
    /// `GET ?uploadId`.
    ListParts {
        bucket: String,
        key: String,
        upload_id: String,
    },
    /// `PUT ?partNumber&uploadId` with `x-amz-copy-source`.
    UploadPartCopy {
        bucket: String,
        key: String,
        upload_id: String,
        part_number: u32,
    },
    /// `POST /bucket?delete`: up to 1000 keys in one request.
    DeleteObjects {
        bucket: String,
    },
    CreateMultipartUpload {
        bucket: String,
        key: String,
    },
    UploadPart {
        bucket: String,
        key: String,
        upload_id: String,
        part_number: u32,
    },
    CompleteMultipartUpload {
        bucket: String,
        key: String,
        upload_id: String,
    },
    AbortMultipartUpload {
        bucket: String,
        key: String,
        upload_id: String,
    },
    /// Recognised but not implemented: answered with 501 naming the operation.
    NotImplemented {
        bucket: Option<String>,
        key: Option<String>,
        operation: &'static str,
    },
}

impl Endpoint {
    /// The S3 operation name (span name, metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::ListBuckets => "ListBuckets",
            Endpoint::CreateBucket { .. } => "CreateBucket",
            Endpoint::DeleteBucket { .. } => "DeleteBucket",
            Endpoint::HeadBucket { .. } => "HeadBucket",
            Endpoint::GetBucketLocation { .. } => "GetBucketLocation",
            Endpoint::ListObjects { v2: true, .. } => "ListObjectsV2",
            Endpoint::ListObjects { v2: false, .. } => "ListObjects",
            Endpoint::PutObject { .. } => "PutObject",
            Endpoint::GetObject { .. } => "GetObject",
            Endpoint::HeadObject { .. } => "HeadObject",
            Endpoint::DeleteObject { .. } => "DeleteObject",
            Endpoint::DeleteObjects { .. } => "DeleteObjects",
            Endpoint::CopyObject { .. } => "CopyObject",
            Endpoint::UploadPartCopy { .. } => "UploadPartCopy",
            Endpoint::ListParts { .. } => "ListParts",
            Endpoint::GetObjectAttributes { .. } => "GetObjectAttributes",
            Endpoint::GetBucketVersioning { .. } => "GetBucketVersioning",
            Endpoint::ListMultipartUploads { .. } => "ListMultipartUploads",
            Endpoint::GetObjectTagging { .. } => "GetObjectTagging",
            Endpoint::PutObjectTagging { .. } => "PutObjectTagging",
            Endpoint::DeleteObjectTagging { .. } => "DeleteObjectTagging",
            Endpoint::GetBucketCors { .. } => "GetBucketCors",
            Endpoint::PutBucketCors { .. } => "PutBucketCors",
            Endpoint::DeleteBucketCors { .. } => "DeleteBucketCors",
            Endpoint::CorsPreflight { .. } => "PreflightRequest",
            Endpoint::PostObject { .. } => "PostObject",
            Endpoint::GetBucketTagging { .. } => "GetBucketTagging",
            Endpoint::PutBucketTagging { .. } => "PutBucketTagging",
            Endpoint::DeleteBucketTagging { .. } => "DeleteBucketTagging",
            Endpoint::GetAcl { key: None, .. } => "GetBucketAcl",
            Endpoint::GetAcl { key: Some(_), .. } => "GetObjectAcl",
            Endpoint::PutAcl { key: None, .. } => "PutBucketAcl",
            Endpoint::PutAcl { key: Some(_), .. } => "PutObjectAcl",
            Endpoint::CreateMultipartUpload { .. } => "CreateMultipartUpload",
            Endpoint::UploadPart { .. } => "UploadPart",
            Endpoint::CompleteMultipartUpload { .. } => "CompleteMultipartUpload",
            Endpoint::AbortMultipartUpload { .. } => "AbortMultipartUpload",
            Endpoint::NotImplemented { operation, .. } => operation,
        }
    }

    pub fn bucket(&self) -> Option<&str> {
        match self {
            Endpoint::ListBuckets => None,
            Endpoint::CreateBucket { bucket }
            | Endpoint::DeleteBucket { bucket }
            | Endpoint::HeadBucket { bucket }
            | Endpoint::GetBucketLocation { bucket }
            | Endpoint::ListObjects { bucket, .. }
            | Endpoint::PutObject { bucket, .. }
            | Endpoint::GetObject { bucket, .. }
            | Endpoint::HeadObject { bucket, .. }
            | Endpoint::DeleteObject { bucket, .. }
            | Endpoint::DeleteObjects { bucket }
            | Endpoint::CopyObject { bucket, .. }
            | Endpoint::UploadPartCopy { bucket, .. }
            | Endpoint::ListParts { bucket, .. }
            | Endpoint::GetObjectAttributes { bucket, .. }
            | Endpoint::GetBucketVersioning { bucket }
            | Endpoint::ListMultipartUploads { bucket }
            | Endpoint::GetObjectTagging { bucket, .. }
            | Endpoint::PutObjectTagging { bucket, .. }
            | Endpoint::DeleteObjectTagging { bucket, .. }
            | Endpoint::GetBucketCors { bucket }
            | Endpoint::PutBucketCors { bucket }
            | Endpoint::DeleteBucketCors { bucket }
            | Endpoint::CorsPreflight { bucket }
            | Endpoint::PostObject { bucket }
            | Endpoint::GetBucketTagging { bucket }
            | Endpoint::PutBucketTagging { bucket }
            | Endpoint::DeleteBucketTagging { bucket }
            | Endpoint::GetAcl { bucket, .. }
            | Endpoint::PutAcl { bucket, .. }
            | Endpoint::CreateMultipartUpload { bucket, .. }
            | Endpoint::UploadPart { bucket, .. }
            | Endpoint::CompleteMultipartUpload { bucket, .. }
            | Endpoint::AbortMultipartUpload { bucket, .. } => Some(bucket),
            Endpoint::NotImplemented { bucket, .. } => bucket.as_deref(),
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            Endpoint::PutObject { key, .. }
            | Endpoint::GetObject { key, .. }
            | Endpoint::HeadObject { key, .. }
            | Endpoint::DeleteObject { key, .. }
            | Endpoint::CopyObject { key, .. }
            | Endpoint::UploadPartCopy { key, .. }
            | Endpoint::ListParts { key, .. }
            | Endpoint::GetObjectAttributes { key, .. }
            | Endpoint::GetObjectTagging { key, .. }
            | Endpoint::PutObjectTagging { key, .. }
            | Endpoint::DeleteObjectTagging { key, .. }
            | Endpoint::CreateMultipartUpload { key, .. }
            | Endpoint::UploadPart { key, .. }
            | Endpoint::CompleteMultipartUpload { key, .. }
            | Endpoint::AbortMultipartUpload { key, .. } => Some(key),
            Endpoint::NotImplemented { key, .. } | Endpoint::GetAcl { key, .. } | Endpoint::PutAcl { key, .. } => {
                key.as_deref()
            }
            _ => None,
        }
    }

    /// Parse a request. `root_domain` enables virtual-hosted-style addressing.
    pub fn parse(method: &Method, uri: &Uri, headers: &HeaderMap, root_domain: Option<&str>) -> Result<Self, S3Error> {
        let query = Query::parse(uri.query());
        let path = uri.path();
        let (bucket, key) = match virtual_host_bucket(headers, root_domain) {
            Some(bucket) => (Some(bucket), decode_path(path.strip_prefix('/').unwrap_or(path))?),
            None => {
                let trimmed = path.strip_prefix('/').unwrap_or(path);
                match trimmed.split_once('/') {
                    Some((b, k)) => (Some(decode_path(b)?), decode_path(k)?),
                    None if trimmed.is_empty() => (None, String::new()),
                    None => (Some(decode_path(trimmed)?), String::new()),
                }
            }
        };
        let Some(bucket) = bucket.filter(|b| !b.is_empty()) else {
            return if *method == Method::GET { Ok(Endpoint::ListBuckets) } else { Err(S3Error::MethodNotAllowed) };
        };
        if key.is_empty() {
            return bucket_endpoint(method, &query, bucket);
        }
        if key.len() > 1024 {
            return Err(S3Error::KeyTooLongError);
        }
        object_endpoint(method, &query, headers, bucket, key)
    }
}

fn decode_path(s: &str) -> Result<String, S3Error> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| S3Error::InvalidArgument("Object key and bucket name must be valid UTF-8.".into()))
}

pub(crate) fn virtual_host_bucket(headers: &HeaderMap, root_domain: Option<&str>) -> Option<String> {
    let root = root_domain?.trim_matches('.').to_ascii_lowercase();
    if root.is_empty() {
        return None;
    }
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    // Strip a port (IPv6 literals never carry a bucket, so a simple rsplit is enough).
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let bucket = host.strip_suffix(&root)?.strip_suffix('.')?;
    (!bucket.is_empty()).then(|| bucket.to_string())
}

/// Bucket subresources S3 has and aether does not implement, with the operation named
/// after the method: (query name, GET name, PUT name, DELETE name).
const BUCKET_SUBRESOURCES: &[(&str, &str, &str, &str)] = &[
    ("acl", "GetBucketAcl", "PutBucketAcl", "DeleteBucketAcl"),
    ("policy", "GetBucketPolicy", "PutBucketPolicy", "DeleteBucketPolicy"),
    ("policyStatus", "GetBucketPolicyStatus", "PutBucketPolicyStatus", "DeleteBucketPolicyStatus"),
    ("lifecycle", "GetBucketLifecycleConfiguration", "PutBucketLifecycleConfiguration", "DeleteBucketLifecycle"),
    ("tagging", "GetBucketTagging", "PutBucketTagging", "DeleteBucketTagging"),
    ("versioning", "GetBucketVersioning", "PutBucketVersioning", "DeleteBucketVersioning"),
    ("website", "GetBucketWebsite", "PutBucketWebsite", "DeleteBucketWebsite"),
    ("encryption", "GetBucketEncryption", "PutBucketEncryption", "DeleteBucketEncryption"),
    ("logging", "GetBucketLogging", "PutBucketLogging", "DeleteBucketLogging"),
    (
        "notification",
        "GetBucketNotificationConfiguration",
        "PutBucketNotificationConfiguration",
        "DeleteBucketNotification",
    ),
    ("replication", "GetBucketReplication", "PutBucketReplication", "DeleteBucketReplication"),
    ("ownershipControls", "GetBucketOwnershipControls", "PutBucketOwnershipControls", "DeleteBucketOwnershipControls"),
    ("publicAccessBlock", "GetPublicAccessBlock", "PutPublicAccessBlock", "DeletePublicAccessBlock"),
    ("object-lock", "GetObjectLockConfiguration", "PutObjectLockConfiguration", "DeleteObjectLockConfiguration"),
    (
        "accelerate",
        "GetBucketAccelerateConfiguration",
        "PutBucketAccelerateConfiguration",
        "DeleteBucketAccelerateConfiguration",
    ),
    ("requestPayment", "GetBucketRequestPayment", "PutBucketRequestPayment", "DeleteBucketRequestPayment"),
    (
        "analytics",
        "GetBucketAnalyticsConfiguration",
        "PutBucketAnalyticsConfiguration",
        "DeleteBucketAnalyticsConfiguration",
    ),
    ("metrics", "GetBucketMetricsConfiguration", "PutBucketMetricsConfiguration", "DeleteBucketMetricsConfiguration"),
    (
        "inventory",
        "GetBucketInventoryConfiguration",
        "PutBucketInventoryConfiguration",
        "DeleteBucketInventoryConfiguration",
    ),
    (
        "intelligent-tiering",
        "GetBucketIntelligentTieringConfiguration",
        "PutBucketIntelligentTieringConfiguration",
        "DeleteBucketIntelligentTieringConfiguration",
    ),
    ("versions", "ListObjectVersions", "PutBucketVersions", "DeleteBucketVersions"),
    ("uploads", "ListMultipartUploads", "PutBucketUploads", "DeleteBucketUploads"),
];

fn bucket_endpoint(method: &Method, query: &Query, bucket: String) -> Result<Endpoint, S3Error> {
    let ni = |operation: &'static str, bucket: String| {
        Ok(Endpoint::NotImplemented { bucket: Some(bucket), key: None, operation })
    };
    match *method {
        Method::OPTIONS => return Ok(Endpoint::CorsPreflight { bucket }),
        Method::GET if query.has("cors") => return Ok(Endpoint::GetBucketCors { bucket }),
        Method::PUT if query.has("cors") => return Ok(Endpoint::PutBucketCors { bucket }),
        Method::DELETE if query.has("cors") => return Ok(Endpoint::DeleteBucketCors { bucket }),
        Method::GET if query.has("versioning") => return Ok(Endpoint::GetBucketVersioning { bucket }),
        Method::GET if query.has("uploads") => return Ok(Endpoint::ListMultipartUploads { bucket }),
        Method::GET if query.has("tagging") => return Ok(Endpoint::GetBucketTagging { bucket }),
        Method::PUT if query.has("tagging") => return Ok(Endpoint::PutBucketTagging { bucket }),
        Method::DELETE if query.has("tagging") => return Ok(Endpoint::DeleteBucketTagging { bucket }),
        Method::GET | Method::HEAD if query.has("acl") => return Ok(Endpoint::GetAcl { bucket, key: None }),
        Method::PUT if query.has("acl") => return Ok(Endpoint::PutAcl { bucket, key: None }),
        _ => {}
    }
    for (name, get, put, delete) in BUCKET_SUBRESOURCES {
        if query.has(name) {
            return match *method {
                Method::GET | Method::HEAD => ni(get, bucket),
                Method::PUT => ni(put, bucket),
                Method::DELETE => ni(delete, bucket),
                _ => Err(S3Error::MethodNotAllowed),
            };
        }
    }
    match *method {
        Method::GET if query.has("location") => Ok(Endpoint::GetBucketLocation { bucket }),
        Method::GET => Ok(Endpoint::ListObjects { v2: query.get("list-type") == Some("2"), bucket }),
        Method::HEAD => Ok(Endpoint::HeadBucket { bucket }),
        Method::PUT => Ok(Endpoint::CreateBucket { bucket }),
        Method::DELETE => Ok(Endpoint::DeleteBucket { bucket }),
        Method::POST if query.has("delete") => Ok(Endpoint::DeleteObjects { bucket }),
        Method::POST => Ok(Endpoint::PostObject { bucket }),
        _ => Err(S3Error::MethodNotAllowed),
    }
}

fn object_endpoint(
    method: &Method,
    query: &Query,
    headers: &HeaderMap,
    bucket: String,
    key: String,
) -> Result<Endpoint, S3Error> {
    let ni = |operation: &'static str| {
        Ok(Endpoint::NotImplemented { bucket: Some(bucket.clone()), key: Some(key.clone()), operation })
    };
    if *method == Method::OPTIONS {
        return Ok(Endpoint::CorsPreflight { bucket });
    }
    let copy = headers.contains_key("x-amz-copy-source");
    const SUB: &[(&str, &str, &str, &str)] = &[
        ("acl", "GetObjectAcl", "PutObjectAcl", "DeleteObjectAcl"),
        ("retention", "GetObjectRetention", "PutObjectRetention", "DeleteObjectRetention"),
        ("legal-hold", "GetObjectLegalHold", "PutObjectLegalHold", "DeleteObjectLegalHold"),
        ("attributes", "GetObjectAttributes", "PutObjectAttributes", "DeleteObjectAttributes"),
        ("torrent", "GetObjectTorrent", "PutObjectTorrent", "DeleteObjectTorrent"),
    ];
    if query.has("attributes") && *method == Method::GET {
        return Ok(Endpoint::GetObjectAttributes { bucket, key });
    }
    if query.has("tagging") {
        match *method {
            Method::GET => return Ok(Endpoint::GetObjectTagging { bucket, key }),
            Method::PUT => return Ok(Endpoint::PutObjectTagging { bucket, key }),
            Method::DELETE => return Ok(Endpoint::DeleteObjectTagging { bucket, key }),
            _ => return Err(S3Error::MethodNotAllowed),
        }
    }
    if query.has("acl") {
        match *method {
            Method::GET | Method::HEAD => return Ok(Endpoint::GetAcl { bucket, key: Some(key) }),
            Method::PUT => return Ok(Endpoint::PutAcl { bucket, key: Some(key) }),
            _ => {}
        }
    }
    for (name, get, put, delete) in SUB {
        if query.has(name) {
            return match *method {
                Method::GET | Method::HEAD => ni(get),
                Method::PUT => ni(put),
                Method::DELETE => ni(delete),
                _ => Err(S3Error::MethodNotAllowed),
            };
        }
    }
    let upload_id = query.get("uploadId").map(str::to_string);
    match *method {
        Method::GET if let Some(upload_id) = upload_id => Ok(Endpoint::ListParts { bucket, key, upload_id }),
        Method::GET => Ok(Endpoint::GetObject { bucket, key }),
        Method::HEAD => Ok(Endpoint::HeadObject { bucket, key }),
        Method::PUT => match (query.get("partNumber"), upload_id) {
            (Some(n), Some(upload_id)) if copy => {
                let part_number = parse_part_number(n)?;
                Ok(Endpoint::UploadPartCopy { bucket, key, upload_id, part_number })
            }
            (Some(n), Some(upload_id)) => {
                let part_number = parse_part_number(n)?;
                Ok(Endpoint::UploadPart { bucket, key, upload_id, part_number })
            }
            (None, Some(_)) => Err(S3Error::InvalidRequest("partNumber is required with uploadId".into())),
            _ if copy => Ok(Endpoint::CopyObject { bucket, key }),
            _ => Ok(Endpoint::PutObject { bucket, key }),
        },
        Method::POST if query.has("uploads") => Ok(Endpoint::CreateMultipartUpload { bucket, key }),
        Method::POST => match upload_id {
            Some(upload_id) => Ok(Endpoint::CompleteMultipartUpload { bucket, key, upload_id }),
            None if query.has("restore") => ni("RestoreObject"),
            None if query.has("select") => ni("SelectObjectContent"),
            None => Err(S3Error::MethodNotAllowed),
        },
        Method::DELETE => match upload_id {
            Some(upload_id) => Ok(Endpoint::AbortMultipartUpload { bucket, key, upload_id }),
            None => Ok(Endpoint::DeleteObject { bucket, key }),
        },
        _ => Err(S3Error::MethodNotAllowed),
    }
}

/// `partNumber` must be an integer in 1..=10000.
pub fn parse_part_number(s: &str) -> Result<u32, S3Error> {
    match s.parse::<u32>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(S3Error::InvalidArgument("Part number must be an integer between 1 and 10000, inclusive".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, uri: &str, host: &str, root: Option<&str>) -> Result<Endpoint, S3Error> {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, host.parse().unwrap());
        Endpoint::parse(&method, &uri, &h, root)
    }

    fn ok(method: Method, uri: &str) -> Endpoint {
        parse(method, uri, "127.0.0.1:9000", None).unwrap()
    }

    #[test]
    fn path_style() {
        assert_eq!(ok(Method::GET, "/"), Endpoint::ListBuckets);
        assert_eq!(ok(Method::PUT, "/b1"), Endpoint::CreateBucket { bucket: "b1".into() });
        assert_eq!(ok(Method::PUT, "/b1/"), Endpoint::CreateBucket { bucket: "b1".into() });
        assert_eq!(ok(Method::HEAD, "/b1"), Endpoint::HeadBucket { bucket: "b1".into() });
        assert_eq!(ok(Method::DELETE, "/b1"), Endpoint::DeleteBucket { bucket: "b1".into() });
        assert_eq!(
            ok(Method::GET, "/b1?list-type=2&prefix=a"),
            Endpoint::ListObjects { bucket: "b1".into(), v2: true }
        );
        assert_eq!(ok(Method::GET, "/b1"), Endpoint::ListObjects { bucket: "b1".into(), v2: false });
        assert_eq!(ok(Method::GET, "/b1?location"), Endpoint::GetBucketLocation { bucket: "b1".into() });
        assert_eq!(
            ok(Method::PUT, "/b1/a/b/c.txt"),
            Endpoint::PutObject { bucket: "b1".into(), key: "a/b/c.txt".into() }
        );
        assert_eq!(ok(Method::GET, "/b1/k"), Endpoint::GetObject { bucket: "b1".into(), key: "k".into() });
        assert_eq!(ok(Method::HEAD, "/b1/k"), Endpoint::HeadObject { bucket: "b1".into(), key: "k".into() });
        assert_eq!(ok(Method::DELETE, "/b1/k"), Endpoint::DeleteObject { bucket: "b1".into(), key: "k".into() });
        assert!(matches!(parse(Method::POST, "/", "h", None), Err(S3Error::MethodNotAllowed)));
    }

    #[test]
    fn odd_keys() {
        assert_eq!(ok(Method::GET, "/b/a%20b%2Bc"), Endpoint::GetObject { bucket: "b".into(), key: "a b+c".into() });
        assert_eq!(
            ok(Method::GET, "/b/../etc/passwd"),
            Endpoint::GetObject { bucket: "b".into(), key: "../etc/passwd".into() }
        );
        assert_eq!(ok(Method::GET, "/b/dir//x/"), Endpoint::GetObject { bucket: "b".into(), key: "dir//x/".into() });
        assert_eq!(ok(Method::GET, "/b/%E2%9C%93"), Endpoint::GetObject { bucket: "b".into(), key: "✓".into() });
        assert_eq!(ok(Method::GET, "/b/a%3Fb?x=1"), Endpoint::GetObject { bucket: "b".into(), key: "a?b".into() });
        assert!(matches!(parse(Method::GET, "/b/%FF", "h", None), Err(S3Error::InvalidArgument(_))));
        let long = format!("/b/{}", "k".repeat(1025));
        assert!(matches!(parse(Method::PUT, &long, "h", None), Err(S3Error::KeyTooLongError)));
        let max = format!("/b/{}", "k".repeat(1024));
        assert!(parse(Method::PUT, &max, "h", None).is_ok());
    }

    #[test]
    fn virtual_host() {
        let e = parse(Method::GET, "/photos/cat.jpg", "my-bucket.s3.example.com:9000", Some("s3.example.com")).unwrap();
        assert_eq!(e, Endpoint::GetObject { bucket: "my-bucket".into(), key: "photos/cat.jpg".into() });
        let e = parse(Method::GET, "/?list-type=2", "my-bucket.s3.example.com", Some("s3.example.com")).unwrap();
        assert_eq!(e, Endpoint::ListObjects { bucket: "my-bucket".into(), v2: true });
        // The root domain itself and other hosts fall back to path-style.
        let e = parse(Method::GET, "/b/k", "s3.example.com", Some("s3.example.com")).unwrap();
        assert_eq!(e, Endpoint::GetObject { bucket: "b".into(), key: "k".into() });
        let e = parse(Method::GET, "/b/k", "localhost:9000", Some("s3.example.com")).unwrap();
        assert_eq!(e, Endpoint::GetObject { bucket: "b".into(), key: "k".into() });
        let e = parse(Method::GET, "/", "s3.example.com", Some("s3.example.com")).unwrap();
        assert_eq!(e, Endpoint::ListBuckets);
    }

    #[test]
    fn query_operations() {
        assert_eq!(
            ok(Method::POST, "/b/k?uploads"),
            Endpoint::CreateMultipartUpload { bucket: "b".into(), key: "k".into() }
        );
        assert_eq!(
            ok(Method::PUT, "/b/k?partNumber=3&uploadId=abc"),
            Endpoint::UploadPart { bucket: "b".into(), key: "k".into(), upload_id: "abc".into(), part_number: 3 }
        );
        assert_eq!(
            ok(Method::POST, "/b/k?uploadId=abc"),
            Endpoint::CompleteMultipartUpload { bucket: "b".into(), key: "k".into(), upload_id: "abc".into() }
        );
        assert_eq!(
            ok(Method::DELETE, "/b/k?uploadId=abc"),
            Endpoint::AbortMultipartUpload { bucket: "b".into(), key: "k".into(), upload_id: "abc".into() }
        );
        assert!(matches!(
            parse(Method::PUT, "/b/k?partNumber=0&uploadId=a", "h", None),
            Err(S3Error::InvalidArgument(_))
        ));
        assert!(matches!(
            parse(Method::PUT, "/b/k?partNumber=10001&uploadId=a", "h", None),
            Err(S3Error::InvalidArgument(_))
        ));
        assert_eq!(ok(Method::GET, "/b?versioning").name(), "GetBucketVersioning");
        assert_eq!(ok(Method::GET, "/b?uploads").name(), "ListMultipartUploads");
        assert_eq!(ok(Method::POST, "/b?delete").name(), "DeleteObjects");
        assert_eq!(ok(Method::GET, "/b/k?tagging").name(), "GetObjectTagging");
        assert_eq!(ok(Method::GET, "/b/k?uploadId=x").name(), "ListParts");
        let uri: Uri = "/b/k".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-amz-copy-source", "/a/b".parse().unwrap());
        assert_eq!(Endpoint::parse(&Method::PUT, &uri, &h, None).unwrap().name(), "CopyObject");
        assert!(matches!(parse(Method::PATCH, "/b/k", "h", None), Err(S3Error::MethodNotAllowed)));
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("prefix=a%2Fb&delimiter=%2F&empty&x=a+b"));
        assert_eq!(q.get("prefix"), Some("a/b"));
        assert_eq!(q.get("delimiter"), Some("/"));
        assert_eq!(q.get("empty"), Some(""));
        assert_eq!(q.get("x"), Some("a b"));
        assert!(q.has("empty"));
        assert!(!q.has("nope"));
    }
}
