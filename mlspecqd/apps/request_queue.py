"""Requests run on an LLM's lanes, one worker thread per lane, in the order they arrived.

Each lane runs one generation at a time, and its native forwards release the GIL, so the worker threads
keep the model busy while an event loop (the HTTP server) accepts, queues and streams. With several
lanes (load(parallel=N)) up to N requests decode together, their forwards merged by the lanes' batcher;
each worker is a member of it while it runs a job. At most `max_waiting` requests wait for a lane; one
more is refused at once (QueueFull) rather than left waiting without bound. A job cancelled while it
waits never runs; cancelled while it runs, it stops before its next token and its lane's caches are
left in step with what was generated.
"""

from __future__ import annotations

import contextlib
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
    """The worker threads and their bounded queue. `start()` before submitting, `stop()` at the end."""

    def __init__(self, llm: LLM, max_waiting: int = 16) -> None:
        self.lanes = llm.lanes
        self.max_waiting = max_waiting
        self._waiting: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # jobs submitted and not finished: those running and those waiting
        self._threads = [threading.Thread(target=self._work, args=(lane,), name=f"mlspecqd-worker-{index}",
                                          daemon=True) for index, lane in enumerate(self.lanes)]
        self._running: set[int] = set()  # id() of the jobs running

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._pending - len(self._running)

    def submit(self, request: CompletionRequest, deliver: Delivery) -> Job:
        job = Job(request, deliver)
        with self._lock:
            if self._pending >= len(self.lanes) + self.max_waiting:  # every lane busy, every place taken
                waiting = self._pending - len(self._running)
                raise QueueFull(waiting, retry_after=1 + waiting // len(self.lanes))
            self._pending += 1
        self._waiting.put(job)
        return job

    def stop(self) -> None:
        """Finish the jobs already queued, then end the worker threads."""
        for _ in self._threads:
            self._waiting.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self, lane: LLM) -> None:
        while True:
            job = self._waiting.get()
            if job is None:
                return
            try:
                if not job.cancelled.is_set():
                    with self._lock:
                        self._running.add(id(job))
                    with lane.batcher.member() if lane.batcher is not None else contextlib.nullcontext():
                        self._run(job, lane)
            finally:
                with self._lock:
                    self._running.discard(id(job))
                    self._pending -= 1

    def _run(self, job: Job, lane: LLM) -> None:
        # Always streamed inside: a cancelled job stops between tokens, streamed to its client or not.
        try:
            chunks = dataclasses.replace(job.request, stream=True).run(lane)
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
