//! ACLs, as far as aether has them: every bucket and object is private to its bucket's
//! owner. GetBucketAcl / GetObjectAcl report that (the owner with FULL_CONTROL); the canned
//! ACL `private` is accepted wherever S3 takes one (`x-amz-acl` on writes, PutBucketAcl,
//! PutObjectAcl); any other ACL is `NotImplemented`, never silently ignored.

use axum::response::Response;
use http::{HeaderMap, StatusCode};

use super::{AppState, Ctx, ReqBody, empty_response, existing_bucket, header_str, read_small_body, xml_response};
use crate::error::S3Error;
use crate::xml;

/// `x-amz-acl` other than `private`, or any `x-amz-grant-*` header, is not implemented.
pub fn check_canned_acl(headers: &HeaderMap) -> Result<(), S3Error> {
    if let Some(acl) = headers.get("x-amz-acl") {
        let acl = acl.to_str().unwrap_or("").trim();
        if acl != "private" {
            return Err(S3Error::NotImplemented(format!("The canned ACL {acl:?} (only \"private\")")));
        }
    }
    if let Some(name) = headers.keys().find(|n| n.as_str().starts_with("x-amz-grant-")) {
        return Err(S3Error::NotImplemented(format!("ACL grants ({name})")));
    }
    Ok(())
}

/// The bucket's owner, and for an object, that the object exists.
async fn owner_of(state: &AppState, bucket: &str, key: Option<&str>) -> Result<String, S3Error> {
    let b = existing_bucket(state, bucket)?;
    if let Some(key) = key {
        super::newest_live(state, bucket, key, false).await?;
    }
    Ok(b.entry.owner)
}

pub async fn handle_get_acl(state: &AppState, bucket: &str, key: Option<&str>) -> Result<Response, S3Error> {
    let owner = owner_of(state, bucket, key).await?;
    let doc = xml::AccessControlPolicy {
        xmlns: xml::S3_NS,
        owner: xml::Owner::of(&owner),
        acl: xml::AccessControlList {
            grants: vec![xml::Grant {
                grantee: xml::Grantee {
                    xmlns_xsi: "http://www.w3.org/2001/XMLSchema-instance",
                    xsi_type: "CanonicalUser",
                    id: owner.clone(),
                    display_name: owner,
                },
                permission: "FULL_CONTROL",
            }],
        },
    };
    xml_response(xml::to_xml("AccessControlPolicy", &doc)?)
}

/// PutBucketAcl / PutObjectAcl with `x-amz-acl: private` (what the resource already has;
/// `dispatch` refused any other canned ACL). A policy document in the body is not
/// implemented.
pub async fn handle_put_acl(
    state: &AppState,
    ctx: &Ctx,
    bucket: &str,
    key: Option<&str>,
    body: ReqBody,
) -> Result<Response, S3Error> {
    owner_of(state, bucket, key).await?;
    let body = read_small_body(body, 64 << 10).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        return Err(S3Error::NotImplemented("An access control policy document (only x-amz-acl: private)".into()));
    }
    if header_str(&ctx.headers, "x-amz-acl").is_none() {
        return Err(S3Error::InvalidRequest("Missing required header for this request: x-amz-acl".into()));
    }
    empty_response(StatusCode::OK)
}
