#!/usr/bin/env bash
# Builds the extension with AddressSanitizer into build/asan/ (the normal build is untouched) and runs the
# kernel, encoder and input tests against it: out-of-bounds reads or writes in any kernel path fail the run.
# Needs scripts/setup.sh to have run (the test command does that). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BORTENGINE_VENV:-$ROOT/.venv}"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
OUT="$ROOT/build/asan"
printf '\n==> building the extension with AddressSanitizer (build/asan)\n'
cd "$ROOT"
mkdir -p "$OUT"
# compiler output goes to a log, shown only if the build fails. The sources are C++: setuptools compiles them with
# CXXFLAGS (CFLAGS only reaches C files), so the sanitizer flags go in both.
SANITIZE="-fsanitize=address -fno-omit-frame-pointer"
if ! CFLAGS="$SANITIZE" CXXFLAGS="$SANITIZE" LDFLAGS="-fsanitize=address" \
    python setup.py -q build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp" > "$OUT/build.log" 2>&1; then
    cat "$OUT/build.log"
    exit 1
fi
# an instrumented module calls ASan's checks (__asan_report_load4, ...): without them nothing would be checked
if ! grep -q __asan_report_load <(nm -D "$OUT"/lib/bortengine/_core*.so); then  # (not a pipe: pipefail, SIGPIPE)
    echo "$OUT/lib holds an extension without ASan's checks: the sanitizer flags did not reach the compiler" >&2
    exit 1
fi
rm -rf "$OUT/pkg" && mkdir -p "$OUT/pkg"
cp -r "$ROOT/src/bortengine" "$OUT/pkg/"
rm -f "$OUT"/pkg/bortengine/_core*.so
cp "$OUT"/lib/bortengine/_core*.so "$OUT/pkg/bortengine/"
printf '\n==> running the kernel and encoder tests under AddressSanitizer\n'
# Python itself is not instrumented: preload the runtime (and libstdc++, so ASan can intercept C++ throws).
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
PYTHONPATH="$OUT/pkg" python -m pytest -p no:cacheprovider -q \
    tests/test_kernels.py tests/test_int8_kernels.py tests/test_bf16_kernels.py tests/test_correctness.py \
    tests/test_inputs.py tests/test_int8_engine.py tests/test_bf16_engine.py tests/test_threads.py tests/test_pool.py \
    tests/test_forward_ops.py tests/test_warm_caches.py "$@"
