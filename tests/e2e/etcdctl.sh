#!/usr/bin/env bash
# etcdctl 3.4 against a 3-member `aether metad` cluster of real processes on 127.0.0.1: KV, txn,
# watch, leases, member/endpoint/maintenance commands, kill -9 of the leader and its catch-up after a
# restart, then member remove + member add of a fresh 4th member. One line per check; the first
# failed check exits non-zero with a FAIL line and the members' log tails.
# Usage: [AETHER_BIN=target/debug/aether] tests/e2e/etcdctl.sh [path/to/aether]
#   ETCDCTL_E2E_TARGET=etcd  the same checks against a real etcd cluster (/usr/bin/etcd), the reference
#   ETCDCTL_E2E_STRICT=1     known metad gaps (printed as GAP lines, with the workaround checked) fail
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
target=${ETCDCTL_E2E_TARGET:-aether}
strict=${ETCDCTL_E2E_STRICT:-0}
unset ETCDCTL_E2E_TARGET ETCDCTL_E2E_STRICT   # etcdctl warns about ETCDCTL_* variables it does not know
case $target in
  aether) bin=$(realpath "${1:-${AETHER_BIN:-target/debug/aether}}") ;;
  etcd) bin=$(command -v etcd || true) ;;
  *) echo "ETCDCTL_E2E_TARGET must be aether or etcd, not '$target'" >&2; exit 2 ;;
esac
[ -x "$bin" ] || { echo "no $target binary at '$bin'" >&2; exit 2; }
command -v etcdctl >/dev/null || { echo "etcdctl not found (apt-get install etcd-client)" >&2; exit 2; }
export ETCDCTL_API=3
work=$(mktemp -d)
declare -A pid=() cport=() pport=() aport=()
bg=()   # background etcdctl watchers
checks=0 gaps=0 start=$SECONDS out="" err=""

