//! Multipart uploads: create, upload part (streamed like PutObject), upload part copy
//! (streamed from the source object), complete (blobd links the parts, nothing is copied
//! again), abort.

use std::collections::HashMap;

use aether_proto::blob::v1 as pb;
use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use md5::Digest as _;

use super::list::enc;
use super::object::{
    body_checks, copy_body, copy_source_of, etag_md5, meta_from_headers, open_copy_source, quoted_etag,
};
use super::{
    AppState, Ctx, ReqBody, body_stream, empty_response, existing_bucket, mpu_checksum, now_ms, read_small_body,
    xml_response,
};
use crate::error::S3Error;
use crate::replicas::{BodyChecks, NewestRead, PutTarget, Replica, newer};
use crate::xml;

/// Every part but the last must be at least this large.
/// The largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 << 30;

pub async fn handle_create_multipart_upload(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
) -> Result<Response, S3Error> {
    let target = super::writable_bucket(state, bucket)?;
    let mut meta = meta_from_headers(&ctx.headers, bucket, key)?;
    meta.bucket_rev = target.create_revision;
    let declared = mpu_checksum::declared_from_headers(&ctx.headers)?;
    if let Some(d) = declared {
        meta.checksum_algorithm = d.alg.name().to_ascii_lowercase();
        meta.checksum_type = d.type_name().to_string();
    }
    let upload_id = mpu_checksum::new_upload_id(declared);
    let replicas = state.store.replica_set(bucket, key)?;
    let req = pb::CreateUploadRequest { upload_id: upload_id.clone(), meta: Some(meta) };
    state
        .store
        .write_unary(&replicas, "create_upload", |mut c| {
            let req = req.clone();
            async move { c.create_upload(req).await.map(|r| r.into_inner()) }
        })
        .await?;
    let doc = xml::InitiateMultipartUploadResult {
        xmlns: xml::S3_NS,
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id,
    };
    let mut resp = xml_response(xml::to_xml("InitiateMultipartUploadResult", &doc)?)?;
    if let Some(d) = declared {
        let h = resp.headers_mut();
        h.insert("x-amz-checksum-algorithm", http::HeaderValue::from_static(d.alg.name()));
        h.insert("x-amz-checksum-type", http::HeaderValue::from_static(d.type_name()));
    }
    Ok(resp)
}

