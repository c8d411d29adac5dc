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
    // The object's absolute URL, as S3 gives it.
    assert_eq!(done.location(), Some(format!("{}/mpu/obj", c.endpoint(0)).as_str()));

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

/// UploadPartCopy: parts copied from ranges of an object and from a whole object (through
/// a second bucket), completed into objects with the right bytes; the part ETags are the
/// MD5s of the copied bytes; range, upload and source errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_part_copy_ranges_whole_objects_and_errors() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("pcsrc").send().await?;
    s3.create_bucket().bucket("pcdst").send().await?;
    let src = pattern(12 * MIB + 5, 11);
    s3.put_object().bucket("pcsrc").key("big src").body(bs(&src)).send().await?;
    let source = "pcsrc/big%20src";
    let complete = |key: &'static str, id: String, etags: Vec<String>| {
        let s3 = s3.clone();
        async move {
            let parts = etags
                .iter()
                .enumerate()
                .map(|(i, e)| CompletedPart::builder().part_number(i as i32 + 1).e_tag(e).build())
                .collect();
            s3.complete_multipart_upload()
                .bucket("pcdst")
                .key(key)
                .upload_id(id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
        }
    };

    // Two ranges that cover the source.
    let id = s3.create_multipart_upload().bucket("pcdst").key("ranged").send().await?.upload_id().unwrap().to_string();
    let split = 6 * MIB;
    let mut etags = Vec::new();
    for (n, (a, b)) in [(1, (0, split - 1)), (2, (split, src.len() - 1))] {
        let r = s3
            .upload_part_copy()
            .bucket("pcdst")
            .key("ranged")
            .upload_id(&id)
            .part_number(n)
            .copy_source(source)
            .copy_source_range(format!("bytes={a}-{b}"))
            .send()
            .await?;
        let etag = r.copy_part_result().and_then(|p| p.e_tag()).unwrap().to_string();
        assert_eq!(etag, format!("\"{}\"", hex::encode(md5::Md5::digest(&src[a..=b]))));
        etags.push(etag);
    }
    complete("ranged", id, etags).await?;
    assert_eq!(body_bytes(s3.get_object().bucket("pcdst").key("ranged").send().await?).await, src);

    // The whole source as part 1, an uploaded tail as part 2.
    let id = s3.create_multipart_upload().bucket("pcdst").key("whole").send().await?.upload_id().unwrap().to_string();
    let r = s3
        .upload_part_copy()
        .bucket("pcdst")
        .key("whole")
        .upload_id(&id)
        .part_number(1)
        .copy_source(source)
        .send()
        .await?;
    let mut etags = vec![r.copy_part_result().and_then(|p| p.e_tag()).unwrap().to_string()];
    let tail = pattern(1000, 12);
    let r = s3.upload_part().bucket("pcdst").key("whole").upload_id(&id).part_number(2).body(bs(&tail)).send().await?;
    etags.push(r.e_tag().unwrap().to_string());
    complete("whole", id.clone(), etags).await?;
    let mut want = src.clone();
    want.extend_from_slice(&tail);
    assert_eq!(body_bytes(s3.get_object().bucket("pcdst").key("whole").send().await?).await, want);

    // Errors: a range past the end or reversed, an unknown upload, a missing source, a
    // failed condition.
    let id = s3.create_multipart_upload().bucket("pcdst").key("err").send().await?.upload_id().unwrap().to_string();
    let copy = |id: &str| s3.upload_part_copy().bucket("pcdst").key("err").upload_id(id).part_number(1);
    let size = src.len();
    for bad in [format!("bytes=0-{size}"), "bytes=10-5".to_string(), "bytes=5-".to_string(), "items=0-1".to_string()] {
        let r = copy(&id).copy_source(source).copy_source_range(&bad).send().await;
        assert_eq!(err_code(r), "InvalidArgument", "{bad}");
    }
    assert_eq!(err_code(copy("no-such-upload").copy_source(source).send().await), "NoSuchUpload");
    assert_eq!(err_code(copy(&id).copy_source("pcsrc/nope").send().await), "NoSuchKey");
    let r = copy(&id).copy_source(source).copy_source_if_match("\"0123\"").send().await;
    assert_eq!(err_code(r), "PreconditionFailed");

    // Copied parts obey the part-size rule too: a 1 KiB copied range as a non-final part.
    let id = s3.create_multipart_upload().bucket("pcdst").key("small").send().await?.upload_id().unwrap().to_string();
    let mut etags = Vec::new();
    for n in 1..=2 {
        let r = s3
            .upload_part_copy()
            .bucket("pcdst")
            .key("small")
            .upload_id(&id)
            .part_number(n)
            .copy_source(source)
            .copy_source_range("bytes=0-1023")
            .send()
            .await?;
        etags.push(r.copy_part_result().and_then(|p| p.e_tag()).unwrap().to_string());
    }
    assert_eq!(err_code(complete("small", id, etags).await), "EntityTooSmall");
    Ok(())
}

