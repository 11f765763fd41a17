"""8xH100 finals on RunPod: the only place this project spends real money, so money comes first.

One final = one script revision (the session branch's incumbent) x several seeds of
`torchrun --nproc_per_node=8 train_gpt.py` on one pod. The wing, by job:

  config.py      what a final is asked (FinalRequest), its bounds (FinalConfig), its plan (FinalPlan)
  final.py       plan_final (read-only: `golf final --dry-run`) and run_final, start to end
  money.py       the budget, the spend meter, the pod book (every pod open until its time is booked)
  pod_run.py     one final's pod: the rung ladder, create, wait, terminate, the jobs on it
  verdict.py     compliance, the record rule, the import pre-check
  submission.py  the records/track_10min_16mb/ folder
  reaper.py      settling pods a killed final left; `golf pods [--reap]`
  naming.py      pod names and the lock files that say a final is alive

The RunPod client and the program shipped to each pod live in pods/ (no project imports).
"""

from agent.finals.config import FinalConfig, FinalPlan, FinalRefused, FinalRequest, Rung, Submission
from agent.finals.final import plan_final, run_final
from agent.finals.money import Budget, resolve_budget
from agent.finals.naming import host_tag, live_sessions, pod_prefix
from agent.finals.reaper import list_pods, reap, reap_pods, settle_stale_pods
from agent.finals.verdict import judge_final, missing_imports

__all__ = [
    "Budget",
    "FinalConfig",
    "FinalPlan",
    "FinalRefused",
    "FinalRequest",
    "Rung",
    "Submission",
    "host_tag",
    "judge_final",
    "list_pods",
    "live_sessions",
    "missing_imports",
    "plan_final",
    "pod_prefix",
    "reap",
    "reap_pods",
    "resolve_budget",
    "run_final",
    "settle_stale_pods",
]
