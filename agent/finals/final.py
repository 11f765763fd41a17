"""One final, start to end: resolve the plan (the branch's incumbent, the price, the budget), refuse
what cannot be paid for or cannot run, then run the seeds on one pod and judge them.

1. Approval: `approve=True` (from `golf final --approve`) or `approve_finals: yes` in the human part
   of battle_plan.md. Nothing the agent or a language model passes can grant it.
2. Plan: the script and env of `incumbent.json` on the session's branch (golf/<session>), priced per
   rung at price x the pod's whole possible lifetime; refused with the figures when the budget cannot
   pay the cheapest rung, or when the script imports what the pod will not have.
3. Run (agent/finals/pod_run.py): a pod on the first rung that fits, the FineWeb shards, each seed.
4. Money (agent/finals/money.py): booked while it accrues; every pod stays open in the ledger until
   confirmed gone; the pod's own dead man's switch ends it if this process dies, and the next `golf`
   command settles what it ran (agent/finals/reaper.py).
5. Judge with the challenge rule, record a FinalRecord, write the submission folder when it clears.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import signal
import statistics
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import Field

from agent.finals.config import FinalPlan, FinalRefused, FinalRequest, RungPrice, seed_list
from agent.finals.money import Budget, resolve_budget
from agent.finals.naming import final_lock, live_sessions
from agent.finals.pod_run import PodRun, SeedOutcome
from agent.finals.reaper import settle
from agent.finals.submission import write_submission
from agent.finals.verdict import (
    bytes_per_token,
    compliance,
    incumbent_finals,
    judge_final,
    missing_imports,
    sha256,
)
from memory import git_records, incumbent
from memory.ledger import Ledger
from memory.records import EventRecord, FinalRecord, RunRecord
from memory.workspace import SCRIPT_RELPATH, Workspace
from pods.backend import AgentError, PodBackend, PodError

PREPARE_RELPATH = "trainer/prepare_data.py"


class ResolvedFinal(FinalPlan):
    """The plan plus what running it needs and nobody needs to read."""

    script: str = Field(default="", exclude=True, repr=False)
    prepare: str = Field(default="", exclude=True, repr=False)
    budget: Budget | None = Field(default=None, exclude=True)


class _Stop(BaseException):
    """Raised from a signal handler: unwinds to the `finally` that terminates the pod."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------------------- inputs


def branch_incumbent(ws: Workspace, ledger: Ledger, session: str, script_rev: str | None) -> dict[str, Any]:
    """The incumbent a final runs (memory.incumbent.of_session: train_gpt.py and incumbent.json's env on
    the session's branch golf/<session>, else HEAD, or at script_rev), with prepare_data.py from the
    same revision."""
    if script_rev and git_records.file_at(ws.root, script_rev, SCRIPT_RELPATH) is None:
        raise FinalRefused(f"no {SCRIPT_RELPATH} at git revision {script_rev!r}")
    inc = incumbent.of_session(ws.root, ledger.records(), session, script_rev)
    prep = git_records.file_at(ws.root, inc.rev, PREPARE_RELPATH) if inc.rev else None
    if prep is None and (ws.root / PREPARE_RELPATH).exists():
        prep = (ws.root / PREPARE_RELPATH).read_text()
    branch = f"{git_records.BRANCH_PREFIX}{session}"
    label = script_rev or (branch if git_records.rev_parse(ws.root, branch) == inc.rev else "HEAD")
    where = f"git {label} ({inc.rev[:12]})" if inc.rev else "working tree"
    return {
        "script": inc.script,
        "prepare": prep or "",
        "rev": inc.rev,
        "where": where,
        "env": inc.env,
        "experiment": inc.experiment,
    }


def start_preset_env(ws: Workspace, ledger: Ledger, session: str, tier_env: dict[str, str]) -> dict[str, str]:
    """The preset the session's incumbent started from (the plan's `start:`), seen from the final's tier:
    on a local tier the session ran it without the tier's shape keys, so incumbent.json never holds them;
    the final runs them. Empty when the session started from no preset."""
    from memory.presets import PRESETS_FILE, PresetError, get_preset

    starts = [e for e in ledger.records(EventRecord) if e.session == session and e.event == "start_preset"]
    if not starts:
        return {}
    name = str(starts[-1].detail.get("name"))
    try:
        return get_preset(ws.root / PRESETS_FILE, name).env_on_tier(tier_env)
    except PresetError as e:
        raise FinalRefused(f"the session started from preset {name!r}, which cannot be read: {e}") from e


def last_session(ledger: Ledger) -> str | None:
    return incumbent.last_session(ledger.records())


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


# --------------------------------------------------------------------------------------- the plan


