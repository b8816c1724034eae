"""bench/kernels.py at a tiny size (small shapes, one repeat, a small cache-busting sweep, no decode): it runs
every path this CPU runs and writes the fields its readers use."""

from __future__ import annotations

import json

import pytest

from mlspecqd import _native
from support.bench_modules import bench_module

kernels = bench_module("kernels")

SHAPES = ["64x64", "96x128"]
ROWS = [1, 2, 9]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kernels") / "kernels.json"
    assert kernels.main(["--shapes", *SHAPES, "--rows", *map(str, ROWS), "--repeats", "1",
                         "--cache-busting-mib", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_machine_is_described_with_the_cpu_model_and_flags(report):
    machine = report["machine"]
    assert machine["cpu"]
    assert "avx2" in machine["cpu_flags"] or not _native.cpu_features()["avx2"]
    assert machine["cpu_features"] == _native.cpu_features()


def test_every_table_but_scalar_runs_every_weight_type_on_every_shape(report):
    tables = [isa for isa in _native.supported_isas() if isa != "scalar"]
    types = {("bf16", "bf16"), ("mxfp4", "bf16"), ("mxfp4", "int8")}
    measured = {(row["N"], row["K"], row["isa"], row["weights"], row["activations"]) for row in report["products"]}
    shapes = {(64, 64), (96, 128)}
    assert measured == {(*shape, isa, *kind) for shape in shapes for isa in tables for kind in types}
    assert len(report["products"]) == len(measured)


def test_each_path_has_times_bandwidth_share_of_stream_read_and_batch_cost(report):
    bytes_per_value = {"bf16": 2, "mxfp4": 17 / 32}
    for row in report["products"]:
        assert row["weight_bytes"] == row["N"] * row["K"] * bytes_per_value[row["weights"]]
        assert row["stream_read_bytes_per_second"] > 0
        for key in ("seconds_median", "seconds_best", "bytes_per_second_median", "share_of_stream_read",
                    "batch_cost"):
            assert sorted(int(M) for M in row[key]) == ROWS, key
        seconds, rate = row["seconds_median"]["1"], row["bytes_per_second_median"]["1"]
        assert seconds > 0 and rate == pytest.approx(row["weight_bytes"] / seconds)
        assert row["share_of_stream_read"]["1"] > 0
        assert row["batch_cost"]["1"] == 1.0


def test_bad_arguments_are_refused(capsys):
    for arguments in (["--rows", "2", "4"], ["--shapes", "64x48"], ["--shapes", "64"], ["--isas", "nonsense"]):
        with pytest.raises(SystemExit) as exit_info:
            kernels.main(arguments)
        assert exit_info.value.code == 2, arguments
    assert "multiple of the MXFP4 block" in capsys.readouterr().err
