"""Which kernels run a draft model's products, chosen by measurement on this CPU.

A KernelPlan gives, for each class of product by its rows (1, 2-4, 5-16, more), a kernel table (an
instruction set) and what MXFP4 weights multiply: BF16 activations, or int8 ones (cheaper where the CPU
has no BF16 dot product, lossy). `choose_draft_plan` times every candidate this CPU runs on the model's
own weights (a middle layer's query and down projections: a short and a long reduction) at 1, 3, 9 and 32
rows and keeps the fastest per class. The choice is remembered per CPU and model shape in the cache folder
(kernel-choices.json), so later loads skip the timing.

Only draft levels are timed. A target keeps the active table with BF16 activations at every row count:
a row's bits must not depend on how many rows share its forward (verification must reproduce decoding
one token at a time), and a choice timed afresh could differ from one load to the next.

MLSPECQD_KERNELS pins one choice for every class of every model, the target's included (mlspecqd.load):
"avx2", "avx512:int8", ... (tests, benchmarks, bug reports, and MXFP4 targets that should multiply int8
activations); the timing and the cache are then skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlspecqd import _native, hub
from mlspecqd.engine.quant import MXFP4_BLOCK_BYTES, MXFP4_BLOCK_VALUES

ROW_CLASSES = ("1", "2-4", "5-16", "17+")
# The rows each class is timed at.
TIMED_ROWS = (1, 3, 9, 32)
ACTIVATIONS = ("bf16", "int8")
PIN_VARIABLE = "MLSPECQD_KERNELS"
CACHE_FILE = "kernel-choices.json"
# Vector tables from slowest to fastest; scalar is the reference, never a candidate.
_TABLE_ORDER = ("avx2", "avxvnni", "avx512", "amx")
_REPEATS = 3
# Products one table runs with another's code: amx adds tiles to avx512 for BF16 activations only, and
# avxvnni differs from avx2 only in the int8 dot products.
_SAME_PRODUCT = {("amx", "int8"): "avx512", ("avxvnni", "bf16"): "avx2"}


class KernelChoiceError(ValueError):
    """A pinned kernel choice this CPU cannot run, or one that does not parse."""


@dataclasses.dataclass(frozen=True)
class KernelChoice:
    isa: str
    activations: str = "bf16"  # what MXFP4 weights multiply; BF16 weights always take BF16

    def __str__(self) -> str:
        return f"{self.isa}:{self.activations}"

    @classmethod
    def parse(cls, text: str, where: str = PIN_VARIABLE) -> KernelChoice:
        isa, _, activations = text.strip().partition(":")
        activations = activations or "bf16"
        if activations not in ACTIVATIONS:
            raise KernelChoiceError(f"{where}={text!r}: activations {activations!r} are not one of "
                                    f"{', '.join(ACTIVATIONS)}")
        supported = [name for name in _native.supported_isas() if name != "scalar"]
        if isa not in supported:
            raise KernelChoiceError(f"{where}={text!r}: this CPU runs the kernel tables {', '.join(supported)}")
        return cls(isa, activations)


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """One KernelChoice per row class (ROW_CLASSES); None: the active table with BF16 activations."""

    by_rows: tuple[KernelChoice | None, ...] = (None,) * len(ROW_CLASSES)

    def native(self) -> list[tuple[str | None, str]]:
        return [(None, "bf16") if choice is None else (choice.isa, choice.activations) for choice in self.by_rows]

    def describe(self) -> str:
        return ", ".join(f"{rows} rows {'active' if choice is None else choice}"
                         for rows, choice in zip(ROW_CLASSES, self.by_rows))


def candidates(has_mxfp4: bool) -> list[KernelChoice]:
    """Vector tables this CPU runs up to the active one (tests and benchmarks may have forced a lower
    one), each with BF16 activations, and with int8 ones too where the model has MXFP4 weights; but not a
    table's product that is another candidate's code (_SAME_PRODUCT)."""
    active = _native.active_isa()
    if active not in _TABLE_ORDER:
        return []
    tables = [isa for isa in _TABLE_ORDER[:_TABLE_ORDER.index(active) + 1] if isa in _native.supported_isas()]
    kinds = ACTIVATIONS if has_mxfp4 else ("bf16",)
    return [KernelChoice(isa, activations) for isa in tables for activations in kinds
            if _SAME_PRODUCT.get((isa, activations)) not in tables]


def _timing_weights(tensors: Mapping[str, Any], n_layers: int) -> list[np.ndarray]:
    """A middle layer's query and down projections (expert 0's for a Mixture of Experts)."""
    layer = n_layers // 2
    picked = []
    for role in ("attn_q", "ffn_down"):
        for name in (f"blk.{layer}.{role}.weight", f"blk.{layer}.{role}_exps.weight"):
            tensor = tensors.get(name)
            if tensor is None:
                continue
            if name.endswith("_exps.weight"):
                tensor = tensor[0]  # an (experts, N, K) array or a list of one array per expert
            picked.append(tensor)
            break
    return picked


def _product(weight: np.ndarray, x: np.ndarray, out: np.ndarray, choice: KernelChoice) -> None:
    if weight.dtype == np.uint8:
        _native.matmul_mxfp4(x, weight, x.shape[1], out=out, activations=choice.activations, isa=choice.isa)
    else:
        _native.matmul_bf16(x, weight, out=out, isa=choice.isa)


def _in_features(weight: np.ndarray) -> int:
    if weight.dtype == np.uint8:
        return weight.shape[-1] // MXFP4_BLOCK_BYTES * MXFP4_BLOCK_VALUES
    return weight.shape[0] * weight.shape[2] if weight.ndim == 3 else weight.shape[1]


def time_choices(weights: Sequence[np.ndarray], choices: Sequence[KernelChoice],
                 rows: Sequence[int] = TIMED_ROWS) -> dict[str, list[float]]:
    """Seconds each choice takes for the products of `weights` at each row count on one thread (the best
    of a few repeats after a warm-up), by str(choice). One thread: with more, every product waits for the
    last thread to be scheduled, which on a busy machine is a scheduler time slice for every candidate
    alike; the best of the repeats leaves out those the thread itself lost the processor in."""
    rng = np.random.default_rng(0)
    seconds: dict[str, list[float]] = {str(choice): [] for choice in choices}
    threads = _native.num_threads()
    _native.set_num_threads(1)
    try:
        for M in rows:
            inputs = [rng.standard_normal((M, _in_features(w)), dtype=np.float32) for w in weights]
            outputs = [np.empty((M, w.shape[-2] if w.ndim == 3 else w.shape[0]), np.float32) for w in weights]
            for choice in choices:
                best = float("inf")
                for repeat in range(_REPEATS + 1):
                    start = time.perf_counter()
                    for weight, x, out in zip(weights, inputs, outputs):
                        _product(weight, x, out, choice)
                    if repeat:  # the first run warms the caches
                        best = min(best, time.perf_counter() - start)
                seconds[str(choice)].append(best)
    finally:
        _native.set_num_threads(threads)
    return seconds


def cpu_signature() -> str:
    """What the cache tells CPUs apart by: the model name and the tables it runs."""
    model_name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model_name} | {','.join(_native.supported_isas())}"


def _model_key(spec: Any, weights: Sequence[np.ndarray]) -> str:
    shapes = ";".join(f"{w.dtype}{tuple(w.shape)}" for w in weights)
    return f"{spec.architecture} {spec.n_layers} layers | {shapes} | active {_native.active_isa()}"


def cache_path() -> Path:
    return hub.cache_dir() / CACHE_FILE


def read_cache() -> dict[str, Any]:
    """The remembered choices, {cpu signature: {model key: {"plan": [...], "seconds": {...}}}}; an
    unreadable file counts as empty (it is rewritten whole on the next choice)."""
    try:
        cached = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def remembered_plans() -> dict[str, list[str]]:
    """This CPU's remembered draft plans, one choice per row class, by model (what `mlspecqd info` shows)."""
    entries = read_cache().get(cpu_signature(), {})
    return {key: entry["plan"] for key, entry in entries.items()
            if isinstance(entry, dict) and isinstance(entry.get("plan"), list)}


