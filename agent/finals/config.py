"""What a final is asked to do (FinalRequest), the hardware and time bounds it runs under (FinalConfig),
and what it will do once resolved (FinalPlan: the object `golf final --dry-run` prints)."""

from __future__ import annotations

from pydantic import BaseModel, Field

DEFAULT_SEEDS = [1337, 42, 2025, 7, 31337, 1234, 4242, 9001]
# the challenge's requirements.txt, less torch (the image's) and wandb (never used on a final)
CHALLENGE_PACKAGES = (
    "numpy",
    "brotli",
    "tqdm",
    "huggingface-hub",
    "kernels",
    "setuptools",
    "datasets",
    "tiktoken",
    "sentencepiece",
    "zstandard",
)


class FinalRefused(Exception):
    pass


class Rung(BaseModel):
    gpu_type: str
    cloud_type: str = "SECURE"


class FinalConfig(BaseModel):
    """Everything a final needs to know about hardware, time and limits. Defaults: the real challenge."""

    ladder: list[Rung] = Field(
        default_factory=lambda: [
            Rung(gpu_type="NVIDIA H100 80GB HBM3", cloud_type="SECURE"),
            Rung(gpu_type="NVIDIA H100 80GB HBM3", cloud_type="COMMUNITY"),
        ]
    )
    gpu_count: int = 8
    image: str = "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"
    # hosts whose driver runs CUDA 12.8 images; an older driver never starts the container but bills
    allowed_cuda_versions: list[str] = Field(default_factory=lambda: ["12.8", "12.9", "13.0"])
    # a RunPod template id (the challenge's official one is y5cejece4j); None: the image alone
    template_id: str | None = None
    container_disk_gb: int = 120
    agent_port: int = 8000
    max_price_per_hour: float = 40.0  # for the whole pod: a rung above this is never used
    # time bounds (seconds); the bounded duration prices the final before anything is created
    runtime_wait_s: float = 600.0  # create -> runtime and agent answering; longer: terminate, next rung
    setup_s: float = 1200.0  # pip + FineWeb shards download on the pod
    train_s: float = 600.0
    eval_s: float = 600.0
    per_seed_margin_s: float = 300.0  # torch.compile, loading, export, writing the artifact
    teardown_s: float = 180.0  # fetching files, terminate confirmation
    deadman_grace_s: float = 120.0  # the pod kills itself this long after the bounded duration
    deadman_slack_s: float = 150.0  # how long the switch may take to end the pod (runpodctl's timeout)
    agent_idle_s: float = 900.0  # ... or after this long without hearing from us
    agent_lost_s: float = 300.0  # we give up on a pod whose agent stays unreachable this long
    invisible_s: float = 120.0  # how long a pod may answer null before we stop waiting for it
    create_lookup_s: float = 120.0  # after an ambiguous create: how long we look for the pod by name
    lookup_poll_s: float = 5.0
    poll_s: float = 10.0
    spend_interval_s: float = 60.0  # a SpendRecord at least this often while a pod lives
    # the stock figure is a hint: RunPod has said "none" and "High" while the opposite was true, and a
    # refused create costs nothing, so by default we try a rung whatever its reported stock
    skip_unstocked: bool = False
    ladder_rounds: int = 1
    ladder_pause_s: float = 60.0
    # the job on the pod (run in the uploaded directory `job/`)
    train_shards: int = 80
    setup_cmd: str = (
        "python3 -m pip install --quiet " + " ".join(CHALLENGE_PACKAGES) + " 2>&1 | tail -n 3; "
        "python3 prepare_data.py --variant fineweb --vocab {vocab}{caseops_flag} --out data "
        "--train-shards {train_shards} --if-missing"
    )
    # what a script may import on the pod besides the standard library: the image's and setup's
    pod_modules: list[str] = Field(
        default_factory=lambda: [
            "torch",
            "triton",
            "numpy",
            "sentencepiece",
            "zstandard",
            "zstd",
            "brotli",
            "tqdm",
            "huggingface_hub",
            "kernels",
            "setuptools",
            "datasets",
            "tiktoken",
            "typing_extensions",
            "pkg_resources",
        ]
    )
    launcher: str = "torchrun --standalone --nproc_per_node={gpu_count}"
    # the shards and tokenizer of the run's VOCAB_SIZE (the incumbent's; 1024 when it sets none), the
    # records' CaseOps download when it sets CASEOPS (caseops_tag: prepare_data.CASEOPS_FINEWEB_TAG)
    data_path: str = "data/datasets/fineweb10B_sp{vocab}{caseops_tag}"
    tokenizer_path: str = "data/tokenizers/fineweb_{vocab}_bpe{caseops_tag}.model"
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

    def pod_lifetime_s(self, n_seeds: int) -> float:
        """The most one pod can live, even if this process dies: its dead man's switch ends it then."""
        return self.bounded_duration_s(n_seeds) + self.deadman_grace_s


