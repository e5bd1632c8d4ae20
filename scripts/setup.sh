#!/usr/bin/env bash
# Installs the build and test dependencies from Debian 12's packages (idempotent).
set -euo pipefail
PKGS=(g++ cmake make libhwy-dev libgtest-dev libbenchmark-dev libcli11-dev libopenblas-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "attnkit setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
