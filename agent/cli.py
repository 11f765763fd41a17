"""`golf`: the command line. Each subcommand is a thin call into the module that does the work."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from agent.planner import Budget


def _ws(args) -> Path:
    return Path(args.workspace).resolve()


def _budget(args) -> Budget | None:
    if args.minutes is None and args.experiments is None and args.dollars is None:
        return None  # the battle plan's budget applies
    return Budget(minutes=args.minutes, experiments=args.experiments, dollars=args.dollars)


def make_planner(kind: str):
    from agent.playbook import PlaybookPlanner

    try:
        from agent.llm_planner import LLMPlanner, choose_planner
    except ImportError:
        if kind == "llm":
            raise SystemExit("the LLM planner is not available in this installation") from None
        return PlaybookPlanner(), "playbook (the LLM planner is not installed)"
    chosen, why = choose_planner(kind, os.environ)
    if chosen == "llm":
        return LLMPlanner.from_env(), f"llm ({why})"
    return PlaybookPlanner(), f"playbook ({why})"


def cmd_run(args, resume: bool = False) -> int:
    from agent.experiment import ExperimentError
    from agent.lock import LockedError
    from agent.session import SessionError, run_session
    from memory.git_records import GitRecordsError
    from memory.ledger import LedgerError
    from memory.tiers import TiersError

    planner, why = make_planner(args.planner)
    print(f"planner: {why}")
    try:
        summary = run_session(
            _ws(args),
            planner=planner,
            tier=args.tier,
            budget=_budget(args),
            session=args.session,
            resume=resume,
            allow_dirty=getattr(args, "allow_dirty", False),
        )
    except (SessionError, LockedError, GitRecordsError, ExperimentError, LedgerError, TiersError) as e:
        print(f"golf: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: everything finished so far is in the ledger; `golf resume` continues",
            file=sys.stderr,
        )
        return 130
    print(json.dumps(summary.model_dump(), indent=1))
    busy = summary.trainer_busy_s / summary.elapsed_s if summary.elapsed_s else 0.0
    print(f"review: git log golf/{summary.session}  (trainer busy {busy:.0%} of wall time)")
    return 0


def cmd_status(args) -> int:
    from agent.lock import lock_is_live, read_lock
    from agent.state import findings_table
    from memory import incumbent
    from memory.ledger import Ledger
    from memory.records import DecisionRecord, EventRecord, NoiseRecord
    from memory.workspace import Workspace

    ws = Workspace.at(_ws(args))
    ledger = Ledger(ws.ledger)
    records = ledger.records()
    held = read_lock(ws.lock)
    session = incumbent.last_session(records)
    print(f"workspace: {ws.root}")
    running = f"session {held['session']} (pid {held['pid']})" if held and lock_is_live(held) else "nothing"
    print(f"running: {running}")
    if session is None:
        print("no session yet: `golf run` starts one")
        return 0
    decisions = [d for d in records if isinstance(d, DecisionRecord) and d.session == session]
    noise = [n for n in records if isinstance(n, NoiseRecord) and n.session == session]
    print(f"last session: {session} (branch golf/{session}), {len(decisions)} decision(s)")
    env = incumbent.current_env(records, session, incumbent.base_env(ws.root, records, session))
    start = next(
        (
            e
            for e in reversed(records)
            if isinstance(e, EventRecord) and e.session == session and e.event == "start_preset"
        ),
        None,
    )
    if start is not None:  # the preset's flags are the incumbent's starting point, under what was kept
        print(
            f"incumbent env: preset {start.detail.get('name')} ({len(start.detail.get('env') or {})} flags "
            f"on this tier) + kept overrides {json.dumps(env)}"
        )
    else:
        print(f"incumbent env: {json.dumps(env)}")
    if noise:
        print(
            f"noise: std {noise[-1].std:.5f} bpb over {len(noise[-1].values)} A/A runs on {noise[-1].tier}, "
            f"incumbent mean {noise[-1].mean:.5f}"
        )
    rows = findings_table(records)
    if rows:
        print(f"{'technique':<22}{'outcome':<14}{'delta':>10}{'p':>9}{'n':>4}  tier")
        for f in rows:
            d = "" if f["delta"] is None else f"{f['delta']:+.5f}"
            p = "" if f["p"] is None else f"{f['p']:.3g}"
            print(f"{f['technique']:<22}{f['outcome']:<14}{d:>10}{p:>9}{f['n']:>4}  {f['tier']}")
    start = incumbent.session_start(records, session)
    tier = start.detail.get("tier") if start is not None else None
    if tier:  # how far the tier can be trusted, and the incumbent's projected 8xH100 score vs the frontier
        from agent.fidelity import digest_lines

        print("\n".join(digest_lines(records, tier, session)))
    torn = ledger.torn_lines()
    if torn:
        print(f"note: {len(torn)} torn ledger line(s) from a crash were set aside in {ledger.torn_path}")
    return 0


def cmd_frontier(args) -> int:
    from memory.battle_plan import BattlePlanError, load_plan
    from memory.frontier import frontier_diff_text, frontier_show
    from memory.workspace import Workspace

    ws = Workspace.at(_ws(args))
    rc = 0
    if args.sync:
        from tools.frontier_sync import sync

        owner, _, repo = args.repo.partition("/")
        report = sync(ws.root, owner, repo or "parameter-golf")
        print(report.text())
        rc = 0 if report.ok else 1
    if args.diff:
        try:
            queue = [q.technique for q in load_plan(ws.battle_plan).queue]
        except (BattlePlanError, FileNotFoundError):
            queue = []
        print(frontier_diff_text(ws.root, queue))
    else:
        print(frontier_show(ws.root, show_all=args.all))
    return rc


def cmd_final(args) -> int:
    from agent.finals import FinalRequest, plan_final, run_final

    req = FinalRequest(
        workspace=str(_ws(args)),
        session=args.session,
        seeds=args.seeds,
        approve=args.approve,
        dollars=args.dollars,
    )
    if args.dry_run:  # prices are read when a key is set; nothing is created
        backend = None
        if os.environ.get("RUNPOD_API_KEY"):
            from pods.backend import RunPodBackend

            backend = RunPodBackend()
        plan = plan_final(req, backend)
        print(plan.text())
        return 0 if not plan.problems else 1
    rec = run_final(req)
    print(rec.model_dump_json(indent=1))
    return 0 if rec.status == "ok" else 1


def cmd_pods(args) -> int:
    from agent.finals import list_pods, reap_pods

    if args.reap:
        print("terminated:", ", ".join(reap_pods(_ws(args))) or "nothing")
    else:
        for line in list_pods(_ws(args)):
            print(line)
    return 0


def cmd_report(args) -> int:
    from agent.report import write_report

    out = write_report(_ws(args), Path(args.out) if args.out else None)
    print(f"report written: {out}")
    return 0


def cmd_fidelity(args) -> int:
    from agent.fidelity import describe, run_fidelity
    from agent.lock import LockedError
    from agent.progress import Progress
    from memory.tiers import TiersError

    only = [t.strip() for t in args.panel.split(",") if t.strip()] if args.panel else None
    try:
        f = run_fidelity(_ws(args), tier=args.tier, seeds=args.seeds, only=only, progress=Progress.auto())
    except (ValueError, RuntimeError, LockedError, TiersError) as e:
        print(f"golf fidelity: {e}", file=sys.stderr)
        return 2
    print("\n".join(describe(f)))
    return 0


def cmd_prepare(args) -> int:
    script = _ws(args) / "trainer" / "prepare_data.py"
    return subprocess.call([sys.executable, str(script), "--out", str(_ws(args) / "data"), *args.rest])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="golf", description="pgolf: a noise-aware research agent for Parameter Golf"
    )
    p.add_argument("--workspace", default=".", help="the project checkout (default: current directory)")
    sub = p.add_subparsers(dest="cmd")

    def session_opts(sp):
        sp.add_argument("--minutes", type=float, help="wall-clock budget (default: battle_plan.md)")
        sp.add_argument("--experiments", type=int, help="decisions budget")
        sp.add_argument("--dollars", type=float, help="money budget for paid tiers")
        sp.add_argument("--tier", help="tier from tiers.toml (default: battle_plan.md, else cpu-smoke)")
        sp.add_argument("--planner", choices=["auto", "playbook", "llm"], default="auto")
        sp.add_argument("--session", help="session name (default: a timestamp)")

    r = sub.add_parser("run", help="start a research session (the main job)")
    session_opts(r)
    r.add_argument("--allow-dirty", action="store_true", help="start although the worktree has changes")
    rs = sub.add_parser("resume", help="continue the last session after a crash or Ctrl-C")
    session_opts(rs)
    sub.add_parser("status", help="incumbent, confirmed deltas, what is running")
    f = sub.add_parser("frontier", help="the public leaderboard as data, with legality flags")
    f.add_argument("--diff", action="store_true", help="what changed since the last session")
    f.add_argument("--sync", action="store_true", help="fetch from GitHub first")
    f.add_argument("--repo", default="openai/parameter-golf", help="owner/name of the challenge repository")
    f.add_argument("--all", action="store_true", help="include closed and rejected rows")
    fi = sub.add_parser("final", help="run an 8xH100 final on RunPod (costs money)")
    fi.add_argument("--session", help="the session whose incumbent is promoted (default: last)")
    fi.add_argument("--seeds", type=int, default=3)
    fi.add_argument("--dollars", type=float, help="budget for this final")
    fi.add_argument("--approve", action="store_true", help="allow spending (the agent cannot grant this)")
    fi.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (image, GPU, rungs, seeds, worst-case dollars); create nothing",
    )
    po = sub.add_parser("pods", help="list our RunPod pods")
    po.add_argument("--reap", action="store_true", help="terminate every pod of ours no live session owns")
    rp = sub.add_parser("report", help="write a markdown report with plots from the ledger")
    rp.add_argument("--out", help="output folder (default: reports/)")
    fd = sub.add_parser(
        "fidelity", help="measure a tier's fidelity on techniques with published full-scale deltas"
    )
    fd.add_argument("--tier", default="cpu-smoke", help="tier from tiers.toml (default: cpu-smoke)")
    fd.add_argument("--seeds", type=int, default=2, help="matched seeds per technique (default 2)")
    fd.add_argument(
        "--panel",
        help="comma-separated techniques (default: every [[full]] entry of "
        "memory/data/published_deltas.toml)",
    )
    pd = sub.add_parser("prepare-data", help="build the embedded dataset (or --variant fineweb)")
    pd.add_argument("rest", nargs=argparse.REMAINDER)

    args = p.parse_args(argv)
    if args.cmd is None:  # bare `golf` runs the main job on the plan's defaults
        args = p.parse_args([*(sys.argv[1:] if argv is None else argv), "run"])
    if args.cmd != "prepare-data":  # a final killed earlier: book what its pod ran before anything else
        from agent.finals import settle_stale_pods

        try:
            settle_stale_pods(_ws(args))
        except Exception as e:  # noqa: BLE001 - never the reason a command fails; the pods stay on the books
            print(f"golf: could not settle pods a killed final left: {e}", file=sys.stderr)
    handlers = {
        "run": cmd_run,
        "resume": lambda a: cmd_run(a, resume=True),
        "status": cmd_status,
        "frontier": cmd_frontier,
        "final": cmd_final,
        "pods": cmd_pods,
        "report": cmd_report,
        "prepare-data": cmd_prepare,
        "fidelity": cmd_fidelity,
    }
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
