"""What a benchmark ran on, recorded with its results: CPU model and flags, ISA table, threads, the mlspecqd
measured, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import mlspecqd
from mlspecqd import _native

CHECKOUT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The "model name" line of /proc/cpuinfo; where there is none, what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The "flags" line of /proc/cpuinfo (the instruction set extensions the kernel reports), sorted; empty
    where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return []


def _git(*args: str) -> str | None:
    try:
        # No optional locks: a benchmark must not hold the index lock while others commit in this checkout.
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(CHECKOUT), *args],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def describe_machine(threads: int | list[int] | None = None) -> dict[str, Any]:
    """The machine and build a benchmark measured. `threads`: the thread count(s) the benchmark used, where it
    set them itself (default: the native module's count now). `commit` is the checkout holding bench/; the
    installed module may have been built from another one, so `native_module` says which file was loaded."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_features": _native.cpu_features(),
        "isa": _native.active_isa(),
        "threads": _native.num_threads() if threads is None else threads,
        "load_average": os.getloadavg(),  # other processes on the cores slow every timing down
        "mlspecqd_version": mlspecqd.__version__,
        "native_module": _native.__file__,
        "commit": _git("rev-parse", "HEAD"),
        "checkout_modified": None if status is None else bool(status),
    }
