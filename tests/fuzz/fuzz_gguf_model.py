"""Fuzz target: mutated tiny GGUF models through Model.load and forwards of the native decoder.

    OMP_NUM_THREADS=1 python tests/fuzz/fuzz_gguf_model.py -max_total_time=600 CORPUS SEEDS

Seeds are one-layer models (make_seeds.py). Accepted: a model that loads and whose forwards return
logits of the right shape; or a load refused with a ValueError (GGUFError and the decoder's own
checks) of one line; or a forward refused with a ValueError (a token id or start out of range).
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness

with _harness.instrumented(["mlspecqd.gguf", "mlspecqd.engine"]):
    from mlspecqd import _native
    from mlspecqd.engine.model import Model
    from mlspecqd.gguf import GGUFError

_native.set_num_threads(1)
PATH = _harness.SCRATCH / "model.gguf"
CONTEXT = 16
# Mutated files this large are not the small models the seeds are; they are parsed like any other
# but not run, so one input cannot take seconds.
MAX_RUN_BYTES = 1 << 16
# How many inputs loaded and ran forwards, printed at every power of two of inputs (the log's last such line
# says what share of the executions reached the native decoder).
COUNTS = {"inputs": 0, "loaded": 0, "forwards": 0}


def _count(key: str) -> None:
    COUNTS[key] += 1
    inputs = COUNTS["inputs"]
    if key == "inputs" and inputs >= 1024 and inputs & (inputs - 1) == 0:
        print(f"fuzz_gguf_model: {COUNTS}", file=sys.stderr, flush=True)


def test_one_input(data: bytes) -> None:
    _count("inputs")
    PATH.write_bytes(data)
    # The precision comes from the input, so that a crash reproduces from the saved file alone.
    precision = "mxfp4" if zlib.crc32(data) % 4 == 0 else "bf16"
    try:
        model = Model.load(PATH, precision=precision, context_length=CONTEXT)
    except GGUFError as error:
        _harness.check_refusal(error, str(PATH))
        return
    except ValueError as error:
        _harness.check_refusal(error)
        return
    _count("loaded")
    with model:
        vocab = model.vocab_size
        if len(data) > MAX_RUN_BYTES:
            return
        _count("forwards")
        tokens = [0, vocab - 1, len(data) % vocab]
        logits = model.forward(tokens, 0, all_logits=True)
        assert logits.shape == (3, vocab) and logits.dtype == np.float32
        assert model.n_past == 3
        logits = model.forward([1 % vocab], 2)  # overwrite the last position: the cache is cut to 2
        assert logits.shape == (1, vocab) and model.n_past == 3
        for bad_tokens, start in (([vocab], 0), ([-1], 0), ([0], model.n_past + 1), ([0] * (CONTEXT + 1), 0),
                                  ([], 0)):
            try:
                model.forward(bad_tokens, start)
            except ValueError as error:
                _harness.check_refusal(error)
            else:
                raise AssertionError(f"forward({bad_tokens[:3]}..., {start}) was not refused")


if __name__ == "__main__":
    _harness.main(test_one_input)
