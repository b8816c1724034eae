"""Shared fixtures. Tests that need a real checkpoint ask for it by name and are skipped, with the pull
command in the reason, when it is not in the cache (CI runs them whenever the cache is warm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlspecqd import hub


def real_model_path(name: str) -> Path:
    path = hub.cached_path(name)
    if path is None:
        pytest.skip(f"{name} is not cached: run `mlspecqd pull {name}`")
    return path


@pytest.fixture
def smollm2_path() -> Path:
    return real_model_path("smollm2-135m")


@pytest.fixture
def qwen_small_path() -> Path:
    return real_model_path("qwen2.5-coder-0.5b")


@pytest.fixture
def qwen_target_path() -> Path:
    return real_model_path("qwen2.5-coder-1.5b")
