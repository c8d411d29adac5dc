"""boto3 against aether: a second, independent S3 client next to the Rust aws-sdk-s3 tests.

The assertions state what Amazon S3 answers (status, error code, headers, body), except
where aether's documented choices differ and a comment says so (BucketAlreadyOwnedByYou in
us-east-1, 501 NotImplemented for operations it does not have). Run with
tests/compat/run.sh, which starts `aether server` and exports the endpoint and credentials.
Features docs/status.md lists as not built yet are not tested here.
"""

import base64
import datetime
import hashlib
import io
import json
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
import zlib

import pytest
from awscrt import checksums as crt_checksums
from boto3.s3.transfer import TransferConfig
from botocore.compat import unquote_str
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, StreamingChecksumBody

from conftest import empty_and_delete, endpoint, force_trailer, make_client, poll, unique_name

MiB = 1024 * 1024


# --- helpers -------------------------------------------------------------------------


def error_of(excinfo):
    """(HTTP status, S3 error code) of a ClientError."""
    r = excinfo.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


def status(resp):
    return resp["ResponseMetadata"]["HTTPStatusCode"]


def headers(resp):
    return resp["ResponseMetadata"]["HTTPHeaders"]


def data_of(size, seed):
    return random.Random(seed).randbytes(size)


def md5_etag(data):
    return '"%s"' % hashlib.md5(data).hexdigest()


def multipart_etag(parts):
    joined = b"".join(hashlib.md5(p).digest() for p in parts)
    return '"%s-%d"' % (hashlib.md5(joined).hexdigest(), len(parts))


def b64(raw):
    return base64.b64encode(raw).decode()


CHECKSUMS = {
    "CRC32": lambda d: b64(zlib.crc32(d).to_bytes(4, "big")),
    "CRC32C": lambda d: b64(crt_checksums.crc32c(d).to_bytes(4, "big")),
    "CRC64NVME": lambda d: b64(crt_checksums.crc64nvme(d).to_bytes(8, "big")),
    "SHA1": lambda d: b64(hashlib.sha1(d).digest()),
    "SHA256": lambda d: b64(hashlib.sha256(d).digest()),
}


def put(s3, bucket, key, body=b"", **kw):
    return s3.put_object(Bucket=bucket, Key=key, Body=body, **kw)


def keys_of(resp):
    return [o["Key"] for o in resp.get("Contents", [])]


def prefixes_of(resp):
    return [p["Prefix"] for p in resp.get("CommonPrefixes", [])]


# --- buckets -------------------------------------------------------------------------


def test_bucket_lifecycle(s3):
    name = unique_name()
    resp = s3.create_bucket(Bucket=name)
    assert status(resp) == 200
    assert resp["Location"] == f"/{name}"

    resp = s3.head_bucket(Bucket=name)
    assert status(resp) == 200
    assert headers(resp)["x-amz-bucket-region"] == "us-east-1"

    listed = {b["Name"]: b for b in s3.list_buckets()["Buckets"]}
    assert name in listed
    created = listed[name]["CreationDate"]
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - created).total_seconds()) < 300

    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] is None

    resp = s3.delete_bucket(Bucket=name)
    assert status(resp) == 204
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket=name)
    assert error_of(e) == (404, "404")
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=name)
    assert error_of(e) == (404, "NoSuchBucket")


def test_create_existing_bucket(s3, bucket):
    put(s3, bucket, "k", b"v")
    # S3 answers this in every region but us-east-1, which keeps a legacy 200 for the owner.
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=bucket)
    assert error_of(e) == (409, "BucketAlreadyOwnedByYou")
    # The bucket and its contents are untouched.
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


@pytest.mark.parametrize("name", ["ab", "Upper-Case", "under_score", "-leading", "a..b", "192.168.1.1"])
def test_invalid_bucket_name(s3, name):
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name)
    assert error_of(e) == (400, "InvalidBucketName")


def test_no_such_bucket(s3):
    missing = unique_name("missing")
    calls = [
        lambda: s3.get_object(Bucket=missing, Key="k"),
        lambda: s3.put_object(Bucket=missing, Key="k", Body=b"x"),
        lambda: s3.list_objects_v2(Bucket=missing),
        lambda: s3.list_objects(Bucket=missing),
        lambda: s3.delete_object(Bucket=missing, Key="k"),
        lambda: s3.get_bucket_location(Bucket=missing),
        lambda: s3.create_multipart_upload(Bucket=missing, Key="k"),
    ]
    for call in calls:
        with pytest.raises(ClientError) as e:
            call()
        assert error_of(e) == (404, "NoSuchBucket")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=missing, Key="k")
    assert error_of(e) == (404, "404")


def test_delete_non_empty_bucket(s3, bucket):
    put(s3, bucket, "keep", b"data")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=bucket)
    assert error_of(e) == (409, "BucketNotEmpty")
    assert status(s3.head_bucket(Bucket=bucket)) == 200
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"data"


def test_write_after_delete_bucket_and_recreate(s3):
    name = unique_name()
    s3.create_bucket(Bucket=name)
    try:
        put(s3, name, "old", b"old")
        s3.delete_object(Bucket=name, Key="old")
        assert status(s3.delete_bucket(Bucket=name)) == 204

        # Writes right after the delete find no bucket. A client of its own, so that the
        # refused PUT's connection is not reused below: aether at times keeps a connection
        # open after answering an `Expect: 100-continue` PUT without reading its body, and
        # then reads the next request's first bytes as that body (a bare 400).
        late = make_client()
        with pytest.raises(ClientError) as e:
            late.create_multipart_upload(Bucket=name, Key="late-upload")
        assert error_of(e) == (404, "NoSuchBucket")
        with pytest.raises(ClientError) as e:
            late.put_object(Bucket=name, Key="late", Body=b"late")
        assert error_of(e) == (404, "NoSuchBucket")

        # The same name, created again, is a new empty bucket: only what is written now.
        assert status(s3.create_bucket(Bucket=name)) == 200
        put(s3, name, "new", b"new")
        assert keys_of(s3.list_objects_v2(Bucket=name)) == ["new"]
        assert "Uploads" not in s3.list_multipart_uploads(Bucket=name)
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket=name, Key="late")
        assert error_of(e) == (404, "NoSuchKey")
        assert s3.get_object(Bucket=name, Key="new")["Body"].read() == b"new"
    finally:
        empty_and_delete(s3, name)


# --- objects -------------------------------------------------------------------------


def test_put_get_head_object_with_metadata(s3, bucket):
    body = b"hello, aether\n" * 100
    resp = put(
        s3,
        bucket,
        "docs/hello.txt",
        body,
        ContentType="text/plain; charset=utf-8",
        Metadata={"color": "blue", "Mixed-Case": "Value With Spaces"},
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="hello.txt"',
        ContentLanguage="en",
        Expires=datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    )
    assert status(resp) == 200
    assert resp["ETag"] == md5_etag(body)
    # botocore sent x-amz-checksum-crc32 by default; S3 echoes it.
    assert resp["ChecksumCRC32"] == CHECKSUMS["CRC32"](body)

    head = s3.head_object(Bucket=bucket, Key="docs/hello.txt")
    assert status(head) == 200
    assert head["ContentLength"] == len(body)
    assert head["ContentType"] == "text/plain; charset=utf-8"
    assert head["ETag"] == md5_etag(body)
    assert head["Metadata"] == {"color": "blue", "mixed-case": "Value With Spaces"}
    assert head["CacheControl"] == "max-age=60"
    assert head["ContentDisposition"] == 'attachment; filename="hello.txt"'
    assert head["ContentLanguage"] == "en"
    assert head["ExpiresString"] == "Wed, 02 Jan 2030 03:04:05 GMT"
    assert head["AcceptRanges"] == "bytes"
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - head["LastModified"]).total_seconds()) < 300

    got = s3.get_object(Bucket=bucket, Key="docs/hello.txt")
    assert status(got) == 200
    assert got["Body"].read() == body
    assert got["ContentLength"] == len(body)
    assert got["ContentType"] == "text/plain; charset=utf-8"
    assert got["ETag"] == md5_etag(body)
    assert got["Metadata"] == {"color": "blue", "mixed-case": "Value With Spaces"}
    assert got["LastModified"] == head["LastModified"]
    assert "x-amz-request-id" in headers(got)


def test_default_content_type_and_empty_object(s3, bucket):
    resp = put(s3, bucket, "empty")
    assert resp["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    got = s3.get_object(Bucket=bucket, Key="empty")
    assert got["ContentLength"] == 0
    assert got["Body"].read() == b""
    assert got["ContentType"] == "binary/octet-stream"


def test_overwrite_and_delete_object(s3, bucket):
    put(s3, bucket, "k", b"first")
    put(s3, bucket, "k", b"second version")
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"second version"
    assert got["ETag"] == md5_etag(b"second version")

    assert status(s3.delete_object(Bucket=bucket, Key="k")) == 204
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k")
    assert error_of(e) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="k")
    assert error_of(e) == (404, "404")
    # Deleting a key that does not exist succeeds, as in S3.
    assert status(s3.delete_object(Bucket=bucket, Key="never-existed")) == 204


def test_keys_with_special_characters(s3, bucket):
    keys = ["dir/sub dir/ü+%&=?.txt", "a:b;c,d@e$f", "tilde~and'quote", "spaces  double", "日本語/キー"]
    for i, key in enumerate(keys):
        put(s3, bucket, key, f"body {i}".encode())
    for i, key in enumerate(keys):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == f"body {i}".encode()
    # boto3 lists with encoding-type=url and decodes the keys itself.
    listed = keys_of(s3.list_objects_v2(Bucket=bucket))
    assert listed == sorted(keys, key=lambda k: k.encode())
    assert keys_of(s3.list_objects(Bucket=bucket)) == listed


def test_range_get(s3, bucket):
    body = bytes(range(256)) * 4
    put(s3, bucket, "r", body)
    cases = [
        ("bytes=2-5", 2, 5),
        ("bytes=1000-", 1000, 1023),
        ("bytes=-10", 1014, 1023),
        ("bytes=1020-5000", 1020, 1023),
        ("bytes=0-0", 0, 0),
    ]
    for header, first, last in cases:
        got = s3.get_object(Bucket=bucket, Key="r", Range=header)
        assert status(got) == 206, header
        assert got["ContentRange"] == f"bytes {first}-{last}/1024", header
        assert got["ContentLength"] == last - first + 1, header
        assert got["Body"].read() == body[first : last + 1], header
        assert got["ETag"] == md5_etag(body)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="r", Range="bytes=1024-")
    assert error_of(e) == (416, "InvalidRange")
    assert headers(e.value.response)["content-range"] == "bytes */1024"


