"""ForwardBatcher and SequenceSlot: sequences in threads of their own, their forwards merged into one
native call per model. Each sequence's logits must be exactly its solo run's, the merging must really
happen, and one sequence's bad forward must fail in its own thread only."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mlspecqd.engine.batching import ForwardBatcher, SequenceSlot
from mlspecqd.engine.model import Model
from support.decoder_fixtures import random_tensors, tiny_spec

STEPS = [7, 1, 1, 3, 1, 2, 1]  # a prompt chunk, decodes and verification batches


def model(seed: int = 3) -> Model:
    spec = tiny_spec("qwen2", vocab_size=200, context_length=64)
    return Model.from_arrays(spec, random_tensors(spec, seed=seed), context_length=64)


def texts(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 200, sum(STEPS)) for _ in range(count)]


def run_in_threads(batcher: ForwardBatcher, work, count: int) -> list:
    """work(index) in `count` member threads that start together; their results (or exceptions)."""
    results: list = [None] * count
    ready = threading.Barrier(count)

    def run(index: int) -> None:
        with batcher.member():
            ready.wait()
            try:
                results[index] = work(index)
            except Exception as error:
                results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a sequence never finished: the batcher deadlocked"
    return results


def steps(sequence: SequenceSlot | Model, text: np.ndarray) -> list[np.ndarray]:
    logits, at = [], 0
    for T in STEPS:
        logits.append(sequence.forward(text[at : at + T], at, all_logits=True))
        at += T
    return logits


def test_merged_forwards_give_each_sequence_its_solo_bits():
    shared, inputs = model(), texts(4)
    solo = [steps(model(), text) for text in inputs]
    batcher = ForwardBatcher()
    sequences = [SequenceSlot(shared, slot, batcher) for slot in range(4)]
    results = run_in_threads(batcher, lambda index: steps(sequences[index], inputs[index]), 4)
    for index in range(4):
        assert all(np.array_equal(a, b) for a, b in zip(results[index], solo[index])), f"sequence {index}"
    # The sequences start together and take the same steps: every forward carried all four.
    assert batcher.stats.sequences_by_call_size == {4: len(STEPS)}
    assert shared.slot_count == 4 and [sequence.n_past for sequence in sequences] == [sum(STEPS)] * 4


def test_sequences_on_two_models_each_progress():
    first, second, inputs = model(), model(seed=4), texts(3)
    batcher = ForwardBatcher()
    # Sequence 0 alone on the first model, 1 and 2 on the second: the pair's groups are larger, yet
    # sequence 0 is never left behind for good.
    sequences = [SequenceSlot(first, 0, batcher), SequenceSlot(second, 0, batcher), SequenceSlot(second, 1, batcher)]
    results = run_in_threads(batcher, lambda index: steps(sequences[index], inputs[index]), 3)
    expected = [steps(model(), inputs[0]), steps(model(seed=4), inputs[1]), steps(model(seed=4), inputs[2])]
    for index in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(results[index], expected[index])), f"sequence {index}"
    assert batcher.stats.sequences == 3 * len(STEPS)


def test_a_bad_forward_fails_in_its_own_thread_only():
    shared, inputs = model(), texts(2)
    batcher = ForwardBatcher()
    sequences = [SequenceSlot(shared, slot, batcher) for slot in range(2)]

    def work(index: int) -> list[np.ndarray]:
        if index == 1:
            sequences[1].forward([0, 200], 0)  # 200 is outside the vocabulary
        return steps(sequences[index], inputs[index])

    good, bad = run_in_threads(batcher, work, 2)
    assert isinstance(bad, ValueError) and "token id 200 at index 1 is outside the vocabulary" in str(bad)
    assert all(np.array_equal(a, b) for a, b in zip(good, steps(model(), inputs[0])))


def test_a_thread_outside_member_runs_its_forward_at_once():
    batcher = ForwardBatcher()
    sequence = SequenceSlot(model(), 2, batcher)
    assert np.array_equal(sequence.forward([1, 2, 3], 0), model().forward([1, 2, 3], 0))
    sequence.truncate(1)
    assert sequence.n_past == 1 and batcher.stats.calls == 1


def test_a_slot_beyond_the_model_limit_is_refused():
    with pytest.raises(ValueError, match="a model holds 1 to 256"):
        SequenceSlot(model(), 256, ForwardBatcher())


def test_the_cheaper_model_runs_first_so_sequences_meet_at_the_dearer_one():
    small = Model.from_arrays(tiny_spec("qwen2", vocab_size=200, n_layers=1), random_tensors(
        tiny_spec("qwen2", vocab_size=200, n_layers=1), seed=1), context_length=64)
    big = model()
    assert small.weight_bytes < big.weight_bytes
    calls = {"big": 0}
    forward_batch = big.forward_batch

    def counted(segments):
        calls["big"] += 1
        return forward_batch(segments)

    big.forward_batch = counted
    batcher = ForwardBatcher()
    # Sequence 0 drafts first, then verifies; 1 and 2 verify first, then draft. Cheapest first runs 0's
    # draft, then all three verifications in one call of the big model.
    orders = [("small", "big"), ("big", "small"), ("big", "small")]
    models = {"small": small, "big": big}

    def work(index: int) -> None:
        for name in orders[index]:
            SequenceSlot(models[name], index, batcher).forward([1, 2, 3], 0)

    run_in_threads(batcher, work, 3)
    assert calls["big"] == 1
