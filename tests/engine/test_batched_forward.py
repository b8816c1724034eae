"""forward_batch: several sequences, each in its own cache slot, in one forward. Every sequence's logits
and cache must be the same bits as when it runs alone (equality), whatever the other sequences are doing
(prompt chunks, one-token decodes, verification batches), and bad batches are refused whole."""

from __future__ import annotations

import numpy as np
import pytest

from mlspecqd import _native
from mlspecqd.engine.model import Model
from support.decoder_fixtures import random_tensors, tiny_spec


def sliding_and_global_model(architecture: str) -> Model:
    # Gemma 3 with a window shorter than the sequences, so that both kinds of layer are exercised.
    extra = dict(sliding_window=9, sliding_window_pattern=2) if architecture == "gemma3" else {}
    spec = tiny_spec(architecture, d_model=96, n_heads=6, n_kv_heads=2, head_dim=16, rope_dim=16, d_ff=320,
                     vocab_size=300, context_length=96, **extra)
    return Model.from_arrays(spec, random_tensors(spec, seed=3), context_length=96)


def sequences(count: int, length: int, seed: int = 11) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 300, length) for _ in range(count)]


@pytest.mark.parametrize("architecture", ["qwen2", "gemma3"])
@pytest.mark.parametrize("isa", sorted({"scalar", _native.best_isa()}))
@pytest.mark.parametrize("threads", [1, 2])
def test_each_sequence_gets_the_bits_it_gets_alone(isa, architecture, threads):
    _native.set_isa(isa)
    _native.set_num_threads(threads)
    model = sliding_and_global_model(architecture)
    texts = sequences(4, 40)
    alone = [model.forward(text, 0, all_logits=True) for text in texts]

    model.reserve_slots(4)
    # Rounds of unequal steps per sequence: prompts of different lengths, then decodes, verification
    # batches and a rollback, all four sequences in every forward.
    cached = [0, 0, 0, 0]
    steps = [(7, 3, 12, 1), (1, 9, 1, 5), (5, 1, 2, 1), (1, 1, 9, 3)]
    for step in steps:
        segments = [(slot, texts[slot][cached[slot] : cached[slot] + T], cached[slot], True)
                    for slot, T in enumerate(step)]
        for slot, logits in enumerate(model.forward_batch(segments)):
            T = step[slot]
            assert np.array_equal(logits, alone[slot][cached[slot] : cached[slot] + T]), f"slot {slot}, {step}"
            cached[slot] += T
    assert [model.slot_n_past(slot) for slot in range(4)] == cached
    # A verification that rolls slot 2 back by four positions, beside last-row-only requests.
    back = cached[2] - 4
    out = model.forward_batch([(2, texts[2][back : back + 6], back, True), (0, texts[0][cached[0] : cached[0] + 2],
                                                                             cached[0], False)])
    assert np.array_equal(out[0], alone[2][back : back + 6])
    assert np.array_equal(out[1], alone[0][cached[0] + 1 : cached[0] + 2])


def test_slots_are_independent_caches():
    model = sliding_and_global_model("qwen3")
    text_a, text_b = sequences(2, 20)
    model.reserve_slots(2)
    model.forward(text_a, 0, slot=0)
    model.forward(text_b[:5], 0, slot=1)
    assert (model.n_past, model.slot_n_past(1)) == (20, 5)
    model.truncate(3, slot=1)
    assert (model.n_past, model.slot_n_past(1)) == (20, 3)
    continued = model.forward(text_a[:1], 20, slot=0)
    fresh = sliding_and_global_model("qwen3")
    fresh.forward(text_a, 0)
    assert np.array_equal(continued, fresh.forward(text_a[:1], 20))


def test_reserving_fewer_slots_keeps_the_existing_ones():
    model = sliding_and_global_model("llama")
    model.reserve_slots(3)
    model.forward([1, 2, 3], 0, slot=2)
    model.reserve_slots(2)
    assert model.slot_count == 3 and model.slot_n_past(2) == 3


@pytest.mark.parametrize("segments, message", [
    ([], r"no sequences given"),
    ([(0, [1, 2], 0, False), (0, [3], 0, False)], r"sequence 1 \(slot 0\): another sequence of this forward uses "
                                                    r"the same slot"),
    ([(0, [1, 2], 0, False), (5, [3], 0, False)], r"slot 5 does not exist \(the model has 2"),
    ([(0, [1], 0, False), (1, [1, 2], 4, False)], r"sequence 1 \(slot 1\): start = 4 must be in \[0, n_past = 0\]"),
    ([(1, [1, 300], 0, False), (0, [1], 0, False)], r"sequence 0 \(slot 1\): token id 300 at index 1 is outside"),
    ([(0, [1] * 97, 0, False), (1, [1], 0, False)], r"sequence 0 \(slot 0\): start \+ T = 0 \+ 97 exceeds"),
    ([(0, [[1]], 0, False)], r"forward_batch: tokens must be 1-D"),
])
def test_bad_batches_are_refused_whole(segments, message):
    model = sliding_and_global_model("llama")
    model.reserve_slots(2)
    model.forward([4, 5], 0, slot=0)
    with pytest.raises(ValueError, match=message):
        model.forward_batch(segments)
    assert (model.n_past, model.slot_n_past(1)) == (2, 0)  # nothing ran


@pytest.mark.parametrize("count", [0, -1, 257])
def test_slot_counts_outside_the_bounds_are_refused(count):
    model = sliding_and_global_model("llama")
    with pytest.raises(ValueError, match=rf"reserve_slots: {count} sequences; a model holds 1 to 256"):
        model.reserve_slots(count)


def test_calls_on_a_missing_slot_are_refused():
    model = sliding_and_global_model("llama")
    for call in (lambda: model.forward([1], 0, slot=1), lambda: model.truncate(0, slot=1),
                 lambda: model.slot_n_past(-1)):
        with pytest.raises(ValueError, match=r"slot -?1 does not exist \(the model has 1; reserve_slots makes more\)"):
            call()