pub async fn handle_upload_part(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    upload_id: &str,
    part_number: u32,
    body: ReqBody,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let mut checks = body_checks(ctx, &body.payload, MAX_PART_SIZE)?;
    let mut echo: Vec<(&'static str, String)> =
        checks.checksums.iter().map(|(a, v)| (a.header_name(), v.clone())).collect();
    if let Some(d) = mpu_checksum::declared_of(upload_id) {
        let trailer = match &body.payload {
            crate::auth::PayloadCheck::Chunked(mode) => mode.trailer_checksum(),
            _ => None,
        };
        checks.record = Some(mpu_checksum::part_record(d, checks.checksums.iter().map(|(a, _)| *a), trailer)?);
        echo.clear();
    }
    let replicas = state.store.replica_set(bucket, key)?;
    let header = pb::PartHeader {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
        part_number,
        last_modified_ms: 0,
    };
    let outcome = match state.store.put_stream(&replicas, PutTarget::Part(header), body_stream(body), checks).await {
        Err(S3Error::NoSuchUpload) => return Err(follow_upload(state, &replicas, bucket, key, upload_id).await),
        r => r?,
    };
    metrics::counter!("gateway_bytes_in_total").increment(outcome.size);
    echo.extend(outcome.recorded.iter().map(|(a, v)| (a.header_name(), v.clone())));
    let mut resp =
        Response::builder().status(StatusCode::OK).header(http::header::ETAG, quoted_etag(&hex::encode(outcome.md5)));
    for (name, value) in echo {
        resp = resp.header(name, value);
    }
    resp.body(Body::empty()).map_err(|e| S3Error::InternalError(format!("response: {e}")))
}

/// `x-amz-copy-source-range: bytes=first-last` against the source size (inclusive; both
/// bounds required, as S3 requires).
pub fn parse_copy_range(value: &str, size: u64) -> Result<(u64, u64), S3Error> {
    let invalid =
        || S3Error::InvalidArgument(format!("Range specified is not valid for source object of size: {size}"));
    let spec = value.trim().strip_prefix("bytes=").ok_or_else(invalid)?;
    let (a, b) = spec.split_once('-').ok_or_else(invalid)?;
    let (first, last): (u64, u64) = (a.parse().map_err(|_| invalid())?, b.parse().map_err(|_| invalid())?);
    if first > last || last >= size {
        return Err(invalid());
    }
    Ok((first, last))
}

/// UploadPartCopy: a part streamed from (a range of) an existing object, written like
/// UploadPart; the whole-object form is checked against the source's MD5 ETag.
pub async fn handle_upload_part_copy(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    upload_id: &str,
    part_number: u32,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let (src_bucket, src_key) = copy_source_of(ctx)?;
    let range_header = super::header_str(&ctx.headers, "x-amz-copy-source-range");
    let NewestRead { meta: src, holders, stream } =
        open_copy_source(state, ctx, &src_bucket, &src_key, range_header.is_none()).await?;
    let range = range_header.map(|r| parse_copy_range(r, src.size)).transpose()?;
    let len = range.map_or(src.size, |(a, b)| b - a + 1);
    if len > MAX_PART_SIZE {
        return Err(S3Error::InvalidRequest(format!(
            "The specified copy range is larger than the maximum part size: {MAX_PART_SIZE}"
        )));
    }
    let checks = BodyChecks {
        declared_len: Some(len),
        max_len: MAX_PART_SIZE,
        content_md5: range.is_none().then(|| etag_md5(&src.etag)).flatten(),
        record: mpu_checksum::declared_of(upload_id).map(|d| d.alg),
        ..Default::default()
    };
    let body = copy_body(state, &holders, &src, stream, range).await?;
    let header = pb::PartHeader {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
        part_number,
        last_modified_ms: 0,
    };
    let replicas = state.store.replica_set(bucket, key)?;
    let outcome = match state.store.put_stream(&replicas, PutTarget::Part(header), body, checks).await {
        Err(S3Error::NoSuchUpload) => return Err(follow_upload(state, &replicas, bucket, key, upload_id).await),
        r => r?,
    };
    metrics::counter!("gateway_bytes_copied_total").increment(outcome.size);
    let doc = xml::CopyResult {
        xmlns: xml::S3_NS,
        last_modified: super::iso8601_ms(now_ms()),
        etag: quoted_etag(&hex::encode(outcome.md5)),
    };
    xml_response(xml::to_xml("CopyPartResult", &doc)?)
}

/// GetUpload on every live node of `nodes`: the nodes that hold the upload (with what
/// they hold of it), and the others' answers.
async fn get_upload_on(
    state: &AppState,
    nodes: &[Replica],
    get: &pb::GetUploadRequest,
) -> (Vec<(Replica, pb::GetUploadResponse)>, Vec<tonic::Status>) {
    let timeout = state.store.timeout;
    let calls = nodes.iter().filter(|n| n.alive).map(|n| {
        let client = state.store.client(&n.id, &n.addr);
        let req = get.clone();
        async move {
            let answer = match client {
                Ok(mut c) => match tokio::time::timeout(timeout, c.get_upload(req)).await {
                    Ok(r) => r.map(|r| r.into_inner()),
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!("node {} timed out", n.id))),
                },
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            (n.clone(), answer)
        }
    });
    let (mut held, mut errs) = (Vec::new(), Vec::new());
    for (node, answer) in futures::future::join_all(calls).await {
        match answer {
            Ok(u) => held.push((node, u)),
            Err(s) => errs.push(s),
        }
    }
    (held, errs)
}

/// The nodes that hold an upload: the key's replicas that do and, when not `enough` of
/// them do (the key got new owners while the upload was in progress, and anti-entropy has
/// not moved it yet), every other live data node that does. None: `NoSuchUpload`, or
/// `ServiceUnavailable` when the replicas did not answer.
async fn upload_holders(
    state: &AppState,
    replicas: &[Replica],
    bucket: &str,
    key: &str,
    upload_id: &str,
    enough: impl Fn(&[(Replica, pb::GetUploadResponse)]) -> bool,
) -> Result<Vec<(Replica, pb::GetUploadResponse)>, S3Error> {
    let get = pb::GetUploadRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
        completed: false,
    };
    let (mut held, errs) = get_upload_on(state, replicas, &get).await;
    if !enough(&held) {
        let others: Vec<Replica> = state
            .store
            .data_nodes(&state.store.catalog.snapshot())
            .into_iter()
            .filter(|n| !replicas.iter().any(|r| r.id == n.id))
            .collect();
        held.extend(get_upload_on(state, &others, &get).await.0);
    }
    if held.is_empty() {
        if errs.iter().any(|e| e.code() == tonic::Code::NotFound) {
            return Err(S3Error::NoSuchUpload);
        }
        for e in &errs {
            tracing::warn!(code = ?e.code(), message = e.message(), "get upload failed");
        }
        return Err(S3Error::ServiceUnavailable);
    }
    Ok(held)
}

