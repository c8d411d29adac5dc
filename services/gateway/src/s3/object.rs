//! Object operations: PutObject, CopyObject, GetObject / HeadObject (with ranges),
//! DeleteObject, DeleteObjects.

use std::collections::HashMap;

use aether_proto::blob::v1 as pb;
use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{AppState, Ctx, ReqBody, body_stream, empty_response, existing_bucket, header_str, http_date, now_ms};
use crate::auth::PayloadCheck;
use crate::auth::checksum::{ChecksumAlgorithm, content_md5, requested_checksums};
use crate::error::S3Error;
use crate::replicas::{BodyChecks, NewestRead, PutTarget};
use futures::StreamExt as _;

/// Content headers and `x-amz-meta-*` of a write, into an `ObjectMeta` skeleton.
pub fn meta_from_headers(headers: &HeaderMap, bucket: &str, key: &str) -> Result<pb::ObjectMeta, S3Error> {
    let get = |n: &str| header_str(headers, n).unwrap_or("").to_string();
    let content_encoding = header_str(headers, "content-encoding")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut user_metadata = HashMap::new();
    let mut meta_bytes = 0usize;
    for (name, value) in headers {
        if let Some(m) = name.as_str().strip_prefix("x-amz-meta-") {
            let value = value
                .to_str()
                .map_err(|_| S3Error::InvalidArgument(format!("Invalid value for header x-amz-meta-{m}")))?;
            meta_bytes += m.len() + value.len();
            user_metadata.insert(m.to_string(), value.to_string());
        }
    }
    if meta_bytes > 2048 {
        return Err(S3Error::MetadataTooLarge);
    }
    let content_type = header_str(headers, "content-type").filter(|s| !s.is_empty()).unwrap_or("binary/octet-stream");
    Ok(pb::ObjectMeta {
        bucket: bucket.to_string(),
        key: key.to_string(),
        content_type: content_type.to_string(),
        content_encoding,
        content_disposition: get("content-disposition"),
        content_language: get("content-language"),
        cache_control: get("cache-control"),
        expires: get("expires"),
        user_metadata,
        tags: super::tagging::tags_from_header(headers)?,
        last_modified_ms: now_ms(),
        ..Default::default()
    })
}

/// The declared payload length: x-amz-decoded-content-length for aws-chunked bodies,
/// else Content-Length (required).
pub fn declared_length(ctx: &Ctx, payload: &PayloadCheck, max: u64) -> Result<Option<u64>, S3Error> {
    let parse = |name: &str| -> Result<Option<u64>, S3Error> {
        match header_str(&ctx.headers, name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| S3Error::InvalidArgument(format!("Invalid {name} header"))),
        }
    };
    let len = match payload {
        PayloadCheck::Chunked(mode) => match mode.decoded_length() {
            Some(n) => Some(n),
            None => parse("x-amz-decoded-content-length")?,
        },
        _ => match parse("content-length")? {
            Some(n) => Some(n),
            None => return Err(S3Error::MissingContentLength),
        },
    };
    if let Some(n) = len.filter(|n| *n > max) {
        return Err(S3Error::EntityTooLarge { proposed: n, max });
    }
    Ok(len)
}

pub fn body_checks(ctx: &Ctx, payload: &PayloadCheck, max: u64) -> Result<BodyChecks, S3Error> {
    Ok(BodyChecks {
        declared_len: declared_length(ctx, payload, max)?,
        max_len: max,
        sha256: match payload {
            PayloadCheck::Sha256(h) => Some(*h),
            _ => None,
        },
        content_md5: content_md5(&ctx.headers)?,
        checksums: requested_checksums(&ctx.headers)?,
        record: None,
    })
}

pub fn quoted_etag(etag: &str) -> String {
    format!("\"{etag}\"")
}