/// ListParts: every part with its ETag, size and time, a re-uploaded part replaced, paged
/// by part-number-marker / max-parts; an unknown or aborted upload is NoSuchUpload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_parts_pages_and_replaced_parts() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("lparts").send().await?;
    let id = s3.create_multipart_upload().bucket("lparts").key("k").send().await?.upload_id().unwrap().to_string();
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    let mut want = Vec::new();
    for n in 1..=5 {
        let data = pattern(1000 + n as usize, n as u64);
        let r = s3.upload_part().bucket("lparts").key("k").upload_id(&id).part_number(n).body(bs(&data)).send().await?;
        want.push((n, r.e_tag().unwrap().to_string(), data.len() as i64));
    }
    // Part 2 again, with other bytes: the listing shows the new one.
    let data = pattern(777, 99);
    let r = s3.upload_part().bucket("lparts").key("k").upload_id(&id).part_number(2).body(bs(&data)).send().await?;
    want[1] = (2, r.e_tag().unwrap().to_string(), 777);

    let all = s3.list_parts().bucket("lparts").key("k").upload_id(&id).send().await?;
    let got: Vec<(i32, String, i64)> = all
        .parts()
        .iter()
        .map(|p| (p.part_number().unwrap(), p.e_tag().unwrap().to_string(), p.size().unwrap()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(all.is_truncated(), Some(false));
    for p in all.parts() {
        let t = std::time::SystemTime::try_from(*p.last_modified().unwrap())?;
        assert!(t > started, "part {:?} last modified {t:?}", p.part_number());
    }

    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..5 {
        let page = s3
            .list_parts()
            .bucket("lparts")
            .key("k")
            .upload_id(&id)
            .max_parts(2)
            .set_part_number_marker(marker.clone())
            .send()
            .await?;
        seen.extend(page.parts().iter().map(|p| p.part_number().unwrap()));
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = page.next_part_number_marker().map(str::to_string);
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);

    assert_eq!(err_code(s3.list_parts().bucket("lparts").key("k").upload_id("nope").send().await), "NoSuchUpload");
    s3.abort_multipart_upload().bucket("lparts").key("k").upload_id(&id).send().await?;
    assert_eq!(err_code(s3.list_parts().bucket("lparts").key("k").upload_id(&id).send().await), "NoSuchUpload");
    Ok(())
}

/// GetObject / HeadObject with `partNumber`: each part of a multipart object by itself
/// (206, Content-Range, x-amz-mp-parts-count), a single-part object as its one part,
/// InvalidPartNumber past the last part, and partNumber with Range refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_and_head_by_part_number() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("pnum").send().await?;
    let parts = [pattern(5 * MIB, 21), pattern(5 * MIB + 7, 22), pattern(100, 23)];
    let id = s3.create_multipart_upload().bucket("pnum").key("mp").send().await?.upload_id().unwrap().to_string();
    let mut done = Vec::new();
    for (i, d) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let r = s3.upload_part().bucket("pnum").key("mp").upload_id(&id).part_number(n).body(bs(d)).send().await?;
        done.push(CompletedPart::builder().part_number(n).e_tag(r.e_tag().unwrap()).build());
    }
    s3.complete_multipart_upload()
        .bucket("pnum")
        .key("mp")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await?;
    let total: usize = parts.iter().map(Vec::len).sum();
    let mut start = 0;
    for (i, d) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let got = s3.get_object().bucket("pnum").key("mp").part_number(n).send().await?;
        assert_eq!(got.parts_count(), Some(3));
        assert_eq!(got.content_range(), Some(format!("bytes {start}-{}/{total}", start + d.len() - 1).as_str()));
        assert_eq!(body_bytes(got).await, *d, "part {n}");
        let head = s3.head_object().bucket("pnum").key("mp").part_number(n).send().await?;
        assert_eq!((head.content_length(), head.parts_count()), (Some(d.len() as i64), Some(3)));
        start += d.len();
    }
    let r = s3.get_object().bucket("pnum").key("mp").part_number(4).send().await;
    assert_eq!(err_code(r), "InvalidPartNumber");
    let r = s3.get_object().bucket("pnum").key("mp").part_number(1).range("bytes=0-9").send().await;
    assert_eq!(err_code(r), "InvalidRequest");

    s3.put_object().bucket("pnum").key("single").body(bs(b"one piece")).send().await?;
    let got = s3.get_object().bucket("pnum").key("single").part_number(1).send().await?;
    assert_eq!(got.parts_count(), None);
    assert_eq!(body_bytes(got).await, b"one piece");
    let r = s3.get_object().bucket("pnum").key("single").part_number(2).send().await;
    assert_eq!(err_code(r), "InvalidPartNumber");
    Ok(())
}

