"""Requests run one at a time on one LLM, in a worker thread, in the order they arrived.

An LLM runs one generation at a time, and its native forwards release the GIL, so one worker thread
keeps the model busy while an event loop (the HTTP server) accepts, queues and streams. At most
`max_waiting` requests wait; one more is refused at once (QueueFull) rather than left waiting without
bound. A job cancelled while it waits never runs; cancelled while it runs, it stops before its next
token and the LLM's caches are left in step with what was generated.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

from mlspecqd.apps.llm import LLM
from mlspecqd.apps.openai_requests import CompletionRequest


class QueueFull(Exception):
    """Every waiting place is taken; `retry_after` is a hint in seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} requests are waiting already; retry in {retry_after} s")
        self.retry_after = retry_after


# What a job hands its caller, in order: ("chunk", dict) ... ("done", None) for a run that went well;
# ("error", ValueError) for a request the LLM refused before generating; ("failure", Exception) else.
Delivery = Callable[[str, Any], None]


@dataclasses.dataclass
class Job:
    request: CompletionRequest
    deliver: Delivery
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class RequestQueue:
    """The worker thread and its bounded queue. `start()` before submitting, `stop()` at the end."""

    def __init__(self, llm: LLM, max_waiting: int = 16) -> None:
        self.llm = llm
        self.max_waiting = max_waiting
        self._waiting: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # jobs submitted and not finished: the running one and those waiting
        self._thread = threading.Thread(target=self._work, name="mlspecqd-worker", daemon=True)
        self.running: Job | None = None

    def start(self) -> None:
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._pending - (self.running is not None)

    def submit(self, request: CompletionRequest, deliver: Delivery) -> Job:
        job = Job(request, deliver)
        with self._lock:
            if self._pending > self.max_waiting:  # one running and max_waiting waiting
                raise QueueFull(self._pending - 1, retry_after=self._pending)
            self._pending += 1
        self._waiting.put(job)
        return job

    def stop(self) -> None:
        """Finish the jobs already queued, then end the worker thread."""
        self._waiting.put(None)
        self._thread.join()

    def _work(self) -> None:
        while True:
            job = self._waiting.get()
            if job is None:
                return
            try:
                if not job.cancelled.is_set():
                    self.running = job
                    self._run(job)
            finally:
                with self._lock:
                    self.running = None
                    self._pending -= 1

    def _run(self, job: Job) -> None:
        # Always streamed inside: a cancelled job stops between tokens, streamed to its client or not.
        try:
            chunks = dataclasses.replace(job.request, stream=True).run(self.llm)
        except ValueError as error:
            job.deliver("error", error)
            return
        except Exception as error:  # a fault of ours: the caller answers 500 and the worker goes on
            job.deliver("failure", error)
            return
        try:
            for chunk in chunks:
                if job.cancelled.is_set():
                    break
                job.deliver("chunk", chunk)
            else:
                job.deliver("done", None)
        except Exception as error:
            job.deliver("failure", error)
        finally:
            chunks.close()