def test_conditional_get_and_head(s3, bucket):
    put(s3, bucket, "c", b"conditional")
    head = s3.head_object(Bucket=bucket, Key="c")
    etag, modified = head["ETag"], head["LastModified"]
    day = datetime.timedelta(days=1)
    other = '"00000000000000000000000000000000"'

    def get(**kw):
        return s3.get_object(Bucket=bucket, Key="c", **kw)

    assert get(IfMatch=etag)["Body"].read() == b"conditional"
    assert status(get(IfNoneMatch=other)) == 200
    assert status(get(IfModifiedSince=modified - day)) == 200
    assert status(get(IfUnmodifiedSince=modified + day)) == 200

    with pytest.raises(ClientError) as e:
        get(IfMatch=other)
    assert error_of(e) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as e:
        get(IfUnmodifiedSince=modified - day)
    assert error_of(e) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as e:
        get(IfNoneMatch=etag)
    assert error_of(e) == (304, "304")
    with pytest.raises(ClientError) as e:
        get(IfModifiedSince=modified)
    assert error_of(e) == (304, "304")
    # If-Match wins over If-Unmodified-Since, If-None-Match over If-Modified-Since (RFC 7232).
    assert status(get(IfMatch=etag, IfUnmodifiedSince=modified - day)) == 200
    with pytest.raises(ClientError) as e:
        get(IfNoneMatch=etag, IfModifiedSince=modified - day)
    assert error_of(e) == (304, "304")

    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert error_of(e) == (304, "304")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="c", IfMatch=other)
    assert error_of(e) == (412, "412")
    assert status(s3.head_object(Bucket=bucket, Key="c", IfMatch=etag)) == 200


def test_not_modified_carries_etag_and_last_modified(s3, bucket):
    # A 304 has no body; its headers tell the cache what it still holds (RFC 9110 §15.4.5).
    # S3 sends ETag and Last-Modified on it (AWS's own if-modified-since example reads both
    # from the 304 of a HeadObject).
    put(s3, bucket, "nm", b"not modified")
    head = s3.head_object(Bucket=bucket, Key="nm")
    etag, modified = head["ETag"], headers(head)["last-modified"]
    calls = {
        "GET If-None-Match": lambda: s3.get_object(Bucket=bucket, Key="nm", IfNoneMatch=etag),
        "HEAD If-None-Match": lambda: s3.head_object(Bucket=bucket, Key="nm", IfNoneMatch=etag),
        "GET If-Modified-Since": lambda: s3.get_object(
            Bucket=bucket, Key="nm", IfModifiedSince=head["LastModified"]
        ),
    }
    for name, call in calls.items():
        with pytest.raises(ClientError) as e:
            call()
        assert error_of(e) == (304, "304"), name
        got = headers(e.value.response)
        assert got["etag"] == etag, name
        assert got["last-modified"] == modified, name


def test_response_header_overrides(s3, bucket):
    put(s3, bucket, "o", b"override", ContentType="text/plain")
    got = s3.get_object(
        Bucket=bucket,
        Key="o",
        ResponseContentType="application/json",
        ResponseContentDisposition="inline",
        ResponseCacheControl="no-store",
    )
    assert got["ContentType"] == "application/json"
    assert got["ContentDisposition"] == "inline"
    assert got["CacheControl"] == "no-store"
    assert got["Body"].read() == b"override"


# --- conditional writes ----------------------------------------------------------------
#
# S3's answers as moto's AWS-verified tests record them (getmoto/moto
# tests/test_s3/test_s3_conditionals.py): 412 PreconditionFailed "At least one of the
# pre-conditions you specified did not hold"; If-Match on a missing key is 404 NoSuchKey;
# an unquoted ETag matches. S3 also names the failed header (<Condition>If-None-Match</Condition>),
# which aether does not send yet: not asserted here.

PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold"


def test_put_if_none_match(s3, bucket):
    first = put(s3, bucket, "once", b"first", IfNoneMatch="*")
    assert status(first) == 200
    assert first["ETag"] == md5_etag(b"first")
    with pytest.raises(ClientError) as e:
        put(s3, bucket, "once", b"second", IfNoneMatch="*")
    assert error_of(e) == (412, "PreconditionFailed")
    assert e.value.response["Error"]["Message"] == PRECONDITION_MESSAGE
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"first"

    # Deleted, the key is free again (LocalStack's test_put_object_if_none_match, recorded
    # against AWS).
    s3.delete_object(Bucket=bucket, Key="once")
    again = put(s3, bucket, "once", b"third", IfNoneMatch="*")
    assert again["ETag"] == md5_etag(b"third")
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"third"


def test_put_if_match(s3, bucket):
    v1 = put(s3, bucket, "cas", b"v1")["ETag"]
    v2 = put(s3, bucket, "cas", b"v2", IfMatch=v1)["ETag"]
    assert v2 == md5_etag(b"v2")
    with pytest.raises(ClientError) as e:
        put(s3, bucket, "cas", b"stale", IfMatch=v1)
    assert error_of(e) == (412, "PreconditionFailed")
    assert e.value.response["Error"]["Message"] == PRECONDITION_MESSAGE
    got = s3.get_object(Bucket=bucket, Key="cas")
    assert got["Body"].read() == b"v2"
    assert got["ETag"] == v2

    v3 = put(s3, bucket, "cas", b"v3", IfMatch=v2.strip('"'))["ETag"]
    assert v3 == md5_etag(b"v3")

    with pytest.raises(ClientError) as e:
        put(s3, bucket, "missing", b"x", IfMatch=v3)
    assert error_of(e) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="missing")
    assert error_of(e) == (404, "404")


def test_complete_multipart_upload_if_none_match(s3, bucket):
    put(s3, bucket, "taken", b"existing")
    upload_id = create_upload(s3, bucket, "taken")["UploadId"]
    part, _ = upload_part(s3, bucket, "taken", upload_id, 1, b"replacement")
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="taken", UploadId=upload_id, MultipartUpload={"Parts": [part]}, IfNoneMatch="*"
        )
    assert error_of(e) == (412, "PreconditionFailed")
    assert e.value.response["Error"]["Message"] == PRECONDITION_MESSAGE
    assert s3.get_object(Bucket=bucket, Key="taken")["Body"].read() == b"existing"

    upload_id = create_upload(s3, bucket, "free")["UploadId"]
    part, _ = upload_part(s3, bucket, "free", upload_id, 1, b"fresh")
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="free", UploadId=upload_id, MultipartUpload={"Parts": [part]}, IfNoneMatch="*"
    )
    assert done["ETag"] == multipart_etag([b"fresh"])
    assert s3.get_object(Bucket=bucket, Key="free")["Body"].read() == b"fresh"


def test_put_if_none_match_race(s3, bucket):
    # Eight create-only writers released together: exactly one wins; each other one gets 412,
    # or 409 ConditionalRequestConflict while the winner's write is still in progress (S3's
    # PutObject If-None-Match documentation); the stored object is the winner's.
    writers = 8
    bodies = [(b"writer %d " % i) * 2000 for i in range(writers)]
    results = [None] * writers
    start = threading.Barrier(writers)

    def write(i):
        start.wait(timeout=30)
        try:
            results[i] = ("stored", put(s3, bucket, "contended", bodies[i], IfNoneMatch="*")["ETag"])
        except ClientError as err:
            r = err.response
            results[i] = (r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)

    winners = [i for i, r in enumerate(results) if r[0] == "stored"]
    assert len(winners) == 1, results
    winner = winners[0]
    assert results[winner][1] == md5_etag(bodies[winner])
    losers = [r for i, r in enumerate(results) if i != winner]
    assert all(r in [(412, "PreconditionFailed"), (409, "ConditionalRequestConflict")] for r in losers), results
    got = s3.get_object(Bucket=bucket, Key="contended")
    assert got["Body"].read() == bodies[winner]
    assert got["ETag"] == md5_etag(bodies[winner])


# --- checksums -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_put_with_checksum_algorithm(s3, bucket, algorithm):
    body = data_of(100_000, algorithm)
    want = CHECKSUMS[algorithm](body)
    resp = put(s3, bucket, "sum", body, ChecksumAlgorithm=algorithm)
    assert status(resp) == 200
    assert resp["Checksum" + algorithm] == want
    assert resp["ETag"] == md5_etag(body)
    attrs = s3.get_object_attributes(Bucket=bucket, Key="sum", ObjectAttributes=["Checksum", "ObjectSize"])
    assert attrs["Checksum"]["Checksum" + algorithm] == want
    assert attrs["Checksum"]["ChecksumType"] == "FULL_OBJECT"
    assert attrs["ObjectSize"] == len(body)
    assert s3.get_object(Bucket=bucket, Key="sum")["Body"].read() == body


def test_put_default_checksum(s3, bucket):
    body = b"default checksum is CRC32"
    resp = put(s3, bucket, "d", body)
    assert resp["ChecksumCRC32"] == CHECKSUMS["CRC32"](body)
    attrs = s3.get_object_attributes(Bucket=bucket, Key="d", ObjectAttributes=["Checksum"])
    assert attrs["Checksum"] == {"ChecksumCRC32": CHECKSUMS["CRC32"](body), "ChecksumType": "FULL_OBJECT"}


def test_put_with_precomputed_checksum(s3, bucket):
    body = b"precomputed sha256"
    want = CHECKSUMS["SHA256"](body)
    resp = put(s3, bucket, "p", body, ChecksumSHA256=want)
    assert resp["ChecksumSHA256"] == want


def test_wrong_content_md5_is_bad_digest(s3, bucket):
    wrong = b64(hashlib.md5(b"something else").digest())
    with pytest.raises(ClientError) as e:
        put(s3, bucket, "bad", b"the real body", ContentMD5=wrong)
    assert error_of(e) == (400, "BadDigest")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="bad")
    assert error_of(e) == (404, "404")
    right = b64(hashlib.md5(b"the real body").digest())
    assert status(put(s3, bucket, "bad", b"the real body", ContentMD5=right)) == 200


def test_wrong_checksum_is_bad_digest(s3, bucket):
    with pytest.raises(ClientError) as e:
        put(s3, bucket, "bad", b"the real body", ChecksumCRC32=CHECKSUMS["CRC32"](b"other"))
    assert error_of(e) == (400, "BadDigest")
    with pytest.raises(ClientError) as e:
        put(s3, bucket, "bad", b"the real body", ChecksumSHA256=CHECKSUMS["SHA256"](b"other"))
    assert error_of(e) == (400, "BadDigest")
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == []


