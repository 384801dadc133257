#!/usr/bin/env bash
# Installs the external tools the test suite needs and that cargo cannot provide:
#   promtool  (Debian package `prometheus`), used by tests/telemetry_promtool.rs.
# Idempotent: returns at once when everything is already on PATH.
# Needs root for apt-get; without root it prints the command to run and exits non-zero.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  echo "setup-test-tools: promtool present ($(command -v promtool))"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-test-tools: promtool is missing and apt-get is not available;" >&2
  echo "  install Prometheus' promtool by hand (https://prometheus.io/download/) and put it on PATH" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-test-tools: promtool is missing; install it with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus" >&2
  exit 1
fi

echo "setup-test-tools: installing promtool (Debian package prometheus)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

if ! command -v promtool >/dev/null 2>&1; then
  echo "setup-test-tools: installed package prometheus but promtool is still not on PATH" >&2
  exit 1
fi
echo "setup-test-tools: promtool installed ($(command -v promtool))"