/// A write quorum of the key's replica set.
fn need(state: &AppState, replicas: &[Replica]) -> usize {
    state.store.write_quorum(replicas.len())
}

/// A part write that too few replicas took because they do not know the upload: if the
/// upload lives on other nodes (its key moved in a layout change), create it on the key's
/// replicas from a holder's copy and answer 503 so the client retries (SDKs do) against
/// replicas that now know it; the parts already uploaded follow through anti-entropy.
/// Otherwise the upload does not exist: `NoSuchUpload`.
async fn follow_upload(state: &AppState, replicas: &[Replica], bucket: &str, key: &str, upload_id: &str) -> S3Error {
    let held = match upload_holders(state, replicas, bucket, key, upload_id, |h| h.len() >= need(state, replicas)).await
    {
        Ok(h) => h,
        Err(e) => return e,
    };
    let Some(meta) = held.iter().find_map(|(_, u)| u.meta.clone()) else { return S3Error::ServiceUnavailable };
    let lacking: Vec<Replica> =
        replicas.iter().filter(|r| r.alive && !held.iter().any(|(h, _)| h.id == r.id)).cloned().collect();
    let req = pb::CreateUploadRequest { upload_id: upload_id.to_string(), meta: Some(meta) };
    let (created, refused) = state
        .store
        .unary_quorum(&lacking, lacking.len(), |mut c| {
            let req = req.clone();
            async move { c.create_upload(req).await.map(|r| r.into_inner()) }
        })
        .await;
    if !lacking.is_empty() && created.is_empty() && refused.iter().all(|e| e.code() == tonic::Code::NotFound) {
        // Refused everywhere: the upload ended meanwhile (completed or aborted).
        return S3Error::NoSuchUpload;
    }
    metrics::counter!("gateway_upload_follows_total").increment(1);
    tracing::info!(
        upload_id,
        created = created.len(),
        "an upload's key has new replicas: created it there; the client retries"
    );
    S3Error::ServiceUnavailable
}

/// ListParts: the parts of an upload, merged over its replicas (the most recently recorded
/// copy of each part number wins), paged by `part-number-marker` and `max-parts`.
pub async fn handle_list_parts(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let max_parts = super::query_number::<usize>(ctx, "max-parts")?.unwrap_or(1000).min(1000);
    let marker = super::query_number::<u32>(ctx, "part-number-marker")?.unwrap_or(0);
    let replicas = state.store.replica_set(bucket, key)?;
    let uploads =
        upload_holders(state, &replicas, bucket, key, upload_id, |h| h.len() >= need(state, &replicas)).await?;
    let mut parts: std::collections::BTreeMap<u32, pb::UploadPart> = std::collections::BTreeMap::new();
    for p in uploads.iter().flat_map(|(_, u)| &u.parts) {
        if parts.get(&p.part_number).is_none_or(|q| p.last_modified_ms > q.last_modified_ms) {
            parts.insert(p.part_number, p.clone());
        }
    }
    let after: Vec<&pb::UploadPart> = parts.range(marker.saturating_add(1)..).map(|(_, p)| p).collect();
    let page = &after[..after.len().min(max_parts)];
    let truncated = after.len() > page.len();
    let owner = || xml::Owner::of(&ctx.access_key);
    let declared = mpu_checksum::declared_of(upload_id);
    let doc = xml::ListPartsResult {
        xmlns: xml::S3_NS,
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
        part_number_marker: marker,
        next_part_number_marker: page.last().map_or(marker, |p| p.part_number),
        max_parts,
        is_truncated: truncated,
        parts: page
            .iter()
            .map(|p| xml::PartXml {
                part_number: p.part_number,
                last_modified: super::iso8601_ms(p.last_modified_ms),
                etag: quoted_etag(&p.etag),
                size: p.size,
                checksum: xml::ChecksumFields::new(declared.map(|d| d.alg), &p.checksum),
            })
            .collect(),
        checksum_algorithm: declared.map(|d| d.alg.name()),
        checksum_type: declared.map(|d| d.type_name()),
        initiator: owner(),
        owner: owner(),
        storage_class: "STANDARD",
    };
    xml_response(xml::to_xml("ListPartsResult", &doc)?)
}