@pytest.mark.parametrize("algorithm", [None, "CRC32C", "SHA256"])
def test_aws_chunked_trailer_upload(s3_trailer, s3, bucket, algorithm):
    body = data_of(300_000, f"trailer-{algorithm}")
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    resp = s3_trailer.put_object(Bucket=bucket, Key="t", Body=body, **extra)
    assert status(resp) == 200
    sent = s3_trailer.sent_headers[-1]
    assert sent["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert sent["Content-Encoding"] == "aws-chunked"
    assert sent["X-Amz-Trailer"] == "x-amz-checksum-" + (algorithm or "CRC32").lower()
    assert sent["X-Amz-Decoded-Content-Length"] == str(len(body))
    assert resp["ETag"] == md5_etag(body)
    got = s3.get_object(Bucket=bucket, Key="t")
    assert got["ContentLength"] == len(body)
    assert got["Body"].read() == body
    assert got["ContentType"] == "binary/octet-stream"
    assert "ContentEncoding" not in got  # aws-chunked is not stored


class _CorruptCrc32(Crc32Checksum):
    """botocore's CRC32 with its first byte flipped: a trailer that does not match."""

    def digest(self):
        d = super().digest()
        return bytes([d[0] ^ 0xFF]) + d[1:]


def test_aws_chunked_trailer_mismatch_is_bad_digest(s3, bucket):
    client = make_client()
    client.meta.events.register("before-call.s3.PutObject", force_trailer)

    def corrupt(request, **_kwargs):
        assert isinstance(request.body, AwsChunkedWrapper)
        request.body._checksum_cls = _CorruptCrc32
        request.body._checksum = _CorruptCrc32()

    client.meta.events.register("before-sign.s3.PutObject", corrupt)
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=bucket, Key="corrupt", Body=b"y" * 100_000)
    assert error_of(e) == (400, "BadDigest")
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == []


def test_aws_chunked_keeps_other_content_encoding(s3_trailer, s3, bucket):
    s3_trailer.put_object(Bucket=bucket, Key="gz", Body=b"not really gzip", ContentEncoding="gzip")
    assert s3_trailer.sent_headers[-1]["Content-Encoding"] == "gzip,aws-chunked"
    head = s3.head_object(Bucket=bucket, Key="gz")
    assert head["ContentEncoding"] == "gzip"
    assert head["ContentLength"] == len(b"not really gzip")


def checksum_headers(resp):
    """The x-amz-checksum-* response headers, by name."""
    return {k: v for k, v in headers(resp).items() if k.startswith("x-amz-checksum-")}


def no_checksum_client():
    """A client that sends no checksum unless an operation requires one, and does not ask
    for checksums in responses (x-amz-checksum-mode)."""
    config = make_client().meta.config.merge(
        Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    )
    client = make_client(config=config)
    client.sent_headers = []
    client.meta.events.register(
        "before-send.s3", lambda request, **_: client.sent_headers.append(dict(request.headers.items()))
    )
    return client


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"])
def test_checksum_mode_returns_stored_checksum(s3, bucket, algorithm):
    body = data_of(50_000, f"mode-{algorithm}")
    want = CHECKSUMS[algorithm](body)
    header = "x-amz-checksum-" + algorithm.lower()
    resp = put(s3, bucket, "obj", body, ChecksumAlgorithm=algorithm)
    assert resp["Checksum" + algorithm] == want
    assert resp["ChecksumType"] == "FULL_OBJECT"
    assert checksum_headers(resp) == {header: want, "x-amz-checksum-type": "FULL_OBJECT"}

    got = s3.get_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert checksum_headers(got) == {header: want, "x-amz-checksum-type": "FULL_OBJECT"}
    assert got["Checksum" + algorithm] == want
    assert got["ChecksumType"] == "FULL_OBJECT"
    assert got["Body"].read() == body  # botocore checks the body against the checksum too

    head = s3.head_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert checksum_headers(head) == {header: want, "x-amz-checksum-type": "FULL_OBJECT"}
    # Without checksum mode, no checksum.
    assert checksum_headers(s3.head_object(Bucket=bucket, Key="obj")) == {}

    # A range is not the object: S3 returns no checksum for it (MinIO matched S3 in
    # minio/minio#17105, "Remove checksums from HTTP range request").
    part = s3.get_object(Bucket=bucket, Key="obj", Range="bytes=10-99", ChecksumMode="ENABLED")
    assert status(part) == 206
    assert checksum_headers(part) == {}
    assert "Checksum" + algorithm not in part
    assert part["Body"].read() == body[10:100]


@pytest.mark.parametrize("algorithm", [None, "CRC32C", "SHA1", "CRC64NVME"])
def test_trailer_checksum_is_stored(s3_trailer, s3, bucket, algorithm):
    body = data_of(200_000, f"trailer-mode-{algorithm}")
    name = algorithm or "CRC32"
    want = CHECKSUMS[name](body)
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    resp = s3_trailer.put_object(Bucket=bucket, Key="t", Body=body, **extra)
    sent = s3_trailer.sent_headers[-1]
    assert sent["X-Amz-Trailer"] == "x-amz-checksum-" + name.lower()
    assert not any(k.lower().startswith("x-amz-checksum-") for k in sent)  # in the trailer only
    assert resp["Checksum" + name] == want
    assert resp["ChecksumType"] == "FULL_OBJECT"
    for got in (
        s3.head_object(Bucket=bucket, Key="t", ChecksumMode="ENABLED"),
        s3.get_object(Bucket=bucket, Key="t", ChecksumMode="ENABLED"),
    ):
        assert checksum_headers(got) == {"x-amz-checksum-" + name.lower(): want, "x-amz-checksum-type": "FULL_OBJECT"}
    assert got["Body"].read() == body


def test_put_without_checksum_gets_crc64nvme(s3, bucket):
    # S3 computes a CRC64NVME for an upload that carries no checksum, returns it on the
    # PutObject and stores it with the object.
    client = no_checksum_client()
    body = data_of(123_457, "no-checksum")
    want = b64(crt_checksums.crc64nvme(body).to_bytes(8, "big"))
    resp = client.put_object(Bucket=bucket, Key="plain", Body=body)
    sent = {k.lower() for k in client.sent_headers[-1]}
    assert not any(h.startswith("x-amz-checksum-") or h == "x-amz-sdk-checksum-algorithm" for h in sent)
    assert "content-md5" not in sent
    assert resp["ChecksumCRC64NVME"] == want
    assert resp["ChecksumType"] == "FULL_OBJECT"

    # Not asked for, not sent.
    got = client.get_object(Bucket=bucket, Key="plain")
    assert "x-amz-checksum-mode" not in {k.lower() for k in client.sent_headers[-1]}
    assert checksum_headers(got) == {}
    assert got["Body"].read() == body

    got = s3.get_object(Bucket=bucket, Key="plain", ChecksumMode="ENABLED")
    assert checksum_headers(got) == {"x-amz-checksum-crc64nvme": want, "x-amz-checksum-type": "FULL_OBJECT"}
    assert got["Body"].read() == body
    head = s3.head_object(Bucket=bucket, Key="plain", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == want
    attrs = s3.get_object_attributes(Bucket=bucket, Key="plain", ObjectAttributes=["Checksum"])
    assert attrs["Checksum"] == {"ChecksumCRC64NVME": want, "ChecksumType": "FULL_OBJECT"}


# --- TransferManager -------------------------------------------------------------------


def test_transfer_manager_multipart_round_trip(s3, bucket):
    body = data_of(20 * MiB, "transfer")
    config = TransferConfig(
        multipart_threshold=8 * MiB,
        multipart_chunksize=8 * MiB,
        max_concurrency=4,
        preferred_transfer_client="classic",
    )
    s3.upload_fileobj(io.BytesIO(body), bucket, "big/object.bin", Config=config)

    head = s3.head_object(Bucket=bucket, Key="big/object.bin")
    assert head["ContentLength"] == len(body)
    parts = [body[i : i + 8 * MiB] for i in range(0, len(body), 8 * MiB)]
    assert head["ETag"] == multipart_etag(parts)

    out = io.BytesIO()
    s3.download_fileobj(bucket, "big/object.bin", out, Config=config)
    assert hashlib.sha256(out.getvalue()).hexdigest() == hashlib.sha256(body).hexdigest()

    part2 = s3.head_object(Bucket=bucket, Key="big/object.bin", PartNumber=2)
    assert status(part2) == 206
    assert part2["ContentLength"] == 8 * MiB
    assert part2["PartsCount"] == 3
    assert part2["ContentRange"] == f"bytes {8 * MiB}-{16 * MiB - 1}/{len(body)}"
    part3 = s3.get_object(Bucket=bucket, Key="big/object.bin", PartNumber=3)
    assert status(part3) == 206
    assert part3["Body"].read() == parts[2]
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="big/object.bin", PartNumber=4)
    assert error_of(e) == (416, "416")

    attrs = s3.get_object_attributes(
        Bucket=bucket, Key="big/object.bin", ObjectAttributes=["ObjectParts", "ObjectSize", "ETag", "StorageClass"]
    )
    assert attrs["ObjectSize"] == len(body)
    assert attrs["ETag"] == multipart_etag(parts).strip('"')
    assert attrs["StorageClass"] == "STANDARD"
    assert attrs["ObjectParts"]["TotalPartsCount"] == 3
    assert [p["Size"] for p in attrs["ObjectParts"]["Parts"]] == [8 * MiB, 8 * MiB, 4 * MiB]


def test_transfer_manager_aws_chunked_parts(s3_trailer, s3, bucket):
    body = data_of(11 * MiB, "chunked-parts")
    config = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3, preferred_transfer_client="classic"
    )
    s3_trailer.upload_fileobj(io.BytesIO(body), bucket, "chunked", Config=config)
    trailers = [h.get("X-Amz-Trailer") for h in s3_trailer.sent_headers[-5:]]
    assert trailers.count("x-amz-checksum-crc32") == 3  # the three UploadPart requests
    parts = [body[i : i + 5 * MiB] for i in range(0, len(body), 5 * MiB)]
    head = s3.head_object(Bucket=bucket, Key="chunked")
    assert head["ETag"] == multipart_etag(parts)
    assert head["ContentLength"] == len(body)
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key="chunked")["Body"].read()).digest() == hashlib.sha256(
        body
    ).digest()


