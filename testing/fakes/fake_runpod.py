"""A fake RunPod: a real HTTP server on 127.0.0.1 that answers the GraphQL the `runpod` SDK sends, runs
each pod's start command as a local process, and proxies `/proxy/{pod_id}-{port}/...` to it the way
RunPod's HTTP proxy does.

Point the real SDK at it with RUNPOD_API_BASE_URL=server.url and the agent client with
proxy_template=server.proxy_template. A pod's container command (dockerArgs) runs in its own directory
with its env, plus what RunPod adds (RUNPOD_POD_ID, a pod-scoped RUNPOD_API_KEY). The container's port
8000 is mapped to a free local port through PGOLF_AGENT_PORT (docker's port mapping, in effect). A
`torchrun` on the pods' PATH stands in for the real one: it runs the script once, as rank 0 of 1, with
the environment torchrun would set, and records the arguments it was given. `runpodctl remove pod`
terminates through this server, as RunPod's does.

What the real API is known to do is done here too: the top-level `uptimeSeconds` answers 0 (runpodctl
PR #315); the uptime is in `runtime { uptimeInSeconds }`, and `runtime` is null until the container is
up. Answers hold only the fields the query selected. A host whose CUDA driver is older than the
image's never starts the container (RunPod's troubleshooting page: "unsatisfied condition: cuda>=X").

The GraphQL is parsed for real (strings with escapes, objects, lists), so a query the SDK could not
send to RunPod fails here too. Fault knobs are plain attributes (see `FakeRunPod.__init__`); the
provider's clock (pod ages, billing, listing lags) can be moved on with `advance(seconds)`.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CAPACITY_MSG = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)

# ------------------------------------------------------------------------------ a small GraphQL parser


class GraphQLSyntaxError(ValueError):
    pass


def _tokens(src: str) -> list[tuple[str, Any]]:
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n,":
            i += 1
        elif c == "#":
            while i < n and src[i] != "\n":
                i += 1
        elif c in "{}()[]:!$=@":
            out.append(("p", c))
            i += 1
        elif c == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise GraphQLSyntaxError("Syntax Error: Unterminated string.")
                c = src[i]
                if c == '"':
                    i += 1
                    break
                if c == "\n":
                    raise GraphQLSyntaxError("Syntax Error: Unterminated string.")
                if c == "\\":
                    e = src[i + 1 : i + 2]
                    simple = {
                        '"': '"',
                        "\\": "\\",
                        "/": "/",
                        "b": "\b",
                        "f": "\f",
                        "n": "\n",
                        "r": "\r",
                        "t": "\t",
                    }
                    if e in simple:
                        buf.append(simple[e])
                        i += 2
                    elif e == "u":
                        buf.append(chr(int(src[i + 2 : i + 6], 16)))
                        i += 6
                    else:
                        raise GraphQLSyntaxError(f"Syntax Error: Invalid character escape sequence: \\{e}")
                else:
                    buf.append(c)
                    i += 1
            out.append(("s", "".join(buf)))
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            out.append(("n", src[i:j]))
            i = j
        elif c.isdigit() or c == "-":
            j = i + 1
            while j < n and (src[j].isdigit() or src[j] in ".eE+-"):
                j += 1
            text = src[i:j]
            out.append(("v", float(text) if any(x in text for x in ".eE") else int(text)))
            i = j
        else:
            raise GraphQLSyntaxError(f"Syntax Error: Unexpected character: {c!r}")
    return out


class _Parser:
    def __init__(self, src: str):
        self.t = _tokens(src)
        self.i = 0

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else ("eof", None)

    def take(self, kind=None, value=None):
        tok = self.peek()
        if (kind and tok[0] != kind) or (value is not None and tok[1] != value):
            raise GraphQLSyntaxError(f"Syntax Error: Expected {value or kind}, found {tok[1]!r}")
        self.i += 1
        return tok

    def document(self) -> tuple[str, list[dict]]:
        op = "query"
        if self.peek()[0] == "n" and self.peek()[1] in ("query", "mutation"):
            op = self.take()[1]
            if self.peek()[0] == "n":
                self.take()
        fields = self.selection()
        if self.peek()[0] != "eof":
            raise GraphQLSyntaxError(f"Syntax Error: Unexpected {self.peek()[1]!r}")
        return op, fields

    def selection(self) -> list[dict]:
        self.take("p", "{")
        fields = []
        while self.peek() != ("p", "}"):
            name = self.take("n")[1]
            args = {}
            if self.peek() == ("p", "("):
                self.take()
                while self.peek() != ("p", ")"):
                    k = self.take("n")[1]
                    self.take("p", ":")
                    args[k] = self.value()
                self.take("p", ")")
            sub = self.selection() if self.peek() == ("p", "{") else []
            fields.append({"name": name, "args": args, "fields": sub})
        self.take("p", "}")
        return fields

    def value(self):
        kind, v = self.peek()
        if kind == "p" and v == "{":
            self.take()
            obj = {}
            while self.peek() != ("p", "}"):
                k = self.take("n")[1]
                self.take("p", ":")
                obj[k] = self.value()
            self.take("p", "}")
            return obj
        if kind == "p" and v == "[":
            self.take()
            items = []
            while self.peek() != ("p", "]"):
                items.append(self.value())
            self.take("p", "]")
            return items
        if kind in ("s", "v"):
            self.take()
            return v
        if kind == "n":
            self.take()
            return {"true": True, "false": False, "null": None}.get(v, v)  # enums stay names
        raise GraphQLSyntaxError(f"Syntax Error: Unexpected {v!r}")


def parse_graphql(src: str) -> tuple[str, list[dict]]:
    return _Parser(src).document()


# ------------------------------------------------------------------------------ the fake provider


@dataclass
class FakePod:
    id: str
    name: str
    gpu_type: str
    gpu_count: int
    cloud_type: str
    cost_per_hr: float
    image: str
    docker_args: str
    env: dict[str, str]
    ports: str
    workdir: Path
    host_port: int
    clock: Any = time.time  # the provider's clock (FakeRunPod.clock)
    created: float = field(default_factory=time.time)
    ended: float | None = None
    status: str = "RUNNING"
    booted: bool = False
    proc: subprocess.Popen | None = None
    listed_after: float = 0.0
    visible_after: float = 0.0  # before this, the API answers as if the pod did not exist
    allowed_cuda: list[str] | None = None
    template_id: str | None = None
    booted_at: float | None = None

    def api(self) -> dict:
        runtime = None
        if self.booted and self.status == "RUNNING":
            runtime = {
                "uptimeInSeconds": int(self.clock() - (self.booted_at or self.created)),
                "ports": [
                    {
                        "ip": "100.65.0.2",
                        "isIpPublic": False,
                        "privatePort": int(p.split("/")[0]),
                        "publicPort": int(p.split("/")[0]),
                        "type": p.split("/")[1],
                    }
                    for p in self.ports.split(",")
                    if p
                ],
            }
        return {
            "id": self.id,
            "name": self.name,
            "desiredStatus": self.status,
            "costPerHr": self.cost_per_hr,
            "gpuCount": self.gpu_count,
            "imageName": self.image,
            "dockerArgs": self.docker_args,
            "env": [f"{k}={v}" for k, v in self.env.items()],
            "uptimeSeconds": 0,
            "lastStatusChange": "",
            "machineId": "m1",
            "memoryInGb": 1000,
            "vcpuCount": 128,
            "containerDiskInGb": 100,
            "volumeInGb": 0,
            "volumeMountPath": "/workspace",
            "podType": "RESERVED",
            "port": None,
            "ports": self.ports,
            "dockerId": None,
            "runtime": runtime,
            "machine": {"gpuDisplayName": self.gpu_type, "podHostId": f"{self.id}-host"},
        }

    def dollars(self) -> float:
        return ((self.ended or self.clock()) - self.created) * self.cost_per_hr / 3600.0

    def lifetime_s(self) -> float:
        return (self.ended or self.clock()) - self.created

    def visible(self, now: float) -> bool:
        return now >= self.visible_after


def project(obj: Any, fields: list[dict]) -> Any:
    """What a GraphQL server returns: only the selected fields (recursively)."""
    if obj is None or not fields:
        return obj
    if isinstance(obj, list):
        return [project(o, fields) for o in obj]
    return {f["name"]: project(obj.get(f["name"]), f["fields"]) for f in fields}


TORCHRUN_SHIM = r"""#!/bin/bash
# Stand-in for torchrun on a fake pod: run the script once as rank 0, record the arguments.
echo "$*" >> torchrun_calls.txt
nproc=1
while [[ "$1" == -* ]]; do
  case "$1" in
    --nproc_per_node=*|--nproc-per-node=*) nproc="${{1#*=}}" ;;
    --standalone|*=*) ;;
    *) shift ;;
  esac
  shift
