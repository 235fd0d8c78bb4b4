#!/usr/bin/env bash
# What bench/serve_load.py needs beyond the test suite's set-up (scripts/setup.sh): the load generator wrk, a
# compiled client from Debian's packages (installed with apt-get when missing), and the `bench` extra's Python
# packages (the `serve` extra for the server under test, sentence-transformers for its peer; torch stays pinned
# to 2.13.0). Idempotent. Not needed by CI or the tests: tests/test_serve_load.py skips its runs without wrk.
set -euo pipefail

if ! command -v wrk >/dev/null 2>&1; then
    echo "==> installing wrk (Debian package)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    $SUDO apt-get install -y wrk
fi
wrk --version 2>&1 | head -n 1 || true

PY="${PYTHON:-python}"
if ! "$PY" -c "import starlette, uvicorn, prometheus_client, orjson, sentence_transformers, psutil, matplotlib" 2>/dev/null; then
    echo "==> installing the bench extra (torch pinned to 2.13.0)"
    "$PY" -m pip install "torch==2.13.0" starlette uvicorn prometheus-client orjson httptools uvloop \
        sentence-transformers psutil matplotlib
fi
"$PY" -c "import torch, sentence_transformers as s; print('torch', torch.__version__, '| sentence-transformers', s.__version__)"
echo "ready: python bench/serve_load.py --help"
