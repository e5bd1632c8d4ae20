#!/usr/bin/env bash
# README command 2: install deps, build, run the whole default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
cd build
ctest --output-on-failure -j"$(nproc)" -LE slow