/// ListMultipartUploads: the uploads in progress in a bucket, asked of every live storage
/// node (an upload lives on its key's replicas), merged and de-duplicated, in (key, upload
/// id) order, paged by key-marker / upload-id-marker / max-uploads. Within one key S3 orders
/// by initiation time; here by upload id. With a delimiter, keys that have it after the
/// prefix roll up into CommonPrefixes (a page may end on one: it is the next key-marker,
/// and a key-marker that is a common prefix skips its keys). `encoding-type=url` encodes
/// keys, prefixes and markers.
pub async fn handle_list_multipart_uploads(state: &AppState, ctx: &Ctx, bucket: &str) -> Result<Response, S3Error> {
    let b = existing_bucket(state, bucket)?;
    let url = match ctx.query.get("encoding-type") {
        None | Some("") => false,
        Some("url") => true,
        Some(_) => return Err(S3Error::InvalidArgument("Invalid Encoding Method specified in Request".into())),
    };
    let delimiter = ctx.query.get("delimiter").unwrap_or("").to_string();
    let prefix = ctx.query.get("prefix").unwrap_or("").to_string();
    let key_marker = ctx.query.get("key-marker").unwrap_or("").to_string();
    // S3 ignores upload-id-marker without key-marker.
    let upload_id_marker =
        if key_marker.is_empty() { String::new() } else { ctx.query.get("upload-id-marker").unwrap_or("").to_string() };
    let max_uploads = super::query_number::<usize>(ctx, "max-uploads")?.unwrap_or(1000).min(1000);
    // The common prefix a key rolls up into, if any.
    let rolled = |key: &str| -> Option<String> {
        if delimiter.is_empty() {
            return None;
        }
        let rest = key.strip_prefix(prefix.as_str())?;
        rest.find(delimiter.as_str()).map(|i| format!("{prefix}{}", &rest[..i + delimiter.len()]))
    };
    // A key-marker that is, or lies under, a common prefix: that prefix was answered
    // already, so its keys are skipped (as S3 does).
    let skip_under = rolled(&key_marker);
    let snap = state.store.catalog.snapshot();
    let nodes: Vec<_> = state.store.data_nodes(&snap).into_iter().filter(|n| n.alive).collect();

    enum Item {
        Upload(String, String, i64),
        Prefix(String),
    }
    let mut items: Vec<Item> = Vec::new();
    let (mut cursor_key, mut cursor_id) = (key_marker.clone(), upload_id_marker.clone());
    // Pages of raw uploads until the page (plus one, to know it is truncated) is full or
    // every node is exhausted; bounded.
    'pages: for _ in 0..MAX_UPLOAD_PAGES {
        let limit = (max_uploads + 1).max(100);
        let req = pb::ListUploadsRequest {
            bucket: bucket.to_string(),
            prefix: prefix.clone(),
            key_marker: cursor_key.clone(),
            upload_id_marker: cursor_id.clone(),
            limit: limit as u32,
        };
        let (answers, errs) = state
            .store
            .unary_quorum(&nodes, nodes.len(), |mut c| {
                let req = req.clone();
                async move { c.list_uploads(req).await.map(|r| r.into_inner()) }
            })
            .await;
        if answers.is_empty() && !nodes.is_empty() {
            for e in &errs {
                tracing::warn!(code = ?e.code(), message = e.message(), "list uploads failed");
            }
            return Err(S3Error::ServiceUnavailable);
        }
        // Each node answered its first `limit` after the cursor, so the merged first
        // `limit` are the cluster's.
        let mut merged: std::collections::BTreeMap<(String, String), i64> = std::collections::BTreeMap::new();
        for u in answers.into_iter().flat_map(|a| a.uploads) {
            let t = merged.entry((u.key, u.upload_id)).or_insert(u.initiated_ms);
            *t = (*t).min(u.initiated_ms);
        }
        let exhausted = merged.len() < limit;
        for ((key, upload_id), initiated) in merged.into_iter().take(limit) {
            (cursor_key, cursor_id) = (key.clone(), upload_id.clone());
            if skip_under.as_ref().is_some_and(|cp| key.starts_with(cp.as_str())) {
                continue;
            }
            match rolled(&key) {
                Some(cp) => {
                    if !matches!(items.last(), Some(Item::Prefix(p)) if *p == cp) {
                        items.push(Item::Prefix(cp));
                    }
                }
                None => items.push(Item::Upload(key, upload_id, initiated)),
            }
            if items.len() > max_uploads {
                break 'pages;
            }
        }
        if exhausted {
            break;
        }
    }
    let truncated = items.len() > max_uploads;
    items.truncate(max_uploads);
    let (next_key_marker, next_upload_id_marker) = match items.last() {
        Some(Item::Upload(k, id, _)) if truncated => (Some(enc(k, url)), Some(id.clone())),
        Some(Item::Prefix(p)) if truncated => (Some(enc(p, url)), None),
        _ => (None, None),
    };
    let owner = || xml::Owner::of(&b.entry.owner);
    let mut uploads = Vec::new();
    let mut common_prefixes = Vec::new();
    for item in items {
        match item {
            Item::Upload(key, upload_id, initiated) => uploads.push(xml::UploadXml {
                key: enc(&key, url),
                upload_id,
                initiator: owner(),
                owner: owner(),
                storage_class: "STANDARD",
                initiated: super::iso8601_ms(initiated),
            }),
            Item::Prefix(p) => common_prefixes.push(xml::CommonPrefixXml { prefix: enc(&p, url) }),
        }
    }
    let doc = xml::ListMultipartUploadsResult {
        xmlns: xml::S3_NS,
        bucket: bucket.to_string(),
        key_marker: enc(&key_marker, url),
        upload_id_marker,
        next_key_marker,
        next_upload_id_marker,
        prefix: enc(&prefix, url),
        delimiter: (!delimiter.is_empty()).then(|| enc(&delimiter, url)),
        max_uploads,
        is_truncated: truncated,
        uploads,
        common_prefixes,
        encoding_type: url.then_some("url"),
    };
    xml_response(xml::to_xml("ListMultipartUploadsResult", &doc)?)
}