cleanup() {
  local rc=$? p i
  [ "$rc" -eq 0 ] || [ -n "${failed:-}" ] || echo "FAIL exit status $rc (no check failed: a helper did)" >&2
  # SIGTERM (bash reports no job killed by it), up to 5 s for a clean exit, then SIGKILL.
  for p in "${pid[@]}" "${bg[@]}"; do kill "$p" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    jobs -pr | grep -q . || break
    sleep 0.1
  done
  for p in $(jobs -pr); do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

dump_logs() {
  local f
  for f in "$work"/n*.log; do [ -f "$f" ] && { echo "--- $(basename "$f") (tail)"; tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g'; }; done >&2
}
die() {
  failed=1
  echo "FAIL $*" >&2
  [ "$BASH_SUBSHELL" -gt 0 ] || dump_logs   # in a $(...), the caller fails next and dumps them
  exit 1
}
trap 'die "unexpected error at line $LINENO"' ERR
ok() { checks=$((checks + 1)); printf 'ok   %3ss  %s\n' "$((SECONDS - start))" "$*"; }
# gap MSG: a known difference from etcd; fatal against etcd itself or with ETCDCTL_E2E_STRICT=1.
gap() {
  if [ "$target" = etcd ] || [ "$strict" = 1 ]; then die "$*"; fi
  gaps=$((gaps + 1)); printf 'GAP  %3ss  %s\n' "$((SECONDS - start))" "$*"
}
# c ARGS...: etcdctl with stdout in $out, stderr in $err; returns etcdctl's status.
c() {
  local rc=0
  out=$(etcdctl --dial-timeout=2s --command-timeout=5s "$@" 2>"$work/stderr") || rc=$?
  err=$(<"$work/stderr")
  return "$rc"
}
must() { c "$@" || die "etcdctl $* failed: $err $out"; }
expect() { [ "$2" = "$3" ] || die "$1: expected '$3', got '$2'"; }
# pj EXPR: evaluates a Python expression over the JSON document on stdin (d), b(x) decodes base64.
pj() {
  python3 -c 'import base64, json, sys
d = json.load(sys.stdin)
b = lambda s: base64.b64decode(s).decode()
r = eval(sys.argv[1])
print(json.dumps(r) if isinstance(r, (list, dict)) else r)' "$1"
}
# wait_until SECONDS DESC CMD...: polls CMD every 0.2 s until it succeeds, for at most SECONDS
# (each etcdctl call is itself bounded by its --command-timeout).
wait_until() {
  local deadline=$((SECONDS + $1)) secs=$1 desc=$2
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${secs}s: $desc (last etcdctl: $err $out)"
    sleep 0.2
  done
}

# Free, distinct ports for four members (client, peer, admin/metrics).
used=" "
port() {
  local p i
  for ((i = 0; i < 50; i++)); do
    p=$(free_port)
    case $used in *" $p "*) continue ;; esac
    echo "$p"; return 0
  done
  die "no free port"
}
for n in n1 n2 n3 n4; do
  cport[$n]=$(port); used+="${cport[$n]} "
  pport[$n]=$(port); used+="${pport[$n]} "
  aport[$n]=$(port); used+="${aport[$n]} "
done
ep() { echo "127.0.0.1:${cport[$1]}"; }
eph() { echo "http://127.0.0.1:${cport[$1]}"; }
initial_cluster="n1=http://127.0.0.1:${pport[n1]},n2=http://127.0.0.1:${pport[n2]},n3=http://127.0.0.1:${pport[n3]}"

# start_member NAME STATE INITIAL_CLUSTER: appends to $work/NAME.log, data in $work/NAME.
start_member() {
  local n=$1 state=$2 cluster=$3
  if [ "$target" = aether ]; then
    "$bin" metad --name "$n" --listen "$(ep "$n")" --listen-peer "127.0.0.1:${pport[$n]}" \
      --admin-listen "127.0.0.1:${aport[$n]}" --data-dir "$work/$n" --initial-cluster "$cluster" \
      --initial-cluster-state "$state" --initial-cluster-token e2e --advertise-client-urls "$(eph "$n")" \
      >>"$work/$n.log" 2>&1 &
  else
    "$bin" --name "$n" --data-dir "$work/$n" --listen-client-urls "$(eph "$n")" --advertise-client-urls "$(eph "$n")" \
      --listen-peer-urls "http://127.0.0.1:${pport[$n]}" --initial-advertise-peer-urls "http://127.0.0.1:${pport[$n]}" \
      --listen-metrics-urls "http://127.0.0.1:${aport[$n]}" --initial-cluster "$cluster" \
      --initial-cluster-state "$state" --initial-cluster-token e2e >>"$work/$n.log" 2>&1 &
  fi
  pid[$n]=$!
}

# healthy N ENDPOINTS: `endpoint health --cluster` reports exactly N healthy members.
healthy() {
  c --endpoints "$2" endpoint health --cluster || return 1
  [ "$(printf '%s\n%s\n' "$out" "$err" | grep -c ' is healthy: ')" -eq "$1" ]
}
# member_eps ENDPOINTS: the members' client URLs from `member list`, in host:port form.
member_eps() {
  must --endpoints "$1" member list -w json
  pj '",".join(u.split("://")[-1] for m in d["members"] for u in m.get("clientURLs", []))' <<<"$out"
}
# cluster_ctl ENDPOINTS ARGS...: `etcdctl ARGS --cluster`. metad resets the streams etcdctl 3.4 opens
# per member for Status/HashKV/Defragment (it dials passthrough:///http://host:port, so the HTTP/2
# :authority is "http://host:port" and hyper/h2 rejects it); that is a GAP, and the same command is
# then checked over the members' endpoints listed explicitly.
cluster_ctl() {
  local eps=$1
  shift
  c --endpoints "$eps" "$@" --cluster && return 0
  if grep -q 'RST_STREAM with error code: PROTOCOL_ERROR' <<<"$err"; then
    gap "'etcdctl $* --cluster': member streams reset (RST_STREAM PROTOCOL_ERROR: :authority is an http:// URL); checked with explicit --endpoints"
    must --endpoints "$(member_eps "$eps")" "$@"
    return 0
  fi
  die "etcdctl $* --cluster failed: $err $out"
}
header() { pj "d['header']['$1']" <<<"$out"; }

echo "etcdctl.sh: $target cluster, $(etcdctl version | sed -n 1p)"
for n in n1 n2 n3; do start_member "$n" new "$initial_cluster"; done
all="$(ep n1),$(ep n2),$(ep n3)"
allh="$(eph n1),$(eph n2),$(eph n3)"
wait_until 30 "3 healthy members" healthy 3 "$all"
ok "endpoint health --cluster: 3 members healthy after start ($((SECONDS - start))s)"

# --- KV
must --endpoints "$(ep n1)" put e2e/a va
expect "put output" "$out" OK
must --endpoints "$(ep n2)" get e2e/a --print-value-only
expect "get e2e/a" "$out" va
ok "put/get with 127.0.0.1:P endpoints (put on n1, get on n2)"
must --endpoints "$(eph n2)" put e2e/b vb
must --endpoints "$(eph n3)" get e2e/b
expect "get e2e/b" "$out" $'e2e/b\nvb'
ok "put/get with http://127.0.0.1:P endpoints (put on n2, get on n3)"
must --endpoints "$all" put e2e/c vc
must --endpoints "$all" get e2e/ --prefix --keys-only
expect "get --prefix --keys-only" "$(grep . <<<"$out")" $'e2e/a\ne2e/b\ne2e/c'
must --endpoints "$allh" get e2e/ --prefix --print-value-only
expect "get --prefix --print-value-only" "$out" $'va\nvb\nvc'
must --endpoints "$all" get e2e/a e2e/c -w json
expect "get [a, c) count" "$(pj 'd["count"]' <<<"$out")" 2
ok "get --prefix / range over a multi-endpoint list (both forms)"

must --endpoints "$all" put e2e/r r1 -w json
r1=$(header revision)
cid=$(header cluster_id)
{ [ "$cid" != 0 ] && [ "$(header member_id)" != 0 ] && [ "$(header raft_term)" -ge 1 ]; } || die "put -w json header: $out"
must --endpoints "$all" put e2e/r r2 -w json
r2=$(header revision)
expect "revision after a second put" "$r2" $((r1 + 1))
must --endpoints "$(ep n3)" get e2e/r -w json
expect "get -w json" "$(pj '[d["header"]["revision"], d["header"]["cluster_id"], d["count"], d["kvs"][0]["create_revision"],
  d["kvs"][0]["mod_revision"], d["kvs"][0]["version"], b(d["kvs"][0]["key"]), b(d["kvs"][0]["value"])]' <<<"$out")" \
  "[$r2, $cid, 1, $r1, $r2, 2, \"e2e/r\", \"r2\"]"