/// GetObjectAttributes: only the attributes asked for; the ETag unquoted; a put's checksum
/// as FULL_OBJECT; a multipart object's parts, paged; a missing key; no attributes named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_object_attributes() -> anyhow::Result<()> {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, ObjectAttributes, StorageClass};
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("attrs").send().await?;
    let put = s3
        .put_object()
        .bucket("attrs")
        .key("single")
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .body(bs(b"some bytes"))
        .send()
        .await?;
    let all = [
        ObjectAttributes::Etag,
        ObjectAttributes::Checksum,
        ObjectAttributes::ObjectParts,
        ObjectAttributes::StorageClass,
        ObjectAttributes::ObjectSize,
    ];
    let r = s3
        .get_object_attributes()
        .bucket("attrs")
        .key("single")
        .set_object_attributes(Some(all.to_vec()))
        .send()
        .await?;
    assert_eq!(r.e_tag(), put.e_tag().map(|e| e.trim_matches('"')));
    assert_eq!(r.object_size(), Some(10));
    assert_eq!(r.storage_class(), Some(&StorageClass::Standard));
    let ck = r.checksum().expect("checksum");
    assert_eq!(ck.checksum_crc32_c(), put.checksum_crc32_c());
    assert_eq!(ck.checksum_type(), Some(&ChecksumType::FullObject));
    assert!(r.object_parts().is_none(), "a single-part object has no parts");
    let only = s3
        .get_object_attributes()
        .bucket("attrs")
        .key("single")
        .object_attributes(ObjectAttributes::ObjectSize)
        .send()
        .await?;
    assert_eq!((only.object_size(), only.e_tag(), only.checksum().is_none()), (Some(10), None, true));

    let sizes = [5 * MIB, 5 * MIB, 5 * MIB, 1234];
    let id = s3.create_multipart_upload().bucket("attrs").key("mp").send().await?.upload_id().unwrap().to_string();
    let mut done = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let p = i as i32 + 1;
        let r = s3
            .upload_part()
            .bucket("attrs")
            .key("mp")
            .upload_id(&id)
            .part_number(p)
            .body(bs(&pattern(*n, p as u64)))
            .send()
            .await?;
        done.push(CompletedPart::builder().part_number(p).e_tag(r.e_tag().unwrap()).build());
    }
    s3.complete_multipart_upload()
        .bucket("attrs")
        .key("mp")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await?;
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..4 {
        let r = s3
            .get_object_attributes()
            .bucket("attrs")
            .key("mp")
            .object_attributes(ObjectAttributes::ObjectParts)
            .max_parts(3)
            .set_part_number_marker(marker.clone())
            .send()
            .await?;
        let parts = r.object_parts().expect("parts");
        assert_eq!(parts.total_parts_count(), Some(4));
        seen.extend(parts.parts().iter().map(|p| (p.part_number().unwrap(), p.size().unwrap())));
        if parts.is_truncated() != Some(true) {
            break;
        }
        marker = parts.next_part_number_marker().map(str::to_string);
    }
    let want: Vec<(i32, i64)> = sizes.iter().enumerate().map(|(i, n)| (i as i32 + 1, *n as i64)).collect();
    assert_eq!(seen, want);

    let r =
        s3.get_object_attributes().bucket("attrs").key("nope").object_attributes(ObjectAttributes::Etag).send().await;
    assert_eq!(err_code(r), "NoSuchKey");
    let r = s3.get_object_attributes().bucket("attrs").key("single").send().await;
    assert!(r.is_err(), "no attributes named");
    Ok(())
}

