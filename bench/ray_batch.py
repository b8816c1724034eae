"""Throughput of `mlspecqd batch --ray` by actor count, against the local mode, on this machine.

    python3 bench/run.py ray_batch [-m smollm2-135m] [--requests 24] [--actors 1 2] [--max-tokens 64]

Writes a batch file of chat requests (the first HumanEval prompts), answers it with the local mode and
then on a local Ray cluster with each actor count (each actor one thread, one loaded model), each into a
fresh OUT, and reports generated tokens per second of wall time (loading included, as a user waits for
it) and the scaling over one actor. Outputs are checked equal to the local mode's (greedy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import RESULTS
from bench.corpora import human_eval_prompts
from bench.machine import describe_machine


def run(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def outputs(path: Path) -> dict[str, tuple[str, int]]:
    found = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        body = record["response"]["body"]
        found[record["custom_id"]] = (body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_batch.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlspecqd-ray-batch-"))
    source = folder / "requests.jsonl"
    prompts = human_eval_prompts(args.requests)
    source.write_text("".join(json.dumps({"custom_id": f"h{index}", "method": "POST", "url": "/v1/chat/completions",
                                          "body": {"messages": [{"role": "user", "content": prompt}],
                                                   "max_tokens": args.max_tokens}}) + "\n"
                              for index, prompt in enumerate(prompts)))
    base = [sys.executable, "-m", "mlspecqd", "batch", str(source)]
    local_out = folder / "local.jsonl"
    local_seconds = run([*base, str(local_out), "-m", args.model, "--threads", "1"])
    expected = outputs(local_out)
    tokens = sum(count for _, count in expected.values())
    rows = [{"mode": "local, 1 thread", "seconds": local_seconds, "tokens_per_second": tokens / local_seconds}]
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run([*ray, "start", "--head", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True)
    try:
        for actors in args.actors:
            out = folder / f"ray-{actors}.jsonl"
            seconds = run([*base, str(out), "-m", args.model, "--ray", "auto", "--actors", str(actors)])
            identical = outputs(out) == expected
            rows.append({"mode": f"ray, {actors} actor(s)", "seconds": seconds, "tokens_per_second": tokens / seconds,
                         "identical_to_local": identical})
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True)
    one_actor = next((row for row in rows if row["mode"] == "ray, 1 actor(s)"), None)
    for row in rows:
        row["vs_one_actor"] = row["tokens_per_second"] / one_actor["tokens_per_second"] if one_actor else None
    report = {"machine": describe_machine(1), "model": args.model, "requests": args.requests,
              "max_tokens": args.max_tokens, "tokens": tokens, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("| mode | seconds | tok/s | vs 1 actor | outputs equal local |")
    print("|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['vs_one_actor']:.2f}x" if row["vs_one_actor"] else "-"
        print(f"| {row['mode']} | {row['seconds']:.1f} | {row['tokens_per_second']:.2f} | {ratio} | "
              f"{row.get('identical_to_local', '-')} |")


if __name__ == "__main__":
    main()
