//! The S3 operations: one `handle_*` function per operation, dispatched from an
//! [`Endpoint`]. Handlers return `Result<Response, S3Error>`; errors are rendered in one
//! place (`server::error_response`).

pub mod acl;
pub mod bucket;
pub mod conditional;
pub mod cors;
pub mod list;
pub mod mpu_checksum;
pub mod multipart;
pub mod object;
pub mod post_object;
pub mod tagging;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use http::HeaderMap;
use sha2::Digest as _;

use crate::auth::PayloadCheck;
use crate::catalog::CachedBucket;
use crate::config::GatewayConfig;
use crate::endpoint::{Endpoint, Query};
use crate::error::S3Error;
use crate::replicas::Store;

/// Shared state of one running gateway.
pub struct AppState {
    pub cfg: GatewayConfig,
    pub store: Store,
}

/// What a handler knows about the request besides its endpoint and body.
pub struct Ctx {
    pub request_id: String,
    pub access_key: String,
    pub headers: HeaderMap,
    pub query: Query,
}

/// The request body with the check its payload needs (owned: chunked decoding consumes it).
pub struct ReqBody {
    pub body: Body,
    pub payload: PayloadCheck,
}

/// Dispatch one parsed, authenticated request.
pub async fn dispatch(state: &AppState, ctx: &Ctx, endpoint: Endpoint, body: ReqBody) -> Result<Response, S3Error> {
    acl::check_canned_acl(&ctx.headers)?;
    match endpoint {
        Endpoint::GetBucketVersioning { bucket } => bucket::handle_get_bucket_versioning(state, &bucket),
        Endpoint::ListMultipartUploads { bucket } => {
            multipart::handle_list_multipart_uploads(state, ctx, &bucket).await
        }
        Endpoint::GetObjectTagging { bucket, key } => tagging::handle_get_object_tagging(state, &bucket, &key).await,
        Endpoint::PutObjectTagging { bucket, key } => {
            tagging::handle_put_object_tagging(state, ctx, &bucket, &key, body).await
        }
        Endpoint::DeleteObjectTagging { bucket, key } => {
            tagging::handle_delete_object_tagging(state, &bucket, &key).await
        }
        Endpoint::GetBucketCors { bucket } => cors::handle_get_bucket_cors(state, &bucket).await,
        Endpoint::PutBucketCors { bucket } => cors::handle_put_bucket_cors(state, ctx, &bucket, body).await,
        Endpoint::DeleteBucketCors { bucket } => cors::handle_delete_bucket_cors(state, &bucket).await,
        Endpoint::CorsPreflight { bucket } => cors::handle_preflight(state, &bucket, &ctx.headers),
        Endpoint::PostObject { bucket } => {
            post_object::handle_post_object(state, &bucket, &ctx.headers, body.body).await
        }
        Endpoint::GetBucketTagging { bucket } => bucket::handle_get_bucket_tagging(state, &bucket).await,
        Endpoint::PutBucketTagging { bucket } => bucket::handle_put_bucket_tagging(state, ctx, &bucket, body).await,
        Endpoint::DeleteBucketTagging { bucket } => bucket::handle_delete_bucket_tagging(state, &bucket).await,
        Endpoint::GetAcl { bucket, key } => acl::handle_get_acl(state, &bucket, key.as_deref()).await,
        Endpoint::PutAcl { bucket, key } => acl::handle_put_acl(state, ctx, &bucket, key.as_deref(), body).await,
        Endpoint::ListBuckets => bucket::handle_list_buckets(state, ctx).await,
        Endpoint::CreateBucket { bucket } => bucket::handle_create_bucket(state, ctx, &bucket, body).await,
        Endpoint::DeleteBucket { bucket } => bucket::handle_delete_bucket(state, ctx, &bucket).await,
        Endpoint::HeadBucket { bucket } => bucket::handle_head_bucket(state, &bucket).await,
        Endpoint::GetBucketLocation { bucket } => bucket::handle_get_bucket_location(state, &bucket).await,
        Endpoint::ListObjects { bucket, v2 } => list::handle_list_objects(state, ctx, &bucket, v2).await,
        Endpoint::PutObject { bucket, key } => object::handle_put_object(state, ctx, &bucket, &key, body).await,
        Endpoint::GetObject { bucket, key } => object::handle_get_object(state, ctx, &bucket, &key, false).await,
        Endpoint::HeadObject { bucket, key } => object::handle_get_object(state, ctx, &bucket, &key, true).await,
        Endpoint::DeleteObject { bucket, key } => object::handle_delete_object(state, &bucket, &key).await,
        Endpoint::CopyObject { bucket, key } => object::handle_copy_object(state, ctx, &bucket, &key).await,
        Endpoint::UploadPartCopy { bucket, key, upload_id, part_number } => {
            multipart::handle_upload_part_copy(state, ctx, &bucket, &key, &upload_id, part_number).await
        }
        Endpoint::GetObjectAttributes { bucket, key } => {
            object::handle_get_object_attributes(state, ctx, &bucket, &key).await
        }
        Endpoint::ListParts { bucket, key, upload_id } => {
            multipart::handle_list_parts(state, ctx, &bucket, &key, &upload_id).await
        }
        Endpoint::DeleteObjects { bucket } => object::handle_delete_objects(state, ctx, &bucket, body).await,
        Endpoint::CreateMultipartUpload { bucket, key } => {
            multipart::handle_create_multipart_upload(state, ctx, &bucket, &key).await
        }
        Endpoint::UploadPart { bucket, key, upload_id, part_number } => {
            multipart::handle_upload_part(state, ctx, &bucket, &key, &upload_id, part_number, body).await
        }
        Endpoint::CompleteMultipartUpload { bucket, key, upload_id } => {
            multipart::handle_complete_multipart_upload(state, ctx, &bucket, &key, &upload_id, body).await
        }
        Endpoint::AbortMultipartUpload { bucket, key, upload_id } => {
            multipart::handle_abort_multipart_upload(state, &bucket, &key, &upload_id).await
        }
        Endpoint::NotImplemented { operation, .. } => Err(S3Error::NotImplemented(operation.to_string())),
    }
}