/// ListMultipartUploads: every upload in progress once (each lives on several nodes), in
/// key order, filtered by prefix, paged by key-marker / upload-id-marker; completed and
/// aborted uploads disappear.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_multipart_uploads_prefix_paging_and_lifecycle() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("lmu").send().await?;
    let mut created = Vec::new();
    for key in ["a", "b/1", "b/1", "b/2", "c d"] {
        let id = s3.create_multipart_upload().bucket("lmu").key(key).send().await?.upload_id().unwrap().to_string();
        created.push((key.to_string(), id));
    }
    created.sort();
    let list = |prefix: Option<&str>| {
        let s3 = s3.clone();
        let prefix = prefix.map(str::to_string);
        async move {
            let mut out = Vec::new();
            let (mut km, mut um): (Option<String>, Option<String>) = (None, None);
            for _ in 0..10 {
                let r = s3
                    .list_multipart_uploads()
                    .bucket("lmu")
                    .set_prefix(prefix.clone())
                    .max_uploads(2)
                    .set_key_marker(km.clone())
                    .set_upload_id_marker(um.clone())
                    .send()
                    .await
                    .unwrap();
                for u in r.uploads() {
                    assert!(u.initiated().is_some());
                    out.push((u.key().unwrap().to_string(), u.upload_id().unwrap().to_string()));
                }
                if r.is_truncated() != Some(true) {
                    return out;
                }
                km = r.next_key_marker().map(str::to_string);
                um = r.next_upload_id_marker().map(str::to_string);
            }
            panic!("listing did not end");
        }
    };
    assert_eq!(list(None).await, created);
    let b: Vec<_> = created.iter().filter(|(k, _)| k.starts_with("b/")).cloned().collect();
    assert_eq!(list(Some("b/")).await, b);
    let all = s3.list_multipart_uploads().bucket("lmu").send().await?;
    assert_eq!(all.uploads().len(), 5);
    assert_eq!(all.is_truncated(), Some(false));

    // Abort one, complete another: both leave the listing.
    let (ka, ia) = &created[0];
    s3.abort_multipart_upload().bucket("lmu").key(ka).upload_id(ia).send().await?;
    let (kc, ic) = &created[4];
    let r = s3.upload_part().bucket("lmu").key(kc).upload_id(ic).part_number(1).body(bs(b"tail")).send().await?;
    let part = CompletedPart::builder().part_number(1).e_tag(r.e_tag().unwrap()).build();
    s3.complete_multipart_upload()
        .bucket("lmu")
        .key(kc)
        .upload_id(ic)
        .multipart_upload(CompletedMultipartUpload::builder().parts(part).build())
        .send()
        .await?;
    assert_eq!(list(None).await, created[1..4].to_vec());

    // A delimiter rolls keys up into common prefixes, paged one item at a time without
    // repeating a prefix (a page may end on one; it is the next key-marker).
    for key in ["d/x/1", "d/x/2", "d/y", "e", "f g/h"] {
        s3.create_multipart_upload().bucket("lmu").key(key).send().await?;
    }
    let r = s3.list_multipart_uploads().bucket("lmu").delimiter("/").send().await?;
    let keys: Vec<&str> = r.uploads().iter().filter_map(|u| u.key()).collect();
    let prefixes: Vec<&str> = r.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!((keys, prefixes), (vec!["e"], vec!["b/", "d/", "f g/"]));
    assert_eq!(r.delimiter(), Some("/"));
    let mut seen = Vec::new();
    let (mut km, mut um): (Option<String>, Option<String>) = (None, None);
    for _ in 0..20 {
        let r = s3
            .list_multipart_uploads()
            .bucket("lmu")
            .delimiter("/")
            .max_uploads(1)
            .set_key_marker(km.clone())
            .set_upload_id_marker(um.clone())
            .send()
            .await?;
        seen.extend(r.uploads().iter().filter_map(|u| u.key()).map(|k| format!("upload {k}")));
        seen.extend(r.common_prefixes().iter().filter_map(|p| p.prefix()).map(|p| format!("prefix {p}")));
        if r.is_truncated() != Some(true) {
            break;
        }
        km = r.next_key_marker().map(str::to_string);
        um = r.next_upload_id_marker().map(str::to_string);
    }
    assert_eq!(seen, ["prefix b/", "prefix d/", "upload e", "prefix f g/"]);
    // A key-marker inside a rolled-up prefix skips the rest of it.
    let r = s3.list_multipart_uploads().bucket("lmu").delimiter("/").key_marker("d/x/1").send().await?;
    let keys: Vec<&str> = r.uploads().iter().filter_map(|u| u.key()).collect();
    let prefixes: Vec<&str> = r.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!((keys, prefixes), (vec!["e"], vec!["f g/"]));
    let r = s3.list_multipart_uploads().bucket("lmu").prefix("d/").delimiter("/").send().await?;
    let keys: Vec<&str> = r.uploads().iter().filter_map(|u| u.key()).collect();
    let prefixes: Vec<&str> = r.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!((keys, prefixes), (vec!["d/y"], vec!["d/x/"]));
    Ok(())
}

