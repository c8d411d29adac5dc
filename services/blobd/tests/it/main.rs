//! blobd integration tests: `run` on 127.0.0.1:0 with a tempdir, driven through the
//! generated `BlobServiceClient` over a real socket. metad is not running (its
//! endpoint is a closed port), so registration keeps retrying meanwhile.

mod harness;
mod lifecycle;
mod list;
mod memory;
mod multipart;
mod registration;
mod storage;
