#!/usr/bin/env bash
# Memory while a 1 GiB object streams through the gateway: metad, blobd and gateway run as
# separate processes; prints each one's peak RSS (VmHWM). Fails only above the 100 MiB
# budget for gateway and blobd (a buffered object would blow it by 10x).
# Usage: tests/e2e/memory.sh [path/to/aether]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
bin=$(realpath "${1:-target/debug/aether}")
work=$(mktemp -d)
metad_port=$(free_port); metad_admin=$(free_port); blobd_port=$(free_port); blobd_admin=$(free_port)
s3_port=$(free_port); gw_admin=$(free_port)
export AETHER_ACCESS_KEY=AKIAMEMTESTKEY000001 AETHER_SECRET_KEY=mem-secret-key-with-enough-length
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$bin" metad --listen "127.0.0.1:$metad_port" --admin-listen "127.0.0.1:$metad_admin" --data-dir "$work/metad" >"$work/metad.log" 2>&1 &
pids+=($!); metad_pid=$!
"$bin" blobd --listen "127.0.0.1:$blobd_port" --admin-listen "127.0.0.1:$blobd_admin" --data-dir "$work/blobd" \
  --metad-endpoints "127.0.0.1:$metad_port" >"$work/blobd.log" 2>&1 &
pids+=($!); blobd_pid=$!
wait_http "http://127.0.0.1:$blobd_admin/ready" 60
"$bin" gateway --listen "127.0.0.1:$s3_port" --admin-listen "127.0.0.1:$gw_admin" \
  --metad-endpoints "127.0.0.1:$metad_port" >"$work/gateway.log" 2>&1 &
pids+=($!); gw_pid=$!
wait_http "http://127.0.0.1:$gw_admin/ready" 60

aws_env
s3() { aws --endpoint-url "http://127.0.0.1:$s3_port" "$@"; }
s3 s3 mb s3://mem >/dev/null
truncate -s 1G "$work/1g.bin"   # sparse file: zeros, read from the page cache
t0=$(date +%s.%N)
# One single PUT of 1 GiB (put-object never splits into parts).
s3 s3api put-object --bucket mem --key one-gib --body "$work/1g.bin" >/dev/null
t1=$(date +%s.%N)
s3 s3api get-object --bucket mem --key one-gib "$work/1g.out" >/dev/null
t2=$(date +%s.%N)
cmp "$work/1g.bin" "$work/1g.out"
gw=$(rss_kib "$gw_pid" VmHWM); bd=$(rss_kib "$blobd_pid" VmHWM); md=$(rss_kib "$metad_pid" VmHWM)
python3 -c "print(f'memory.sh: 1 GiB PUT {$t1-$t0:.1f}s, GET {$t2-$t1:.1f}s (aws-cli client; timings informational)')"
printf 'memory.sh: peak RSS gateway %d MiB, blobd %d MiB, metad %d MiB\n' $((gw / 1024)) $((bd / 1024)) $((md / 1024))
[ "$gw" -lt $((100 * 1024)) ] || { echo "gateway peak RSS over 100 MiB" >&2; exit 1; }
[ "$bd" -lt $((100 * 1024)) ] || { echo "blobd peak RSS over 100 MiB" >&2; exit 1; }
