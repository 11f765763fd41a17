"""The reaper: pods of ours that nobody is watching are terminated, and the time they ran is booked.

Two kinds. Pods in our ledger (opened before their create) are settled by their real lifetime: alive,
they are terminated and booked from their creation to now (never less than the API's
`runtime.uptimeInSeconds`); not listed, they are proven gone only once their own dead man's switch
must have ended them (deadline, or idle after our last contact, plus the time the switch takes), and
are then booked to that moment. Until then they stay open and count at their worst case. Pods named like ours but unknown to this
ledger (another checkout, a lost ledger) are reaped by name, booked by the API's uptime.

`settle_stale_pods` runs at the start of every `golf` command that has open pods of a dead session, so
the money left for finals is never overstated after a SIGKILL."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent.finals.money import OpenPod, close_pod, open_pods
from agent.finals.naming import host_tag, live_sessions, parse_pod_name, pod_prefix
from memory.ledger import Ledger
from memory.records import EventRecord, SpendRecord
from memory.workspace import Workspace
from pods.backend import Pod, PodBackend, PodError


def _stderr(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def settle(
    backend: PodBackend,
    ledger: Ledger,
    *,
    live: set[str],
    final_id: str | None = None,
    log: Callable[[str], None] = _stderr,
    now: float | None = None,
) -> list[str]:
    """Settle the open pods of the ledger whose session is not live (or, with final_id, that final's
    own: its owner is the caller). Returns the names closed. Never raises on an API error."""
    pods = [
        p
        for p in open_pods(ledger.records())
        if (p.final_id == final_id if final_id else p.session not in live)
    ]
    if not pods:
        return []
    try:
        listed = {p.name: p for p in backend.list() if p.alive}
    except Exception as e:  # noqa: BLE001 - nothing settled now; the next command tries again
        log(f"reaper: could not list pods ({str(e)[:160]}); {len(pods)} pod(s) of ours stay unsettled")
        return []
    closed = []
    for p in pods:
        pod = listed.get(p.name)
        if pod is not None:
            if _terminate(backend, pod, log):
                secs = max((now or time.time()) - p.created_unix, (pod.uptime_s or 0.0) + 1.0)
                _book(ledger, p, secs, pod.cost_per_hr, f"settled: terminated after {secs:.0f}s alive")
                close_pod(ledger, p.session, p.name, pod.id, "terminated by the reaper", final_id=p.final_id)
                closed.append(p.name)
            continue
        # not listed: briefly invisible, listed late, or gone. Only once its own switch must have ended
        # it is it proven gone; until then it stays open and counts at its worst case
        t = now or time.time()
        if t < p.end_bound_unix():
            continue
        how = (
            "gone: ended by its own switch"
            if p.pod_id
            else "never listed: booked to its switch in case it ran"
        )
        _book(ledger, p, p.end_bound_unix() - p.created_unix, None, f"settled: {how}")
        close_pod(ledger, p.session, p.name, p.pod_id, how, final_id=p.final_id)
        closed.append(p.name)
    return closed


def _terminate(backend: PodBackend, pod: Pod, log: Callable[[str], None]) -> bool:
    try:
        ok = backend.terminate(pod.id)
    except Exception as e:  # noqa: BLE001
        log(f"reaper: terminate of {pod.id} failed: {str(e)[:160]}")
        return False
    log(f"reaper: {'terminated' if ok else 'terminate NOT confirmed for'} {pod.id} ({pod.name})")
    return ok


def _book(ledger: Ledger, p: OpenPod, secs: float, price: float | None, note: str) -> float:
    """Book what the pod's lifetime `secs` costs beyond what was booked already."""
    price = max(p.price_per_hour, price or 0.0)
    secs = max(secs, p.booked_seconds)
    unbooked = max(0.0, secs * price / 3600.0 - p.booked_dollars)
    ledger.append(
        SpendRecord(
            session=p.session,
            final_id=p.final_id,
            pod_id=p.pod_id,
            pod_name=p.name,
            gpu_type=p.gpu_type,
            dollars=round(unbooked, 6),
            seconds=round(max(0.0, secs - p.booked_seconds), 3),
            price_per_hour=price,
            note=note,
        )
    )
    ledger.append(
        EventRecord(
            session=p.session,
            event="pod_reaped",
            detail={
                "pod_id": p.pod_id,
                "name": p.name,
                "final_id": p.final_id,
                "lifetime_s": round(secs, 1),
                "unbooked_dollars": round(unbooked, 6),
                "note": note,
            },
        )
    )
    return unbooked


