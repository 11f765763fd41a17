"""The records that cross rooms: defined once here so that the ledger, the tools and the judge agree.

Every ledger line is one of these models, told apart by its `kind` field.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# invalid: the run's own report disagrees with trusted counts or the trusted re-score (tools/rescore.py)
RunStatus = Literal["ok", "diverged", "timeout", "error", "crashed", "aborted", "invalid"]
Outcome = Literal["confirmed", "rejected", "inconclusive"]


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RunResult(BaseModel):
    """What trainer/train_gpt.py writes to RUN_DIR/results.json (plus what the sweep adds on failure)."""

    model_config = ConfigDict(extra="allow")

    status: RunStatus
    error: str | None = None
    val_bpb: float | None = None  # roundtrip (post-quantisation) score: the one that counts
    val_bpb_prequant: float | None = None
    val_loss: float | None = None
    val_tokens: int | None = None
    val_bytes: int | None = None
    holdout_bpb: float | None = None
    steps: int | None = None
    train_tokens: int | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None
    bytes_code: int | None = None
    bytes_model: int | None = None
    bytes_total: int | None = None
    over_cap: bool | None = None
    seed: int | None = None
    world_size: int | None = None
    device: str | None = None
    torch_version: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    script_sha256: str | None = None


class Cost(BaseModel):
    device_seconds: float = 0.0
    dollars: float | None = None


class RunRecord(BaseModel):
    """One trainer run: one candidate, one seed, one tier."""

    kind: Literal["run"] = "run"
    at: str = Field(default_factory=utcnow)
    session: str
    run_id: str
    experiment: str  # experiment id shared by all seeds of one candidate
    candidate: str  # human name, e.g. "smear_gate" or "incumbent"
    technique: str | None = None
    hypothesis: str = ""
    tier: str
    hardware: str
    seed: int
    env: dict[str, str] = Field(default_factory=dict)  # overrides on top of the tier
    script_sha: str
    git_commit: str | None = None
    diff: str | None = None
    result: RunResult
    cost: Cost = Field(default_factory=Cost)
    log_path: str | None = None
    run_dir: str | None = None


class PairedNoise(BaseModel):
    """The noise model behind a paired test: the sd of per-seed differences (candidate - incumbent).

    `std`/`df` are what the test used: this experiment's own spread shrunk toward `pool_std`, the
    spread pooled over earlier paired experiments of the same `pool_kind` on the tier (see
    agent/judge.py, paired_prior, for why the pool is split by kind and its weight capped).
    """

    std: float
    df: float
    pool_kind: str  # architecture | training | eval: experiments whose spread may inform this one
    pool_std: float  # the prior: pooled per-seed-difference sd of that kind (or sqrt(2) x A/A std)
    pool_df: float  # degrees of freedom the prior was given here (capped)
    # pooled from experiments of the kind (over the tier's figure when it has one), the tier's figure
    # alone (its paired_noise), or the sqrt(2) x A/A fallback
    pool_source: Literal["kind", "tier", "aa"]
    pool_experiments: int = 0
    own_std: float | None = None  # this experiment's own sd of differences (n >= 2)
    own_n: int = 0


class DecisionRecord(BaseModel):
    """The judge's verdict on one experiment against the incumbent, with its statistics."""

    kind: Literal["decision"] = "decision"
    at: str = Field(default_factory=utcnow)
    session: str
    experiment: str
    candidate: str
    technique: str | None = None
    hypothesis: str = ""
    tier: str
    hardware: str
    outcome: Outcome
    kept: bool
    delta: float | None = None  # candidate - incumbent, bpb (negative is better)
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n_candidate: int = 0
    n_incumbent: int = 0
    noise_std: float | None = None
    candidate_runs: list[str] = Field(default_factory=list)
    incumbent_runs: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    script_sha: str | None = None
    git_commit: str | None = None  # the experiment's commit (kept or not, always reachable)
    git_ref: str | None = None
    reason: str = ""
    planner: str | None = None
    tokens_used: int | None = None
    # which test decided: "paired" on per-seed differences when both arms ran the same seeds, "welch"
    # (unpaired) otherwise; older records carry None
    test: Literal["paired", "welch"] | None = None
    seeds: list[int] = Field(default_factory=list)  # the matched seeds, in order
    seed_diffs: list[float] = Field(default_factory=list)  # candidate - incumbent per seed (paired)
    paired_noise: PairedNoise | None = None