pub async fn handle_put_object(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    body: ReqBody,
) -> Result<Response, S3Error> {
    let target = super::writable_bucket(state, bucket)?;
    let mut checks = body_checks(ctx, &body.payload, state.cfg.max_object_size)?;
    // A trailer's checksum is stored like a header's; without either, S3's default.
    checks.record = match &body.payload {
        PayloadCheck::Chunked(mode) if mode.trailer_checksum().is_some() => mode.trailer_checksum(),
        _ if checks.checksums.is_empty() => Some(ChecksumAlgorithm::Crc64Nvme),
        _ => None,
    };
    let mut meta = meta_from_headers(&ctx.headers, bucket, key)?;
    meta.bucket_rev = target.create_revision;
    for (alg, value) in &checks.checksums {
        meta.checksums.insert(alg.name().to_ascii_lowercase(), value.clone());
    }
    let mut echo: Vec<(&'static str, String)> =
        checks.checksums.iter().map(|(a, v)| (a.header_name(), v.clone())).collect();
    let replicas = state.store.replica_set(bucket, key)?;
    // A conditional write checks and writes under the key's lock; the version is taken
    // after the check, so it is newer than the one checked.
    let lock = match super::conditional::write_condition(&ctx.headers)? {
        Some(cond) => Some(super::conditional::lock_and_check(state, bucket, key, &cond).await?),
        None => None,
    };
    meta.version = Some(state.store.new_version());
    let stream = body_stream(body);
    let written = state.store.put_stream(&replicas, PutTarget::Object(Box::new(meta)), stream, checks).await;
    if let Some(l) = lock {
        l.release().await;
    }
    let outcome = written?;
    metrics::counter!("gateway_bytes_in_total").increment(outcome.size);
    echo.extend(outcome.recorded.iter().map(|(a, v)| (a.header_name(), v.clone())));
    echo.push(("x-amz-checksum-type", "FULL_OBJECT".into()));
    let mut resp =
        Response::builder().status(StatusCode::OK).header(http::header::ETAG, quoted_etag(&hex::encode(outcome.md5)));
    for (name, value) in echo {
        resp = resp.header(name, value);
    }
    resp.body(Body::empty()).map_err(|e| S3Error::InternalError(format!("response: {e}")))
}

/// The largest source CopyObject copies in one request (S3's limit; larger objects are
/// copied with UploadPartCopy).
pub const MAX_COPY_SIZE: u64 = 5 << 30;

/// `x-amz-copy-source`: `bucket/key` or `/bucket/key`, URL-encoded, optionally with
/// `?versionId=`. Only the "null" version exists without versioning.
pub fn parse_copy_source(value: &str) -> Result<(String, String), S3Error> {
    let (path, query) = value.split_once('?').unwrap_or((value, ""));
    let decoded = percent_encoding::percent_decode_str(path.trim_start_matches('/'))
        .decode_utf8()
        .map_err(|_| S3Error::InvalidArgument("Invalid copy source encoding".into()))?;
    let (bucket, key) = decoded.split_once('/').unwrap_or((&decoded, ""));
    if bucket.is_empty() || key.is_empty() {
        return Err(S3Error::InvalidArgument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey".into(),
        ));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("versionId", "null")) => {}
            Some(("versionId", _)) => return Err(S3Error::InvalidArgument("Invalid version id specified".into())),
            _ => {}
        }
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// `x-amz-copy-source-if-*` against the source, as S3 evaluates them: the same precedence
/// as GET's conditions, but every failure is 412.
fn check_copy_conditions(headers: &HeaderMap, meta: &pb::ObjectMeta) -> Result<(), S3Error> {
    let mut plain = HeaderMap::new();
    for name in ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since"] {
        if let Some(v) = headers.get(format!("x-amz-copy-source-{name}").as_str()) {
            plain.insert(http::HeaderName::from_static(name), v.clone());
        }
    }
    check_conditions(&plain, meta).map_err(|e| match e {
        S3Error::NotModified if plain.contains_key("if-none-match") => {
            S3Error::PreconditionFailed("x-amz-copy-source-If-None-Match")
        }
        S3Error::NotModified => S3Error::PreconditionFailed("x-amz-copy-source-If-Modified-Since"),
        S3Error::PreconditionFailed("If-Match") => S3Error::PreconditionFailed("x-amz-copy-source-If-Match"),
        S3Error::PreconditionFailed(_) => S3Error::PreconditionFailed("x-amz-copy-source-If-Unmodified-Since"),
        e => e,
    })
}

