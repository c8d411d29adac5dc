//! Bucket operations. Buckets live in metad; create and delete go through etcd
//! transactions so two gateways racing on one name produce exactly one winner.

use aether_common::catalog::{BucketEntry, BucketState};
use aether_proto::blob::v1 as pb;
use axum::body::Body;
use axum::response::Response;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use http::StatusCode;

use super::{AppState, Ctx, ReqBody, empty_response, existing_bucket, read_small_body, xml_response};
use crate::catalog::CachedBucket;
use crate::error::S3Error;
use crate::xml;

/// S3 bucket naming rules.
pub fn validate_bucket_name(name: &str) -> Result<(), S3Error> {
    let bytes = name.as_bytes();
    let ok_chars = bytes.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-');
    let alnum = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = (3..=63).contains(&bytes.len())
        && ok_chars
        && alnum(bytes.first())
        && alnum(bytes.last())
        && !name.contains("..")
        && !name.contains(".-")
        && !name.contains("-.")
        && name.parse::<std::net::Ipv4Addr>().is_err()
        && !name.starts_with("xn--")
        && !name.starts_with("sthree-")
        && !name.starts_with("amzn-s3-demo-")
        && !name.ends_with("-s3alias")
        && !name.ends_with("--ol-s3")
        && !name.ends_with(".mrap")
        && !name.ends_with("--x-s3")
        && !name.ends_with("--table-s3");
    if valid { Ok(()) } else { Err(S3Error::InvalidBucketName) }
}

pub(super) fn metad_error(e: impl std::fmt::Display) -> S3Error {
    tracing::warn!(error = %e, "metad request failed");
    S3Error::ServiceUnavailable
}

pub async fn handle_list_buckets(state: &AppState, ctx: &Ctx) -> Result<Response, S3Error> {
    let snap = state.store.catalog.snapshot();
    let bucket = snap
        .buckets
        .iter()
        .filter(|(_, b)| b.entry.state == BucketState::Active)
        .map(|(name, b)| xml::BucketXml { name: name.clone(), creation_date: normalize_created(&b.entry.created) })
        .collect();
    let doc = xml::ListAllMyBucketsResult {
        xmlns: xml::S3_NS,
        owner: xml::Owner::of(&ctx.access_key),
        buckets: xml::Buckets { bucket },
    };
    xml_response(xml::to_xml("ListAllMyBucketsResult", &doc)?)
}

/// Creation times are stored as RFC 3339; S3 shows them with milliseconds.
fn normalize_created(created: &str) -> String {
    match time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339) {
        Ok(t) => super::iso8601_ms((t.unix_timestamp_nanos() / 1_000_000) as i64),
        Err(_) => created.to_string(),
    }
}

pub async fn handle_create_bucket(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    body: ReqBody,
) -> Result<Response, S3Error> {
    validate_bucket_name(bucket)?;
    let body = read_small_body(body, 64 << 10).await?;
    let cfg = xml::parse_create_bucket(&body)?;
    if let Some(lc) = cfg.location_constraint.as_deref().filter(|l| !l.is_empty())
        && lc != state.cfg.region
    {
        return Err(S3Error::InvalidRequest(format!(
            "The {lc} location constraint is incompatible for the region specific endpoint this request was sent to."
        )));
    }
    let key = state.store.catalog.keys().bucket(bucket);
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| S3Error::InternalError(format!("format time: {e}")))?;
    let entry = BucketEntry {
        created,
        owner: ctx.access_key.clone(),
        state: BucketState::Active,
        tags: Default::default(),
        cors: Vec::new(),
    };
    let value = serde_json::to_vec(&entry).map_err(|e| S3Error::InternalError(format!("encode bucket: {e}")))?;
    let mut client = state.store.catalog.client().map_err(metad_error)?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), value, None)])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let resp = client.txn(txn).await.map_err(metad_error)?;
    if resp.succeeded() {
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        state
            .store
            .catalog
            .apply_local_bucket(bucket, Some(CachedBucket { entry, mod_revision: rev, create_revision: rev }));
        tracing::info!(bucket, "bucket created");
        return Response::builder()
            .status(StatusCode::OK)
            .header(http::header::LOCATION, format!("/{bucket}"))
            .body(Body::empty())
            .map_err(|e| S3Error::InternalError(format!("response: {e}")));
    }
    let existing = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| serde_json::from_slice::<BucketEntry>(kv.value()).ok()),
        _ => None,
    });
    match existing {
        Some(e) if e.owner == ctx.access_key => Err(S3Error::BucketAlreadyOwnedByYou),
        _ => Err(S3Error::BucketAlreadyExists),
    }
}

