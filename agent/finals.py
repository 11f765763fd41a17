"""8xH100 finals on RunPod: the only place this project spends real money, so money comes first.

One final = one script revision x several seeds of `torchrun --nproc_per_node=8 train_gpt.py` on one pod.

Order of events, and what guards each:
1. Approval: `approve=True` (from `golf final --approve`) or `approve_finals: yes` in the human part
   of battle_plan.md. Nothing the agent or a language model passes can grant it.
2. Budget: a per-final cap (--dollars, else the plan's final_dollars) and the session's remaining
   finals money (plan final_dollars minus this session's recorded spend). Before any pod is created,
   price/h x the run's bounded duration (boot wait + data setup + seeds x (train + eval + margin) +
   teardown) must fit what is left, or the final is refused with the figures.
3. Ladder: GPU type x cloud type rungs, in order. A rung without capacity is skipped; a pod that does
   not come up within runtime_wait_s is terminated and the next rung tried. A create that fails
   ambiguously (5xx) is resolved by looking the pod up by its unique name (see tools/pods.py).
4. The pod runs tools/pod_agent.py. We upload the exact script revision (sha256 checked on the pod),
   prepare the FineWeb shards there, run each seed as its own job, keep a bounded digest of the log,
   and fetch results.json, logs and the artifact after each seed.
5. Spend accrues in the ledger (SpendRecord, incremental) while the pod lives; a client-side watchdog
   stops the pod before the cap, and the pod's own dead man's switch (max lifetime = the bounded
   duration) stops it if this process dies. Terminate runs in `finally` and on SIGTERM/SIGINT.
6. Judge with the challenge rule (agent.judge.judge_record), compare with the incumbent's own finals,
   check compliance on the artifact and timings, record a FinalRecord, and write the submission
   folder when the rule is cleared.

`reap(...)` / `reap_pods(ws)` terminate every pod of ours that no live session owns. Pod names are
`pgolf-<session>-<host>-<final>-<attempt>`; a final holds a lock file (JSON pid/session/host/started)
in PGOLF_LOCK_DIR (default ~/.cache/pgolf/locks) for as long as its pod may live.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.lock import pid_alive, read_lock
from memory import git_records, incumbent
from memory.ledger import Ledger
from memory.records import EventRecord, FinalRecord, RunRecord, RunResult, SpendRecord, utcnow
from memory.workspace import Workspace
from tools.pods import (
    AgentError,
    AgentRef,
    CreateFailed,
    NoCapacity,
    Pod,
    PodBackend,
    PodError,
    PodSpec,
    agent_payload,
    agent_start_cmd,
    new_agent_token,
)

ARTIFACT_CAP_BYTES = 16_000_000
SCRIPT_RELPATH = "trainer/train_gpt.py"
PREPARE_RELPATH = "trainer/prepare_data.py"
POD_PREFIX = "pgolf-"
DEFAULT_SEEDS = [1337, 42, 2025, 7, 31337, 1234, 4242, 9001]


class Rung(BaseModel):
    gpu_type: str
    cloud_type: str = "SECURE"


class FinalConfig(BaseModel):
    """Everything a final needs to know about hardware, time and limits. Defaults: the real challenge."""

    ladder: list[Rung] = Field(default_factory=lambda: [
        Rung(gpu_type="NVIDIA H100 80GB HBM3", cloud_type="SECURE"),
        Rung(gpu_type="NVIDIA H100 80GB HBM3", cloud_type="COMMUNITY"),
    ])
    gpu_count: int = 8
    image: str = "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"
    container_disk_gb: int = 120
    agent_port: int = 8000
    max_price_per_hour: float = 40.0  # for the whole pod: a rung above this is never used
    # time bounds (seconds); the bounded duration prices the final before anything is created
    runtime_wait_s: float = 600.0  # create -> agent answering; longer: terminate, next rung
    setup_s: float = 1200.0  # pip + FineWeb shards download on the pod
    train_s: float = 600.0
    eval_s: float = 600.0
    per_seed_margin_s: float = 300.0  # torch.compile, loading, export, writing the artifact
    teardown_s: float = 180.0  # fetching files, terminate confirmation
    deadman_grace_s: float = 120.0  # the pod kills itself this long after the bounded duration
    agent_idle_s: float = 900.0  # ... or after this long without hearing from us
    agent_lost_s: float = 300.0  # we give up on a pod whose agent stays unreachable this long
    poll_s: float = 10.0
    spend_interval_s: float = 60.0  # a SpendRecord at least this often while a pod lives
    # the stock figure is a hint: RunPod has said "none" and "High" while the opposite was true, and a
    # refused create costs nothing, so by default we try a rung whatever its reported stock
    skip_unstocked: bool = False
    ladder_rounds: int = 1
    ladder_pause_s: float = 60.0
    # the job on the pod (run in the uploaded directory `job/`)
    train_shards: int = 80
    setup_cmd: str = ("python3 -m pip install --quiet sentencepiece zstandard numpy 2>&1 | tail -n 3; "
                      "python3 prepare_data.py --variant fineweb --out data --train-shards {train_shards} "
                      "--if-missing")
    launcher: str = "torchrun --standalone --nproc_per_node={gpu_count}"
    data_path: str = "data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"
    tier: str = "h100x8-final"
    hardware: str = "h100x8"
    fetch_max_bytes: int = 64 << 20
    digest_lines: int = 40  # log lines kept per job in the digest
    # compliance and the rule
    train_limit_s: float = 600.0
    eval_limit_s: float = 600.0
    record_nats: float = 0.005
    record_p: float = 0.01

    def seed_bound_s(self) -> float:
        return self.train_s + self.eval_s + self.per_seed_margin_s

    def bounded_duration_s(self, n_seeds: int) -> float:
        return self.runtime_wait_s + self.setup_s + n_seeds * self.seed_bound_s() + self.teardown_s


class Budget(BaseModel):
    cap: float  # dollars this final may spend, all pods together
    per_final: float | None
    session_remaining: float | None
    session_spent: float
    granted_by: str


class FinalRefused(Exception):
    pass


class _Stop(BaseException):
    """Raised from a signal handler: unwinds to the `finally` that terminates the pod."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------------------- names, locks