ids=""
for n in n1 n2 n3; do must --endpoints "$(ep $n)" get e2e/r -w json; ids+="$(header member_id) "; done
[ "$(tr ' ' '\n' <<<"$ids" | grep . | sort -u | wc -l)" -eq 3 ] || die "member_id of n1..n3 not distinct: $ids"
ok "-w json headers: cluster_id, member_id (distinct per member), revision, raft_term, kv revisions/version"
must --endpoints "$all" get e2e/r --rev="$r1" --print-value-only
expect "get --rev=$r1" "$out" r1
ok "get --rev returns the older value"

must --endpoints "$(ep n1)" del e2e/a
expect "del e2e/a" "$out" 1
must --endpoints "$(ep n2)" del e2e/missing
expect "del of a missing key" "$out" 0
must --endpoints "$(ep n3)" get e2e/a
expect "get after del" "$out" ""
must --endpoints "$all" put e2e/d1 x
must --endpoints "$all" put e2e/d2 x
must --endpoints "$all" del e2e/d --prefix
expect "del --prefix" "$out" 2
ok "del (1 / 0 / --prefix 2) and the key is gone"

# --- txn (interactive form on stdin)
must --endpoints "$all" put e2e/t v1
txn=$'value("e2e/t") = "v1"\nmod("e2e/t") > "0"\n\nput e2e/t yes\nput e2e/t2 also\n\nput e2e/t no\n\n'
must --endpoints "$all" txn -i <<<"$txn"
[ "$(grep -c '^SUCCESS$' <<<"$out")" -eq 1 ] || die "txn -i: expected SUCCESS, got: $out"
must --endpoints "$all" get e2e/t --print-value-only
expect "txn success branch" "$out" yes
must --endpoints "$all" get e2e/t2 --print-value-only
expect "txn success branch (2nd op)" "$out" also
must --endpoints "$all" txn -i -w json <<<"$txn"
expect "txn -i -w json succeeded" "$(pj 'd.get("succeeded", False)' <<<"$(grep '^{' <<<"$out")")" False
must --endpoints "$all" get e2e/t --print-value-only
expect "txn failure branch" "$out" no
ok "txn -i: compares, success branch, failure branch (-w json)"