def reap(
    backend: PodBackend,
    *,
    live: set[str],
    ledger: Ledger | None = None,
    session: str = "reaper",
    max_age_s: float = 6 * 3600,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Terminate every pod named like ours that no live session owns and the ledger does not know.
    Returns the ids terminated. Kept: pods of a live session; pods made on another machine (we cannot see
    its locks) unless older than max_age_s (by `runtime.uptimeInSeconds`), which no bounded final reaches."""
    log = log or _stderr
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
        if not _terminate(backend, pod, log):
            continue
        done.append(pod.id)
        if ledger is not None:
            # uptime is whole seconds as of the listing: add the time since, and a second for rounding
            book_unknown(ledger, pod, session, extra_s=time.monotonic() - listed_at + 1.0)
    return done


def book_unknown(ledger: Ledger, pod: Pod, session: str, extra_s: float = 0.0) -> float:
    """Book a pod's time that nobody booked, from the API's uptime; returns the dollars booked."""
    spends = [
        r for r in ledger.records(SpendRecord) if r.pod_id == pod.id or (pod.name and r.pod_name == pod.name)
    ]
    booked = sum(r.dollars for r in spends)
    owner = spends[-1].session if spends else session
    final_id = spends[-1].final_id if spends else "unknown"
    price = pod.cost_per_hr or (spends[-1].price_per_hour if spends else 0.0) or 0.0
    # the container's uptime restarts with it: never book less than what was booked
    secs = max((pod.uptime_s or 0.0) + extra_s, sum(r.seconds for r in spends))
    unbooked = max(0.0, secs * price / 3600.0 - booked)
    ledger.append(
        SpendRecord(
            session=owner,
            final_id=final_id,
            pod_id=pod.id,
            pod_name=pod.name,
            gpu_type=pod.gpu_type,
            dollars=round(unbooked, 6),
            seconds=max(0.0, secs - sum(r.seconds for r in spends)),
            price_per_hour=price,
            note="reaped: time not booked by its session",
        )
    )
    ledger.append(
        EventRecord(
            session=session,
            event="pod_reaped",
            detail={
                "pod_id": pod.id,
                "name": pod.name,
                "owner_session": owner,
                "final_id": final_id,
                "uptime_s": pod.uptime_s,
                "unbooked_dollars": round(unbooked, 6),
            },
        )
    )
    close_pod(ledger, owner, pod.name, pod.id, "terminated by the reaper", final_id=final_id)
    return unbooked


def _backend(backend: PodBackend | None) -> PodBackend:
    if backend is not None:
        return backend
    from pods.backend import RunPodBackend

    return RunPodBackend()


def reap_pods(ws_root: str | Path, backend: PodBackend | None = None) -> list[str]:
    """`golf pods --reap`: settle the ledger's pods of dead sessions, then terminate every other pod of
    ours that no live session owns. Returns what was closed (names) and terminated (ids)."""
    ws = Workspace.at(ws_root)
    ledger = Ledger(ws.ledger)
    be = _backend(backend)
    live = live_sessions(ws)
    return settle(be, ledger, live=live) + reap(be, live=live, ledger=ledger)


def stale_pods(ws_root: str | Path) -> list[OpenPod]:
    """The ledger's open pods whose session is not running: what the next command must settle."""
    ws = Workspace.at(ws_root)
    # most ledgers never opened a pod: do not even parse them (or touch a ledger a live session writes)
    if not ws.ledger.exists() or b'"pod_opened"' not in ws.ledger.read_bytes():
        return []
    live = live_sessions(ws)
    return [p for p in open_pods(Ledger(ws.ledger).records()) if p.session not in live]


def settle_stale_pods(
    ws_root: str | Path, backend: PodBackend | None = None, log: Callable[[str], None] = _stderr
) -> list[str]:
    """Run by every `golf` command: settle pods a killed final left, if there are any. Without an API key
    it says so (their worst case stays counted against the finals money) instead of failing the command."""
    stale = stale_pods(ws_root)
    if not stale:
        return []
    if backend is None and not os.environ.get("RUNPOD_API_KEY"):
        log(
            f"golf: {len(stale)} pod(s) from a final that did not finish may still bill "
            f"({', '.join(p.name for p in stale)}); set RUNPOD_API_KEY and run `golf pods --reap`"
        )
        return []
    try:
        be = _backend(backend)
    except PodError as e:
        log(f"golf: cannot settle {len(stale)} pod(s): {e}")
        return []
    ws = Workspace.at(ws_root)
    return settle(be, Ledger(ws.ledger), live=live_sessions(ws), log=log)


def list_pods(ws_root: str | Path, backend: PodBackend | None = None) -> list[str]:
    """`golf pods`: one line per pod of ours, with its owner's liveness."""
    ws = Workspace.at(ws_root)
    be = _backend(backend)
    live = {pod_prefix(s) for s in live_sessions(ws)}
    lines = []
    for pod in be.list():
        if parse_pod_name(pod.name) is None:
            continue
        owner = "live" if any(pod.name.startswith(p) for p in live) else "orphan"
        up = "not running" if pod.uptime_s is None else f"up {pod.uptime_s / 60:.0f} min"
        lines.append(f"{pod.id}  {pod.name}  {pod.status}  ${pod.cost_per_hr or 0:.2f}/h  {up}  {owner}")
    return lines or ["no pods of ours"]
