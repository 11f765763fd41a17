"""launch_local_sweep: run the trainer for candidates x seeds on this machine, one run at a time.

Each run gets its own directory holding the exact script it ran, its environment, logs and results.
A run that already finished with the same experiment, candidate, seed, script and environment is
reused from the ledger instead of run again, which is what makes `golf resume` record nothing twice.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, WithJsonSchema, field_validator

from memory.faults import crash_point, die
from memory.incumbent import candidate_env
from memory.knobs import SAFE_RUNTIME_ENV, caseops_on, check_env_allowed, check_env_syntax, check_tier_fixed
from memory.records import Cost, EventRecord, RunRecord, RunResult
from tools import cleanroom, metric_guard, rescore
from tools.context import ToolContext
from tools.edit_script import incumbent_script, sha256_text
from tools.registry import ToolError, tool

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


# Overrides travel as a list of {name, value} pairs: a free-form object is outside OpenAI's strict subset,
# and a list lets the schema give `name` an enum of the script's knobs (registry.with_env_names).
ENV_PAIRS_SCHEMA = {
    "type": "array",
    "description": "trainer environment overrides: knobs of trainer/train_gpt.py",
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
        "required": ["name", "value"],
        "additionalProperties": False,
    },
}


def env_from_pairs(value: object) -> object:
    """[{name, value}, ...] as {name: value}; a mapping passes through (internal callers); a name given
    twice is refused rather than silently taking one of the values."""
    if not isinstance(value, list):
        return value
    out: dict[str, str] = {}
    for i, pair in enumerate(value):
        if not isinstance(pair, dict) or set(pair) != {"name", "value"}:
            raise ValueError(f"override {i}: must be an object with exactly 'name' and 'value'")
        name = str(pair["name"])
        if name in out:
            raise ValueError(f"override {name!r} given twice")
        out[name] = "" if pair["value"] is None else str(pair["value"])
    return out


class Candidate(BaseModel):
    name: str = Field(description="short slug, e.g. smear_gate")
    env: Annotated[dict[str, str], WithJsonSchema(ENV_PAIRS_SCHEMA)] = Field(default_factory=dict)
    script_revision: Literal["working", "incumbent"] = Field(
        default="working", description="'working' = the script as edited now; 'incumbent' = as committed"
    )

    @field_validator("env", mode="before")
    @classmethod
    def _pairs(cls, v: object) -> object:
        return env_from_pairs(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be a lowercase slug of letters, digits, _ . - (at most 64)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env_syntax(v)


class SweepArgs(BaseModel):
    candidates: list[Candidate] = Field(min_length=1, max_length=4)
    seeds: list[int] = Field(min_length=1, max_length=8)
    tier: str | None = Field(default=None, description="tier name from tiers.toml; default the session's")
    experiment: str | None = Field(default=None, description="experiment id; default derived from the names")
    hypothesis: str = Field(default="", max_length=2000)
    technique: str | None = Field(default=None, max_length=64)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 or s > 2**31 - 1 for s in v) or len(set(v)) != len(v):
            raise ValueError("seeds must be distinct non-negative 32-bit integers")
        return v


class RunSummary(BaseModel):
    run_id: str
    candidate: str
    seed: int
    status: str
    val_bpb: float | None = None
    holdout_bpb: float | None = None
    steps: int | None = None
    train_time_s: float | None = None
    bytes_total: int | None = None
    error_tail: str | None = None
    reused: bool = False


class SweepResult(BaseModel):
    experiment: str
    tier: str
    runs: list[RunSummary]


def host_fingerprint() -> str:
    """Hardware identity: results are pooled only when this string matches."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if r.returncode == 0 and r.stdout.strip():
            gpu = "|" + r.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    model = re.sub(r"\s+", " ", model)[:60]
    return f"{model}x{os.cpu_count()}{gpu}"


def hardware_id(ctx: ToolContext, tier_hw: str) -> str:
    hw = ctx.hardware
    if hw is None:
        hw = ctx.hardware = host_fingerprint()
    return f"{tier_hw}@{hw}"


