#!/usr/bin/env bash
# End-to-end demo on embedded defaults: builds the three binaries, gives a
# simulated TPM an EK certificate from a demo manufacturer CA (as a TPM
# vendor would), starts enrolld trusting that manufacturer, enrolls the
# device, and makes an mTLS call with the TPM-backed certificate.
# State goes to ./demo-data; run it again and the same device re-enrolls.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh

PORT="${PORT:-8443}"
DATA="${DATA:-$PWD/demo-data}"
BIN="$PWD/bin"
mkdir -p "$BIN" "$DATA"

echo "==> building enrolld, enrollctl and enroll-agent (simulator build)"
export CGO_ENABLED=1
go build -o "$BIN/enrolld" ./cmd/enrolld
go build -o "$BIN/enrollctl" ./cmd/enrollctl
go build -tags simulator -o "$BIN/enroll-agent" ./cmd/enroll-agent

echo "==> factory: certify the simulated TPM's EK with the demo manufacturer CA; install simulated firmware"
# The simulated firmware measures itself into the TPM's PCRs at every start
# and writes its TCG event log to $DATA/device/tpm/event_log.bin.
"$BIN/enroll-agent" sim-manufacture --state "$DATA/device/tpm" --manufacturer-ca "$DATA/manufacturer" \
  --firmware-version "EdgeEnroll Demo Firmware 1.0"

echo "==> starting enrolld on 127.0.0.1:$PORT (logs: $DATA/enrolld.log)"
"$BIN/enrolld" serve --data-dir "$DATA/enrolld" --listen "127.0.0.1:$PORT" \
  --manufacturer-roots "$DATA/manufacturer/manufacturer_ca.crt" \
  --bundle-config testdata/demo-bundle.json >"$DATA/enrolld.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null || true' EXIT
ROOT="$DATA/enrolld/ca/root_ca.crt"
for _ in $(seq 1 100); do
  if [ -f "$ROOT" ] && curl -sf --cacert "$ROOT" "https://localhost:$PORT/readyz" >/dev/null; then break; fi
  kill -0 $SERVER_PID 2>/dev/null || { cat "$DATA/enrolld.log"; exit 1; }
  sleep 0.1
done

CTL=(--server "https://localhost:$PORT" --admin-dir "$DATA/enrolld/admin")
AGENT=(--server "https://localhost:$PORT" --root-ca "$ROOT" --tpm "simulator:$DATA/device/tpm"
  --data-dir "$DATA/device" --event-log "$DATA/device/tpm/event_log.bin")

echo "==> device: enroll with the TPM and its firmware event log (agent logs on stderr)"
"$BIN/enroll-agent" enroll "${AGENT[@]}" 2>"$DATA/agent.log"

echo "==> operator: approve the firmware the device measured, then enforce measured boot"
ID=$("$BIN/enroll-agent" identity --tpm "simulator:$DATA/device/tpm")
"$BIN/enrollctl" firmware add --group default --from-device "$ID" --name "demo firmware 1.0" "${CTL[@]}"
"$BIN/enrollctl" groups set default --measured-boot enforce --require-secure-boot "${CTL[@]}"

echo "==> device: renew under measured-boot enforcement"
"$BIN/enroll-agent" enroll "${AGENT[@]}" 2>>"$DATA/agent.log"

echo "==> operator: enrollctl devices list, devices get"
"$BIN/enrollctl" devices list "${CTL[@]}"
"$BIN/enrollctl" devices get "$ID" "${CTL[@]}"
echo "demo complete: server log $DATA/enrolld.log, agent log $DATA/agent.log"