/// Raw pages ListMultipartUploads reads at most for one answer (many uploads rolled up
/// under few common prefixes cost pages).
const MAX_UPLOAD_PAGES: usize = 100;

/// The object's checksum for an upload that declared `d`: the listed parts' checksums the
/// client gave must be the stored ones (`InvalidPart`), and a whole-object checksum header
/// on the request must match a FULL_OBJECT result (`BadDigest`).
fn complete_checksum(
    ctx: &Ctx,
    d: mpu_checksum::Declared,
    listed: &[xml::CompletedPartXml],
    stored: &HashMap<u32, pb::UploadPart>,
) -> Result<String, S3Error> {
    let mut parts = Vec::with_capacity(listed.len());
    for p in listed {
        let part = stored.get(&p.part_number).ok_or(S3Error::InvalidPart)?;
        if part.checksum.is_empty() || p.checksum(d.alg).is_some_and(|given| given != part.checksum) {
            return Err(S3Error::InvalidPart);
        }
        parts.push((part.checksum.as_str(), part.size));
    }
    let value = mpu_checksum::object_checksum(d, &parts)?;
    if let Some(given) = super::header_str(&ctx.headers, d.alg.header_name())
        && d.full_object
        && given != value
    {
        return Err(S3Error::BadChecksum(d.alg.name()));
    }
    Ok(value)
}

/// An ETag as clients send it back: quotes optional.
fn bare_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// Check the requested parts against the stored ones and compute the multipart ETag
/// (`hex(md5(concat of binary part md5s))-N`). Every part but the last must hold at least
/// `min_part_size` bytes.
pub fn check_parts(
    requested: &[xml::CompletedPartXml],
    stored: &HashMap<u32, pb::UploadPart>,
    min_part_size: u64,
) -> Result<String, S3Error> {
    if requested.is_empty() {
        return Err(S3Error::MalformedXML);
    }
    if requested.windows(2).any(|w| w[0].part_number >= w[1].part_number) {
        return Err(S3Error::InvalidPartOrder);
    }
    for (i, part) in requested.iter().enumerate() {
        let Some(stored) = stored.get(&part.part_number) else { return Err(S3Error::InvalidPart) };
        if bare_etag(&stored.etag) != bare_etag(&part.etag) {
            return Err(S3Error::InvalidPart);
        }
        if i + 1 < requested.len() && stored.size < min_part_size {
            return Err(S3Error::EntityTooSmall { proposed: stored.size, min: min_part_size });
        }
    }
    listed_etag(requested).ok_or(S3Error::InvalidPart)
}

