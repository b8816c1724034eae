"""An OpenAI-compatible HTTP server over one LLM: /v1/chat/completions and /v1/completions (streamed
as server-sent events or not), /v1/models, /health.

Starlette (routing, request and streaming primitives) and uvicorn (HTTP/1.1, graceful shutdown on
SIGINT/SIGTERM) carry the protocol; the requests themselves are read by apps.openai_requests, as the
batch runner reads them, and run on the LLM's lanes (up to `parallel` at once) by apps.request_queue.
Errors have OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mlspecqd.apps.llm import LLM
from mlspecqd.apps.openai_format import response_from_chunks
from mlspecqd.apps.openai_requests import CHAT_URL, COMPLETIONS_URL, CompletionRequest, RequestError
from mlspecqd.apps.request_queue import Job, QueueFull, RequestQueue

DISCONNECT_POLL_SECONDS = 0.25  # how often a non-streamed request checks that its client is still there


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None      # None: no key asked; else "Authorization: Bearer KEY" on /v1/*
    max_waiting: int = 16           # requests queued while every lane is busy; more get 503
    max_body_bytes: int = 1 << 20   # a larger body gets 413 before it is read whole


def error_response(status: int, message: str, error_type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": error_type, "param": param, "code": code}},
                        status_code=status, headers=headers)


class ApiError(Exception):
    """Ends a request with an OpenAI-shaped error response."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__()
        self.response = response


def create_app(llm: LLM, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI application serving `llm`. Its lifespan starts and stops the worker thread."""
    settings = settings or ServerSettings()
    requests = RequestQueue(llm, settings.max_waiting)
    created = int(time.time())

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # compare_digest takes the same time wherever the strings first differ.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise ApiError(error_response(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                                          "authentication_error", code="invalid_api_key"))

    async def read_body(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise ApiError(error_response(413, f"the body is {declared} bytes; at most "
                                               f"{settings.max_body_bytes} are accepted"))
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > settings.max_body_bytes:
                raise ApiError(error_response(413, f"the body is over {settings.max_body_bytes} bytes"))
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(error_response(400, f"the body is not valid JSON ({error})")) from None

    def checked_request(url: str, body: Any) -> CompletionRequest:
        try:
            completion = CompletionRequest.from_body(url, body)
        except RequestError as error:
            raise ApiError(error_response(400, str(error), param=error.param)) from None
        model = body.get("model")
        if model is not None and model != llm.model_name:
            raise ApiError(error_response(404, f"model {model!r} is not served here; /v1/models lists "
                                               f"{llm.model_name!r}", param="model", code="model_not_found"))
        if completion.max_tokens is not None and completion.max_tokens > llm.context_length:
            raise ApiError(error_response(400, f"max_tokens: {completion.max_tokens} is more than the context "
                                               f"holds ({llm.context_length} tokens, prompt included)",
                                          param="max_tokens"))
        return completion

    async def completions(request: Request) -> Response:
        try:
            check_key(request)
            completion = checked_request(request.url.path, await read_body(request))
            deliveries: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            loop = asyncio.get_running_loop()

            def deliver(kind: str, payload: Any) -> None:
                loop.call_soon_threadsafe(deliveries.put_nowait, (kind, payload))

            try:
                job = requests.submit(completion, deliver)
            except QueueFull as error:
                raise ApiError(error_response(503, f"the server is busy: {error}", "server_error",
                                              code="server_busy",
                                              headers={"Retry-After": str(error.retry_after)})) from None
            try:
                first = await next_delivery(request, deliveries)
            except BaseException:
                job.cancel()
                raise
            if first is None:  # the client went away while its request waited or ran
                job.cancel()
                return Response(status_code=499)
            kind, payload = first
            if kind == "error":
                raise ApiError(error_response(400, str(payload)))
            if kind == "failure":
                raise ApiError(error_response(500, f"internal error: {payload!r}", "server_error"))
            if completion.stream:
                return StreamingResponse(event_stream(first, deliveries, job), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            chunks = [payload]
            while True:
                item = await next_delivery(request, deliveries)
                if item is None:
                    job.cancel()
                    return Response(status_code=499)
                kind, payload = item
                if kind == "done":
                    return JSONResponse(response_from_chunks(chunks))
                if kind == "failure":
                    raise ApiError(error_response(500, f"internal error: {payload!r}", "server_error"))
                chunks.append(payload)
        except ApiError as error:
            return error.response

    async def event_stream(first: tuple[str, Any], deliveries: asyncio.Queue[tuple[str, Any]],
                           job: Job) -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; the finally stops the job.
        try:
            item = first
            while True:
                kind, payload = item
                if kind == "done":
                    yield "data: [DONE]\n\n"
                    return
                if kind == "chunk":
                    yield f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
                else:
                    error = {"message": f"internal error: {payload!r}", "type": "server_error", "param": None,
                             "code": None}
                    yield f"data: {json.dumps({'error': error})}\n\n"
                    return
                item = await deliveries.get()
        finally:
            job.cancel()

    async def models(request: Request) -> Response:
        try:
            check_key(request)
        except ApiError as error:
            return error.response
        return JSONResponse({"object": "list", "data": [
            {"id": llm.model_name, "object": "model", "created": created, "owned_by": "mlspecqd",
             "meta": {"context_length": llm.context_length, "levels": llm.level_names}}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "running": requests.running, "waiting": requests.waiting,
                             "parallel": len(requests.lanes)})

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return error_response(error.status_code, f"{request.method} {request.url.path}: {error.detail}",
                              code="not_found" if error.status_code == 404 else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        requests.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, requests.stop)

    app = Starlette(routes=[Route(CHAT_URL, completions, methods=["POST"]),
                            Route(COMPLETIONS_URL, completions, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"])],
                    exception_handlers={HTTPException: http_error},
                    lifespan=lifespan)
    app.state.requests = requests
    return app


async def next_delivery(request: Request, deliveries: asyncio.Queue[tuple[str, Any]]) -> tuple[str, Any] | None:
    """The job's next delivery, or None once the client has disconnected."""
    while True:
        try:
            return await asyncio.wait_for(deliveries.get(), DISCONNECT_POLL_SECONDS)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                return None


def serve(llm: LLM, host: str, port: int, settings: ServerSettings | None = None,
          announce: Any = None, shutdown_seconds: float = 30.0) -> None:
    """Serve `llm` on host:port (port 0: any free port) until SIGINT or SIGTERM, then finish the
    requests already accepted (for at most `shutdown_seconds`) and return. `announce(url)` is called
    once the socket listens."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)  # connections made once the URL is announced wait here until uvicorn accepts them
    bound_port = listener.getsockname()[1]
    if announce is not None:
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        announce(f"http://{shown}:{bound_port}")
    config = uvicorn.Config(create_app(llm, settings), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=shutdown_seconds)
    uvicorn.Server(config).run(sockets=[listener])
