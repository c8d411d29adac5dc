#!/usr/bin/env bash
# rclone (Debian's) against `aether server` with auth on: sync a tree with small files and
# a multipart one up and back, `rclone check` (hashes), server-side copy, delete + resync,
# ListMultipartUploads through `rclone cleanup`, purge.
# Usage: tests/e2e/rclone.sh [path/to/aether]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
bin=$(realpath "${1:-target/debug/aether}")
command -v rclone >/dev/null || { echo "rclone is not installed (apt-get install rclone)" >&2; exit 1; }
export AETHER_ACCESS_KEY=AKIARCLONETESTKEY001 AETHER_SECRET_KEY=rclone-secret-key-with-enough-length
start_server "$bin"

# The remote `ae`, from the environment only (no config file is read or written).
unset AWS_CA_BUNDLE AWS_PROFILE
export RCLONE_CONFIG="$work/rclone.conf"
: >"$RCLONE_CONFIG"
export RCLONE_CONFIG_AE_TYPE=s3 RCLONE_CONFIG_AE_PROVIDER=Other RCLONE_CONFIG_AE_ENV_AUTH=false
export RCLONE_CONFIG_AE_ACCESS_KEY_ID=$AETHER_ACCESS_KEY RCLONE_CONFIG_AE_SECRET_ACCESS_KEY=$AETHER_SECRET_KEY
export RCLONE_CONFIG_AE_ENDPOINT="http://127.0.0.1:$s3_port" RCLONE_CONFIG_AE_REGION=us-east-1
export RCLONE_CONFIG_AE_FORCE_PATH_STYLE=true
# Multipart above 10 MiB, in 5 MiB parts.
rc() { rclone --retries 1 --low-level-retries 1 --s3-upload-cutoff 10M --s3-chunk-size 5M "$@"; }

echo "--- rclone $(rclone version | sed -n 1p)"
mkdir -p "$work/tree/sub/deeper" "$work/back"
# 1,000 small files in a few directories, three large ones (multipart), an empty one.
python3 - "$work/tree" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(1000):
    d = os.path.join(root, "small", f"d{i % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.bin"), "wb") as f:
        f.write(os.urandom(1 + (i * 37) % 5000))
PY
for i in 1 2 3; do echo "deep $i" >"$work/tree/sub/deeper/d $i.txt"; done
head -c $((23 * 1024 * 1024 + 11)) /dev/urandom >"$work/tree/sub/big.bin"
head -c $((12 * 1024 * 1024)) /dev/urandom >"$work/tree/sub/big2.bin"
head -c $((10 * 1024 * 1024)) /dev/urandom >"$work/tree/big3.bin"
: >"$work/tree/empty.txt"

echo "--- mkdir, sync up, check (hashes), sync back"
rc mkdir ae:rclone-e2e
rc sync "$work/tree" ae:rclone-e2e/tree
rc check "$work/tree" ae:rclone-e2e/tree
rc sync ae:rclone-e2e/tree "$work/back"
diff -r "$work/tree" "$work/back"
[ "$(rc lsf -R --files-only ae:rclone-e2e/tree | wc -l)" -eq 1007 ]

echo "--- server-side copy (CopyObject / UploadPartCopy), check"
rc copy ae:rclone-e2e/tree ae:rclone-e2e/copy
rc check "$work/tree" ae:rclone-e2e/copy

echo "--- delete locally, sync again: the remote follows"
rm "$work/tree/small/d3/f3.bin" "$work/tree/sub/deeper/d 2.txt"
echo changed >"$work/tree/small/d4/f4.bin"
rc sync "$work/tree" ae:rclone-e2e/tree
rc check "$work/tree" ae:rclone-e2e/tree
[ "$(rc lsf -R --files-only ae:rclone-e2e/tree | wc -l)" -eq 1005 ]

echo "--- delete by filter (DeleteObjects), lsf"
rc delete --include "/small/d5/**" ae:rclone-e2e/tree
[ "$(rc lsf -R --files-only ae:rclone-e2e/tree/small/d5 2>/dev/null | wc -l)" -eq 0 ]
[ "$(rc lsf -R --files-only ae:rclone-e2e/tree | wc -l)" -eq 905 ]

echo "--- cleanup (lists and aborts unfinished multipart uploads), purge"
rc cleanup ae:rclone-e2e
rc purge ae:rclone-e2e
if [ -n "$(rc lsf ae:rclone-e2e 2>/dev/null)" ]; then echo "the bucket still lists objects" >&2; exit 1; fi
if grep -q rclone-e2e <<<"$(rc lsd ae:)"; then echo "the bucket is still listed" >&2; exit 1; fi
echo "rclone e2e: ok"
