"""One experiment, start to verdict: seeds, the judge, the git record and the ledger's decision.

Order matters for crash safety: runs are in the ledger as they finish; the git record, which carries
the whole decision, is made (idempotently) before the decision is appended; findings and plan blocks
are derived afterwards. Killed before the commit, a resumed session re-proposes the same experiment
id and reuses its finished runs; killed after it, agent/recovery.py takes the committed verdict.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from agent import recovery
from agent.calibration import technique_kind
from agent.judge import (
    PRIOR_DF,
    affordable_seeds,
    noise_kind,
    noise_model,
    paired_pool,
    paired_prior,
    sequential_experiment,
)
from agent.planner import ExperimentSpec, Proposal
from agent.progress import Progress
from agent.state import AA_PREFIX, latest_noise, matching_runs
from memory import incumbent
from memory.faults import crash_point, die
from memory.knobs import check_env_allowed
from memory.records import DecisionRecord, EventRecord, NoiseRecord, Outcome, RunRecord
from tools import registry
from tools.context import ToolContext
from tools.edit_script import SCRIPT_RELPATH, sha256_text, unified_diff
from tools.metric_guard import check_script
from tools.rescore import verify_before_keep
from tools.sweep import Candidate, SweepArgs, sweep

# Both arms run on the same seeds (SEED_BASE, SEED_BASE + 1, ...) and are compared on matched seed sets:
# a step-matched trainer is deterministic per seed, so a seed's own luck (init, data order) is then the
# same on both sides instead of a bias that one fixed seed set would add to every experiment.
SEED_BASE = 1337


class ExperimentError(RuntimeError):
    """The loop cannot go on (the incumbent itself does not train): said plainly, nothing lost."""


def scores(runs: list[RunRecord]) -> list[float]:
    """val_bpb of finished runs (matching_runs and the ok filter guarantee it is set)."""
    return [r.result.val_bpb for r in runs if r.result.val_bpb is not None]


def env_tag(env: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:6]


class ExperimentRunner:
    def __init__(self, ctx: ToolContext, progress: Progress):
        self.ctx = ctx
        self.tier = ctx.tier
        self.progress = progress
        self.hardware = ""
        # why n more runs do not fit the session's budget (None: they fit); the session sets it, so that
        # a further seed is bought only with money and minutes that are left (agent/session.py, afford)
        self.afford: Callable[[int], str | None] | None = None
        ctx.on_run = self._on_run

    def _on_run(self, phase: str, run_id: str, rec: RunRecord | None) -> None:
        if phase == "start":
            self.progress.run_started(run_id)
        elif rec is not None:
            self.progress.run_finished(run_id, rec.result.status, rec.result.val_bpb, rec.cost.device_seconds)

    # -- the incumbent ----------------------------------------------------------------------------
    def incumbent(self) -> tuple[str, str, dict[str, str]]:
        inc = incumbent.in_session(
            self.ctx.ws.root, self.ctx.ledger.records(), self.ctx.session, self.ctx.base_env
        )
        self.ctx.incumbent_env, self.ctx.head_sha = inc.env, inc.rev
        return inc.script, inc.script_sha, inc.env

    def incumbent_runs(self) -> list[RunRecord]:
        """The incumbent's runs, one per seed: its A/A runs and the runs that made it win.

        A kept change's own runs are runs of exactly the new incumbent on their seeds, so they serve as
        its matched baseline instead of being run again: on a step-matched (deterministic) tier a rerun
        on the same seed returns the same number, so re-measuring would only spend runs. They were
        selected for being low (the winner's curse), which makes later candidates' differences
        conservative, never a false win's help.
        """
        _, sha, env = self.incumbent()
        records = self.ctx.ledger.records()
        kept = {d.experiment for d in records if isinstance(d, DecisionRecord) and d.kept}
        by_seed: dict[int, RunRecord] = {}
        for r in matching_runs(records, tier=self.tier.name, hardware=self.hardware, script_sha=sha, env=env):
            if r.experiment.startswith(AA_PREFIX) or r.experiment in kept:
                by_seed.setdefault(r.seed, r)
        return list(by_seed.values())

    def incumbent_mean(self) -> float | None:
        vals = scores(self.incumbent_runs())
        return round(statistics.fmean(vals), 5) if vals else None

    def expected_experiment_s(self) -> float:
        recent = [
            r.cost.device_seconds
            for r in self.ctx.ledger.records(RunRecord)
            if r.tier == self.tier.name and r.result.status == "ok"
        ][-10:]
        per_run = statistics.fmean(recent) if recent else self.tier.run_timeout_s / 4
        return per_run * (self.tier.seeds_initial + 0.5)

    def measure_incumbent(self, seeds: list[int]) -> list[RunRecord]:
        """A/A runs of the incumbent (fresh, never a winner's selected runs) on these seeds."""
        _, sha, env = self.incumbent()
        _, recs = sweep(
            SweepArgs(
                candidates=[Candidate(name="incumbent", script_revision="incumbent")],
                seeds=seeds,
                experiment=f"{AA_PREFIX}{sha[:8]}-{env_tag(env)}",
                hypothesis="A/A: the incumbent against itself measures seed noise",
            ),
            self.ctx,
        )
        return recs

    def matched_incumbent(self, seeds: set[int]) -> list[RunRecord]:
        """The incumbent's runs on exactly the candidate's seeds, running the missing ones first."""
        have = {r.seed for r in self.incumbent_runs()}
        missing = sorted(seeds - have)
        if missing:
            self.measure_incumbent(missing)
        return [r for r in self.incumbent_runs() if r.seed in seeds]

    def ensure_noise(self) -> NoiseRecord:
        """A/A runs of the incumbent until the tier's count, then a noise record for exactly them."""
        _, sha, env = self.incumbent()
        runs = self.incumbent_runs()
        missing = self.tier.noise_runs - len(runs)
        if missing > 0:
            used = {r.seed for r in runs}
            seeds = [s for s in range(SEED_BASE, SEED_BASE + 100) if s not in used][:missing]
            self.progress.line(f"measuring noise: {missing} A/A run(s) of the incumbent on {self.tier.name}")
            recs = self.measure_incumbent(seeds)
            runs = self.incumbent_runs()
            if not runs:
                failed = recs[-1].result if recs else None
                raise ExperimentError(
                    "the incumbent does not train on this tier: "
                    + (f"{failed.status}: {(failed.error or '')[-1500:]}" if failed else "no runs")
                )
        vals = scores(runs)
        prev = latest_noise(self.ctx.ledger.records(), self.tier.name, self.hardware)
        if (
            prev is not None
            and prev.script_sha == sha
            and prev.env == env
            and sorted(prev.values) == sorted(vals)
            and prev.prior_std == self.tier.typical_noise
        ):
            return prev
        nm = noise_model(vals, prior_std=self.tier.typical_noise, tier=self.tier.name, hardware=self.hardware)
        rec = NoiseRecord(
            session=self.ctx.session,
            tier=self.tier.name,
            hardware=self.hardware,
            script_sha=sha,
            env=env,
            values=vals,
            std=nm.std,
            mean=statistics.fmean(vals),
            df=nm.df,
            source=nm.source,
            prior_std=self.tier.typical_noise,
            runs=[r.run_id for r in runs],
        )
        self.ctx.ledger.append(rec)
        self.progress.line(
            f"noise: std {nm.std:.5f} bpb ({nm.source}, n={len(vals)}), incumbent mean {rec.mean:.5f}"
        )
        return rec

    # -- one experiment ---------------------------------------------------------------------------
    def same_scores(self, cand: list[RunRecord], inc_ids: list[str]) -> bool:
        by_id = {r.run_id: r for r in self.incumbent_runs()}
        inc = {by_id[i].seed: by_id[i].result.val_bpb for i in inc_ids if i in by_id}
        return bool(cand) and all(inc.get(r.seed) == r.result.val_bpb for r in cand)

    def bytes_note(self, cand: list[RunRecord], inc_ids: list[str]) -> str:
        inc = [
            r.result.bytes_total
            for r in self.incumbent_runs()
            if r.run_id in inc_ids and r.result.bytes_total
        ]
        got = [r.result.bytes_total for r in cand if r.result.bytes_total]
        if inc and got and statistics.fmean(got) != statistics.fmean(inc):
            return (
                f"a bytes-only change (artifact {statistics.fmean(got) - statistics.fmean(inc):+,.0f} bytes): "
                "worth what the freed bytes can buy, not a bpb win by itself"
            )
        return (
            "the change does not reach the computation at this tier's shape (check the flag's thresholds, "
            "e.g. INT8_KEEP_FLOAT_MAX_NUMEL or TTT_CHUNK_TOKENS)"
        )

    def experiment_id(self, spec: ExperimentSpec) -> str:
        k = 1 + sum(1 for d in self.ctx.ledger.records(DecisionRecord) if d.session == self.ctx.session)
        return f"e{k:03d}-{spec.name}"[:64]

    def refuse(self, spec: ExperimentSpec | None, why: str) -> dict[str, Any]:
        self.ctx.ledger.append(
            EventRecord(
                session=self.ctx.session,
                event="proposal_refused",
                detail={"experiment": spec.model_dump() if spec else None, "why": why},
            )
        )
        self.progress.line(f"proposal refused: {why}")
        return {"outcome": "refused", "reason": why}

    def expected_run_s(self) -> float:
        return self.expected_experiment_s() / (self.tier.seeds_initial + 0.5)

    def seeds_max(self, runs_left: float | None, ideas_left: int | None) -> int:
        """The tier's seeds_max, or on an adaptive tier what the runs left after the untested ideas afford."""
        if not self.tier.adaptive_seeds:
            return self.tier.seeds_max
        return affordable_seeds(
            runs_left, ideas_left, seeds_initial=self.tier.seeds_initial, seeds_max=self.tier.seeds_max
        )

    def first_seed(self, spec: ExperimentSpec) -> int:
        """SEED_BASE; on an adaptive tier, a further look at an idea starts on seeds its earlier looks did not
        run (tiers.seeds_max apart), because a step-matched trainer repeats a seed's number exactly and
        a second look on the same seeds against the same incumbent would only buy the same verdict."""
        if not self.tier.adaptive_seeds:
            return SEED_BASE
        name = spec.technique or spec.name
        tries = sum(
            1
            for d in self.ctx.ledger.records(DecisionRecord)
            if (d.technique or d.candidate) == name
            and d.tier == self.tier.name
            and d.hardware == self.hardware
        )
        return SEED_BASE + tries * self.tier.seeds_max

    def run_experiment(
        self,
        proposal: Proposal,
        planner: str = "",
        *,
        runs_left: float | None = None,
        ideas_left: int | None = None,
    ) -> dict[str, Any]:
        """One experiment; runs_left and ideas_left (the session's budget in runs and the planner's
        untested ideas, None where unknown) size its seed schedule on an adaptive_seeds tier."""
        spec = proposal.experiment
        if spec is None:
            return self.refuse(None, "an experiment proposal needs an experiment")
        inc_text, inc_sha, inc_env = self.incumbent()
        working = self.ctx.ws.script.read_text()
        try:
            Candidate(name=spec.name, env=spec.env)
            check_env_allowed(spec.env, working)
            check_script(working, inc_text)
        except ValidationError as e:
            return self.refuse(spec, registry.format_validation_error(e))
        except ValueError as e:
            return self.refuse(spec, str(e))
        cand_env = incumbent.candidate_env(inc_env, spec.env)
        if working == inc_text and cand_env == inc_env:
            return self.refuse(
                spec, "no change: the script equals the incumbent and the overrides are already set"
            )
        noise = self.ensure_noise()
        inc_runs: list[RunRecord] = []
        exp_id = self.experiment_id(spec)
        self.progress.line(f"{exp_id}: {spec.hypothesis[:120] or spec.name}")
        seeds_max = self.seeds_max(runs_left, ideas_left)
        first = self.first_seed(spec)
        seeds_all = list(range(first, first + seeds_max))
        runs: list[RunRecord] = []
        budget_stop = ""
        kind = noise_kind(
            spec.technique,
            [k for k in cand_env if cand_env.get(k) != inc_env.get(k)],
            script_changed=working != inc_text,
        )
        pool = paired_pool(
            self.ctx.ledger.records(DecisionRecord),
            tier=self.tier.name,
            hardware=self.hardware,
            kind=kind,
            exclude=exp_id,
        )
        diff_prior = paired_prior(
            pool,
            noise.std,
            noise.df or PRIOR_DF,
            kind,
            tier_std=self.tier.paired_noise,
            tier_df=self.tier.paired_noise_df,
        )

        def measure(seeds: list[int]) -> tuple[dict[int, float], dict[int, float]] | None:
            nonlocal inc_runs, budget_stop
            if runs and self.afford is not None:  # a further look: its runs must fit what is left
                have = {r.seed for r in self.incumbent_runs()}
                why = self.afford(len(seeds) + sum(s not in have for s in seeds))
                if why:
                    budget_stop = f"no further seed: {why}"
                    self.progress.line(f"{exp_id}: {budget_stop}")
                    return None
            _, recs = sweep(
                SweepArgs(
                    candidates=[Candidate(name=spec.name, env=spec.env)],
                    seeds=seeds,
                    experiment=exp_id,
                    hypothesis=spec.hypothesis,
                    technique=spec.technique,
                ),
                self.ctx,
            )
            runs.extend(recs)
            ok = [r for r in runs if r.result.status == "ok" and r.result.val_bpb is not None]
            if len(ok) < len(runs):
                return (
                    None  # a crashed, diverged or timed-out seed ends the experiment: it is not a safe change
                )
            inc_runs = self.matched_incumbent({r.seed for r in ok})
            return (
                {r.seed: float(r.result.val_bpb or 0.0) for r in inc_runs},
                {r.seed: float(r.result.val_bpb or 0.0) for r in ok},
            )

        verdict = sequential_experiment(
            measure,
            seeds=seeds_all,
            seeds_initial=min(self.tier.seeds_initial, seeds_max),
            seeds_max=seeds_max,
            alpha=self.tier.alpha,
            min_effect=self.tier.min_effect,
            noise_std=noise.std,
            noise_df=noise.df,
            diff_prior=diff_prior,
            futility_p=self.tier.futility_p,
        )
        if budget_stop and verdict is not None:  # the judge wanted more; the budget said no
            verdict = verdict.model_copy(update={"reason": f"{verdict.reason}; {budget_stop}"})
        return self.decide(
            spec,
            proposal,
            planner,
            exp_id,
            runs,
            verdict,
            scores(inc_runs),
            [r.run_id for r in inc_runs],
            noise,
            working,
            inc_text,
            cand_env,
        )

    def decide(
        self,
        spec,
        proposal,
        planner,
        exp_id,
        runs,
        verdict,
        inc_vals,
        inc_ids,
        noise,
        working,
        inc_text,
        cand_env,
    ) -> dict[str, Any]:
        ok = [r for r in runs if r.result.status == "ok" and r.result.val_bpb is not None]
        failed = [r for r in runs if r not in ok]
        over_cap = [r for r in ok if r.result.over_cap]
        outcome: Outcome = verdict.outcome if verdict else "rejected"
        reason = verdict.reason if verdict else ""
        if failed:
            outcome = "rejected"
            reason = (
                f"{len(failed)} of {len(runs)} seed(s) failed ({failed[0].result.status}): "
                + (failed[0].result.error or "")[-300:]
            )
        elif over_cap:
            outcome, reason = (
                "rejected",
                f"artifact over the 16,000,000-byte cap ({over_cap[0].result.bytes_total:,})",
            )
        elif inc_vals and self.same_scores(ok, inc_ids):
            outcome, reason = (
                "rejected",
                "no effect: identical val_bpb on every matched seed; " + self.bytes_note(ok, inc_ids),
            )
        elif outcome == "rejected" and verdict is not None and self.tier.hardware == "cpu":
            # a technique this tier cannot see (golf fidelity, or a kind that does not transfer from it) is
            # not rejected on its evidence: it waits for a GPU tier
            from agent.fidelity import needs_gpu_tier  # fidelity runs experiments' seeds: import here

            kind = technique_kind(spec.technique, list(spec.env), working != inc_text)
            blind = needs_gpu_tier(self.ctx.ledger.records(), self.tier.name, spec.technique, kind)
            if blind:
                outcome, reason = "inconclusive", f"needs a GPU tier: {blind}; the judge said: {reason}"
        elif outcome == "confirmed":
            hold_c = [r.result.holdout_bpb for r in ok if r.result.holdout_bpb is not None]
            hold_i = [r.result.holdout_bpb for r in self.incumbent_runs() if r.result.holdout_bpb is not None]
            if hold_c and hold_i and statistics.fmean(hold_c) >= statistics.fmean(hold_i):
                outcome = "inconclusive"
                reason = (
                    f"wins on val but not on the held-out slice (holdout delta "
                    f"{statistics.fmean(hold_c) - statistics.fmean(hold_i):+.5f}): may fit the selection set"
                )
        if outcome == "confirmed":  # trusted code re-scores the artifact; an implausible score is quarantined
            keep_ok, reason = verify_before_keep(self.ctx, ok, inc_vals, working, inc_text, reason)
            outcome = outcome if keep_ok else "rejected"
        kept = outcome == "confirmed"
        diff = unified_diff(inc_text, working) if working != inc_text else ""
        v = verdict
        stats = (
            (
                f"delta {v.delta:+.5f} bpb (CI [{v.ci_low:+.5f}, {v.ci_high:+.5f}]), p={v.p_value:.3g}, "
                f"n={v.n_candidate} vs {v.n_incumbent}, {v.test or 'welch'} test, "
                f"{'sd of differences' if v.test == 'paired' else 'noise std'} {v.noise_std:.5f}"
            )
            if v and v.delta is not None
            else "no valid measurement"
        )
        message = "\n".join(
            [
                f"{exp_id}: {spec.name} -> {outcome} ({'kept' if kept else 'discarded'})",
                "",
                f"Hypothesis: {spec.hypothesis or '(none given)'}",
                f"Change: env {json.dumps(spec.env, sort_keys=True)}; script diff {len(diff.splitlines())} lines",
                f"Result: {stats}",
                f"Runs: {', '.join(f'{r.run_id}={r.result.val_bpb}' for r in runs)}",
                f"Decision: {'kept: the branch advances' if kept else 'discarded: the branch keeps the incumbent'}"
                f"; {reason}",
                f"Tier: {self.tier.name} on {self.hardware}; planner {planner}; proposal: {proposal.reason[:200]}",
            ]
        )
        dec = DecisionRecord(
            session=self.ctx.session,
            experiment=exp_id,
            candidate=spec.name,
            technique=spec.technique,
            hypothesis=spec.hypothesis,
            tier=self.tier.name,
            hardware=self.hardware,
            outcome=outcome,
            kept=kept,
            delta=v.delta if v else None,
            ci_low=v.ci_low if v else None,
            ci_high=v.ci_high if v else None,
            p_value=v.p_value if v else None,
            n_candidate=len(ok),
            n_incumbent=len(inc_vals),
            noise_std=noise.std,
            candidate_runs=[r.run_id for r in runs],
            incumbent_runs=inc_ids,
            env=cand_env,
            script_sha=sha256_text(working),
            reason=reason,
            planner=planner,
            tokens_used=proposal.tokens_used or None,
            test=v.test if v else None,
            seeds=list(v.seeds) if v else [],
            seed_diffs=list(v.seed_diffs) if v else [],
            paired_noise=v.paired_noise if v else None,
        )
        # the commit carries the decision, so a crash before the ledger has it loses nothing (agent/recovery.py)
        commit = recovery.record_commit(
            self.ctx,
            exp_id,
            recovery.note_with_decision(message, dec),
            kept,
            {SCRIPT_RELPATH: working, incumbent.INCUMBENT_FILE: incumbent.file_text(cand_env, exp_id)},
        )
        if crash_point("after_commit"):
            die()
        dec = dec.model_copy(update={"git_commit": commit.candidate_sha, "git_ref": commit.ref})
        self.ctx.ledger.append(dec)
        recovery.derive(self.ctx, dec)
        self.progress.line(f"{exp_id}: {outcome} ({'kept' if kept else 'discarded'}) {stats}")
        if kept:
            self.ensure_noise()  # the incumbent changed: fresh A/A runs on new seeds re-measure it
        return dec.model_dump(exclude={"incumbent_runs", "session", "at"})
