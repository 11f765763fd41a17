"""A fake GitHub REST API: a real HTTP server on 127.0.0.1 serving the fixtures in testing/fixtures/github.

It answers the requests the frontier watcher makes (repository, README, recursive tree, blobs, pull
requests), honours If-None-Match with a 304, and can be told to rate-limit, to fail with 503 a few
times, or to serve changed content. Every request is logged for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "github"


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    if_none_match: str | None
    authorization: str | None
    accept: str | None
    status: int = 0


@dataclass
class FakeGitHub:
    owner: str = "openai"
    repo: str = "parameter-golf"
    fixtures: Path = FIXTURES
    readme: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # repository path -> content
    pulls: list[dict] = field(default_factory=list)
    rate_limited: bool = False
    rate_limit_after: int | None = None  # answer 403 once this many requests were served
    fail_503: dict[str, int] = field(default_factory=dict)  # path suffix -> how many 503s to answer first
    log: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.readme = (self.fixtures / "README.md").read_text(encoding="utf-8")
        self.pulls = json.loads((self.fixtures / "pulls.json").read_text(encoding="utf-8"))
        for p in sorted((self.fixtures / "records").rglob("*")):
            if p.is_file():
                self.files[p.relative_to(self.fixtures).as_posix()] = p.read_bytes()
        self._server: ThreadingHTTPServer | None = None

    # -- server lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                fake._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routes -----------------------------------------------------------------------------------
    def paths(self, prefix: str = "") -> list[str]:
        return [s.path for s in self.log if s.path.startswith(prefix)]

    def _route(self, path: str, query: dict[str, list[str]], accept: str) -> tuple[int, str, str]:
        base = f"/repos/{self.owner}/{self.repo}"
        if path == base:
            return (
                200,
                "application/json",
                json.dumps({"full_name": f"{self.owner}/{self.repo}", "default_branch": "main"}),
            )
        if path == f"{base}/readme":
            if "raw" in accept:
                return 200, "text/plain", self.readme
            content = base64.b64encode(self.readme.encode()).decode()
            return 200, "application/json", json.dumps({"encoding": "base64", "content": content})
        if path == f"{base}/git/trees/main":
            tree = [{"path": p, "type": "blob", "sha": git_blob_sha(b)} for p, b in self.files.items()]
            return 200, "application/json", json.dumps({"sha": "t", "truncated": False, "tree": tree})
        if path.startswith(f"{base}/git/blobs/"):
            sha = path.rsplit("/", 1)[1]
            for b in self.files.values():
                if git_blob_sha(b) == sha:
                    body = {"sha": sha, "encoding": "base64", "content": base64.encodebytes(b).decode()}
                    return 200, "application/json", json.dumps(body)
            return 404, "application/json", json.dumps({"message": "Not Found"})
        if path == f"{base}/pulls":
            page = int(query.get("page", ["1"])[0])
            per_page = int(query.get("per_page", ["30"])[0])
            chunk = self.pulls[(page - 1) * per_page : page * per_page]
            return 200, "application/json", json.dumps(chunk)
        return 404, "application/json", json.dumps({"message": "Not Found"})

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        u = urlparse(h.path)
        seen = Seen(
            u.path,
            parse_qs(u.query),
            h.headers.get("If-None-Match"),
            h.headers.get("Authorization"),
            h.headers.get("Accept"),
        )
        self.log.append(seen)

        def reply(status: int, body: str = "", ctype: str = "application/json", headers: dict | None = None):
            seen.status = status
            data = body.encode()
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)

        if self.rate_limited or (self.rate_limit_after is not None and len(self.log) > self.rate_limit_after):
            reset = str(int(time.time()) + 1800)
            return reply(
                403,
                json.dumps({"message": "API rate limit exceeded"}),
                headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset},
            )
        for suffix, n in list(self.fail_503.items()):
            if u.path.endswith(suffix) and n > 0:
                self.fail_503[suffix] = n - 1
                return reply(503, json.dumps({"message": "unavailable"}))
        status, ctype, body = self._route(u.path, seen.query, h.headers.get("Accept") or "")
        etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:20] + '"'
        if status == 200 and seen.if_none_match == etag:
            return reply(304, "", headers={"ETag": etag})
        reply(status, body, ctype, {"ETag": etag, "x-ratelimit-remaining": "4999"} if status == 200 else None)