/// The bucket from the cached catalog, or `NoSuchBucket`.
pub fn existing_bucket(state: &AppState, bucket: &str) -> Result<CachedBucket, S3Error> {
    state.store.catalog.snapshot().buckets.get(bucket).cloned().ok_or(S3Error::NoSuchBucket)
}

/// The secret of an access key: the configured pair, or one from the catalog.
pub fn secret_for(state: &AppState, access_key: &str) -> Option<crate::auth::SecretKey> {
    if access_key == state.cfg.access_key {
        return Some(crate::auth::SecretKey::new(state.cfg.secret_key.clone()));
    }
    state.store.catalog.snapshot().keys.get(access_key).map(|k| crate::auth::SecretKey::new(k.secret.clone()))
}

/// A bucket new objects may be written into: it exists, and no DeleteBucket is deciding
/// about it (`503`: retry; the delete ends in `NoSuchBucket` or the bucket stays).
/// blobd's fence is what makes this safe against a lagging cache.
pub fn writable_bucket(state: &AppState, bucket: &str) -> Result<CachedBucket, S3Error> {
    let b = existing_bucket(state, bucket)?;
    if b.entry.state == aether_common::catalog::BucketState::Deleting {
        return Err(S3Error::ServiceUnavailable);
    }
    Ok(b)
}

/// The request body as decoded payload bytes (aws-chunked framing removed and verified).
pub fn body_stream(body: ReqBody) -> BoxStream<'static, Result<Bytes, S3Error>> {
    let ReqBody { body, payload } = body;
    let raw = body.into_data_stream().map(|r| {
        r.map_err(|e| {
            tracing::debug!(error = %e, "request body ended early");
            S3Error::IncompleteBody
        })
    });
    match payload {
        PayloadCheck::Chunked(mode) => crate::auth::decode_chunked(raw, mode).boxed(),
        _ => raw.boxed(),
    }
}

/// Read a small body (XML documents) fully, at most `limit` bytes, checking the signed
/// payload hash when there is one.
pub async fn read_small_body(body: ReqBody, limit: usize) -> Result<Bytes, S3Error> {
    let want = match &body.payload {
        PayloadCheck::Sha256(h) => Some(*h),
        _ => None,
    };
    let mut stream = body_stream(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Err(S3Error::InvalidRequest("The request body is too large for this operation.".into()));
        }
        buf.extend_from_slice(&chunk);
    }
    if let Some(want) = want {
        let got: [u8; 32] = sha2::Sha256::digest(&buf).into();
        if got != want {
            return Err(S3Error::XAmzContentSHA256Mismatch);
        }
    }
    Ok(buf.freeze())
}

/// A request document (Tagging, CORSConfiguration, Delete, …) read with
/// `read_checked_body` and parsed (`MalformedXML` if it is not that document).
pub async fn read_checked_document<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    body: ReqBody,
    limit: usize,
) -> Result<T, S3Error> {
    crate::xml::parse(&read_checked_body(ctx, body, limit).await?)
}