# --- watch: live events, then a replay from an old revision
: >"$work/watch.out"
: >"$work/watch.err"
etcdctl --endpoints "$all" watch --prefix e2e/w/ >"$work/watch.out" 2>"$work/watch.err" &
bg+=($!)
ready=0
watch_ready() { ready=$((ready + 1)); c --endpoints "$all" put e2e/w/ready "$ready" && grep -q '^e2e/w/ready$' "$work/watch.out"; }
wait_until 15 "watch delivers events" watch_ready
must --endpoints "$(ep n1)" put e2e/w/1 x1
must --endpoints "$(ep n2)" put e2e/w/2 x2
must --endpoints "$(ep n3)" del e2e/w/1
want=$'PUT\ne2e/w/1\nx1\nPUT\ne2e/w/2\nx2\nDELETE\ne2e/w/1'
# The ready loop stopped at the last ready event it saw, so the three events are the last lines
# (9: a DELETE prints an empty value line).
watch_has() { out=$(tr '\n' ' ' <"$work/watch.out") err=$(<"$work/watch.err"); [ "$(tail -n 9 "$work/watch.out")" = "$want" ]; }
wait_until 10 "watch events PUT w/1, PUT w/2, DELETE w/1" watch_has
ok "watch --prefix (background): PUT, PUT, DELETE arrive in order"
: >"$work/replay.out"
: >"$work/replay.err"
etcdctl --endpoints "$(ep n2)" watch e2e/r --rev="$r1" >"$work/replay.out" 2>"$work/replay.err" &
bg+=($!)
replay_has() {
  out=$(tr '\n' ' ' <"$work/replay.out") err=$(<"$work/replay.err")
  [ "$(head -n 6 "$work/replay.out")" = $'PUT\ne2e/r\nr1\nPUT\ne2e/r\nr2' ]
}
wait_until 10 "watch --rev=$r1 replays r1, r2" replay_has
ok "watch --rev replays history from an old revision"
kill "${bg[@]}" 2>/dev/null || true
wait "${bg[@]}" 2>/dev/null || true
bg=()

# --- leases
must --endpoints "$(eph n1)" lease grant 60
lease=$(awk '/granted with TTL/ { print $2 }' <<<"$out")
[ -n "$lease" ] || die "lease grant: $out"
must --endpoints "$(ep n2)" put --lease="$lease" e2e/l lv
must --endpoints "$all" lease keep-alive --once "$lease"
expect "lease keep-alive --once" "$out" "lease $lease keepalived with TTL(60)"
must --endpoints "$all" lease timetolive --keys "$lease"
[[ $out == "lease $lease granted with TTL(60s), remaining("*"s), attached keys([e2e/l])" ]] || die "timetolive --keys: $out"
must --endpoints "$all" lease timetolive --keys -w json "$lease"
expect "timetolive -w json" "$(pj '[d["granted-ttl"], 0 < d["ttl"] <= 60, [b(k) for k in d["keys"]]]' <<<"$out")" \
  '[60, true, ["e2e/l"]]'
must --endpoints "$all" lease list
grep -qx "$lease" <<<"$out" || die "lease list lacks $lease: $out"
must --endpoints "$(ep n3)" lease revoke "$lease"
expect "lease revoke" "$out" "lease $lease revoked"
must --endpoints "$all" get e2e/l
expect "key of a revoked lease" "$out" ""
must --endpoints "$all" lease list
! grep -qx "$lease" <<<"$out" || die "lease list still has revoked $lease"
must --endpoints "$all" lease timetolive "$lease"
expect "timetolive after revoke" "$out" "lease $lease already expired"
ok "lease grant / keep-alive --once / timetolive --keys / list / revoke"
must --endpoints "$all" lease grant 2
short=$(awk '/granted with TTL/ { print $2 }' <<<"$out")
must --endpoints "$all" put --lease="$short" e2e/short x
expired() { c --endpoints "$all" get e2e/short --keys-only && [ -z "$out" ]; }
wait_until 15 "key of a 2 s lease expires" expired
ok "a 2 s lease expires and takes its key"

# --- cluster views
must --endpoints "$all" member list -w table
[ "$(grep -c '| started |' <<<"$out")" -eq 3 ] || die "member list -w table: $out"
for n in n1 n2 n3; do grep -q "| *$n | http://127.0.0.1:${pport[$n]} | $(eph "$n") |" <<<"$out" || die "member list -w table lacks $n: $out"; done
must --endpoints "$allh" member list -w json
expect "member list -w json" "$(pj 'sorted([m["name"], m["peerURLs"], m["clientURLs"]] for m in d["members"])' <<<"$out")" \
  "$(printf '[["n1", ["http://127.0.0.1:%s"], ["%s"]], ["n2", ["http://127.0.0.1:%s"], ["%s"]], ["n3", ["http://127.0.0.1:%s"], ["%s"]]]' \
    "${pport[n1]}" "$(eph n1)" "${pport[n2]}" "$(eph n2)" "${pport[n3]}" "$(eph n3)")"
