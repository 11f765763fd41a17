"""A small OpenAI-compatible server on 127.0.0.1 that answers /v1/chat/completions from a script.

The real openai client talks to it over real HTTP, so the tests exercise the SDK's serialisation,
retries and error types, not a mock of them. Every request is recorded (path, headers, JSON body).

A script is a list of replies, used in order, or a function `(body, n) -> reply` for a model that
looks at what it was sent (the benchmark's oracle). Replies are built with the helpers below:

    FakeOpenAI([tool_reply(call("read_logs", {"run_id": "r1"})), text_reply("hello"), http_error(500)])
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = dict[str, Any]


def call(name: str, arguments: dict[str, Any] | str) -> tuple[str, str]:
    """One tool call; a str is sent verbatim (for malformed JSON), a dict is encoded."""
    return name, arguments if isinstance(arguments, str) else json.dumps(arguments)


def tool_reply(
    *calls: tuple[str, str], content: str | None = "", usage: dict[str, int] | None = None
) -> Reply:
    return {"status": 200, "content": content, "calls": list(calls), "usage": usage}


def text_reply(content: str, usage: dict[str, int] | None = None, finish_reason: str | None = None) -> Reply:
    return {"status": 200, "content": content, "calls": [], "usage": usage, "finish_reason": finish_reason}


def http_error(
    status: int = 500,
    message: str = "internal error",
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An error reply; `headers` (e.g. Retry-After) go on the HTTP response, `code` into the error body."""
    return {"status": status, "error": message, "code": code, "headers": headers or {}}


def context_length_error(tokens: int = 200_000, limit: int = 128_000) -> Reply:
    return http_error(
        400,
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {tokens} tokens. Please reduce the length of the messages.",
        code="context_length_exceeded",
    )


def slow_reply(seconds: float, reply: Reply) -> Reply:
    return reply | {"delay_s": seconds}


def estimate_usage(body: dict[str, Any], completion: str) -> dict[str, int]:
    """Deterministic token counts (4 characters a token), so that tests can check the accounting."""
    prompt = len(json.dumps(body.get("messages", []))) // 4 + len(json.dumps(body.get("tools", []))) // 4
    comp = len(completion) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": comp, "total_tokens": prompt + comp}


class FakeOpenAI:
    def __init__(
        self,
        script: list[Reply] | Callable[[dict[str, Any], int], Reply] | None = None,
        model: str = "fake-model",
    ):
        self.script = script if callable(script) else list(script or [])
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.replies_sent = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: tests read fake.requests instead
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", errors="replace")
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                status, payload, delay = fake._answer(self.path, dict(self.headers), body, raw)
                if delay:
                    time.sleep(delay)
                self._send(status, payload, payload.pop("_headers", None))

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -- scripting --------------------------------------------------------------------------------

    def push(self, *replies: Reply) -> None:
        assert isinstance(self.script, list)
        self.script.extend(replies)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"].endswith("/chat/completions")]

    def _next(self, body: dict[str, Any]) -> Reply | None:
        with self._lock:
            n = self.replies_sent
            self.replies_sent += 1
            if callable(self.script):
                return self.script(body, n)
            return self.script.pop(0) if self.script else None

    def _answer(
        self, path: str, headers: dict[str, str], body: dict[str, Any], raw: str
    ) -> tuple[int, dict[str, Any], float]:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body, "raw": raw})
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {path}"}}, 0.0
        reply = self._next(body)
        if reply is None:  # 400 is not retried by the SDK: the test sees one clear failure
            return (
                400,
                {
                    "error": {
                        "message": f"fake_openai: script exhausted after {self.replies_sent - 1} replies",
                        "type": "invalid_request_error",
                    }
                },
                0.0,
            )
        delay = float(reply.get("delay_s", 0.0))
        if reply["status"] != 200:
            kind = "invalid_request_error" if reply["status"] == 400 else "server_error"
            return (
                reply["status"],
                {
                    "error": {"message": reply["error"], "type": kind, "code": reply.get("code")},
                    "_headers": reply.get("headers") or {},
                },
                delay,
            )
        calls = [
            {
                "id": f"call_{self.replies_sent}_{i}",
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            for i, (name, args) in enumerate(reply["calls"])
        ]
        message: dict[str, Any] = {"role": "assistant", "content": reply["content"]}
        if calls:
            message["tool_calls"] = calls
        finish = reply.get("finish_reason") or ("tool_calls" if calls else "stop")
        completion = (reply["content"] or "") + "".join(c["function"]["arguments"] for c in calls)
        usage = reply.get("usage") or estimate_usage(body, completion)
        payload = {
            "id": f"chatcmpl-fake-{self.replies_sent}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
        return 200, payload, delay
