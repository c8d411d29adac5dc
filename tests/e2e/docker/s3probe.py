#!/usr/bin/env python3
"""S3 traffic for the compose e2e test, through botocore (installed with aws-cli), with
retries OFF: every failed request counts, none is hidden by a client retry.

  s3probe.py ENDPOINT streak BUCKET N SECS   wait (at most SECS) for N HeadBucket successes
                                             in a row; exit 1 on timeout
  s3probe.py ENDPOINT load BUCKET PREFIX N   N x (PUT PREFIX<i>, GET it, compare bytes);
                                             print failures, exit 1 if any
  s3probe.py ENDPOINT flow BUCKET PREFIX STOPFILE MAXSECS
                                             PUT+GET in a loop until STOPFILE exists (at
                                             most MAXSECS); print ok/failed counts and
                                             each failure; exit 1 if any failed
  s3probe.py ENDPOINT mb BUCKET SECS         CreateBucket, retried until it succeeds (at
                                             most SECS); print how long it took

Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""
import hashlib
import os
import sys
import time

import botocore.config
import botocore.session


def client(endpoint):
    s = botocore.session.get_session()
    cfg = botocore.config.Config(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"},
    )
    return s.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=cfg,
    )


def put_get(c, bucket, key, i):
    body = hashlib.sha256(f"{key}/{i}".encode()).digest() * (64 + i % 64)
    c.put_object(Bucket=bucket, Key=key, Body=body)
    got = c.get_object(Bucket=bucket, Key=key)["Body"].read()
    if got != body:
        raise RuntimeError(f"{key}: read {len(got)} bytes, not the {len(body)} written")


def main():
    endpoint, mode, *args = sys.argv[1:]
    c = client(endpoint)
    if mode == "streak":
        bucket, n, secs = args[0], int(args[1]), float(args[2])
        deadline, run = time.monotonic() + secs, 0
        while time.monotonic() < deadline:
            try:
                c.head_bucket(Bucket=bucket)
                run += 1
                if run >= n:
                    return 0
            except Exception:  # noqa: BLE001 - any failure restarts the streak
                run = 0
                time.sleep(0.2)
        print(f"no {n} successes in a row within {secs}s", file=sys.stderr)
        return 1
    if mode == "load":
        bucket, prefix, n = args[0], args[1], int(args[2])
        failed = 0
        for i in range(n):
            try:
                put_get(c, bucket, f"{prefix}{i}", i)
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"request {i} failed: {e}", file=sys.stderr)
        print(f"load: {n - failed}/{n} put+get ok")
        return 1 if failed else 0
    if mode == "flow":
        bucket, prefix, stop, maxsecs = args[0], args[1], args[2], float(args[3])
        ok = failed = i = 0
        deadline = time.monotonic() + maxsecs
        while not os.path.exists(stop) and time.monotonic() < deadline:
            try:
                put_get(c, bucket, f"{prefix}{i}", i)
                ok += 1
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"flow request {i} failed: {e}", file=sys.stderr)
            i += 1
        print(f"flow: {ok} put+get ok, {failed} failed")
        return 1 if failed or ok == 0 else 0
    if mode == "mb":
        bucket, secs = args[0], float(args[1])
        start = time.monotonic()
        last = None
        while time.monotonic() - start < secs:
            try:
                c.create_bucket(Bucket=bucket)
                print(f"mb {bucket}: created after {time.monotonic() - start:.1f}s")
                return 0
            except Exception as e:  # noqa: BLE001
                last = e
                time.sleep(0.2)
        print(f"mb {bucket}: still failing after {secs}s: {last}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
