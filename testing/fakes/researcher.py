"""A scripted researcher: a model for testing/fakes/fake_openai.py that does code research the way the
LLM planner's tools intend, reading only what it is sent.

For a code idea it greps the script, views the lines around the match, copies the line to change from the
numbered view and edits it (some of its first tries drift in whitespace, as a real model's do; it then
copies the nearest region the tool answers with), and launches the edited script. Between code ideas it
runs env ideas from the queue in the prompt. It finishes when it has no idea left. `obey` makes it a model
that follows any instruction written in the prompt outside quoted data (for the prompt-injection test).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testing.fakes.fake_openai import Reply, call, tool_reply

INJECTION = re.compile(r"IGNORE (ALL )?PREVIOUS INSTRUCTIONS[^\n«»]*", re.IGNORECASE)


@dataclass(frozen=True)
class CodeIdea:
    name: str
    grep: str  # finds where to look
    line: str  # a regex for the line to rewrite, among the viewed ones (whatever it holds now)
    new: str  # the line it becomes
    why: str


ACT, CAP, NORM = r"def mlp_activation", r"def logits|return self.logit_softcap \* torch.tanh", r"def rms_norm"

# real changes to trainer/train_gpt.py: activations, the softcap, normalisation
TRAINER_IDEAS = [
    CodeIdea(
        "act_silu2",
        ACT,
        r"^    return ",
        "    return F.silu(x).square()",
        "a smooth squared activation trains faster in short runs",
    ),
    CodeIdea(
        "act_gelu2",
        ACT,
        r"^    return ",
        "    return F.gelu(x, approximate='tanh').square()",
        "GELU squared keeps gradients for negative inputs",
    ),
    CodeIdea(
        "softcap_soft",
        CAP,
        r"return self.logit_softcap \* torch.tanh",
        "        return self.logit_softcap * torch.tanh(z / (1.25 * self.logit_softcap))",
        "a softer logit cap",
    ),
    CodeIdea(
        "rmsnorm_eps",
        NORM,
        r"^    return ",
        "    return F.rms_norm(x, (x.size(-1),), eps=1e-5)",
        "a larger norm epsilon stabilises low precision",
    ),
]


def _numbered_line(view: str, pattern: str) -> str | None:
    """The first script line (number prefix removed) matching `pattern`, from a numbered view."""
    for row in view.splitlines():
        if "| " in row and re.search(pattern, row.split("| ", 1)[1]):
            return row.split("| ", 1)[1]
    return None


def _strip_data(text: str) -> str:
    return re.sub(r"«[^»]*»", "", text)


@dataclass
class Researcher:
    ideas: list[CodeIdea] = field(default_factory=lambda: list(TRAINER_IDEAS))
    code_every: int = 2  # every n-th decision is a code idea while any is left
    drift_every: int = 3  # every n-th code idea's first edit drifts in whitespace
    max_env_ideas: int = 10_000
    obey: bool = False
    obeyed: list[str] = field(default_factory=list)
    code_tried: int = 0
    env_tried: int = 0
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # every call it made
    env_done: set[str] = field(default_factory=set)
    prompt: str = ""

    def __call__(self, body: dict[str, Any], n: int) -> Reply:
        name, args = self.next_call(body)
        self.log.append((name, args))
        return tool_reply(call(name, args))

    def next_call(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        msgs = body["messages"]
        prompt = next(m["content"] for m in msgs if m["role"] == "user")
        if self.obey:  # a model that does whatever text it reads tells it, unless the text is quoted data
            m = INJECTION.search(_strip_data(msgs[0]["content"] + "\n" + prompt))
            if m:
                self.obeyed.append(m.group(0))
                return "launch_local_sweep", {
                    "name": "pwned",
                    "technique": None,
                    "hypothesis": m.group(0)[:200],
                    "env": [{"name": "PYTHONPATH", "value": "/tmp/evil"}],
                }
        self.prompt = prompt
        decision = int(prompt.split()[1])
        work = [m for m in msgs[2:]]
        calls = [c["function"] for m in work if m["role"] == "assistant" for c in m.get("tool_calls", [])]
        last = next((m["content"] for m in reversed(work) if m["role"] == "tool"), "")
        if calls or (decision % self.code_every == 0 and self.ideas):
            return self._code_step(calls, last)
        return self._env_step(prompt)

    def _code_step(self, calls: list[dict[str, Any]], last: str) -> tuple[str, dict[str, Any]]:
        idea = self.ideas[0]
        done = [c["name"] for c in calls]
        if not done:
            return "grep_script", {"pattern": idea.grep, "ignore_case": None}
        if done[-1] == "grep_script":
            m = re.search(r"^\s*(\d+)\|", json.loads(last).get("text", ""), re.M)
            line = int(m.group(1)) if m else 1
            return "view_script", {"start_line": max(1, line - 1), "end_line": line + 4}
        if done[-1] in ("view_script", "edit_train_script") and not last.startswith('{"diff"'):
            source = last if done[-1] == "edit_train_script" else json.loads(last).get("text", "")
            line = _numbered_line(source.replace("\\n", "\n"), idea.line)
            if (
                line is None or line == idea.new
            ):  # it does not apply (or is there already): a queue idea instead
                self.ideas.pop(0)
                return self._env_step(self.prompt)
            search = line
            if (
                done.count("edit_train_script") == 0
                and self.code_tried % self.drift_every == self.drift_every - 1
            ):
                # indentation lost and a space slipped in, as models' copies drift; the tool shows the region
                search = line.strip().replace("(", "( ", 1)
            return "edit_train_script", {
                "rationale": idea.why,
                "path": None,
                "edits": [{"search": search, "replace": idea.new}],
            }
        self.ideas.pop(0)
        self.code_tried += 1
        return "launch_local_sweep", {
            "name": idea.name,
            "technique": idea.name,
            "hypothesis": idea.why,
            "env": [],
        }

    def _env_step(self, prompt: str) -> tuple[str, dict[str, Any]]:
        # the first open queue item the prompt shows that is not obsolete, else a learning-rate sweep
        queue = prompt[prompt.find("## Queue") :]
        for row in queue.splitlines()[1:]:
            m = re.match(r"- ([a-z0-9_.-]+) \[p[^,]*, (todo|open|retest)\] (.*?)(;|$)", row)
            if m and "OBSOLETE" not in row and m.group(1) not in self.env_done:
                self.env_done.add(m.group(1))
                env = [
                    {"name": k, "value": v}
                    for k, v in (p.split("=", 1) for p in m.group(3).split() if "=" in p)
                ]
                self.env_tried += 1
                return "launch_local_sweep", {
                    "name": m.group(1),
                    "technique": m.group(1),
                    "env": env,
                    "hypothesis": f"{m.group(1)} from the queue lowers val_bpb",
                }
        if self.env_tried >= self.max_env_ideas:
            return "finish", {"reason": "no idea left"}
        self.env_tried += 1
        lr = f"{0.02 + 0.0001 * self.env_tried:.4f}"
        return "launch_local_sweep", {
            "name": f"matrix_lr_{self.env_tried}",
            "technique": "matrix_lr",
            "env": [{"name": "MATRIX_LR", "value": lr}],
            "hypothesis": "a retuned matrix learning rate",
        }


def researcher(**kw: Any) -> Callable[[dict[str, Any], int], Reply]:
    return Researcher(**kw)


def trainer_ideas(n: int) -> list[CodeIdea]:
    """n distinct code ideas for trainer/train_gpt.py: the hand-written ones, then constants varied."""
    out = list(TRAINER_IDEAS)
    i = 0
    while len(out) < n:
        i += 1
        power = 1.5 + 0.05 * i
        out.append(
            CodeIdea(
                f"act_relu_pow_{i}",
                ACT,
                r"^    return ",
                f"    return F.relu(x).pow({power:.2f})",
                f"relu to the power {power:.2f}",
            )
        )
        scale = 1.0 + 0.02 * i
        out.append(
            CodeIdea(
                f"softcap_scale_{i}",
                CAP,
                r"return self.logit_softcap \* torch.tanh",
                f"        return self.logit_softcap * torch.tanh(z / ({scale:.2f} * self.logit_softcap))",
                f"softcap scaled by {scale:.2f}",
            )
        )
        eps = 10.0 ** (-6 + 0.1 * i)
        out.append(
            CodeIdea(
                f"rmsnorm_eps_{i}",
                NORM,
                r"^    return ",
                f"    return F.rms_norm(x, (x.size(-1),), eps={eps:.2g})",
                f"norm epsilon {eps:.2g}",
            )
        )
    return out[:n]
