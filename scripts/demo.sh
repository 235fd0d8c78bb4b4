#!/usr/bin/env bash
# Sets everything up (idempotent) and runs the main job on the real all-MiniLM-L6-v2 that ships offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
printf '\n==> demo: all-MiniLM-L6-v2 on bortengine vs PyTorch\n'
cd "$ROOT"
python -m bortengine demo "$@"
