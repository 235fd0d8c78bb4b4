#!/usr/bin/env bash
# Sets everything up (idempotent) and runs the main job on the real all-MiniLM-L6-v2 and Rotten Tomatoes that ship
# offline: the engine demo, then the pipeline (profile, teacher, extract, distil, fine-tune, evaluate) in 15 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
printf '\n==> demo: all-MiniLM-L6-v2 on bortengine vs PyTorch\n'
cd "$ROOT"
python -m bortengine demo "$@"
if [ "${BORTENGINE_DEMO_PIPELINE:-1}" != "0" ]; then
    printf '\n==> pipeline: a student of all-MiniLM-L6-v2 for this CPU on Rotten Tomatoes, 15-minute budget\n'
    python -m bortengine pipeline --task rt --budget 15m --out runs/demo-pipeline
fi
