//! Request authentication: AWS Signature Version 4 (header and presigned-URL forms) and
//! the `aws-chunked` body encodings, as pure functions over method, URI and headers.
//!
//! Contract used by the request handlers (`crate::s3`):
//! - [`authenticate`] checks the request's signature (or rejects it) and says how the body
//!   must be checked ([`PayloadCheck`]).
//! - For `PayloadCheck::Sha256` the handler hashes the body while streaming it and fails
//!   with `XAmzContentSHA256Mismatch` (before acknowledging) if it differs.
//! - For `PayloadCheck::Chunked` the handler wraps the body stream with [`decode_chunked`],
//!   which yields the decoded payload bytes, verifies every chunk signature (signed
//!   modes) and the trailing checksum (trailer modes), and ends with an error on any
//!   mismatch or truncation — the handler must not commit a write whose stream errored.
//! - [`checksum`] holds the incremental CRC32 / CRC32C / CRC64NVME / SHA-1 / SHA-256 /
//!   MD5 hashers that handlers also use for `x-amz-checksum-*` and `Content-MD5` headers.

pub mod checksum;
pub mod chunked;
pub mod sigv4;

pub use chunked::{ChunkedMode, decode_chunked};
pub use sigv4::{AuthContext, PayloadCheck, SecretKey, authenticate, payload_check_without_auth, presign_url};
