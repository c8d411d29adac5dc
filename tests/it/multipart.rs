use aether_tests::{Cluster, ClusterOptions};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use md5::Digest;

use crate::{body_bytes, bs, err_code, pattern};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_upload_complete_abort_and_errors() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("mpu").send().await?;

    let parts_data = [pattern(5 * MIB, 1), pattern(5 * MIB, 2), pattern(MIB + 3, 3)];
    let up = s3.create_multipart_upload().bucket("mpu").key("obj").content_type("text/x-mpu").send().await?;
    let id = up.upload_id().expect("upload id").to_string();
    let mut completed = Vec::new();
    let mut md5s = Vec::new();
    for (i, d) in parts_data.iter().enumerate() {
        let n = i as i32 + 1;
        // Upload part 2 twice: the second upload replaces the first.
        if n == 2 {
            s3.upload_part()
                .bucket("mpu")
                .key("obj")
                .upload_id(&id)
                .part_number(n)
                .body(bs(&pattern(5 * MIB, 99)))
                .send()
                .await?;
        }
        // Parts go through the other gateway too: the gateway holds no state.
        let out =
            c.s3(i % 2).upload_part().bucket("mpu").key("obj").upload_id(&id).part_number(n).body(bs(d)).send().await?;
        let md5 = md5::Md5::digest(d);
        assert_eq!(out.e_tag(), Some(format!("\"{}\"", hex::encode(md5)).as_str()));
        md5s.extend_from_slice(&md5);
        completed.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap_or_default()).build());
    }

    // Out of order and unknown parts are refused.
    let reversed: Vec<_> = completed.iter().rev().cloned().collect();
    let r = s3
        .complete_multipart_upload()
        .bucket("mpu")
        .key("obj")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(reversed)).build())
        .send()
        .await;
    assert_eq!(err_code(r), "InvalidPartOrder");
    let bogus = vec![CompletedPart::builder().part_number(1).e_tag("\"00000000000000000000000000000000\"").build()];
    let r = s3
        .complete_multipart_upload()
        .bucket("mpu")
        .key("obj")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(bogus)).build())
        .send()
        .await;
    assert_eq!(err_code(r), "InvalidPart");

    let done = s3
        .complete_multipart_upload()
        .bucket("mpu")
        .key("obj")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
        .send()
        .await?;
    let want_etag = format!("\"{}-3\"", hex::encode(md5::Md5::digest(&md5s)));
    assert_eq!(done.e_tag(), Some(want_etag.as_str()));

    let whole: Vec<u8> = parts_data.concat();
    let got = c.s3(1).get_object().bucket("mpu").key("obj").send().await?;
    assert_eq!(got.e_tag(), Some(want_etag.as_str()));
    assert_eq!(got.content_type(), Some("text/x-mpu"));
    assert_eq!(body_bytes(got).await, whole);
    // A range across the part 1 / part 2 boundary.
    let r = s3
        .get_object()
        .bucket("mpu")
        .key("obj")
        .range(format!("bytes={}-{}", 5 * MIB - 10, 5 * MIB + 9))
        .send()
        .await?;
    assert_eq!(body_bytes(r).await, whole[5 * MIB - 10..5 * MIB + 10]);
    // Completed uploads are gone.
    let r = s3.upload_part().bucket("mpu").key("obj").upload_id(&id).part_number(1).body(bs(b"x")).send().await;
    assert_eq!(err_code(r), "NoSuchUpload");

    // EntityTooSmall: a non-final part under 5 MiB.
    let up = s3.create_multipart_upload().bucket("mpu").key("small").send().await?;
    let id2 = up.upload_id().unwrap_or_default().to_string();
    let mut parts = Vec::new();
    for n in 1..=2 {
        let out = s3
            .upload_part()
            .bucket("mpu")
            .key("small")
            .upload_id(&id2)
            .part_number(n)
            .body(bs(&pattern(1000, n as u64)))
            .send()
            .await?;
        parts.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap_or_default()).build());
    }
    let r = s3
        .complete_multipart_upload()
        .bucket("mpu")
        .key("small")
        .upload_id(&id2)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await;
    assert_eq!(err_code(r), "EntityTooSmall");

    // Abort, then the upload is gone and the bucket can be emptied and deleted.
    s3.abort_multipart_upload().bucket("mpu").key("small").upload_id(&id2).send().await?;
    assert_eq!(
        err_code(s3.abort_multipart_upload().bucket("mpu").key("small").upload_id(&id2).send().await),
        "NoSuchUpload"
    );
    assert_eq!(err_code(s3.get_object().bucket("mpu").key("small").send().await), "NoSuchKey");
    s3.delete_object().bucket("mpu").key("obj").send().await?;
    s3.delete_bucket().bucket("mpu").send().await?;
    Ok(())
}
