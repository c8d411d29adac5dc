#!/usr/bin/env bash
# s3cmd (Debian's) against `aether server` with auth on, path-style, SigV4: mb, put (small
# and multipart), ls / la, get (byte-compared), info (metadata, MD5), del, rb.
# Usage: tests/e2e/s3cmd.sh [path/to/aether]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
bin=$(realpath "${1:-target/debug/aether}")
command -v s3cmd >/dev/null || { echo "s3cmd is not installed (apt-get install s3cmd)" >&2; exit 1; }
export AETHER_ACCESS_KEY=AKIAS3CMDTESTKEY0001 AETHER_SECRET_KEY=s3cmd-secret-key-with-enough-length
start_server "$bin"

cat >"$work/s3cfg" <<EOF
[default]
access_key = $AETHER_ACCESS_KEY
secret_key = $AETHER_SECRET_KEY
host_base = 127.0.0.1:$s3_port
host_bucket = 127.0.0.1:$s3_port
bucket_location = us-east-1
use_https = False
signature_v2 = False
multipart_chunk_size_mb = 5
EOF
s3() { s3cmd -c "$work/s3cfg" --no-progress "$@"; }

echo "--- $(s3cmd --version)"
head -c 4321 /dev/urandom >"$work/small.bin"
head -c $((12 * 1024 * 1024 + 5)) /dev/urandom >"$work/big.bin"
s3 mb s3://s3cmd-e2e
s3 put "$work/small.bin" s3://s3cmd-e2e/dir/small.bin
s3 put --mime-type=application/x-test "$work/big.bin" s3://s3cmd-e2e/big.bin
s3 ls s3://s3cmd-e2e/ | tee "$work/ls.txt"
grep -q "DIR.*s3://s3cmd-e2e/dir/" "$work/ls.txt"
grep -q "s3://s3cmd-e2e/big.bin" "$work/ls.txt"
[ "$(s3 la | grep -c 's3://s3cmd-e2e/')" -eq 2 ]
s3 get s3://s3cmd-e2e/dir/small.bin "$work/small.out"
s3 get s3://s3cmd-e2e/big.bin "$work/big.out"
cmp "$work/small.bin" "$work/small.out"
cmp "$work/big.bin" "$work/big.out"
s3 info s3://s3cmd-e2e/dir/small.bin | tee "$work/info.txt"
grep -q "MD5 sum: *$(md5sum "$work/small.bin" | cut -d' ' -f1)" "$work/info.txt"
s3 info s3://s3cmd-e2e/big.bin | tee "$work/info-big.txt"
grep -q "File size: *$((12 * 1024 * 1024 + 5))" "$work/info-big.txt"
grep -q "MIME type: *application/x-test" "$work/info-big.txt"
s3 del s3://s3cmd-e2e/dir/small.bin s3://s3cmd-e2e/big.bin
[ -z "$(s3 ls --recursive s3://s3cmd-e2e/)" ]
s3 rb s3://s3cmd-e2e
if s3 ls s3://s3cmd-e2e/ >/dev/null 2>&1; then echo "the bucket still exists" >&2; exit 1; fi
echo "s3cmd e2e: ok"
