//! S3 XML documents: serialized with quick-xml, in the S3 namespace, behind the XML
//! declaration. Error documents are rendered from `S3Error` in `server::error_response`,
//! the one place errors reach the wire.

use serde::{Deserialize, Serialize};

use crate::error::S3Error;

pub const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
const DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

/// Serialize `value` as the document element `root`.
pub fn to_xml<T: Serialize>(root: &str, value: &T) -> Result<String, S3Error> {
    let mut out = String::from(DECL);
    let ser = quick_xml::se::Serializer::with_root(&mut out, Some(root))
        .map_err(|e| S3Error::InternalError(format!("xml root: {e}")))?;
    value.serialize(ser).map_err(|e| S3Error::InternalError(format!("xml: {e}")))?;
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct ErrorDoc<'a> {
    #[serde(rename = "Code")]
    pub code: &'a str,
    #[serde(rename = "Message")]
    pub message: &'a str,
    /// NoSuchBucket names the bucket, NoSuchKey the key, as S3's error documents do.
    #[serde(rename = "BucketName", skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<&'a str>,
    #[serde(rename = "Key", skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// InvalidRange: the range asked for and the object's size.
    #[serde(rename = "RangeRequested", skip_serializing_if = "Option::is_none")]
    pub range_requested: Option<&'a str>,
    #[serde(rename = "ActualObjectSize", skip_serializing_if = "Option::is_none")]
    pub actual_object_size: Option<u64>,
    /// EntityTooLarge / EntityTooSmall: the upload's size and the limit it broke.
    #[serde(rename = "ProposedSize", skip_serializing_if = "Option::is_none")]
    pub proposed_size: Option<u64>,
    #[serde(rename = "MinSizeAllowed", skip_serializing_if = "Option::is_none")]
    pub min_size_allowed: Option<u64>,
    #[serde(rename = "MaxSizeAllowed", skip_serializing_if = "Option::is_none")]
    pub max_size_allowed: Option<u64>,
    /// PreconditionFailed: the condition that did not hold.
    #[serde(rename = "Condition", skip_serializing_if = "Option::is_none")]
    pub condition: Option<&'a str>,
    #[serde(rename = "Resource", skip_serializing_if = "Option::is_none")]
    pub resource: Option<&'a str>,
    #[serde(rename = "RequestId")]
    pub request_id: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Owner {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
}

impl Owner {
    /// An owner named by its access key id (ID and DisplayName alike).
    pub fn of(access_key: &str) -> Self {
        Self { id: access_key.to_string(), display_name: access_key.to_string() }
    }
}

#[derive(Debug, Serialize)]
pub struct BucketXml {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "CreationDate")]
    pub creation_date: String,
}

#[derive(Debug, Serialize)]
pub struct Buckets {
    #[serde(rename = "Bucket", default)]
    pub bucket: Vec<BucketXml>,
}

#[derive(Debug, Serialize)]
pub struct ListAllMyBucketsResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Owner")]
    pub owner: Owner,
    #[serde(rename = "Buckets")]
    pub buckets: Buckets,
}

#[derive(Debug, Serialize)]
pub struct LocationConstraint {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "$text")]
    pub region: String,
}

#[derive(Debug, Serialize)]
pub struct ContentsXml {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "LastModified")]
    pub last_modified: String,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "Size")]
    pub size: u64,
    /// ListObjects (v1) always, ListObjectsV2 with `fetch-owner=true`.
    #[serde(rename = "Owner", skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    #[serde(rename = "StorageClass")]
    pub storage_class: &'static str,
}

#[derive(Debug, Serialize)]
pub struct CommonPrefixXml {
    #[serde(rename = "Prefix")]
    pub prefix: String,
}

