"""The greedy setting the speculative tests share: a fake target model and the check that every model
level's cache holds a prefix of the accepted text."""

from mlspecqd.speculative import Cascade, ModelLevel
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
