#!/usr/bin/env bash
# README command 1: install deps, build, and compare every mechanism with exact
# softmax on the default workload (B=1, H=8, N=1024, D=64). Extra args go to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/attnkit compare "$@"