/// The multipart ETag the listed parts make (`hex(md5(concat of binary part md5s))-N`);
/// `None` if a listed ETag is not an MD5.
fn listed_etag(listed: &[xml::CompletedPartXml]) -> Option<String> {
    let mut md5 = md5::Md5::new();
    for part in listed {
        let raw = hex::decode(bare_etag(&part.etag)).ok().filter(|r| r.len() == 16)?;
        md5.update(&raw);
    }
    Some(format!("{}-{}", hex::encode(md5.finalize()), listed.len()))
}

pub async fn handle_complete_multipart_upload(
    state: &AppState,
    ctx: &super::Ctx,
    bucket: &str,
    key: &str,
    upload_id: &str,
    body: ReqBody,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let body = read_small_body(body, 4 << 20).await?;
    let doc: xml::CompleteMultipartUpload = xml::parse(&body)?;
    let replicas = state.store.replica_set(bucket, key)?;
    let wanted: HashMap<u32, &str> = doc.parts.iter().map(|p| (p.part_number, bare_etag(&p.etag))).collect();
    let holds_all = |u: &pb::GetUploadResponse| {
        wanted.iter().all(|(num, etag)| u.parts.iter().any(|p| p.part_number == *num && bare_etag(&p.etag) == *etag))
    };
    let need = need(state, &replicas);
    // (Nodes outside the replica set are asked only to tell a part that is missing from
    // one that is still moving.)
    let uploads = match upload_holders(state, &replicas, bucket, key, upload_id, |h| {
        h.iter().filter(|(_, u)| holds_all(u)).count() >= need
    })
    .await
    {
        Err(S3Error::NoSuchUpload) => {
            return completed_before(state, ctx, &replicas, bucket, key, upload_id, &doc.parts).await;
        }
        r => r?,
    };
    // A part counts if any holder of the upload holds it.
    let mut stored: HashMap<u32, pb::UploadPart> = HashMap::new();
    for (_, upload) in &uploads {
        for p in &upload.parts {
            // Prefer the copy whose ETag matches the request.
            let matches = wanted.get(&p.part_number).is_some_and(|w| *w == bare_etag(&p.etag));
            if matches || !stored.contains_key(&p.part_number) {
                stored.insert(p.part_number, p.clone());
            }
        }
    }
    let etag = check_parts(&doc.parts, &stored, state.cfg.min_part_size)?;
    // Only the key's replicas complete it, and only one holding every listed part can: with
    // fewer than a write quorum of those (a replica missed a part and another is down, or
    // the key moved and anti-entropy is still handing the parts over), completing on some
    // would end the upload there and leave a retry without its parts, and a quorum read of
    // the others would still see the old object: answer 503 and let the client retry.
    let full = uploads.iter().filter(|(n, u)| replicas.iter().any(|r| r.id == n.id) && holds_all(u)).count();
    if full < need {
        tracing::warn!(holders = full, need, "too few replicas hold every part of the upload yet");
        crate::cluster::quorum_failed("write");
        return Err(S3Error::ServiceUnavailable);
    }
    let declared = mpu_checksum::declared_of(upload_id);
    let object_checksum = match declared {
        Some(d) => Some(complete_checksum(ctx, d, &doc.parts, &stored)?),
        None => None,
    };
    let lock = match super::conditional::write_condition(&ctx.headers)? {
        Some(cond) => Some(super::conditional::lock_and_check(state, bucket, key, &cond).await?),
        None => None,
    };
    let req = pb::CompleteUploadRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
        parts: doc
            .parts
            .iter()
            .map(|p| pb::CompletedPart { part_number: p.part_number, etag: bare_etag(&p.etag).to_string() })
            .collect(),
        version: Some(state.store.new_version()),
        last_modified_ms: now_ms(),
        etag: etag.clone(),
        checksums: match (declared, &object_checksum) {
            (Some(d), Some(v)) => [(d.alg.name().to_ascii_lowercase(), v.clone())].into(),
            _ => Default::default(),
        },
    };
    // Set once the write quorum completed the upload (dropped unset if it did not).
    let (completed, decision) = tokio::sync::watch::channel(false);
    let written = state
        .store
        .write_unary(&replicas, "complete_upload", |mut c| {
            let req = req.clone();
            let decision = decision.clone();
            async move {
                let r = c.complete_upload(req.clone()).await;
                if r.is_err() {
                    end_leftover_upload(c, req, decision);
                }
                r.map(|r| r.into_inner())
            }
        })
        .await;
    if let Some(l) = lock {
        l.release().await;
    }
    written?;
    let _ = completed.send(true);
    completion_answer(state, ctx, bucket, key, &etag, declared, object_checksum.as_deref())
}

