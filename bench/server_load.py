"""Load on `mlspecqd serve --parallel N`: concurrent streaming clients, malformed requests mixed in, on
127.0.0.1 only.

    python3 bench/run.py server_load [-m MODEL] [--parallel 1 2 4 8] [--clients 8] [--requests 4]
                                     [--max-tokens 64] [--server-args '--no-speculation']

For each N, starts the server as its own process on a free port of 127.0.0.1 with --parallel N, then runs
--clients clients at once, each sending --requests streamed chat requests (a client told 503 waits its
Retry-After and sends again), plus, per client, one of each malformed request (bad JSON, wrong types,
an oversize body, an unknown model, max_tokens past the context). Checks that every valid request ends
with [DONE] and that every bad one gets a 4xx with an OpenAI error message, and that the server is
alive after. Reports, per N, time to first token (p50 / p95), total generated tokens per second (and
its ratio to the first N's), and the 503s. Every request has a timeout, and the whole run is bounded by
--time-limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import RESULTS
from bench.machine import describe_machine

QUESTIONS = ["Write a Python function that reverses a string.", "What is a binary search?",
             "Name three sorting algorithms.", "Explain recursion in one paragraph.",
             "Write a haiku about compilers.", "What does HTTP stand for?"]


def start_server(model: str, threads: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "mlspecqd", "serve", "-m", model, "--port", "0",
                                "--threads", str(threads), *extra],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"the server did not start: {line}{process.stderr.read()}")
    threading.Thread(target=process.stderr.read, daemon=True).start()
    return process, line.strip().rsplit(" ", 1)[-1]


async def http(url: str, method: str, path: str, body: bytes | None, timeout: float,
               on_line: Any = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection; `on_line(line)` sees each line of the body as it comes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body or b'')}\r\nConnection: close\r\n\r\n").encode()
        writer.write(head + (body or b""))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        status = int(status_line.split()[1])
        headers = {}
        while (line := await asyncio.wait_for(reader.readline(), timeout)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        data = bytearray()
        chunked = headers.get("transfer-encoding") == "chunked"
        while True:
            if chunked:
                size = int((await asyncio.wait_for(reader.readline(), timeout)).strip() or b"0", 16)
                if size == 0:
                    break
                part = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
                part = part[:-2]
            else:
                part = await asyncio.wait_for(reader.read(65536), timeout)
                if not part:
                    break
            data += part
            if on_line is not None:
                for piece in bytes(part).split(b"\n"):
                    if piece.startswith(b"data: "):
                        on_line(piece)
        return status, headers, bytes(data)
    finally:
        writer.close()


async def streamed_chat(url: str, question: str, max_tokens: int, timeout: float) -> dict[str, Any]:
    body = json.dumps({"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                       "stream": True}).encode()
    busy = 0
    while True:
        sent = time.perf_counter()
        first: list[float] = []
        tokens: list[int] = []

        def on_line(line: bytes, first: list[float] = first, tokens: list[int] = tokens) -> None:
            if line.strip() == b"data: [DONE]":
                return
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0].get("delta", {}) if chunk.get("choices") else {}
            if delta.get("content") and not first:
                first.append(time.perf_counter())
            if "usage" in chunk:
                tokens.append(chunk["usage"]["completion_tokens"])

        status, headers, data = await http(url, "POST", "/v1/chat/completions", body, timeout, on_line)
        if status == 503:
            busy += 1
            await asyncio.sleep(float(headers.get("retry-after", "1")))
            continue
        done = data.rstrip().endswith(b"data: [DONE]")
        return {"ok": status == 200 and done and bool(tokens), "status": status, "busy": busy,
                "time_to_first_token": (first[0] - sent) if first else None,
                "tokens": tokens[0] if tokens else 0}


def malformed_requests(context: int) -> list[tuple[str, bytes]]:
    messages = [{"role": "user", "content": "Hi"}]
    return [
        ("bad JSON", b'{"messages": [ {"role": '),
        ("wrong types", json.dumps({"messages": messages, "max_tokens": "lots", "temperature": "hot"}).encode()),
        ("oversize body", json.dumps({"messages": messages, "padding": "x" * (2 << 20)}).encode()),
        ("unknown model", json.dumps({"model": "no-such-model", "messages": messages}).encode()),
        ("max_tokens past the context", json.dumps({"messages": messages, "max_tokens": context * 4}).encode()),
    ]


async def bad_request(url: str, name: str, body: bytes, timeout: float) -> dict[str, Any]:
    try:
        status, _, data = await http(url, "POST", "/v1/chat/completions", body, timeout)
        message = json.loads(data)["error"]["message"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        # A server may close before reading all of an oversize body; the client then sees a reset.
        return {"name": name, "ok": name == "oversize body" and isinstance(error, OSError), "status": None}
    return {"name": name, "ok": 400 <= status < 500 and bool(message), "status": status}


async def client(url: str, index: int, requests: int, max_tokens: int, context: int,
                 timeout: float) -> list[dict[str, Any]]:
    outcomes = []
    bad = malformed_requests(context)
    for number in range(requests):
        question = QUESTIONS[(index + number) % len(QUESTIONS)]
        outcomes.append({"kind": "valid", **await streamed_chat(url, question, max_tokens, timeout)})
        if number < len(bad):
            name, body = bad[(index + number) % len(bad)]
            outcomes.append({"kind": "malformed", **await bad_request(url, name, body, timeout)})
    return outcomes


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def load(url: str, clients: int, requests: int, max_tokens: int, context: int,
               timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    results = await asyncio.gather(*(client(url, index, requests, max_tokens, context, timeout)
                                     for index in range(clients)))
    seconds = time.perf_counter() - started
    outcomes = [outcome for per_client in results for outcome in per_client]
    valid = [o for o in outcomes if o["kind"] == "valid"]
    malformed = [o for o in outcomes if o["kind"] == "malformed"]
    first_token = [o["time_to_first_token"] for o in valid if o["time_to_first_token"] is not None]
    tokens = sum(o["tokens"] for o in valid)
    return {"clients": clients, "valid_requests": len(valid), "valid_answered": sum(o["ok"] for o in valid),
            "malformed_requests": len(malformed), "malformed_refused_4xx": sum(o["ok"] for o in malformed),
            "busy_503": sum(o["busy"] for o in valid), "seconds": seconds, "tokens": tokens,
            "tokens_per_second": tokens / seconds,
            "time_to_first_token_p50_s": statistics.median(first_token) if first_token else None,
            "time_to_first_token_p95_s": percentile(first_token, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="qwen2.5-coder-0.5b", help="a GGUF path or a named model")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8], help="serve --parallel values")
    parser.add_argument("--clients", type=int, default=8, help="clients at once, for every N")
    parser.add_argument("--requests", type=int, default=4, help="streamed chat requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds for the whole run")
    parser.add_argument("--server-args", default="", help="more `mlspecqd serve` arguments, e.g. '--no-speculation'")
    parser.add_argument("--out", type=Path, default=RESULTS / "server_load.json")
    args = parser.parse_args()
    rows = []
    alive = True
    deadline = time.monotonic() + args.time_limit
    for parallel in args.parallel:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        process, url = start_server(args.model, args.threads, ["--ctx", str(args.context), "--parallel", str(parallel),
                                                               "--max-waiting", str(args.clients),
                                                               *args.server_args.split()])
        try:
            row = asyncio.run(asyncio.wait_for(load(url, args.clients, args.requests, args.max_tokens, args.context,
                                                    args.request_timeout), remaining))
            alive = alive and asyncio.run(http(url, "GET", "/health", None, 30))[0] == 200
        finally:
            process.terminate()
            process.wait(timeout=120)
        row["parallel"] = parallel
        row["vs_first"] = row["tokens_per_second"] / rows[0]["tokens_per_second"] if rows else 1.0
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"machine": describe_machine(args.threads), "model": args.model, "server_args": args.server_args,
              "clients": args.clients, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
              "server_alive_after": alive, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".tmp")
    temporary.write_text(json.dumps(report, indent=2))
    temporary.replace(args.out)
    print(f"{args.clients} clients x {args.requests} requests, {args.model} {args.server_args}")
    print("| --parallel | valid answered | malformed refused (4xx) | 503s | tok/s | vs first | "
          "first token p50 / p95 (s) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        p50, p95 = row["time_to_first_token_p50_s"], row["time_to_first_token_p95_s"]
        print(f"| {row['parallel']} | {row['valid_answered']}/{row['valid_requests']} | "
              f"{row['malformed_refused_4xx']}/{row['malformed_requests']} | {row['busy_503']} | "
              f"{row['tokens_per_second']:.2f} | {row['vs_first']:.2f}x | {p50 or 0:.2f} / {p95 or 0:.2f} |")
    print(f"server alive after every run: {alive}")


if __name__ == "__main__":
    main()