/// ListObjectsV2 and ListObjects (v1) share one document; the fields of the other
/// version stay `None`.
#[derive(Debug, Serialize, Default)]
pub struct ListBucketResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Prefix")]
    pub prefix: String,
    #[serde(rename = "Marker", skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    #[serde(rename = "NextMarker", skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    #[serde(rename = "Delimiter", skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    #[serde(rename = "MaxKeys")]
    pub max_keys: usize,
    #[serde(rename = "KeyCount", skip_serializing_if = "Option::is_none")]
    pub key_count: Option<usize>,
    #[serde(rename = "IsTruncated")]
    pub is_truncated: bool,
    #[serde(rename = "ContinuationToken", skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
    #[serde(rename = "NextContinuationToken", skip_serializing_if = "Option::is_none")]
    pub next_continuation_token: Option<String>,
    #[serde(rename = "StartAfter", skip_serializing_if = "Option::is_none")]
    pub start_after: Option<String>,
    #[serde(rename = "EncodingType", skip_serializing_if = "Option::is_none")]
    pub encoding_type: Option<&'static str>,
    #[serde(rename = "Contents", default)]
    pub contents: Vec<ContentsXml>,
    #[serde(rename = "CommonPrefixes", default)]
    pub common_prefixes: Vec<CommonPrefixXml>,
}

#[derive(Debug, Serialize)]
pub struct InitiateMultipartUploadResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UploadId")]
    pub upload_id: String,
}

#[derive(Debug, Serialize)]
pub struct CompleteMultipartUploadResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Location")]
    pub location: String,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(flatten)]
    pub checksum: ChecksumFields,
    #[serde(rename = "ChecksumType", skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<&'static str>,
}

/// The five checksum elements of a part or object document, in S3's order; at most one
/// is set (the algorithm's), flattened into the document that holds them.
#[derive(Debug, Default, Serialize)]
pub struct ChecksumFields {
    #[serde(rename = "ChecksumCRC32", skip_serializing_if = "Option::is_none")]
    pub checksum_crc32: Option<String>,
    #[serde(rename = "ChecksumCRC32C", skip_serializing_if = "Option::is_none")]
    pub checksum_crc32c: Option<String>,
    #[serde(rename = "ChecksumCRC64NVME", skip_serializing_if = "Option::is_none")]
    pub checksum_crc64nvme: Option<String>,
    #[serde(rename = "ChecksumSHA1", skip_serializing_if = "Option::is_none")]
    pub checksum_sha1: Option<String>,
    #[serde(rename = "ChecksumSHA256", skip_serializing_if = "Option::is_none")]
    pub checksum_sha256: Option<String>,
}

impl ChecksumFields {
    /// `value` in `alg`'s element (nothing for no algorithm or an empty value).
    pub fn new(alg: Option<crate::auth::checksum::ChecksumAlgorithm>, value: &str) -> Self {
        use crate::auth::checksum::ChecksumAlgorithm as A;
        let mut f = Self::default();
        let slot = match alg {
            Some(A::Crc32) => &mut f.checksum_crc32,
            Some(A::Crc32c) => &mut f.checksum_crc32c,
            Some(A::Crc64Nvme) => &mut f.checksum_crc64nvme,
            Some(A::Sha1) => &mut f.checksum_sha1,
            Some(A::Sha256) => &mut f.checksum_sha256,
            None => return f,
        };
        *slot = (!value.is_empty()).then(|| value.to_string());
        f
    }
}

impl CompletedPartXml {
    /// The checksum the client listed for this part in `alg`, if any.
    pub fn checksum(&self, alg: crate::auth::checksum::ChecksumAlgorithm) -> Option<&str> {
        use crate::auth::checksum::ChecksumAlgorithm as A;
        match alg {
            A::Crc32 => self.checksum_crc32.as_deref(),
            A::Crc32c => self.checksum_crc32c.as_deref(),
            A::Crc64Nvme => self.checksum_crc64nvme.as_deref(),
            A::Sha1 => self.checksum_sha1.as_deref(),
            A::Sha256 => self.checksum_sha256.as_deref(),
        }
    }
}

/// The answer to a browser POST upload with `success_action_status=201`.
#[derive(Debug, Serialize)]
pub struct PostResponse {
    #[serde(rename = "Location")]
    pub location: String,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "ETag")]
    pub etag: String,
}

/// CopyObject's `CopyObjectResult` and UploadPartCopy's `CopyPartResult` (same fields).
#[derive(Debug, Serialize)]
pub struct CopyResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "LastModified")]
    pub last_modified: String,
    #[serde(rename = "ETag")]
    pub etag: String,
}

