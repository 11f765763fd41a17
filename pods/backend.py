"""Pod backends: the control plane (create, get, list, terminate, price) and the job agent on each pod.

`RunPodBackend` drives RunPod through the `runpod` SDK (1.x, GraphQL). What the SDK does not do for us,
learned from its source and issue tracker, is done here:

- No retries of its own, and no status codes: a 5xx arrives as a JSON decode error or a QueryError
  "Something went wrong". Reads and terminate are retried with tenacity (safe to repeat); create is NOT
  retried blindly, because RunPod has been seen to create (and bill) a pod and still answer 5xx. After
  an ambiguous create failure we look the pod up by its unique name before anyone tries again.
- It pastes values into the GraphQL text unescaped (`value: "{v}"`, `dockerArgs: "{docker_args}"`), so
  a quote or backslash breaks the query or injects into it. Env keys are validated, env values and
  the start command are escaped as GraphQL string bodies here, ids and names are validated.
- "There are no longer any instances available" arrives while the console shows stock: stock is per
  host and the SDK's defaults (public IP, ssh) narrow the hosts. We ask for no public IP and no ssh
  (the job agent is reached through the HTTP proxy) and treat the message as "this rung is empty":
  the caller walks its ladder of GPU and cloud types.
- The API host comes from RUNPOD_API_BASE_URL (read by the SDK at every call), the key from
  RUNPOD_API_KEY, so the fake server in the tests drives this exact code.

- Pods are read with our own query, not the SDK's: its query asks for the top-level `uptimeSeconds`,
  which the real API may leave at 0 (runpodctl PR #315), and not for `runtime { uptimeInSeconds }`,
  the field the API fills while the container runs. A pod's `runtime` is null until its container
  is up (and stays null on a host whose driver cannot run the image).
- `allowed_cuda_versions` (the SDK's parameter, GraphQL `allowedCudaVersions`) keeps a pod off hosts
  whose driver is older than the image's CUDA: there the container never starts, yet the pod bills.

The data plane is `pod_agent.py` (see there), reached at a configurable URL template
(default https://{pod_id}-{port}.proxy.runpod.net) with a per-pod random token.

This package imports nothing from the rest of the project: `agent/finals` drives it, and
`pod_agent.py` is a standalone program shipped to each pod.
"""

from __future__ import annotations

import base64
import builtins
import gzip
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, Field
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per poll is noise, not a digest

DEFAULT_PROXY_TEMPLATE = "https://{pod_id}-{port}.proxy.runpod.net"
AGENT_SOURCE = Path(__file__).with_name("pod_agent.py")
CAPACITY_PHRASES = (
    "no longer any instances available",
    "not enough free gpus",
    "no instances available",
    "no gpus available",
    "insufficient capacity",
)

ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
POD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
POD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,190}$")
GPU_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()/-]{0,95}$")
IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
PORTS = re.compile(r"^\d{1,5}/(http|tcp)(,\d{1,5}/(http|tcp))*$")
CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")
CUDA_VERSION = re.compile(r"^\d{2}\.\d$")
TEMPLATE_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
# the fields we read; `runtime.uptimeInSeconds` is the uptime the API actually fills
POD_FIELDS = (
    "id name desiredStatus costPerHr gpuCount uptimeSeconds lastStatusChange "
    "runtime { uptimeInSeconds } machine { gpuDisplayName }"
)
NOT_FOUND_PHRASES = ("not found", "does not exist", "no pod")


class PodError(RuntimeError):
    pass


class NoCapacity(PodError):
    """The provider says this GPU type / cloud type has nothing free: try the next rung."""


class CreateFailed(PodError):
    """Create failed and no pod of that name was listed afterwards. `maybe_created`: the call may have
    made a pod all the same (a 5xx, no id): it can still appear and bill, so the caller keeps looking."""

    def __init__(self, msg: str, maybe_created: bool = False):
        super().__init__(msg)
        self.maybe_created = maybe_created


class AgentError(PodError):
    """The job agent answered with an error, or could not be reached within the retry policy."""