def test_transfer_manager_upload_checksum(s3, bucket):
    # What s3transfer asks for with botocore's default checksums, and what the object then
    # carries: CreateMultipartUpload declares CRC32 and no checksum type, so the upload is
    # COMPOSITE (S3's default for CRC32) and the object's checksum is the CRC32 of the
    # parts' CRC32s, "-3" for three parts.
    client = make_client()
    declared = []
    client.meta.events.register(
        "before-call.s3.CreateMultipartUpload",
        lambda params, **_: declared.append({k.lower(): v for k, v in params["headers"].items()}),
    )
    body = data_of(20 * MiB, "transfer-checksum")
    config = TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4, preferred_transfer_client="classic"
    )
    client.upload_fileobj(io.BytesIO(body), bucket, "tm/checksummed", Config=config)
    assert len(declared) == 1
    assert {k: v for k, v in declared[0].items() if k.startswith("x-amz-checksum-")} == {
        "x-amz-checksum-algorithm": "CRC32"
    }

    parts = [body[i : i + 8 * MiB] for i in range(0, len(body), 8 * MiB)]
    composite = b64(zlib.crc32(b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)).to_bytes(4, "big")) + "-3"
    head = s3.head_object(Bucket=bucket, Key="tm/checksummed", ChecksumMode="ENABLED")
    assert checksum_headers(head) == {"x-amz-checksum-crc32": composite, "x-amz-checksum-type": "COMPOSITE"}
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == multipart_etag(parts)


# --- multipart, explicitly -------------------------------------------------------------
#
# As s3transfer does with botocore's default checksums: the upload declares CRC32 (UploadPart
# sends a CRC32 by default, and S3 refuses a part checksum the upload did not declare), and
# CompleteMultipartUpload lists each part's ETag and CRC32.


def create_upload(s3, bucket, key, **kw):
    return s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32", **kw)


def upload_part(s3, bucket, key, upload_id, number, body):
    r = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
    return {"PartNumber": number, "ETag": r["ETag"], "ChecksumCRC32": CHECKSUMS["CRC32"](body)}, r


def complete_upload(s3, bucket, key, upload_id, parts):
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def test_multipart_upload_complete(s3, bucket):
    key = "mpu/object"
    p1, p2 = data_of(5 * MiB, "p1"), data_of(1234, "p2")
    up = create_upload(s3, bucket, key, ContentType="application/x-test", Metadata={"origin": "multipart"})
    assert status(up) == 200
    assert up["Bucket"] == bucket and up["Key"] == key
    upload_id = up["UploadId"]
    assert upload_id

    part1, r1 = upload_part(s3, bucket, key, upload_id, 1, p1)
    part2, r2 = upload_part(s3, bucket, key, upload_id, 2, p2)
    assert status(r1) == 200
    assert r1["ETag"] == md5_etag(p1)
    assert r2["ETag"] == md5_etag(p2)
    assert r1["ChecksumCRC32"] == CHECKSUMS["CRC32"](p1)
    assert r2["ChecksumCRC32"] == CHECKSUMS["CRC32"](p2)

    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert parts["Bucket"] == bucket and parts["Key"] == key
    assert parts["UploadId"] == upload_id
    assert parts["IsTruncated"] is False
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in parts["Parts"]] == [
        (1, len(p1), md5_etag(p1)),
        (2, len(p2), md5_etag(p2)),
    ]
    page = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, MaxParts=1)
    assert [p["PartNumber"] for p in page["Parts"]] == [1]
    assert page["IsTruncated"] is True
    assert page["NextPartNumberMarker"] == 1
    page = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=1)
    assert [p["PartNumber"] for p in page["Parts"]] == [2]
    assert page["IsTruncated"] is False

    done = complete_upload(s3, bucket, key, upload_id, [part1, part2])
    assert status(done) == 200
    assert done["ETag"] == multipart_etag([p1, p2])
    assert done["Bucket"] == bucket and done["Key"] == key
    # The object's absolute URL, the key percent-encoded ("/" too), as S3 writes it.
    assert done["Location"] == f"{endpoint()}/{bucket}/{urllib.parse.quote(key, safe='')}"
    # A retried completion (the first answer lost) gets the first answer, as from S3.
    again = complete_upload(s3, bucket, key, upload_id, [part1, part2])
    assert (status(again), again["ETag"], again["Location"]) == (200, done["ETag"], done["Location"])

    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"] == multipart_etag([p1, p2])
    assert head["ContentLength"] == len(p1) + len(p2)
    assert head["ContentType"] == "application/x-test"
    assert head["Metadata"] == {"origin": "multipart"}
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == p1 + p2

    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert error_of(e) == (404, "NoSuchUpload")


def test_multipart_abort(s3, bucket):
    key = "aborted"
    upload_id = create_upload(s3, bucket, key)["UploadId"]
    part1, _ = upload_part(s3, bucket, key, upload_id, 1, b"part")
    assert status(s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)) == 204

    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert error_of(e) == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as e:
        upload_part(s3, bucket, key, upload_id, 2, b"late")
    assert error_of(e) == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as e:
        complete_upload(s3, bucket, key, upload_id, [part1])
    assert error_of(e) == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as e:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId="no-such-upload-id")
    assert error_of(e) == (404, "NoSuchUpload")
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key=key)
    assert error_of(e) == (404, "404")


def test_list_multipart_uploads(s3, bucket):
    ids = {}
    for key in ["mpu/a", "mpu/b", "other/c"]:
        ids[key] = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    listed = s3.list_multipart_uploads(Bucket=bucket)
    assert listed["Bucket"] == bucket
    assert listed["IsTruncated"] is False
    assert [(u["Key"], u["UploadId"]) for u in listed["Uploads"]] == sorted(ids.items())
    for u in listed["Uploads"]:
        assert u["StorageClass"] == "STANDARD"
        assert isinstance(u["Initiated"], datetime.datetime)

    prefixed = s3.list_multipart_uploads(Bucket=bucket, Prefix="mpu/")
    assert [u["Key"] for u in prefixed["Uploads"]] == ["mpu/a", "mpu/b"]

    first = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=1)
    assert [u["Key"] for u in first["Uploads"]] == ["mpu/a"]
    assert first["IsTruncated"] is True
    assert first["NextKeyMarker"] == "mpu/a"
    assert first["NextUploadIdMarker"] == ids["mpu/a"]
    rest = s3.list_multipart_uploads(
        Bucket=bucket, KeyMarker=first["NextKeyMarker"], UploadIdMarker=first["NextUploadIdMarker"]
    )
    assert [u["Key"] for u in rest["Uploads"]] == ["mpu/b", "other/c"]

    for key, upload_id in ids.items():
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def test_multipart_entity_too_small(s3, bucket):
    key = "small-parts"
    small = b"x" * 1024
    upload_id = create_upload(s3, bucket, key)["UploadId"]
    parts = [upload_part(s3, bucket, key, upload_id, n, small)[0] for n in (1, 2)]
    with pytest.raises(ClientError) as e:
        complete_upload(s3, bucket, key, upload_id, parts)
    assert error_of(e) == (400, "EntityTooSmall")
    # A single small part is fine: it is the last one.
    done = complete_upload(s3, bucket, key, upload_id, parts[:1])
    assert done["ETag"] == multipart_etag([small])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == small


def test_multipart_invalid_part_and_order(s3, bucket):
    key = "invalid-parts"
    p1, p2 = data_of(5 * MiB, "ip1"), b"tail"
    upload_id = create_upload(s3, bucket, key)["UploadId"]
    part1, _ = upload_part(s3, bucket, key, upload_id, 1, p1)
    part2, _ = upload_part(s3, bucket, key, upload_id, 2, p2)

    def complete(parts):
        return complete_upload(s3, bucket, key, upload_id, parts)

    with pytest.raises(ClientError) as e:
        complete([dict(part1, ETag='"00000000000000000000000000000000"'), part2])
    assert error_of(e) == (400, "InvalidPart")
    with pytest.raises(ClientError) as e:
        complete([part1, dict(part2, PartNumber=3)])
    assert error_of(e) == (400, "InvalidPart")
    with pytest.raises(ClientError) as e:
        complete([part2, part1])
    assert error_of(e) == (400, "InvalidPartOrder")
    # The upload survives failed completions.
    assert complete([part1, part2])["ETag"] == multipart_etag([p1, p2])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == p1 + p2


def test_upload_part_copy(s3, bucket, bucket2):
    src = data_of(6 * MiB + 100, "upc")
    put(s3, bucket2, "source object", src)
    key = "assembled"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    source = {"Bucket": bucket2, "Key": "source object"}
    c1 = s3.upload_part_copy(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, CopySource=source,
        CopySourceRange=f"bytes=0-{5 * MiB - 1}",
    )
    c2 = s3.upload_part_copy(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, CopySource=source,
        CopySourceRange=f"bytes={5 * MiB}-{len(src) - 1}",
    )
    assert status(c1) == 200
    assert c1["CopyPartResult"]["ETag"] == md5_etag(src[: 5 * MiB])
    assert c2["CopyPartResult"]["ETag"] == md5_etag(src[5 * MiB :])
    assert isinstance(c1["CopyPartResult"]["LastModified"], datetime.datetime)
    # A whole-object part copy, and a normal part, in one upload.
    c3 = s3.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=3, CopySource=source)
    assert c3["CopyPartResult"]["ETag"] == md5_etag(src)

    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=4, CopySource=source,
            CopySourceRange=f"bytes=0-{len(src)}",
        )
    assert error_of(e) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=4, CopySource={"Bucket": bucket2, "Key": "nope"}
        )
    assert error_of(e) == (404, "NoSuchKey")

    parts = [
        {"PartNumber": 1, "ETag": c1["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": c2["CopyPartResult"]["ETag"]},
        {"PartNumber": 3, "ETag": c3["CopyPartResult"]["ETag"]},
    ]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    assert error_of(e) == (400, "EntityTooSmall")  # part 2 (1 MiB + 100) is not the last
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": [parts[0], parts[2]]}
    )
    assert done["ETag"] == multipart_etag([src[: 5 * MiB], src])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == src[: 5 * MiB] + src