done
RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 FAKE_NPROC_PER_NODE="$nproc" exec python3 "$@"
"""

RUNPODCTL_SHIM = r'''#!{python}
"""Stand-in for runpodctl on a fake pod: `runpodctl remove pod ID` terminates through the fake API."""
import json, os, sys, urllib.request
if sys.argv[1:3] != ["remove", "pod"] or len(sys.argv) != 4:
    sys.exit("fake runpodctl: only `remove pod ID`")
q = 'mutation {{ podTerminate(input: {{ podId: "%s" }}) }}' % sys.argv[3]
req = urllib.request.Request(os.environ["FAKE_RUNPOD_URL"] + "/graphql", json.dumps({{"query": q}}).encode(),
                             {{"Authorization": "Bearer " + os.environ["RUNPOD_API_KEY"],
                               "Content-Type": "application/json"}})
print(urllib.request.urlopen(req, timeout=10).read().decode())
'''


def _image_cuda(image: str) -> str | None:
    """ "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04" -> "12.8"."""
    import re

    m = re.search(r"cuda(\d+)\.(\d+)", image)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeRunPod:
    def __init__(self, api_key: str = "test-key", root: Path | None = None):
        self.api_key = api_key
        self.lock = threading.RLock()
        self.pods: dict[str, FakePod] = {}
        self.requests: list[str] = []  # every GraphQL text received, for assertions
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="fake-runpod-")
        self.root = Path(root or self._tmp.name)
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        for name, text in (("torchrun", TORCHRUN_SHIM), ("runpodctl", RUNPODCTL_SHIM)):
            p = self.bin / name
            p.write_text(text.format(python=sys.executable))
            p.chmod(0o755)
        (self.bin / "python3").symlink_to(sys.executable)  # skip pyenv's slow shim

        # ---- fault knobs
        self.prices: dict[str, float] = {}  # per GPU per hour; default 2.99
        self.default_price = 2.99
        self.no_capacity: set[str] = set()  # "GPU TYPE" or "GPU TYPE|CLOUD": create answers no capacity
        self.stock: dict[str, str | None] = {}  # stockStatus reported; default "High" (stock lies: see above)
        self.create_5xx_after_create = 0  # next N creates make the pod, then answer HTTP 500
        self.create_5xx_body = "html"  # or "json" ({"errors": [{"message": "Something went wrong..."}]})
        self.list_lag_s = 0.0  # a new pod shows in myself.pods only after this long
        self.stuck_starting: set[str] = set()  # GPU types whose pods never boot
        self.boot_delay_s = 0.2
        self.api_5xx_next = 0  # next N GraphQL requests (any) answer HTTP 502 without doing anything
        self.proxy_down_until = 0.0  # the HTTP proxy drops connections until this time
        self.invisible_for_s = 0.0  # a new pod answers null (get, list, terminate) for this long
        self.host_cuda: dict[str, str] = {}  # GPU type -> the CUDA its hosts' drivers support (default 12.9)
        self.created_names: list[str] = []  # every name a create was asked for, in order
        # the provider's clock: pod times, billing, lags. A test may move it on (`fake.advance(s)`) to
        # make pods old without waiting; the pods' own processes keep real time
        self.offset_s = 0.0

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proxy_template = self.url + "/proxy/{pod_id}-{port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # ---- test helpers

    def clock(self) -> float:
        return time.time() + self.offset_s

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds

    def running(self) -> list[FakePod]:
        with self.lock:
            return [p for p in self.pods.values() if p.status != "TERMINATED"]

    def billed(self) -> float:
        with self.lock:
            return sum(p.dollars() for p in self.pods.values())

    def drop_proxy(self, seconds: float) -> None:
        self.proxy_down_until = time.time() + seconds

    def close(self) -> None:
        with self.lock:
            for p in self.pods.values():
                self._terminate(p)
        self.server.shutdown()
        self.server.server_close()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> FakeRunPod:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- provider behaviour

    def _price(self, gpu: str) -> float:
        return self.prices.get(gpu, self.default_price)

    def _gpu_type(self, gpu: str, args: dict) -> dict:
        low_in = args.get("input") or {}
        n = int(low_in.get("gpuCount", 1))
        return {
            "id": gpu,
            "displayName": gpu,
            "memoryInGb": 80,
            "maxGpuCount": 8,
            "manufacturer": "Nvidia",
            "cudaCores": 0,
            "secureCloud": True,
            "communityCloud": True,
            "securePrice": self._price(gpu),
            "communityPrice": round(self._price(gpu) * 0.8, 3),
            "oneMonthPrice": None,
            "threeMonthPrice": None,
            "oneWeekPrice": None,
            "communitySpotPrice": None,
            "secureSpotPrice": None,
            "lowestPrice": {
                "minimumBidPrice": None,
                "uninterruptablePrice": self._price(gpu),
                "stockStatus": self.stock.get(gpu, "High"),
                "gpuCount": n,
            },
        }

    def _create(self, inp: dict) -> FakePod:
        gpu, cloud = inp.get("gpuTypeId"), inp.get("cloudType")
        for k in ("name", "imageName", "gpuTypeId", "cloudType"):
            if inp.get(k) in (None, ""):
                raise ValueError(f"{k} is required")
        if gpu in self.no_capacity or f"{gpu}|{cloud}" in self.no_capacity:
            raise LookupError(CAPACITY_MSG)
        env = {}
        for item in inp.get("env") or []:
            env[item["key"]] = item["value"]
        allowed = inp.get("allowedCudaVersions")
        host_cuda = self.host_cuda.get(gpu, "12.9")
        if allowed is not None and host_cuda not in allowed:
            raise LookupError(CAPACITY_MSG)  # no host with a driver that new
        self.created_names.append(inp["name"])
        pod_id = secrets.token_hex(7)
        pod = FakePod(
            allowed_cuda=allowed,
            template_id=inp.get("templateId"),
            clock=self.clock,
            created=self.clock(),
            visible_after=self.clock() + self.invisible_for_s,
            id=pod_id,
            name=inp["name"],
            gpu_type=gpu,
            gpu_count=int(inp.get("gpuCount", 1)),
            cloud_type=str(cloud),
            cost_per_hr=round(self._price(gpu) * int(inp.get("gpuCount", 1)), 4),
            image=inp["imageName"],
            docker_args=inp.get("dockerArgs") or "",
            env=env,
            ports=inp.get("ports") or "",
            workdir=self.root / "pods" / pod_id,
            host_port=_free_port(),
            listed_after=self.clock() + self.list_lag_s,
        )
        pod.workdir.mkdir(parents=True)
        with self.lock:
            self.pods[pod_id] = pod
        image_cuda = _image_cuda(pod.image)
        old_driver = image_cuda is not None and _version(host_cuda) < _version(image_cuda)
        if gpu not in self.stuck_starting and not old_driver:
            threading.Timer(self.boot_delay_s, self._boot, args=(pod,)).start()
        return pod

    def _boot(self, pod: FakePod) -> None:
        with self.lock:
            if pod.status != "RUNNING":
                return
            env = {
                "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "HOME": str(pod.workdir),
                "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1",
            }
            env |= pod.env
            env |= {
                "RUNPOD_POD_ID": pod.id,
                "RUNPOD_API_KEY": f"pod-{pod.id}",
                "FAKE_RUNPOD_URL": self.url,
                "PGOLF_AGENT_PORT": str(pod.host_port),
            }
            argv = shlex.split(pod.docker_args) if pod.docker_args else ["sleep", "infinity"]
            log = open(pod.workdir.parent / f"{pod.id}.container.log", "ab")
            pod.proc = subprocess.Popen(
                argv,
                cwd=pod.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            pod.booted = True
            pod.booted_at = self.clock()

    def _terminate(self, pod: FakePod) -> None:
        with self.lock:
            if pod.status == "TERMINATED":
                return
            pod.status = "TERMINATED"
            pod.ended = self.clock()
            proc = pod.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def _authorised(self, header: str) -> str | None:
        """The caller: "user" for the account key, a pod id for a pod-scoped key, None otherwise."""
        if header == f"Bearer {self.api_key}":
            return "user"
        if header.startswith("Bearer pod-"):
            pod_id = header[len("Bearer pod-") :]
            if pod_id in self.pods:
                return pod_id
        return None

    def _graphql(self, query: str, caller: str) -> tuple[int, dict]:
        self.requests.append(query)
        try:
            op, fields = parse_graphql(query)
        except GraphQLSyntaxError as e:
            return 400, {"errors": [{"message": str(e)}]}
        if not fields:
            return 400, {"errors": [{"message": "empty selection"}]}
        f = fields[0]
        name, args = f["name"], f["args"]
        inp = args.get("input") or {}
        if caller != "user" and not (name == "podTerminate" and inp.get("podId") == caller):
            return 200, {"errors": [{"message": "This pod-scoped key may only terminate its own pod."}]}
        with self.lock:
            if name == "gpuTypes":
                gpus = (
                    [inp["id"]]
                    if "id" in inp
                    else ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB"]
                )
                low = next((s["args"] for s in f["fields"] if s["name"] == "lowestPrice"), {})
                return 200, {"data": {"gpuTypes": [self._gpu_type(g, low) for g in gpus]}}
            if name == "podFindAndDeployOnDemand" and op == "mutation":
                try:
                    pod = self._create(inp)
                except LookupError as e:
                    return 200, {"errors": [{"message": str(e)}]}
                except ValueError as e:
                    return 400, {"errors": [{"message": str(e)}]}
                if self.create_5xx_after_create > 0:
                    self.create_5xx_after_create -= 1
                    return 500, {"__raw__": self.create_5xx_body}
                return 200, {
                    "data": {
                        name: {
                            "id": pod.id,
                            "imageName": pod.image,
                            "env": pod.api()["env"],
                            "machineId": "m1",
                            "machine": {"podHostId": f"{pod.id}-host"},
                        }
                    }
                }
            now = self.clock()
            if name == "pod":
                pod = self.pods.get(inp.get("podId", ""))
                alive = pod is not None and pod.status != "TERMINATED" and pod.visible(now)
                return 200, {"data": {"pod": project(pod.api(), f["fields"]) if alive else None}}
            if name == "myself":
                pods = [
                    p.api()
                    for p in self.pods.values()
                    if p.status != "TERMINATED" and now >= p.listed_after and p.visible(now)
                ]
                pods_field = next((s["fields"] for s in f["fields"] if s["name"] == "pods"), [])
                return 200, {"data": {"myself": {"pods": project(pods, pods_field)}}}
            if name == "podTerminate" and op == "mutation":
                pod = self.pods.get(inp.get("podId", ""))
                if pod is None or pod.status == "TERMINATED" or not pod.visible(now):
                    return 200, {"errors": [{"message": "Pod not found."}]}
            else:
                return 400, {"errors": [{"message": f"Cannot query field {name!r} on type {op!r}."}]}
        self._terminate(pod)
        return 200, {"data": {"podTerminate": None}}

    def _proxy(self, h: BaseHTTPRequestHandler, method: str) -> None:
        rest = h.path[len("/proxy/") :]
        target, _, path = rest.partition("/")
        pod_id, _, port = target.rpartition("-")
        body = h.rfile.read(int(h.headers.get("Content-Length", "0") or 0))
        if time.time() < self.proxy_down_until:  # the connection drops: no reply at all
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        pod = self.pods.get(pod_id)
        if pod is None or pod.status == "TERMINATED" or f"{port}/http" not in pod.ports.split(","):
            return _reply(h, 404, b"pod or port not found", "text/plain")
        headers = {
            k: v
            for k, v in h.headers.items()
            if k.lower() in ("authorization", "content-type", "x-sha256", "x-executable")
        }
        try:
            conn = http.client.HTTPConnection("127.0.0.1", pod.host_port, timeout=100)
            conn.request(method, "/" + path, body=body or None, headers=headers)
            r = conn.getresponse()
            data = r.read()
            extra = {k: v for k, v in r.getheaders() if k.lower() == "x-sha256"}
            _reply(h, r.status, data, r.getheader("Content-Type", "application/octet-stream"), extra)
            conn.close()
        except OSError:  # nothing listening yet (booting): RunPod's proxy answers 502
            _reply(h, 502, b"bad gateway", "text/plain")

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def _any(self, method: str) -> None:
                if self.path.startswith("/proxy/"):
                    return fake._proxy(self, method)
                if self.path != "/graphql" or method != "POST":
                    return _reply(self, 404, b"not found", "text/plain")
                body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                caller = fake._authorised(self.headers.get("Authorization", ""))
                if caller is None:
                    return _reply(self, 401, b'{"errors":[{"message":"Unauthorized"}]}')
                if fake.api_5xx_next > 0:
                    fake.api_5xx_next -= 1
                    return _reply(self, 502, b"<html>502 Bad Gateway</html>", "text/html")
                try:
                    query = json.loads(body)["query"]
                except (ValueError, KeyError):
                    return _reply(self, 400, b'{"errors":[{"message":"bad request"}]}')
                code, obj = fake._graphql(query, caller)
                if "__raw__" in obj:
                    if obj["__raw__"] == "json":
                        raw = b'{"errors":[{"message":"Something went wrong. Please try again later or contact support."}]}'
                        return _reply(self, code, raw)
                    return _reply(
                        self, code, b"<html><body>500 Internal Server Error</body></html>", "text/html"
                    )
                _reply(self, code, json.dumps(obj).encode())

            def do_POST(self):
                self._any("POST")

            def do_GET(self):
                self._any("GET")

            def do_PUT(self):
                self._any("PUT")

        return Handler


def _reply(
    h: BaseHTTPRequestHandler,
    code: int,
    body: bytes,
    ctype: str = "application/json",
    headers: dict | None = None,
) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)
