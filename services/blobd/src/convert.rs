//! Conversions between wire types and what the index stores.

use aether_proto::blob::v1::{ObjectMeta, Version};
use prost::Message;

use crate::error::{BlobdError, Result};

/// Longest key accepted, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// A version as the index orders it: (hlc, writer), compared lexicographically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ver {
    pub hlc: u64,
    pub writer: String,
}

impl Ver {
    pub fn from_wire(v: Option<&Version>) -> Result<Self> {
        let v = v.ok_or_else(|| BlobdError::InvalidArgument("version is required".into()))?;
        Ok(Self { hlc: v.hlc, writer: v.writer.clone() })
    }
    pub fn to_wire(&self) -> Version {
        Version { hlc: self.hlc, writer: self.writer.clone() }
    }
    /// SQLite integers are i64: store the u64 bit pattern.
    pub fn hlc_db(&self) -> i64 {
        self.hlc as i64
    }
    pub fn from_db(hlc: i64, writer: String) -> Self {
        Self { hlc: hlc as u64, writer }
    }
}

pub fn validate_target(bucket: &str, key: &str) -> Result<()> {
    if bucket.is_empty() {
        return Err(BlobdError::InvalidArgument("bucket is empty".into()));
    }
    if key.is_empty() {
        return Err(BlobdError::InvalidArgument("key is empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(BlobdError::InvalidArgument(format!("key longer than {MAX_KEY_LEN} bytes")));
    }
    Ok(())
}

pub fn encode_meta(meta: &ObjectMeta) -> Vec<u8> {
    meta.encode_to_vec()
}

pub fn decode_meta(bytes: &[u8]) -> Result<ObjectMeta> {
    ObjectMeta::decode(bytes).map_err(|e| BlobdError::Corrupt(format!("meta: {e}")))
}

/// Blob ids as stored in `objects.blobs`.
pub fn join_blobs(ids: &[String]) -> String {
    ids.join(",")
}

pub fn split_blobs(s: &str) -> Vec<String> {
    if s.is_empty() { Vec::new() } else { s.split(',').map(str::to_string).collect() }
}

/// The smallest byte string greater than every string starting with `prefix`, or `None`
/// when there is none (all 0xFF, which valid UTF-8 never contains).
pub fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut v = prefix.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xFF {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

/// The smallest byte string strictly greater than `s`.
pub fn successor(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_hlc_then_writer() {
        let a = Ver { hlc: 5, writer: "b".into() };
        let b = Ver { hlc: 6, writer: "a".into() };
        let c = Ver { hlc: 6, writer: "b".into() };
        assert!(a < b && b < c);
        let big = Ver { hlc: u64::MAX - 1, writer: String::new() };
        assert_eq!(Ver::from_db(big.hlc_db(), String::new()), big);
    }

    #[test]
    fn bounds() {
        assert_eq!(prefix_upper_bound(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_upper_bound(&[0x61, 0xFF]), Some(vec![0x62]));
        assert_eq!(prefix_upper_bound(&[0xFF]), None);
        assert!(successor(b"ab").as_slice() > b"ab".as_slice());
        assert!(successor(b"ab").as_slice() < b"ab\x01".as_slice());
    }
}
