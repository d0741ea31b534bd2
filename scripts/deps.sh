#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for edgeenroll's demo and tests:
# libssl-dev (the cgo TPM simulator links libcrypto), swtpm (a separate
# software TPM process the end-to-end tests drive) and mosquitto (an external
# MQTT broker for the MQTT tests). Go and gcc are expected.
set -euo pipefail

need=()
[ -e /usr/include/openssl/evp.h ] || need+=(libssl-dev)
command -v swtpm >/dev/null || need+=(swtpm)
command -v swtpm_setup >/dev/null || need+=(swtpm-tools)
command -v gcc >/dev/null || need+=(gcc)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go 1.26+ is required: https://go.dev/doc/install" >&2; exit 1; }
