"""Fixtures for the boto3 compatibility suite (run through tests/compat/run.sh).

The endpoint and credentials come from the environment: AETHER_COMPAT_ENDPOINT,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY. The clients use botocore's default checksum
behaviour: request_checksum_calculation / response_checksum_validation are left unset
("when_supported"), so every upload carries a CRC32 checksum and responses that carry a
checksum are validated.
"""

import os
import re
import time
import uuid

import boto3
import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

REGION = "us-east-1"

# botocore before 1.43.77 sends `Expect: 100-continue` on zero-length PUTs and, when the
# server answers such a PUT with its final status and no interim 100 (as S3 itself now
# does, and aether), parses the next response on that pooled connection against the stale
# status line: a 60 s read stall and a silent retry (boto/botocore#3755, fixed by #3784 in
# 1.43.77). On older botocore, use its own opt-out for empty bodies; upgrading botocore
# here would break the pin of an installed aws-cli.
if tuple(int(p) for p in re.findall(r"\d+", botocore.__version__)[:3]) < (1, 43, 77):
    os.environ.setdefault("BOTO_EXPERIMENTAL__NO_EMPTY_CONTINUE", "true")


def endpoint():
    url = os.environ.get("AETHER_COMPAT_ENDPOINT")
    if not url:
        pytest.exit("AETHER_COMPAT_ENDPOINT is not set: run tests/compat/run.sh", returncode=2)
    return url


def make_client(**overrides):
    """A boto3 S3 client: path-style, us-east-1, SigV4, default checksum settings."""
    config = Config(
        region_name=REGION,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        # No retries: a 5xx, a timeout or a broken response fails the test instead of being
        # papered over by a second attempt.
        retries={"mode": "standard", "max_attempts": 1},
        connect_timeout=5,
        read_timeout=30,
    )
    kwargs = dict(
        endpoint_url=endpoint(),
        region_name=REGION,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=config,
    )
    kwargs.update(overrides)
    return boto3.session.Session().client("s3", **kwargs)


def poll(check, timeout_s):
    """Call `check` until it returns true or `timeout_s` has passed; its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok = check()
        if ok or time.monotonic() > deadline:
            return ok
        time.sleep(0.05)


def _wait_until_writable(client, deadline_s=30):
    """The server reports ready once its catalog is loaded; poll (bounded) until a bucket
    and an object can be written, so the first test does not race blobd's registration."""
    name = "compat-probe-" + uuid.uuid4().hex[:12]
    steps = [
        lambda: client.create_bucket(Bucket=name),
        lambda: client.put_object(Bucket=name, Key="probe", Body=b"x"),
        lambda: client.delete_object(Bucket=name, Key="probe"),
        lambda: client.delete_bucket(Bucket=name),
    ]
    errors = []

    def attempt(step):
        try:
            step()
            return True
        except (ClientError, EndpointConnectionError) as e:
            errors.append(e)
            return False

    for step in steps:
        if not poll(lambda: attempt(step), deadline_s):
            pytest.exit(f"aether did not accept writes within {deadline_s}s: {errors[-1]}", returncode=2)


@pytest.fixture(scope="session")
def s3():
    client = make_client()
    _wait_until_writable(client)
    return client


def force_trailer(params, **_kwargs):
    """before-call hook: move botocore's request checksum from a header into an
    aws-chunked trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER). botocore does this by
    default over https only; aether here is plain http."""
    algorithm = params.get("context", {}).get("checksum", {}).get("request_algorithm")
    if isinstance(algorithm, dict) and algorithm.get("in") == "header":
        algorithm["in"] = "trailer"


@pytest.fixture(scope="session")
def s3_trailer(s3):
    """Like `s3`, but streaming uploads (PutObject, UploadPart) send their checksum the way
    botocore does over https: aws-chunked body, checksum in a trailer."""
    client = make_client()
    client.meta.events.register("before-call.s3.PutObject", force_trailer)
    client.meta.events.register("before-call.s3.UploadPart", force_trailer)
    client.sent_headers = []  # the headers of every request sent, for the tests to check

    def record(request, **_kwargs):
        client.sent_headers.append(
            {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        )

    client.meta.events.register("before-send.s3", record)
    return client


def unique_name(prefix="compat"):
    """A fresh, valid bucket name (lowercase, 3–63 characters)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def empty_and_delete(client, name):
    """Delete every object and upload in a bucket, then the bucket (missing is fine)."""
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
        for u in uploads:
            try:
                client.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
            except ClientError:
                pass
        client.delete_bucket(Bucket=name)
    except ClientError as e:
        if e.response["Error"]["Code"] != "NoSuchBucket":
            raise


@pytest.fixture
def bucket(s3):
    """A fresh, uniquely named bucket, emptied and deleted afterwards."""
    name = unique_name()
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete(s3, name)


@pytest.fixture
def bucket2(s3):
    """A second fresh bucket (cross-bucket copies)."""
    name = unique_name("compat2")
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete(s3, name)