/// The `x-amz-copy-source` of a CopyObject / UploadPartCopy, parsed.
pub fn copy_source_of(ctx: &Ctx) -> Result<(String, String), S3Error> {
    let source = header_str(&ctx.headers, "x-amz-copy-source")
        .ok_or_else(|| S3Error::InvalidArgument("Invalid copy source".into()))?;
    parse_copy_source(source)
}

/// The newest version of a copy source, checked against the `x-amz-copy-source-if-*`
/// conditions (`stream` is an open body when `with_body` was asked).
pub async fn open_copy_source(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    with_body: bool,
) -> Result<NewestRead, S3Error> {
    existing_bucket(state, bucket)?;
    let read = super::newest_live(state, bucket, key, with_body).await?;
    check_copy_conditions(&ctx.headers, &read.meta)?;
    Ok(read)
}

/// The binary MD5 an ETag stands for, when it is a single-part object's (hex, no `-N`).
pub fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let mut md5 = [0u8; 16];
    hex::decode_to_slice(etag, &mut md5).ok().map(|()| md5)
}

/// A copy source's bytes (`range` inclusive), from the open stream when it is the whole
/// body, else from a holder; a failing source is `ServiceUnavailable` to the client.
pub async fn copy_body(
    state: &AppState,
    holders: &[crate::replicas::Replica],
    meta: &pb::ObjectMeta,
    stream: Option<tonic::Streaming<pb::GetResponse>>,
    range: Option<(u64, u64)>,
) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, S3Error>>, S3Error> {
    let body = state.store.body(stream, holders, meta, range).await?.boxed();
    Ok(body
        .map(|r| {
            r.map_err(|e| {
                tracing::warn!(error = %e, "copy source stream failed");
                S3Error::ServiceUnavailable
            })
        })
        .boxed())
}

/// CopyObject: the source's newest version streamed from one of its holders into a new
/// version of the destination, written like a PutObject (W of RF). Metadata is copied
/// (`x-amz-metadata-directive: COPY`, the default) or taken from this request (`REPLACE`).
/// The copy is checked against the source's MD5 ETag where it has one, so a replica that
/// serves bad bytes fails the copy instead of storing them.
pub async fn handle_copy_object(state: &AppState, ctx: &Ctx, bucket: &str, key: &str) -> Result<Response, S3Error> {
    let target = super::writable_bucket(state, bucket)?;
    let (src_bucket, src_key) = copy_source_of(ctx)?;
    let replace = match header_str(&ctx.headers, "x-amz-metadata-directive") {
        None => false,
        Some(d) if d.eq_ignore_ascii_case("COPY") => false,
        Some(d) if d.eq_ignore_ascii_case("REPLACE") => true,
        Some(_) => return Err(S3Error::InvalidArgument("Unknown metadata directive.".into())),
    };
    if src_bucket == bucket && src_key == key && !replace {
        return Err(S3Error::InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without changing the \
             object's metadata, storage class, website redirect location or encryption attributes."
                .into(),
        ));
    }
    // The destination's metadata is checked before anything is read.
    let mut meta = if replace { meta_from_headers(&ctx.headers, bucket, key)? } else { pb::ObjectMeta::default() };
    let NewestRead { meta: src, holders, stream } = open_copy_source(state, ctx, &src_bucket, &src_key, true).await?;
    if src.size > MAX_COPY_SIZE {
        return Err(S3Error::InvalidRequest(format!(
            "The specified copy source is larger than the maximum allowable size for a copy source: {MAX_COPY_SIZE}"
        )));
    }
    if !replace {
        meta = pb::ObjectMeta {
            bucket: bucket.to_string(),
            key: key.to_string(),
            content_type: src.content_type.clone(),
            content_encoding: src.content_encoding.clone(),
            content_disposition: src.content_disposition.clone(),
            content_language: src.content_language.clone(),
            cache_control: src.cache_control.clone(),
            expires: src.expires.clone(),
            user_metadata: src.user_metadata.clone(),
            last_modified_ms: now_ms(),
            ..Default::default()
        };
    }
    meta.tags = match header_str(&ctx.headers, "x-amz-tagging-directive") {
        None | Some("COPY") => src.tags.clone(),
        Some("REPLACE") => super::tagging::tags_from_header(&ctx.headers)?,
        Some(other) => return Err(S3Error::InvalidArgument(format!("Unknown tagging directive: {other}"))),
    };
    // Whole-object checksums describe the same bytes; a multipart source's composite ones
    // ("…-N") do not describe a single-part copy.
    meta.checksums =
        src.checksums.iter().filter(|(_, v)| !v.contains('-')).map(|(a, v)| (a.clone(), v.clone())).collect();
    meta.version = Some(state.store.new_version());
    meta.bucket_rev = target.create_revision;
    let last_modified_ms = meta.last_modified_ms;
    let checks = BodyChecks {
        declared_len: Some(src.size),
        max_len: MAX_COPY_SIZE,
        content_md5: etag_md5(&src.etag),
        ..Default::default()
    };
    let body = copy_body(state, &holders, &src, stream, None).await?;
    let replicas = state.store.replica_set(bucket, key)?;
    let outcome = state.store.put_stream(&replicas, PutTarget::Object(Box::new(meta)), body, checks).await?;
    metrics::counter!("gateway_bytes_copied_total").increment(outcome.size);
    let result = crate::xml::CopyResult {
        xmlns: crate::xml::S3_NS,
        last_modified: super::iso8601_ms(last_modified_ms),
        etag: quoted_etag(&hex::encode(outcome.md5)),
    };
    super::xml_response(crate::xml::to_xml("CopyObjectResult", &result)?)
}