def _price_rungs(req: FinalRequest, backend: PodBackend | None, n_seeds: int) -> list[RungPrice]:
    cfg = req.config
    hours = cfg.pod_lifetime_s(n_seeds) / 3600
    out = []
    for rung in cfg.ladder:
        price, note = None, "no RUNPOD_API_KEY" if backend is None else ""
        if backend is not None:
            try:
                offer = backend.offer(rung.gpu_type, cfg.gpu_count, rung.cloud_type)
                price = offer.price_per_hour
                note = "" if price is not None else "the API gave no price"
            except Exception as e:  # noqa: BLE001 - a rung we cannot price is reported, not fatal
                note = f"price check failed: {str(e)[:120]}"
        if price is not None and price > cfg.max_price_per_hour:
            note = f"over the ${cfg.max_price_per_hour:.2f}/h ceiling: never used"
        out.append(
            RungPrice(
                gpu_type=rung.gpu_type,
                cloud_type=rung.cloud_type,
                price_per_hour=price,
                worst_case_dollars=None if price is None else round(price * hours, 2),
                note=note,
            )
        )
    return out


def plan_final(
    req: FinalRequest,
    backend: PodBackend | None = None,
    *,
    session: str | None = None,
    final_id: str | None = None,
) -> ResolvedFinal:
    """Everything a final would do, resolved with read-only calls (prices). `problems` lists each reason
    it would be refused; empty means it would run. Raises FinalRefused only for an unreadable script."""
    ws = Workspace.at(req.workspace)
    ledger = Ledger(ws.ledger)
    cfg = req.config
    session = (
        session or req.session or last_session(ledger) or f"final-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    )
    final_id = final_id or f"final-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    seeds = seed_list(req.seeds)
    inc = branch_incumbent(ws, ledger, session, req.script_rev)
    tier_env = _tier_env(ws, cfg.tier)
    env = {**tier_env, **start_preset_env(ws, ledger, session, tier_env), **inc["env"], **req.env}
    rungs = _price_rungs(req, backend, len(seeds))
    hours = cfg.pod_lifetime_s(len(seeds)) / 3600
    usable = [
        r.worst_case_dollars
        for r in rungs
        if r.worst_case_dollars is not None and (r.price_per_hour or 0) <= cfg.max_price_per_hour
    ]
    worst = max(usable) if usable else round(cfg.max_price_per_hour * hours, 2)
    cheapest = min(usable) if usable else worst
    problems: list[str] = []
    budget = None
    try:
        budget = resolve_budget(
            ws, ledger, session, req.approve, req.dollars, req.session_dollars, need=cheapest
        )
    except FinalRefused as e:
        problems.append(str(e))
    if backend is None:
        problems.append(
            f"no RUNPOD_API_KEY: the rungs are unpriced; at the ${cfg.max_price_per_hour:.2f}/h ceiling "
            f"a pod costs at most ${worst:.2f}"
        )
    elif not usable:
        problems.append(
            "no rung has a usable price: "
            + "; ".join(f"{r.gpu_type}/{r.cloud_type}: {r.note}" for r in rungs)
        )
    elif budget is not None and budget.cap < cheapest:
        why = []
        if budget.per_final is not None and budget.per_final < cheapest:
            why.append(f"--dollars {budget.per_final:g}")
        if budget.session_remaining is not None and budget.session_remaining < cheapest:
            held = (
                f", ${budget.open_pods_dollars:.2f} held for pods that may still bill"
                if budget.open_pods_dollars
                else ""
            )
            why.append(
                f"the session's finals money left: ${budget.session_remaining:.2f} (battle_plan.md "
                f"final_dollars less ${budget.session_spent:.2f} spent{held})"
            )
        need = int(cheapest) + 1
        per_rung = "; ".join(
            f"{r.gpu_type}/{r.cloud_type} ${r.price_per_hour:.2f}/h x {hours:.2f} h = "
            f"${r.worst_case_dollars:.2f}"
            for r in rungs
            if r.worst_case_dollars is not None
        )
        problems.append(
            f"budget: {len(seeds)} seed(s) need up to ${cheapest:.2f} (price x the pod's bounded "
            f"lifetime, per rung: {per_rung}), but this final may spend ${budget.cap:.2f} "
            f"({'; '.join(why)}); give `--dollars {need}` or more, with `final_dollars: {need}` or "
            f"more in battle_plan.md's Budget"
        )
    missing = missing_imports(inc["script"], cfg.pod_modules)
    if missing:
        problems.append(
            f"the script imports {', '.join(missing)}, which the pod ({cfg.image}) will not have: "
            f"add it to FinalConfig.pod_modules and setup_cmd, or guard the import"
        )
    return ResolvedFinal(
        session=session,
        final_id=final_id,
        seeds=seeds,
        image=cfg.image,
        template_id=cfg.template_id,
        allowed_cuda_versions=cfg.allowed_cuda_versions,
        gpu_count=cfg.gpu_count,
        rungs=rungs,
        pod_lifetime_s=cfg.pod_lifetime_s(len(seeds)),
        worst_case_dollars=worst,
        cap_dollars=None if budget is None else round(budget.cap, 2),
        granted_by="" if budget is None else budget.granted_by,
        script_from=inc["where"],
        script_rev=inc["rev"],
        script_sha=sha256(inc["script"]),
        env=env,
        experiment=inc["experiment"],
        problems=problems,
        script=inc["script"],
        prepare=inc["prepare"],
        budget=budget,
    )


# --------------------------------------------------------------------------------------- the run


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


def run_final(
    req: FinalRequest, backend: PodBackend | None = None, log: Callable[[str], None] | None = None
) -> FinalRecord:
    """Run one final. Always returns a FinalRecord that is also in the ledger; re-raises
    KeyboardInterrupt/SystemExit after cleanup when stopped by a signal."""
    ws = Workspace.at(req.workspace)
    ledger = Ledger(ws.ledger)
    cfg = req.config
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    session = req.session or last_session(ledger) or f"final-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    final_id = f"final-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    seeds = seed_list(req.seeds)
    base: dict[str, Any] = dict(session=session, final_id=final_id, seeds=seeds)

    def refused(why: str, script_sha: str = "", **extra: Any) -> FinalRecord:
        log(f"final refused: {why}")
        rec = FinalRecord(**base, script_sha=script_sha, status="refused", note=why[:2000], **extra)
        ledger.append(rec)
        return rec

    try:  # approval first: without it nothing is asked of RunPod, not even a price
        resolve_budget(ws, ledger, session, req.approve, req.dollars, req.session_dollars)
    except FinalRefused as e:
        if "not approved" in str(e):
            return refused(str(e))
    if backend is None:
        from pods.backend import RunPodBackend

        try:
            backend = RunPodBackend()
        except PodError as e:
            return refused(str(e))
    settle(backend, ledger, live=live_sessions(ws), log=log)  # a killed final's pods: booked before budgeting
    try:
        plan = plan_final(req, backend, session=session, final_id=final_id)
    except FinalRefused as e:
        return refused(str(e))
    recorded: dict[str, Any] = dict(script_rev=plan.script_rev, env=plan.env, experiment=plan.experiment)
    log(plan.text())
    if plan.problems:
        return refused(" | ".join(plan.problems), plan.script_sha, **recorded)
    assert plan.budget is not None
    frontier = req.frontier if req.frontier is not None else current_frontier(ws)
    ledger.append(
        EventRecord(
            session=session,
            event="final_start",
            detail={
                "final_id": final_id,
                "seeds": seeds,
                "script_sha": plan.script_sha,
                "script_from": plan.script_from,
                "cap_dollars": plan.budget.cap,
                "per_final": plan.budget.per_final,
                "session_remaining": plan.budget.session_remaining,
                "granted_by": plan.budget.granted_by,
                "pod_lifetime_s": plan.pod_lifetime_s,
                "worst_case_dollars": plan.worst_case_dollars,
                "env": plan.env,
            },
        )
    )

    run = PodRun(
        ws=ws,
        ledger=ledger,
        backend=backend,
        cfg=cfg,
        session=session,
        final_id=final_id,
        seeds=seeds,
        budget=plan.budget,
        env=plan.env,
        log=log,
    )
    outcomes, failure, stopped, unexpected, status = _run_seeds(run, plan, log)
    rec = _judge_and_record(req, plan, run, outcomes, failure, status, frontier)
    log(f"final {final_id}: {rec.status}, ${rec.dollars:.2f}, val_bpb {rec.val_bpbs}; {rec.note[:300]}")
    if stopped is not None:
        if stopped.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + stopped.signum)
    if unexpected is not None:
        raise unexpected
    return rec


