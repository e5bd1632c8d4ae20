#!/usr/bin/env bash
# Configures and builds attnkit (Release) into build/ (or $ATTNKIT_BUILD_DIR; CXX picks the
# compiler of a new build folder). Extra args go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${ATTNKIT_BUILD_DIR:-build}"
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
[ -f "$dir/CMakeCache.txt" ] && gen=()  # keep the generator of an existing build
cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