pub async fn handle_delete_bucket(state: &AppState, _ctx: &Ctx, bucket: &str) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let key = state.store.catalog.keys().bucket(bucket);
    let mut client = state.store.catalog.client().map_err(metad_error)?;
    // Read the authoritative entry (the cache may lag) and mark it Deleting.
    let got = client.get(key.as_str(), None).await.map_err(metad_error)?;
    let Some(kv) = got.kvs().first() else {
        state.store.catalog.apply_local_bucket(bucket, None);
        return Err(S3Error::NoSuchBucket);
    };
    let mut entry: BucketEntry =
        serde_json::from_slice(kv.value()).map_err(|e| S3Error::InternalError(format!("bucket entry: {e}")))?;
    // This incarnation of the name: blobd fences it, a re-created bucket is another.
    let incarnation = kv.create_revision();
    entry.state = BucketState::Deleting;
    let deleting = serde_json::to_vec(&entry).map_err(|e| S3Error::InternalError(format!("encode bucket: {e}")))?;
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())])
        .and_then([TxnOp::put(key.as_str(), deleting, None)]);
    let resp = client.txn(txn).await.map_err(metad_error)?;
    if !resp.succeeded() {
        // Someone else changed the bucket meanwhile; let the client retry.
        tracing::info!(bucket, "bucket changed during delete");
        return Err(S3Error::ServiceUnavailable);
    }
    let deleting_rev = resp.header().map(|h| h.revision()).unwrap_or(0);

    let revert = |reason: S3Error| {
        let mut client = client.clone();
        let key = key.clone();
        let mut entry = entry.clone();
        async move {
            entry.state = BucketState::Active;
            if let Ok(active) = serde_json::to_vec(&entry) {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, deleting_rev)])
                    .and_then([TxnOp::put(key.as_str(), active, None)]);
                if let Err(e) = client.txn(txn).await {
                    tracing::warn!(error = %e, "could not revert bucket to active");
                }
            }
            Err(reason)
        }
    };

    let snap = state.store.catalog.snapshot();
    let nodes = state.store.data_nodes(&snap);
    let mut total: u64 = 0;
    if nodes.iter().any(|n| !n.alive) {
        tracing::warn!(bucket, "a storage node without a live lease cannot confirm the bucket is empty");
        return revert(S3Error::ServiceUnavailable).await;
    }
    // Every node fences the bucket and counts in one transaction: an object either is
    // counted or is refused (a gateway with a stale cache may still be writing).
    let (oks, errs) = fence_all(state, &nodes, bucket, incarnation, pb::FenceOp::FenceTemporary).await;
    let lift = || fence_all(state, &nodes, bucket, incarnation, pb::FenceOp::FenceLift);
    if oks.len() < nodes.len() {
        for e in &errs {
            tracing::warn!(code = ?e.code(), message = e.message(), "bucket stats failed");
        }
        lift().await;
        return revert(S3Error::ServiceUnavailable).await;
    }
    // Objects only: uploads in progress do not keep a bucket from being deleted (as on
    // S3); sealing the fence below ends them on every node.
    for s in &oks {
        total += s.objects;
    }
    if total > 0 {
        lift().await;
        return revert(S3Error::BucketNotEmpty).await;
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, deleting_rev)])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    let deleted = client.txn(txn).await.map_err(metad_error);
    if !deleted.as_ref().is_ok_and(|r| r.succeeded()) {
        tracing::info!(bucket, "bucket changed during delete");
        lift().await;
        return Err(deleted.err().unwrap_or(S3Error::ServiceUnavailable));
    }
    // For good (best effort: a node that misses it keeps the temporary fence).
    let (sealed, _) = fence_all(state, &nodes, bucket, incarnation, pb::FenceOp::FenceSeal).await;
    if sealed.len() < nodes.len() {
        tracing::warn!(bucket, "not every node sealed the deleted bucket's fence");
    }
    state.store.catalog.apply_local_bucket(bucket, None);
    tracing::info!(bucket, "bucket deleted");
    empty_response(StatusCode::NO_CONTENT)
}

