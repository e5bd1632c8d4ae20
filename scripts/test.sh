#!/usr/bin/env bash
# README command 2: install deps, build, run the whole default test suite: the C++ tests
# (ctest) and the Python package's tests (pip install . into .venv, then pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
(cd build && ctest --output-on-failure -j"$(nproc)" -LE slow)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation .
# pytest exits 5 when it collects no tests: a broken suite, not a pass.
rc=0
(cd tests/python && ../../.venv/bin/python -m pytest -q) || rc=$?
if [ "$rc" -eq 5 ]; then echo "attnkit test: pytest collected no tests" >&2; fi
exit "$rc"