fn b64(raw: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn crc_b64(alg: crc_fast::CrcAlgorithm, data: &[u8]) -> String {
    let v = crc_fast::checksum(alg, data);
    if matches!(alg, crc_fast::CrcAlgorithm::Crc64Nvme) {
        b64(&v.to_be_bytes())
    } else {
        b64(&(v as u32).to_be_bytes())
    }
}

/// Multipart checksums: COMPOSITE (a CRC32 of the parts' CRC32s, `-N`) and FULL_OBJECT
/// (the CRC64NVME of the whole body, combined from the parts'), declared at creation,
/// computed per part, listed by ListParts, checked on completion, returned in checksum mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_checksums_composite_and_full_object() -> anyhow::Result<()> {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType};
    use crc_fast::CrcAlgorithm as C;
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("mpsum").send().await?;
    let (p1, p2) = (pattern(5 << 20, 1), pattern(1000, 2));

    // COMPOSITE CRC32.
    let up = s3
        .create_multipart_upload()
        .bucket("mpsum")
        .key("comp")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await?;
    assert_eq!(up.checksum_algorithm(), Some(&ChecksumAlgorithm::Crc32));
    assert_eq!(up.checksum_type(), Some(&ChecksumType::Composite));
    let id = up.upload_id().unwrap_or_default().to_string();
    let mut done = Vec::new();
    for (n, body) in [(1, &p1), (2, &p2)] {
        let r = s3
            .upload_part()
            .bucket("mpsum")
            .key("comp")
            .upload_id(&id)
            .part_number(n)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(bs(body))
            .send()
            .await?;
        assert_eq!(r.checksum_crc32(), Some(crc_b64(C::Crc32IsoHdlc, body).as_str()), "part {n}");
        done.push((n, r.e_tag().unwrap_or_default().to_string(), crc_b64(C::Crc32IsoHdlc, body)));
    }
    // A part in another algorithm than the declared one is refused.
    let r = s3
        .upload_part()
        .bucket("mpsum")
        .key("comp")
        .upload_id(&id)
        .part_number(3)
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .body(bs(b"x"))
        .send()
        .await;
    assert_eq!(err_code(r), "InvalidRequest");
    let listed = s3.list_parts().bucket("mpsum").key("comp").upload_id(&id).send().await?;
    assert_eq!(listed.checksum_algorithm(), Some(&ChecksumAlgorithm::Crc32));
    let sums: Vec<Option<&str>> = listed.parts().iter().map(|p| p.checksum_crc32()).collect();
    assert_eq!(sums, vec![Some(done[0].2.as_str()), Some(done[1].2.as_str())]);
    let parts = |wrong: bool| {
        let mut b = CompletedMultipartUpload::builder();
        for (n, etag, sum) in &done {
            let sum = if wrong && *n == 2 { crc_b64(C::Crc32IsoHdlc, b"other") } else { sum.clone() };
            b = b.parts(CompletedPart::builder().part_number(*n).e_tag(etag).checksum_crc32(sum).build());
        }
        b.build()
    };
    let r =
        s3.complete_multipart_upload().bucket("mpsum").key("comp").upload_id(&id).multipart_upload(parts(true)).send();
    assert_eq!(err_code(r.await), "InvalidPart");
    let out = s3
        .complete_multipart_upload()
        .bucket("mpsum")
        .key("comp")
        .upload_id(&id)
        .multipart_upload(parts(false))
        .send()
        .await?;
    let raw: Vec<u8> =
        [&p1, &p2].iter().flat_map(|b| crc_fast::checksum(C::Crc32IsoHdlc, b).to_be_bytes()[4..].to_vec()).collect();
    let composite = format!("{}-2", crc_b64(C::Crc32IsoHdlc, &raw));
    assert_eq!(out.checksum_crc32(), Some(composite.as_str()));
    assert_eq!(out.checksum_type(), Some(&ChecksumType::Composite));
    let head = s3.head_object().bucket("mpsum").key("comp").checksum_mode(ChecksumMode::Enabled).send().await?;
    assert_eq!(head.checksum_crc32(), Some(composite.as_str()));
    assert_eq!(head.checksum_type(), Some(&ChecksumType::Composite));
    // Each part keeps its own checksum: GetObjectAttributes lists them, and a part read by
    // number (checksum mode) carries its part's — which the SDK checks against the bytes.
    let attrs = s3
        .get_object_attributes()
        .bucket("mpsum")
        .key("comp")
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::ObjectParts)
        .send()
        .await?;
    let part_sums: Vec<(Option<i32>, Option<&str>)> = attrs
        .object_parts()
        .map(|p| p.parts().iter().map(|p| (p.part_number(), p.checksum_crc32())).collect())
        .unwrap_or_default();
    assert_eq!(part_sums, vec![(Some(1), Some(done[0].2.as_str())), (Some(2), Some(done[1].2.as_str()))]);
    let head2 =
        s3.head_object().bucket("mpsum").key("comp").part_number(2).checksum_mode(ChecksumMode::Enabled).send().await?;
    assert_eq!(head2.checksum_crc32(), Some(done[1].2.as_str()));
    let got2 =
        s3.get_object().bucket("mpsum").key("comp").part_number(2).checksum_mode(ChecksumMode::Enabled).send().await?;
    assert_eq!(got2.checksum_crc32(), Some(done[1].2.as_str()));
    assert_eq!(body_bytes(got2).await, p2);

    // FULL_OBJECT CRC64NVME: the whole body's CRC, which the SDK checks on GET.
    let up = s3
        .create_multipart_upload()
        .bucket("mpsum")
        .key("full")
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .send()
        .await?;
    assert_eq!(up.checksum_type(), Some(&ChecksumType::FullObject));
    let id = up.upload_id().unwrap_or_default().to_string();
    let mut b = CompletedMultipartUpload::builder();
    for (n, body) in [(1, &p1), (2, &p2)] {
        let r = s3
            .upload_part()
            .bucket("mpsum")
            .key("full")
            .upload_id(&id)
            .part_number(n)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .body(bs(body))
            .send()
            .await?;
        b = b.parts(CompletedPart::builder().part_number(n).e_tag(r.e_tag().unwrap_or_default()).build());
    }
    let out = s3
        .complete_multipart_upload()
        .bucket("mpsum")
        .key("full")
        .upload_id(&id)
        .multipart_upload(b.build())
        .send()
        .await?;
    let whole: Vec<u8> = [p1.as_slice(), p2.as_slice()].concat();
    let full = crc_b64(C::Crc64Nvme, &whole);
    assert_eq!(out.checksum_crc64_nvme(), Some(full.as_str()));
    assert_eq!(out.checksum_type(), Some(&ChecksumType::FullObject));
    let got = s3.get_object().bucket("mpsum").key("full").checksum_mode(ChecksumMode::Enabled).send().await?;
    assert_eq!(got.checksum_crc64_nvme(), Some(full.as_str()));
    assert_eq!(body_bytes(got).await, whole);

    // Declarations S3 refuses.
    let r = s3
        .create_multipart_upload()
        .bucket("mpsum")
        .key("bad")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_type(ChecksumType::FullObject)
        .send()
        .await;
    assert_eq!(err_code(r), "InvalidRequest");
    Ok(())
}