/// A fence op and a count of the bucket's objects and uploads on every node.
async fn fence_all(
    state: &AppState,
    nodes: &[crate::replicas::Replica],
    bucket: &str,
    incarnation: i64,
    op: pb::FenceOp,
) -> (Vec<pb::BucketStatsResponse>, Vec<tonic::Status>) {
    let req = pb::BucketStatsRequest { bucket: bucket.to_string(), fence_rev: incarnation, fence: op as i32 };
    state
        .store
        .unary_quorum(nodes, nodes.len(), |mut c| {
            let req = req.clone();
            async move { c.bucket_stats(req).await.map(|r| r.into_inner()) }
        })
        .await
}

pub async fn handle_head_bucket(state: &AppState, bucket: &str) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    Response::builder()
        .status(StatusCode::OK)
        .header("x-amz-bucket-region", state.cfg.region.as_str())
        .body(Body::empty())
        .map_err(|e| S3Error::InternalError(format!("response: {e}")))
}

pub async fn handle_get_bucket_location(state: &AppState, bucket: &str) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    // S3 answers an empty constraint for us-east-1.
    let region = if state.cfg.region == "us-east-1" { String::new() } else { state.cfg.region.clone() };
    xml_response(xml::to_xml("LocationConstraint", &xml::LocationConstraint { xmlns: xml::S3_NS, region })?)
}

/// GetBucketVersioning: versioning has never been enabled on any bucket (it does not exist
/// yet), which S3 reports as an empty configuration.
pub fn handle_get_bucket_versioning(state: &AppState, bucket: &str) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    xml_response(xml::to_xml("VersioningConfiguration", &xml::VersioningConfiguration { xmlns: xml::S3_NS })?)
}

/// Tags a bucket may carry at most (S3's limit), and the longest key and value.
const MAX_BUCKET_TAGS: usize = 50;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

/// The bucket's entry as metad has it now (the gateway's cache may lag) and its revision.
async fn current_entry(client: &mut etcd_client::Client, key: &str) -> Result<Option<(BucketEntry, i64)>, S3Error> {
    let got = client.get(key, None).await.map_err(metad_error)?;
    let Some(kv) = got.kvs().first() else {
        return Ok(None);
    };
    let entry: BucketEntry =
        serde_json::from_slice(kv.value()).map_err(|e| S3Error::InternalError(format!("bucket entry: {e}")))?;
    Ok(Some((entry, kv.mod_revision())))
}

/// Change a bucket's entry in metad: read, change, compare-and-swap on its revision
/// (retried a few times when another change lands in between).
pub(super) async fn update_entry(
    state: &AppState,
    bucket: &str,
    change: impl Fn(&mut BucketEntry),
) -> Result<(), S3Error> {
    existing_bucket(state, bucket)?;
    let key = state.store.catalog.keys().bucket(bucket);
    let mut client = state.store.catalog.client().map_err(metad_error)?;
    for _ in 0..5 {
        let Some((mut entry, rev)) = current_entry(&mut client, &key).await? else {
            return Err(S3Error::NoSuchBucket);
        };
        if entry.state == BucketState::Deleting {
            // A DeleteBucket is deciding; its outcome is not known yet.
            return Err(S3Error::ServiceUnavailable);
        }
        change(&mut entry);
        let value = serde_json::to_vec(&entry).map_err(|e| S3Error::InternalError(format!("encode bucket: {e}")))?;
        let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)]).and_then([TxnOp::put(
            key.as_str(),
            value,
            None,
        )]);
        if client.txn(txn).await.map_err(metad_error)?.succeeded() {
            return Ok(());
        }
    }
    Err(S3Error::ServiceUnavailable)
}

