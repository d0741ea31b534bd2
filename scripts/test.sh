#!/usr/bin/env bash
# Runs every test of edgeenroll on real parts: the in-process TPM
# simulator, swtpm processes, real TLS on loopback, bbolt files in temp dirs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CGO_ENABLED=1
# The end-to-end tests refuse to skip the swtpm path when this is set.
export EDGEENROLL_REQUIRE_SWTPM=1
go vet ./...
go vet -tags simulator ./...
go test -race -count=1 -timeout 15m ./...
