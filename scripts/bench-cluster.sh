#!/usr/bin/env bash
# Enrollments/s with 1, 2 and 3 enrolld sharing a 3-member etcd cluster,
# next to one enrolld on bbolt, on this machine in one run. Every
# enrollment of the etcd runs is begun on one server and finished on the
# next. Prints one JSON report per line and a summary table.
#
#   ./scripts/bench-cluster.sh            # N=1000 C=32
#   N=2000 C=48 ./scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-1000}"
C="${C:-32}"
WORKERS="${WORKERS:-2}"
WORK="$(mktemp -d /tmp/edgeenroll-bench-cluster.XXXXXX)"
BIN="$WORK/bin"
mkdir -p "$BIN"
export CGO_ENABLED=1
go build -o "$BIN/enrolld" ./cmd/enrolld
go build -o "$BIN/enroll-bench" ./cmd/enroll-bench

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$BIN/enroll-bench" manufacturer --dir "$WORK/mfr" >/dev/null
"$BIN/enrolld" ca init --data-dir "$WORK/ca-src" >/dev/null

# start_enrolld DIR ARGS... : starts enrolld and waits until it serves; its
# URL is then in $URL and its PID the last of $pids.
start_enrolld() {
  local dir="$1"; shift
  mkdir -p "$dir"
  [ -d "$dir/ca" ] || cp -a "$WORK/ca-src/ca" "$dir/ca"
  "$BIN/enrolld" serve --data-dir "$dir" --listen 127.0.0.1:0 \
    --manufacturer-roots "$WORK/mfr/manufacturer_ca.crt" "$@" >/dev/null 2>"$dir/log" &
  pids+=($!)
  URL=""
  for _ in $(seq 1 200); do
    URL=$(grep -o '"msg":"enrolld serving","addr":"[^"]*"' "$dir/log" | sed 's/.*"addr":"\(.*\)"/https:\/\/\1/' || true)
    [ -n "$URL" ] && break
    sleep 0.05
  done
  [ -n "$URL" ] || { cat "$dir/log" >&2; exit 1; }
}

stop_last() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }

bench() { # name server-urls...
  local name="$1" first="$2"; shift 2
  local also=()
  for u in "$@"; do also+=(--also-server "$u"); done
  "$BIN/enroll-bench" run --server "$first" "${also[@]}" ${STORE_PID:+--store-pid "$STORE_PID"} \
    --root-ca "$WORK/ca-src/ca/root_ca.crt" --manufacturer-ca "$WORK/mfr" --identities "$WORK/ids.gob" \
    -n "$N" -c "$C" --workers "$WORKERS" -o json 2>"$WORK/$name.err" >"$WORK/$name.json"
  python3 - "$name" "$WORK/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2])); p = r["phases"][0]
srv = p.get("server") or {}; st = p.get("store") or {}
print(f'{sys.argv[1]:<14} {p["succeeded"]:>6}/{p["devices"]:<6} {r["enrollments_per_second"]:>9.1f}/s  '
      f'server {srv.get("cpu_ms_per_op", 0):6.2f} ms/op  store {st.get("cpu_ms_per_op", 0):6.2f} ms/op  '
      f'p99 enrollment {p["enrollment"]["p99_ms"]:7.1f} ms  errors {p.get("errors") or {}}')
PY
}

echo "devices $N, concurrency $C, $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg)"
# One enrolld on bbolt (the default).
start_enrolld "$WORK/bolt"
bench bbolt "$URL"
stop_last

# A 3-member etcd cluster in its own process.
"$BIN/enroll-bench" etcd --members 3 --dir "$WORK/etcd" >"$WORK/etcd.url" 2>"$WORK/etcd.log" &
ETCD_PID=$!
pids+=($ETCD_PID)
for _ in $(seq 1 200); do [ -s "$WORK/etcd.url" ] && break; sleep 0.05; done
STORE_PID=$ETCD_PID
base=$(sed 's|/edgeenroll$||' "$WORK/etcd.url")
for n in 1 2 3; do
  urls=()
  for i in $(seq 1 "$n"); do
    start_enrolld "$WORK/etcd-$n-$i" --store "$base/run$n"
    urls+=("$URL")
  done
  bench "etcd-x$n" "${urls[@]}"
  for _ in $(seq 1 "$n"); do stop_last; done
done
echo "reports: $WORK/*.json"