/// Read a small body that S3 requires an integrity check for (DeleteObjects,
/// PutBucketTagging, …): Content-MD5 or an `x-amz-checksum-*` header or trailer must be
/// present (`InvalidRequest`), and the headers are verified against the bytes (`BadDigest`)
/// before the caller acts on them; trailers are verified while decoding.
pub async fn read_checked_body(ctx: &Ctx, body: ReqBody, limit: usize) -> Result<Bytes, S3Error> {
    use crate::auth::checksum::{Hasher, content_md5, requested_checksums};
    use md5::Digest as _;
    let md5 = content_md5(&ctx.headers)?;
    let checksums = requested_checksums(&ctx.headers)?;
    let trailer = header_str(&ctx.headers, "x-amz-trailer").is_some_and(|t| t.starts_with("x-amz-checksum-"));
    if md5.is_none() && checksums.is_empty() && !trailer {
        return Err(S3Error::InvalidRequest("Missing required header for this request: Content-MD5".into()));
    }
    let body = read_small_body(body, limit).await?;
    if let Some(want) = md5 {
        let got: [u8; 16] = md5::Md5::digest(&body).into();
        if got != want {
            return Err(S3Error::BadDigest);
        }
    }
    for (algorithm, want) in &checksums {
        let mut h = Hasher::new(*algorithm);
        h.update(&body);
        if h.finalize_base64() != *want {
            return Err(S3Error::BadChecksum(algorithm.name()));
        }
    }
    Ok(body)
}

/// An integer query parameter (`max-keys`, `max-parts`, `part-number-marker`, …): absent
/// or empty is `None`, anything else that does not parse is S3's `InvalidArgument`.
pub fn query_number<T: std::str::FromStr>(ctx: &Ctx, name: &str) -> Result<Option<T>, S3Error> {
    match ctx.query.get(name) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| S3Error::InvalidArgument(format!("Provided {name} not an integer or within integer range"))),
    }
}

/// The newest live version of a key (a quorum read; `with_body` keeps a holder's Get
/// stream open): `NoSuchKey` when there is none or it is a tombstone.
pub async fn newest_live(
    state: &AppState,
    bucket: &str,
    key: &str,
    with_body: bool,
) -> Result<crate::replicas::NewestRead, S3Error> {
    let replicas = state.store.replica_set(bucket, key)?;
    match state.store.read_newest(&replicas, bucket, key, with_body).await? {
        Some(read) if !read.meta.tombstone => Ok(read),
        _ => Err(S3Error::NoSuchKey),
    }
}

/// A header's value as text, if present and visible ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// RFC 3339 with milliseconds, as S3 XML shows times (`2009-10-12T17:50:30.000Z`).
pub fn iso8601_ms(unix_ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&f).unwrap_or_default()
}

/// RFC 7231 date (`Last-Modified`).
pub fn http_date(unix_ms: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&f).unwrap_or_default()
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// An XML response with status 200.
pub fn xml_response(xml: String) -> Result<Response, S3Error> {
    Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/xml")
        .body(Body::from(xml))
        .map_err(|e| S3Error::InternalError(format!("response: {e}")))
}

/// An empty response with `status`.
pub fn empty_response(status: http::StatusCode) -> Result<Response, S3Error> {
    Response::builder().status(status).body(Body::empty()).map_err(|e| S3Error::InternalError(format!("response: {e}")))
}

/// Every byte but the unreserved ones percent-encoded (a key inside a URL).
pub(crate) const URL_KEY_ENCODE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The object's absolute URL as S3 writes it into `<Location>`: the request's Host (and
/// the scheme a proxy in front names in X-Forwarded-Proto), virtual-hosted when the request
/// was, the key percent-encoded.
pub fn object_url(headers: &HeaderMap, root_domain: Option<&str>, bucket: &str, key: &str) -> String {
    let host = header_str(headers, "host").unwrap_or("localhost");
    let scheme = header_str(headers, "x-forwarded-proto").unwrap_or("http");
    let key = percent_encoding::utf8_percent_encode(key, URL_KEY_ENCODE);
    if crate::endpoint::virtual_host_bucket(headers, root_domain).as_deref() == Some(bucket) {
        format!("{scheme}://{host}/{key}")
    } else {
        format!("{scheme}://{host}/{bucket}/{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso8601_ms(1_255_369_830_123), "2009-10-12T17:50:30.123Z");
        assert_eq!(http_date(1_255_369_830_123), "Mon, 12 Oct 2009 17:50:30 GMT");
    }
}