/// A `Range` header resolved against the object size: `Ok(None)` = whole body (no
/// header, or one S3 ignores), `Ok(Some((start, end)))` inclusive, or `InvalidRange`.
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, S3Error> {
    let Some(h) = header else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let unsatisfiable = Err(S3Error::InvalidRange { size, range: h.to_string() });
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else { return Ok(None) };
        if n == 0 || size == 0 {
            return unsatisfiable;
        }
        return Ok(Some((size.saturating_sub(n), size - 1)));
    }
    let Ok(start) = a.parse::<u64>() else { return Ok(None) };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return Ok(None),
        }
    };
    if start >= size {
        return unsatisfiable;
    }
    Ok(Some((start, end.min(size - 1))))
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if value.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The response headers of GetObject / HeadObject for `meta`.
pub fn object_headers(meta: &pb::ObjectMeta) -> HeaderMap {
    let mut h = HeaderMap::new();
    insert(&mut h, "etag", &quoted_etag(&meta.etag));
    insert(&mut h, "last-modified", &http_date(meta.last_modified_ms));
    insert(
        &mut h,
        "content-type",
        if meta.content_type.is_empty() { "binary/octet-stream" } else { &meta.content_type },
    );
    insert(&mut h, "content-encoding", &meta.content_encoding);
    insert(&mut h, "content-disposition", &meta.content_disposition);
    insert(&mut h, "content-language", &meta.content_language);
    insert(&mut h, "cache-control", &meta.cache_control);
    insert(&mut h, "expires", &meta.expires);
    insert(&mut h, "accept-ranges", "bytes");
    for (k, v) in &meta.user_metadata {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(format!("x-amz-meta-{k}").as_bytes()), HeaderValue::from_str(v))
        {
            h.insert(name, value);
        }
    }
    h
}

