"""Runs a fuzz target over saved inputs (files, or folders of them) without atheris: a corpus under the
sanitizer build, or one crashing input with its full traceback.

    python tests/fuzz/replay.py gguf_model /tmp/mlspecqd-fuzz/corpus/gguf_model /tmp/mlspecqd-fuzz/seeds/gguf_model

Under run_sanitized_tests.sh's environment (its venv, LD_PRELOAD and sanitizer options) a memory error or
undefined behaviour in the native code aborts with the sanitizer's report. Exit status: 0 when every input
was accepted, 1 when some target raised (each is named, with its traceback).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def inputs(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        files.extend(sorted(child for child in path.iterdir() if child.is_file()) if path.is_dir() else [path])
    return files


def main() -> int:
    if len(sys.argv) < 3:
        raise SystemExit(f"usage: {sys.argv[0]} TARGET PATH...")
    target = importlib.import_module(f"fuzz_{sys.argv[1]}")
    files = inputs(sys.argv[2:])
    failed = 0
    started = time.perf_counter()
    for path in files:
        try:
            target.test_one_input(path.read_bytes())
        except Exception:
            failed += 1
            print(f"{path}: not accepted", file=sys.stderr)
            traceback.print_exc()
    seconds = time.perf_counter() - started
    counts = getattr(target, "COUNTS", None)  # what a target counts of its own, e.g. the inputs that loaded
    print(f"{sys.argv[1]}: {len(files)} inputs in {seconds:.1f} s, {failed} not accepted"
          + (f"; {counts}" if counts else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