class NoiseRecord(BaseModel):
    """A measured noise figure: A/A runs of the incumbent on one tier and hardware."""

    kind: Literal["noise"] = "noise"
    at: str = Field(default_factory=utcnow)
    session: str
    tier: str
    hardware: str
    script_sha: str
    env: dict[str, str] = Field(default_factory=dict)
    values: list[float]
    std: float  # the noise model's std: measured runs pooled with the tier's prior
    mean: float
    df: float | None = None  # effective degrees of freedom behind std (measured + prior)
    source: str | None = None  # measured | pooled | prior
    prior_std: float | None = None  # the tier's typical_noise it was pooled with (an edit means re-pooling)
    runs: list[str] = Field(default_factory=list)


class FindingRecord(BaseModel):
    """A technique delta written into the battle plan (confirmed or rejected, with its evidence)."""

    kind: Literal["finding"] = "finding"
    at: str = Field(default_factory=utcnow)
    session: str
    technique: str
    status: Outcome
    tier: str
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n: int = 0
    note: str = ""
    experiment: str | None = None


class SpendRecord(BaseModel):
    """Money as it accrues: written while a pod runs, not only at the end."""

    kind: Literal["spend"] = "spend"
    at: str = Field(default_factory=utcnow)
    session: str
    final_id: str
    pod_id: str | None = None
    pod_name: str | None = None  # known before the pod id: ties spend booked during a create to its pod
    gpu_type: str | None = None
    dollars: float
    seconds: float
    price_per_hour: float | None = None
    note: str = ""


class FinalRecord(BaseModel):
    """An 8xH100 final: several seeds of one script revision, judged against the frontier."""

    kind: Literal["final"] = "final"
    at: str = Field(default_factory=utcnow)
    session: str
    final_id: str
    experiment: str | None = None
    script_sha: str
    seeds: list[int]
    val_bpbs: list[float] = Field(default_factory=list)
    status: Literal["ok", "failed", "refused", "partial"]
    frontier_bpb: float | None = None
    p_value: float | None = None
    record_claim: bool = False
    compliance: dict[str, Any] = Field(default_factory=dict)
    dollars: float = 0.0
    submission_dir: str | None = None
    script_rev: str | None = None  # the git revision the script came from (the session's branch)
    env: dict[str, str] = Field(default_factory=dict)  # the env it ran with: the incumbent's, tier's, extra
    note: str = ""


class EventRecord(BaseModel):
    """Anything else worth keeping: session start/stop, a battle-plan edit, a refused tool call, resume."""

    kind: Literal["event"] = "event"
    at: str = Field(default_factory=utcnow)
    session: str
    event: str
    detail: dict[str, Any] = Field(default_factory=dict)


class CalibrationPairRecord(BaseModel):
    """One change measured on a tier against its published full-scale delta (`golf fidelity`).

    These are the tier's own calibration pairs: agent/calibration.py fits the tier's proxy-to-full
    mapping on them (the latest per technique), and the report plots them.
    """

    kind: Literal["calibration_pair"] = "calibration_pair"
    at: str = Field(default_factory=utcnow)
    session: str
    tier: str
    hardware: str
    technique: str
    technique_kind: str  # architecture | training (agent/calibration.py's kinds)
    lower_delta: float  # mean per-seed difference on the tier (candidate - baseline), bpb
    lower_se: float | None = None
    upper_tier: str = "h100x8-final"
    upper_delta: float  # the published full-scale delta
    source: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=list)
    seed_diffs: list[float] = Field(default_factory=list)
    runs: list[str] = Field(default_factory=list)
    script_sha: str | None = None


class FrontierEntry(BaseModel):
    """One leaderboard row with its provenance and legality flags."""

    date: str
    val_bpb: float
    pr: str
    author: str
    status: str  # record | rejected-illegal | rejected-invalid-bytes | non-record | open-claim | merged
    techniques: list[str] = Field(default_factory=list)  # identifiers (see frontier synonym table)
    raw_techniques: str = ""
    unknown_phrases: list[str] = Field(default_factory=list)
    removed_techniques: list[str] = Field(default_factory=list)  # ids this entry dropped ("removed X")
    flags: list[str] = Field(default_factory=list)
    source: str = "snapshot"
    bytes_total: int | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None


AnyRecord = (
    RunRecord
    | DecisionRecord
    | NoiseRecord
    | FindingRecord
    | SpendRecord
    | FinalRecord
    | EventRecord
    | CalibrationPairRecord
)
Record = Annotated[AnyRecord, Field(discriminator="kind")]  # one ledger line, told apart by `kind`
