#!/usr/bin/env bash
# Configures and builds attnkit (Release) into build/. Extra args go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
[ -f build/CMakeCache.txt ] && gen=()  # keep the generator of an existing build
cmake -S . -B build "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
