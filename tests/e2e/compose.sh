#!/usr/bin/env bash
# The compose stack (compose/docker-compose.yml) on a real Docker engine, from images built
# here (no image can be pulled on this machine; tests/e2e/docker/local-image.sh):
# 3 metad, 3 blobd, 2 gateways behind HAProxy, Prometheus, and an OTLP receiver in
# Jaeger's place (Grafana's image cannot be made here: its dashboard's queries are checked
# against Prometheus instead).
#   1. up, wait for readiness; the aws-cli e2e script through the load balancer; both
#      gateways served requests (their own metrics say so); `aether cluster status`.
#   2. traces: one conditional PutObject gives spans from gateway, blobd and metad in one
#      trace with correct parent links.
#   3. every service's Prometheus text parses and the dashboard's metrics all exist;
#      Prometheus (Debian's binary in place of prom/prometheus) scrapes every service and
#      evaluates every dashboard query.
#   4. kill a gateway: once the health check notices, no request fails.
#   5. kill a blobd: reads and writes go on (write quorum 2 of 3).
#   6. kill the metad leader: objects keep flowing meanwhile; CreateBucket works again
#      after the re-election.
#   7. --scale blobd=4: the new replica joins with its own node id; anti-entropy and
#      handoff end with exactly 3 copies of every object over the 4 nodes (the blobd killed
#      in 5 catches up too); a blobd frozen with docker pause while objects are written and
#      deleted catches up, deleted keys stay deleted; so does a blobd disconnected from the
#      network past its lease (it re-registers, with its new address if it got one);
#      docker stop (SIGTERM) of a blobd revokes its lease at once.
# Usage: tests/e2e/compose.sh [path/to/aether] [path/to/otlpsink]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$here/lib.sh"
bin=$(realpath "${1:-target/debug/aether}")
sink=$(realpath "${2:-$(dirname "$bin")/otlpsink}")
docker info >/dev/null 2>&1 || { echo "compose.sh: no Docker engine reachable" >&2; exit 1; }

work=$(mktemp -d)
project=aether-e2e-$$
export AETHER_IMAGE=aether:e2e HAPROXY_IMAGE=aether-haproxy:e2e JAEGER_IMAGE=aether-otlpsink:e2e
export PROMETHEUS_IMAGE=aether-prometheus:e2e
# Anti-entropy every 2 s (compose's default is 30 s), so convergence is seconds here.
export AETHER_SYNC_INTERVAL=2
export AETHER_PUBLISH_ADDR=127.0.0.1 AETHER_S3_PORT=$(free_port) JAEGER_UI_PORT=$(free_port) PROMETHEUS_PORT=$(free_port)
# Compose v2 (`docker compose`) where installed, else v1 (`docker-compose`, Debian's).
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
dc() { "${compose[@]}" -p "$project" -f "$repo/compose/docker-compose.yml" "$@"; }
failed=1
cleanup() {
  if [ "$failed" = 1 ]; then
    echo "--- compose logs (tail)"
    dc logs --no-color --tail 30 2>&1 | grep -v 'jaeger' || true
  fi
  if [ "$failed" = 1 ] && [ -n "${AETHER_E2E_KEEP:-}" ]; then
    echo "AETHER_E2E_KEEP: left running; stop with: ${compose[*]} -p $project -f $repo/compose/docker-compose.yml down -v"
    return
  fi
  dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# wait_until DESC SECS CMD...: poll CMD every 0.5 s until it succeeds, at most SECS.
wait_until() {
  local desc=$1 secs=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start >= secs)); then echo "timed out after ${secs}s waiting for: $desc" >&2; return 1; fi
    sleep 0.5
  done
  echo "ok: $desc ($((SECONDS - start))s)"
}
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
ids_of() { dc ps -q "$1"; }
http_ok() { "$bin" probe "$1"; }
metric_sum() { # URL NAME: the sum of NAME's samples
  "$bin" probe --print "$1" | awk -v n="$2" 'index($0, n "{") == 1 || index($0, n " ") == 1 { s += $NF } END { print s + 0 }'
}

echo "--- images from this machine's binaries"
bash "$here/docker/local-image.sh" aether "$AETHER_IMAGE" "$bin"
bash "$here/docker/local-image.sh" haproxy "$HAPROXY_IMAGE"
bash "$here/docker/local-image.sh" otlpsink "$JAEGER_IMAGE" "$sink"
bash "$here/docker/local-image.sh" prometheus "$PROMETHEUS_IMAGE"
# The whole file (Grafana too, whose image is not here) is valid for Compose.
dc config -q

