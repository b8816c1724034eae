"""`mlspecqd batch IN.jsonl OUT.jsonl`: OpenAI batch files, run locally.

Input lines:  {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions", "body": {...}}
Output lines: {"id": "batch_req_...", "custom_id": "a", "response": {"status_code", "request_id", "body"},
               "error": null}
A request the model refuses (a bad temperature, a prompt longer than the context) gets status_code 400
and an OpenAI error body; a line that is no request at all (bad JSON, no custom_id, wrong method or
url) gets "response": null and an "error"; a line without a custom_id is named "line-N".

Each output line is written whole and flushed before the next request starts, so a killed run loses
at most the request it was working on; a rerun skips every custom_id already in OUT (and first drops
a half-written last line, should the kill have hit the write itself).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mlspecqd.apps.llm import LLM, for_each_on_lanes
from mlspecqd.apps.openai_requests import URLS, CompletionRequest
from mlspecqd.gguf.format import excerpt


class BatchFileError(ValueError):
    """An input or output file that cannot be used (missing, a folder, not writable)."""


class RequestError(ValueError):
    """A line that is not a valid batch request: `custom_id` names it in OUT (its own, or "line-N")."""

    def __init__(self, custom_id: str, message: str) -> None:
        super().__init__(message)
        self.custom_id = custom_id


@dataclass
class BatchSummary:
    total: int = 0
    skipped: int = 0       # already answered in OUT by an earlier run
    succeeded: int = 0
    failed: int = 0        # status_code 400 or a malformed line
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.completion_tokens / self.seconds if self.seconds > 0 else 0.0
        return (f"done: {self.total} requests: {self.succeeded} ok, {self.failed} failed, {self.skipped} already "
                f"in the output; {self.completion_tokens} tokens generated in {self.seconds:.1f} s ({rate:.2f} tok/s)")


def answered_ids(out_path: Path) -> set[str]:
    """custom_ids already in OUT. A last line without its newline (a write cut short) is cut off."""
    if not out_path.exists():
        return set()
    data = out_path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(out_path, "r+b") as file:
            file.truncate(len(complete))
    ids = set()
    for line in complete.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a line nested too deep is no record of ours either
            continue
        if isinstance(record, dict) and isinstance(record.get("custom_id"), str):
            ids.add(record["custom_id"])
    return ids


def parse_request(line: str, number: int) -> tuple[str, dict[str, Any]]:
    """(custom_id, request) of input line `number`; RequestError(custom_id or "line-N", message)."""
    fallback = f"line-{number}"
    try:
        request = json.loads(line)
    except ValueError as error:
        raise RequestError(fallback, f"line {number}: not JSON ({error})") from None
    except RecursionError:
        raise RequestError(fallback, f"line {number}: JSON nested too deep") from None
    if not isinstance(request, dict):
        raise RequestError(fallback, f"line {number}: expected a JSON object, got {type(request).__name__}")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise RequestError(fallback, f"line {number}: needs a non-empty string custom_id")
    if request.get("method") != "POST":
        method = excerpt(request.get("method"))
        raise RequestError(custom_id, f"line {number}: method must be \"POST\" (got {method})")
    if request.get("url") not in URLS:
        raise RequestError(custom_id, f"line {number}: url must be one of {', '.join(URLS)} "
                                      f"(got {excerpt(request.get('url'))})")
    if not isinstance(request.get("body"), dict):
        raise RequestError(custom_id, f"line {number}: body must be a JSON object")
    return custom_id, request


def run_request(llm: LLM, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The response body for one request; ValueError (any subclass) for a request the model refuses."""
    request = CompletionRequest.from_body(url, body)
    if request.stream:
        raise ValueError("stream: not available in a batch")
    response = request.run(llm)
    assert isinstance(response, dict)
    return response


@dataclass(frozen=True)
class WorkItem:
    """A line of IN to answer: its request, or why it is no request (`problem`)."""

    position: int                 # among the non-empty lines of IN, from 1
    custom_id: str
    request: dict[str, Any] | None
    problem: str | None = None


@dataclass(frozen=True)
class Answer:
    """The OUT line for one work item and what the progress report says of it."""

    record: dict[str, Any]
    completion_tokens: int
    note: str
    error: str | None = None  # for the summary: what went wrong, None when the request was answered