pub async fn handle_get_object(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    head: bool,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let range_header = header_str(&ctx.headers, "range");
    let part_number = ctx.query.get("partNumber").map(crate::endpoint::parse_part_number).transpose()?;
    if part_number.is_some() && range_header.is_some() {
        return Err(S3Error::InvalidRequest("Cannot specify both Range header and partNumber query parameter".into()));
    }
    // Without a range the first replica is asked with Get, and serves the body if it
    // holds the newest version.
    let with_body = !head && range_header.is_none() && part_number.is_none();
    let NewestRead { meta, holders, stream } = super::newest_live(state, bucket, key, with_body).await?;
    if let Err(e) = check_conditions(&ctx.headers, &meta) {
        if !matches!(e, S3Error::NotModified) {
            return Err(e);
        }
        // 304 carries the validators and caching headers a 200 would (RFC 9110 15.4.5).
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let all = object_headers(&meta);
        for name in ["etag", "last-modified", "cache-control", "expires"] {
            if let Some(v) = all.get(name) {
                resp.headers_mut().insert(name, v.clone());
            }
        }
        return Ok(resp);
    }
    let range = match part_number {
        Some(n) => part_range(&meta, n)?,
        None => parse_range(range_header, meta.size)?,
    };
    let mut headers = object_headers(&meta);
    if !head {
        super::tagging::tagging_count_header(&meta, &mut headers);
    }
    if part_number.is_some() && !meta.part_sizes.is_empty() {
        insert(&mut headers, "x-amz-mp-parts-count", &meta.part_sizes.len().to_string());
    }
    // Stored checksums describe the whole object: only a whole-object answer has them,
    // and a part of a multipart object its part's (as S3 gives them).
    if header_str(&ctx.headers, "x-amz-checksum-mode") == Some("ENABLED") {
        match part_number {
            None if range.is_none() => checksum_headers(&meta, &mut headers),
            // An object uploaded in one piece is its own part 1.
            Some(_) if meta.part_sizes.is_empty() => checksum_headers(&meta, &mut headers),
            Some(n) => {
                let alg = ChecksumAlgorithm::from_name(&meta.checksum_algorithm);
                if let (Some(alg), Some(v)) = (alg, meta.part_checksums.get(n as usize - 1)) {
                    insert(&mut headers, alg.header_name(), v);
                }
            }
            None => {}
        }
    }
    apply_response_overrides(ctx, &mut headers)?;
    let (status, len) = match range {
        Some((s, e)) => {
            insert(&mut headers, "content-range", &format!("bytes {s}-{e}/{}", meta.size));
            (StatusCode::PARTIAL_CONTENT, e - s + 1)
        }
        None => (StatusCode::OK, meta.size),
    };
    insert(&mut headers, "content-length", &len.to_string());
    let body = if head || len == 0 {
        Body::empty()
    } else {
        metrics::counter!("gateway_bytes_out_total").increment(len);
        Body::from_stream(state.store.body(stream, &holders, &meta, range).await?)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// `x-amz-checksum-<alg>` for each stored checksum, and `x-amz-checksum-type`
/// (`COMPOSITE` for a multipart object's checksum of part checksums, `…-N`).
fn checksum_headers(meta: &pb::ObjectMeta, headers: &mut HeaderMap) {
    let mut composite = false;
    for (name, value) in &meta.checksums {
        if let Some(alg) = ChecksumAlgorithm::from_name(name) {
            insert(headers, alg.header_name(), value);
            composite |= value.contains('-');
        }
    }
    if !meta.checksums.is_empty() {
        insert(headers, "x-amz-checksum-type", if composite { "COMPOSITE" } else { "FULL_OBJECT" });
    }
}

/// The bytes of part `n` (inclusive) of a multipart object; an object uploaded in one
/// piece has one part, itself. An empty part has no range: the whole (empty) body.
fn part_range(meta: &pb::ObjectMeta, n: u32) -> Result<Option<(u64, u64)>, S3Error> {
    let sizes: &[u64] = if meta.part_sizes.is_empty() { std::slice::from_ref(&meta.size) } else { &meta.part_sizes };
    let i = n as usize - 1;
    let size = *sizes.get(i).ok_or(S3Error::InvalidPartNumber)?;
    let start: u64 = sizes[..i].iter().sum();
    Ok((size > 0).then(|| (start, start + size - 1)))
}

/// The `response-*` query parameters of a (signed) GetObject / HeadObject replace the
/// stored value of their header in this response.
fn apply_response_overrides(ctx: &Ctx, headers: &mut HeaderMap) -> Result<(), S3Error> {
    const OVERRIDES: [(&str, &str); 6] = [
        ("response-content-type", "content-type"),
        ("response-content-language", "content-language"),
        ("response-expires", "expires"),
        ("response-cache-control", "cache-control"),
        ("response-content-disposition", "content-disposition"),
        ("response-content-encoding", "content-encoding"),
    ];
    for (param, header) in OVERRIDES {
        if let Some(v) = ctx.query.get(param) {
            let value = HeaderValue::from_str(v)
                .map_err(|_| S3Error::InvalidArgument(format!("Invalid value for the {param} parameter")))?;
            headers.insert(http::HeaderName::from_static(header), value);
        }
    }
    Ok(())
}

/// GetObjectAttributes: the attributes named in `x-amz-object-attributes` (ETag, Checksum,
/// ObjectParts, StorageClass, ObjectSize), from the newest version's metadata. ObjectParts
/// is there for multipart objects only, paged by `x-amz-part-number-marker` and
/// `x-amz-max-parts`; the ETag is unquoted, as S3 gives it here.
pub async fn handle_get_object_attributes(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let mut wanted = Vec::new();
    for a in ctx.headers.get_all("x-amz-object-attributes") {
        for name in a.to_str().unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"].contains(&name) {
                return Err(S3Error::InvalidArgument(format!("Invalid attribute name specified: {name}")));
            }
            wanted.push(name.to_string());
        }
    }
    if wanted.is_empty() {
        return Err(S3Error::InvalidRequest(
            "The x-amz-object-attributes header specifying the attributes to be retrieved is either missing or empty"
                .into(),
        ));
    }
    let number = |name: &str, default: u64| -> Result<u64, S3Error> {
        match header_str(&ctx.headers, name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| S3Error::InvalidArgument(format!("Invalid {name} header"))),
        }
    };
    let max_parts = number("x-amz-max-parts", 1000)?.min(1000) as usize;
    let marker = u32::try_from(number("x-amz-part-number-marker", 0)?)
        .map_err(|_| S3Error::InvalidArgument("Invalid x-amz-part-number-marker header".into()))?;
    let meta = super::newest_live(state, bucket, key, false).await?.meta;
    let want = |n: &str| wanted.iter().any(|w| w == n);
    let checksum = (want("Checksum") && !meta.checksums.is_empty()).then(|| {
        let get = |alg: &str| meta.checksums.get(alg).cloned();
        let composite = meta.checksums.values().any(|v| v.contains('-'));
        crate::xml::ChecksumXml {
            crc32: get("crc32"),
            crc32c: get("crc32c"),
            crc64nvme: get("crc64nvme"),
            sha1: get("sha1"),
            sha256: get("sha256"),
            checksum_type: if composite { "COMPOSITE" } else { "FULL_OBJECT" },
        }
    });
    let object_parts = (want("ObjectParts") && !meta.part_sizes.is_empty()).then(|| {
        let after: Vec<(u32, u64)> =
            meta.part_sizes.iter().enumerate().map(|(i, s)| (i as u32 + 1, *s)).filter(|(n, _)| *n > marker).collect();
        let page = &after[..after.len().min(max_parts)];
        crate::xml::ObjectPartsXml {
            total_parts_count: meta.part_sizes.len(),
            part_number_marker: marker,
            next_part_number_marker: page.last().map_or(marker, |p| p.0),
            max_parts,
            is_truncated: after.len() > page.len(),
            parts: page
                .iter()
                .map(|(n, s)| crate::xml::ObjectPartXml {
                    checksum: crate::xml::ChecksumFields::new(
                        ChecksumAlgorithm::from_name(&meta.checksum_algorithm),
                        meta.part_checksums.get(*n as usize - 1).map_or("", String::as_str),
                    ),
                    part_number: *n,
                    size: *s,
                })
                .collect(),
        }
    });
    let doc = crate::xml::GetObjectAttributesResponse {
        xmlns: crate::xml::S3_NS,
        etag: want("ETag").then(|| meta.etag.clone()),
        checksum,
        object_parts,
        storage_class: want("StorageClass").then_some("STANDARD"),
        object_size: want("ObjectSize").then_some(meta.size),
    };
    let mut resp = super::xml_response(crate::xml::to_xml("GetObjectAttributesResponse", &doc)?)?;
    if let Ok(v) = HeaderValue::from_str(&http_date(meta.last_modified_ms)) {
        resp.headers_mut().insert(http::header::LAST_MODIFIED, v);
    }
    Ok(resp)
}