/// S3's upper bound: an upload of 10,000 parts completes, lists in ten pages and reads back
/// whole and by part number; part 10,001 is refused. The gateways' minimum part size is
/// lowered to one byte so the test moves 108 KiB instead of 48.8 GiB (the 5 MiB rule itself
/// is tested above).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_parts() -> anyhow::Result<()> {
    use futures::{StreamExt as _, TryStreamExt as _};
    const PARTS: i32 = 10_000;
    let c = Cluster::start(ClusterOptions { min_part_size: 1, ..ClusterOptions::default() }).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("many").send().await?;
    let id = s3.create_multipart_upload().bucket("many").key("k").send().await?.upload_id.expect("upload id");
    let data = |n: i32| format!("part {n:05};").into_bytes();

    let refused = s3.upload_part().bucket("many").key("k").upload_id(&id).part_number(PARTS + 1).body(bs(b"x")).send();
    assert_eq!(err_code(refused.await), "InvalidArgument");

    let mut etags: Vec<(i32, String)> = futures::stream::iter(1..=PARTS)
        .map(|n| {
            let s3 = c.s3(n as usize % 2);
            let id = id.clone();
            async move {
                let out = s3
                    .upload_part()
                    .bucket("many")
                    .key("k")
                    .upload_id(id)
                    .part_number(n)
                    .body(bs(&data(n)))
                    .send()
                    .await?;
                anyhow::Ok((n, out.e_tag.expect("part etag")))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    etags.sort();

    // ListParts: ten full pages, in order, then the end.
    let mut listed = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s3.list_parts().bucket("many").key("k").upload_id(&id).set_part_number_marker(marker).send().await?;
        pages += 1;
        listed.extend(page.parts().iter().map(|p| (p.part_number.unwrap_or(0), p.e_tag.clone().unwrap_or_default())));
        if !page.is_truncated.unwrap_or(false) {
            break;
        }
        marker = page.next_part_number_marker;
        assert!(pages < 20, "ListParts does not end");
    }
    assert_eq!(pages, 10);
    assert_eq!(listed, etags);

    let parts: Vec<CompletedPart> =
        etags.iter().map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(e).build()).collect();
    let done = s3
        .complete_multipart_upload()
        .bucket("many")
        .key("k")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await?;
    let mut md5s = Vec::new();
    for n in 1..=PARTS {
        md5s.extend_from_slice(&md5::Md5::digest(data(n)));
    }
    let want_etag = format!("\"{}-{PARTS}\"", hex::encode(md5::Md5::digest(&md5s)));
    assert_eq!(done.e_tag(), Some(want_etag.as_str()));

    let whole: Vec<u8> = (1..=PARTS).flat_map(data).collect();
    let got = c.s3(1).get_object().bucket("many").key("k").send().await?;
    assert_eq!(got.e_tag(), Some(want_etag.as_str()));
    assert_eq!(body_bytes(got).await, whole);
    let last = s3.get_object().bucket("many").key("k").part_number(PARTS).send().await?;
    assert_eq!(last.parts_count(), Some(PARTS));
    assert_eq!(body_bytes(last).await, data(PARTS));
    let head = s3.head_object().bucket("many").key("k").part_number(5_000).send().await?;
    assert_eq!(head.content_length(), Some(data(5_000).len() as i64));
    Ok(())
}