echo "--- docker compose up (metad x3, blobd x3, gateway x2, lb, OTLP receiver, Prometheus)"
# The scale flags: Compose v1 ignores deploy.replicas.
dc up -d --no-build --scale blobd=3 --scale gateway=2 metad1 metad2 metad3 blobd gateway lb jaeger prometheus
set -a
source <(grep -E '^AETHER_(ACCESS|SECRET)_KEY=' "$repo/compose/aether.env")
set +a
aws_env
s3_url=http://127.0.0.1:$AETHER_S3_PORT
probe() { python3 "$here/docker/s3probe.py" "$s3_url" "$@"; }

mapfile -t gateways < <(ids_of gateway)
mapfile -t blobds < <(ids_of blobd)
[ "${#gateways[@]}" -eq 2 ] && [ "${#blobds[@]}" -eq 3 ]
for g in "${gateways[@]}"; do
  wait_until "gateway $(ip_of "$g") ready (catalog + write quorum of blobd)" 120 http_ok "http://$(ip_of "$g"):9001/ready"
done
metad_eps=$(for m in metad1 metad2 metad3; do printf '%s:2379,' "$(ip_of "$(ids_of $m)")"; done)
metad_eps=${metad_eps%,}
wait_until "S3 through the load balancer" 60 aws --endpoint-url "$s3_url" s3 ls

echo "--- aws-cli e2e through the load balancer"
AETHER_E2E_S3_URL=$s3_url AETHER_E2E_METAD=$metad_eps bash "$here/aws_cli.sh"

echo "--- both gateways served requests"
for g in "${gateways[@]}"; do
  n=$(metric_sum "http://$(ip_of "$g"):9001/metrics" gateway_requests_total)
  echo "gateway $(ip_of "$g"): $n requests"
  [ "$n" -gt 0 ] || { echo "gateway $(ip_of "$g") served no request: the load balancer does not spread" >&2; exit 1; }
done

echo "--- aether cluster status"
gw0=http://$(ip_of "${gateways[0]}"):9001
"$bin" cluster status --admin "$gw0" | tee "$work/status.txt"
[ "$(grep -c ' yes ' "$work/status.txt")" -ge 4 ]   # one metad leader + 3 live nodes
"$bin" cluster status --admin "$gw0" --json >"$work/cluster.json"
python3 - "$work/cluster.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
assert v["ready"], v["not_ready"]
assert sum(m["is_leader"] for m in v["metad"]) == 1, v["metad"]
assert len({m["raft_term"] for m in v["metad"]}) == 1, v["metad"]
live = [n for n in v["nodes"] if n["alive"] and n["objects"] is not None]
assert len(live) == 3, v["nodes"]
print("cluster view: 1 leader, 3 live nodes holding", sum(n["objects"] for n in live), "object copies")
PY

echo "--- one trace across gateway, blobd and metad (a conditional PutObject)"
aws --endpoint-url "$s3_url" s3 mb s3://traced
echo traced >"$work/t.txt"
aws --endpoint-url "$s3_url" s3api put-object --bucket traced --key t.txt --body "$work/t.txt" --if-none-match '*' >/dev/null
trace_ok() { dc logs --no-log-prefix jaeger 2>/dev/null | python3 "$here/docker/check_trace.py" PutObject aether-gateway aether-blobd aether-metad; }
wait_until "spans of one PutObject from all three services" 60 trace_ok
trace_ok

echo "--- Prometheus text from every service; the dashboard's metrics exist"
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check prometheus_client
urls=()
for m in metad1 metad2 metad3; do urls+=("http://$(ip_of "$(ids_of $m)"):2381/metrics"); done
for b in "${blobds[@]}"; do urls+=("http://$(ip_of "$b"):9101/metrics"); done
for g in "${gateways[@]}"; do urls+=("http://$(ip_of "$g"):9001/metrics"); done
python3 "$here/check_metrics.py" --self-test
python3 "$here/check_metrics.py" --dashboard "$repo/compose/grafana/dashboards/aether-overview.json" "${urls[@]}"
echo "--- Prometheus scrapes all 8 services (DNS discovery of the replicas); every dashboard query evaluates"
python3 "$here/docker/check_prometheus.py" "http://127.0.0.1:$PROMETHEUS_PORT" \
  "$repo/compose/grafana/dashboards/aether-overview.json" 8 60

echo "--- kill a gateway: once the health check notices, no request fails"
aws --endpoint-url "$s3_url" s3 mb s3://faults
docker kill "${gateways[1]}" >/dev/null
probe streak faults 20 60
probe load faults gw-kill/ 40

echo "--- kill a blobd: reads and writes go on"
probe load faults before-blobd-kill/ 20
docker kill "${blobds[2]}" >/dev/null
probe load faults blobd-kill/ 40
for i in $(seq 0 19); do
  aws --endpoint-url "$s3_url" s3api head-object --bucket faults --key "before-blobd-kill/$i" >/dev/null
done
echo "ok: objects written before the kill still readable"

