"""`mlspecqd batch IN OUT --ray [ADDRESS]`: the same batch file, answered by a pool of Ray actors.

The driver plans the work as the local mode does (apps.batch.plan_batch: the lines of IN whose custom_id
OUT does not have yet), hands them to Ray Data as a dataset of one request per row, and a pool of actors,
each holding one loaded LLM, answers them (apps.batch.answer_all: with `parallel` lanes, that many
requests of a batch at once). The driver alone writes OUT, one whole
flushed line per answer as it arrives, so every custom_id is written once per run, and a rerun after any
interruption (the driver killed, a worker killed) answers exactly the ones still missing. An actor that
dies is restarted by Ray and its request retried.

Models reach the workers by name or by path: each actor calls mlspecqd.load(), so a named model is
pulled on each node into that node's own cache, and a path must exist on every node (an actor that
cannot open it fails the run with the node's error).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TextIO

from mlspecqd.apps.batch import Answer, BatchSummary, BatchWriter, WorkItem, answer_all, plan_batch


class RayUnavailableError(ImportError):
    """Ray (with Ray Data) is not installed: pip install 'mlspecqd[ray]'."""


class RayBatchError(RuntimeError):
    """The Ray run stopped before every request was answered; OUT keeps what was, a rerun goes on."""


class BatchAnswerer:
    """A Ray Data actor: loads the LLM once, then answers a batch of rows (work items) per call, as many
    at once as the LLM has lanes (load's `parallel`)."""

    def __init__(self, load_arguments: dict[str, Any]) -> None:
        from mlspecqd.apps.loading import load

        self.llm = load(**load_arguments)

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[str]]:
        items = [WorkItem(**json.loads(text)) for text in rows["item"]]
        answers: dict[int, Answer] = {}
        answer_all(self.llm, items, lambda item, result: answers.__setitem__(item.position, result))
        return {"item": list(rows["item"]),
                "answer": [json.dumps(dataclasses.asdict(answers[item.position])) for item in items]}


def run_batch_on_ray(load_arguments: dict[str, Any], in_path: str | os.PathLike[str],
                     out_path: str | os.PathLike[str], address: str | None = None, actors: int = 2,
                     progress: TextIO | None = None) -> BatchSummary:
    """Answer every request of IN not yet in OUT on `actors` Ray actors; `address` None joins the cluster
    that RAY_ADDRESS or a running local one names, or starts a local one."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise RayUnavailableError(f"--ray needs Ray Data: pip install 'mlspecqd[ray]' ({error})") from None
    items, total, skipped = plan_batch(Path(in_path), Path(out_path))
    writer = BatchWriter(Path(out_path), total, skipped, progress)
    try:
        if items:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     logging_level="ERROR")
            threads = int(load_arguments.get("threads") or 1)
            rows = [{"item": json.dumps(dataclasses.asdict(item))} for item in items]
            answered = ray.data.from_items(rows).map_batches(
                BatchAnswerer, fn_constructor_kwargs={"load_arguments": {**load_arguments, "threads": threads}},
                batch_size=int(load_arguments.get("parallel") or 1), concurrency=actors, num_cpus=threads,
                # A worker that dies is started again and its request run again; OUT is the driver's alone.
                max_restarts=-1, max_task_retries=-1)
            try:
                for row in answered.iter_rows():
                    item = WorkItem(**json.loads(row["item"]))
                    writer.write(item, Answer(**json.loads(row["answer"])))
            except ray.exceptions.RayError as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise RayBatchError(f"the Ray run stopped ({type(error).__name__}: {first_line}); OUT keeps "
                                    f"{writer.summary.succeeded + writer.summary.failed} new answers, and a rerun "
                                    "answers the rest") from None
    finally:
        summary = writer.close()
    return summary