def test_list_multipart_uploads_delimiter(s3, bucket):
    ids = {key: s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"] for key in ["a/1", "a/2", "b", "c/d/e"]}
    listed = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert listed["Delimiter"] == "/"
    assert listed["IsTruncated"] is False
    assert [(u["Key"], u["UploadId"]) for u in listed["Uploads"]] == [("b", ids["b"])]
    assert prefixes_of(listed) == ["a/", "c/"]

    # One entry a page: a common prefix counts as one. A page that ends on an upload names
    # it in NextKeyMarker / NextUploadIdMarker. S3 answers a page that ends on a prefix with
    # empty markers (LocalStack's test_list_multipart_uploads_marker_common_prefixes,
    # recorded against AWS: "there is no way to paginate from here"), so the next page is
    # asked for after the prefix itself, which skips every key under it.
    pages, markers = [], {}
    for _ in range(6):
        page = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/", MaxUploads=1, **markers)
        assert page["MaxUploads"] == 1
        entries = [("prefix", p) for p in prefixes_of(page)] + [("upload", u["Key"]) for u in page.get("Uploads", [])]
        assert len(entries) == 1, page
        pages.append((entries[0], page["IsTruncated"]))
        if not page["IsTruncated"]:
            break
        kind, name = entries[0]
        if kind == "upload":
            assert (page["NextKeyMarker"], page["NextUploadIdMarker"]) == (name, ids[name])
            markers = {"KeyMarker": name, "UploadIdMarker": ids[name]}
        else:
            markers = {"KeyMarker": name}
    assert pages == [(("prefix", "a/"), True), (("upload", "b"), True), (("prefix", "c/"), False)]

    nested = s3.list_multipart_uploads(Bucket=bucket, Prefix="c/", Delimiter="/")
    assert nested["Prefix"] == "c/"
    assert prefixes_of(nested) == ["c/d/"]
    assert "Uploads" not in nested
    assert nested["IsTruncated"] is False


def test_list_multipart_uploads_encoding_type_url(s3, bucket):
    # botocore url-decodes ListObjects* answers, not ListMultipartUploads ones: decode them
    # the way it decodes the others (unquote_plus: S3 may write a space as "+", a literal
    # "+" is always %2B).
    keys = ["dir one/my file+x.txt", "dir one/sub/z", "plain"]
    ids = {key: s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"] for key in keys}
    listed = s3.list_multipart_uploads(Bucket=bucket, EncodingType="url")
    assert listed["EncodingType"] == "url"
    encoded = [u["Key"] for u in listed["Uploads"]]
    assert [unquote_str(k) for k in encoded] == keys
    assert " " not in encoded[0] and "%2B" in encoded[0]
    assert [u["UploadId"] for u in listed["Uploads"]] == [ids[k] for k in keys]

    rolled = s3.list_multipart_uploads(Bucket=bucket, EncodingType="url", Prefix="dir one/", Delimiter="/")
    assert unquote_str(rolled["Prefix"]) == "dir one/"
    assert [unquote_str(u["Key"]) for u in rolled["Uploads"]] == ["dir one/my file+x.txt"]
    assert [unquote_str(p) for p in prefixes_of(rolled)] == ["dir one/sub/"]

    # The decoded marker pages on; the decoded key is the upload's key.
    first = s3.list_multipart_uploads(Bucket=bucket, EncodingType="url", MaxUploads=1)
    assert first["IsTruncated"] is True
    marker = unquote_str(first["NextKeyMarker"])
    assert marker == keys[0]
    rest = s3.list_multipart_uploads(
        Bucket=bucket, EncodingType="url", KeyMarker=marker, UploadIdMarker=first["NextUploadIdMarker"]
    )
    assert [unquote_str(u["Key"]) for u in rest["Uploads"]] == keys[1:]
    resp = s3.abort_multipart_upload(Bucket=bucket, Key=marker, UploadId=ids[keys[0]])
    assert status(resp) == 204
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == keys[1:]


def test_multipart_composite_crc32(s3, bucket):
    key = "composite"
    p1, p2 = data_of(5 * MiB, "composite-1"), data_of(4321, "composite-2")
    crc1, crc2 = CHECKSUMS["CRC32"](p1), CHECKSUMS["CRC32"](p2)
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32")
    assert (up["ChecksumAlgorithm"], up["ChecksumType"]) == ("CRC32", "COMPOSITE")
    upload_id = up["UploadId"]
    r1 = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=p1, ChecksumAlgorithm="CRC32")
    r2 = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=p2, ChecksumAlgorithm="CRC32")
    assert (r1["ChecksumCRC32"], r2["ChecksumCRC32"]) == (crc1, crc2)

    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert (listed["ChecksumAlgorithm"], listed["ChecksumType"]) == ("CRC32", "COMPOSITE")
    assert [(p["PartNumber"], p["ChecksumCRC32"]) for p in listed["Parts"]] == [(1, crc1), (2, crc2)]

    parts = [
        {"PartNumber": 1, "ETag": r1["ETag"], "ChecksumCRC32": crc1},
        {"PartNumber": 2, "ETag": r2["ETag"], "ChecksumCRC32": crc2},
    ]
    with pytest.raises(ClientError) as e:
        complete_upload(s3, bucket, key, upload_id, [parts[0], dict(parts[1], ChecksumCRC32=CHECKSUMS["CRC32"](b"x"))])
    assert error_of(e) == (400, "InvalidPart")

    # The CRC32 of the parts' CRC32s (raw, concatenated), then "-" and the part count.
    composite = b64(zlib.crc32(base64.b64decode(crc1) + base64.b64decode(crc2)).to_bytes(4, "big")) + "-2"
    done = complete_upload(s3, bucket, key, upload_id, parts)
    assert (done["ChecksumCRC32"], done["ChecksumType"]) == (composite, "COMPOSITE")
    assert done["ETag"] == multipart_etag([p1, p2])

    want = {"x-amz-checksum-crc32": composite, "x-amz-checksum-type": "COMPOSITE"}
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert checksum_headers(head) == want
    assert (head["ChecksumCRC32"], head["ChecksumType"]) == (composite, "COMPOSITE")
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert checksum_headers(got) == want
    assert got["Body"].read() == p1 + p2

    # Each part keeps its checksum: GetObjectAttributes lists them; a part read by number
    # in checksum mode carries its own (botocore checks it against the part's bytes).
    attrs = s3.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=["ObjectParts"])
    assert [(p["PartNumber"], p["ChecksumCRC32"]) for p in attrs["ObjectParts"]["Parts"]] == [(1, crc1), (2, crc2)]
    part2 = s3.get_object(Bucket=bucket, Key=key, PartNumber=2, ChecksumMode="ENABLED")
    assert (part2["ChecksumCRC32"], part2["PartsCount"]) == (crc2, 2)
    assert part2["Body"].read() == p2


def test_multipart_full_object_crc64nvme(s3, bucket):
    key = "full-object"
    p1, p2 = data_of(5 * MiB, "full-1"), data_of(777, "full-2")
    want = CHECKSUMS["CRC64NVME"](p1 + p2)
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC64NVME")
    assert (up["ChecksumAlgorithm"], up["ChecksumType"]) == ("CRC64NVME", "FULL_OBJECT")
    upload_id = up["UploadId"]
    parts = []
    for number, data in [(1, p1), (2, p2)]:
        r = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data, ChecksumAlgorithm="CRC64NVME"
        )
        assert r["ChecksumCRC64NVME"] == CHECKSUMS["CRC64NVME"](data)
        parts.append({"PartNumber": number, "ETag": r["ETag"], "ChecksumCRC64NVME": r["ChecksumCRC64NVME"]})
    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert (listed["ChecksumAlgorithm"], listed["ChecksumType"]) == ("CRC64NVME", "FULL_OBJECT")

    done = complete_upload(s3, bucket, key, upload_id, parts)
    assert (done["ChecksumCRC64NVME"], done["ChecksumType"]) == (want, "FULL_OBJECT")

    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert checksum_headers(head) == {"x-amz-checksum-crc64nvme": want, "x-amz-checksum-type": "FULL_OBJECT"}
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert (got["ChecksumCRC64NVME"], got["ChecksumType"]) == (want, "FULL_OBJECT")
    # A whole-object checksum: botocore checks the body against it while it is read.
    assert isinstance(got["Body"], StreamingChecksumBody)
    assert got["Body"].read() == p1 + p2


# --- copy ----------------------------------------------------------------------------


def test_copy_object_metadata_directives(s3, bucket, bucket2):
    body = b"copy me, please"
    put(s3, bucket, "src/ü key", body, ContentType="text/x-src", Metadata={"a": "1"}, CacheControl="no-cache")

    resp = s3.copy_object(Bucket=bucket, Key="dst/copied", CopySource={"Bucket": bucket, "Key": "src/ü key"})
    assert status(resp) == 200
    assert resp["CopyObjectResult"]["ETag"] == md5_etag(body)
    assert isinstance(resp["CopyObjectResult"]["LastModified"], datetime.datetime)
    head = s3.head_object(Bucket=bucket, Key="dst/copied")
    assert head["ContentType"] == "text/x-src"
    assert head["Metadata"] == {"a": "1"}
    assert head["CacheControl"] == "no-cache"
    assert head["ETag"] == md5_etag(body)
    assert s3.get_object(Bucket=bucket, Key="dst/copied")["Body"].read() == body

    resp = s3.copy_object(
        Bucket=bucket2,
        Key="replaced",
        CopySource={"Bucket": bucket, "Key": "src/ü key"},
        MetadataDirective="REPLACE",
        ContentType="application/x-new",
        Metadata={"b": "2"},
    )
    assert resp["CopyObjectResult"]["ETag"] == md5_etag(body)
    head = s3.head_object(Bucket=bucket2, Key="replaced")
    assert head["ContentType"] == "application/x-new"
    assert head["Metadata"] == {"b": "2"}
    assert "CacheControl" not in head
    assert s3.get_object(Bucket=bucket2, Key="replaced")["Body"].read() == body

    # Copying an object onto itself needs REPLACE; with it, the metadata changes in place.
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="src/ü key", CopySource={"Bucket": bucket, "Key": "src/ü key"})
    assert error_of(e) == (400, "InvalidRequest")
    s3.copy_object(
        Bucket=bucket,
        Key="src/ü key",
        CopySource={"Bucket": bucket, "Key": "src/ü key"},
        MetadataDirective="REPLACE",
        Metadata={"c": "3"},
    )
    head = s3.head_object(Bucket=bucket, Key="src/ü key")
    assert head["Metadata"] == {"c": "3"}


