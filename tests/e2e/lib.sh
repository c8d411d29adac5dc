# Shared helpers for the e2e scripts (sourced).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# wait_http URL SECONDS: poll until the URL answers 200, at most SECONDS.
wait_http() {
  local url=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    if python3 - "$url" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)
PY
    sleep 0.1
  done
  echo "timed out waiting for $url" >&2
  return 1
}

# rss_kib PID FIELD: VmHWM or VmRSS of a process, in KiB.
rss_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# server_log: the tail of start_server's log (colour codes removed).
server_log() { echo "--- server log (tail)"; tail -n 40 "$work/server.log" | sed 's/\x1b\[[0-9;]*m//g'; }

# start_server BIN: `BIN server` (auth on, the credentials in AETHER_ACCESS_KEY /
# AETHER_SECRET_KEY) on free 127.0.0.1 ports with a temp data dir; sets work, s3_port,
# admin_port, metad_port, server_pid. On exit the server stops and the dir goes; on an
# error the log's tail is printed. Returns once /ready answers.
start_server() {
  work=$(mktemp -d)
  s3_port=$(free_port); admin_port=$(free_port); metad_port=$(free_port)
  NO_COLOR=1 "$1" server --data-dir "$work/data" --port "$s3_port" --admin-port "$admin_port" --bind 127.0.0.1 \
    --metad-listen "127.0.0.1:$metad_port" >"$work/server.log" 2>&1 &
  server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
  trap server_log ERR
  wait_http "http://127.0.0.1:$admin_port/ready" 60 || { server_log; return 1; }
}

# aws_env: point AWS clients (aws-cli, boto3) at the server's credentials
# (AETHER_ACCESS_KEY / AETHER_SECRET_KEY), with no profile, config or instance metadata.
aws_env() {
  export AWS_ACCESS_KEY_ID=$AETHER_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$AETHER_SECRET_KEY AWS_DEFAULT_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
}
