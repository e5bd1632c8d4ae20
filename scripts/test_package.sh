#!/usr/bin/env bash
# The C++ package as a downstream project sees it: cmake --install the build into a prefix,
# then build and run a consumer with find_package(attnkit) and with pkg-config, and check that
# add_subdirectory() of the source tree builds the library only (no tests, bench or CLI).
# Usage: test_package.sh BUILD_DIR
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "$1" && pwd)"
work="$build/package-test"
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
for f in include/attnkit/attnkit.hpp include/attnkit/version.hpp lib/libattnkit.a \
         lib/cmake/attnkit/attnkitConfig.cmake lib/cmake/attnkit/attnkitConfigVersion.cmake \
         lib/pkgconfig/attnkit.pc; do
  [ -e "$work/prefix/$f" ] || { echo "not installed: $f" >&2; exit 1; }
done
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
cmake -S "$src/tests/package/consumer" -B "$work/cmake" "${gen[@]}" \
  -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/cmake" >/dev/null
"$work/cmake/consumer"
PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" c++ -O1 "$src/tests/package/consumer/main.cpp" \
  -o "$work/pkgconfig_consumer" $(PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" pkg-config --cflags --libs attnkit)
"$work/pkgconfig_consumer"
# add_subdirectory: configure only, and list the targets it would build.
cmake -S "$src/tests/package/consumer" -B "$work/subdir" "${gen[@]}" -DATTNKIT_SOURCE="$src" >/dev/null
targets=$(cmake --build "$work/subdir" --target help)
for t in attnkit_cli mechanisms_test attnkit_bench; do
  if grep -q "$t" <<<"$targets"; then echo "add_subdirectory builds $t" >&2; exit 1; fi
done
grep -q "^attnkit: " <<<"$targets"
echo "attnkit package: find_package, pkg-config and add_subdirectory consumers ok"
