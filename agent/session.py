"""The session loop: observe -> plan -> act -> judge -> record, until the budget or the plan runs out.

A session works on the git branch golf/<session>. Every step that matters is in the ledger before
the next one starts, and every derived view (incumbent, noise, plan blocks) is recomputed from the
ledger, so `golf resume` after a crash or SIGKILL continues without losing or doubling anything.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent import lock as session_lock
from agent import recovery
from agent.containment import check_base_env, screen_queue
from agent.costs import options_for_session
from agent.experiment import ExperimentRunner
from agent.planner import Budget, Planner, PlannerState, Proposal
from agent.progress import Progress
from agent.state import build_state
from memory import git_records, incumbent
from memory.battle_plan import BattlePlanError, human_fingerprint, load_plan, write_blocks
from memory.frontier import frontier_block_markdown, frontier_diff_for, frontier_digest, mark_seen
from memory.knobs import caseops_on, check_env_allowed
from memory.ledger import Ledger
from memory.presets import PRESETS_FILE, Preset, PresetError, get_preset, starting_env
from memory.records import DecisionRecord, EventRecord, RunRecord, RunResult, utcnow
from memory.tiers import Tier, load_tiers
from memory.workspace import Workspace
from tools.context import ToolContext
from tools.edit_script import SCRIPT_RELPATH
from tools.sweep import hardware_id
from tools.toolbox import load_tools

DEFAULT_TIER = "cpu-smoke"
AGENT_BLOCKS = ("confirmed", "dead_ends", "preset_worth", "frontier", "queue_status")


class SessionSummary(BaseModel):
    session: str
    branch: str
    planner: str
    tier: str
    decisions: int
    kept: list[str]
    stopped_because: str
    elapsed_s: float
    trainer_busy_s: float
    incumbent_bpb: float | None = None


class SessionError(RuntimeError):
    pass


def with_plan_seeds(tier: Tier, seeds_max: int | None) -> Tier:
    """The tier with the plan's `seeds_max` (per candidate) in place of its own, when the plan sets one."""
    if seeds_max is None:
        return tier
    return tier.model_copy(
        update={"seeds_max": seeds_max, "seeds_initial": min(tier.seeds_initial, seeds_max)}
    )


def new_session_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def elapsed_before(records: list, session: str) -> float:
    """Wall seconds this session already used in earlier segments (a crash's downtime excluded)."""
    total, seg_start, last = 0.0, None, None
    for r in records:
        if getattr(r, "session", None) != session:
            continue
        if isinstance(r, EventRecord) and r.event in ("session_start", "session_resume"):
            if seg_start is not None and last is not None:
                total += max(0.0, last - seg_start)
            seg_start = _ts(r.at)
        last = _ts(r.at)
    if seg_start is not None and last is not None:
        total += max(0.0, last - seg_start)
    return total


def ensure_data(
    ws: Workspace, progress: Progress, variants: tuple[tuple[int, bool], ...] = ((1024, False),)
) -> None:
    """The embedded dataset, at each (vocabulary size, CaseOps) the session will run, is built on first use
    (about a minute each), never committed."""
    for vocab, caseops in sorted(set(variants)):
        manifest = ws.embedded_data(vocab, caseops)[0] / "manifest.json"
        if manifest.exists():
            continue
        progress.line(
            f"preparing the embedded dataset at vocabulary size {vocab}{' with CaseOps' * caseops} (first "
            "run only, about 1-2 minutes) ..."
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ws.root / "trainer" / "prepare_data.py"),
                "--out",
                str(ws.data_dir),
                "--vocab",
                str(vocab),
                *(["--caseops"] if caseops else []),
            ],
            cwd=ws.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:  # stream it: a silent minute looks like a hang
            line = line.rstrip()
            if line:
                progress.line(f"  data: {line[:200]}")
                tail = (tail + [line])[-30:]
        if proc.wait() != 0 or not manifest.exists():
            raise SessionError("data preparation failed:\n" + "\n".join(tail))


