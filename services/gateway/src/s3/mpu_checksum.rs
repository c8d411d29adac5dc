//! Multipart checksums, as S3 has them: CreateMultipartUpload declares an algorithm
//! (`x-amz-checksum-algorithm`) and a type (`x-amz-checksum-type`: `COMPOSITE`, a checksum
//! of the parts' checksums with a `-N` suffix, or `FULL_OBJECT`, the checksum of the whole
//! body, which CRCs allow by combining the parts' CRCs). Every part's checksum in that
//! algorithm is computed by the gateway as the part streams in and stored with the part;
//! CompleteMultipartUpload checks the ones the client lists and derives the object's.
//!
//! The declaration travels in the upload id (`<uuid>.<alg>.<c|f>`), so a part upload knows
//! it without asking a replica; the id is opaque to clients and a changed one names no
//! upload.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;

use super::header_str;
use crate::auth::checksum::{ChecksumAlgorithm, Hasher};
use crate::error::S3Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    pub alg: ChecksumAlgorithm,
    pub full_object: bool,
}

impl Declared {
    pub fn type_name(self) -> &'static str {
        if self.full_object { "FULL_OBJECT" } else { "COMPOSITE" }
    }
}

/// The declaration of a CreateMultipartUpload, checked by S3's rules.
pub fn declared_from_headers(headers: &HeaderMap) -> Result<Option<Declared>, S3Error> {
    let alg = header_str(headers, "x-amz-checksum-algorithm");
    let kind = header_str(headers, "x-amz-checksum-type");
    let Some(alg) = alg else {
        return match kind {
            None => Ok(None),
            Some(_) => Err(S3Error::InvalidRequest(
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.".into(),
            )),
        };
    };
    let alg = ChecksumAlgorithm::from_name(alg)
        .ok_or_else(|| S3Error::InvalidRequest(format!("Checksum algorithm provided is unsupported: {alg}")))?;
    let full_object = match kind.map(str::to_ascii_uppercase).as_deref() {
        None => alg == ChecksumAlgorithm::Crc64Nvme,
        Some("COMPOSITE") => false,
        Some("FULL_OBJECT") => true,
        Some(other) => {
            return Err(S3Error::InvalidRequest(format!("Value for x-amz-checksum-type is invalid: {other}")));
        }
    };
    let crc = matches!(alg, ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Crc32c | ChecksumAlgorithm::Crc64Nvme);
    if full_object && !crc {
        return Err(S3Error::InvalidRequest(format!(
            "The FULL_OBJECT checksum type cannot be used with the {} checksum algorithm.",
            alg.name().to_ascii_lowercase()
        )));
    }
    if !full_object && alg == ChecksumAlgorithm::Crc64Nvme {
        return Err(S3Error::InvalidRequest(
            "The COMPOSITE checksum type cannot be used with the crc64nvme checksum algorithm.".into(),
        ));
    }
    Ok(Some(Declared { alg, full_object }))
}

/// The upload id for a new upload with this declaration.
pub fn new_upload_id(declared: Option<Declared>) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    match declared {
        None => id,
        Some(d) => format!("{id}.{}.{}", d.alg.name().to_ascii_lowercase(), if d.full_object { 'f' } else { 'c' }),
    }
}

/// The declaration an upload id carries.
pub fn declared_of(upload_id: &str) -> Option<Declared> {
    let mut it = upload_id.splitn(3, '.');
    let (_, alg, kind) = (it.next()?, it.next()?, it.next()?);
    let alg = ChecksumAlgorithm::from_name(alg)?;
    match kind {
        "c" => Some(Declared { alg, full_object: false }),
        "f" => Some(Declared { alg, full_object: true }),
        _ => None,
    }
}

/// For a part of an upload that declared `d`: a checksum the request carries in another
/// algorithm is refused (as S3 does); the declared one is computed and stored.
pub fn part_record(
    d: Declared,
    header_algs: impl Iterator<Item = ChecksumAlgorithm>,
    trailer: Option<ChecksumAlgorithm>,
) -> Result<ChecksumAlgorithm, S3Error> {
    for got in header_algs.chain(trailer) {
        if got != d.alg {
            return Err(S3Error::InvalidRequest(format!(
                "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                d.alg.name().to_ascii_lowercase(),
                got.name().to_ascii_lowercase()
            )));
        }
    }
    Ok(d.alg)
}

