//! Object tagging: Get/Put/DeleteObjectTagging, and `x-amz-tagging` on writes. A tag
//! change is metadata-only: it finds the key's newest version (a read quorum) and asks
//! every replica to retag exactly that version (`SetTags`), ordered among tag changes by
//! a fresh HLC reading; it succeeds once a write quorum holds it.

use std::collections::HashMap;

use aether_proto::blob::v1 as pb;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode};
use percent_encoding::percent_decode_str;

use super::bucket::validate_tags;
use super::{AppState, Ctx, ReqBody, empty_response, existing_bucket, header_str, newest_live, xml_response};
use crate::error::S3Error;
use crate::xml;

/// S3's limit on tags per object.
pub const MAX_OBJECT_TAGS: usize = 10;

/// The tag set of an `x-amz-tagging` header (URL-query form: `k1=v1&k2=v2`), checked by
/// S3's rules; empty when the header is absent.
pub fn tags_from_header(headers: &HeaderMap) -> Result<HashMap<String, String>, S3Error> {
    let Some(raw) = header_str(headers, "x-amz-tagging") else {
        return Ok(HashMap::new());
    };
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| S3Error::InvalidArgument("The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates.".into()))
    };
    let mut tags = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if !seen.insert(key.clone()) {
            return Err(S3Error::InvalidArgument("The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates.".into()));
        }
        tags.push(xml::TagXml { key, value: decode(v)? });
    }
    object_tags(tags)
}

/// An object's tag set by S3's rules (more than 10 is `BadRequest` for objects).
fn object_tags(tags: Vec<xml::TagXml>) -> Result<HashMap<String, String>, S3Error> {
    if tags.len() > MAX_OBJECT_TAGS {
        return Err(S3Error::BadRequest(format!("Object tags cannot be greater than {MAX_OBJECT_TAGS}")));
    }
    Ok(validate_tags(tags, MAX_OBJECT_TAGS)?.into_iter().collect())
}

/// `x-amz-tagging-count` on GetObject when the object has tags.
pub fn tagging_count_header(meta: &pb::ObjectMeta, headers: &mut HeaderMap) {
    if !meta.tags.is_empty() {
        headers.insert("x-amz-tagging-count", HeaderValue::from(meta.tags.len()));
    }
}

pub async fn handle_get_object_tagging(state: &AppState, bucket: &str, key: &str) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let read = newest_live(state, bucket, key, false).await?;
    let mut tags: Vec<_> = read.meta.tags.into_iter().collect();
    tags.sort();
    let doc = xml::Tagging {
        xmlns: xml::S3_NS,
        tag_set: xml::TagSet { tags: tags.into_iter().map(|(key, value)| xml::TagXml { key, value }).collect() },
    };
    xml_response(xml::to_xml("Tagging", &doc)?)
}

/// PutObjectTagging: the whole tag set is replaced (Content-MD5 or a checksum required).
pub async fn handle_put_object_tagging(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    body: ReqBody,
) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    let doc: xml::Tagging = super::read_checked_document(ctx, body, 64 << 10).await?;
    let tags = object_tags(doc.tag_set.tags)?;
    set_tags(state, bucket, key, tags).await?;
    empty_response(StatusCode::OK)
}

pub async fn handle_delete_object_tagging(state: &AppState, bucket: &str, key: &str) -> Result<Response, S3Error> {
    existing_bucket(state, bucket)?;
    set_tags(state, bucket, key, HashMap::new()).await?;
    empty_response(StatusCode::NO_CONTENT)
}

/// Retag the key's newest version on its replicas.
async fn set_tags(state: &AppState, bucket: &str, key: &str, tags: HashMap<String, String>) -> Result<(), S3Error> {
    let read = newest_live(state, bucket, key, false).await?;
    let req = pb::SetTagsRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        version: read.meta.version.clone(),
        tags,
        tags_hlc: state.store.new_version().hlc,
    };
    let replicas = state.store.replica_set(bucket, key)?;
    let answers = state
        .store
        .write_unary(&replicas, "set_tags", |mut c| {
            let req = req.clone();
            async move { c.set_tags(req).await.map(|r| r.into_inner()) }
        })
        .await?;
    if answers.iter().all(|a| a.superseded) {
        // Overwritten since it was read: the change was for a version no longer there.
        tracing::debug!(bucket, key, "tag change superseded by a newer version");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging_header_is_url_query_form() {
        let mut h = HeaderMap::new();
        assert!(tags_from_header(&h).unwrap().is_empty());
        h.insert("x-amz-tagging", HeaderValue::from_static("project=blue%20sky&empty=&a+b=c%2Bd"));
        let tags = tags_from_header(&h).unwrap();
        assert_eq!(tags.len(), 3);
        assert_eq!(tags["project"], "blue sky");
        assert_eq!(tags["empty"], "");
        assert_eq!(tags["a b"], "c+d");
        h.insert("x-amz-tagging", HeaderValue::from_static("k=1&k=2"));
        assert!(matches!(tags_from_header(&h), Err(S3Error::InvalidArgument(_))));
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        h.insert("x-amz-tagging", HeaderValue::from_str(&eleven.join("&")).unwrap());
        assert!(matches!(tags_from_header(&h), Err(S3Error::BadRequest(_))));
        h.insert("x-amz-tagging", HeaderValue::from_static("aws%3Aname=x"));
        assert!(matches!(tags_from_header(&h), Err(S3Error::InvalidTag(_))));
    }
}