/// `If-Match` / `If-None-Match` / `If-Modified-Since` / `If-Unmodified-Since` against
/// the stored version (RFC 7232 precedence: the ETag conditions win over the dates).
pub fn check_conditions(headers: &HeaderMap, meta: &pb::ObjectMeta) -> Result<(), S3Error> {
    let etag_in = |list: &str| {
        list.split(',').map(|t| t.trim().trim_start_matches("W/").trim_matches('"')).any(|t| t == "*" || t == meta.etag)
    };
    let modified_s = meta.last_modified_ms.div_euclid(1000);
    let date = |name: &str| {
        header_str(headers, name)
            .and_then(|v| time::PrimitiveDateTime::parse(v, HTTP_DATE).ok().map(|t| t.assume_utc().unix_timestamp()))
    };
    match header_str(headers, "if-match") {
        Some(list) if !etag_in(list) => return Err(S3Error::PreconditionFailed("If-Match")),
        Some(_) => {}
        None => {
            if date("if-unmodified-since").is_some_and(|t| modified_s > t) {
                return Err(S3Error::PreconditionFailed("If-Unmodified-Since"));
            }
        }
    }
    match header_str(headers, "if-none-match") {
        Some(list) if etag_in(list) => return Err(S3Error::NotModified),
        Some(_) => {}
        None => {
            if date("if-modified-since").is_some_and(|t| modified_s <= t) {
                return Err(S3Error::NotModified);
            }
        }
    }
    Ok(())
}