/// A bucket's entry as metad holds it now (not the cache: a change another gateway just
/// made is seen).
pub(super) async fn stored_entry(state: &AppState, bucket: &str) -> Result<BucketEntry, S3Error> {
    existing_bucket(state, bucket)?;
    let key = state.store.catalog.keys().bucket(bucket);
    let mut client = state.store.catalog.client().map_err(metad_error)?;
    let (entry, _) = current_entry(&mut client, &key).await?.ok_or(S3Error::NoSuchBucket)?;
    Ok(entry)
}

pub async fn handle_get_bucket_tagging(state: &AppState, bucket: &str) -> Result<Response, S3Error> {
    let entry = stored_entry(state, bucket).await?;
    if entry.tags.is_empty() {
        return Err(S3Error::NoSuchTagSet);
    }
    let doc = xml::Tagging {
        xmlns: xml::S3_NS,
        tag_set: xml::TagSet { tags: entry.tags.into_iter().map(|(key, value)| xml::TagXml { key, value }).collect() },
    };
    xml_response(xml::to_xml("Tagging", &doc)?)
}

/// PutBucketTagging: the whole tag set is replaced (an integrity check on the body is
/// required, as S3 requires one).
pub async fn handle_put_bucket_tagging(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    body: ReqBody,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let doc: xml::Tagging = super::read_checked_document(ctx, body, 64 << 10).await?;
    let tags = validate_tags(doc.tag_set.tags, MAX_BUCKET_TAGS)?;
    update_entry(state, bucket, |e| e.tags = tags.clone()).await?;
    empty_response(StatusCode::NO_CONTENT)
}

pub async fn handle_delete_bucket_tagging(state: &AppState, bucket: &str) -> Result<Response, S3Error> {
    update_entry(state, bucket, |e| e.tags.clear()).await?;
    empty_response(StatusCode::NO_CONTENT)
}

/// S3's rules for a tag set: at most `max` tags, unique keys of 1–128 characters not
/// starting with `aws:`, values of at most 256.
pub fn validate_tags(
    tags: Vec<xml::TagXml>,
    max: usize,
) -> Result<std::collections::BTreeMap<String, String>, S3Error> {
    if tags.len() > max {
        return Err(S3Error::InvalidTag(format!("The TagSet cannot contain more than {max} tags")));
    }
    let mut out = std::collections::BTreeMap::new();
    for t in tags {
        let chars = t.key.chars().count();
        if chars == 0 || chars > MAX_TAG_KEY {
            return Err(S3Error::InvalidTag("The TagKey you have provided is invalid".into()));
        }
        if t.key.starts_with("aws:") {
            return Err(S3Error::InvalidTag("Your TagKey cannot be prefixed with aws:".into()));
        }
        if t.value.chars().count() > MAX_TAG_VALUE {
            return Err(S3Error::InvalidTag("The TagValue you have provided is invalid".into()));
        }
        if out.insert(t.key, t.value).is_some() {
            return Err(S3Error::InvalidTag("Cannot provide multiple Tags with the same key".into()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket", "my.bucket.1", "a1b", "123", &"a".repeat(63)] {
            assert!(validate_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "My-Bucket",
            "-abc",
            "abc-",
            ".abc",
            "a..b",
            "a.-b",
            "a-.b",
            "192.168.1.1",
            "xn--abc",
            "sthree-abc",
            "abc-s3alias",
            "abc--ol-s3",
            "a_b",
            "a b",
            "",
        ] {
            assert!(matches!(validate_bucket_name(bad), Err(S3Error::InvalidBucketName)), "{bad}");
        }
    }
}
