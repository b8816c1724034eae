"""Runs fuzz targets one after another, each in its own process, and reports executions per target.

    pip install ".[fuzz]"
    taskset -c 1 python tests/fuzz/run.py --seconds 600 --work /tmp/mlspecqd-fuzz [TARGET ...]

TARGET is a fuzz_<TARGET>.py name (default: all). The work folder keeps the seeds (written by
make_seeds.py when missing), the growing corpus of each target, and any crashing input as
artifacts/<target>-crash-* (libFuzzer's naming; rerun one with `python tests/fuzz/fuzz_<target>.py FILE`).
An input that takes over --timeout seconds counts as a hang; a process above --rss-mb as a leak.
Exit status: 0 when no target found anything.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = sorted(path.stem.removeprefix("fuzz_") for path in HERE.glob("fuzz_*.py"))


def run_target(target: str, work: Path, args: argparse.Namespace) -> tuple[int, float, int, str]:
    """(executions, executions per second, exit status, log path) of one libFuzzer run."""
    corpus, seeds, artifacts = work / "corpus" / target, work / "seeds" / target, work / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    log = work / f"{target}.log"
    command = [sys.executable, str(HERE / f"fuzz_{target}.py"), f"-max_total_time={args.seconds}",
               f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_mb}", "-print_final_stats=1",
               f"-artifact_prefix={artifacts}/{target}-", str(corpus), str(seeds)]
    if args.runs:
        command.insert(2, f"-runs={args.runs}")
    dictionary = work / "seeds" / f"{target}.dict"
    if dictionary.is_file():
        command.insert(2, f"-dict={dictionary}")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=environment).returncode
    text = log.read_text(errors="replace")
    executions = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
    seconds = re.findall(r"Done (\d+) runs in (\d+) second", text)
    count = int(executions.group(1)) if executions else 0
    rate = count / max(int(seconds[-1][1]), 1) if seconds else count / max(args.seconds, 1)
    return count, rate, status, str(log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", default=TARGETS, metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--seconds", type=int, default=600, help="time per target")
    parser.add_argument("--runs", type=int, default=0, help="stop a target after this many inputs (0: no limit)")
    parser.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    parser.add_argument("--rss-mb", type=int, default=4096, help="memory one target process may use")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlspecqd-fuzz"))
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown} (there are {', '.join(TARGETS)})")
    seeds = args.work / "seeds"
    missing = [target for target in args.targets if not (seeds / target).is_dir()]
    if missing:
        subprocess.run([sys.executable, str(HERE / "make_seeds.py"), str(seeds)], check=True)
    failed = False
    for target in args.targets:
        count, rate, status, log = run_target(target, args.work, args)
        verdict = "clean" if status == 0 else f"FOUND SOMETHING (exit {status})"
        print(f"{target}: {count} executions, {rate:.0f}/s: {verdict}; log {log}", flush=True)
        failed |= status != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