def plan_batch(in_path: Path, out_path: Path) -> tuple[list[WorkItem], int, int]:
    """The lines of IN still to answer, the number of requests in IN, and how many OUT already has."""
    if not in_path.is_file():
        raise BatchFileError(f"{in_path}: no such input file")
    if out_path.is_dir():
        raise BatchFileError(f"{out_path}: is a folder, not an output file")
    try:
        lines = in_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BatchFileError(f"{in_path}: cannot read it as UTF-8 text ({error})") from None
    done = answered_ids(out_path)
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    items, seen, skipped = [], set(), 0
    for position, (number, line) in enumerate(numbered, 1):
        try:
            custom_id, request = parse_request(line, number)
            if custom_id in seen:
                problem = f"line {number}: custom_id {excerpt(custom_id)} repeats an earlier line"
                raise RequestError(f"line-{number}", problem)
            problem = None
        except RequestError as error:
            custom_id, request, problem = error.custom_id, None, str(error)
        seen.add(custom_id)
        if custom_id in done:
            skipped += 1
        else:
            items.append(WorkItem(position, custom_id, request, problem))
    return items, len(numbered), skipped


def answer(llm: LLM, item: WorkItem, clock: Callable[[], float] = time.perf_counter) -> Answer:
    """Run one work item on `llm`: its OUT line, never an exception for a request the model refuses."""
    if item.request is None:
        record = _record(item.custom_id, None, {"code": "invalid_request", "message": item.problem})
        return Answer(record, 0, f"error: {item.problem}", item.problem)
    started = clock()
    try:
        body = run_request(llm, item.request["url"], item.request["body"])
    except ValueError as error:
        return Answer(_record(item.custom_id, _error_response(str(error)), None), 0, f"error: {error}",
                      f"{item.custom_id}: {error}")
    seconds = clock() - started
    tokens = body["usage"]["completion_tokens"]
    record = _record(item.custom_id, {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
                     None)
    return Answer(record, tokens, f"{tokens} tokens, {tokens / seconds if seconds > 0 else 0.0:.2f} tok/s")


class BatchWriter:
    """Appends answers to OUT, one whole flushed line each, counting them and reporting progress."""

    def __init__(self, out_path: Path, total: int, skipped: int, progress: TextIO | None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        try:
            self.out = open(out_path, "a", encoding="utf-8")  # noqa: SIM115  (close() closes it)
        except OSError as error:
            raise BatchFileError(f"{out_path}: cannot write ({error.strerror})") from None
        self.summary = BatchSummary(total=total, skipped=skipped)
        self.progress = progress
        self.clock = clock
        self.started = clock()

    def write(self, item: WorkItem, result: Answer) -> None:
        self.out.write(json.dumps(result.record, ensure_ascii=False) + "\n")
        self.out.flush()
        summary = self.summary
        if result.error is None:
            summary.succeeded += 1
            summary.completion_tokens += result.completion_tokens
        else:
            summary.failed += 1
            summary.errors.append(result.error)
        summary.seconds = self.clock() - self.started
        if self.progress is not None:
            overall = summary.completion_tokens / summary.seconds if summary.seconds > 0 else 0.0
            self.progress.write(f"[{item.position}/{summary.total}] {item.custom_id}: {result.note} "
                                f"(overall {overall:.2f} tok/s)\n")
            self.progress.flush()

    def close(self) -> BatchSummary:
        self.out.close()
        self.summary.seconds = self.clock() - self.started
        return self.summary


def _record(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response, "error": error}


def _error_response(message: str) -> dict[str, Any]:
    return {"status_code": 400, "request_id": f"req_{uuid.uuid4().hex}",
            "body": {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}}


def answer_all(llm: LLM, items: Sequence[WorkItem], on_answer: Callable[[WorkItem, Answer], None],
               clock: Callable[[], float] = time.perf_counter) -> None:
    """Answer `items` in order on `llm`'s lanes, as many at once as it has lanes, calling
    on_answer(item, answer) as each is answered, one call at a time. An exception (OUT cannot be
    written, a fault of ours) stops every lane before its next item and is raised again."""
    writing = threading.Lock()

    def run_one(lane: LLM, index: int) -> None:
        result = answer(lane, items[index], clock)
        with writing:
            on_answer(items[index], result)

    for_each_on_lanes(llm.lanes, len(items), run_one)


def run_batch(llm: LLM, in_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
              progress: TextIO | None = None, clock: Callable[[], float] = time.perf_counter) -> BatchSummary:
    """Answer every request of IN not yet in OUT, appending one line per request to OUT (as many at once
    as `llm` has lanes)."""
    items, total, skipped = plan_batch(Path(in_path), Path(out_path))
    writer = BatchWriter(Path(out_path), total, skipped, progress, clock)
    try:
        answer_all(llm, items, writer.write, clock)
    finally:
        summary = writer.close()
    return summary
