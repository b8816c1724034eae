"""The repository's bench/ modules, imported by file location as bench/run.py runs them (the folder
registered as the package `bench`), for tests of bench tools."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str) -> ModuleType:
    """bench/NAME.py as the module bench.NAME."""
    spec = importlib.util.spec_from_file_location("bench_runner", BENCH / "run.py")
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    runner.load_package()
    return importlib.import_module(f"bench.{name}")