/// The object's checksum from its parts' (base64 checksum, size), in order.
pub fn object_checksum(d: Declared, parts: &[(&str, u64)]) -> Result<String, S3Error> {
    let raw = |b64: &str| {
        B64.decode(b64.as_bytes()).ok().filter(|r| r.len() == d.alg.digest_len()).ok_or(S3Error::InvalidPart)
    };
    if !d.full_object {
        let mut h = Hasher::new(d.alg);
        for (c, _) in parts {
            h.update(&raw(c)?);
        }
        return Ok(format!("{}-{}", h.finalize_base64(), parts.len()));
    }
    use crc_fast::CrcAlgorithm as C;
    let algo = match d.alg {
        ChecksumAlgorithm::Crc32 => C::Crc32IsoHdlc,
        ChecksumAlgorithm::Crc32c => C::Crc32Iscsi,
        ChecksumAlgorithm::Crc64Nvme => C::Crc64Nvme,
        _ => return Err(S3Error::InternalError("full-object checksum of a non-CRC algorithm".into())),
    };
    let mut combined: Option<u64> = None;
    for (c, size) in parts {
        let bytes = raw(c)?;
        let mut be = [0u8; 8];
        be[8 - bytes.len()..].copy_from_slice(&bytes);
        let crc = u64::from_be_bytes(be);
        combined = Some(match combined {
            None => crc,
            Some(acc) => crc_fast::checksum_combine(algo, acc, crc, *size),
        });
    }
    let value = combined.unwrap_or(0);
    let bytes =
        if d.alg.digest_len() == 4 { (value as u32).to_be_bytes().to_vec() } else { value.to_be_bytes().to_vec() };
    Ok(B64.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn b64(alg: ChecksumAlgorithm, data: &[u8]) -> String {
        let mut h = Hasher::new(alg);
        h.update(data);
        h.finalize_base64()
    }

    #[test]
    fn declarations_follow_s3() {
        let mut h = HeaderMap::new();
        assert_eq!(declared_from_headers(&h).unwrap(), None);
        h.insert("x-amz-checksum-algorithm", HeaderValue::from_static("CRC32"));
        let d = declared_from_headers(&h).unwrap().unwrap();
        assert_eq!((d.alg, d.full_object), (ChecksumAlgorithm::Crc32, false));
        h.insert("x-amz-checksum-type", HeaderValue::from_static("FULL_OBJECT"));
        assert!(declared_from_headers(&h).unwrap().unwrap().full_object);
        h.insert("x-amz-checksum-algorithm", HeaderValue::from_static("SHA256"));
        assert!(matches!(declared_from_headers(&h), Err(S3Error::InvalidRequest(_))));
        h.insert("x-amz-checksum-algorithm", HeaderValue::from_static("CRC64NVME"));
        h.remove("x-amz-checksum-type");
        assert!(declared_from_headers(&h).unwrap().unwrap().full_object);
        h.remove("x-amz-checksum-algorithm");
        h.insert("x-amz-checksum-type", HeaderValue::from_static("COMPOSITE"));
        assert!(matches!(declared_from_headers(&h), Err(S3Error::InvalidRequest(_))));
        let d = Declared { alg: ChecksumAlgorithm::Crc32c, full_object: true };
        assert_eq!(declared_of(&new_upload_id(Some(d))), Some(d));
        assert_eq!(declared_of(&new_upload_id(None)), None);
    }

    #[test]
    fn full_object_crcs_combine_to_the_whole_body_crc() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let (a, b) = body.split_at(60_001);
        for alg in [ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc32c, ChecksumAlgorithm::Crc64Nvme] {
            let d = Declared { alg, full_object: true };
            let parts = [(b64(alg, a), a.len() as u64), (b64(alg, b), b.len() as u64)];
            let refs: Vec<(&str, u64)> = parts.iter().map(|(c, s)| (c.as_str(), *s)).collect();
            assert_eq!(object_checksum(d, &refs).unwrap(), b64(alg, &body), "{alg:?}");
        }
    }

    #[test]
    fn composite_is_the_checksum_of_the_part_checksums() {
        let alg = ChecksumAlgorithm::Sha256;
        let (p1, p2) = (b64(alg, b"one"), b64(alg, b"two"));
        let mut h = Hasher::new(alg);
        h.update(&B64.decode(&p1).unwrap());
        h.update(&B64.decode(&p2).unwrap());
        let want = format!("{}-2", h.finalize_base64());
        let d = Declared { alg, full_object: false };
        assert_eq!(object_checksum(d, &[(&p1, 3), (&p2, 3)]).unwrap(), want);
    }
}
