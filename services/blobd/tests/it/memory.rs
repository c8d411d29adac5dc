use aether_proto::blob::v1::{PutCommit, PutHeader, PutRequest, get_response, put_request};
use md5::{Digest, Md5};

use crate::harness::*;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const MIB: usize = 1 << 20;
const TOTAL_MIB: usize = 100;

const CHILD_ENV: &str = "BLOBD_IT_RSS_CHILD";

/// Other tests run in parallel threads of the same process and would blur VmRSS: the
/// measurement runs alone, in a child process running just this test.
#[test]
fn streamed_100_mib_put_get_keeps_rss_flat() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(measure());
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "memory::streamed_100_mib_put_get_keeps_rss_flat", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the measuring child failed");
    assert!(stdout.contains("VmRSS before"), "the child did not measure");
}

async fn measure() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    // Warm up (channels, pools, allocator) before measuring.
    put(&mut c, "b", "warm", ver(1, "w"), &body(4 * MIB, 1)).await;
    get(&mut c, get_req("b", "warm")).await.unwrap();
    let before = rss_kib();

    let chunk = body(MIB, 7);
    let expected_md5 = {
        let mut h = Md5::new();
        for _ in 0..TOTAL_MIB {
            h.update(&chunk);
        }
        hex::encode(h.finalize())
    };
    let header = PutRequest {
        msg: Some(put_request::Msg::Header(PutHeader {
            meta: Some(meta("b", "big", ver(2, "w"))),
            verbatim: false,
            heal: false,
        })),
    };
    let commit = PutRequest {
        msg: Some(put_request::Msg::Commit(PutCommit {
            size: (TOTAL_MIB * MIB) as u64,
            md5_hex: expected_md5.clone(),
            ..Default::default()
        })),
    };
    let chunk2 = chunk.clone();
    let body_stream = futures::stream::iter(0..TOTAL_MIB)
        .map(move |_| PutRequest { msg: Some(put_request::Msg::Chunk(chunk2.clone().into())) });
    let stream = futures::stream::iter([header]).chain(body_stream).chain(futures::stream::iter([commit]));
    let r = c.put(stream).await.unwrap().into_inner();
    assert!(r.applied);
    let after_put = rss_kib();

    let mut s = c.get(get_req("b", "big")).await.unwrap().into_inner();
    let mut h = Md5::new();
    let mut n = 0usize;
    while let Some(m) = s.message().await.unwrap() {
        match m.msg {
            Some(get_response::Msg::Meta(m)) => assert_eq!(m.size, (TOTAL_MIB * MIB) as u64),
            Some(get_response::Msg::Chunk(c)) => {
                n += c.len();
                h.update(&c);
            }
            None => panic!("empty message"),
        }
    }
    assert_eq!(n, TOTAL_MIB * MIB);
    assert_eq!(hex::encode(h.finalize()), expected_md5);
    let after_get = rss_kib();
    println!(
        "VmRSS before {before} KiB, after put {after_put} KiB (+{} KiB), after get {after_get} KiB (+{} KiB)",
        after_put.saturating_sub(before),
        after_get.saturating_sub(before)
    );
    assert!(after_put.saturating_sub(before) < 64 * 1024, "put grew RSS too much");
    assert!(after_get.saturating_sub(before) < 64 * 1024, "get grew RSS too much");
    node.stop().await;
}

use futures::StreamExt;
