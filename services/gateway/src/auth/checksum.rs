//! Incremental body checksums: the `x-amz-checksum-*` family (CRC32, CRC32C, CRC64NVME,
//! SHA-1, SHA-256) and `Content-MD5` parsing.
//!
//! Values travel base64-encoded (standard alphabet, padded) over the big-endian bytes of
//! the CRC or the raw digest, exactly as S3 and the SDKs send them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;
use sha1::Digest as _;

use crate::error::S3Error;

/// The checksum algorithms S3 accepts in `x-amz-checksum-*` headers and trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub const ALL: [ChecksumAlgorithm; 5] = [Self::Crc32, Self::Crc32c, Self::Crc64Nvme, Self::Sha1, Self::Sha256];

    /// The (lowercase) header / trailer name, e.g. `x-amz-checksum-crc32`.
    pub fn header_name(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Parses a header / trailer name (case-insensitive, surrounding spaces ignored).
    pub fn from_header_name(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL.into_iter().find(|a| a.header_name().eq_ignore_ascii_case(name))
    }

    /// The algorithm's S3 name, as used in `x-amz-checksum-algorithm` and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    /// Parses an S3 algorithm name (`CRC32`, `crc64nvme`, ...), case-insensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// Length in bytes of the raw (decoded) checksum value.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64Nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// True if `value` is valid standard base64 that decodes to [`Self::digest_len`] bytes.
    pub fn is_valid_value(self, value: &str) -> bool {
        B64.decode(value.trim().as_bytes()).is_ok_and(|raw| raw.len() == self.digest_len())
    }
}

enum Inner {
    Crc(crc_fast::Digest, usize),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

/// An incremental checksum over bytes as they stream by.
pub struct Hasher {
    inner: Inner,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.inner {
            Inner::Crc(_, 4) => "CRC32*",
            Inner::Crc(..) => "CRC64NVME",
            Inner::Sha1(_) => "SHA1",
            Inner::Sha256(_) => "SHA256",
        };
        f.debug_tuple("Hasher").field(&name).finish()
    }
}

impl Hasher {
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        use crc_fast::CrcAlgorithm as C;
        let inner = match algorithm {
            ChecksumAlgorithm::Crc32 => Inner::Crc(crc_fast::Digest::new(C::Crc32IsoHdlc), 4),
            ChecksumAlgorithm::Crc32c => Inner::Crc(crc_fast::Digest::new(C::Crc32Iscsi), 4),
            ChecksumAlgorithm::Crc64Nvme => Inner::Crc(crc_fast::Digest::new(C::Crc64Nvme), 8),
            ChecksumAlgorithm::Sha1 => Inner::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => Inner::Sha256(sha2::Sha256::new()),
        };
        Self { inner }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            Inner::Crc(d, _) => d.update(data),
            Inner::Sha1(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
        }
    }

    /// The raw checksum bytes (CRCs big-endian).
    pub fn finalize_bytes(self) -> Vec<u8> {
        match self.inner {
            Inner::Crc(d, 4) => (d.finalize() as u32).to_be_bytes().to_vec(),
            Inner::Crc(d, _) => d.finalize().to_be_bytes().to_vec(),
            Inner::Sha1(h) => h.finalize().to_vec(),
            Inner::Sha256(h) => h.finalize().to_vec(),
        }
    }

    /// The checksum as S3 transmits it: base64 of the raw bytes.
    pub fn finalize_base64(self) -> String {
        B64.encode(self.finalize_bytes())
    }
}

/// The `x-amz-checksum-*` headers present on a request, each validated (standard base64 of
/// the algorithm's length, else `InvalidRequest`). S3 allows at most one checksum per
/// request: more than one is `InvalidRequest` too, so the vector holds zero or one entry.
pub fn requested_checksums(headers: &HeaderMap) -> Result<Vec<(ChecksumAlgorithm, String)>, S3Error> {
    let mut found = Vec::new();
    for algorithm in ChecksumAlgorithm::ALL {
        let Some(value) = headers.get(algorithm.header_name()) else {
            continue;
        };
        let invalid = || S3Error::InvalidRequest(format!("Value for {} header is invalid.", algorithm.header_name()));
        let value = value.to_str().map_err(|_| invalid())?.trim();
        if !algorithm.is_valid_value(value) {
            return Err(invalid());
        }
        found.push((algorithm, value.to_owned()));
    }
    if found.len() > 1 {
        return Err(S3Error::InvalidRequest(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.".into(),
        ));
    }
    Ok(found)
}

