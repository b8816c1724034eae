#!/usr/bin/env bash
# Builds mlspecqd with AddressSanitizer and UndefinedBehaviorSanitizer (CMake option MLSPECQD_SANITIZE)
# into a virtual environment of its own, then runs tests under them: by default those of the native code
# (kernels, decoder, GGUF reading and dequantization); any test paths given as arguments instead.
#
#   tests/fuzz/run_sanitized_tests.sh                      # tests/kernels tests/engine tests/gguf_files
#   tests/fuzz/run_sanitized_tests.sh tokenization/test_tokenizer.py
#   MLSPECQD_SANITIZE_VENV=/tmp/asan tests/fuzz/run_sanitized_tests.sh
#
# The sanitizer runtimes are preloaded into Python (which is not built with them). Leak detection is off:
# Python keeps objects alive until exit by design. Any report aborts the test process, so a clean run ends
# with pytest's own summary and exit status 0. pytest captures only Python's streams, so a report reaches
# the terminal.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${MLSPECQD_SANITIZE_VENV:-/tmp/mlspecqd-sanitize-venv}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv --system-site-packages "$VENV"
fi
# The build tools of pyproject.toml in the venv itself: built without isolation, the build folder (its own,
# so the sanitized objects never mix with a normal build's) stays valid and a rebuild compiles what changed.
"$VENV/bin/python" -c "import scikit_build_core, pybind11" 2>/dev/null ||
  "$VENV/bin/pip" install -q "scikit-build-core>=0.10" "pybind11>=2.12"
"$VENV/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall \
  -C cmake.define.MLSPECQD_SANITIZE=ON -C build-dir=build/sanitize "$ROOT"

LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
if [ $# -eq 0 ]; then
  set -- kernels engine gguf_files
fi
cd "$ROOT/tests"
LD_PRELOAD="$LIBASAN $LIBUBSAN" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
PYTHONMALLOC=malloc \
  "$VENV/bin/python" -P -m pytest -q -p no:cacheprovider --capture=sys "$@"