ok "member list (-w table / -w json): 3 started members with names, peer and client URLs"

cluster_ctl "$all" endpoint status -w json
expect "endpoint status: rows, leaders, distinct leader ids" \
  "$(pj '[len(d), sum(e["Status"]["leader"] == e["Status"]["header"]["member_id"] for e in d), len({e["Status"]["leader"] for e in d})]' <<<"$out")" \
  "[3, 1, 1]"
ok "endpoint status --cluster: 3 rows, exactly one leader, all agree on it"
must --endpoints "$(ep n1)" endpoint health --cluster
[ "$(printf '%s\n%s\n' "$out" "$err" | grep -c ' is healthy: ')" -eq 3 ] || die "endpoint health --cluster: $out $err"
ok "endpoint health --cluster: 3 healthy (from a single endpoint)"

# --- compaction, snapshot, defrag, hashkv
must --endpoints "$all" get e2e/r -w json
now=$(header revision)
must --endpoints "$all" compaction "$now"
expect "compaction" "$out" "compacted revision $now"
if c --endpoints "$all" get e2e/r --rev="$r1"; then die "get --rev=$r1 below the compaction at $now succeeded: $out"; fi
grep -q 'required revision has been compacted' <<<"$err" || die "get below compaction: unexpected error: $err"
ok "compaction $now, then get --rev=$r1 fails: required revision has been compacted"

if c --endpoints "$(ep n1)" snapshot save "$work/snap.db"; then
  [ -s "$work/snap.db" ] || die "snapshot save: empty file"
  grep -q "Snapshot saved at $work/snap.db" <<<"$out$err" || die "snapshot save: $out $err"
  ok "snapshot save: $(stat -c %s "$work/snap.db") bytes"
elif grep -q 'sha256 checksum not found' <<<"$err"; then
  gap "'etcdctl snapshot save': $(grep -o 'Error: .*' <<<"$err") (etcdctl 3.4 wants size % 512 == 32: data padded to 512 then its SHA-256)"
else
  die "snapshot save: $err $out"
fi

must --endpoints "$all" defrag
[ "$(grep -c '^Finished defragmenting etcd member' <<<"$out")" -eq 3 ] || die "defrag: $out"
cluster_ctl "$all" defrag
[ "$(grep -c '^Finished defragmenting etcd member' <<<"$out")" -eq 3 ] || die "defrag --cluster: $out"
ok "defrag (endpoint list) and defrag --cluster: 3 members"

hashes_equal() {
  cluster_ctl "$all" endpoint hashkv -w json
  [ "$(pj '[len(d), len({e["HashKV"]["hash"] for e in d})]' <<<"$out")" = "[3, 1]" ]
}
wait_until 5 "endpoint hashkv --cluster: 3 equal hashes" hashes_equal
ok "endpoint hashkv --cluster: 3 members, one hash"

# --- kill -9 the leader, write through the others, restart it on its data dir, it catches up
must --endpoints "$all" endpoint status -w json
leader_id=$(pj 'd[0]["Status"]["leader"]' <<<"$out")
must --endpoints "$allh" member list -w json
leader=$(pj "[m['name'] for m in d['members'] if m['ID'] == $leader_id][0]" <<<"$out")
kill -9 "${pid[$leader]}"
wait "${pid[$leader]}" 2>/dev/null || true
rest=""
for n in n1 n2 n3; do [ "$n" = "$leader" ] || rest+="${rest:+,}$(ep "$n")"; done
t_kill=$SECONDS
wait_until 30 "a put through $rest after killing leader $leader" c --endpoints "$rest" put e2e/f f0
for i in 1 2 3 4 5; do must --endpoints "$rest" put e2e/f "f$i"; done
must --endpoints "$rest" get e2e/f --print-value-only
expect "get after the leader died" "$out" f5
new_leader() {
  c --endpoints "$rest" endpoint status -w json &&
    [ "$(pj '[len({e["Status"]["leader"] for e in d}), d[0]["Status"]["leader"] != '"$leader_id"']' <<<"$out")" = "[1, true]" ]
}
wait_until 15 "a new leader among $rest" new_leader
ok "kill -9 leader $leader: puts work through $rest ($((SECONDS - t_kill))s to the first), a new leader"
t_restart=$SECONDS
start_member "$leader" new "$initial_cluster"
must --endpoints "$rest" put e2e/f latest
caught_up() { c --endpoints "$(ep "$leader")" get e2e/f --consistency=s --print-value-only && [ "$out" = latest ]; }
wait_until 30 "restarted $leader serves e2e/f=latest (serializable)" caught_up
wait_until 15 "3 healthy members after the restart" healthy 3 "$all"
ok "restart $leader on its data dir: serializable get has the latest value ($((SECONDS - t_restart))s), 3 healthy"

