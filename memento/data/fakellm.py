"""A small OpenAI-compatible server that answers the pipeline's own prompts by rule, with injectable faults.

For tests, benchmarks and dry runs of `memento data build --backend openai` without a model: real HTTP on
loopback, a fixed latency per request, and a queue of faults served to the next requests: `400` (a
context-length refusal), `429` (with
Retry-After), `500`, `slow` (answers after `slow_seconds`), `bad_body` (HTTP body not JSON), `bad_json` (reply
text without JSON), `wrong_count` (a scores list of the wrong length), `truncated` (the reply cut in half).
A fault written `task:fault` (e.g. `compress:truncated`) waits for the next request of that prompt task.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from memento.data.boundaries import heuristic_scores
from memento.data.compress import sentences

FAULTS = ("400", "429", "500", "slow", "bad_body", "bad_json", "wrong_count", "truncated")


def _memento(block: str) -> str:
    sents = sentences(block) or [block.strip() or "nothing"]
    pick = [sents[-1]] + ([sents[0]] if len(sents) > 1 else [])
    words = " ".join(" ".join(pick).split()).split()
    return " ".join(words[: max(3, len(block.split()) // 6)])


def answer(prompt: str, fault: str | None = None) -> str:
    """The rule-based reply to one of the pipeline's prompts."""
    task = re.search(r"TASK: (\w+)", prompt)
    task = task.group(1) if task else ""
    if task == "score_boundaries":
        units = {int(k): t for k, t in re.findall(r"^\[(\d+)\] (.*)$", prompt, re.MULTILINE)}
        wanted = [int(b) for b in re.search(r"after unit\): ([\d, ]+)", prompt).group(1).split(",")]
        scores = [int(heuristic_scores([units.get(b, ""), units.get(b + 1, "")])[0]) for b in wanted]
        if fault == "wrong_count":
            scores = [*scores, 1]
        reply = json.dumps({"scores": scores})
    elif task == "compress":
        blocks = re.split(r"^Block \d+:\n", prompt.split("Reply with JSON only")[0], flags=re.MULTILINE)[1:]
        reply = json.dumps({"mementos": [_memento(b) for b in blocks]})
    elif task == "compress_one":
        block = prompt.split("Block:\n", 1)[1].split("\nEarlier version:")[0].split("Reply with JSON only")[0]
        reply = json.dumps({"memento": _memento(block)})
    elif task == "judge":  # the release's form: a total, a line per dimension, deductions, feedback
        reply = (
            "SCORE: 9/10\nFORMULAS: 3/3\nNUMERICAL_VALUES: 2/2\nMETHODS: 2/2\nVALIDATION: 1/1\nCORRECTNESS: 1/1\n"
            "STRUCTURE: 1/1\nDEDUCTIONS: -1\nFEEDBACK: name the method"
        )
    else:
        reply = "Hello."
    if fault == "bad_json":
        return "Sure! Here are my thoughts: the scores look fine."
    if fault == "truncated":
        return reply[: len(reply) // 2]
    return reply


class FakeLLM:
    def __init__(self, latency: float = 0.0, slow_seconds: float = 2.0):
        self.latency, self.slow_seconds = latency, slow_seconds
        self.faults: deque[str] = deque()
        self.requests: Counter[str] = Counter()
        self.last: dict = {}  # the last well-formed request body, less its messages
        self.span: list[float] = []  # perf_counter() of the first request's arrival and of the last reply
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # /stats: what a server in another process has seen
                with server.lock:
                    stats = {"requests": dict(server.requests), "span": server.span}
                self._send(200, json.dumps(stats).encode())

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                task = re.search(rb"TASK: (\w+)", body)
                task = task.group(1).decode() if task else ""
                with server.lock:
                    if not server.span:  # the first request's arrival
                        server.span = [time.perf_counter()]
                    fault = server.take_fault(task)
                    server.requests["total"] += 1
                    if fault:
                        server.requests[fault] += 1
                if fault == "429":
                    return self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, b'{"error": "boom"}')
                if fault == "400":
                    return self._send(400, b'{"error": "maximum context length exceeded"}')
                time.sleep(server.slow_seconds if fault == "slow" else server.latency)
                if fault == "bad_body":
                    return self._send(200, b'{"choices": [')
                try:
                    request = json.loads(body)
                    prompt = request["messages"][-1]["content"]
                    server.last = {k: v for k, v in request.items() if k != "messages"}
                except (ValueError, KeyError, IndexError, TypeError):
                    return self._send(400, b'{"error": "malformed request"}')
                text = answer(prompt, fault)
                usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                payload = {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": usage}
                self._send(200, json.dumps(payload).encode())
                with server.lock:
                    server.span[1:] = [time.perf_counter()]  # the latest reply

            def _send(self, code: int, data: bytes, headers: dict | None = None):
                try:
                    self.send_response(code)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout we injected)

        ThreadingHTTPServer.request_queue_size = 128  # many concurrent clients: no refused connections
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def take_fault(self, task: str) -> str | None:
        for i, entry in enumerate(self.faults):
            target, _, fault = entry.rpartition(":")
            if target in ("", task):
                del self.faults[i]
                return fault
        return None

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # a server in its own process (benchmarks: it must not share the client's GIL)
    import argparse

    parser = argparse.ArgumentParser(description="The fake OpenAI-compatible server; prints its URL, serves forever.")
    parser.add_argument("--latency", type=float, default=0.0)
    llm = FakeLLM(latency=parser.parse_args().latency)
    print(llm.url, flush=True)
    llm.httpd.serve_forever()
