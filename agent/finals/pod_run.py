"""One final's pod, from create to terminate, and the jobs run on it.

Money rules kept here: a rung is tried only if its price x the pod's whole possible lifetime fits what
is left of the cap; a pod that may exist (a create that errored, a pod not yet listed or briefly
answering null, a terminate not confirmed) is never dropped and no other rung starts while it may
bill; a pod whose container does not come up in runtime_wait_s is terminated before the next rung."""

from __future__ import annotations

import collections
import hashlib
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent.finals.config import FinalConfig, FinalRefused, Rung
from agent.finals.money import Budget, OpenPod, SpendMeter, close_pod, open_pod
from agent.finals.naming import pod_stem
from memory.knobs import caseops_on
from memory.ledger import Ledger
from memory.records import EventRecord, RunResult
from memory.workspace import Workspace
from pods.backend import (
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


class SeedOutcome(BaseModel):
    seed: int
    result: RunResult
    job_wall_s: float | None = None
    files: list[str] = Field(default_factory=list)
    digest: list[str] = Field(default_factory=list)


_DIGEST_KEEP = re.compile(
    r"(val_bpb|val_loss|error|Error|Traceback|step[: ]\s*\d+|artifact|bytes|"
    r"stopping|warn|OOM|Killed|results)",
    re.I,
)


class Digest:
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
        return out[-2 * self.n :]


class PodRun:
    """One final's lifecycle on one backend. All pod-touching state lives here so `finally` sees it."""

    def __init__(
        self,
        *,
        ws: Workspace,
        ledger: Ledger,
        backend: PodBackend,
        cfg: FinalConfig,
        session: str,
        final_id: str,
        seeds: list[int],
        budget: Budget,
        env: dict[str, str],
        log: Callable[[str], None],
    ):
        self.ws, self.ledger, self.backend, self.cfg = ws, ledger, backend, cfg
        self.session, self.final_id, self.seeds, self.budget = session, final_id, seeds, budget
        self.env, self.log = env, log
        self.meter = SpendMeter(ledger, session, final_id, cfg.spend_interval_s)
        self.pod: Pod | None = None
        self.ref: AgentRef | None = None
        self.rung: Rung | None = None
        self.attempt = 0
        self.out_dir = ws.state_dir / "finals" / final_id
        self.name_stem = pod_stem(session, final_id)

    @property
    def agent(self) -> AgentRef:
        assert self.ref is not None, "no pod agent yet"
        return self.ref

    @property
    def pod_id(self) -> str:
        assert self.pod is not None, "no pod"
        return self.pod.id

    def event(self, event: str, **detail: Any) -> None:
        self.ledger.append(
            EventRecord(session=self.session, event=event, detail={"final_id": self.final_id, **detail})
        )

    # -- money guard

    def lifetime_s(self) -> float:
        return self.cfg.pod_lifetime_s(len(self.seeds))

    def contact_gap_s(self) -> float:
        """How long after the meter's last booking we may still have talked to the pod's agent (which
        restarts its idle switch): a poll interval, a fetch of the seed's files, an unreachable spell."""
        return self.cfg.spend_interval_s + self.cfg.teardown_s + self.cfg.agent_lost_s

    def check_money(self, what: str, extra_s: float) -> None:
        """Refuse to go on if finishing `what` (extra_s more of pod time) could cross the cap."""
        projected = self.meter.projected(extra_s)
        if projected > self.budget.cap:
            raise FinalRefused(
                f"budget: {what} would bring this final to ${projected:.2f} "
                f"(at ${self.meter.price:.2f}/h), over its cap ${self.budget.cap:.2f}"
            )

    # -- acquiring a pod

    def acquire(self) -> None:
        misses: list[str] = []
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
                    misses.append(
                        f"{rung.gpu_type}/{rung.cloud_type}: ${price:.2f}/h over the "
                        f"${self.cfg.max_price_per_hour:.2f}/h ceiling"
                    )
                    continue
                worst_s = self.lifetime_s()  # the most a pod can live, even if we die
                need = self.meter.total + price * worst_s / 3600.0
                if need > self.budget.cap:
                    misses.append(
                        f"{rung.gpu_type}/{rung.cloud_type}: ${price:.2f}/h x "
                        f"{worst_s / 3600:.2f} h bounded = ${price * worst_s / 3600:.2f} "
                        f"(+ ${self.meter.total:.2f} spent) > cap ${self.budget.cap:.2f}"
                    )
                    continue
                if self._try_rung(rung, price, misses):
                    return
        raise FinalRefused("no pod: " + "; ".join(misses))

    def _try_rung(self, rung: Rung, price: float, misses: list[str]) -> bool:
        """True: a pod is up. False: nothing of this rung can bill any more, the next may be tried.
        Raises PodError when a pod of this rung may still exist."""
        self.attempt += 1
        name = f"{self.name_stem}-{self.attempt}"
        token = new_agent_token()
        created = time.time()
        # the pod's own deadline, from the moment we create it: the budget check above priced exactly this
        # (whole seconds, rounded down: the pod and the ledger hold the same moment)
        deadline = float(math.floor(created + self.lifetime_s()))
        spec = PodSpec(
            name=name,
            gpu_type=rung.gpu_type,
            gpu_count=self.cfg.gpu_count,
            cloud_type=rung.cloud_type,
            image=self.cfg.image,
            start_cmd=agent_start_cmd(),
            ports=f"{self.cfg.agent_port}/http",
            container_disk_gb=self.cfg.container_disk_gb,
            allowed_cuda_versions=self.cfg.allowed_cuda_versions or None,
            template_id=self.cfg.template_id,
            env={
                "PGOLF_AGENT_TOKEN": token,
                "PGOLF_AGENT_B64": agent_payload(),
                "PGOLF_AGENT_PORT": str(self.cfg.agent_port),
                "PGOLF_AGENT_DEADLINE_UNIX": f"{deadline:.0f}",
                "PGOLF_AGENT_IDLE_S": f"{self.cfg.agent_idle_s:.0f}",
            },
        )
        self.log(
            f"final {self.final_id}: creating {name} ({rung.gpu_type} x{self.cfg.gpu_count}, "
            f"{rung.cloud_type}, ${price:.2f}/h)"
        )
        # in the ledger before the call: a SIGKILL during it still leaves the pod to be settled
        open_pod(
            self.ledger,
            OpenPod(
                session=self.session,
                final_id=self.final_id,
                name=name,
                gpu_type=rung.gpu_type,
                price_per_hour=price,
                created_unix=created,
                deadline_unix=deadline,
                idle_s=self.cfg.agent_idle_s,
                slack_s=self.cfg.deadman_slack_s,
                contact_gap_s=self.contact_gap_s(),
            ),
        )
        self.meter.start(price, rung.gpu_type, name)
        try:
            pod = self.backend.create(spec)
        except NoCapacity as e:
            self.meter.cancel()  # the provider refused: nothing was created, nothing bills
            close_pod(self.ledger, self.session, name, None, "no capacity: not created")
            misses.append(f"{rung.gpu_type}/{rung.cloud_type}: no capacity")
            self.event(
                "final_no_capacity", gpu_type=rung.gpu_type, cloud_type=rung.cloud_type, error=str(e)[:300]
            )
            return False
        except CreateFailed as e:
            if not e.maybe_created:
                self.meter.cancel()
                close_pod(self.ledger, self.session, name, None, "create refused: not created")
                misses.append(f"{rung.gpu_type}/{rung.cloud_type}: create failed")
                self.event(
                    "final_create_failed",
                    gpu_type=rung.gpu_type,
                    cloud_type=rung.cloud_type,
                    error=str(e)[:300],
                )
                return False
            self.event("final_create_ambiguous", name=name, error=str(e)[:300])
            found = self._look_for(name)
            if found is None:
                self.meter.book(
                    f"create failed; {name} not listed in {self.cfg.create_lookup_s:.0f}s",
                    force=True,
                    stop=True,
                )
                self.event("final_pod_unresolved", name=name, looked_s=self.cfg.create_lookup_s)
                raise PodError(
                    f"create of {name} failed and no such pod was listed within "
                    f"{self.cfg.create_lookup_s:.0f}s: it may still exist, so no other rung is "
                    f"tried; it stays in the ledger until `golf pods --reap` settles it"
                ) from e
            pod = found
            self.event("final_pod_found_late", pod_id=pod.id, name=name)
        except BaseException:
            # unknown outcome (auth, a signal mid-call, a bug): a pod of this name might exist; find it
            # so that `finally` terminates it, then let the error through
            self._adopt_by_name(name, rung, token)
            raise
        self._adopt(pod, rung, token)
        self.event(
            "final_pod_created",
            pod_id=pod.id,
            name=name,
            gpu_type=rung.gpu_type,
            cloud_type=rung.cloud_type,
            price_per_hour=self.meter.price,
        )
        if self._wait_ready():
            return True
        misses.append(
            f"{rung.gpu_type}/{rung.cloud_type}: pod {pod.id} not running in {self.cfg.runtime_wait_s:.0f}s"
        )
        self.event("final_pod_stuck", pod_id=pod.id, waited_s=self.cfg.runtime_wait_s)
        if not self.release("no runtime in time"):
            raise PodError(
                f"pod {pod.id} did not start and its terminate was not confirmed: no other rung is "
                "tried while it may bill"
            )
        return False

    def _look_for(self, name: str) -> Pod | None:
        """A create that failed ambiguously: the pod may be listed late. The meter keeps running."""
        until = time.monotonic() + self.cfg.create_lookup_s
        while True:
            try:
                hits = [p for p in self.backend.list() if p.name == name and p.alive]
            except Exception:  # noqa: BLE001 - the next look may work
                hits = []
            if hits:
                return hits[0]
            if time.monotonic() >= until:
                return None
            self.meter.book()
            time.sleep(min(self.cfg.lookup_poll_s, max(0.05, until - time.monotonic())))

    def _adopt(self, pod: Pod, rung: Rung, token: str) -> None:
        self.pod, self.rung = pod, rung
        self.ref = AgentRef(pod.id, self.cfg.agent_port, token)
        self.meter.attach(pod.id, pod.cost_per_hr)

    def _adopt_by_name(self, name: str, rung: Rung, token: str) -> None:
        try:
            pod = self.backend.find_by_name(name)
        except Exception:  # noqa: BLE001 - best effort; the pod stays open in the ledger for the reaper
            pod = None
        if pod is not None:
            self._adopt(pod, rung, token)
        else:
            self.meter.book("create interrupted; pod not found", force=True, stop=True)

    def _wait_ready(self) -> bool:
        """The container running (a runtime) and the agent answering, within runtime_wait_s. A pod that
        answers null is looked at again for up to invisible_s: briefly invisible is not gone."""
        deadline = time.monotonic() + self.cfg.runtime_wait_s
        unseen_since: float | None = None
        while time.monotonic() < deadline:
            self.meter.book()
            try:
                pod = self.backend.get(self.pod_id)
            except Exception as e:  # noqa: BLE001 - a read that failed is not an answer about the pod
                self.log(f"final {self.final_id}: reading pod {self.pod_id} failed: {str(e)[:120]}")
                pod = None
            if pod is None:
                unseen_since = unseen_since or time.monotonic()
                if time.monotonic() - unseen_since > self.cfg.invisible_s:
                    self.event("final_pod_invisible", pod_id=self.pod_id, unseen_s=self.cfg.invisible_s)
                    return False
            elif not pod.alive:
                self.event("final_pod_vanished", pod_id=self.pod_id, during="start")
                return False
            else:
                if unseen_since is not None:
                    self.event(
                        "final_pod_visible_again",
                        pod_id=pod.id,
                        unseen_s=round(time.monotonic() - unseen_since, 1),
                    )
                    unseen_since = None
                self.meter.attach(pod.id, pod.cost_per_hr)
                if pod.runtime_up and self.backend.ping(self.agent):
                    self.log(f"final {self.final_id}: pod {pod.id} ready")
                    return True
            time.sleep(min(self.cfg.poll_s, max(0.05, deadline - time.monotonic())))
        return False

    def release(self, why: str) -> bool:
        """Terminate the current pod, retrying (a pod answering null may be briefly invisible) for up to
        invisible_s, and book its last spend. True when confirmed (the pod is closed in the ledger);
        False leaves it open for the reaper. Never raises."""
        pod, self.pod = self.pod, None
        if pod is None:
            self.meter.book(f"ended: {why}", force=True, stop=True)
            return True
        ok = False
        until = time.monotonic() + max(self.cfg.invisible_s, 1.0)
        for i in range(1000):
            try:
                ok = self.backend.terminate(pod.id)
            except Exception as e:  # noqa: BLE001 - keep trying; the reaper is the backstop
                self.log(f"final {self.final_id}: terminate {pod.id} failed: {e}")
            left = until - time.monotonic()
            if ok or (i >= 4 and left <= 0):
                break
            time.sleep(max(0.05, min(self.cfg.poll_s * 2.0**i, 10.0, left)))
        self.meter.book(
            f"terminated: {why}" if ok else f"terminate unconfirmed: {why}", force=True, stop=True
        )
        if ok:
            close_pod(self.ledger, self.session, pod.name, pod.id, "terminated", final_id=self.final_id)
        self.event(
            "final_pod_terminated" if ok else "final_pod_terminate_unconfirmed", pod_id=pod.id, why=why
        )
        self.log(
            f"final {self.final_id}: pod {pod.id} {'terminated' if ok else 'NOT confirmed terminated'} ({why})"
        )
        return ok

    # -- running jobs

    def upload(self, script: str, prepare: str) -> None:
        """The exact script revision (the agent checks its sha256) and the data preparer."""
        self.backend.upload(self.agent, script.encode(), "job/train_gpt.py")
        if prepare:
            self.backend.upload(self.agent, prepare.encode(), "job/prepare_data.py")
        self.event(
            "final_uploaded",
            pod_id=self.pod_id,
            script_sha=hashlib.sha256(script.encode()).hexdigest(),
            bytes_code=len(script.encode()),
        )

    def run_job(
        self, job_id: str, cmd: str, env: dict[str, str], bound_s: float
    ) -> tuple[int | None, float, list[str]]:
        """Start (idempotently) and follow one job within bound_s. Returns (returncode, wall_s, digest)."""
        self.check_money(f"job {job_id}", bound_s + self.cfg.teardown_s)
        digest = Digest(self.cfg.digest_lines, self.log, job_id)
        self.backend.run_command(self.agent, job_id, cmd, env, cwd="job")
        started = time.monotonic()
        offset, lost_since = 0, None
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
                    self.event(
                        "final_agent_reconnected",
                        pod_id=self.pod_id,
                        lost_s=round(time.monotonic() - lost_since, 1),
                    )
                    lost_since = None
            except AgentError as e:
                lost_since = lost_since or time.monotonic()
                lost = time.monotonic() - lost_since
                self.log(f"final {self.final_id}: agent unreachable for {lost:.0f}s: {str(e)[:120]}")
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

    @property
    def vocab(self) -> str:
        """The run's VOCAB_SIZE: which FineWeb shards and tokenizer the pod prepares and the trainer reads."""
        v = self.env.get("VOCAB_SIZE", "1024")
        if not v.isdigit():
            raise FinalRefused(f"VOCAB_SIZE={v!r} is not a vocabulary size")
        return v

    @property
    def data_fields(self) -> dict[str, str]:
        """The format fields of the data paths and setup command: the vocabulary and, when the run sets
        CASEOPS, the records' CaseOps FineWeb variant (sp8192 only; prepare_data says so otherwise)."""
        caseops = caseops_on(self.env)
        return {
            "vocab": self.vocab,
            "caseops_flag": " --caseops" if caseops else "",
            "caseops_tag": "_lossless_caps_caseops_v1_reserved" if caseops else "",
        }

    def setup(self) -> None:
        cmd = self.cfg.setup_cmd.format(
            train_shards=self.cfg.train_shards, gpu_count=self.cfg.gpu_count, **self.data_fields
        )
        rc, wall, digest = self.run_job("setup", cmd, {}, self.cfg.setup_s)
        self.event("final_setup_done", pod_id=self.pod_id, returncode=rc, wall_s=round(wall, 1))
        if rc != 0:
            raise PodError(f"setup on the pod failed (rc={rc}): " + " | ".join(digest[-5:]))

    def run_seed(self, seed: int) -> SeedOutcome:
        run_dir = f"runs/seed_{seed}"
        env = {
            **self.env,
            "SEED": str(seed),
            "RUN_ID": f"{self.final_id}-seed{seed}",
            "RUN_DIR": run_dir,
            "DATA_PATH": self.cfg.data_path.format(**self.data_fields),
            "TOKENIZER_PATH": self.cfg.tokenizer_path.format(**self.data_fields),
        }
        launcher = self.cfg.launcher.format(gpu_count=self.cfg.gpu_count)
        cmd = f"mkdir -p {run_dir} && exec {launcher} train_gpt.py"
        self.log(f"final {self.final_id}: seed {seed} starting")
        rc, wall, digest = self.run_job(f"seed_{seed}", cmd, env, self.cfg.seed_bound_s())
        local = self.out_dir / f"seed_{seed}"
        files: list[Path] = []
        try:
            files = self.backend.fetch_files(
                self.agent, f"job/{run_dir}", local, max_bytes=self.cfg.fetch_max_bytes
            )
        except AgentError as e:
            self.log(f"final {self.final_id}: fetching seed {seed} files failed: {e}")
        result = read_result(local / "results.json", rc, digest)
        out = SeedOutcome(
            seed=seed,
            result=result,
            job_wall_s=round(wall, 1),
            files=[str(p.relative_to(self.ws.root)) for p in files],
            digest=digest,
        )
        (local / "digest.txt").parent.mkdir(parents=True, exist_ok=True)
        (local / "digest.txt").write_text("\n".join(digest) + "\n")
        self.event(
            "final_seed_done",
            seed=seed,
            status=result.status,
            val_bpb=result.val_bpb,
            returncode=rc,
            job_wall_s=round(wall, 1),
        )
        return out


def read_result(path: Path, rc: int | None, digest: list[str]) -> RunResult:
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