# --- member remove (a follower) + member add of a fresh n4
must --endpoints "$all" endpoint status -w json
leader_id=$(pj 'd[0]["Status"]["leader"]' <<<"$out")
must --endpoints "$all" member list -w json
victim=$(pj "[m['name'] for m in sorted(d['members'], key=lambda m: m['name']) if m['ID'] != $leader_id][-1]" <<<"$out")
victim_hex=$(pj "[format(m['ID'], 'x') for m in d['members'] if m['name'] == '$victim'][0]" <<<"$out")
keep=""
for n in n1 n2 n3; do [ "$n" = "$victim" ] || keep+="${keep:+,}$(ep "$n")"; done
# etcd refuses to remove a member while a voter has been connected for under 5 s ("unhealthy
# cluster", its strict reconfig check): the restart above is that recent.
wait_until 20 "member remove $victim_hex" c --endpoints "$keep" member remove "$victim_hex"
# etcdctl prints ids with %16x: an id under 16 hex digits comes space-padded ("Member  9deb…").
[[ $out =~ ^Member\ +$victim_hex\ removed\ from\ cluster\  ]] || die "member remove: $out"
must --endpoints "$keep" member list -w json
left=$(for n in n1 n2 n3; do [ "$n" = "$victim" ] || printf '"%s", ' "$n"; done)
expect "members after remove" "$(pj 'sorted(m["name"] for m in d["members"])' <<<"$out")" "[${left%, }]"
ok "member remove $victim ($victim_hex): 2 members left"
gone() { ! kill -0 "${pid[$victim]}" 2>/dev/null; }
for ((i = 0; i < 25; i++)); do gone && break; sleep 0.2; done   # etcd: well under 1 s
if gone; then
  ok "the removed member's process exits by itself"
else
  gap "member remove: the removed member ($victim) keeps running (etcd's process exits once it learns it was removed)"
  kill -9 "${pid[$victim]}" 2>/dev/null || true
fi
wait "${pid[$victim]}" 2>/dev/null || true
unset "pid[$victim]"

must --endpoints "$keep" member add n4 --peer-urls="http://127.0.0.1:${pport[n4]}"
grep -q '^ETCD_INITIAL_CLUSTER_STATE="existing"$' <<<"$out" || die "member add: $out"
n4_cluster=$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' <<<"$out")
[[ $n4_cluster == *"n4=http://127.0.0.1:${pport[n4]}"* ]] || die "member add: ETCD_INITIAL_CLUSTER lacks n4: $out"
start_member n4 existing "$n4_cluster"
n4_has() { c --endpoints "$(ep n4)" get e2e/f --consistency=s --print-value-only && [ "$out" = "$1" ]; }
wait_until 30 "n4 serves e2e/f=latest (serializable)" n4_has latest
must --endpoints "$keep" put e2e/f after-n4
wait_until 10 "n4 serves a write made after it joined" n4_has after-n4
final="$keep,$(ep n4)"
n4_listed() {
  c --endpoints "$final" member list -w json &&
    [ "$(pj '[len(d["members"]), [m.get("clientURLs") for m in d["members"] if m.get("name") == "n4"]]' <<<"$out")" \
      = "[3, [[\"$(eph n4)\"]]]" ]
}
wait_until 15 "member list shows n4 with its name and client URL" n4_listed
wait_until 15 "3 healthy members with n4" healthy 3 "$final"
ok "member add n4 (fresh data dir, --initial-cluster-state existing): serves the data, listed, 3 healthy"
final_hashes_equal() {
  c --endpoints "$final" endpoint hashkv -w json &&
    [ "$(pj '[len(d), len({e["HashKV"]["hash"] for e in d})]' <<<"$out")" = "[3, 1]" ]
}
wait_until 10 "endpoint hashkv: n4 and the two others agree" final_hashes_equal
ok "endpoint hashkv: n4 (from a snapshot/log catch-up) has the same hash as the others"

echo "etcdctl.sh ($target): all $checks checks passed in $((SECONDS - start))s$([ "$gaps" -eq 0 ] || echo ", $gaps known metad gaps (GAP lines)")"