const HTTP_DATE: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

pub async fn handle_delete_object(state: &AppState, bucket: &str, key: &str) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    delete_key(state, bucket, key).await?;
    empty_response(StatusCode::NO_CONTENT)
}

/// Keys one DeleteObjects request may name at most (S3's limit).
pub const MAX_DELETE_KEYS: usize = 1000;
/// Keys of one DeleteObjects request deleted at once.
const DELETE_CONCURRENCY: usize = 16;

/// DeleteObjects: every key deleted as DeleteObject would (a missing key counts as
/// deleted); per-key failures are reported in the result, not as the request's status.
/// The body must carry an integrity check (Content-MD5 or an `x-amz-checksum-*` header or
/// trailer), as S3 requires, and it is verified before anything is deleted.
pub async fn handle_delete_objects(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    body: ReqBody,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    // 1000 keys of up to 1024 bytes each, XML-escaped, fit in 8 MiB.
    let doc: crate::xml::Delete = super::read_checked_document(ctx, body, 8 << 20).await?;
    if doc.objects.is_empty() || doc.objects.len() > MAX_DELETE_KEYS || doc.objects.iter().any(|o| o.key.is_empty()) {
        return Err(S3Error::MalformedXML);
    }
    let results: Vec<_> = futures::stream::iter(doc.objects)
        .map(|o| async move {
            let r = match o.version_id.as_deref() {
                // Without versioning every object is the "null" version.
                None | Some("null") if o.key.len() > 1024 => Err(S3Error::KeyTooLongError),
                None | Some("null") => delete_key(state, bucket, &o.key).await,
                Some(_) => Err(S3Error::InvalidArgument("Invalid version id specified".into())),
            };
            (o, r)
        })
        .buffered(DELETE_CONCURRENCY)
        .collect()
        .await;
    let mut out = crate::xml::DeleteResult { xmlns: crate::xml::S3_NS, deleted: Vec::new(), errors: Vec::new() };
    for (o, r) in results {
        match r {
            Ok(()) if doc.quiet => {}
            Ok(()) => out.deleted.push(crate::xml::DeletedXml { key: o.key, version_id: o.version_id }),
            Err(e) => out.errors.push(crate::xml::DeleteErrorXml {
                key: o.key,
                version_id: o.version_id,
                code: e.code().to_string(),
                message: e.message(),
            }),
        }
    }
    super::xml_response(crate::xml::to_xml("DeleteResult", &out)?)
}

