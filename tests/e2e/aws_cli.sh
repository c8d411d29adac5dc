#!/usr/bin/env bash
# aws-cli (default settings: CRC checksums, aws-chunked uploads, multipart over 8 MiB)
# and etcdctl against `aether server` with auth on.
# Usage: tests/e2e/aws_cli.sh [path/to/aether]
# Against a running cluster instead (the compose test): set AETHER_E2E_S3_URL (the S3
# endpoint), AETHER_E2E_METAD (etcdctl endpoints) and AETHER_ACCESS_KEY/AETHER_SECRET_KEY.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
if [ -n "${AETHER_E2E_S3_URL:-}" ]; then
  s3_url=$AETHER_E2E_S3_URL metad_endpoints=$AETHER_E2E_METAD
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
else
  bin=$(realpath "${1:-target/debug/aether}")
  export AETHER_ACCESS_KEY=AKIAE2ETESTKEY000001 AETHER_SECRET_KEY=e2e-secret-key-with-enough-length
  start_server "$bin"
  s3_url=http://127.0.0.1:$s3_port metad_endpoints=127.0.0.1:$metad_port
fi

aws_env
s3() { aws --endpoint-url "$s3_url" "$@"; }

echo "--- mb, cp small, cp 50 MiB (multipart), sync, ls, rm, rb"
s3 s3 mb s3://e2e-bucket
head -c 1234 /dev/urandom >"$work/small.bin"
head -c $((50 * 1024 * 1024)) /dev/urandom >"$work/big.bin"
s3 s3 cp --no-progress "$work/small.bin" s3://e2e-bucket/small.bin
s3 s3 cp --no-progress "$work/big.bin" s3://e2e-bucket/dir/big.bin
s3 s3 cp --no-progress s3://e2e-bucket/small.bin "$work/small.out"
s3 s3 cp --no-progress s3://e2e-bucket/dir/big.bin "$work/big.out"
cmp "$work/small.bin" "$work/small.out"
cmp "$work/big.bin" "$work/big.out"
etag=$(s3 s3api head-object --bucket e2e-bucket --key dir/big.bin --query ETag --output text)
case "$etag" in *-*) echo "multipart ETag $etag" ;; *) echo "expected a multipart ETag, got $etag" >&2; exit 1 ;; esac

mkdir -p "$work/tree/a/b"
for i in 1 2 3; do echo "file $i" >"$work/tree/f$i.txt"; echo "deep $i" >"$work/tree/a/b/d$i.txt"; done
s3 s3 sync --no-progress "$work/tree" s3://e2e-bucket/tree
listing=$(s3 s3 ls --recursive s3://e2e-bucket/tree/)
echo "$listing"
[ "$(echo "$listing" | wc -l)" -eq 6 ]
s3 s3 sync --no-progress s3://e2e-bucket/tree "$work/tree-back"
diff -r "$work/tree" "$work/tree-back"
top=$(s3 s3 ls s3://e2e-bucket/)
grep -q "PRE dir/" <<<"$top"
grep -q "small.bin" <<<"$top"

echo "--- s3api delete-objects (two keys and one that never existed)"
s3 s3api delete-objects --bucket e2e-bucket \
  --delete '{"Objects":[{"Key":"tree/f1.txt"},{"Key":"tree/a/b/d1.txt"},{"Key":"tree/never"}]}' >"$work/del.json"
cat "$work/del.json"
grep -q '"Key": "tree/f1.txt"' "$work/del.json"
grep -q '"Key": "tree/never"' "$work/del.json"
if grep -q '"Errors"' "$work/del.json"; then echo "delete-objects reported errors" >&2; exit 1; fi
[ "$(s3 s3 ls --recursive s3://e2e-bucket/tree/ | wc -l)" -eq 4 ]

echo "--- s3 cp and mv inside the store (CopyObject; UploadPartCopy for the 50 MiB one)"
s3 s3 cp --no-progress s3://e2e-bucket/small.bin "s3://e2e-bucket/copy/small copy.bin"
s3 s3 mv --no-progress "s3://e2e-bucket/copy/small copy.bin" s3://e2e-bucket/copy/moved.bin
s3 s3 cp --no-progress s3://e2e-bucket/copy/moved.bin "$work/moved.out"
cmp "$work/small.bin" "$work/moved.out"
s3 s3 cp --no-progress s3://e2e-bucket/dir/big.bin s3://e2e-bucket/copy/big.bin
s3 s3 cp --no-progress s3://e2e-bucket/copy/big.bin "$work/big-copy.out"
cmp "$work/big.bin" "$work/big-copy.out"
[ "$(s3 s3 ls --recursive s3://e2e-bucket/copy/ | wc -l)" -eq 2 ]

echo "--- etcdctl sees the catalog"
catalog=$(etcdctl --endpoints "$metad_endpoints" get --prefix /aether/ --keys-only)
echo "$catalog"
grep -q "/aether/buckets/e2e-bucket" <<<"$catalog"
grep -q "/aether/nodes/" <<<"$catalog"
grep -q "/aether/alive/" <<<"$catalog"

echo "--- wrong credentials are refused"
if AWS_SECRET_ACCESS_KEY=wrong s3 s3 ls s3://e2e-bucket/ 2>"$work/err.txt"; then echo "wrong secret accepted" >&2; exit 1; fi
grep -q SignatureDoesNotMatch "$work/err.txt"

echo "--- rm, rb"
s3 s3 rm --recursive s3://e2e-bucket/
[ -z "$(s3 s3 ls --recursive s3://e2e-bucket/)" ]
s3 s3 rb s3://e2e-bucket
if grep -q e2e-bucket <<<"$(etcdctl --endpoints "$metad_endpoints" get --prefix /aether/buckets/ --keys-only)"; then
  echo "bucket still in metad after rb" >&2; exit 1
fi
echo "aws_cli.sh: all checks passed"