def _judge_and_record(
    req: FinalRequest,
    plan: ResolvedFinal,
    run: PodRun,
    outcomes: list[SeedOutcome],
    failure: str | None,
    status: Status,
    frontier: list[float] | float | None,
) -> FinalRecord:
    """The runs, the verdict, the submission folder when the rule is cleared, and the FinalRecord."""
    ws, ledger, cfg, seeds, final_id, session = (
        run.ws,
        run.ledger,
        run.cfg,
        plan.seeds,
        plan.final_id,
        plan.session,
    )
    ok_vals = [o.result.val_bpb for o in outcomes if o.result.status == "ok" and o.result.val_bpb is not None]
    for o in outcomes:
        ledger.append(
            RunRecord(
                session=session,
                run_id=f"{final_id}-seed{o.seed}",
                experiment=plan.experiment or final_id,
                candidate="final",
                tier=cfg.tier,
                hardware=cfg.hardware,
                seed=o.seed,
                env=plan.env,
                script_sha=plan.script_sha,
                git_commit=plan.script_rev,
                result=o.result,
                log_path=next((f for f in o.files if f.endswith("train.log")), None),
                run_dir=str((run.out_dir / f"seed_{o.seed}").relative_to(ws.root)),
            )
        )
    if status != "refused":
        status = (
            "ok" if failure is None and len(ok_vals) == len(seeds) else ("partial" if ok_vals else "failed")
        )
    comp = compliance(outcomes, plan.script, cfg) if outcomes else {"passed": False, "seeds": {}}
    verdict: dict[str, Any] = {}
    if len(ok_vals) >= 2:
        verdict = judge_final(
            ok_vals,
            frontier,
            frontier_std=req.frontier_std,
            bytes_per_token=bytes_per_token(outcomes),
            incumbent=incumbent_finals(ledger, exclude=final_id),
            cfg=cfg,
        )
    record = verdict.get("record", {})
    claim = bool(status == "ok" and comp.get("passed", False) and record.get("outcome") == "confirmed")
    note_parts = [failure or "all seeds finished"]
    if record:
        note_parts.append(f"record rule: {record['outcome']} ({record['reason']})")
    if "vs_incumbent" in verdict:
        vi = verdict["vs_incumbent"]
        note_parts.append(
            f"vs incumbent final {vi['final_id']}: {vi['outcome']} delta {vi['delta']:+.5f} "
            f"p={vi['p_value']:.3g}"
        )
    frontier_bpb = (
        frontier if isinstance(frontier, float) else (statistics.fmean(frontier) if frontier else None)
    )
    rec = FinalRecord(
        session=session,
        final_id=final_id,
        seeds=seeds,
        script_rev=plan.script_rev,
        env=plan.env,
        experiment=plan.experiment,
        script_sha=plan.script_sha,
        val_bpbs=ok_vals,
        status=status,
        frontier_bpb=frontier_bpb,
        p_value=record.get("p_value"),
        record_claim=claim,
        compliance=comp,
        dollars=round(run.meter.total, 6),
        note=" | ".join(note_parts)[:2000],
    )
    if claim:
        sub = req.submission
        hardware = (
            f"8xH100 SXM on RunPod ({run.rung.gpu_type}, {run.rung.cloud_type})" if run.rung else "8xH100 SXM"
        )
        folder = write_submission(
            ws,
            rec,
            outcomes,
            plan.script,
            verdict,
            name=sub.name or plan.experiment or "pgolf",
            hardware=hardware,
            author=sub.author or os.environ.get("GOLF_AUTHOR", "unknown"),
            github_id=sub.github_id or os.environ.get("GOLF_GITHUB_ID", "unknown"),
            blurb=sub.blurb
            or f"pgolf final {final_id}: {plan.experiment or 'incumbent'} ({len(ok_vals)} seeds)",
            what_changed=json.dumps(plan.env) if plan.env else "",
        )
        rec.submission_dir = str(folder.relative_to(ws.root))
    ledger.append(
        EventRecord(
            session=session,
            event="final_judged",
            detail={"final_id": final_id, **verdict, "compliance_passed": comp.get("passed")},
        )
    )
    ledger.append(rec)
    return rec


Status = Literal["ok", "failed", "refused", "partial"]


def _run_seeds(
    run: PodRun, plan: ResolvedFinal, log: Callable[[str], None]
) -> tuple[list[SeedOutcome], str | None, _Stop | None, Exception | None, Status]:
    """The pod's part: acquire, upload, setup, seeds; release and sweep on every path."""
    outcomes: list[SeedOutcome] = []
    failure: str | None = None
    stopped: _Stop | None = None
    unexpected: Exception | None = None
    status: Status = "failed"
    with final_lock(run.session, run.final_id), _signals_to_stop(log) as calm:
        try:
            try:
                run.acquire()
                run.upload(plan.script, plan.prepare)
                run.setup()
                for seed in plan.seeds:
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
                # any pod of this final still listed (one a create made after we stopped looking) goes too
                settle(run.backend, run.ledger, live=set(), final_id=run.final_id, log=log)
        except _Stop as e:  # a second signal raced the handler swap; the pod is released above
            stopped, failure = e, f"stopped by {e}"
    return outcomes, failure, stopped, unexpected, status