def test_copy_object_errors_and_conditions(s3, bucket, bucket2):
    put(s3, bucket, "src", b"source")
    etag = s3.head_object(Bucket=bucket, Key="src")["ETag"]
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "missing"})
    assert error_of(e) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": unique_name("missing"), "Key": "src"})
    assert error_of(e) == (404, "NoSuchBucket")
    with pytest.raises(ClientError) as e:
        s3.copy_object(
            Bucket=bucket2, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch='"0123"'
        )
    assert error_of(e) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket2, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfNoneMatch=etag)
    assert error_of(e) == (412, "PreconditionFailed")
    resp = s3.copy_object(Bucket=bucket2, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch=etag)
    assert resp["CopyObjectResult"]["ETag"] == etag
    assert keys_of(s3.list_objects_v2(Bucket=bucket2)) == ["dst"]


# --- delete objects ------------------------------------------------------------------


def test_delete_objects_verbose_and_quiet(s3, bucket):
    for key in ["a", "b", "c", "d"]:
        put(s3, bucket, key, key.encode())

    resp = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "does/not/exist"}]}
    )
    assert status(resp) == 200
    assert sorted(d["Key"] for d in resp["Deleted"]) == ["a", "b", "does/not/exist"]
    assert "Errors" not in resp
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == ["c", "d"]

    resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "c"}, {"Key": "nope"}], "Quiet": True})
    assert status(resp) == 200
    assert "Deleted" not in resp
    assert "Errors" not in resp
    assert keys_of(s3.list_objects_v2(Bucket=bucket)) == ["d"]


# --- listing -------------------------------------------------------------------------

LIST_KEYS = ["a/1", "a/2", "a/b/3", "b/1", "c", "d", "e/x/y/z"]


@pytest.fixture
def listed_bucket(s3, bucket):
    for key in LIST_KEYS:
        put(s3, bucket, key, key.encode() * 3)
    return bucket


def test_list_objects_v2_delimiter_and_prefix(s3, listed_bucket):
    b = listed_bucket
    resp = s3.list_objects_v2(Bucket=b)
    assert keys_of(resp) == LIST_KEYS
    assert resp["KeyCount"] == len(LIST_KEYS)
    assert resp["IsTruncated"] is False
    assert resp["MaxKeys"] == 1000
    first = resp["Contents"][0]
    assert first["Size"] == 9
    assert first["ETag"] == md5_etag(b"a/1" * 3)
    assert first["StorageClass"] == "STANDARD"
    assert isinstance(first["LastModified"], datetime.datetime)

    resp = s3.list_objects_v2(Bucket=b, Delimiter="/")
    assert keys_of(resp) == ["c", "d"]
    assert prefixes_of(resp) == ["a/", "b/", "e/"]
    assert resp["KeyCount"] == 5
    assert resp["Delimiter"] == "/"

    resp = s3.list_objects_v2(Bucket=b, Prefix="a/", Delimiter="/")
    assert keys_of(resp) == ["a/1", "a/2"]
    assert prefixes_of(resp) == ["a/b/"]
    assert resp["Prefix"] == "a/"

    resp = s3.list_objects_v2(Bucket=b, Prefix="e/", Delimiter="/")
    assert keys_of(resp) == []
    assert prefixes_of(resp) == ["e/x/"]

    resp = s3.list_objects_v2(Bucket=b, Prefix="nothing-here")
    assert "Contents" not in resp
    assert resp["KeyCount"] == 0

    resp = s3.list_objects_v2(Bucket=b, StartAfter="b/1")
    assert keys_of(resp) == ["c", "d", "e/x/y/z"]


def test_folder_marker_object(s3, bucket):
    put(s3, bucket, "folder/")
    put(s3, bucket, "folder/file", b"f")
    resp = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert prefixes_of(resp) == ["folder/"]
    assert keys_of(resp) == []
    resp = s3.list_objects_v2(Bucket=bucket, Prefix="folder/", Delimiter="/")
    assert keys_of(resp) == ["folder/", "folder/file"]
    assert resp["Contents"][0]["Size"] == 0
    assert s3.head_object(Bucket=bucket, Key="folder/")["ContentLength"] == 0


def test_list_objects_v2_pagination(s3, listed_bucket):
    b = listed_bucket
    resp = s3.list_objects_v2(Bucket=b, MaxKeys=2)
    assert keys_of(resp) == ["a/1", "a/2"]
    assert resp["IsTruncated"] is True
    assert resp["KeyCount"] == 2
    assert resp["MaxKeys"] == 2
    token = resp["NextContinuationToken"]
    resp = s3.list_objects_v2(Bucket=b, MaxKeys=2, ContinuationToken=token)
    assert keys_of(resp) == ["a/b/3", "b/1"]
    assert resp["ContinuationToken"] == token

    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=b, PaginationConfig={"PageSize": 3}))
    assert [keys_of(p) for p in pages] == [LIST_KEYS[0:3], LIST_KEYS[3:6], LIST_KEYS[6:]]
    assert [p["IsTruncated"] for p in pages] == [True, True, False]

    # Common prefixes count towards max-keys and page like keys.
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(Bucket=b, Delimiter="/", PaginationConfig={"PageSize": 2})
    )
    assert [(prefixes_of(p), keys_of(p)) for p in pages] == [
        (["a/", "b/"], []),
        ([], ["c", "d"]),
        (["e/"], []),
    ]

    resp = s3.list_objects_v2(Bucket=b, MaxKeys=0)
    assert resp["KeyCount"] == 0
    assert "Contents" not in resp


def test_list_objects_v1_marker(s3, listed_bucket):
    b = listed_bucket
    resp = s3.list_objects(Bucket=b)
    assert keys_of(resp) == LIST_KEYS
    assert resp["IsTruncated"] is False
    assert resp["Marker"] == ""

    resp = s3.list_objects(Bucket=b, Marker="a/b/3")
    assert keys_of(resp) == ["b/1", "c", "d", "e/x/y/z"]
    assert resp["Marker"] == "a/b/3"

    resp = s3.list_objects(Bucket=b, MaxKeys=3)
    assert keys_of(resp) == LIST_KEYS[:3]
    assert resp["IsTruncated"] is True

    resp = s3.list_objects(Bucket=b, Delimiter="/", MaxKeys=2)
    assert prefixes_of(resp) == ["a/", "b/"]
    assert resp["IsTruncated"] is True
    assert resp["NextMarker"] == "b/"
    resp = s3.list_objects(Bucket=b, Delimiter="/", Marker=resp["NextMarker"])
    assert keys_of(resp) == ["c", "d"]
    assert prefixes_of(resp) == ["e/"]
    assert resp["IsTruncated"] is False

    pages = list(s3.get_paginator("list_objects").paginate(Bucket=b, PaginationConfig={"PageSize": 2}))
    assert [k for p in pages for k in keys_of(p)] == LIST_KEYS
    assert len(pages) == 4


# --- attributes, tagging, ACLs, versioning, location -----------------------------------


def test_get_object_attributes(s3, bucket):
    body = b"attributes"
    put(s3, bucket, "attr", body)
    attrs = s3.get_object_attributes(
        Bucket=bucket, Key="attr", ObjectAttributes=["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
    )
    assert status(attrs) == 200
    assert attrs["ETag"] == hashlib.md5(body).hexdigest()
    assert attrs["ObjectSize"] == len(body)
    assert attrs["StorageClass"] == "STANDARD"
    assert attrs["Checksum"]["ChecksumCRC32"] == CHECKSUMS["CRC32"](body)
    assert "ObjectParts" not in attrs  # a single-part object has none
    assert isinstance(attrs["LastModified"], datetime.datetime)

    only = s3.get_object_attributes(Bucket=bucket, Key="attr", ObjectAttributes=["ObjectSize"])
    assert only["ObjectSize"] == len(body)
    assert "ETag" not in only and "Checksum" not in only

    with pytest.raises(ClientError) as e:
        s3.get_object_attributes(Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])
    assert error_of(e) == (404, "NoSuchKey")


def test_bucket_tagging(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.get_bucket_tagging(Bucket=bucket)
    assert error_of(e) == (404, "NoSuchTagSet")

    tags = [{"Key": "env", "Value": "test"}, {"Key": "team", "Value": "storage"}, {"Key": "empty", "Value": ""}]
    resp = s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
    assert status(resp) == 204
    got = s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
    assert sorted(got, key=lambda t: t["Key"]) == sorted(tags, key=lambda t: t["Key"])

    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "only", "Value": "one"}]})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "only", "Value": "one"}]

    for bad in (
        [{"Key": "aws:reserved", "Value": "x"}],
        [{"Key": "dup", "Value": "1"}, {"Key": "dup", "Value": "2"}],
        [{"Key": "k" * 129, "Value": "x"}],
    ):
        with pytest.raises(ClientError) as e:
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": bad})
        assert error_of(e) == (400, "InvalidTag")
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "only", "Value": "one"}]

    assert status(s3.delete_bucket_tagging(Bucket=bucket)) == 204
    with pytest.raises(ClientError) as e:
        s3.get_bucket_tagging(Bucket=bucket)
    assert error_of(e) == (404, "NoSuchTagSet")


