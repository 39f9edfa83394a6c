#!/usr/bin/env bash
# Scaling out, tested on loopback: two `cvt serve` replicas behind nginx (Debian's), loaded with
# wrk; one replica is killed mid-load (SIGKILL: its requests in flight are lost, then SIGTERM on a
# second run: they finish). Counts the failed requests and checks they are at most the requests in
# flight on the killed replica (the wrk connections, as nginx holds at most one request per client
# connection). Bounded: two runs of DURATION seconds (default 20).
#
#   bash Scripts/serve_failover_nginx.sh            # bundled Fashion-MNIST model
#   MODEL=/path/to/cvt-13 IMAGE=cat.jpg bash Scripts/serve_failover_nginx.sh
#
# Needs nginx and wrk (apt-get install -y nginx wrk) and a release build of cvt (built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-16}
MODEL=${MODEL:-models/cvt-fashion-mnist}
IMAGE=${IMAGE:-models/cvt-fashion-mnist/samples/07-sneaker.png}
THREADS=${THREADS:-1}
command -v nginx >/dev/null || { echo "nginx not found: apt-get install -y nginx" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
CVT=${CVT:-$(swift build -c release --show-bin-path)/cvt}
[ -x "$CVT" ] || swift build -c release --product cvt
case "$IMAGE" in *.png) TYPE=image/png ;; *) TYPE=image/jpeg ;; esac

WORK=$(mktemp -d /tmp/cvt-failover.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

start_replica() { # name → sets PORT_<name>, PID_<name>
  local name=$1
  OMP_WAIT_POLICY=passive "$CVT" serve --port 0 --model "$MODEL" --threads "$THREADS" --log-level warning \
    > "$WORK/$name.out" 2> "$WORK/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.05; done
  local port
  port=$(grep -o '[0-9]*$' "$WORK/$name.out")
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.05; done
  eval "PORT_$name=$port PID_$name=$pid"
}

run() { # signal
  local signal=$1
  start_replica a
  start_replica b
  # POST /: classification has no side effects, so nginx may pass a request that failed on one
  # replica to the other (non_idempotent); without that, POSTs sent to a dying replica fail.
  cat > "$WORK/nginx.conf" <<EOF
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
worker_processes 1;
user root;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  client_max_body_size 10m;
  client_body_buffer_size 1m;
  upstream cvt {
    server 127.0.0.1:$PORT_a max_fails=1 fail_timeout=5s;
    server 127.0.0.1:$PORT_b max_fails=1 fail_timeout=5s;
    keepalive 32;
  }
  server {
    listen 127.0.0.1:0;
    location / {
      proxy_pass http://cvt;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 2;
    }
  }
}
EOF
  # nginx cannot listen on port 0 and report it: take a free port from the kernel first.
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  sed -i "s/listen 127.0.0.1:0;/listen 127.0.0.1:$port;/" "$WORK/nginx.conf"
  nginx -c "$WORK/nginx.conf" -p "$WORK"
  cat > "$WORK/post.lua" <<EOF
local f = io.open("$IMAGE", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "$TYPE"
EOF
  curl -sf -X POST -H "Content-Type: $TYPE" --data-binary @"$IMAGE" "http://127.0.0.1:$port/" >/dev/null
  wrk -t 2 -c "$CONNECTIONS" -d "${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$port/" > "$WORK/wrk.txt" 2>&1 &
  local wrk_pid=$!
  sleep $((DURATION / 3))
  local served_a
  served_a=$(curl -s "http://127.0.0.1:$PORT_a/metrics" | awk '/^cvt_http_requests_total\{method="POST",route="\/",status="200"\}/ {print $2}')
  kill "-$signal" "$PID_a"
  local killed_at=$SECONDS
  wait "$wrk_pid" || true
  local status=0
  wait "$PID_a" 2>/dev/null || status=$?
  local total non2xx errors
  total=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.txt"); non2xx=${non2xx:-0}
  errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$WORK/wrk.txt"); errors=${errors:-0}
  local failed=$((non2xx + errors))
  echo "SIG$signal at ${killed_at}s: replica a had served ${served_a:-0} requests, exit status $status;" \
       "wrk: $total requests, $non2xx non-2xx, $errors socket errors; $failed failed (limit: $CONNECTIONS in flight)"
  grep -E "Latency|Requests/sec|  99%" "$WORK/wrk.txt" | sed 's/^/    /'
  if [ "$failed" -gt "$CONNECTIONS" ]; then echo "FAIL: more failed requests than were in flight on the killed replica" >&2; exit 1; fi
  if [ "$signal" = TERM ] && [ "$status" -ne 0 ]; then echo "FAIL: SIGTERM did not exit 0 (status $status)" >&2; exit 1; fi
  if [ "$signal" = TERM ] && [ "$failed" -ne 0 ]; then echo "FAIL: requests failed although SIGTERM lets them finish" >&2; exit 1; fi
  kill "$(cat "$WORK/nginx.pid")"; rm -f "$WORK/nginx.pid"
  kill "$PID_b"; wait "$PID_b" 2>/dev/null || true
  PIDS=()
  sleep 0.5
}

run KILL
run TERM
echo "passed"