echo "--- kill the metad leader: objects keep flowing; CreateBucket works after re-election"
leader=$("$bin" cluster status --admin "$gw0" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(next(m["endpoint"] for m in v["metad"] if m["is_leader"]).split(":")[0])')
for m in metad1 metad2 metad3; do
  [ "$leader" = "$m" ] && leader_id=$(ids_of $m)
done
echo "leader: $leader"
rm -f "$work/stop"
probe flow faults during-metad-kill/ "$work/stop" 120 >"$work/flow.txt" 2>&1 &
flow=$!
docker kill "$leader_id" >/dev/null
probe mb after-election 60
touch "$work/stop"
wait "$flow" || { cat "$work/flow.txt"; exit 1; }
cat "$work/flow.txt"

echo "--- --scale blobd=4: a new replica joins with its own node id"
docker start "${blobds[2]}" >/dev/null
dc up -d --no-build --no-recreate --scale blobd=4 --scale gateway=2 blobd
live4() {
  "$bin" cluster status --admin "$gw0" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
live = {n["id"] for n in v["nodes"] if n["alive"]}
sys.exit(0 if len(live) == 4 else 1)'
}
wait_until "4 live storage nodes, each with its own id" 90 live4

echo "--- grow 3 -> 4 (and the blobd killed above back): anti-entropy and handoff end with exactly 3 copies of every object"
count_objects() {
  local total=0 n b
  for b in $(aws --endpoint-url "$s3_url" s3api list-buckets --query 'Buckets[].Name' --output text); do
    n=$(aws --endpoint-url "$s3_url" s3api list-objects-v2 --bucket "$b" --query 'length(Contents || `[]`)' --output text)
    total=$((total + n))
  done
  echo "$total"
}
copies() {
  "$bin" cluster status --admin "$gw0" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(sum(n["objects"] or 0 for n in v["nodes"] if n["alive"]), sum(1 for n in v["nodes"] if n["alive"] and (n["objects"] or 0) > 0))'
}
copies_exact() {
  local want have nodes
  want=$((3 * $(count_objects)))
  read -r have nodes < <(copies)
  [ "$have" = "$want" ] && [ "$nodes" = 4 ]
}
# stays_deleted PREFIX: PREFIX0..PREFIX4 were deleted; none may come back.
stays_deleted() {
  local i
  for i in $(seq 0 4); do
    if aws --endpoint-url "$s3_url" s3api head-object --bucket faults --key "$1$i" >/dev/null 2>&1; then
      echo "$1$i came back after its delete" >&2; exit 1
    fi
  done
  echo "ok: deleted keys stay deleted"
}
wait_until "exactly 3 copies of each of $(count_objects) objects, spread over all 4 nodes" 180 copies_exact
read -r have nodes < <(copies); echo "copies: $have on $nodes nodes"
aws --endpoint-url "$s3_url" s3 cp --recursive --quiet s3://faults "$work/faults-dl"
echo "ok: every object of s3://faults reads back ($(find "$work/faults-dl" -type f | wc -l) files)"

echo "--- a blobd frozen (docker pause: cut off without a reset) while objects are written and deleted; it catches up"
frozen=$(ids_of blobd | head -n 1)
docker pause "$frozen" >/dev/null
probe load faults during-pause/ 20
for i in $(seq 0 4); do aws --endpoint-url "$s3_url" s3api delete-object --bucket faults --key "during-pause/$i"; done
docker unpause "$frozen" >/dev/null
wait_until "exactly 3 copies of every object again after the pause" 180 copies_exact
stays_deleted during-pause/

echo "--- a blobd disconnected from the network (docker network disconnect) past its lease; reconnected, it re-registers and catches up"
cut=$(ids_of blobd | sed -n 2p)
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$cut")
alive_is() {
  "$bin" cluster status --admin "$gw0" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
sys.exit(0 if sum(n["alive"] for n in v["nodes"]) == int(sys.argv[1]) else 1)' "$1"
}
docker network disconnect "$net" "$cut"
probe load faults during-disconnect/ 20
for i in $(seq 0 4); do aws --endpoint-url "$s3_url" s3api delete-object --bucket faults --key "during-disconnect/$i"; done
wait_until "the cut-off blobd's lease to expire" 60 alive_is 3
docker network connect --alias blobd "$net" "$cut"
wait_until "it to register again" 60 alive_is 4
wait_until "exactly 3 copies of every object again after the reconnect" 180 copies_exact
stays_deleted during-disconnect/

echo "--- docker stop (SIGTERM) of a blobd: it drains and revokes its lease on the way out"
live3() {
  "$bin" cluster status --admin "$gw0" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
sys.exit(0 if sum(n["alive"] for n in v["nodes"]) == 3 else 1)'
}
docker stop -t 20 "$(ids_of blobd | tail -n 1)" >/dev/null
# Well inside the lease TTL (10 s): only a revoked lease is gone this soon.
wait_until "the stopped blobd no longer alive" 3 live3

failed=0
echo "compose.sh: all checks passed"
