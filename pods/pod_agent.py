"""A tiny HTTP job agent: the start command of every finals pod, reached through RunPod's HTTP proxy.

Standalone on purpose (standard library only, imports nothing from the project): it is shipped to the
pod inside the pod's environment and run with the image's python3. The fake RunPod server in the tests
runs this same file as each fake pod's process, so the client code is tested against the real agent.

Every request needs `Authorization: Bearer $PGOLF_AGENT_TOKEN` (a random token per pod).

  GET  /health                      -> {"ok": true, "uptime_s", "jobs": {id: state}}
  PUT  /files/<path>                -> write the body to <root>/<path> (atomic; X-Sha256 checked if sent)
  GET  /files/<path>                -> the file's bytes (X-Sha256 header)
  GET  /ls/<dir>                    -> {"files": [{"path", "size"}]} under <root>/<dir>, recursive, bounded
  POST /jobs                        -> {"job_id", "cmd", "env", "cwd"}: start `bash -c cmd`; idempotent by
                                       job_id, so a client may safely retry a start whose reply was lost
  GET  /jobs/<id>?offset=&limit=    -> state, returncode, wall time and a bounded slice of its log
  GET  /jobs/<id>?tail=N            -> the same with the last N bytes of the log
  POST /jobs/<id>/kill              -> SIGTERM the job's process group, SIGKILL after a grace period

A dead man's switch bounds the money even if the client dies: at PGOLF_AGENT_DEADLINE_UNIX (epoch
seconds, set by the client from the moment it created the pod), after PGOLF_AGENT_MAX_LIFETIME_S since
start, or after PGOLF_AGENT_IDLE_S without an authenticated request, the agent kills its jobs and runs
PGOLF_AGENT_DEADMAN_CMD (default on RunPod: `runpodctl remove pod $RUNPOD_POD_ID`, which RunPod's
pod-scoped key allows), then exits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

MAX_UPLOAD = 2 << 30  # bytes: far above a 16 MB artifact, far below a runaway body
MAX_SLICE = 64 * 1024  # bytes of log per status reply: the client's digest stays bounded
MAX_LS = 2000
JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# never handed to jobs: a training log must not be able to print the agent's own secrets
PRIVATE_ENV = ("PGOLF_AGENT_TOKEN", "PGOLF_AGENT_B64")


class Job:
    def __init__(self, job_id: str, cmd: str, cwd: Path, env: dict[str, str], log_path: Path):
        self.job_id = job_id
        self.cmd = cmd
        self.log_path = log_path
        self.started = time.time()
        self.ended: float | None = None
        self.returncode: int | None = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            ["bash", "-c", cmd],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        rc = self.proc.wait()
        self.ended = time.time()
        self.returncode = rc
        self._log.close()

    @property
    def state(self) -> str:
        return "running" if self.returncode is None else "exited"

    def kill(self, grace_s: float = 5.0) -> None:
        if self.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + grace_s
        while time.time() < deadline and self.returncode is None:
            time.sleep(0.05)
        if self.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def describe(self, offset: int | None, limit: int, tail: int | None) -> dict:
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        limit = max(0, min(limit, MAX_SLICE))
        if tail is not None:
            start = max(0, size - min(tail, MAX_SLICE))
            limit = size - start
        else:
            start = min(max(0, offset or 0), size)
        data = b""
        if limit and self.log_path.exists():
            with open(self.log_path, "rb") as f:
                f.seek(start)
                data = f.read(limit)
        end = self.ended if self.ended is not None else time.time()
        return {
            "job_id": self.job_id,
            "state": self.state,
            "returncode": self.returncode,
            "started": self.started,
            "ended": self.ended,
            "wall_s": round(end - self.started, 3),
            "log_size": size,
            "offset": start,
            "next_offset": start + len(data),
            "data": data.decode("utf-8", "replace"),
        }


class Agent:
    def __init__(
        self,
        root: Path,
        token: str,
        max_lifetime_s: float = 0.0,
        idle_s: float = 0.0,
        deadman_cmd: str = "",
        deadline_unix: float = 0.0,
    ):
        self.deadline_unix = deadline_unix
        self.root = root.resolve()
        self.token = token
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.started = time.time()
        self.last_contact = time.time()
        self.max_lifetime_s = max_lifetime_s
        self.idle_s = idle_s
        self.deadman_cmd = deadman_cmd
        self.server: ThreadingHTTPServer | None = None

    def resolve(self, rel: str) -> Path:
        rel = unquote(rel).lstrip("/")
        if not rel or "\x00" in rel:
            raise PermissionError("empty path")
        path = (self.root / rel).resolve()
        if path != self.root and not path.is_relative_to(self.root):
            raise PermissionError(f"{rel!r} is outside the agent's root")
        return path

    def job_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        env.update({str(k): str(v) for k, v in extra.items()})
        return env

    def start_job(self, body: dict) -> tuple[dict, bool]:
        job_id = str(body.get("job_id", ""))
        if not JOB_ID.match(job_id):
            raise ValueError("job_id must match [A-Za-z0-9_.-]{1,64}")
        with self.lock:
            if job_id in self.jobs:  # a retried start: same job, nothing run twice
                return self.jobs[job_id].describe(None, 0, None), False
            cwd = self.resolve(body.get("cwd") or ".")
            cwd.mkdir(parents=True, exist_ok=True)
            job = Job(
                job_id,
                str(body["cmd"]),
                cwd,
                self.job_env(body.get("env") or {}),
                self.root / ".jobs" / f"{job_id}.log",
            )
            self.jobs[job_id] = job
            return job.describe(None, 0, None), True

    def watchdog(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.time()
            why = None
            if self.deadline_unix and now > self.deadline_unix:
                why = "the client's deadline passed"
            elif self.max_lifetime_s and now - self.started > self.max_lifetime_s:
                why = f"lifetime {self.max_lifetime_s:.0f}s exceeded"
            elif self.idle_s and now - self.last_contact > self.idle_s:
                why = f"no client contact for {self.idle_s:.0f}s"
            if why:
                self.deadman(why)
                return

    def deadman(self, why: str) -> None:
        print(f"pod_agent: dead man's switch: {why}", file=sys.stderr, flush=True)
        for job in list(self.jobs.values()):
            job.kill(grace_s=2.0)
        if self.deadman_cmd:
            subprocess.run(["bash", "-c", self.deadman_cmd], env=self.job_env({}), timeout=120, check=False)
        os._exit(3)


def make_handler(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pgolf-agent/1"

        def log_message(self, format: str, *args) -> None:  # quiet: the client keeps the digest
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json", headers=None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj).encode())

        def _authorised(self) -> bool:
            got = self.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {agent.token}".encode()):
                self._json(401, {"error": "unauthorised"})
                return False
            agent.last_contact = time.time()
            return True

        def _dispatch(self, method: str) -> None:
            if not self._authorised():
                return
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            path = url.path
            try:
                if method == "GET" and path == "/health":
                    with agent.lock:
                        jobs = {j.job_id: j.state for j in agent.jobs.values()}
                    return self._json(
                        200, {"ok": True, "uptime_s": round(time.time() - agent.started, 1), "jobs": jobs}
                    )
                if path.startswith("/files/") and method == "PUT":
                    return self._put_file(path[len("/files/") :])
                if path.startswith("/files/") and method == "GET":
                    return self._get_file(path[len("/files/") :])
                if path.startswith("/ls/") or path == "/ls":
                    return self._ls(path[len("/ls/") :] or ".")
                if path == "/jobs" and method == "POST":
                    body = json.loads(self._read_body(1 << 20) or b"{}")
                    desc, created = agent.start_job(body)
                    return self._json(201 if created else 200, desc)
                m = re.fullmatch(r"/jobs/([^/]+)(/kill)?", path)
                if m:
                    job = agent.jobs.get(m.group(1))
                    if job is None:
                        return self._json(404, {"error": f"no job {m.group(1)!r}"})
                    if m.group(2) and method == "POST":
                        threading.Thread(target=job.kill, daemon=True).start()
                        return self._json(202, {"job_id": job.job_id, "state": job.state})
                    tail = int(query["tail"]) if "tail" in query else None
                    return self._json(
                        200,
                        job.describe(int(query.get("offset", 0)), int(query.get("limit", MAX_SLICE)), tail),
                    )
                return self._json(404, {"error": f"no route {method} {path}"})
            except PermissionError as e:
                return self._json(403, {"error": str(e)})
            except FileNotFoundError as e:
                return self._json(404, {"error": f"not found: {e.filename or e}"})
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                return self._json(400, {"error": f"bad request: {e}"})

        def _read_body(self, cap: int) -> bytes:
            n = int(self.headers.get("Content-Length", "0"))
            if n > cap:
                raise ValueError(f"body of {n} bytes is over the {cap} byte limit")
            return self.rfile.read(n) if n else b""

        def _put_file(self, rel: str) -> None:
            dest = agent.resolve(rel)
            body = self._read_body(MAX_UPLOAD)
            sha = hashlib.sha256(body).hexdigest()
            want = self.headers.get("X-Sha256")
            if want and want != sha:
                return self._json(422, {"error": f"sha256 mismatch: got {sha}, header says {want}"})
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(body)
            if self.headers.get("X-Executable") == "1":
                tmp.chmod(0o755)
            os.replace(tmp, dest)
            self._json(200, {"path": rel, "bytes": len(body), "sha256": sha})

        def _get_file(self, rel: str) -> None:
            src = agent.resolve(rel)
            if not src.is_file():
                raise FileNotFoundError(rel)
            data = src.read_bytes()
            self._send(200, data, "application/octet-stream", {"X-Sha256": hashlib.sha256(data).hexdigest()})

        def _ls(self, rel: str) -> None:
            base = agent.resolve(rel)
            if not base.is_dir():
                raise FileNotFoundError(rel)
            files = []
            for p in sorted(base.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    files.append({"path": str(p.relative_to(agent.root)), "size": p.stat().st_size})
                    if len(files) >= MAX_LS:
                        break
            self._json(200, {"files": files})

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_POST(self) -> None:
            self._dispatch("POST")

    return Handler


def main() -> int:
    token = os.environ.get("PGOLF_AGENT_TOKEN", "")
    if len(token) < 16:
        print("pod_agent: PGOLF_AGENT_TOKEN must be set (16+ characters)", file=sys.stderr)
        return 2
    port = int(os.environ.get("PGOLF_AGENT_PORT", "8000"))
    root = Path(os.environ.get("PGOLF_AGENT_ROOT") or os.getcwd())
    root.mkdir(parents=True, exist_ok=True)
    default_deadman = 'runpodctl remove pod "$RUNPOD_POD_ID"' if os.environ.get("RUNPOD_POD_ID") else ""
    agent = Agent(
        root,
        token,
        max_lifetime_s=float(os.environ.get("PGOLF_AGENT_MAX_LIFETIME_S", "0")),
        idle_s=float(os.environ.get("PGOLF_AGENT_IDLE_S", "0")),
        deadman_cmd=os.environ.get("PGOLF_AGENT_DEADMAN_CMD", default_deadman),
        deadline_unix=float(os.environ.get("PGOLF_AGENT_DEADLINE_UNIX", "0")),
    )
    server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(agent))
    server.daemon_threads = True
    agent.server = server
    threading.Thread(target=agent.watchdog, daemon=True).start()

    def stop(signum, frame):  # the container stopping: take the jobs down with us
        for job in list(agent.jobs.values()):
            job.kill(grace_s=2.0)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"pod_agent: listening on {port}, root {root}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