#[derive(Debug, Serialize)]
pub struct ListPartsResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UploadId")]
    pub upload_id: String,
    #[serde(rename = "PartNumberMarker")]
    pub part_number_marker: u32,
    #[serde(rename = "NextPartNumberMarker")]
    pub next_part_number_marker: u32,
    #[serde(rename = "MaxParts")]
    pub max_parts: usize,
    #[serde(rename = "IsTruncated")]
    pub is_truncated: bool,
    #[serde(rename = "Part", default)]
    pub parts: Vec<PartXml>,
    #[serde(rename = "ChecksumAlgorithm", skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<&'static str>,
    #[serde(rename = "ChecksumType", skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<&'static str>,
    #[serde(rename = "Initiator")]
    pub initiator: Owner,
    #[serde(rename = "Owner")]
    pub owner: Owner,
    #[serde(rename = "StorageClass")]
    pub storage_class: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PartXml {
    #[serde(rename = "PartNumber")]
    pub part_number: u32,
    #[serde(rename = "LastModified")]
    pub last_modified: String,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(flatten)]
    pub checksum: ChecksumFields,
}

#[derive(Debug, Serialize)]
pub struct VersioningConfiguration {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
}

/// An ACL: the owner and its grants (`AccessControlPolicy`).
#[derive(Debug, Serialize)]
pub struct AccessControlPolicy {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Owner")]
    pub owner: Owner,
    #[serde(rename = "AccessControlList")]
    pub acl: AccessControlList,
}

#[derive(Debug, Serialize)]
pub struct AccessControlList {
    #[serde(rename = "Grant")]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Serialize)]
pub struct Grant {
    #[serde(rename = "Grantee")]
    pub grantee: Grantee,
    #[serde(rename = "Permission")]
    pub permission: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Grantee {
    #[serde(rename = "@xmlns:xsi")]
    pub xmlns_xsi: &'static str,
    #[serde(rename = "@xsi:type")]
    pub xsi_type: &'static str,
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
}

#[derive(Debug, Serialize)]
pub struct GetObjectAttributesResponse {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "ETag", skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(rename = "Checksum", skip_serializing_if = "Option::is_none")]
    pub checksum: Option<ChecksumXml>,
    #[serde(rename = "ObjectParts", skip_serializing_if = "Option::is_none")]
    pub object_parts: Option<ObjectPartsXml>,
    #[serde(rename = "StorageClass", skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<&'static str>,
    #[serde(rename = "ObjectSize", skip_serializing_if = "Option::is_none")]
    pub object_size: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct ChecksumXml {
    #[serde(rename = "ChecksumCRC32", skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
    #[serde(rename = "ChecksumCRC32C", skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    #[serde(rename = "ChecksumCRC64NVME", skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    #[serde(rename = "ChecksumSHA1", skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(rename = "ChecksumSHA256", skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(rename = "ChecksumType")]
    pub checksum_type: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ObjectPartsXml {
    #[serde(rename = "PartsCount")]
    pub total_parts_count: usize,
    #[serde(rename = "PartNumberMarker")]
    pub part_number_marker: u32,
    #[serde(rename = "NextPartNumberMarker")]
    pub next_part_number_marker: u32,
    #[serde(rename = "MaxParts")]
    pub max_parts: usize,
    #[serde(rename = "IsTruncated")]
    pub is_truncated: bool,
    #[serde(rename = "Part", default)]
    pub parts: Vec<ObjectPartXml>,
}

#[derive(Debug, Serialize)]
pub struct ObjectPartXml {
    #[serde(flatten)]
    pub checksum: ChecksumFields,
    #[serde(rename = "PartNumber")]
    pub part_number: u32,
    #[serde(rename = "Size")]
    pub size: u64,
}

/// A tag set, as PutBucketTagging takes it and GetBucketTagging gives it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tagging {
    #[serde(rename = "@xmlns", skip_deserializing, skip_serializing_if = "str::is_empty")]
    pub xmlns: &'static str,
    #[serde(rename = "TagSet")]
    pub tag_set: TagSet,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TagSet {
    #[serde(rename = "Tag", default)]
    pub tags: Vec<TagXml>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TagXml {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value", default)]
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct ListMultipartUploadsResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "KeyMarker")]
    pub key_marker: String,
    #[serde(rename = "UploadIdMarker")]
    pub upload_id_marker: String,
    #[serde(rename = "NextKeyMarker", skip_serializing_if = "Option::is_none")]
    pub next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker", skip_serializing_if = "Option::is_none")]
    pub next_upload_id_marker: Option<String>,
    #[serde(rename = "Prefix")]
    pub prefix: String,
    #[serde(rename = "Delimiter", skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    #[serde(rename = "MaxUploads")]
    pub max_uploads: usize,
    #[serde(rename = "IsTruncated")]
    pub is_truncated: bool,
    #[serde(rename = "Upload", default)]
    pub uploads: Vec<UploadXml>,
    #[serde(rename = "CommonPrefixes", default)]
    pub common_prefixes: Vec<CommonPrefixXml>,
    #[serde(rename = "EncodingType", skip_serializing_if = "Option::is_none")]
    pub encoding_type: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct UploadXml {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UploadId")]
    pub upload_id: String,
    #[serde(rename = "Initiator")]
    pub initiator: Owner,
    #[serde(rename = "Owner")]
    pub owner: Owner,
    #[serde(rename = "StorageClass")]
    pub storage_class: &'static str,
    #[serde(rename = "Initiated")]
    pub initiated: String,
}

/// The DeleteObjects request body.
#[derive(Debug, Deserialize)]
pub struct Delete {
    #[serde(rename = "Quiet", default)]
    pub quiet: bool,
    #[serde(rename = "Object", default)]
    pub objects: Vec<ObjectIdentifierXml>,
}

#[derive(Debug, Deserialize)]
pub struct ObjectIdentifierXml {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "VersionId", default)]
    pub version_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeleteResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Deleted", default)]
    pub deleted: Vec<DeletedXml>,
    #[serde(rename = "Error", default)]
    pub errors: Vec<DeleteErrorXml>,
}

#[derive(Debug, Serialize)]
pub struct DeletedXml {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "VersionId", skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeleteErrorXml {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "VersionId", skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Message")]
    pub message: String,
}

/// The CompleteMultipartUpload request body.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct CompleteMultipartUpload {
    #[serde(rename = "Part", default)]
    pub parts: Vec<CompletedPartXml>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Default, Clone)]
