#!/usr/bin/env bash
# boto3 compatibility suite (tests/compat/test_s3.py) against `aether server` with auth on:
# a second, independent S3 client next to the Rust aws-sdk-s3 tests, with botocore's
# default checksum behaviour (CRC32 on every upload, response checksum validation).
# Usage: tests/compat/run.sh [path/to/aether] [extra pytest args, e.g. -k multipart]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$repo/tests/e2e/lib.sh"
bin=$(realpath "${1:-target/debug/aether}")
[ "$#" -gt 0 ] && shift
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 1; }

# boto3 + pytest, and awscrt (botocore needs it for CRC32C and CRC64NVME checksums). An
# installed botocore is kept at its version (aws-cli pins it exactly): boto3 is chosen to
# match it.
if ! python3 -c 'import boto3, pytest, awscrt' 2>/dev/null; then
  pin=()
  if botocore_version=$(python3 -c 'import botocore; print(botocore.__version__)' 2>/dev/null); then
    pin=("botocore==$botocore_version")
  fi
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    boto3 pytest awscrt ${pin[@]+"${pin[@]}"}
fi

export AETHER_ACCESS_KEY=AKIACOMPATTESTKEY001 AETHER_SECRET_KEY=compat-secret-key-with-enough-length
AETHER_LOG_LEVEL=warn start_server "$bin"
trap - ERR

export AETHER_COMPAT_ENDPOINT="http://127.0.0.1:$s3_port"
aws_env
# Nothing from the caller's environment changes the clients' defaults.
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 \
  AWS_REQUEST_CHECKSUM_CALCULATION AWS_RESPONSE_CHECKSUM_VALIDATION
# Nothing written into the source tree (no .pytest_cache, no __pycache__).
export PYTHONDONTWRITEBYTECODE=1
rc=0
(cd "$repo" && timeout 600 python3 -m pytest -q -p no:cacheprovider tests/compat "$@") || rc=$?
[ "$rc" -eq 0 ] || server_log
exit "$rc"
