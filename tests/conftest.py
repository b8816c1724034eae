"""Shared fixtures. Tests that need a real checkpoint ask for it by name and are skipped, with the pull
command in the reason, when it is not in the cache (CI runs them whenever the cache is warm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlspecqd import _native, hub


@pytest.fixture(autouse=True)
def restore_isa_and_threads():
    """Tests may switch the instruction set or the thread count; the next test starts from the defaults."""
    isa, threads = _native.active_isa(), _native.num_threads()
    yield
    _native.set_isa(isa)
    _native.set_num_threads(threads)


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