def gql_string_body(value: str) -> str:
    """`value` escaped so that `"` + result + `"` is one valid GraphQL string literal.

    GraphQL strings accept the JSON escapes. Non-ASCII and control characters other than tab and
    newline are refused rather than guessed at: nothing we send needs them.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    bad = [c for c in value if (ord(c) < 32 and c not in "\t\n") or ord(c) > 126]
    if bad:
        raise ValueError(f"value holds {len(bad)} non-printable or non-ASCII character(s), e.g. {bad[0]!r}")
    return json.dumps(value)[1:-1]


def _check(pattern: re.Pattern, value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"invalid {what}: {str(value)[:80]!r}")
    return value


# --------------------------------------------------------------------------------------- models


class PodSpec(BaseModel):
    name: str
    gpu_type: str
    gpu_count: int = 8
    cloud_type: str = "SECURE"
    image: str
    start_cmd: str  # the container command (dockerArgs)
    env: dict[str, str] = Field(default_factory=dict)
    ports: str = "8000/http"
    container_disk_gb: int = 100
    volume_gb: int = 0
    min_vcpu: int = 1
    min_memory_gb: int = 1
    support_public_ip: bool = False  # proxy only: widens the hosts that can take us
    allowed_cuda_versions: list[str] | None = None  # host drivers able to run the image's CUDA
    template_id: str | None = None  # a RunPod template (e.g. the challenge's); image still sent


class Pod(BaseModel):
    id: str
    name: str = ""
    status: str = "UNKNOWN"  # desiredStatus: RUNNING, EXITED, TERMINATED, ...
    gpu_type: str | None = None
    gpu_count: int | None = None
    cost_per_hr: float | None = None
    uptime_s: float | None = None  # the container's uptime (runtime.uptimeInSeconds); None: not running
    runtime_up: bool = False  # the container is running (the API reports a runtime)

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Pod:
        machine = d.get("machine") or {}
        runtime = d.get("runtime") or None
        uptime = runtime.get("uptimeInSeconds") if isinstance(runtime, dict) else None
        if uptime is None and d.get("uptimeSeconds"):  # an older answer: only a non-zero value means anything
            uptime = d.get("uptimeSeconds")
        return cls(
            id=str(d.get("id")),
            name=d.get("name") or "",
            status=d.get("desiredStatus") or "UNKNOWN",
            gpu_type=machine.get("gpuDisplayName"),
            gpu_count=d.get("gpuCount"),
            cost_per_hr=d.get("costPerHr"),
            uptime_s=None if uptime is None else float(uptime),
            runtime_up=bool(runtime),
        )

    @property
    def alive(self) -> bool:  # anything not terminated may still bill
        return self.status not in ("TERMINATED",)


class Offer(BaseModel):
    gpu_type: str
    cloud_type: str
    gpu_count: int
    price_per_hour: float | None  # for the whole pod (all its GPUs)
    stock: str | None = None  # "High" / "Medium" / "Low" / None when the API did not say
    available: bool = True


class JobStatus(BaseModel):
    job_id: str
    state: str  # running | exited
    returncode: int | None = None
    started: float | None = None
    ended: float | None = None
    wall_s: float = 0.0
    log_size: int = 0
    offset: int = 0
    next_offset: int = 0
    data: str = ""


@dataclass(frozen=True)
class AgentRef:
    """How to reach one pod's job agent. The token is kept out of repr so it cannot reach a log."""

    pod_id: str
    port: int
    token: str = field(repr=False)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    wait_min_s: float = 0.5
    wait_max_s: float = 15.0
    request_timeout_s: float = 60.0  # below RunPod's proxy limit of about 100 s


def new_agent_token() -> str:
    return base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")


def agent_payload() -> str:
    """pod_agent.py, gzip'd and base64'd: travels in the pod env (charset safe for any query)."""
    return base64.b64encode(gzip.compress(AGENT_SOURCE.read_bytes(), mtime=0)).decode()


def agent_start_cmd() -> str:
    """The container command that unpacks and runs the agent. No double quotes, relative paths only."""
    return "bash -c 'echo $PGOLF_AGENT_B64 | base64 -d | gunzip > pod_agent.py && exec python3 pod_agent.py'"


