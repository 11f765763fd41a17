"""Money for finals: the budget a final may spend, the meter that books pod time as it accrues, and
the pod book: every pod we asked RunPod for, open until it is confirmed gone and its time booked.

A pod is opened in the ledger (`pod_opened`) before its create call, so that even a SIGKILL during the
call leaves a trace, and closed (`pod_closed`) once it is terminated or proven absent with all its
time booked. An open pod counts against the session's finals money at its worst case (its dead man's
switch deadline) until then: a create that errored, a pod not yet listed, a pod whose terminate was
never confirmed, a pod whose session died."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from agent.finals.config import FinalRefused
from memory.ledger import Ledger
from memory.records import EventRecord, SpendRecord
from memory.workspace import Workspace


class Budget(BaseModel):
    cap: float  # dollars this final may spend, all pods together
    per_final: float | None
    session_remaining: float | None
    session_spent: float
    open_pods_dollars: float = 0.0  # worst case of pods that may still bill (counted in session_remaining)
    granted_by: str


# --------------------------------------------------------------------------------------- the pod book


class OpenPod(BaseModel):
    """A pod we asked for whose end is not yet settled."""

    session: str
    final_id: str
    name: str
    pod_id: str | None = None
    gpu_type: str | None = None
    price_per_hour: float
    created_unix: float  # when the create call started: billing cannot have started earlier
    deadline_unix: float  # its dead man's switch ends it then
    idle_s: float  # ... or this long after our last contact
    slack_s: float  # how long the switch may take
    contact_gap_s: float = (
        600.0  # our last contact with its agent is at most this long after our last booking
    )
    booked_dollars: float = 0.0
    booked_seconds: float = 0.0
    last_booked_unix: float | None = None

    def end_bound_unix(self) -> float:
        """The latest it can have stopped billing, if it is gone: its deadline, or idle after our last
        contact (the meter books while we talk to the pod, at most contact_gap_s apart), plus the time the
        switch takes."""
        last = self.last_booked_unix if self.last_booked_unix is not None else self.created_unix
        return min(self.deadline_unix, last + self.contact_gap_s + self.idle_s) + self.slack_s

    def worst_unbooked(self) -> float:
        end = self.deadline_unix + self.slack_s
        secs = max(0.0, end - self.created_unix)
        return max(0.0, secs * self.price_per_hour / 3600.0 - self.booked_dollars)


def _unix(at: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(at).timestamp()


def open_pods(records: Iterable[Any]) -> list[OpenPod]:
    """Pods opened in the ledger and not closed, with what was booked for each."""
    pods: dict[str, OpenPod] = {}
    by_id: dict[str, str] = {}
    spends: list[SpendRecord] = []
    closed: set[str] = set()
    for r in records:
        if isinstance(r, SpendRecord):
            spends.append(r)
        elif isinstance(r, EventRecord):
            d = r.detail
            if r.event == "pod_opened":
                pods[d["name"]] = OpenPod(
                    session=r.session,
                    final_id=d["final_id"],
                    name=d["name"],
                    gpu_type=d.get("gpu_type"),
                    price_per_hour=float(d["price_per_hour"]),
                    created_unix=float(d["created_unix"]),
                    deadline_unix=float(d["deadline_unix"]),
                    idle_s=float(d["idle_s"]),
                    slack_s=float(d.get("slack_s", 150.0)),
                    contact_gap_s=float(d.get("contact_gap_s", 600.0)),
                )
            elif r.event == "final_pod_created" and d.get("name") in pods:
                pods[d["name"]].pod_id = d.get("pod_id")
                by_id[str(d.get("pod_id"))] = d["name"]
            elif r.event == "pod_closed":
                closed.add(d.get("name") or by_id.get(str(d.get("pod_id")), ""))
    for s in spends:
        name = s.pod_name or by_id.get(str(s.pod_id))
        if name in pods:
            p = pods[name]
            p.booked_dollars += s.dollars
            p.booked_seconds += s.seconds
            p.last_booked_unix = max(p.last_booked_unix or 0.0, _unix(s.at))
    return [p for n, p in pods.items() if n not in closed]


def open_pod(ledger: Ledger, pod: OpenPod) -> None:
    ledger.append(
        EventRecord(
            session=pod.session,
            event="pod_opened",
            detail=pod.model_dump(
                include={
                    "final_id",
                    "name",
                    "gpu_type",
                    "price_per_hour",
                    "created_unix",
                    "deadline_unix",
                    "idle_s",
                    "slack_s",
                    "contact_gap_s",
                }
            ),
        )
    )


def close_pod(ledger: Ledger, session: str, name: str, pod_id: str | None, how: str, **detail: Any) -> None:
    ledger.append(
        EventRecord(
            session=session, event="pod_closed", detail={"name": name, "pod_id": pod_id, "how": how, **detail}
        )
    )


# --------------------------------------------------------------------------------------- the meter


class SpendMeter:
    """Books pod time as money, incrementally, while it accrues. Conservative: the clock starts before
    the create call and stops after the terminate is confirmed, at the higher of quoted and billed price."""

    def __init__(
        self, ledger: Ledger, session: str, final_id: str, interval_s: float, spent_before: float = 0.0
    ):
        self.ledger, self.session, self.final_id = ledger, session, final_id
        self.interval_s = interval_s
        self.total = spent_before  # this final's booked dollars (previous pods included)
        self.pod_id: str | None = None
        self.pod_name: str | None = None
        self.gpu_type: str | None = None
        self.price = 0.0
        self._since: float | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._since is not None

    def start(self, price_per_hour: float, gpu_type: str, name: str) -> None:
        with self._lock:
            self.price, self.gpu_type, self.pod_id, self.pod_name = price_per_hour, gpu_type, None, name
            self._since = time.monotonic()

    def cancel(self) -> None:
        """Nothing was created (the provider said so): nothing bills."""
        with self._lock:
            self._since = None

    def attach(self, pod_id: str, cost_per_hr: float | None) -> None:
        with self._lock:
            self.pod_id = pod_id
            if cost_per_hr:
                self.price = max(self.price, float(cost_per_hr))

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
            self.ledger.append(
                SpendRecord(
                    session=self.session,
                    final_id=self.final_id,
                    pod_id=self.pod_id,
                    pod_name=self.pod_name,
                    gpu_type=self.gpu_type,
                    dollars=round(dollars, 6),
                    seconds=round(secs, 3),
                    price_per_hour=self.price,
                    note=note,
                )
            )
            self.total += dollars
            self._since = None if stop else now


# --------------------------------------------------------------------------------------- the budget


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


def resolve_budget(
    ws: Workspace,
    ledger: Ledger,
    session: str,
    approve: bool,
    budget_dollars: float | None,
    session_budget_dollars: float | None,
    need: float | None = None,
) -> Budget:
    """The cap this final may spend: the least of --dollars and the session's finals money left (the
    plan's final_dollars less what the session spent and what its open pods may still cost). `need`:
    the final's worst case, named in a refusal so the user learns what to ask for."""
    need_text = (
        f" (this final needs up to ${need:.2f}: see `golf final --dry-run`)"
        if need is not None
        else " (`golf final --dry-run` prints what it would cost)"
    )
    plan = _plan_budget(ws)
    granted = (
        "--approve" if approve else ("battle_plan approve_finals" if plan and plan.approve_finals else "")
    )
    if not granted:
        raise FinalRefused(
            "not approved: finals spend money; run `golf final --approve` or set "
            f"`approve_finals: yes` in battle_plan.md's Budget section{need_text}"
        )
    spent = session_spend(ledger, session)
    exposure = sum(p.worst_unbooked() for p in open_pods(ledger.records()) if p.session == session)
    session_caps = [session_budget_dollars] if session_budget_dollars is not None else []
    plan_cap = plan.final_dollars if plan is not None and "final_dollars" in plan.model_fields_set else None
    if plan_cap is not None:
        session_caps.append(plan_cap)
    session_remaining = min(session_caps) - spent - exposure if session_caps else None
    per_final = budget_dollars
    caps = [c for c in (per_final, session_remaining) if c is not None]
    if not caps:
        raise FinalRefused(f"no budget: give --dollars or set final_dollars in battle_plan.md{need_text}")
    cap = max(0.0, min(caps))
    return Budget(
        cap=cap,
        per_final=per_final,
        session_remaining=session_remaining,
        session_spent=spent,
        open_pods_dollars=round(exposure, 6),
        granted_by=granted,
    )
