#!/usr/bin/env bash
# README command 2: install deps, build, run the whole default test suite:
#   1. the C++ tests (ctest), built with g++, including the installed-package consumers;
#   2. the same C++ tests built with clang (the code stays standard C++20);
#   3. the Python package (pip install . into .venv: Debian's python3, numpy 1.24, torch 1.13)
#      and its tests;
#   4. the portable wheel (auditwheel-repaired) in a fresh venv with numpy 2 from PyPI, its
#      tests run with the system libhwy hidden.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
(cd build && ctest --output-on-failure -j"$(nproc)")
echo "attnkit test: clang build"
ATTNKIT_BUILD_DIR=build-clang CXX=clang++ bash scripts/build.sh -DATTNKIT_BUILD_BENCH=OFF
(cd build-clang && ctest --output-on-failure -j"$(nproc)" -LE package)
# The build folder is kept between runs (a cache; pip's default is a fresh temporary one).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation \
  --config-settings=build-dir=build/python .
# pytest exits 5 when it collects no tests: a broken suite, not a pass.
rc=0
(cd tests/python && ../../.venv/bin/python -m pytest -q) || rc=$?
if [ "$rc" -eq 5 ]; then echo "attnkit test: pytest collected no tests" >&2; fi
[ "$rc" -eq 0 ] || exit "$rc"
bash scripts/test_wheel.sh
