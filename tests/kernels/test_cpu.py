import subprocess
import sys

import pytest

from mlspecqd import _native


def test_info_reports_features_and_kernels():
    out = subprocess.run([sys.executable, "-m", "mlspecqd", "info"], capture_output=True, text=True, check=True).stdout
    assert "cpu features:" in out
    assert f"kernels:      {_native.best_isa()}" in out


def test_scalar_always_supported_and_unknown_isa_refused():
    assert "scalar" in _native.supported_isas()
    with pytest.raises(ValueError, match="unknown instruction set"):
        _native.set_isa("sse9")


def test_thread_count_zero_refused():
    with pytest.raises(ValueError, match="at least 1"):
        _native.set_num_threads(0)