/// As on S3, uploads in progress do not keep a bucket from being deleted: the delete ends
/// them on every node, and a re-created bucket of the same name does not see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_bucket_ends_uploads_in_progress() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("mpu-gone").send().await?;
    let up = s3.create_multipart_upload().bucket("mpu-gone").key("k").send().await?;
    let id = up.upload_id().expect("upload id").to_string();
    s3.upload_part()
        .bucket("mpu-gone")
        .key("k")
        .upload_id(&id)
        .part_number(1)
        .body(bs(&pattern(MIB, 7)))
        .send()
        .await?;

    s3.delete_bucket().bucket("mpu-gone").send().await?;
    let r = s3.list_multipart_uploads().bucket("mpu-gone").send().await;
    assert_eq!(err_code(r), "NoSuchBucket");

    s3.create_bucket().bucket("mpu-gone").send().await?;
    let listed = s3.list_multipart_uploads().bucket("mpu-gone").send().await?;
    assert!(listed.uploads().is_empty(), "the old incarnation's upload is gone: {:?}", listed.uploads());
    let r = s3.upload_part().bucket("mpu-gone").key("k").upload_id(&id).part_number(2).body(bs(b"x")).send().await;
    assert_eq!(err_code(r), "NoSuchUpload");
    let r = s3
        .complete_multipart_upload()
        .bucket("mpu-gone")
        .key("k")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(CompletedPart::builder().part_number(1).e_tag("\"x\"").build())
                .build(),
        )
        .send()
        .await;
    assert_eq!(err_code(r), "NoSuchUpload");
    Ok(())
}

