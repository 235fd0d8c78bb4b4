#!/usr/bin/env bash
# Sets everything up (idempotent) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
printf '\n==> running the test suite\n'
cd "$ROOT"
python -m pytest tests "$@"
