"""What generation does when a model's logits are not finite.

A file with NaN or infinite weights is refused when it is loaded (tests/gguf_files/test_hostile_files.py).
Finite weights can still overflow float32 in the forward pass: query and key weights of 3e38 make the
attention scores infinite, softmax NaN, and every logit NaN. Generation should then stop with a GenerationError
that says so, rather than emit garbage."""

import numpy as np
import pytest

from mlspecqd.apps.generation import GenerationError
from mlspecqd.apps.loading import load
from mlspecqd.engine.model import Model
from support.llm_fixtures import write_chat_model


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "seed": 1}], ids=["greedy", "sampled"])
def test_logits_that_overflow_end_generation_with_an_error(tmp_path, sampling):
    path = write_chat_model(tmp_path / "overflow.gguf", tensors={
        "blk.0.attn_q.weight": np.full((64, 64), 3e38, np.float32),
        "blk.0.attn_k.weight": np.full((32, 64), 3e38, np.float32)})
    with Model.load(path) as model:
        assert np.isnan(model.forward([1, 2, 3], 0)).all()
    with load(str(path)) as llm, pytest.raises(GenerationError, match="finite"):
        llm.generate("hello", max_tokens=4, **sampling)