def _write_cache(cached: dict[str, Any]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{CACHE_FILE}.", delete=False) as file:
            json.dump(cached, file, indent=1, sort_keys=True)
        os.replace(file.name, path)  # whole or not at all
    except OSError:
        pass  # a read-only cache folder only costs the timing again next time


def pinned_choice() -> KernelChoice | None:
    text = os.environ.get(PIN_VARIABLE)
    return KernelChoice.parse(text) if text else None


def choose_draft_plan(spec: Any, tensors: Mapping[str, Any]) -> KernelPlan:
    """The plan for a draft model over `tensors` (see the module docstring): pinned, remembered, or
    timed now and remembered."""
    pinned = pinned_choice()
    if pinned is not None:
        return KernelPlan((pinned,) * len(ROW_CLASSES))
    weights = _timing_weights(tensors, spec.n_layers)
    choices = candidates(any(w.dtype == np.uint8 for w in weights))
    if len(choices) <= 1 or not weights:
        return KernelPlan()
    cpu, key = cpu_signature(), _model_key(spec, weights)
    cached = read_cache()
    remembered = cached.get(cpu, {}).get(key)
    if isinstance(remembered, dict) and isinstance(remembered.get("plan"), list):
        try:
            return KernelPlan(tuple(KernelChoice.parse(text, where=str(cache_path())) for text in remembered["plan"]))
        except KernelChoiceError:
            pass  # timed afresh below
    seconds = time_choices(weights, choices)
    plan = KernelPlan(tuple(min(choices, key=lambda choice: seconds[str(choice)][i]) for i in range(len(ROW_CLASSES))))
    cached.setdefault(cpu, {})[key] = {"plan": [str(choice) for choice in plan.by_rows], "rows": list(TIMED_ROWS),
                                       "seconds": seconds}
    _write_cache(cached)
    return plan
