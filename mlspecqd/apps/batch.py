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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mlspecqd.apps.llm import LLM
from mlspecqd.engine.sampling import SAMPLING_PARAMETER_NAMES

URLS = ("/v1/chat/completions", "/v1/completions")


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
        except ValueError:
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
    if not isinstance(request, dict):
        raise RequestError(fallback, f"line {number}: expected a JSON object, got {type(request).__name__}")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise RequestError(fallback, f"line {number}: needs a non-empty string custom_id")
    if request.get("method") != "POST":
        raise RequestError(custom_id, f"line {number}: method must be \"POST\" (got {request.get('method')!r})")
    if request.get("url") not in URLS:
        raise RequestError(custom_id, f"line {number}: url must be one of {', '.join(URLS)} "
                                      f"(got {request.get('url')!r})")
    if not isinstance(request.get("body"), dict):
        raise RequestError(custom_id, f"line {number}: body must be a JSON object")
    return custom_id, request


def run_request(llm: LLM, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The response body for one request; ValueError (any subclass) for a request the model refuses."""
    if body.get("stream"):
        raise ValueError("stream: not available in a batch")
    if body.get("n", 1) != 1:
        raise ValueError(f"n: only 1 choice per request is supported (got {body['n']!r})")
    # Body fields named as sampling parameters set them; others (model, user, ...) are ignored.
    options = {name: body[name] for name in SAMPLING_PARAMETER_NAMES if body.get(name) is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if url == "/v1/chat/completions":
        if "messages" not in body:
            raise ValueError("messages: required for /v1/chat/completions")
        return llm.create_chat_completion(body["messages"], max_tokens, stop=body.get("stop"), **options)
    if not isinstance(body.get("prompt"), str):
        raise ValueError("prompt: a string is required for /v1/completions")
    return llm.create_completion(body["prompt"], 128 if max_tokens is None else max_tokens, stop=body.get("stop"),
                                 **options)


def _record(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response, "error": error}


def _error_response(message: str) -> dict[str, Any]:
    return {"status_code": 400, "request_id": f"req_{uuid.uuid4().hex}",
            "body": {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}}


def run_batch(llm: LLM, in_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
              progress: TextIO | None = None, clock: Callable[[], float] = time.perf_counter) -> BatchSummary:
    """Answer every request of IN not yet in OUT, appending one line per request to OUT."""
    in_path, out_path = Path(in_path), Path(out_path)
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
    summary = BatchSummary(total=len(numbered))
    started = clock()
    seen: set[str] = set()
    try:
        out = open(out_path, "a", encoding="utf-8")  # noqa: SIM115  (the with below closes it)
    except OSError as error:
        raise BatchFileError(f"{out_path}: cannot write ({error.strerror})") from None
    with out:
        for position, (number, line) in enumerate(numbered, 1):
            try:
                custom_id, request = parse_request(line, number)
                if custom_id in seen:
                    raise RequestError(f"line-{number}",
                                       f"line {number}: custom_id {custom_id!r} repeats an earlier line")
            except RequestError as error:
                custom_id, message, request = error.custom_id, str(error), None
            seen.add(custom_id)
            if custom_id in done:
                summary.skipped += 1
                continue
            if request is None:
                record = _record(custom_id, None, {"code": "invalid_request", "message": message})
                summary.failed += 1
                summary.errors.append(message)
                note = f"error: {message}"
            else:
                request_started = clock()
                try:
                    body = run_request(llm, request["url"], request["body"])
                except ValueError as error:
                    message = f"{custom_id}: {error}"
                    record = _record(custom_id, _error_response(str(error)), None)
                    summary.failed += 1
                    summary.errors.append(message)
                    note = f"error: {error}"
                else:
                    record = _record(custom_id, {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex}",
                                                 "body": body}, None)
                    summary.succeeded += 1
                    tokens = body["usage"]["completion_tokens"]
                    summary.completion_tokens += tokens
                    seconds = clock() - request_started
                    note = f"{tokens} tokens, {tokens / seconds if seconds > 0 else 0.0:.2f} tok/s"
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            if progress is not None:
                summary.seconds = clock() - started
                overall = summary.completion_tokens / summary.seconds if summary.seconds > 0 else 0.0
                progress.write(f"[{position}/{summary.total}] {custom_id}: {note} (overall {overall:.2f} tok/s)\n")
                progress.flush()
    summary.seconds = clock() - started
    return summary
