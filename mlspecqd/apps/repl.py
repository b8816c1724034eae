"""The interactive chat loop of `mlspecqd chat`: one line per user message, answers streamed as the
cascade accepts them, and a few commands (/reset, /stats, /exit, /help).

On a terminal it prompts with "> " and Ctrl-C stops the current answer (the session goes on; Ctrl-C
at the prompt, Ctrl-D or /exit ends it). From a pipe it answers each input line in turn, one answer
per line block, with no prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from mlspecqd.apps.chat_template import ChatTemplateError
from mlspecqd.apps.conversation import ChatSession
from mlspecqd.apps.generation import GenerationError

HELP = "/reset: start over   /stats: speed and acceptance of the last answer   /exit: quit"


def format_stats(timings: dict) -> list[str]:
    """Human-readable lines for a generation's timings: speeds, then each level's drafts."""
    lines = [f"prompt: {timings['prompt_n']} new tokens ({timings['cache_n']} reused from the cache) in "
             f"{timings['prompt_ms']:.1f} ms",
             f"answer: {timings['predicted_n']} tokens in {timings['predicted_ms']:.1f} ms "
             f"({timings['predicted_per_second'] or 0.0:.2f} tok/s)"]
    for level in timings["levels"]:
        share = level["share_of_wall_time"]
        line = f"  level {level['level']} {level['name']} ({level['kind']}): "
        if level["draft_n"]:
            by_position = " ".join(f"{rate:.2f}" for rate in level["acceptance_by_position"])
            line += (f"drafted {level['draft_n']}, accepted {level['draft_n_accepted']} "
                     f"({level['acceptance_rate']:.1%}), mean accepted length {level['mean_accepted_length']:.2f}, "
                     f"by position [{by_position}]")
            drafted_for = level["rounds_by_verifier"]
            if len(drafted_for) > 1:  # the cost policy stepped around the level above in some rounds
                line += ", rounds by level drafted for: " + ", ".join(f"{name} {n}" for name, n in drafted_for.items())
        elif level["verify_rounds"]:
            line += (f"{level['verify_rounds']} verify rounds, "
                     f"{level['tokens_per_verify_round']:.2f} tokens per round")
        else:
            line += "no drafts"
        if share is not None:
            line += f", {share:.1%} of the time"
        lines.append(line)
    return lines


class ChatLoop:
    """Reads user lines with `read_line` (None at the end of input) and writes answers to `out`."""

    def __init__(self, session: ChatSession, read_line: Callable[[], str | None], out: TextIO,
                 interactive: bool) -> None:
        self.session = session
        self.read_line = read_line
        self.out = out
        self.interactive = interactive

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def run(self) -> int:
        if self.interactive:
            self.write(f"chat with {self.session.llm.model_name} ({' -> '.join(self.session.llm.level_names)}). "
                       f"{HELP}\n")
        while True:
            try:
                line = self.read_line()
            except KeyboardInterrupt:
                self.write("\n")
                return 0
            if line is None:
                return 0
            line = line.rstrip("\n")
            if not line.strip():
                continue
            command = line.strip()
            if command == "/exit":
                return 0
            if command == "/reset":
                self.session.reset()
                self.write("(conversation reset)\n")
            elif command == "/stats":
                self.show_stats()
            elif command == "/help":
                self.write(HELP + "\n")
            else:
                self.answer(line)

    def answer(self, text: str) -> None:
        try:
            stream = self.session.send(text)
        except (GenerationError, ChatTemplateError) as error:
            self.write(f"error: {error} (try /reset)\n")
            return
        try:
            for piece in stream:
                self.write(piece)
        except KeyboardInterrupt:
            stream.close()
            self.write("\n(interrupted)")
        self.write("\n")

    def show_stats(self) -> None:
        result = self.session.last_result
        if result is None:
            self.write("no finished answer yet\n")
            return
        self.write("\n".join(format_stats(result.timings)) + "\n")
