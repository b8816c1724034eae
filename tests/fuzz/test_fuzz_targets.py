"""The fuzz targets accept their own seeds, run without atheris as replay.py runs them, so that a target or a
seed that no longer fits the package fails here rather than at the start of a fuzzing run; and every model
seed loads and reaches the native forward (a seed refused at load would fuzz only the refusals)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parent
TARGETS = sorted(path.stem.removeprefix("fuzz_") for path in FUZZ_DIR.glob("fuzz_*.py"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seeds")
    subprocess.run([sys.executable, str(FUZZ_DIR / "make_seeds.py"), str(out)], check=True)
    return out


def replay(target: str, folder: Path) -> str:
    """replay.py's summary line (each target runs in its own process: the targets set process-wide state)."""
    result = subprocess.run([sys.executable, str(FUZZ_DIR / "replay.py"), target, str(folder)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("target", TARGETS)
def test_target_accepts_its_seeds(seeds: Path, target: str) -> None:
    n_seeds = len(list((seeds / target).iterdir()))
    assert n_seeds >= 1
    summary = replay(target, seeds / target)
    assert summary.startswith(f"{target}: {n_seeds} inputs in ") and ", 0 not accepted" in summary


def test_every_model_seed_reaches_the_forward(seeds: Path) -> None:
    folder = seeds / "gguf_model"
    n_seeds = len(list(folder.iterdir()))
    assert {path.name.split("-")[0] for path in folder.iterdir()} >= {"llama", "qwen2", "qwen3", "gemma3"}
    assert replay("gguf_model", folder).endswith(f"{{'inputs': {n_seeds}, 'loaded': {n_seeds}, 'forwards': {n_seeds}}}")