def session_slug(session: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", session.lower()).strip("-") or "session"
    if len(slug) > 24 or slug != session:  # keep distinct sessions distinct after slugging
        slug = f"{slug[:17].strip('-')}-{hashlib.sha1(session.encode()).hexdigest()[:6]}"
    return slug


def pod_prefix(session: str) -> str:
    return f"{POD_PREFIX}{session_slug(session)}-"


def host_tag(host: str | None = None) -> str:
    return hashlib.sha1((host or socket.gethostname()).encode()).hexdigest()[:4]


def parse_pod_name(name: str) -> dict[str, str] | None:
    """pgolf-<session slug>-<host>-<final>-<attempt> -> parts, or None for a pod that is not ours."""
    if not name.startswith(POD_PREFIX):
        return None
    parts = name.rsplit("-", 3)
    if len(parts) != 4 or not re.fullmatch(r"[0-9a-f]{4}", parts[1]) or not parts[3].isdigit():
        return None
    return {"prefix": parts[0] + "-", "host": parts[1], "final": parts[2], "attempt": parts[3]}


def lock_dir() -> Path:
    return Path(os.environ.get("PGOLF_LOCK_DIR") or Path.home() / ".cache" / "pgolf" / "locks")


@contextmanager
def final_lock(session: str, final_id: str):
    """A lock file saying "this session's pods are in use" for as long as the final runs."""
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{final_id}.lock"
    info = {"pid": os.getpid(), "session": session, "host": socket.gethostname(), "started": utcnow()}
    path.write_text(json.dumps(info))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _owner_live(info: dict | None) -> bool:
    if not info or "session" not in info:
        return False
    if info.get("host") != socket.gethostname():
        return True  # another machine's process: we cannot tell, so we assume it lives
    try:
        return pid_alive(int(info.get("pid", -1)))
    except (TypeError, ValueError):
        return False


def live_sessions(ws: Workspace | None = None) -> set[str]:
    locks = sorted(lock_dir().glob("*.lock")) if lock_dir().is_dir() else []
    if ws is not None:
        locks.append(ws.lock)
    infos = [read_lock(p) for p in locks]
    return {str(info["session"]) for info in infos if info is not None and _owner_live(info)}


# --------------------------------------------------------------------------------------- money


class SpendMeter:
    """Books pod time as money, incrementally, while it accrues. Conservative: the clock starts before
    the create call and stops after the terminate is confirmed, at the higher of quoted and billed price."""

    def __init__(self, ledger: Ledger, session: str, final_id: str, interval_s: float, spent_before: float = 0.0):
        self.ledger, self.session, self.final_id = ledger, session, final_id
        self.interval_s = interval_s
        self.total = spent_before  # this final's booked dollars (previous pods included)
        self.pod_id: str | None = None
        self.gpu_type: str | None = None
        self.price = 0.0
        self._since: float | None = None
        self._lock = threading.Lock()

    def start(self, price_per_hour: float, gpu_type: str) -> None:
        with self._lock:
            self.price, self.gpu_type, self.pod_id = price_per_hour, gpu_type, None
            self._since = time.monotonic()

    def attach(self, pod: Pod) -> None:
        with self._lock:
            self.pod_id = pod.id
            if pod.cost_per_hr:
                self.price = max(self.price, float(pod.cost_per_hr))

    def pending(self) -> float:
        return 0.0 if self._since is None else (time.monotonic() - self._since) * self.price / 3600.0

    def projected(self, extra_s: float = 0.0) -> float:
        return self.total + self.pending() + extra_s * self.price / 3600.0

    def book(self, note: str = "accrual", force: bool = False, stop: bool = False) -> None:
        with self._lock:
            if self._since is None:
                return
            now = time.monotonic()
            secs = now - self._since
            if not force and secs < self.interval_s:
                return
            dollars = secs * self.price / 3600.0
            self.ledger.append(SpendRecord(session=self.session, final_id=self.final_id, pod_id=self.pod_id,
                                           gpu_type=self.gpu_type, dollars=round(dollars, 6),
                                           seconds=round(secs, 3), price_per_hour=self.price, note=note))
            self.total += dollars
            self._since = None if stop else now


def session_spend(ledger: Ledger, session: str) -> float:
    return sum(r.dollars for r in ledger.records(SpendRecord) if r.session == session)


def _plan_budget(ws: Workspace):
    from memory.battle_plan import BattlePlanError, load_plan

    if not ws.battle_plan.exists():
        return None
    try:
        return load_plan(ws.battle_plan).budget
    except BattlePlanError:
        return None


def resolve_budget(ws: Workspace, ledger: Ledger, session: str, approve: bool, budget_dollars: float | None,
                   session_budget_dollars: float | None) -> Budget:
    plan = _plan_budget(ws)
    granted = "--approve" if approve else ("battle_plan approve_finals" if plan and plan.approve_finals else "")
    if not granted:
        raise FinalRefused("not approved: finals spend money; run `golf final --approve` or set "
                           "`approve_finals: yes` in battle_plan.md's Budget section")
    spent = session_spend(ledger, session)
    session_caps = [session_budget_dollars] if session_budget_dollars is not None else []
    if plan is not None and "final_dollars" in plan.model_fields_set:
        session_caps.append(plan.final_dollars)
    session_remaining = min(session_caps) - spent if session_caps else None
    per_final = budget_dollars
    caps = [c for c in (per_final, session_remaining) if c is not None]
    if not caps:
        raise FinalRefused("no budget: give --dollars or set final_dollars in battle_plan.md")
    return Budget(cap=max(0.0, min(caps)), per_final=per_final, session_remaining=session_remaining,
                  session_spent=spent, granted_by=granted)


# --------------------------------------------------------------------------------------- inputs


def _git_show(root: Path, rev: str, relpath: str) -> str | None:
    return git_records.file_at(root, rev, relpath)


def resolve_script(ws: Workspace, session: str, script_rev: str | None) -> tuple[str, str, str | None, str]:
    """(train_gpt.py text, prepare_data.py text, git revision or None, where) for the promoted revision."""
    revs = [script_rev] if script_rev else [f"golf/{session}", "HEAD"]
    for rev in revs:
        text = _git_show(ws.root, rev, SCRIPT_RELPATH)
        if text is not None:
            prep = _git_show(ws.root, rev, PREPARE_RELPATH)
            if prep is None and (ws.root / PREPARE_RELPATH).exists():
                prep = (ws.root / PREPARE_RELPATH).read_text()
            sha = git_records.rev_parse(ws.root, rev) or ""
            return text, prep or "", sha or rev, f"git {rev} ({sha[:12]})"
    if script_rev:
        raise FinalRefused(f"no {SCRIPT_RELPATH} at git revision {script_rev!r}")
    prep = (ws.root / PREPARE_RELPATH).read_text() if (ws.root / PREPARE_RELPATH).exists() else ""
    return ws.script.read_text(), prep, None, "working tree"


def _tier_env(ws: Workspace, tier: str) -> dict[str, str]:
    from memory.tiers import TiersError, load_tiers

    try:
        t = load_tiers(ws.tiers_file).get(tier)
    except TiersError:
        return {}
    return dict(t.env) if t else {}


def current_frontier(ws: Workspace) -> float | None:
    from memory import frontier

    best = frontier.best_legal(frontier.current(frontier.frontier_dir(ws.root)).snapshot.entries)
    return best.val_bpb if best else None


# --------------------------------------------------------------------------------------- the run


class SeedOutcome(BaseModel):
    seed: int
    result: RunResult
    job_wall_s: float | None = None
    files: list[str] = Field(default_factory=list)
    digest: list[str] = Field(default_factory=list)


_DIGEST_KEEP = re.compile(r"(val_bpb|val_loss|error|Error|Traceback|step[: ]\s*\d+|artifact|bytes|"
                          r"stopping|warn|OOM|Killed|results)", re.I)


class _Digest:
    """A bounded view of a job's log: the last N lines and the last N notable ones, never the whole log."""

    def __init__(self, n: int, echo: Callable[[str], None], label: str, echo_cap: int = 200):
        self.n = n
        self.tail: collections.deque[str] = collections.deque(maxlen=n)
        self.notable: collections.deque[str] = collections.deque(maxlen=n)
        self.partial = ""
        self.echo, self.label, self.echo_left = echo, label, echo_cap

    def feed(self, text: str) -> None:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()[-4000:]
        for line in lines:
            line = line[:400]
            self.tail.append(line)
            if _DIGEST_KEEP.search(line):
                self.notable.append(line)
                if self.echo_left > 0:
                    self.echo_left -= 1
                    self.echo(f"[{self.label}] {line}")

    def lines(self) -> list[str]:
        seen, out = set(), []
        for line in [*self.notable, *self.tail]:
            if line not in seen:
                seen.add(line)
                out.append(line)
        return out[-2 * self.n:]


class _Run:
    """One final's lifecycle on one backend. All pod-touching state lives here so `finally` sees it."""

    def __init__(self, *, ws: Workspace, ledger: Ledger, backend: PodBackend, cfg: FinalConfig, session: str,
                 final_id: str, seeds: list[int], budget: Budget, script: str, prepare: str, env: dict[str, str],
                 log: Callable[[str], None]):
        self.ws, self.ledger, self.backend, self.cfg = ws, ledger, backend, cfg
        self.session, self.final_id, self.seeds, self.budget = session, final_id, seeds, budget
        self.script, self.prepare, self.env, self.log = script, prepare, env, log
        self.meter = SpendMeter(ledger, session, final_id, cfg.spend_interval_s)
        self.pod: Pod | None = None
        self.ref: AgentRef | None = None
        self.rung: Rung | None = None
        self.attempt = 0
        self.out_dir = ws.state_dir / "finals" / final_id
        self.events: list[str] = []
        self.name_stem = f"{pod_prefix(session)}{host_tag()}-{final_id.rsplit('-', 1)[-1]}"

    @property
    def agent(self) -> AgentRef:
        assert self.ref is not None, "no pod agent yet"
        return self.ref

    @property
    def pod_id(self) -> str:
        assert self.pod is not None, "no pod"
        return self.pod.id

    def event(self, event: str, **detail: Any) -> None:
        self.events.append(event)
        self.ledger.append(EventRecord(session=self.session, event=event,
                                       detail={"final_id": self.final_id, **detail}))

    # -- money guard

    def bound_s(self) -> float:
        return self.cfg.bounded_duration_s(len(self.seeds))

    def check_money(self, what: str, extra_s: float) -> None:
        """Refuse to go on if finishing `what` (extra_s more of pod time) could cross the cap."""
        projected = self.meter.projected(extra_s)
        if projected > self.budget.cap:
            raise FinalRefused(f"budget: {what} would bring this final to ${projected:.2f} "
                               f"(at ${self.meter.price:.2f}/h), over its cap ${self.budget.cap:.2f}")

    # -- acquiring a pod

    def acquire(self) -> None:
        misses = []
        for rnd in range(self.cfg.ladder_rounds):
            if rnd:
                time.sleep(self.cfg.ladder_pause_s)
            for rung in self.cfg.ladder:
                try:
                    offer = self.backend.offer(rung.gpu_type, self.cfg.gpu_count, rung.cloud_type)
                except Exception as e:  # noqa: BLE001 - a rung we cannot price is a rung we do not use
                    misses.append(f"{rung.gpu_type}/{rung.cloud_type}: price check failed: {str(e)[:160]}")
                    continue
                price = offer.price_per_hour
                if price is None or (not offer.available and self.cfg.skip_unstocked):
                    misses.append(f"{rung.gpu_type}/{rung.cloud_type}: no price or no stock reported")
                    continue
                if price > self.cfg.max_price_per_hour:
                    misses.append(f"{rung.gpu_type}/{rung.cloud_type}: ${price:.2f}/h over the "
                                  f"${self.cfg.max_price_per_hour:.2f}/h ceiling")
                    continue
                worst_s = self.bound_s() + self.cfg.deadman_grace_s  # the most a pod can live, even if we die
                need = self.meter.total + price * worst_s / 3600.0
                if need > self.budget.cap:
                    misses.append(f"{rung.gpu_type}/{rung.cloud_type}: ${price:.2f}/h x "
                                  f"{worst_s / 3600:.2f} h bounded = ${price * worst_s / 3600:.2f} "
                                  f"(+ ${self.meter.total:.2f} spent) > cap ${self.budget.cap:.2f}")
                    continue
                if self._try_rung(rung, price, misses):
                    return
        raise FinalRefused("no pod: " + "; ".join(misses))

    def _try_rung(self, rung: Rung, price: float, misses: list[str]) -> bool:
        self.attempt += 1
        name = f"{self.name_stem}-{self.attempt}"
        token = new_agent_token()
        # the pod's own deadline, from the moment we create it: the budget check above priced exactly this
        deadline = time.time() + self.bound_s() + self.cfg.deadman_grace_s
        spec = PodSpec(name=name, gpu_type=rung.gpu_type, gpu_count=self.cfg.gpu_count, cloud_type=rung.cloud_type,
                       image=self.cfg.image, start_cmd=agent_start_cmd(), ports=f"{self.cfg.agent_port}/http",
                       container_disk_gb=self.cfg.container_disk_gb,
                       env={"PGOLF_AGENT_TOKEN": token, "PGOLF_AGENT_B64": agent_payload(),
                            "PGOLF_AGENT_PORT": str(self.cfg.agent_port),
                            "PGOLF_AGENT_DEADLINE_UNIX": f"{deadline:.0f}",
                            "PGOLF_AGENT_IDLE_S": f"{self.cfg.agent_idle_s:.0f}"})
        self.log(f"final {self.final_id}: creating {name} ({rung.gpu_type} x{self.cfg.gpu_count}, "
                 f"{rung.cloud_type}, ${price:.2f}/h)")
        self.meter.start(price, rung.gpu_type)
        try:
            pod = self.backend.create(spec)
        except NoCapacity as e:
            self.meter._since = None  # nothing was created: nothing bills
            misses.append(f"{rung.gpu_type}/{rung.cloud_type}: no capacity")
            self.event("final_no_capacity", gpu_type=rung.gpu_type, cloud_type=rung.cloud_type, error=str(e)[:300])
            return False
        except CreateFailed as e:
            self.meter._since = None
            misses.append(f"{rung.gpu_type}/{rung.cloud_type}: create failed")
            self.event("final_create_failed", gpu_type=rung.gpu_type, cloud_type=rung.cloud_type,
                       error=str(e)[:300])
            return False
        except BaseException:
            # unknown outcome (auth, a signal mid-call, a bug): a pod of this name might exist; find it
            # so that `finally` terminates it, then let the error through
            self._adopt_by_name(name, rung, token)
            raise
        self._adopt(pod, rung, token)
        self.event("final_pod_created", pod_id=pod.id, name=name, gpu_type=rung.gpu_type,
                   cloud_type=rung.cloud_type, price_per_hour=self.meter.price)
        if self._wait_ready():
            return True
        misses.append(f"{rung.gpu_type}/{rung.cloud_type}: pod {pod.id} not ready in {self.cfg.runtime_wait_s:.0f}s")
        self.event("final_pod_stuck", pod_id=pod.id, waited_s=self.cfg.runtime_wait_s)
        self.release("stuck starting")
        return False

    def _adopt(self, pod: Pod, rung: Rung, token: str) -> None:
        self.pod, self.rung = pod, rung
        self.ref = AgentRef(pod.id, self.cfg.agent_port, token)
        self.meter.attach(pod)

    def _adopt_by_name(self, name: str, rung: Rung, token: str) -> None:
        try:
            pod = self.backend.find_by_name(name)
        except Exception:  # noqa: BLE001 - best effort; the reaper is the backstop
            pod = None
        if pod is not None:
            self._adopt(pod, rung, token)
        else:
            self.meter._since = None

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.cfg.runtime_wait_s
        while time.monotonic() < deadline:
            self.meter.book()
            pod = self.backend.get(self.pod_id)
            if pod is None or not pod.alive:
                self.event("final_pod_vanished", pod_id=self.pod_id, during="start")
                self.pod = None
                self.meter.book("pod vanished while starting", force=True, stop=True)
                return False
            self.meter.attach(pod)
            if pod.runtime_up and self.backend.ping(self.agent):
                self.log(f"final {self.final_id}: pod {pod.id} ready")
                return True
            time.sleep(min(self.cfg.poll_s, max(0.05, deadline - time.monotonic())))
        return False

    def sweep(self) -> None:
        """Terminate any pod of this final still alive: one a failed create made after we stopped looking.
        Never raises; what it cannot do is left to the pod's dead man's switch and the reaper."""
        try:
            listed_at = time.monotonic()
            strays = [p for p in self.backend.list() if p.name.startswith(self.name_stem + "-") and p.alive]
        except Exception as e:  # noqa: BLE001
            self.log(f"final {self.final_id}: could not list pods for the sweep: {e}")
            return
        for pod in strays:
            try:
                ok = self.backend.terminate(pod.id)
            except Exception:  # noqa: BLE001
                ok = False
            self.event("final_stray_pod_terminated" if ok else "final_stray_pod_left", pod_id=pod.id, name=pod.name)
            if ok:
                extra = time.monotonic() - listed_at + 1.0  # uptime is whole seconds as of the listing
                self.meter.total += _book_reaped(self.ledger, pod, self.session, extra_s=extra, final_id=self.final_id)

    def release(self, why: str) -> None:
        """Terminate the current pod (confirmed, retried) and book its last spend. Never raises."""
        pod, self.pod = self.pod, None
        if pod is None:  # gone already (vanished or never made): still book the time it ran
            self.meter.book(f"ended: {why}", force=True, stop=True)
            return
        ok = False
        for i in range(5):
            try:
                ok = self.backend.terminate(pod.id)
            except Exception as e:  # noqa: BLE001 - keep trying; the reaper is the backstop
                self.log(f"final {self.final_id}: terminate {pod.id} failed: {e}")
            if ok:
                break
            time.sleep(min(2.0 ** i, 10.0))
        self.meter.book(f"terminated: {why}" if ok else f"terminate unconfirmed: {why}", force=True, stop=True)
        self.event("final_pod_terminated" if ok else "final_pod_terminate_unconfirmed", pod_id=pod.id, why=why)
        self.log(f"final {self.final_id}: pod {pod.id} {'terminated' if ok else 'NOT confirmed terminated'} ({why})")

    # -- running jobs

    def upload(self) -> None:
        self.backend.upload(self.agent, self.script.encode(), "job/train_gpt.py")
        if self.prepare:
            self.backend.upload(self.agent, self.prepare.encode(), "job/prepare_data.py")
        self.event("final_uploaded", pod_id=self.pod_id, script_sha=sha256(self.script),
                   bytes_code=len(self.script.encode()))

    def run_job(self, job_id: str, cmd: str, env: dict[str, str], bound_s: float) -> tuple[int | None, float, list[str]]:
        """Start (idempotently) and follow one job within bound_s. Returns (returncode, wall_s, digest)."""
        self.check_money(f"job {job_id}", bound_s + self.cfg.teardown_s)
        digest = _Digest(self.cfg.digest_lines, self.log, job_id)
        self.backend.run_command(self.agent, job_id, cmd, env, cwd="job")
        started = time.monotonic()
        offset, lost_since, status = 0, None, None
        while True:
            self.meter.book()
            if time.monotonic() - started > bound_s:
                self.log(f"final {self.final_id}: {job_id} over its {bound_s:.0f}s bound: killing it")
                self._kill(job_id)
                self.event("final_job_timeout", job_id=job_id, bound_s=bound_s)
                return None, time.monotonic() - started, digest.lines()
            self.check_money(f"continuing {job_id}", self.cfg.poll_s + self.cfg.teardown_s)
            try:
                status = self.backend.job_status(self.agent, job_id, offset=offset)
                if lost_since is not None:
                    self.event("final_agent_reconnected", pod_id=self.pod_id, lost_s=round(time.monotonic() - lost_since, 1))
                    lost_since = None
            except AgentError as e:
                lost_since = lost_since or time.monotonic()
                lost = time.monotonic() - lost_since
                self.log(f"final {self.final_id}: agent unreachable for {lost:.0f}s: {str(e)[:120]}")
                pod = self.backend.get(self.pod_id)
                if pod is None or not pod.alive:
                    self.event("final_pod_vanished", pod_id=self.pod_id, during=job_id)
                    self.pod = None
                    raise PodError(f"pod vanished during {job_id}") from e
                if lost > self.cfg.agent_lost_s:
                    self.event("final_agent_lost", pod_id=self.pod_id, job_id=job_id, lost_s=round(lost, 1))
                    raise PodError(f"agent unreachable for {lost:.0f}s during {job_id}") from e
                time.sleep(self.cfg.poll_s)
                continue
            if status.data:
                digest.feed(status.data)
            offset = status.next_offset
            if status.state == "exited" and status.next_offset >= status.log_size:
                return status.returncode, status.wall_s, digest.lines()
            if status.next_offset < status.log_size:
                continue  # more log to read before sleeping
            time.sleep(self.cfg.poll_s)

    def _kill(self, job_id: str) -> None:
        try:
            self.backend.kill_job(self.agent, job_id)
        except AgentError:
            pass

    def setup(self) -> None:
        cmd = self.cfg.setup_cmd.format(train_shards=self.cfg.train_shards, gpu_count=self.cfg.gpu_count)
        rc, wall, digest = self.run_job("setup", cmd, {}, self.cfg.setup_s)
        self.event("final_setup_done", pod_id=self.pod_id, returncode=rc, wall_s=round(wall, 1))
        if rc != 0:
            raise PodError(f"setup on the pod failed (rc={rc}): " + " | ".join(digest[-5:]))

    def run_seed(self, seed: int) -> SeedOutcome:
        run_dir = f"runs/seed_{seed}"
        env = {**self.env, "SEED": str(seed), "RUN_ID": f"{self.final_id}-seed{seed}", "RUN_DIR": run_dir,
               "DATA_PATH": self.cfg.data_path, "TOKENIZER_PATH": self.cfg.tokenizer_path}
        launcher = self.cfg.launcher.format(gpu_count=self.cfg.gpu_count)
        cmd = f"mkdir -p {run_dir} && exec {launcher} train_gpt.py"
        self.log(f"final {self.final_id}: seed {seed} starting")
        rc, wall, digest = self.run_job(f"seed_{seed}", cmd, env, self.cfg.seed_bound_s())
        local = self.out_dir / f"seed_{seed}"
        files: list[Path] = []
        try:
            files = self.backend.fetch_files(self.agent, f"job/{run_dir}", local, max_bytes=self.cfg.fetch_max_bytes)
        except AgentError as e:
            self.log(f"final {self.final_id}: fetching seed {seed} files failed: {e}")
        result = _read_result(local / "results.json", rc, digest)
        out = SeedOutcome(seed=seed, result=result, job_wall_s=round(wall, 1),
                          files=[str(p.relative_to(self.ws.root)) for p in files], digest=digest)
        (local / "digest.txt").parent.mkdir(parents=True, exist_ok=True)
        (local / "digest.txt").write_text("\n".join(digest) + "\n")
        self.event("final_seed_done", seed=seed, status=result.status, val_bpb=result.val_bpb, returncode=rc,
                   job_wall_s=round(wall, 1))
        return out


def _read_result(path: Path, rc: int | None, digest: list[str]) -> RunResult:
    tail = "\n".join(digest[-8:])
    if path.exists():
        try:
            res = RunResult.model_validate_json(path.read_text())
            if rc not in (0, None) and res.status == "ok":
                res.status, res.error = "crashed", f"exit code {rc} after writing results\n{tail}"
            return res
        except ValueError as e:
            return RunResult(status="error", error=f"unreadable results.json: {e}\n{tail}")
    if rc is None:
        return RunResult(status="timeout", error=f"job over its time bound\n{tail}")
    return RunResult(status="crashed", error=f"exit code {rc}, no results.json\n{tail}")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------- judging


def compliance(outcomes: list[SeedOutcome], script: str, cfg: FinalConfig) -> dict[str, Any]:
    """The challenge's limits, checked on what the pod measured and wrote, per seed and overall."""
    code_bytes = len(script.encode())
    per_seed = {}
    for o in outcomes:
        r = o.result
        checks = {
            "status_ok": r.status == "ok",
            "bytes_total_ok": r.bytes_total is not None and r.bytes_total <= ARTIFACT_CAP_BYTES,
            "train_time_ok": r.train_time_s is not None and r.train_time_s <= cfg.train_limit_s,
            "eval_time_ok": r.eval_time_s is not None and r.eval_time_s <= cfg.eval_limit_s,
            "code_bytes_match": r.bytes_code in (None, code_bytes),
            "script_sha_match": r.script_sha256 in (None, sha256(script)),
        }
        per_seed[str(o.seed)] = {**checks, "bytes_total": r.bytes_total, "train_time_s": r.train_time_s,
                                 "eval_time_s": r.eval_time_s, "job_wall_s": o.job_wall_s,
                                 "passed": all(checks.values())}
    return {"cap_bytes": ARTIFACT_CAP_BYTES, "train_limit_s": cfg.train_limit_s, "eval_limit_s": cfg.eval_limit_s,
            "bytes_code": code_bytes, "seeds": per_seed,
            "passed": bool(per_seed) and all(s["passed"] for s in per_seed.values())}


def _bytes_per_token(outcomes: list[SeedOutcome]) -> float | None:
    ratios = [o.result.val_bytes / o.result.val_tokens for o in outcomes
              if o.result.val_bytes and o.result.val_tokens]
    return statistics.fmean(ratios) if ratios else None


def incumbent_finals(ledger: Ledger, exclude: str | None = None) -> FinalRecord | None:
    """The incumbent's own final: the latest record-claiming final, else the latest ok one."""
    finals = [f for f in ledger.records(FinalRecord) if f.final_id != exclude and f.status == "ok"
              and len(f.val_bpbs) >= 2]
    claims = [f for f in finals if f.record_claim]
    picked = claims or finals
    return picked[-1] if picked else None


def judge_final(vals: list[float], frontier: list[float] | float | None, *, frontier_std: float | None,
                bytes_per_token: float | None, incumbent: FinalRecord | None, cfg: FinalConfig) -> dict[str, Any]:
    from agent.judge import judge_record

    out: dict[str, Any] = {"frontier": frontier}
    if len(vals) >= 2 and frontier is not None:
        v = judge_record(vals, frontier, nats=cfg.record_nats, bytes_per_token=bytes_per_token,
                         p_threshold=cfg.record_p, frontier_std=frontier_std)
        out["record"] = {"outcome": v.outcome, "delta": v.delta, "ci_low": v.ci_low, "ci_high": v.ci_high,
                         "p_value": v.p_value, "margin": v.margin, "reason": v.reason}
    if len(vals) >= 2 and incumbent is not None:
        v = judge_record(vals, incumbent.val_bpbs, nats=0.0, bytes_per_token=bytes_per_token,
                         p_threshold=cfg.record_p)
        out["vs_incumbent"] = {"final_id": incumbent.final_id, "outcome": v.outcome, "delta": v.delta,
                               "ci_low": v.ci_low, "ci_high": v.ci_high, "p_value": v.p_value, "reason": v.reason}
    return out


# --------------------------------------------------------------------------------------- submission


def write_submission(ws: Workspace, rec: FinalRecord, outcomes: list[SeedOutcome], script: str, verdict: dict,
                     *, name: str, author: str, github_id: str, blurb: str, hardware: str,
                     what_changed: str) -> Path:
    """records/track_10min_16mb/<date>_<name>/ in the challenge's format."""
    day = dt.date.today().isoformat()
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "pgolf"
    folder = ws.root / "records" / "track_10min_16mb" / f"{day}_{safe}"
    folder.mkdir(parents=True, exist_ok=True)
    ok = [o for o in outcomes if o.result.status == "ok" and o.result.val_bpb is not None]
    bpbs = [float(o.result.val_bpb or 0.0) for o in ok]
    losses = [float(o.result.val_loss) for o in ok if o.result.val_loss is not None]
    record = verdict.get("record", {})
    sub = {
        "author": author, "github_id": github_id, "name": name, "blurb": blurb, "date": day,
        "val_loss": round(statistics.fmean(losses), 8) if losses else None,
        "val_bpb": round(statistics.fmean(bpbs), 8),
        "bytes_total": max(o.result.bytes_total or 0 for o in ok),
        "bytes_code": len(script.encode()),
        "seeds": [o.seed for o in ok],
        "seed_results": {str(o.seed): {"val_bpb": o.result.val_bpb, "val_loss": o.result.val_loss,
                                       "bytes_total": o.result.bytes_total, "bytes_model": o.result.bytes_model,
                                       "steps": o.result.steps, "train_time_s": o.result.train_time_s,
                                       "eval_time_s": o.result.eval_time_s} for o in ok},
        "val_bpb_std": round(statistics.stdev(bpbs), 8) if len(bpbs) >= 2 else None,
        "hardware": hardware,
        "p_value": record.get("p_value"),
    }
    (folder / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
    (folder / "train_gpt.py").write_text(script)
    for o in ok:
        log = ws.state_dir / "finals" / rec.final_id / f"seed_{o.seed}" / "train.log"
        text = log.read_text(errors="replace") if log.exists() else "\n".join(o.digest) + "\n"
        (folder / f"train_seed{o.seed}.log").write_text(text)
    rows = "\n".join(f"| {o.seed} | {o.result.val_bpb:.5f} | {o.result.val_loss if o.result.val_loss is not None else '-'} "
                     f"| {o.result.bytes_total:,} | {o.result.train_time_s:.1f} | {o.result.eval_time_s:.1f} |"
                     for o in ok)
    readme = f"""# {name}

{blurb}

## What changed

{what_changed or '(see train_gpt.py)'}

## Results (8xH100 SXM, {len(ok)} seeds)

| seed | val_bpb | val_loss | bytes_total | train s | eval s |
|---|---|---|---|---|---|
{rows}

Mean val_bpb {sub['val_bpb']:.5f}, std {sub['val_bpb_std'] if sub['val_bpb_std'] is not None else '-'}.

## Statistics

Against the frontier ({verdict.get('frontier')}): {record.get('reason', 'not judged')}.
Delta {record.get('delta', float('nan')):+.5f} bpb, interval [{record.get('ci_low', float('nan')):+.5f},
{record.get('ci_high', float('nan')):+.5f}], one-sided Welch p = {record.get('p_value', float('nan')):.3g}
(rule: at least 0.005 nats better at p < 0.01).

Artifact: {sub['bytes_code']:,} bytes of code + model = {sub['bytes_total']:,} bytes (cap 16,000,000).
Script sha256 {rec.script_sha}. Final {rec.final_id}.
"""
    (folder / "README.md").write_text(readme)
    return folder


# --------------------------------------------------------------------------------------- entry points


def _seed_list(seeds: int | list[int]) -> list[int]:
    if isinstance(seeds, int):
        if not 1 <= seeds <= len(DEFAULT_SEEDS):
            raise ValueError(f"seeds must be 1..{len(DEFAULT_SEEDS)}")
        return DEFAULT_SEEDS[:seeds]
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError("seeds must be distinct and at least one")
    return out


@contextmanager
def _signals_to_stop(log: Callable[[str], None]):
    """SIGTERM/SIGINT unwind to `finally` (which terminates the pod); during cleanup they are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum, frame):
        raise _Stop(signum)

    def patient(signum, frame):
        log("finals: terminating the pod first; signal noted")

    for s in old:
        signal.signal(s, stop)
    try:
        yield lambda: [signal.signal(s, patient) for s in old]
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_final(ws_root: str | Path, session: str | None = None, *, seeds: int | list[int] = 3, approve: bool = False,
              budget_dollars: float | None = None, backend: PodBackend | None = None,
              session_budget_dollars: float | None = None, config: FinalConfig | None = None,
              script_rev: str | None = None, env: dict[str, str] | None = None,
              frontier: list[float] | float | None = None, frontier_std: float | None = None,
              name: str | None = None, author: str | None = None, github_id: str | None = None,
              blurb: str | None = None, log: Callable[[str], None] | None = None) -> FinalRecord:
    """Run one final (see the module docstring). Always returns a FinalRecord that is also in the ledger;
    re-raises KeyboardInterrupt/SystemExit after cleanup when stopped by a signal."""
    ws = Workspace.at(ws_root)
    ledger = Ledger(ws.ledger)
    cfg = config or FinalConfig()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    session = session or incumbent.last_session(ledger.records()) or f"final-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    final_id = f"final-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    seed_list = _seed_list(seeds)
    base: dict[str, Any] = dict(session=session, final_id=final_id, seeds=seed_list)

    def refused(why: str, script_sha: str = "") -> FinalRecord:
        log(f"final refused: {why}")
        rec = FinalRecord(**base, script_sha=script_sha, status="refused", note=why)
        ledger.append(rec)
        return rec

    try:
        budget = resolve_budget(ws, ledger, session, approve, budget_dollars, session_budget_dollars)
        script, prepare, rev, where = resolve_script(ws, session, script_rev)
    except FinalRefused as e:
        return refused(str(e))
    inc = incumbent.of_session(ws.root, ledger.records(), session, rev)
    inc_env, experiment, candidate = inc.env, inc.experiment, inc.candidate
    run_env = {**_tier_env(ws, cfg.tier), **inc_env, **(env or {})}
    script_sha = sha256(script)
    if frontier is None:
        frontier = current_frontier(ws)
    bound = cfg.bounded_duration_s(len(seed_list))
    ledger.append(EventRecord(session=session, event="final_start", detail={
        "final_id": final_id, "seeds": seed_list, "script_sha": script_sha, "script_from": where,
        "cap_dollars": budget.cap, "per_final": budget.per_final, "session_remaining": budget.session_remaining,
        "granted_by": budget.granted_by, "bounded_duration_s": bound, "env": run_env}))
    if backend is None:
        from tools.pods import RunPodBackend

        try:
            backend = RunPodBackend()
        except PodError as e:
            return refused(str(e), script_sha)

    run = _Run(ws=ws, ledger=ledger, backend=backend, cfg=cfg, session=session, final_id=final_id, seeds=seed_list,
               budget=budget, script=script, prepare=prepare, env=run_env, log=log)
    outcomes: list[SeedOutcome] = []
    failure: str | None = None
    stopped: _Stop | None = None
    unexpected: Exception | None = None
    status: Literal["ok", "failed", "refused", "partial"] = "failed"
    with final_lock(session, final_id), _signals_to_stop(log) as calm:
        try:
            try:
                run.acquire()
                run.upload()
                run.setup()
                for seed in seed_list:
                    o = run.run_seed(seed)
                    outcomes.append(o)
                    if o.result.status != "ok":
                        failure = f"seed {seed}: {o.result.status}: {(o.result.error or '')[:300]}"
                        break  # a crash is usually the script, not the seed: stop paying
            except FinalRefused as e:
                failure = str(e)
                status = "refused" if run.attempt == 0 else "failed"
            except (PodError, AgentError) as e:
                failure = f"{type(e).__name__}: {e}"
            except _Stop as e:
                stopped, failure = e, f"stopped by {e}"
            except Exception as e:  # a bug or an unexpected answer: record it, clean up, then raise it
                unexpected, failure = e, f"unexpected {type(e).__name__}: {str(e)[:300]}"
            finally:
                calm()
                run.release("final finished" if failure is None else f"final ended: {failure[:120]}")
                run.sweep()
        except _Stop as e:  # a second signal raced the handler swap; the pod is released above
            stopped, failure = e, f"stopped by {e}"
    ok_vals = [o.result.val_bpb for o in outcomes if o.result.status == "ok" and o.result.val_bpb is not None]
    for o in outcomes:
        ledger.append(RunRecord(session=session, run_id=f"{final_id}-seed{o.seed}", experiment=experiment or final_id,
                                candidate=candidate or "final", tier=cfg.tier, hardware=cfg.hardware, seed=o.seed,
                                env=run_env, script_sha=script_sha, git_commit=rev, result=o.result,
                                log_path=next((f for f in o.files if f.endswith("train.log")), None),
                                run_dir=str((run.out_dir / f"seed_{o.seed}").relative_to(ws.root))))
    if status != "refused":
        status = "ok" if failure is None and len(ok_vals) == len(seed_list) else ("partial" if ok_vals else "failed")
    comp = compliance(outcomes, script, cfg) if outcomes else {"passed": False, "seeds": {}}
    verdict: dict[str, Any] = {}
    if len(ok_vals) >= 2:
        verdict = judge_final(ok_vals, frontier, frontier_std=frontier_std, bytes_per_token=_bytes_per_token(outcomes),
                              incumbent=incumbent_finals(ledger, exclude=final_id), cfg=cfg)
    record = verdict.get("record", {})
    claim = bool(status == "ok" and comp.get("passed", False) and record.get("outcome") == "confirmed")
    note_parts = [failure or "all seeds finished"]
    if record:
        note_parts.append(f"record rule: {record['outcome']} ({record['reason']})")
    if "vs_incumbent" in verdict:
        vi = verdict["vs_incumbent"]
        note_parts.append(f"vs incumbent final {vi['final_id']}: {vi['outcome']} delta {vi['delta']:+.5f} p={vi['p_value']:.3g}")
    rec = FinalRecord(**base, experiment=experiment, script_sha=script_sha, val_bpbs=ok_vals, status=status,
                      frontier_bpb=frontier if isinstance(frontier, float) else (statistics.fmean(frontier) if frontier else None),
                      p_value=record.get("p_value"), record_claim=claim, compliance=comp,
                      dollars=round(run.meter.total, 6), note=" | ".join(note_parts)[:2000])
    if claim:
        hardware = f"8xH100 SXM on RunPod ({run.rung.gpu_type}, {run.rung.cloud_type})" if run.rung else "8xH100 SXM"
        folder = write_submission(
            ws, rec, outcomes, script, verdict, name=name or candidate or "pgolf", hardware=hardware,
            author=author or os.environ.get("GOLF_AUTHOR", "unknown"),
            github_id=github_id or os.environ.get("GOLF_GITHUB_ID", "unknown"),
            blurb=blurb or f"pgolf final {final_id}: {candidate or 'incumbent'} ({len(ok_vals)} seeds)",
            what_changed=json.dumps(inc_env | (env or {})) if (inc_env or env) else "")
        rec.submission_dir = str(folder.relative_to(ws.root))
    ledger.append(EventRecord(session=session, event="final_judged", detail={"final_id": final_id, **verdict,
                                                                            "compliance_passed": comp.get("passed")}))
    ledger.append(rec)
    log(f"final {final_id}: {status}, ${rec.dollars:.2f}, val_bpb {ok_vals}; {rec.note[:300]}")
    if stopped is not None:
        if stopped.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + stopped.signum)
    if unexpected is not None:
        raise unexpected
    return rec


# --------------------------------------------------------------------------------------- reaper


def reap(backend: PodBackend, *, live: set[str], ledger: Ledger | None = None, session: str = "reaper",
         max_age_s: float = 6 * 3600, log: Callable[[str], None] | None = None) -> list[str]:
    """Terminate every pod of ours (name pgolf-...) that no live session owns. Returns the ids terminated.

    Kept: pods of a live session; pods made on another machine (we cannot see its locks) unless older
    than max_age_s, which no bounded final reaches. Unbooked pod time is booked as spend.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    live_prefixes = {pod_prefix(s) for s in live}
    mine = host_tag()
    done = []
    listed_at = time.monotonic()
    for pod in backend.list():
        parts = parse_pod_name(pod.name)
        if parts is None or not pod.alive:
            continue
        old = (pod.uptime_s or 0) > max_age_s
        if any(pod.name.startswith(p) for p in live_prefixes) and not old:
            continue
        if parts["host"] != mine and not old:
            log(f"reaper: leaving {pod.id} ({pod.name}): made on another machine")
            continue
        if not backend.terminate(pod.id):
            log(f"reaper: terminate of {pod.id} not confirmed")
            continue
        done.append(pod.id)
        log(f"reaper: terminated {pod.id} ({pod.name})")
        if ledger is not None:
            # uptime is whole seconds as of the listing: add the time since, and a second for rounding
            _book_reaped(ledger, pod, session, extra_s=time.monotonic() - listed_at + 1.0)
    return done


def _book_reaped(ledger: Ledger, pod: Pod, session: str, extra_s: float = 0.0, final_id: str | None = None) -> float:
    """Book the pod time nobody booked (the owner died, or a stray); returns the dollars booked."""
    spends = [r for r in ledger.records(SpendRecord) if r.pod_id == pod.id]
    booked = sum(r.dollars for r in spends)
    owner = spends[-1].session if spends else session
    final_id = spends[-1].final_id if spends else (final_id or "unknown")
    price = pod.cost_per_hr or (spends[-1].price_per_hour if spends else 0.0) or 0.0
    # the pod's own uptime may restart with the container: never book less than what was booked
    secs = max((pod.uptime_s or 0.0) + extra_s, sum(r.seconds for r in spends))
    unbooked = max(0.0, secs * price / 3600.0 - booked)
    ledger.append(SpendRecord(session=owner, final_id=final_id, pod_id=pod.id, gpu_type=pod.gpu_type,
                              dollars=round(unbooked, 6), seconds=max(0.0, secs - sum(r.seconds for r in spends)),
                              price_per_hour=price, note="reaped: time not booked by its session"))
    ledger.append(EventRecord(session=session, event="pod_reaped", detail={
        "pod_id": pod.id, "name": pod.name, "owner_session": owner, "final_id": final_id,
        "uptime_s": pod.uptime_s, "unbooked_dollars": round(unbooked, 6)}))
    return unbooked


def reap_pods(ws_root: str | Path, backend: PodBackend | None = None) -> list[str]:
    """`golf pods --reap`: terminate every pod of ours that no live session owns."""
    ws = Workspace.at(ws_root)
    if backend is None:
        from tools.pods import RunPodBackend

        backend = RunPodBackend()
    return reap(backend, live=live_sessions(ws), ledger=Ledger(ws.ledger))


def list_pods(ws_root: str | Path, backend: PodBackend | None = None) -> list[str]:
    """`golf pods`: one line per pod of ours, with its owner's liveness."""
    ws = Workspace.at(ws_root)
    if backend is None:
        from tools.pods import RunPodBackend

        backend = RunPodBackend()
    live = {pod_prefix(s) for s in live_sessions(ws)}
    lines = []
    for pod in backend.list():
        if parse_pod_name(pod.name) is None:
            continue
        owner = "live" if any(pod.name.startswith(p) for p in live) else "orphan"
        up = pod.uptime_s or 0
        lines.append(f"{pod.id}  {pod.name}  {pod.status}  ${pod.cost_per_hr or 0:.2f}/h  up {up / 60:.0f} min  "
                     f"{owner}")
    return lines or ["no pods of ours"]