class PodBackend(Protocol):
    def offer(self, gpu_type: str, gpu_count: int, cloud_type: str) -> Offer: ...
    def create(self, spec: PodSpec) -> Pod: ...
    def get(self, pod_id: str) -> Pod | None: ...
    def list(self) -> list[Pod]: ...
    def terminate(self, pod_id: str) -> bool: ...
    def find_by_name(self, name: str) -> Pod | None: ...
    def ping(self, ref: AgentRef) -> bool: ...
    def run_command(
        self, ref: AgentRef, job_id: str, cmd: str, env: dict[str, str] | None = None, cwd: str = "."
    ) -> JobStatus: ...
    def job_status(self, ref: AgentRef, job_id: str, offset: int = 0, limit: int = 65536) -> JobStatus: ...
    def kill_job(self, ref: AgentRef, job_id: str) -> None: ...
    def upload(self, ref: AgentRef, data: bytes, remote_path: str, executable: bool = False) -> str: ...
    def fetch_files(
        self,
        ref: AgentRef,
        remote_dir: str,
        local_dir: Path,
        max_bytes: int = 64 << 20,
        only: set[str] | None = None,
    ) -> builtins.list[Path]: ...


# --------------------------------------------------------------------------------------- agent


def _retryable_http(e: BaseException) -> bool:
    if isinstance(e, httpx.TransportError):
        return True
    if isinstance(e, AgentError) and getattr(e, "status", None) in (502, 503, 504, 520, 521, 522, 523, 524):
        return True
    return False


class AgentClient:
    """HTTP client for pod_agent.py. Every call is safe to repeat (a job start is idempotent by id)."""

    def __init__(self, proxy_template: str = DEFAULT_PROXY_TEMPLATE, retry: RetryPolicy | None = None):
        self.proxy_template = proxy_template
        self.retry = retry or RetryPolicy()

    def url(self, ref: AgentRef, path: str) -> str:
        return self.proxy_template.format(pod_id=ref.pod_id, port=ref.port).rstrip("/") + path

    def _request(
        self, ref: AgentRef, method: str, path: str, *, attempts: int | None = None, **kw
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ref.token}"} | kw.pop("headers", {})

        def once() -> httpx.Response:
            r = httpx.request(
                method, self.url(ref, path), headers=headers, timeout=self.retry.request_timeout_s, **kw
            )
            if r.status_code >= 400:
                try:
                    msg = r.json().get("error", r.text[:200])
                except ValueError:
                    msg = r.text[:200]
                err = AgentError(f"agent {method} {path}: HTTP {r.status_code}: {msg}")
                err.status = r.status_code  # type: ignore[attr-defined]
                raise err
            return r

        retrying = Retrying(
            stop=stop_after_attempt(attempts or self.retry.attempts),
            wait=wait_exponential(min=self.retry.wait_min_s, max=self.retry.wait_max_s),
            retry=retry_if_exception(_retryable_http),
            reraise=True,
        )
        try:
            return retrying(once)
        except httpx.TransportError as e:
            raise AgentError(f"agent {method} {path}: unreachable: {type(e).__name__}: {e}") from e

    def ping(self, ref: AgentRef) -> bool:
        try:
            return bool(self._request(ref, "GET", "/health", attempts=1).json().get("ok"))
        except (AgentError, ValueError):
            return False

    def run_command(
        self, ref: AgentRef, job_id: str, cmd: str, env: dict[str, str] | None = None, cwd: str = "."
    ) -> JobStatus:
        body = {"job_id": job_id, "cmd": cmd, "env": env or {}, "cwd": cwd}
        return JobStatus.model_validate(self._request(ref, "POST", "/jobs", json=body).json())

    def job_status(self, ref: AgentRef, job_id: str, offset: int = 0, limit: int = 65536) -> JobStatus:
        r = self._request(ref, "GET", f"/jobs/{job_id}", params={"offset": offset, "limit": limit})
        return JobStatus.model_validate(r.json())

    def job_tail(self, ref: AgentRef, job_id: str, tail: int = 4096) -> JobStatus:
        return JobStatus.model_validate(
            self._request(ref, "GET", f"/jobs/{job_id}", params={"tail": tail}).json()
        )

    def kill_job(self, ref: AgentRef, job_id: str) -> None:
        self._request(ref, "POST", f"/jobs/{job_id}/kill")

    def upload(self, ref: AgentRef, data: bytes, remote_path: str, executable: bool = False) -> str:
        sha = hashlib.sha256(data).hexdigest()
        headers = {"X-Sha256": sha, "X-Executable": "1" if executable else "0"}
        got = self._request(ref, "PUT", f"/files/{remote_path}", content=data, headers=headers).json()
        if got.get("sha256") != sha:
            raise AgentError(
                f"upload of {remote_path}: the pod stored sha256 {got.get('sha256')}, sent {sha}"
            )
        return sha

    def list_files(self, ref: AgentRef, remote_dir: str) -> list[dict]:
        return self._request(ref, "GET", f"/ls/{remote_dir}").json()["files"]

    def download(self, ref: AgentRef, remote_path: str, dest: Path) -> Path:
        r = self._request(ref, "GET", f"/files/{remote_path}")
        if r.headers.get("X-Sha256") and hashlib.sha256(r.content).hexdigest() != r.headers["X-Sha256"]:
            raise AgentError(f"download of {remote_path}: checksum mismatch")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(r.content)
        return dest

    def fetch_files(
        self,
        ref: AgentRef,
        remote_dir: str,
        local_dir: Path,
        max_bytes: int = 64 << 20,
        only: set[str] | None = None,
    ) -> list[Path]:
        """Copy the files under remote_dir (each at most max_bytes; `only` = names to keep) to local_dir."""
        out = []
        prefix = remote_dir.strip("/") + "/"
        for f in self.list_files(ref, remote_dir):
            rel = f["path"][len(prefix) :] if f["path"].startswith(prefix) else Path(f["path"]).name
            if (only is not None and Path(rel).name not in only) or f["size"] > max_bytes:
                continue
            out.append(self.download(ref, f["path"], local_dir / rel))
        return out


