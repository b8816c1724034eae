"""The chat loop in-process, on stand-in models: commands, errors, an interrupt in the middle of an answer."""

import io

import pytest

from mlspecqd.apps.conversation import ChatSession
from mlspecqd.apps.llm import LLM
from mlspecqd.apps.repl import ChatLoop
from mlspecqd.speculative import Cascade, ModelLevel, NgramDrafter
from mlspecqd.tokenizer import Tokenizer
from support.fake_models import FakeLanguageModel
from support.llm_fixtures import END_OF_TEXT, VOCAB, write_chat_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.from_gguf(write_chat_model(tmp_path_factory.mktemp("tokenizer") / "tiny.gguf"))


def make_session(tokenizer, max_tokens=12):
    target = FakeLanguageModel(vocab_size=VOCAB, context_length=256, seed=2, eos_id=END_OF_TEXT)
    levels = [NgramDrafter(), ModelLevel(target.noisy(1.0, seed=9), tokenizer=tokenizer),
              ModelLevel(target, tokenizer=tokenizer)]
    llm = LLM(Cascade(levels, policy="fixed", draft_max=4), tokenizer, "fake")
    return ChatSession(llm, max_tokens=max_tokens)


def run_loop(session, lines, out=None, interactive=False):
    pending = list(lines)
    out = out or io.StringIO()
    code = ChatLoop(session, lambda: pending.pop(0) if pending else None, out, interactive).run()
    return code, out.getvalue()


def test_lines_are_answered_in_turn_and_commands_work(tokenizer):
    session = make_session(tokenizer)
    code, output = run_loop(session, ["/stats", "Hi\n", "", "/stats", "/reset", "Hi", "/exit", "never read"])
    assert code == 0
    answer = session.last_result.text
    lines = output.split("\n")
    assert lines[0] == "no finished answer yet"
    assert lines[1] == answer
    assert lines[2].startswith("prompt: ") and "tok/s" in lines[3]
    assert any("level 0 ngram (ngram)" in line for line in lines) and any("level 2 target" in line for line in lines)
    assert "(conversation reset)" in lines
    assert output.count(answer) == 2  # the same question after /reset gets the same answer
    assert session.messages[-1]["content"] == answer and len(session.messages) == 2


def test_too_long_message_is_reported_and_the_session_goes_on(tokenizer):
    session = make_session(tokenizer)
    code, output = run_loop(session, ["x" * 300, "Hi"])
    assert code == 0
    assert output.startswith("error: prompt: ") and "(try /reset)" in output.splitlines()[0]
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


class InterruptingOutput(io.StringIO):
    """Raises KeyboardInterrupt (as Ctrl-C would) on the n-th write."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.writes = at, 0

    def write(self, text):
        self.writes += 1
        if self.writes == self.at:
            raise KeyboardInterrupt
        return super().write(text)


def test_an_interrupt_stops_the_answer_and_keeps_the_session(tokenizer):
    session = make_session(tokenizer, max_tokens=40)
    out = InterruptingOutput(at=3)
    code, output = run_loop(session, ["Hi", "/stats", "Hi again"], out=out)
    assert code == 0
    first, rest = output.split("\n(interrupted)\n", 1)
    # The interrupted answer stays in the conversation, as far as it got (one piece may not have shown).
    assert session.messages[1]["role"] == "assistant" and session.messages[1]["content"].startswith(first)
    assert 0 < len(session.messages[1]["content"]) < 40 * 4
    assert rest.startswith("no finished answer yet\n")
    assert session.messages[2]["content"] == "Hi again" and session.last_result is not None
    assert rest.endswith(session.last_result.text + "\n")


def test_interactive_loop_greets_and_ends_on_interrupt_at_the_prompt(tokenizer):
    session = make_session(tokenizer)

    def read_line():
        raise KeyboardInterrupt

    out = io.StringIO()
    assert ChatLoop(session, read_line, out, interactive=True).run() == 0
    assert out.getvalue().startswith("chat with fake (ngram -> draft1 -> target)")
