"""What the fuzz targets share: coverage instrumentation when atheris is there, the libFuzzer entry
point, scratch files in memory, and the checks every refusal must pass.

A target module defines `test_one_input(data: bytes)`, which returns normally for an accepted input
or an input refused with the package's own error, and raises anything else (atheris then saves the
input as a crash). Importing a target never needs atheris, so tests/fuzz/test_fuzz_targets.py can
replay the seeds through it in the normal suite.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # for `support.*`, as under pytest

# The longest message a refusal may print: it names the file and the field, and quotes at most a
# short excerpt of what the file holds.
MAX_MESSAGE_CHARS = 2000

# Targets run one process on one core: the native thread pool must not spread over the others.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def instrumented(packages: Sequence[str]) -> contextlib.AbstractContextManager:
    """Modules of `packages` imported inside this block report coverage to atheris (when installed)."""
    try:
        import atheris
    except ImportError:
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=list(packages))


# Inputs that must be files are written here: memory, not disk, since every input is one file.
SCRATCH = Path(tempfile.mkdtemp(prefix="mlspecqd-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def check_refusal(error: BaseException, must_name: str | None = None) -> None:
    """A refusal is one line of bounded length; `must_name` (a file path) must appear in it."""
    message = str(error)
    if "\n" in message or "\r" in message:
        raise AssertionError(f"refusal message spans lines: {message[:300]!r}")
    if len(message) > MAX_MESSAGE_CHARS:
        raise AssertionError(f"refusal message of {len(message)} characters: {message[:300]!r}...")
    if must_name is not None and must_name not in message:
        raise AssertionError(f"refusal message does not name {must_name}: {message[:300]!r}")


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Runs libFuzzer over `test_one_input`; sys.argv carries libFuzzer's flags and corpus folders."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


class Bytes:
    """Structured values drawn from a fuzz input, front to back; past its end every value is empty or zero.
    (atheris.FuzzedDataProvider does this too, but the targets must run without atheris.)"""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def byte(self) -> int:
        if self.position >= len(self.data):
            return 0
        self.position += 1
        return self.data[self.position - 1]

    def integer(self, n_bytes: int, signed: bool = False) -> int:
        chunk = self.take(n_bytes)
        return int.from_bytes(chunk.ljust(n_bytes, b"\0"), "little", signed=signed)

    def take(self, n_bytes: int) -> bytes:
        chunk = self.data[self.position : self.position + n_bytes]
        self.position += len(chunk)
        return chunk

    def text(self, max_bytes: int, surrogates: bool = False) -> str:
        """Up to max_bytes of the input as text; with `surrogates`, invalid bytes become lone surrogates
        (as they do in Python's command line arguments), else U+FFFD."""
        chunk = self.take(self.byte() % (max_bytes + 1))
        return chunk.decode("utf-8", "surrogateescape" if surrogates else "replace")

    def rest(self) -> bytes:
        return self.take(len(self.data))

    def choice(self, options: Sequence[object]) -> object:
        return options[self.byte() % len(options)]