/// A CompleteMultipartUpload retried after it succeeded (its answer lost, as an SDK retries
/// on a timeout) gets the first answer, as S3 gives: the same ETag and checksum, through
/// either gateway, also with a replica down. A retry listing other parts, a retry after the
/// key was overwritten, and a completion of an aborted upload answer NoSuchUpload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_completion_gets_the_first_answer() -> anyhow::Result<()> {
    use aws_sdk_s3::types::ChecksumAlgorithm;
    let mut c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("again").send().await?;
    let (p1, p2) = (pattern(5 * MIB, 7), pattern(1000, 8));
    let up = s3
        .create_multipart_upload()
        .bucket("again")
        .key("obj")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await?;
    let id = up.upload_id().unwrap_or_default().to_string();
    let mut parts = Vec::new();
    for (n, body) in [(1, &p1), (2, &p2)] {
        let r = s3
            .upload_part()
            .bucket("again")
            .key("obj")
            .upload_id(&id)
            .part_number(n)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(bs(body))
            .send()
            .await?;
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(r.e_tag().unwrap_or_default())
                .checksum_crc32(r.checksum_crc32().unwrap_or_default())
                .build(),
        );
    }
    let gateways = [c.s3(0), c.s3(1)];
    let complete = |gw: usize, parts: Vec<CompletedPart>| {
        gateways[gw]
            .complete_multipart_upload()
            .bucket("again")
            .key("obj")
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
    };
    let first = complete(0, parts.clone()).await?;
    assert!(first.e_tag().is_some_and(|e| e.ends_with("-2\"")), "{:?}", first.e_tag());
    assert!(first.checksum_crc32().is_some());
    for gw in [0, 1] {
        let again = complete(gw, parts.clone()).await?;
        assert_eq!(again.e_tag(), first.e_tag(), "gateway {gw}");
        assert_eq!(again.checksum_crc32(), first.checksum_crc32(), "gateway {gw}");
        assert_eq!(again.location(), Some(format!("{}/again/obj", c.endpoint(gw)).as_str()), "gateway {gw}");
    }
    // Another part list is not the completion that happened.
    assert_eq!(err_code(complete(1, parts[..1].to_vec()).await), "NoSuchUpload");
    let got = s3.get_object().bucket("again").key("obj").send().await?;
    assert_eq!(got.e_tag(), first.e_tag());
    assert_eq!(body_bytes(got).await, [p1.as_slice(), p2.as_slice()].concat());

    // With one replica down, a quorum still holds the object: the same answer.
    c.stop_blobd(2).await?;
    assert_eq!(complete(1, parts.clone()).await?.e_tag(), first.e_tag());
    c.start_blobd(2).await?;
    c.wait_alive(3).await?;

    // Overwritten since: no longer that completion's object.
    s3.put_object().bucket("again").key("obj").body(bs(b"newer")).send().await?;
    assert_eq!(err_code(complete(0, parts.clone()).await), "NoSuchUpload");

    // An aborted upload was not completed.
    let up = s3.create_multipart_upload().bucket("again").key("gone").send().await?;
    let gone = up.upload_id().unwrap_or_default().to_string();
    let r = s3.upload_part().bucket("again").key("gone").upload_id(&gone).part_number(1).body(bs(b"x")).send().await?;
    s3.abort_multipart_upload().bucket("again").key("gone").upload_id(&gone).send().await?;
    let r = s3
        .complete_multipart_upload()
        .bucket("again")
        .key("gone")
        .upload_id(&gone)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(CompletedPart::builder().part_number(1).e_tag(r.e_tag().unwrap_or_default()).build())
                .build(),
        )
        .send()
        .await;
    assert_eq!(err_code(r), "NoSuchUpload");
    c.stop_all().await
}