/// The `Content-MD5` header decoded (`InvalidDigest` if it is not base64 of 16 bytes).
pub fn content_md5(headers: &HeaderMap) -> Result<Option<[u8; 16]>, S3Error> {
    let Some(value) = headers.get("content-md5") else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| S3Error::InvalidDigest)?.trim();
    let raw = B64.decode(value.as_bytes()).map_err(|_| S3Error::InvalidDigest)?;
    let md5: [u8; 16] = raw.try_into().map_err(|_| S3Error::InvalidDigest)?;
    Ok(Some(md5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(a: ChecksumAlgorithm, data: &[u8]) -> String {
        let mut h = Hasher::new(a);
        h.update(data);
        hex::encode(h.finalize_bytes())
    }

    #[test]
    fn check_values_for_123456789() {
        assert_eq!(hex_of(ChecksumAlgorithm::Crc32, b"123456789"), "cbf43926");
        assert_eq!(hex_of(ChecksumAlgorithm::Crc32c, b"123456789"), "e3069283");
        assert_eq!(hex_of(ChecksumAlgorithm::Crc64Nvme, b"123456789"), "ae8b14860a799888");
        assert_eq!(hex_of(ChecksumAlgorithm::Sha1, b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex_of(ChecksumAlgorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn incremental_equals_one_shot_and_base64_form() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for a in ChecksumAlgorithm::ALL {
            let mut one = Hasher::new(a);
            one.update(&data);
            let mut many = Hasher::new(a);
            for piece in data.chunks(333) {
                many.update(piece);
            }
            let (x, y) = (one.finalize_base64(), many.finalize_base64());
            assert_eq!(x, y);
            assert!(a.is_valid_value(&x), "{a:?} {x}");
        }
        // AWS's trailer example: 66560 bytes of 'a' have CRC32C sOO8/Q==.
        let mut h = Hasher::new(ChecksumAlgorithm::Crc32c);
        h.update(&vec![b'a'; 66560]);
        assert_eq!(h.finalize_base64(), "sOO8/Q==");
        // Empty input: the CRC32 of nothing is 0.
        assert_eq!(Hasher::new(ChecksumAlgorithm::Crc32).finalize_base64(), "AAAAAA==");
    }

    #[test]
    fn names_round_trip() {
        for a in ChecksumAlgorithm::ALL {
            assert_eq!(ChecksumAlgorithm::from_header_name(a.header_name()), Some(a));
            assert_eq!(ChecksumAlgorithm::from_header_name(&a.header_name().to_uppercase()), Some(a));
            assert_eq!(ChecksumAlgorithm::from_name(a.name()), Some(a));
        }
        assert_eq!(ChecksumAlgorithm::Crc32.header_name(), "x-amz-checksum-crc32");
        assert_eq!(ChecksumAlgorithm::Crc64Nvme.name(), "CRC64NVME");
        assert_eq!(ChecksumAlgorithm::from_header_name("x-amz-checksum-type"), None);
        assert_eq!(ChecksumAlgorithm::from_header_name("x-amz-checksum-md5"), None);
    }

    #[test]
    fn requested_checksums_validates() {
        let mut h = HeaderMap::new();
        assert!(requested_checksums(&h).unwrap().is_empty());
        h.insert("x-amz-checksum-crc32", "yZRlqg==".parse().unwrap());
        h.insert("x-amz-checksum-type", "FULL_OBJECT".parse().unwrap());
        assert_eq!(requested_checksums(&h).unwrap(), vec![(ChecksumAlgorithm::Crc32, "yZRlqg==".to_string())]);
        h.insert("x-amz-checksum-sha256", "not base64!".parse().unwrap());
        let err = requested_checksums(&h).unwrap_err();
        assert_eq!(err.code(), "InvalidRequest");
        assert_eq!(err.message(), "Value for x-amz-checksum-sha256 header is invalid.");
        // Valid base64 but the wrong length for the algorithm.
        let mut h = HeaderMap::new();
        h.insert("x-amz-checksum-crc64nvme", "yZRlqg==".parse().unwrap());
        assert_eq!(requested_checksums(&h).unwrap_err().code(), "InvalidRequest");
        // Two checksums at once.
        let mut h = HeaderMap::new();
        h.insert("x-amz-checksum-crc32", "yZRlqg==".parse().unwrap());
        h.insert("x-amz-checksum-crc32c", "yZRlqg==".parse().unwrap());
        assert_eq!(requested_checksums(&h).unwrap_err().code(), "InvalidRequest");
    }

    #[test]
    fn content_md5_parses() {
        let mut h = HeaderMap::new();
        assert_eq!(content_md5(&h).unwrap(), None);
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        h.insert("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==".parse().unwrap());
        assert_eq!(hex::encode(content_md5(&h).unwrap().unwrap()), "d41d8cd98f00b204e9800998ecf8427e");
        h.insert("content-md5", "1B2M2Y8AsgTpgA==".parse().unwrap());
        assert_eq!(content_md5(&h).unwrap_err().code(), "InvalidDigest");
        h.insert("content-md5", "%%%".parse().unwrap());
        assert_eq!(content_md5(&h).unwrap_err().code(), "InvalidDigest");
    }
}