/// Delete one key on its replicas (a tombstone at a new version, W-of-RF acknowledged).
async fn delete_key(state: &AppState, bucket: &str, key: &str) -> Result<(), S3Error> {
    let replicas = state.store.replica_set(bucket, key)?;
    let req = pb::DeleteRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        version: Some(state.store.new_version()),
        last_modified_ms: now_ms(),
    };
    state
        .store
        .write_unary(&replicas, "delete", |mut c| {
            let req = req.clone();
            async move { c.delete(req).await.map(|r| r.into_inner()) }
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_forms() {
        let ok = |v: &str| parse_copy_source(v).unwrap();
        assert_eq!(ok("b/k"), ("b".into(), "k".into()));
        assert_eq!(ok("/b/dir/k"), ("b".into(), "dir/k".into()));
        assert_eq!(ok("b/a%2Fb%20c%2B%C3%BC"), ("b".into(), "a/b c+ü".into()));
        assert_eq!(ok("b/k?versionId=null"), ("b".into(), "k".into()));
        for bad in ["b", "/b/", "", "b/k?versionId=3HL4kqtJ", "b/%FF"] {
            assert!(matches!(parse_copy_source(bad), Err(S3Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-4"), 10).unwrap(), Some((0, 4)));
        assert_eq!(parse_range(Some("bytes=5-"), 10).unwrap(), Some((5, 9)));
        assert_eq!(parse_range(Some("bytes=5-100"), 10).unwrap(), Some((5, 9)));
        assert_eq!(parse_range(Some("bytes=-3"), 10).unwrap(), Some((7, 9)));
        assert_eq!(parse_range(Some("bytes=-30"), 10).unwrap(), Some((0, 9)));
        assert_eq!(parse_range(Some("bytes=9-9"), 10).unwrap(), Some((9, 9)));
        assert!(matches!(parse_range(Some("bytes=10-"), 10), Err(S3Error::InvalidRange { size: 10, .. })));
        assert!(matches!(parse_range(Some("bytes=10-20"), 10), Err(S3Error::InvalidRange { size: 10, .. })));
        assert!(matches!(parse_range(Some("bytes=-0"), 10), Err(S3Error::InvalidRange { .. })));
        assert!(matches!(parse_range(Some("bytes=0-"), 0), Err(S3Error::InvalidRange { size: 0, .. })));
        // Syntactically invalid or multi-range headers are ignored.
        assert_eq!(parse_range(Some("bytes=5-2"), 10).unwrap(), None);
        assert_eq!(parse_range(Some("items=0-1"), 10).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=a-b"), 10).unwrap(), None);
    }

    #[test]
    fn conditions() {
        let meta = pb::ObjectMeta { etag: "abc".into(), last_modified_ms: 1_255_369_830_123, ..Default::default() };
        let h = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        assert!(check_conditions(&h(&[]), &meta).is_ok());
        assert!(check_conditions(&h(&[("if-match", "\"abc\"")]), &meta).is_ok());
        assert!(matches!(
            check_conditions(&h(&[("if-match", "\"x\"")]), &meta),
            Err(S3Error::PreconditionFailed("If-Match"))
        ));
        assert!(matches!(check_conditions(&h(&[("if-none-match", "\"abc\"")]), &meta), Err(S3Error::NotModified)));
        assert!(check_conditions(&h(&[("if-none-match", "\"x\"")]), &meta).is_ok());
        let later = "Tue, 13 Oct 2009 00:00:00 GMT";
        let earlier = "Sun, 11 Oct 2009 00:00:00 GMT";
        assert!(matches!(check_conditions(&h(&[("if-modified-since", later)]), &meta), Err(S3Error::NotModified)));
        assert!(check_conditions(&h(&[("if-modified-since", earlier)]), &meta).is_ok());
        assert!(matches!(
            check_conditions(&h(&[("if-unmodified-since", earlier)]), &meta),
            Err(S3Error::PreconditionFailed("If-Unmodified-Since"))
        ));
        // If-Match wins over If-Unmodified-Since.
        assert!(check_conditions(&h(&[("if-match", "abc"), ("if-unmodified-since", earlier)]), &meta).is_ok());
    }

    #[test]
    fn content_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-encoding", "aws-chunked, gzip".parse().unwrap());
        h.insert("x-amz-meta-color", "blue".parse().unwrap());
        h.insert("cache-control", "no-cache".parse().unwrap());
        let m = meta_from_headers(&h, "b", "k").unwrap();
        assert_eq!(m.content_encoding, "gzip");
        assert_eq!(m.content_type, "binary/octet-stream");
        assert_eq!(m.user_metadata.get("color").map(String::as_str), Some("blue"));
        let out = object_headers(&pb::ObjectMeta { etag: "abc".into(), ..m });
        assert_eq!(out.get("etag").unwrap(), "\"abc\"");
        assert_eq!(out.get("x-amz-meta-color").unwrap(), "blue");
        assert_eq!(out.get("cache-control").unwrap(), "no-cache");
        assert_eq!(out.get("accept-ranges").unwrap(), "bytes");
        assert!(out.get("content-language").is_none());
    }
}