# --------------------------------------------------------------------------------------- RunPod


def _is_capacity_error(e: BaseException) -> bool:
    msg = str(e).lower()
    return any(p in msg for p in CAPACITY_PHRASES)


def _retryable_api(e: BaseException) -> bool:
    """Transient control-plane failures. Auth errors, bad input and capacity answers are final."""
    import requests
    from runpod import error as rp_error

    if isinstance(e, rp_error.AuthenticationError) or _is_capacity_error(e):
        return False
    if isinstance(e, requests.exceptions.JSONDecodeError | requests.exceptions.RequestException):
        return True  # 5xx with a non-JSON body, timeouts, resets
    if isinstance(e, rp_error.QueryError):
        return "something went wrong" in str(e).lower() or "internal" in str(e).lower()
    return isinstance(e, KeyError | TypeError)  # a JSON body without "data" (a 5xx page in JSON)


class RunPodBackend:
    """PodBackend on the `runpod` SDK. api_key defaults to RUNPOD_API_KEY; the host to RUNPOD_API_BASE_URL."""

    def __init__(
        self,
        api_key: str | None = None,
        proxy_template: str | None = None,
        retry: RetryPolicy | None = None,
        lookup_attempts: int = 4,
        lookup_wait_s: float = 3.0,
    ):
        import runpod

        key = api_key or os.environ.get("RUNPOD_API_KEY")
        if not key:
            raise PodError("RUNPOD_API_KEY is not set")
        runpod.api_key = key  # the SDK's mutations read only this module global
        self._rp = runpod
        self.retry = retry or RetryPolicy()
        self.agent = AgentClient(
            proxy_template or os.environ.get("PGOLF_PROXY_TEMPLATE") or DEFAULT_PROXY_TEMPLATE, self.retry
        )
        self.lookup_attempts = lookup_attempts
        self.lookup_wait_s = lookup_wait_s

    def _call(self, fn, *args, **kw):
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential(min=self.retry.wait_min_s, max=self.retry.wait_max_s),
            retry=retry_if_exception(_retryable_api),
            reraise=True,
        )
        return retrying(fn, *args, **kw)

    # -- control plane

    def offer(self, gpu_type: str, gpu_count: int, cloud_type: str) -> Offer:
        """Price for the whole pod and the stock the API reports (a hint only: see module docstring)."""
        from runpod.api.graphql import run_graphql_query
        from runpod.error import QueryError

        _check(GPU_TYPE, gpu_type, "GPU type")
        if cloud_type not in CLOUD_TYPES:
            raise ValueError(f"cloud_type must be one of {CLOUD_TYPES}")
        secure = {"SECURE": ", secureCloud: true", "COMMUNITY": ", secureCloud: false"}.get(cloud_type, "")
        query = (
            f'query GpuTypes {{ gpuTypes(input: {{id: "{gql_string_body(gpu_type)}"}}) {{ id '
            f"displayName securePrice communityPrice secureCloud communityCloud "
            f"lowestPrice(input: {{gpuCount: {int(gpu_count)}{secure}}}) "
            f"{{ uninterruptablePrice stockStatus }} }} }}"
        )
        try:
            types = self._call(run_graphql_query, query)["data"]["gpuTypes"]
            stock_known = True
        except QueryError:  # schema drift: fall back to the SDK's own query (price, no stock)
            types = [self._call(self._rp.get_gpu, gpu_type, gpu_count)]
            stock_known = False
        if not types:
            return Offer(
                gpu_type=gpu_type,
                cloud_type=cloud_type,
                gpu_count=gpu_count,
                price_per_hour=None,
                available=False,
            )
        t = types[0]
        low = t.get("lowestPrice") or {}
        per_gpu = low.get("uninterruptablePrice")
        if per_gpu is None:
            per_gpu = t.get("communityPrice") if cloud_type == "COMMUNITY" else t.get("securePrice")
        stock = low.get("stockStatus") if stock_known else None
        cloud_ok = {"SECURE": t.get("secureCloud", True), "COMMUNITY": t.get("communityCloud", True)}
        available = bool(cloud_ok.get(cloud_type, True)) and not (stock_known and stock is None)
        return Offer(
            gpu_type=gpu_type,
            cloud_type=cloud_type,
            gpu_count=gpu_count,
            price_per_hour=None if per_gpu is None else float(per_gpu) * gpu_count,
            stock=stock,
            available=available,
        )

    def create(self, spec: PodSpec) -> Pod:
        from runpod import error as rp_error

        _check(POD_NAME, spec.name, "pod name")
        _check(GPU_TYPE, spec.gpu_type, "GPU type")
        _check(IMAGE, spec.image, "image")
        _check(PORTS, spec.ports, "ports")
        if spec.cloud_type not in CLOUD_TYPES:
            raise ValueError(f"cloud_type must be one of {CLOUD_TYPES}")
        if len(spec.env) > 50:
            raise ValueError("RunPod allows at most 50 environment variables")
        env = {_check(ENV_KEY, k, "env key"): gql_string_body(v) for k, v in spec.env.items()}
        cuda = [_check(CUDA_VERSION, v, "CUDA version") for v in spec.allowed_cuda_versions or []] or None
        template = _check(TEMPLATE_ID, spec.template_id, "template id") if spec.template_id else None
        try:
            d = self._rp.create_pod(
                name=spec.name,
                image_name=spec.image,
                gpu_type_id=spec.gpu_type,
                cloud_type=spec.cloud_type,
                support_public_ip=spec.support_public_ip,
                start_ssh=False,
                gpu_count=spec.gpu_count,
                volume_in_gb=spec.volume_gb,
                container_disk_in_gb=spec.container_disk_gb,
                min_vcpu_count=spec.min_vcpu,
                min_memory_in_gb=spec.min_memory_gb,
                docker_args=gql_string_body(spec.start_cmd),
                ports=spec.ports,
                env=env,
                allowed_cuda_versions=cuda,
                template_id=template,
            )
        except rp_error.AuthenticationError:
            raise
        except Exception as e:
            if _is_capacity_error(e):
                raise NoCapacity(f"{spec.gpu_type} x{spec.gpu_count} ({spec.cloud_type}): {e}") from e
            if type(e) is ValueError and "no gpu found" in str(e).lower():  # the SDK's pre-flight check
                raise CreateFailed(f"{spec.gpu_type}: unknown GPU type ({e})") from e
            # ambiguous: the pod may exist and bill although the call failed
            pod = self.find_by_name(spec.name)
            if pod is not None:
                return pod
            raise CreateFailed(
                f"create {spec.name} failed ({type(e).__name__}: {str(e)[:200]}) and no pod "
                f"of that name was listed after {self.lookup_attempts} look-ups",
                maybe_created=True,
            ) from e
        if not d or not d.get("id"):
            pod = self.find_by_name(spec.name)
            if pod is None:
                raise CreateFailed(f"create {spec.name} returned no pod id", maybe_created=True)
            return pod
        got = self.get(str(d["id"]))
        return got or Pod(id=str(d["id"]), name=spec.name, status="RUNNING", gpu_count=spec.gpu_count)

    def find_by_name(self, name: str) -> Pod | None:
        """Look a pod up by exact name, a few times: a fresh pod can take a moment to be listed."""
        for i in range(self.lookup_attempts):
            try:
                hits = [p for p in self.list() if p.name == name and p.alive]
            except Exception:  # noqa: BLE001 - the next look-up may work; the caller decides after
                hits = []
            if hits:
                return hits[0]
            if i + 1 < self.lookup_attempts:
                time.sleep(self.lookup_wait_s)
        return None

    def _query(self, query: str) -> dict[str, Any]:
        from runpod.api.graphql import run_graphql_query

        return self._call(run_graphql_query, query)["data"]

    def get(self, pod_id: str) -> Pod | None:
        """The pod, or None when the API answers null (terminated, or not visible yet: callers decide)."""
        _check(POD_ID, pod_id, "pod id")
        d = self._query(f'query Pod {{ pod(input: {{podId: "{pod_id}"}}) {{ {POD_FIELDS} }} }}')["pod"]
        return Pod.from_api(d) if d else None

    def list(self) -> list[Pod]:
        d = self._query(f"query Pods {{ myself {{ pods {{ {POD_FIELDS} }} }} }}")["myself"] or {}
        return [Pod.from_api(p) for p in d.get("pods") or []]

    def terminate(self, pod_id: str) -> bool:
        """Terminate and confirm. True only when the API took the terminate, or shows the pod TERMINATED:
        a "not found" from a pod that is briefly invisible must not pass for a pod that is gone."""
        from runpod.error import QueryError

        _check(POD_ID, pod_id, "pod id")
        try:
            self._call(self._rp.terminate_pod, pod_id)
            taken = True
        except QueryError as e:
            if not any(p in str(e).lower() for p in NOT_FOUND_PHRASES):
                raise
            taken = False  # gone already, or not visible yet: only a later look can tell
        pod = self.get(pod_id)
        if pod is not None:
            return pod.status == "TERMINATED"
        return taken

    # -- data plane (the job agent)

    def ping(self, ref: AgentRef) -> bool:
        return self.agent.ping(ref)

    def run_command(
        self, ref: AgentRef, job_id: str, cmd: str, env: dict[str, str] | None = None, cwd: str = "."
    ) -> JobStatus:
        return self.agent.run_command(ref, job_id, cmd, env, cwd)

    def job_status(self, ref: AgentRef, job_id: str, offset: int = 0, limit: int = 65536) -> JobStatus:
        return self.agent.job_status(ref, job_id, offset, limit)

    def kill_job(self, ref: AgentRef, job_id: str) -> None:
        self.agent.kill_job(ref, job_id)

    def upload(self, ref: AgentRef, data: bytes, remote_path: str, executable: bool = False) -> str:
        return self.agent.upload(ref, data, remote_path, executable)

    def fetch_files(
        self,
        ref: AgentRef,
        remote_dir: str,
        local_dir: Path,
        max_bytes: int = 64 << 20,
        only: set[str] | None = None,
    ) -> builtins.list[Path]:
        return self.agent.fetch_files(ref, remote_dir, local_dir, max_bytes, only)