def tags_of(s3, bucket, key):
    """An object's tag set, ordered by key (S3 does not promise an order)."""
    return sorted(s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"], key=lambda t: t["Key"])


def test_object_tagging(s3, bucket):
    body = b"tagged object"
    put(s3, bucket, "t", body, Tagging="k=v&a=b%20c")
    got = s3.get_object(Bucket=bucket, Key="t")
    assert got["TagCount"] == 2
    assert got["Body"].read() == body
    resp = s3.get_object_tagging(Bucket=bucket, Key="t")
    assert status(resp) == 200
    assert tags_of(s3, bucket, "t") == [{"Key": "a", "Value": "b c"}, {"Key": "k", "Value": "v"}]
    before = s3.head_object(Bucket=bucket, Key="t")

    # PutObjectTagging replaces the whole set, and only the tags.
    new = [{"Key": "team", "Value": "storage"}, {"Key": "empty", "Value": ""}, {"Key": "path", "Value": "a/b=c+d"}]
    assert status(s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": new})) == 200
    assert tags_of(s3, bucket, "t") == sorted(new, key=lambda t: t["Key"])
    assert s3.get_object(Bucket=bucket, Key="t")["TagCount"] == 3
    after = s3.head_object(Bucket=bucket, Key="t")
    assert (after["ETag"], after["ContentLength"]) == (before["ETag"], before["ContentLength"])
    assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == body

    assert status(s3.delete_object_tagging(Bucket=bucket, Key="t")) == 204
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    got = s3.get_object(Bucket=bucket, Key="t")
    assert "TagCount" not in got  # x-amz-tagging-count only when there are tags
    assert got["Body"].read() == body

    # An object written without tags has an empty set.
    put(s3, bucket, "plain", b"x")
    assert s3.get_object_tagging(Bucket=bucket, Key="plain")["TagSet"] == []


def test_object_tagging_errors(s3, bucket):
    put(s3, bucket, "t", b"x", Tagging="keep=1")
    bad_sets = {
        "aws: prefix": [{"Key": "aws:reserved", "Value": "x"}],
        "duplicate key": [{"Key": "dup", "Value": "1"}, {"Key": "dup", "Value": "2"}],
        "key of 129": [{"Key": "k" * 129, "Value": "x"}],
        "value of 257": [{"Key": "k", "Value": "v" * 257}],
    }
    for case, tag_set in bad_sets.items():
        with pytest.raises(ClientError) as e:
            s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": tag_set})
        assert error_of(e) == (400, "InvalidTag"), case
    assert tags_of(s3, bucket, "t") == [{"Key": "keep", "Value": "1"}]

    calls = {
        "GetObjectTagging": lambda: s3.get_object_tagging(Bucket=bucket, Key="missing"),
        "PutObjectTagging": lambda: s3.put_object_tagging(
            Bucket=bucket, Key="missing", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]}
        ),
        "DeleteObjectTagging": lambda: s3.delete_object_tagging(Bucket=bucket, Key="missing"),
    }
    for operation, call in calls.items():
        with pytest.raises(ClientError) as e:
            call()
        assert error_of(e) == (404, "NoSuchKey"), operation
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="missing")
    assert error_of(e) == (404, "404")


def test_copy_object_tagging_directive(s3, bucket, bucket2):
    put(s3, bucket, "src", b"source", Tagging="k=v&a=b%20c")
    source = {"Bucket": bucket, "Key": "src"}
    src_tags = [{"Key": "a", "Value": "b c"}, {"Key": "k", "Value": "v"}]

    s3.copy_object(Bucket=bucket2, Key="default", CopySource=source)
    assert tags_of(s3, bucket2, "default") == src_tags
    s3.copy_object(Bucket=bucket2, Key="copy", CopySource=source, TaggingDirective="COPY")
    assert tags_of(s3, bucket2, "copy") == src_tags
    assert s3.get_object(Bucket=bucket2, Key="copy")["TagCount"] == 2

    s3.copy_object(Bucket=bucket2, Key="replace", CopySource=source, TaggingDirective="REPLACE", Tagging="new=1")
    assert tags_of(s3, bucket2, "replace") == [{"Key": "new", "Value": "1"}]
    s3.copy_object(Bucket=bucket2, Key="cleared", CopySource=source, TaggingDirective="REPLACE")
    assert tags_of(s3, bucket2, "cleared") == []
    assert "TagCount" not in s3.get_object(Bucket=bucket2, Key="cleared")
    # The source keeps its tags.
    assert tags_of(s3, bucket, "src") == src_tags


def test_multipart_upload_tagging(s3, bucket):
    key = "tagged-mpu"
    body = b"multipart with tags"
    upload_id = create_upload(s3, bucket, key, Tagging="mpu=yes&x=y%2Fz")["UploadId"]
    part, _ = upload_part(s3, bucket, key, upload_id, 1, body)
    complete_upload(s3, bucket, key, upload_id, [part])
    assert tags_of(s3, bucket, key) == [{"Key": "mpu", "Value": "yes"}, {"Key": "x", "Value": "y/z"}]
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["TagCount"] == 2
    assert got["Body"].read() == body


def test_acls(s3, bucket):
    acl = s3.get_bucket_acl(Bucket=bucket)
    owner = acl["Owner"]["ID"]
    assert owner
    assert [(g["Grantee"]["Type"], g["Grantee"]["ID"], g["Permission"]) for g in acl["Grants"]] == [
        ("CanonicalUser", owner, "FULL_CONTROL")
    ]
    put(s3, bucket, "obj", b"acl")
    oacl = s3.get_object_acl(Bucket=bucket, Key="obj")
    assert oacl["Owner"]["ID"] == owner
    assert [(g["Grantee"]["ID"], g["Permission"]) for g in oacl["Grants"]] == [(owner, "FULL_CONTROL")]
    with pytest.raises(ClientError) as e:
        s3.get_object_acl(Bucket=bucket, Key="missing")
    assert error_of(e) == (404, "NoSuchKey")

    assert status(s3.put_bucket_acl(Bucket=bucket, ACL="private")) == 200
    assert status(s3.put_object_acl(Bucket=bucket, Key="obj", ACL="private")) == 200
    assert status(put(s3, bucket, "private", b"x", ACL="private")) == 200


def test_bucket_versioning_and_location(s3, bucket):
    resp = s3.get_bucket_versioning(Bucket=bucket)
    assert status(resp) == 200
    assert "Status" not in resp
    assert "MFADelete" not in resp
    resp = s3.get_bucket_location(Bucket=bucket)
    assert status(resp) == 200
    assert resp["LocationConstraint"] is None


# --- presigned URLs --------------------------------------------------------------------


def _urlopen(req):
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_presigned_put_and_get(s3, bucket):
    body = b"uploaded through a presigned URL"
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "pre/signed.txt", "ContentType": "text/plain"}, ExpiresIn=300
    )
    assert "X-Amz-Signature=" in url
    req = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": "text/plain"})
    code, hdrs, _ = _urlopen(req)
    assert code == 200
    assert hdrs["ETag"] == md5_etag(body)

    head = s3.head_object(Bucket=bucket, Key="pre/signed.txt")
    assert head["ContentType"] == "text/plain"
    assert head["ContentLength"] == len(body)

    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre/signed.txt"}, ExpiresIn=300)
    code, hdrs, got = _urlopen(urllib.request.Request(url))
    assert code == 200
    assert got == body
    assert hdrs["ETag"] == md5_etag(body)

    url = s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": bucket, "Key": "pre/signed.txt", "ResponseContentDisposition": "attachment"},
        ExpiresIn=300,
    )
    code, hdrs, got = _urlopen(urllib.request.Request(url))
    assert code == 200
    assert hdrs["Content-Disposition"] == "attachment"

    # A presigned URL is valid for its own key only.
    tampered = url.replace("/pre/signed.txt?", "/pre/other.txt?")
    code, _, got = _urlopen(urllib.request.Request(tampered))
    assert code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in got

    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre/missing"}, ExpiresIn=300)
    code, _, got = _urlopen(urllib.request.Request(url))
    assert code == 404
    assert b"<Code>NoSuchKey</Code>" in got


# --- browser POST uploads --------------------------------------------------------------
#
# botocore's generate_presigned_post signs the policy; the form is posted the way a browser
# does, the file part last. S3's refusals, as S3 answers them (403 AccessDenied "Invalid
# according to Policy: …", 400 EntityTooLarge / EntityTooSmall): the S3 User Guide's POST
# policy pages, and real answers quoted in boto/boto3#4514 and infinitered/apisauce#245.


def post_form(url, fields, content, filename="upload.bin", file_type="application/octet-stream"):
    """POST a multipart/form-data upload: every field in order, then the file (S3 ignores
    fields after it). (status, headers, body)"""
    boundary = "aether-compat-" + uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {file_type}\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        url, data=b"".join(parts), method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    return _urlopen(request)


def xml_fields(body):
    """The child elements of an XML document's root, by local name: {name: text}."""
    root = ET.fromstring(body)
    return root.tag.rsplit("}", 1)[-1], {child.tag.rsplit("}", 1)[-1]: child.text for child in root}


def keys_in(s3, bucket):
    return keys_of(s3.list_objects_v2(Bucket=bucket))


POLICY_CONDITION_FAILED = "Invalid according to Policy: Policy Condition failed: "


def test_post_upload_filename_and_content_type(s3, bucket):
    body = b"uploaded from a browser form\n" * 50
    post = s3.generate_presigned_post(
        bucket,
        "uploads/${filename}",
        Fields={"Content-Type": "text/plain"},
        Conditions=[["starts-with", "$Content-Type", "text/"]],
        ExpiresIn=300,
    )
    assert post["url"] == f"{endpoint()}/{bucket}"
    code, hdrs, got = post_form(post["url"], post["fields"], body, filename="notes.txt")
    assert (code, got) == (204, b"")
    assert hdrs["ETag"] == md5_etag(body)

    # ${filename} became the file part's name; the Content-Type field, not the file part's
    # own Content-Type, is the object's.
    obj = s3.get_object(Bucket=bucket, Key="uploads/notes.txt")
    assert obj["Body"].read() == body
    assert obj["ContentType"] == "text/plain"
    assert obj["ContentLength"] == len(body)
    assert obj["ETag"] == md5_etag(body)

    # A Content-Type outside the policy's condition. S3 quotes the failed condition after
    # the colon as a JSON array with ", " separators, a simple one as ["eq", "$key", "…"]
    # (boto/boto3#4514); aether quotes it as the policy wrote it, without spaces: only the
    # prefix is asserted.
    code, _, got = post_form(post["url"], dict(post["fields"], **{"Content-Type": "image/png"}), body, "x.png")
    assert code == 403
    name, error = xml_fields(got)
    assert (name, error["Code"]) == ("Error", "AccessDenied")
    assert error["Message"].startswith(POLICY_CONDITION_FAILED)
    assert keys_in(s3, bucket) == ["uploads/notes.txt"]


def test_post_upload_success_action_status(s3, bucket):
    body = data_of(3000, "post-201")
    post = s3.generate_presigned_post(
        bucket,
        "status/created",
        Fields={"success_action_status": "201"},
        Conditions=[{"success_action_status": "201"}],
        ExpiresIn=300,
    )
    code, hdrs, got = post_form(post["url"], post["fields"], body)
    assert code == 201
    assert hdrs["ETag"] == md5_etag(body)
    name, result = xml_fields(got)
    assert name == "PostResponse"
    # <Location> is left out: S3 writes the object's absolute URL there.
    assert (result["Bucket"], result["Key"], result["ETag"]) == (bucket, "status/created", md5_etag(body))
    assert s3.get_object(Bucket=bucket, Key="status/created")["Body"].read() == body

    # Without success_action_status: 204 and no body.
    post = s3.generate_presigned_post(bucket, "status/default", ExpiresIn=300)
    code, hdrs, got = post_form(post["url"], post["fields"], body[:100])
    assert (code, got) == (204, b"")
    assert hdrs["ETag"] == md5_etag(body[:100])
    assert s3.get_object(Bucket=bucket, Key="status/default")["Body"].read() == body[:100]