pub struct CompletedPartXml {
    #[serde(rename = "PartNumber")]
    pub part_number: u32,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "ChecksumCRC32", default)]
    pub checksum_crc32: Option<String>,
    #[serde(rename = "ChecksumCRC32C", default)]
    pub checksum_crc32c: Option<String>,
    #[serde(rename = "ChecksumCRC64NVME", default)]
    pub checksum_crc64nvme: Option<String>,
    #[serde(rename = "ChecksumSHA1", default)]
    pub checksum_sha1: Option<String>,
    #[serde(rename = "ChecksumSHA256", default)]
    pub checksum_sha256: Option<String>,
}

/// The optional CreateBucket request body.
#[derive(Debug, Deserialize, Default)]
pub struct CreateBucketConfiguration {
    #[serde(rename = "LocationConstraint", default)]
    pub location_constraint: Option<String>,
}

/// A request document (CompleteMultipartUpload, Delete, Tagging, …); anything that is not
/// UTF-8 XML of that shape is `MalformedXML`.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, S3Error> {
    let text = std::str::from_utf8(body).map_err(|_| S3Error::MalformedXML)?;
    quick_xml::de::from_str(text).map_err(|_| S3Error::MalformedXML)
}

pub fn parse_create_bucket(body: &[u8]) -> Result<CreateBucketConfiguration, S3Error> {
    let text = std::str::from_utf8(body).map_err(|_| S3Error::MalformedXML)?;
    if text.trim().is_empty() {
        return Ok(CreateBucketConfiguration::default());
    }
    quick_xml::de::from_str(text).map_err(|_| S3Error::MalformedXML)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_document() {
        let doc = ErrorDoc {
            code: "NoSuchKey",
            message: "The specified key does not exist.",
            bucket_name: None,
            key: Some("k&x"),
            range_requested: None,
            actual_object_size: None,
            proposed_size: None,
            min_size_allowed: None,
            max_size_allowed: None,
            condition: None,
            resource: Some("/b/k&x"),
            request_id: "r1",
        };
        let s = to_xml("Error", &doc).unwrap();
        assert_eq!(
            s,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>k&amp;x</Key><Resource>/b/k&amp;x</Resource><RequestId>r1</RequestId></Error>"
        );
    }

    #[test]
    fn list_buckets_document() {
        let doc = ListAllMyBucketsResult {
            xmlns: S3_NS,
            owner: Owner { id: "AK".into(), display_name: "AK".into() },
            buckets: Buckets {
                bucket: vec![BucketXml { name: "a".into(), creation_date: "2026-01-01T00:00:00.000Z".into() }],
            },
        };
        let s = to_xml("ListAllMyBucketsResult", &doc).unwrap();
        assert!(s.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner>"), "{s}");
        assert!(s.contains("<Buckets><Bucket><Name>a</Name><CreationDate>2026-01-01T00:00:00.000Z</CreationDate></Bucket></Buckets>"), "{s}");
    }

    #[test]
    fn list_objects_document() {
        let doc = ListBucketResult {
            xmlns: S3_NS,
            name: "b".into(),
            prefix: "p/".into(),
            delimiter: Some("/".into()),
            max_keys: 2,
            key_count: Some(2),
            is_truncated: true,
            next_continuation_token: Some("tok".into()),
            contents: vec![ContentsXml {
                key: "p/a".into(),
                last_modified: "x".into(),
                etag: "\"e\"".into(),
                size: 3,
                owner: None,
                storage_class: "STANDARD",
            }],
            common_prefixes: vec![CommonPrefixXml { prefix: "p/d/".into() }],
            ..Default::default()
        };
        let s = to_xml("ListBucketResult", &doc).unwrap();
        assert!(s.contains("<Name>b</Name><Prefix>p/</Prefix><Delimiter>/</Delimiter><MaxKeys>2</MaxKeys><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken>"), "{s}");
        assert!(s.contains("<Contents><Key>p/a</Key><LastModified>x</LastModified><ETag>\"e\"</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents><CommonPrefixes><Prefix>p/d/</Prefix></CommonPrefixes>"), "{s}");
        assert!(!s.contains("Marker"), "{s}");
    }

    #[test]
    fn multipart_documents() {
        let s = to_xml(
            "CompleteMultipartUploadResult",
            &CompleteMultipartUploadResult {
                xmlns: S3_NS,
                location: "/b/k".into(),
                bucket: "b".into(),
                key: "k".into(),
                etag: "\"x-2\"".into(),
                checksum: ChecksumFields::new(Some(crate::auth::checksum::ChecksumAlgorithm::Crc32), "AAAAAA==-2"),
                checksum_type: Some("COMPOSITE"),
            },
        )
        .unwrap();
        // The checksum elements are flattened in; the namespace stays an attribute.
        assert!(
            s.contains("<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>"),
            "{s}"
        );
        assert!(
            s.contains("<Location>/b/k</Location><Bucket>b</Bucket><Key>k</Key><ETag>\"x-2\"</ETag><ChecksumCRC32>AAAAAA==-2</ChecksumCRC32><ChecksumType>COMPOSITE</ChecksumType>"),
            "{s}"
        );
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Part><ETag>"aa"</ETag><PartNumber>1</PartNumber><ChecksumCRC32>x</ChecksumCRC32></Part>
  <Part><PartNumber>2</PartNumber><ETag>bb</ETag></Part>
</CompleteMultipartUpload>"#;
        let c: CompleteMultipartUpload = parse(body).unwrap();
        assert_eq!(c.parts.len(), 2);
        assert_eq!(
            c.parts[0],
            CompletedPartXml {
                part_number: 1,
                etag: "\"aa\"".into(),
                checksum_crc32: Some("x".into()),
                ..Default::default()
            }
        );
        assert_eq!(c.parts[1].part_number, 2);
        assert!(matches!(
            parse::<CompleteMultipartUpload>(b"<CompleteMultipartUpload><Part>"),
            Err(S3Error::MalformedXML)
        ));
        assert!(matches!(parse::<CompleteMultipartUpload>(b"not xml"), Err(S3Error::MalformedXML)));
        let cfg = parse_create_bucket(b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>").unwrap();
        assert_eq!(cfg.location_constraint.as_deref(), Some("eu-west-1"));
        assert!(parse_create_bucket(b"").unwrap().location_constraint.is_none());
    }
}