/// CompleteMultipartUpload's answer: the object's location, ETag and checksum.
fn completion_answer(
    state: &AppState,
    ctx: &super::Ctx,
    bucket: &str,
    key: &str,
    etag: &str,
    declared: Option<mpu_checksum::Declared>,
    checksum: Option<&str>,
) -> Result<Response, S3Error> {
    let doc = xml::CompleteMultipartUploadResult {
        xmlns: xml::S3_NS,
        location: super::object_url(&ctx.headers, state.cfg.root_domain.as_deref(), bucket, key),
        bucket: bucket.to_string(),
        key: key.to_string(),
        etag: quoted_etag(etag),
        checksum: xml::ChecksumFields::new(declared.map(|d| d.alg), checksum.unwrap_or("")),
        checksum_type: declared.map(|d| d.type_name()),
    };
    let mut resp = xml_response(xml::to_xml("CompleteMultipartUploadResult", &doc)?)?;
    if let Ok(v) = http::HeaderValue::from_str(&quoted_etag(etag)) {
        resp.headers_mut().insert(http::header::ETAG, v);
    }
    Ok(resp)
}

/// A completion of an upload that no node holds any more. S3 answers a retried completion
/// (its first answer was lost, or it failed after completing on some replicas) as it
/// answered the first, so: if a node completed this upload into the ETag the listed parts
/// make (its `ended_uploads` record, kept for the tombstone grace), and a write quorum of
/// the key's replicas now holds that object, the answer is the first one's. If fewer do (a
/// partial completion that anti-entropy is still copying), 503: the client retries. If no
/// node completed it so (unknown, aborted, another part list, or forgotten), or the key's
/// newest version on its replicas is another object or a delete, NoSuchUpload. (The
/// request's conditional headers are not evaluated again: the answer replays the first.)
async fn completed_before(
    state: &AppState,
    ctx: &super::Ctx,
    replicas: &[Replica],
    bucket: &str,
    key: &str,
    upload_id: &str,
    listed: &[xml::CompletedPartXml],
) -> Result<Response, S3Error> {
    let Some(etag) = listed_etag(listed) else { return Err(S3Error::NoSuchUpload) };
    let get = pb::GetUploadRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
        completed: true,
    };
    // Every data node: the replica set may have changed since the completion.
    let (held, _) = get_upload_on(state, &state.store.data_nodes(&state.store.catalog.snapshot()), &get).await;
    let Some(done) = held.into_iter().filter_map(|(_, u)| u.completed).find(|c| c.etag == etag) else {
        return Err(S3Error::NoSuchUpload);
    };
    let live: Vec<Replica> = replicas.iter().filter(|r| r.alive).cloned().collect();
    let answers = state.store.head_answers(&live, bucket, key).await;
    let need = need(state, replicas);
    // The key's newest version among the replicas' answers (tombstones included): it has to
    // be this completion's object, on a write quorum.
    match answers.iter().filter_map(|(_, m)| m.as_ref()).max_by(newer) {
        Some(newest) if !newest.tombstone && newest.etag == etag => {
            let holding =
                answers.iter().filter(|(_, m)| m.as_ref().is_some_and(|m| m.version == newest.version)).count();
            if holding < need {
                tracing::warn!(holding, need, upload_id, "a retried completion: too few replicas hold its object yet");
                crate::cluster::quorum_failed("write");
                return Err(S3Error::ServiceUnavailable);
            }
        }
        // Overwritten or deleted since, or held by none of a quorum that answered: no
        // longer this completion's object.
        Some(_) => return Err(S3Error::NoSuchUpload),
        None if answers.len() >= need => return Err(S3Error::NoSuchUpload),
        None => {
            crate::cluster::quorum_failed("read");
            return Err(S3Error::ServiceUnavailable);
        }
    }
    metrics::counter!("gateway_completions_replayed_total").increment(1);
    tracing::info!(upload_id, "a retried completion of a completed upload: answered as the first");
    let declared = mpu_checksum::declared_of(upload_id);
    let checksum = declared.and_then(|d| done.checksums.get(&d.alg.name().to_ascii_lowercase()).cloned());
    completion_answer(state, ctx, bucket, key, &etag, declared, checksum.as_deref())
}