def _die_with_parent() -> None:
    """Child side: ask the kernel to SIGKILL the trainer if the session process dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _diverging(metrics_path: Path, first_loss: list[float]) -> bool:
    """Early abort: a NaN/inf loss, or a loss far above where the run started."""
    try:
        lines = metrics_path.read_text().splitlines()[-5:]
    except OSError:
        return False
    for line in lines:
        try:
            loss = float(json.loads(line).get("train_loss"))
        except (ValueError, TypeError, AttributeError):
            continue
        if not math.isfinite(loss):
            return True
        if not first_loss:
            first_loss.append(loss)
        elif loss > 3.0 * first_loss[0] + 5.0:
            return True
    return False


def run_trainer(
    script_text: str,
    env: dict[str, str],
    run_dir: Path,
    *,
    nproc: int,
    timeout_s: float,
    python: str = sys.executable,
    on_start: Callable[[int], None] | None = None,
) -> tuple[RunResult, float]:
    """Run one training job in the clean room (tools/cleanroom.py), in its own process group; `env` holds
    the trainer's own names (tier, overrides, harness). Returns its result and wall seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "train_gpt.py"
    script.write_text(script_text, encoding="utf-8")
    env = cleanroom.trainer_env(os.environ, env, run_dir, passthrough=sorted(SAFE_RUNTIME_ENV))
    (run_dir / "env.json").write_text(json.dumps(dict(sorted(env.items())), indent=1))
    results = run_dir / "results.json"
    results.unlink(missing_ok=True)
    cmd = [python, str(script)]
    if nproc > 1:
        cmd = [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(script),
        ]
    cmd = cleanroom.command(cleanroom.probe(python), python, cmd, writable=run_dir)
    t0 = time.time()
    with open(run_dir / "stdout.log", "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=run_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if on_start:
            on_start(proc.pid)
        if crash_point("during_run"):
            time.sleep(1.0)  # the trainer is well under way when the session dies
            die()
        status: str | None = None
        first_loss: list[float] = []
        while proc.poll() is None:
            time.sleep(0.5)
            if time.time() - t0 > timeout_s:
                status = "timeout"
            elif _diverging(run_dir / "metrics.jsonl", first_loss):
                status = "diverged"
            if status:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
    wall = time.time() - t0
    tail = _tail(run_dir / "stdout.log")
    if status is None and results.exists():
        try:
            return RunResult.model_validate_json(results.read_text()), wall
        except ValueError as e:
            return RunResult(status="error", error=f"unreadable results.json: {e}\n{tail}"), wall
    if status == "timeout":
        return RunResult(status="timeout", error=f"killed after {timeout_s:.0f} s\n{tail}"), wall
    if status == "diverged":
        return RunResult(status="diverged", error=f"loss diverged; aborted early\n{tail}"), wall
    return RunResult(status="crashed", error=f"exit code {proc.returncode}, no results.json\n{tail}"), wall


def note_isolation(ctx: ToolContext) -> None:
    """Say once per session how the trainer is isolated; a machine that cannot isolate is said loudly."""
    iso = cleanroom.probe(ctx.python)
    if any(
        e.session == ctx.session and e.event in ("cleanroom", "cleanroom_degraded")
        for e in ctx.ledger.records(EventRecord)
    ):
        return
    event = "cleanroom_degraded" if iso.degraded else "cleanroom"
    ctx.ledger.append(
        EventRecord(
            session=ctx.session,
            event=event,
            detail={
                "mode": iso.mode,
                "network_isolated": iso.network_isolated,
                "golf_hidden": iso.golf_hidden,
                "read_only_fs": iso.read_only_fs,
                "note": iso.note,
            },
        )
    )
    if iso.degraded:
        print(f"WARNING: trainer isolation degraded ({iso.mode}): {iso.note}", file=sys.stderr, flush=True)


def data_env(ctx: ToolContext, env: dict[str, str] | None = None) -> dict[str, str]:
    """Where the trainer finds its data: the embedded dataset tokenized at the run's VOCAB_SIZE, the
    CaseOps variant when the run sets CASEOPS (the trainer refuses data that does not match the knob)."""
    vocab = str((env or {}).get("VOCAB_SIZE", "1024"))
    # a malformed VOCAB_SIZE reaches the trainer, which names it; the sp1024 data is as good a path as any
    data_path, tokenizer_path = ctx.ws.embedded_data(int(vocab) if vocab.isdigit() else 1024, caseops_on(env))
    return {"DATA_PATH": str(data_path), "TOKENIZER_PATH": str(tokenizer_path)}


def find_reusable(
    ctx: ToolContext, experiment: str, candidate: str, seed: int, sha: str, env: dict[str, str], tier: str
) -> RunRecord | None:
    for r in ctx.ledger.records(RunRecord):
        if (
            r.session == ctx.session
            and r.experiment == experiment
            and r.candidate == candidate
            and r.seed == seed
            and r.script_sha == sha
            and r.env == env
            and r.tier == tier
            and r.result.status != "aborted"
        ):
            return r
    return None


def summarize(rec: RunRecord, reused: bool = False) -> RunSummary:
    res = rec.result
    return RunSummary(
        run_id=rec.run_id,
        candidate=rec.candidate,
        seed=rec.seed,
        status=res.status,
        val_bpb=res.val_bpb,
        holdout_bpb=res.holdout_bpb,
        steps=res.steps,
        train_time_s=res.train_time_s,
        bytes_total=res.bytes_total,
        error_tail=(res.error or "")[-800:] or None,
        reused=reused,
    )


def sweep(args: SweepArgs, ctx: ToolContext) -> tuple[SweepResult, list[RunRecord]]:
    tier = ctx.tiers.get(args.tier, None) if args.tier else ctx.tier
    if tier is None:
        raise ToolError(f"unknown tier {args.tier!r}; known: {', '.join(sorted(ctx.tiers))}")
    if not ctx.ws.script.exists():
        raise ToolError(f"no trainer script at {ctx.ws.script}")
    experiment = args.experiment or "adhoc-" + "+".join(c.name for c in args.candidates)[:60]
    if not NAME.match(experiment):
        raise ToolError(f"experiment id {experiment!r} must be a lowercase slug")
    working = ctx.ws.script.read_text(encoding="utf-8")
    incumbent = incumbent_script(ctx.ws.root) or working
    for cand in args.candidates:  # every override is checked against the script it runs, before any run
        text = working if cand.script_revision == "working" else incumbent
        try:
            check_env_allowed(ctx.incumbent_env, text)
        except ValueError as e:
            raise ToolError(f"the incumbent's overrides (incumbent.json or a kept change): {e}") from None
        try:
            check_env_allowed(cand.env, text)
            check_tier_fixed(candidate_env(ctx.incumbent_env, cand.env), tier.env, tier.step_matched)
        except ValueError as e:
            raise ToolError(f"candidate {cand.name}: {e}") from None
        problems = metric_guard.violations(text, reference=incumbent)
        if problems:
            raise ToolError(
                f"candidate {cand.name}: the script may not touch the metric: " + "; ".join(problems)
            )
    hardware = hardware_id(ctx, tier.hardware)
    note_isolation(ctx)
    base_env = {k: str(v) for k, v in tier.env.items()}
    on_run = ctx.on_run
    summaries, records = [], []
    for cand in args.candidates:
        text = working if cand.script_revision == "working" else incumbent
        sha = sha256_text(text)
        for seed in args.seeds:
            overrides = candidate_env(ctx.incumbent_env, cand.env)
            prior = find_reusable(ctx, experiment, cand.name, seed, sha, overrides, tier.name)
            if prior is not None:
                summaries.append(summarize(prior, reused=True))
                records.append(prior)
                continue
            run_id = f"{experiment}-{cand.name}-s{seed}-{int(time.time() * 1000) % 10**8:08d}"
            run_dir = ctx.ws.runs_dir / ctx.session / run_id
            env = (
                base_env
                | data_env(ctx, base_env | overrides)
                | overrides
                | {"RUN_ID": run_id, "RUN_DIR": str(run_dir), "SEED": str(seed)}
            )
            if on_run:
                on_run("start", run_id, None)

            def started(pid: int, run_id: str = run_id) -> None:
                ctx.ledger.append(
                    EventRecord(
                        session=ctx.session, event="run_started", detail={"run_id": run_id, "pid": pid}
                    )
                )

            result, wall = run_trainer(
                text,
                env,
                run_dir,
                nproc=tier.nproc,
                timeout_s=tier.run_timeout_s,
                python=ctx.python,
                on_start=started,
            )
            result = rescore.check_totals(
                result, env, text, incumbent, run_dir
            )  # its results.json is not trusted
            dollars = tier.price_per_hour * wall / 3600 if tier.price_per_hour else None
            rec = RunRecord(
                session=ctx.session,
                run_id=run_id,
                experiment=experiment,
                candidate=cand.name,
                technique=args.technique,
                hypothesis=args.hypothesis,
                tier=tier.name,
                hardware=hardware,
                seed=seed,
                env=overrides,
                script_sha=sha,
                result=result,
                cost=Cost(device_seconds=wall * tier.nproc, dollars=dollars),
                log_path=str(run_dir / "train.log"),
                run_dir=str(run_dir),
                git_commit=ctx.head_sha,
            )
            ctx.ledger.append(rec)
            if on_run:
                on_run("end", run_id, rec)
            summaries.append(summarize(rec))
            records.append(rec)
    return SweepResult(experiment=experiment, tier=tier.name, runs=summaries), records


@tool(
    "launch_local_sweep",
    "Run the trainer for each candidate (environment overrides on the current or incumbent script) and "
    "each seed on the local tier; returns every run's val_bpb or failure. The session's judge, not you, "
    "decides whether a candidate is kept.",
    SweepArgs,
)
def launch_local_sweep(args: SweepArgs, ctx: ToolContext) -> SweepResult:
    return sweep(args, ctx)[0]