def test_post_upload_content_length_range(s3, bucket):
    post = s3.generate_presigned_post(bucket, "sized", Conditions=[["content-length-range", 10, 20]], ExpiresIn=300)
    # S3's messages ("Your proposed upload exceeds the maximum allowed size", "… is smaller
    # than the minimum allowed size", with <ProposedSize> and <MaxSizeAllowed> /
    # <MinSizeAllowed>) differ from aether's; the codes are asserted.
    for size, want in [(21, "EntityTooLarge"), (9, "EntityTooSmall")]:
        code, _, got = post_form(post["url"], post["fields"], b"x" * size)
        assert (code, xml_fields(got)[1]["Code"]) == (400, want), size
    assert keys_in(s3, bucket) == []
    for size in (10, 20):
        code, _, _ = post_form(post["url"], post["fields"], b"y" * size)
        assert code == 204, size
        assert s3.get_object(Bucket=bucket, Key="sized")["Body"].read() == b"y" * size


def test_post_upload_policy_refusals(s3, bucket):
    body = b"refused"
    post = s3.generate_presigned_post(bucket, "guarded", ExpiresIn=300)

    # A field no condition names.
    code, _, got = post_form(post["url"], dict(post["fields"], **{"x-amz-meta-x": "1"}), body)
    assert code == 403
    assert xml_fields(got)[1]["Code"] == "AccessDenied"
    assert xml_fields(got)[1]["Message"] == "Invalid according to Policy: Extra input fields: x-amz-meta-x"

    # A key other than the signed one.
    code, _, got = post_form(post["url"], dict(post["fields"], key="elsewhere"), body)
    assert code == 403
    assert xml_fields(got)[1]["Code"] == "AccessDenied"
    assert xml_fields(got)[1]["Message"].startswith(POLICY_CONDITION_FAILED)

    # A policy rewritten for another key no longer matches its signature.
    policy = json.loads(base64.b64decode(post["fields"]["policy"]))
    policy["conditions"] = [c for c in policy["conditions"] if c != {"key": "guarded"}] + [{"key": "elsewhere"}]
    rewritten = dict(post["fields"], key="elsewhere", policy=b64(json.dumps(policy).encode()))
    code, _, got = post_form(post["url"], rewritten, body)
    assert (code, xml_fields(got)[1]["Code"]) == (403, "SignatureDoesNotMatch")

    # An expired policy.
    expired = s3.generate_presigned_post(bucket, "late", ExpiresIn=-10)
    code, _, got = post_form(expired["url"], expired["fields"], body)
    assert code == 403
    assert xml_fields(got)[1]["Code"] == "AccessDenied"
    assert xml_fields(got)[1]["Message"] == "Invalid according to Policy: Policy expired."

    assert keys_in(s3, bucket) == []
    # The form itself was fine.
    code, _, _ = post_form(post["url"], post["fields"], body)
    assert code == 204
    assert keys_in(s3, bucket) == ["guarded"]


# --- CORS ------------------------------------------------------------------------------
#
# The preflight answers below are S3's as LocalStack recorded them against AWS
# (tests/aws/services/s3/test_s3_cors.snapshot.json): the requested origin echoed (or `*`
# for a `*` rule, then without Access-Control-Allow-Credentials), the rule's methods joined
# with ", ", the requested headers lower-cased, Max-Age and Expose-Headers from the rule.

CORS_RULES = [
    {
        "ID": "app",
        "AllowedOrigins": ["http://app.example", "https://*.cdn.example"],
        "AllowedMethods": ["GET", "PUT"],
        "AllowedHeaders": ["x-amz-*", "Content-Type"],
        "ExposeHeaders": ["ETag", "x-amz-request-id"],
        "MaxAgeSeconds": 600,
    },
    {"ID": "anyone-head", "AllowedOrigins": ["*"], "AllowedMethods": ["HEAD"]},
]
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"


def preflight(bucket, key, origin=None, method=None, request_headers=None):
    """An unauthenticated OPTIONS, as a browser sends it: (status, headers, body)."""
    hdrs = {}
    if origin:
        hdrs["Origin"] = origin
    if method:
        hdrs["Access-Control-Request-Method"] = method
    if request_headers:
        hdrs["Access-Control-Request-Headers"] = request_headers
    url = f"{endpoint()}/{bucket}/{urllib.parse.quote(key)}"
    return _urlopen(urllib.request.Request(url, method="OPTIONS", headers=hdrs))


def cors_headers(hdrs):
    return {k.lower(): v for k, v in hdrs.items() if k.lower().startswith("access-control-")}


def wait_for_preflight(bucket, want_status, **kw):
    """The server answers preflights from its catalog cache, which follows a watch: poll
    (bounded) until a configuration change shows."""
    last = []

    def check():
        last[:] = [preflight(bucket, "k", **kw)]
        return last[0][0] == want_status

    poll(check, 5)
    return last[0]


def test_bucket_cors_configuration(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_of(e) == (404, "NoSuchCORSConfiguration")
    assert status(s3.delete_bucket_cors(Bucket=bucket)) == 204  # nothing to delete is fine

    assert status(s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": CORS_RULES})) == 200
    resp = s3.get_bucket_cors(Bucket=bucket)
    assert status(resp) == 200
    assert resp["CORSRules"] == CORS_RULES

    with pytest.raises(ClientError) as e:
        s3.put_bucket_cors(
            Bucket=bucket, CORSConfiguration={"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]}
        )
    assert error_of(e) == (400, "InvalidRequest")
    assert "PATCH" in e.value.response["Error"]["Message"]
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == CORS_RULES

    assert status(s3.delete_bucket_cors(Bucket=bucket)) == 204
    with pytest.raises(ClientError) as e:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_of(e) == (404, "NoSuchCORSConfiguration")


def test_cors_preflight_and_cross_origin_get(s3, bucket):
    put(s3, bucket, "k", b"cors body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=300)

    def cross_origin_get(origin):
        return _urlopen(urllib.request.Request(url, headers={"Origin": origin}))

    # No configuration: preflights are refused, requests get no CORS headers.
    code, _, body = preflight(bucket, "k", origin="http://app.example", method="GET")
    assert code == 403
    assert b"<Code>AccessForbidden</Code>" in body
    code, hdrs, got = cross_origin_get("http://app.example")
    assert (code, got) == (200, b"cors body")
    assert cors_headers(hdrs) == {}

    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": CORS_RULES})
    request = dict(origin="http://app.example", method="PUT", request_headers="x-amz-date, content-type")
    code, hdrs, body = wait_for_preflight(bucket, 200, **request)
    assert code == 200
    assert body == b""
    assert cors_headers(hdrs) == {
        "access-control-allow-origin": "http://app.example",
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET, PUT",
        "access-control-allow-headers": "x-amz-date, content-type",
        "access-control-expose-headers": "ETag, x-amz-request-id",
        "access-control-max-age": "600",
    }
    assert hdrs["Vary"] == VARY

    # One wildcard in an origin pattern.
    code, hdrs, _ = preflight(bucket, "k", origin="https://eu.cdn.example", method="GET")
    assert code == 200
    assert hdrs["Access-Control-Allow-Origin"] == "https://eu.cdn.example"
    assert "Access-Control-Allow-Headers" not in hdrs
    # A `*` origin answers `*`, without credentials.
    code, hdrs, _ = preflight(bucket, "k", origin="http://elsewhere.example", method="HEAD")
    assert code == 200
    assert cors_headers(hdrs) == {"access-control-allow-origin": "*", "access-control-allow-methods": "HEAD"}

    # What no rule allows: origin, method or a requested header.
    for case in (
        dict(origin="http://evil.example", method="GET"),
        dict(origin="http://cdn.example", method="GET"),
        dict(origin="http://app.example", method="DELETE"),
        dict(origin="http://app.example", method="GET", request_headers="x-amz-date, authorization"),
    ):
        code, hdrs, body = preflight(bucket, "k", **case)
        assert code == 403, case
        assert b"<Code>AccessForbidden</Code>" in body, case
        assert cors_headers(hdrs) == {}, case
    # No Origin: not a CORS request at all.
    code, _, body = preflight(bucket, "k", method="GET")
    assert code == 400
    assert b"<Code>BadRequest</Code>" in body

    # The actual cross-origin request gets the same headers, for an allowed origin only.
    code, hdrs, got = cross_origin_get("http://app.example")
    assert (code, got) == (200, b"cors body")
    assert hdrs["Access-Control-Allow-Origin"] == "http://app.example"
    assert hdrs["Access-Control-Allow-Credentials"] == "true"
    assert hdrs["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    assert hdrs["Vary"] == VARY
    code, hdrs, got = cross_origin_get("http://evil.example")
    assert (code, got) == (200, b"cors body")
    assert cors_headers(hdrs) == {}

    # Deleted: preflights are refused again.
    s3.delete_bucket_cors(Bucket=bucket)
    code, _, body = wait_for_preflight(bucket, 403, **request)
    assert code == 403
    assert b"<Code>AccessForbidden</Code>" in body


# --- authentication and unsupported operations -----------------------------------------


def test_wrong_credentials(bucket):
    wrong_secret = make_client(aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as e:
        wrong_secret.list_objects_v2(Bucket=bucket)
    assert error_of(e) == (403, "SignatureDoesNotMatch")
    unknown = make_client(aws_access_key_id="AKIAUNKNOWNKEY000000")
    with pytest.raises(ClientError) as e:
        unknown.list_objects_v2(Bucket=bucket)
    assert error_of(e) == (403, "InvalidAccessKeyId")


def test_unsupported_operations_answer_not_implemented(s3, bucket):
    # aether's contract (docs/status.md): 501 naming the operation, never a silent 200.
    calls = {
        "GetBucketWebsite": lambda: s3.get_bucket_website(Bucket=bucket),
        "PutBucketLifecycleConfiguration": lambda: s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [{"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}]
            },
        ),
        "GetBucketPolicy": lambda: s3.get_bucket_policy(Bucket=bucket),
        "ListObjectVersions": lambda: s3.list_object_versions(Bucket=bucket),
    }
    for operation, call in calls.items():
        with pytest.raises(ClientError) as e:
            call()
        assert error_of(e) == (501, "NotImplemented"), operation
        assert operation in e.value.response["Error"]["Message"], operation
