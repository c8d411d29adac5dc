//! Integration tests: the in-process `Cluster` (1 metad, 3 blobd, 2 gateways on port 0)
//! driven through the official aws-sdk-s3 and etcd-client. With `AETHER_TEST_CATALOG=etcd`
//! the same tests run against a real etcd instead of metad.

mod bad_input;
mod catalog_failover;
mod cluster;
mod cors;
mod faults;
mod listing;
mod multipart;
mod objects;
mod post_object;
mod rebalance;
mod trace;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

/// The S3 error code of a failed SDK call (panics if the call succeeded).
pub fn err_code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code().map(str::to_string).unwrap_or_else(|| format!("<no code: {e:?}>")),
    }
}

pub use aether_tests::pattern;

pub async fn body_bytes(out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> Vec<u8> {
    out.body.collect().await.expect("reading body").into_bytes().to_vec()
}

pub fn bs(b: &[u8]) -> ByteStream {
    ByteStream::from(b.to_vec())
}
