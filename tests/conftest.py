"""Shared fixtures. Tests that need a real checkpoint ask for it by name and are skipped, with the pull
command in the reason, when it is not in the cache (CI runs them whenever the cache is warm).

The helpers the tests import live in tests/support/; tests/ is on sys.path because this file is here."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.register_assert_rewrite("support")

from mlspecqd import _native  # noqa: E402
from support.real_models import real_model_path  # noqa: E402  (imported after the rewrite registration)


@pytest.fixture(autouse=True)
def restore_isa_and_threads():
    """Tests may switch the instruction set or the thread count; the next test starts from the defaults."""
    isa, threads = _native.active_isa(), _native.num_threads()
    yield
    _native.set_isa(isa)
    _native.set_num_threads(threads)


@pytest.fixture
def smollm2_path() -> Path:
    return real_model_path("smollm2-135m")


@pytest.fixture
def qwen_small_path() -> Path:
    return real_model_path("qwen2.5-coder-0.5b")


@pytest.fixture
def qwen_target_path() -> Path:
    return real_model_path("qwen2.5-coder-1.5b")
