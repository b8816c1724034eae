"""The real checkpoints by hub name: a test that asks for one that is not cached is skipped, with the
pull command in the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlspecqd import hub


def real_model_path(name: str) -> Path:
    path = hub.cached_path(name)
    if path is None:
        pytest.skip(f"{name} is not cached: run `mlspecqd pull {name}`")
    return path