class Submission(BaseModel):
    """Who the records folder names, if the final clears the rule."""

    name: str | None = None
    author: str | None = None
    github_id: str | None = None
    blurb: str | None = None


class FinalRequest(BaseModel):
    """What `golf final` (or a caller) asks for. Nothing here is trusted to grant money except `approve`,
    which only a human sets."""

    workspace: str
    session: str | None = None  # whose branch's incumbent; default: the last session
    seeds: int | list[int] = 3
    approve: bool = False
    dollars: float | None = None  # this final's cap
    session_dollars: float | None = None  # a tighter cap on the session's finals
    script_rev: str | None = None  # default: the session's branch golf/<session>, else HEAD
    env: dict[str, str] = Field(default_factory=dict)  # on top of the incumbent's env
    frontier: list[float] | float | None = None  # default: the best legal leaderboard score
    frontier_std: float | None = None
    submission: Submission = Field(default_factory=Submission)
    config: FinalConfig = Field(default_factory=FinalConfig)


class RungPrice(BaseModel):
    gpu_type: str
    cloud_type: str
    price_per_hour: float | None  # whole pod; None: unknown (no key, or the API did not say)
    worst_case_dollars: float | None
    note: str = ""


class FinalPlan(BaseModel):
    """What a final will do, resolved before any pod exists: printed by `golf final --dry-run`."""

    session: str
    final_id: str
    seeds: list[int]
    image: str
    template_id: str | None
    allowed_cuda_versions: list[str]
    gpu_count: int
    rungs: list[RungPrice]
    pod_lifetime_s: float  # per pod, the dead man's switch included
    worst_case_dollars: float  # the dearest usable rung (or the price ceiling when unpriced) x lifetime
    cap_dollars: float | None  # what this final may spend (None: no budget given yet)
    granted_by: str  # "" when not approved
    script_from: str
    script_rev: str | None
    script_sha: str
    env: dict[str, str]
    experiment: str | None = None
    problems: list[str] = Field(default_factory=list)  # why it would be refused; empty: it would run

    def text(self) -> str:
        h = self.pod_lifetime_s / 3600
        lines = [
            f"final {self.final_id} for session {self.session}: {len(self.seeds)} seed(s) {self.seeds}",
            f"  script: {self.script_from} sha256 {self.script_sha[:12]}",
            f"  env: {self.env}",
            f"  image: {self.image}" + (f" (template {self.template_id})" if self.template_id else ""),
            f"  CUDA drivers allowed: {', '.join(self.allowed_cuda_versions)}",
            f"  pod: {self.gpu_count} GPUs, at most {h:.2f} h each (bounded duration + dead man's grace)",
        ]
        for r in self.rungs:
            price = "unpriced" if r.price_per_hour is None else f"${r.price_per_hour:.2f}/h"
            cost = "" if r.worst_case_dollars is None else f" -> worst case ${r.worst_case_dollars:.2f}"
            lines.append(
                f"  rung {r.gpu_type} / {r.cloud_type}: {price}{cost}{' (' + r.note + ')' if r.note else ''}"
            )
        cap = "none given" if self.cap_dollars is None else f"${self.cap_dollars:.2f}"
        lines.append(
            f"  worst case: ${self.worst_case_dollars:.2f}; cap: {cap}; approval: "
            f"{self.granted_by or 'not given'}"
        )
        lines += [f"  would be refused: {p}" for p in self.problems] or ["  would run"]
        return "\n".join(lines)


def seed_list(seeds: int | list[int]) -> list[int]:
    if isinstance(seeds, int):
        if not 1 <= seeds <= len(DEFAULT_SEEDS):
            raise ValueError(f"seeds must be 1..{len(DEFAULT_SEEDS)}")
        return DEFAULT_SEEDS[:seeds]
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError("seeds must be distinct and at least one")
    return out