def data_variants_in_use(
    base_env: dict[str, str], tier_env: dict[str, str], queue_envs: list[dict[str, str]]
) -> tuple[tuple[int, bool], ...]:
    """Every (VOCAB_SIZE, CASEOPS) a run of this session may use: the starting incumbent's and any queue
    item's on top of it."""
    start = tier_env | base_env
    envs = [start] + [start | e for e in queue_envs]
    values = [(str(e.get("VOCAB_SIZE", "1024")), caseops_on(e)) for e in envs]
    return tuple(sorted({(int(v), c) for v, c in values if v.isdigit()}))


def reap_orphans(ledger: Ledger, session: str) -> list[int]:
    """Trainer processes of a killed session still running (should not exist: they die with their
    parent) are killed by process group before anything else runs."""
    killed = []
    finished = {r.run_id for r in ledger.records(RunRecord)}
    for e in ledger.records(EventRecord):
        if e.session != session or e.event != "run_started" or e.detail.get("run_id") in finished:
            continue
        pid = int(e.detail.get("pid", -1))
        if pid > 0 and session_lock.pid_alive(pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                cmd = b""
            if b"train_gpt.py" in cmd:
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def mark_interrupted_runs(ledger: Ledger, session: str) -> list[str]:
    """Runs that started but never finished are recorded as aborted (the experiment re-runs them)."""
    finished = {r.run_id for r in ledger.records(RunRecord)}
    marked = []
    for e in ledger.records(EventRecord):
        rid = str(e.detail.get("run_id") or "")
        if e.session == session and e.event == "run_started" and rid and rid not in finished:
            ledger.append(
                RunRecord(
                    session=session,
                    run_id=rid,
                    experiment="interrupted",
                    candidate="interrupted",
                    tier="-",
                    hardware="-",
                    seed=-1,
                    script_sha="-",
                    result=RunResult(status="aborted", error="the session was killed mid-run"),
                )
            )
            finished.add(rid)
            marked.append(rid)
    return marked


class Session:
    def __init__(
        self,
        ws: Workspace,
        *,
        planner: Planner,
        tier: str | None,
        budget: Budget | None,
        session: str | None,
        resume: bool,
        allow_dirty: bool,
        progress: Progress | None = None,
    ):
        self.ws = ws
        self.planner = planner
        self.resume = resume
        self.allow_dirty = allow_dirty
        self.progress = progress or Progress.auto()
        self.ledger = Ledger(ws.ledger)
        self.tiers = load_tiers(ws.tiers_file)
        try:
            self.plan = load_plan(ws.battle_plan)
        except BattlePlanError as e:
            raise SessionError(f"battle plan: {e}") from e
        if resume:
            session = session or incumbent.last_session(self.ledger.records())
            if session is None:
                raise SessionError("nothing to resume: the ledger holds no session")
            start = incumbent.session_start(self.ledger.records(), session)
            if start is None:
                raise SessionError(f"nothing to resume: the ledger holds no start of session {session!r}")
            tier = tier or start.detail.get("tier")
            budget = budget or Budget.model_validate(start.detail.get("budget", {}))
        self.session = session or new_session_id()
        pb = self.plan.budget
        self.tier_name = tier or getattr(pb, "tier", None) or DEFAULT_TIER
        if self.tier_name not in self.tiers:
            raise SessionError(f"unknown tier {self.tier_name!r}; tiers.toml has {', '.join(self.tiers)}")
        self.tier = with_plan_seeds(self.tiers[self.tier_name], self.plan.budget.seeds_max)
        self.budget = budget or Budget(
            minutes=getattr(pb, "minutes", None),
            experiments=getattr(pb, "experiments", None),
            dollars=getattr(pb, "dollars", None),
        )
        self.ctx = ToolContext(
            ws=ws,
            ledger=self.ledger,
            session=self.session,
            tier=self.tier,
            tiers=self.tiers,
            python=sys.executable,
        )
        self.runner = ExperimentRunner(self.ctx, self.progress)
        self.runner.afford = self.afford
        self.t0 = time.time()
        self.prior_elapsed = 0.0
        self.plan_sha = ""
        self.frontier_digest = ""
        self.frontier_obsolete: dict[str, str] = {}  # queue technique -> why newer records dropped it
        self.start_preset: Preset | None = None  # the plan's `start:` preset, read once at the start
        self.stop_tokens = 0  # tokens the planner spent on the decision to stop
        self.last_state: PlannerState | None = None  # what the planner saw at its last decision

    # -- budget ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.prior_elapsed + time.time() - self.t0

    def spent(self) -> tuple[int, float]:
        """Decisions made and dollars booked by this session so far (one pass over the ledger)."""
        mine = [r for r in self.ledger.records() if getattr(r, "session", None) == self.session]
        decisions = sum(1 for r in mine if isinstance(r, DecisionRecord))
        dollars = sum((r.cost.dollars or 0.0) for r in mine if isinstance(r, RunRecord))
        return decisions, dollars

    def budget_left(self, spent: tuple[int, float] | None = None) -> Budget:
        decisions, dollars = spent or self.spent()
        b = self.budget
        return Budget(
            minutes=None if b.minutes is None else max(0.0, b.minutes - self.elapsed() / 60),
            experiments=None if b.experiments is None else max(0, b.experiments - decisions),
            dollars=None if b.dollars is None else max(0.0, b.dollars - dollars),
        )

    def run_price(self, runs: int) -> tuple[float, float]:
        """(dollars, minutes) of `runs` more runs at the tier's recent wall time per run."""
        wall_s = runs * self.runner.expected_run_s() / max(1, self.tier.nproc)
        return wall_s * (self.tier.price_per_hour or 0.0) / 3600, wall_s / 60

    def afford(self, runs: int) -> str | None:
        """Why `runs` more runs do not fit the money or minutes left (None: they fit), at the tier's
        recent wall time per run; the experiment asks before each further seed."""
        left = self.budget_left()
        cost, minutes = self.run_price(runs)
        if left.dollars is not None and self.tier.price_per_hour:
            if cost > left.dollars:
                return f"{runs} more run(s) cost ~${cost:.2f}, ${left.dollars:.2f} of the budget is left"
        if left.minutes is not None and minutes > left.minutes:
            return f"{runs} more run(s) take ~{minutes:.1f} min, {left.minutes:.1f} min are left"
        return None

    def out_of_budget(self) -> str | None:
        spent = self.spent()
        left = self.budget_left(spent)
        if left.experiments is not None and left.experiments <= 0:
            return "experiment budget spent"
        if left.dollars is not None and self.tier.price_per_hour:
            # an experiment starts only when its first look (seeds_initial runs) is paid for
            first, _ = self.run_price(self.tier.seeds_initial)
            if left.dollars <= 0 or left.dollars < first:
                return f"dollar budget spent (${left.dollars:.2f} left, a first look costs ~${first:.2f})"
        if left.minutes is not None:
            need = self.runner.expected_experiment_s() / 60
            if left.minutes <= 0 or (spent[0] > 0 and left.minutes < need):
                return f"time budget spent ({left.minutes:.1f} min left, an experiment takes ~{need:.1f})"
        return None

    # -- set-up ---------------------------------------------------------------------------------
    def start(self) -> None:
        session_lock.acquire(self.ws.lock, self.session)
        try:
            self.set_up()
        except BaseException:
            session_lock.release(self.ws.lock)
            raise

    def set_up(self) -> None:
        # a git killed mid-command leaves its lock, which would refuse every later git command
        cleared = git_records.clear_stale_locks(self.ws.root)
        if self.resume:
            killed = reap_orphans(self.ledger, self.session)
            marked = mark_interrupted_runs(self.ledger, self.session)
            git_records.start_session(self.ws.root, self.session, allow_dirty=True)
            recovered = recovery.recover(self.ctx)  # decisions a crash left half-recorded
            # a crash can leave the candidate's script in the worktree: go back to the incumbent
            git_records.restore_incumbent(self.ws.root, [SCRIPT_RELPATH, incumbent.INCUMBENT_FILE])
            self.prior_elapsed = elapsed_before(self.ledger.records(), self.session)
            self.ledger.append(
                EventRecord(
                    session=self.session,
                    event="session_resume",
                    detail={"killed_orphans": killed, "aborted_runs": marked, **recovered},
                )
            )
            self.progress.line(f"resumed session {self.session}: {len(marked)} interrupted run(s) re-queued")
        else:
            # the human's own uncommitted plan edit is how they steer; anything else dirty is refused
            git_records.start_session(
                self.ws.root, self.session, allow_dirty=self.allow_dirty, allow_paths=["battle_plan.md"]
            )
            self.ledger.append(
                EventRecord(
                    session=self.session,
                    event="session_start",
                    detail={
                        "tier": self.tier_name,
                        "planner": self.planner.name,
                        "budget": self.budget.model_dump(),
                        "branch": f"golf/{self.session}",
                        "start_sha": git_records.head_sha(self.ws.root),
                    },
                )
            )
            from agent.fidelity import seed_shipped_pairs

            try:
                seeded = seed_shipped_pairs(self.ledger, self.tier_name)
            except ValueError as e:  # the calibration falls back to its prior; the session goes on
                seeded = 0
                self.progress.line(f"calibration: shipped fidelity pairs skipped: {e}")
            if seeded:
                self.progress.line(
                    f"calibration: {seeded} pairs `golf fidelity` measured on {self.tier_name} when pgolf "
                    "was built go into the ledger (run `golf fidelity` to measure your own)"
                )
        if cleared:
            self.ledger.append(
                EventRecord(session=self.session, event="git_locks_cleared", detail={"locks": cleared})
            )
        missing = {n: "" for n in AGENT_BLOCKS if n not in self.plan.blocks}
        if missing:  # create our blocks once, up front, so later writes never change the human part
            write_blocks(self.ws.battle_plan, missing)
        try:  # incumbent.json passes the same allow-list as any override, against the script it came with
            check_base_env(
                incumbent.base_env(self.ws.root, self.ledger.records(), self.session),
                incumbent.committed_script(self.ws.root) or "",
                self.ledger,
                self.session,
            )
        except ValueError as e:
            raise SessionError(str(e)) from None
        self.ctx.base_env = self.starting_env()
        self.refresh_frontier()
        self.plan_sha = human_fingerprint(self.ws.battle_plan)
        ensure_data(
            self.ws,
            self.progress,
            data_variants_in_use(
                self.ctx.base_env, self.tier.env, [q.env for q in self.plan.queue if q.state != "banned"]
            ),
        )
        self.ctx.hardware = None
        self.hardware = hardware_id(self.ctx, self.tier.hardware)
        self.runner.hardware = self.hardware

    def starting_env(self) -> dict[str, str]:
        """The incumbent's env before the first keep: the plan's `start:` preset on this tier, under the
        incumbent.json committed where the session started (read once, at the start)."""
        name = self.plan.budget.start
        preset = None
        if name:
            try:
                preset = get_preset(self.ws.root / PRESETS_FILE, name)
            except PresetError as e:
                raise SessionError(f"battle plan `start: {name}`: {e}") from e
            try:  # refused here, before any run, rather than candidate by candidate
                script = self.ws.script.read_text(encoding="utf-8")
                check_env_allowed(preset.env_on_tier(self.tier.env), script)
            except ValueError as e:
                raise SessionError(f"battle plan `start: {name}`: preset {name!r}: {e}") from e
            self.start_preset = preset
            if not self.resume:  # for the projection in `golf status`: which record the incumbent started as
                self.ledger.append(
                    EventRecord(
                        session=self.session,
                        event="start_preset",
                        detail={
                            "name": name,
                            "record": preset.record,
                            "published_bpb": preset.published_bpb,
                            "env": preset.env_on_tier(self.tier.env),
                        },
                    )
                )
            source = f" (PR #{preset.record}, published {preset.published_bpb})" if preset.record else ""
            about = preset.description or "no description"
            self.progress.line(f"starting from preset {name}: {about}{source}")
        return starting_env(
            preset, self.tier.env, incumbent.base_env(self.ws.root, self.ledger.records(), self.session)
        )

    # -- one decision ---------------------------------------------------------------------------
    def reload_plan(self) -> bool:
        """Steering: the plan is re-read at every decision; a human edit is noted in the ledger."""
        try:
            self.plan = load_plan(self.ws.battle_plan)
        except BattlePlanError as e:
            self.ledger.append(
                EventRecord(session=self.session, event="plan_malformed", detail={"error": str(e)})
            )
            raise SessionError(f"battle plan: {e}") from e
        self.plan = screen_queue(
            self.plan,
            incumbent.committed_script(self.ws.root) or self.ws.script.read_text(),
            self.ledger,
            self.session,
            say=self.progress.line,
            tier=self.tier,
        )
        sha = human_fingerprint(self.ws.battle_plan)
        if sha != self.plan_sha:
            self.ledger.append(
                EventRecord(
                    session=self.session,
                    event="plan_edited",
                    detail={
                        "human_sha": sha,
                        "previous": self.plan_sha,
                        "directives": self.plan.directives[:20],
                    },
                )
            )
            self.plan_sha = sha
            self.use_tier(with_plan_seeds(self.tiers[self.tier_name], self.plan.budget.seeds_max))
            return True
        return False

    def use_tier(self, tier: Tier) -> None:
        self.tier = self.ctx.tier = self.runner.tier = tier

    def refresh_frontier(self) -> None:
        """The frontier diff since the last session: into the plan's frontier block and the digest."""
        queue = [q.technique for q in self.plan.queue]
        self.ctx.queue = queue
        try:
            covered = (
                self.tier.env
                | (self.start_preset.env if self.start_preset else {})
                | (self.ctx.base_env or {})
            )
            d = frontier_diff_for(
                self.ws.root,
                queue,
                script_text=self.ws.script.read_text(encoding="utf-8"),
                covered_env=covered,
            )
            self.frontier_digest = frontier_digest(d, max_chars=1500)
            self.frontier_obsolete = {n.technique: n.reason for n in d.obsolete}
            write_blocks(self.ws.battle_plan, {"frontier": frontier_block_markdown(d)})
        except Exception as e:  # the frontier is advice; a broken snapshot must not stop the session
            self.frontier_digest = f"(frontier unavailable: {e})"
            self.progress.line(f"warning: {self.frontier_digest}")

    def options(self, state_records: list) -> list[dict[str, Any]]:
        try:
            return options_for_session(state_records, self.plan, self.tier, self.tiers)
        except Exception as e:
            self.progress.line(f"cost model unavailable: {e}")
            return []

    def decide_once(self) -> Proposal:
        changed = self.reload_plan()
        records = self.ledger.records()
        script = self.ws.script.read_text()
        inc = incumbent.in_session(
            self.ws.root, records, self.session, self.ctx.base_env, working_script=script
        )
        state = build_state(
            records=records,
            plan=self.plan,
            session=self.session,
            tier=self.tier_name,
            hardware=self.hardware,
            script_sha=inc.script_sha,
            base_env=self.ctx.base_env,
            budget_left=self.budget_left(),
            frontier=self.frontier_digest,
            options=self.options(records),
            plan_changed=changed,
            script_dirty=script != inc.script,
            frontier_obsolete=self.frontier_obsolete,
        )
        self.last_state = state
        return self.planner.propose(state, self.ctx)

    def seed_budget(self) -> dict[str, Any]:
        """What an adaptive tier sizes an experiment's seeds by: the runs the time budget has left, and the
        ideas the planner would still test (only the playbook can say; None where unknown)."""
        left = self.budget_left()
        runs_left = (
            None if left.minutes is None else left.minutes * 60 / max(1.0, self.runner.expected_run_s())
        )
        count = getattr(self.planner, "ideas_left", None)
        state = self.last_state
        ideas_left = count(state, self.ctx) if callable(count) and state is not None else None
        return {"runs_left": runs_left, "ideas_left": ideas_left}

    def write_status_blocks(self) -> None:
        from agent.report_blocks import queue_status_block

        before = human_fingerprint(self.ws.battle_plan)
        write_blocks(
            self.ws.battle_plan,
            {"queue_status": queue_status_block(self.ledger.records(), self.plan, self.session)},
        )
        # our own block write (which may append a missing block) is not a human edit
        if before == self.plan_sha:
            self.plan_sha = human_fingerprint(self.ws.battle_plan)

    def run(self) -> SessionSummary:
        load_tools()
        self.start()
        stopped = "planner stopped"
        try:
            self.runner.ensure_noise()
            while True:
                reason = self.out_of_budget()
                if reason:
                    stopped = reason
                    break
                proposal = self.decide_once()
                if proposal.action == "stop":
                    stopped = f"planner: {proposal.reason}"
                    self.stop_tokens = proposal.tokens_used
                    break
                outcome = self.runner.run_experiment(
                    proposal, planner=self.planner.name, **self.seed_budget()
                )
                self.planner.observe(outcome)
                self.write_status_blocks()
        finally:
            self.finish(stopped)
            session_lock.release(self.ws.lock)
        return self.summary(stopped)

    def finish(self, stopped: str) -> None:
        try:
            git_records.restore_incumbent(self.ws.root, [SCRIPT_RELPATH, incumbent.INCUMBENT_FILE])
            self.write_status_blocks()
            incumbent.commit_paths(
                self.ws.root,
                ["battle_plan.md"],
                f"session {self.session}: battle plan after the session ({stopped})",
            )
        except Exception as e:  # the ledger is the record; a failed final commit is reported, not fatal
            self.progress.line(f"warning: final bookkeeping failed: {e}")
        try:
            mark_seen(self.ws.frontier_dir)
        except Exception as e:
            self.progress.line(f"warning: could not mark the frontier as seen: {e}")
        self.ledger.append(
            EventRecord(
                session=self.session,
                event="session_end",
                detail={"why": stopped, "at": utcnow(), "tokens": self.stop_tokens},
            )
        )

    def summary(self, stopped: str) -> SessionSummary:
        recs = self.ledger.records()
        mine = [r for r in recs if getattr(r, "session", None) == self.session]
        decisions = [r for r in mine if isinstance(r, DecisionRecord)]
        self.progress.table(
            f"session {self.session}: decisions",
            [
                {
                    "experiment": d.experiment,
                    "outcome": d.outcome,
                    "kept": d.kept,
                    "delta": "" if d.delta is None else f"{d.delta:+.5f}",
                    "p": "" if d.p_value is None else f"{d.p_value:.3g}",
                    "seeds": d.n_candidate,
                }
                for d in decisions
            ],
        )
        busy = sum(r.cost.device_seconds / max(1, self.tier.nproc) for r in mine if isinstance(r, RunRecord))
        return SessionSummary(
            session=self.session,
            branch=f"golf/{self.session}",
            planner=self.planner.name,
            tier=self.tier_name,
            decisions=len(decisions),
            kept=[d.technique or d.candidate for d in decisions if d.kept],
            stopped_because=stopped,
            elapsed_s=round(self.elapsed(), 1),
            trainer_busy_s=round(busy, 1),
            incumbent_bpb=self.runner.incumbent_mean(),
        )


def run_session(
    ws_root: str | Path,
    *,
    planner: Planner,
    tier: str | None = None,
    budget: Budget | None = None,
    session: str | None = None,
    resume: bool = False,
    allow_dirty: bool = False,
    progress: Progress | None = None,
) -> SessionSummary:
    ws = Workspace.at(ws_root)
    return Session(
        ws,
        planner=planner,
        tier=tier,
        budget=budget,
        session=session,
        resume=resume,
        allow_dirty=allow_dirty,
        progress=progress,
    ).run()
