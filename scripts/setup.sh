#!/usr/bin/env bash
# Installs the build and test dependencies (idempotent): Debian 12 packages for the C++
# library (and clang, which CI builds with too) and for Python (numpy, PyTorch 1.13 and matplotlib from Debian), then a virtual
# environment .venv on Debian's python3 that sees those packages and adds the pinned
# PyPI build tools (nanobind, scikit-build-core) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(g++ clang cmake make ninja-build pkg-config libhwy-dev libgtest-dev libbenchmark-dev
      libcli11-dev nlohmann-json3-dev libopenblas-dev python3-dev python3-venv python3-numpy
      python3-torch python3-matplotlib)
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
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
  nanobind==3.1.0 scikit-build-core==1.1.2 pytest==9.2.0
