"""The greedy setting the speculative tests share: a fake target model and the check that every model
level's cache holds a prefix of the accepted text; and native Gemma-3-shaped and Mixture-of-Experts
models on random weights."""

import numpy as np

from mlspecqd.engine.model import Model
from mlspecqd.speculative import Cascade, ModelLevel
from support.decoder_fixtures import random_tensors, tiny_spec
from support.fake_models import FakeLanguageModel

VOCAB = 64
PROMPT = [1, 2, 3, 4, 5]


def target_model(**changes) -> FakeLanguageModel:
    return FakeLanguageModel(vocab_size=VOCAB, context_length=400, seed=0, **changes)


def assert_caches_match_accepted_text(cascade: Cascade, sequence: list[int]) -> None:
    for level in cascade.levels:
        if isinstance(level, ModelLevel):
            model = level.model
            assert model.n_past <= len(sequence)
            assert model.cache == model.fresh_cache(sequence[: model.n_past]), level.name


def gemma3_native_model(seed: int = 9) -> Model:
    """A native Gemma-3-shaped model (support.decoder_fixtures.tiny_spec("gemma3"): sliding windows of 7
    positions, every third layer global, GELU, post-norms) over random weights, with a byte-sized
    vocabulary so that support.fake_models.ByteTokenizer fits it. The LM head is its own matrix: with
    random weights a head tied to the scaled embedding repeats the last token forever."""
    spec = tiny_spec("gemma3", vocab_size=256, context_length=512, tied_output=False)
    return Model.from_arrays(spec, random_tensors(spec, seed=seed))


def moe_native_model(architecture: str, seed: int = 9) -> Model:
    """A native Mixture-of-Experts model (support.decoder_fixtures.tiny_spec: 8 experts, 2 or 3 per
    token) over random weights, with a byte-sized vocabulary for support.fake_models.ByteTokenizer."""
    spec = tiny_spec(architecture, vocab_size=256, context_length=512)
    return Model.from_arrays(spec, random_tensors(spec, seed=seed))


def gemma3_prompt(length: int = 24, seed: int = 6) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 256, length)]
