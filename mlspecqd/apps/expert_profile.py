"""Router statistics of an MoE model, measured over calibration text and kept in a small file next to
the model (MODEL.gguf.expert-rows.json), so that later loads choose the same hot experts without
measuring again (mlspecqd.engine.mixed_experts uses them).

    rows = measure_expert_rows(model, token_ids)        # Model.expert_rows() after a run over the text
    write_profile(profile_path(model_path), rows, len(token_ids))
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mlspecqd.engine.mixed_experts import ExpertPrecisionError
from mlspecqd.engine.model import Model
from mlspecqd.gguf import ModelSpec

PROFILE_SUFFIX = ".expert-rows.json"
# Calibration runs the text in chunks of this many tokens, each a fresh sequence.
CHUNK_TOKENS = 512


def profile_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the profile of the model file at `model_path` lives: beside it."""
    path = Path(model_path)
    return path.with_name(path.name + PROFILE_SUFFIX)


def measure_expert_rows(model: Model, token_ids: list[int] | np.ndarray) -> np.ndarray:
    """Rows routed to each expert per layer (n_layers, n_experts) over `token_ids`, run as independent
    chunks of CHUNK_TOKENS; the model's own counters are reset before and after."""
    if len(token_ids) == 0:
        raise ExpertPrecisionError("expert profile: the calibration text has no tokens")
    model.reset_expert_rows()
    chunk = min(CHUNK_TOKENS, model.context_length)
    for start in range(0, len(token_ids), chunk):
        model.forward(token_ids[start : start + chunk], 0)
    rows = model.expert_rows()
    model.reset_expert_rows()
    return rows


def write_profile(path: Path, expert_rows: np.ndarray, tokens: int) -> None:
    """Write the counts atomically (a partial file is never read)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"tokens": int(tokens), "expert_rows": np.asarray(expert_rows).tolist()}))
    os.replace(partial, path)


def read_profile(path: Path, spec: ModelSpec) -> np.ndarray:
    """The counts of the profile at `path` for a model of `spec`; ExpertPrecisionError naming the file
    where it is not a profile of that model's shape."""
    try:
        rows = np.array(json.loads(path.read_text())["expert_rows"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ExpertPrecisionError(f"expert profile {path}: not readable as router counts ({error})") from None
    expected = (spec.n_layers, spec.n_experts)
    if rows.shape != expected or (rows < 0).any():
        raise ExpertPrecisionError(f"expert profile {path}: counts of shape {rows.shape}, expected non-negative "
                                   f"counts of shape {expected} (n_layers, n_experts)")
    return rows