/// A replica whose complete failed (it had not stored every part yet) still holds the
/// upload, which ListMultipartUploads would show once the others completed it. In the
/// background: once the request decides the upload completed (`decision` turns true), end
/// it on this replica; if the complete failed as a whole (`decision` dropped unset), leave
/// it for the client's retry. The replica's missing copy of the object is anti-entropy's
/// (or read repair's) to restore.
fn end_leftover_upload(
    mut client: crate::replicas::BlobClient,
    req: pb::CompleteUploadRequest,
    mut decision: tokio::sync::watch::Receiver<bool>,
) {
    // Not in the request's span: the request's trace ends with its answer.
    tokio::spawn(async move {
        if decision.wait_for(|completed| *completed).await.is_err() {
            return;
        }
        let abort = pb::AbortUploadRequest { bucket: req.bucket, key: req.key, upload_id: req.upload_id };
        match client.abort_upload(abort).await {
            Ok(_) => tracing::info!("ended an upload a replica could not complete"),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => tracing::debug!(code = ?s.code(), message = s.message(), "leftover upload not ended"),
        }
    });
}

pub async fn handle_abort_multipart_upload(
    state: &AppState,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let replicas = state.store.replica_set(bucket, key)?;
    let need = state.store.write_quorum(replicas.len());
    let req =
        pb::AbortUploadRequest { bucket: bucket.to_string(), key: key.to_string(), upload_id: upload_id.to_string() };
    // Also every other live data node: nodes that held the key before a layout change may
    // hold the upload too (each records it as ended, so no copy is handed back). The
    // answer is the replicas' (the others count only when one of them held the upload).
    let others: Vec<Replica> = state
        .store
        .data_nodes(&state.store.catalog.snapshot())
        .into_iter()
        .filter(|n| n.alive && !replicas.iter().any(|r| r.id == n.id))
        .collect();
    let abort = |mut c: crate::replicas::BlobClient| {
        let req = req.clone();
        async move { c.abort_upload(req).await.map(|r| r.into_inner()) }
    };
    let ((oks, errs), (elsewhere, _)) = tokio::join!(
        state.store.unary_quorum(&replicas, replicas.len(), abort),
        state.store.unary_quorum(&others, others.len(), abort)
    );
    let not_found = errs.iter().filter(|e| e.code() == tonic::Code::NotFound).count();
    if oks.is_empty() && elsewhere.is_empty() && not_found > 0 {
        return Err(S3Error::NoSuchUpload);
    }
    if oks.len() + not_found < need {
        for e in &errs {
            tracing::warn!(code = ?e.code(), message = e.message(), "abort upload failed");
        }
        return Err(S3Error::ServiceUnavailable);
    }
    empty_response(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 5 << 20;

    fn part(n: u32, etag: &str) -> xml::CompletedPartXml {
        xml::CompletedPartXml { part_number: n, etag: etag.to_string(), ..Default::default() }
    }

    #[test]
    fn parts_are_checked_and_etag_computed() {
        let a = hex::encode(md5::Md5::digest(b"a"));
        let b = hex::encode(md5::Md5::digest(b"b"));
        let stored_part = |etag: &str, size: u64| pb::UploadPart { etag: etag.to_string(), size, ..Default::default() };
        let mut stored = HashMap::new();
        stored.insert(1, stored_part(&a, MIN));
        stored.insert(2, stored_part(&b, 1));
        let etag = check_parts(&[part(1, &format!("\"{a}\"")), part(2, &b)], &stored, MIN).unwrap();
        let mut m = md5::Md5::new();
        m.update(hex::decode(&a).unwrap());
        m.update(hex::decode(&b).unwrap());
        assert_eq!(etag, format!("{}-2", hex::encode(m.finalize())));

        assert!(matches!(check_parts(&[], &stored, MIN), Err(S3Error::MalformedXML)));
        assert!(matches!(check_parts(&[part(2, &b), part(1, &a)], &stored, MIN), Err(S3Error::InvalidPartOrder)));
        assert!(matches!(check_parts(&[part(1, &a), part(1, &a)], &stored, MIN), Err(S3Error::InvalidPartOrder)));
        assert!(matches!(check_parts(&[part(1, &a), part(3, &b)], &stored, MIN), Err(S3Error::InvalidPart)));
        assert!(matches!(check_parts(&[part(1, &b)], &stored, MIN), Err(S3Error::InvalidPart)));
        // A small part is fine only as the last one.
        assert!(matches!(
            check_parts(
                &[part(2, &b), part(3, &a)],
                &{
                    let mut s = stored.clone();
                    s.insert(3, stored_part(&a, 1));
                    s
                },
                MIN
            ),
            Err(S3Error::EntityTooSmall { proposed: 1, min: MIN })
        ));
        assert!(check_parts(&[part(2, &b)], &stored, MIN).is_ok());
    }
}
