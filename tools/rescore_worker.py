"""The trusted re-score of one exported model, run by tools/rescore.py as a subprocess in the clean room.

Standalone (torch, numpy, sentencepiece and the standard library only). The evaluation is the incumbent
script's own: its protected byte accounting, its windows, its evaluate() (and evaluate_ttt() when TTT is
on), loaded from the incumbent's text as a module and never run as __main__.

- Without --candidate (an env-only change): the incumbent's code also builds the model and loads the
  artifact, so no code of the candidate runs at all.
- With --candidate (a script change): the candidate's code is needed to turn token ids into logits, and
  only that. It runs in a separate process (`--host`, in a nested PID namespace where one is available),
  receives input ids and returns logits; this side computes the cross-entropy, the bytes and the bpb, and
  first probes that a position's logits do not depend on later tokens (a model that peeks at its targets).

Cost: with a host, every position's logits cross a pipe (4 bytes x vocab per scored token): seconds on the
CPU tiers' capped validation slice, minutes on the full FineWeb validation set.

Prints one line `RESULT {"val_bpb", "tokens", "bytes", "mode"}` or `RESULT {"error"}` on stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import struct
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

HOST_PREFIX = (
    "unshare",
    "--user",
    "--map-root-user",
    "--pid",
    "--fork",
    "--mount-proc",
    "--kill-child",
    "--",
)
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cleanroom_launch.py")


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_exact(f, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError("the model host closed its pipe")
        buf += chunk
    return buf


def host(script: str, artifact: str, env: dict) -> None:
    """Candidate side: build the candidate's model from its artifact, then answer ids -> logits."""
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the candidate's code prints goes to stderr, not into the protocol
    import torch

    mod = load_module(script, "pgolf_candidate")
    args = mod.Hyperparameters(env)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer_path)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if cuda and args.dtype == "bf16"
        else nullcontext()
    )  # the precision the trainer evaluated in
    model = mod.build_model(args, device, bos_id=sp.bos_id())
    model.load_state_dict(mod.load_exported(Path(artifact), args), strict=True)
    model.eval()
    stdin = sys.stdin.buffer
    while True:
        try:
            b, t = struct.unpack("<ii", read_exact(stdin, 8))
        except EOFError:
            return
        ids = torch.frombuffer(bytearray(read_exact(stdin, b * t * 8)), dtype=torch.int64).view(b, t)
        with torch.no_grad(), autocast:
            z = model.logits(ids.to(device)).float().cpu().contiguous()
        proto.write(struct.pack("<iii", *z.shape) + z.numpy().tobytes())
        proto.flush()


class RemoteModel:
    """The candidate's model seen from the trusted side: logits come from the host; the loss is ours."""

    training = False

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def logits(self, ids):
        import torch

        ids = ids.to(torch.int64).contiguous()
        assert self.proc.stdin is not None and self.proc.stdout is not None  # opened with PIPE
        self.proc.stdin.write(struct.pack("<ii", *ids.shape) + ids.numpy().tobytes())
        self.proc.stdin.flush()
        b, t, v = struct.unpack("<iii", read_exact(self.proc.stdout, 12))
        if (b, t) != tuple(ids.shape):
            raise ValueError(f"the model host answered shape {(b, t)} for {tuple(ids.shape)}")
        return torch.frombuffer(
            bytearray(read_exact(self.proc.stdout, b * t * v * 4)), dtype=torch.float32
        ).view(b, t, v)

    def token_losses(self, ids, targets):
        import torch.nn.functional as F

        z = self.logits(ids).double()
        return F.cross_entropy(z.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets).float()

    def close(self):
        assert self.proc.stdin is not None  # opened with PIPE
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def causal(model: RemoteModel, tokens, seq_len: int) -> str | None:
    """None when the logits at positions < k ignore the tokens from k on; else what was seen."""
    import torch

    x = tokens[:seq_len].view(1, -1).clone()
    k = seq_len // 2
    y = x.clone()
    g = torch.Generator().manual_seed(0)
    y[:, k:] = torch.randint(0, int(tokens.max()) + 1, (1, seq_len - k), generator=g)
    a, b = model.logits(x)[:, :k], model.logits(y)[:, :k]
    gap = float((a - b).abs().max())
    return (
        None
        if gap <= 1e-4 * max(1.0, float(a.abs().max()))
        else f"logits before position {k} change by "
        f"{gap:.3g} when only later tokens change: the model sees its targets"
    )


def rescore(a) -> dict:
    import torch

    env = json.loads(open(a.env).read())
    inc = load_module(a.incumbent, "pgolf_incumbent")
    args = inc.Hyperparameters(env)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer_path)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device(
        "cuda" if cuda and a.candidate is None else "cpu"
    )  # with a host: logits arrive on cpu
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if args.dtype == "bf16" and device.type == "cuda"
        else nullcontext()
    )
    luts = inc.build_sentencepiece_luts(sp, args.vocab_size, device)
    val, _ = inc.split_validation(
        inc.load_validation_tokens(args.val_files), args.val_max_tokens, args.val_holdout_tokens
    )
    if hasattr(inc, "load_byte_sidecar"):  # the incumbent's protected reader: original bytes per position
        sidecar = inc.load_byte_sidecar(args.val_files, sp)
        if sidecar is not None:
            luts = (inc.split_validation(sidecar, args.val_max_tokens, args.val_holdout_tokens)[0],)
    elif any(sp.piece_to_id(m) != sp.unk_id() for m in ("\ue001", "\ue002", "\ue003", "\ue004")):
        return {"error": "a CaseOps tokenizer, and the incumbent script predates byte sidecars"}
    batch_seqs = max(1, args.val_batch_size // (args.grad_accum_steps or 8) // args.train_seq_len)
    if a.candidate is None:
        model = inc.build_model(args, device, bos_id=sp.bos_id())
        model.load_state_dict(inc.load_exported(Path(a.artifact), args), strict=True)
        if args.ttt_enable:
            out = inc.evaluate_ttt(model, val, args, luts, device, autocast, 0, 1, batch_seqs)
        else:
            out = inc.evaluate(model, val, args, luts, device, autocast, 0, 1, batch_seqs)
        return {
            "val_bpb": out["val_bpb"],
            "tokens": out["tokens"],
            "bytes": out["bytes"],
            "mode": "incumbent-model",
        }
    if args.ttt_enable:
        return {
            "error": "test-time training with a changed script cannot be re-scored without running the "
            "candidate's training code in the trusted evaluation"
        }
    # nested: the host sees neither this process nor the validation data, and can write nothing
    prefix = (
        [
            *HOST_PREFIX,
            sys.executable,
            "-I",
            LAUNCHER,
            "--hide",
            args.data_path,
            "--read-only",
            os.path.dirname(os.path.abspath(a.env)),
            "--",
        ]
        if a.nested
        else []
    )
    model = RemoteModel(
        [
            *prefix,
            sys.executable,
            os.path.abspath(__file__),
            "--host",
            "--candidate",
            a.candidate,
            "--artifact",
            a.artifact,
            "--env",
            a.env,
        ]
    )
    try:
        peek = causal(model, val, args.train_seq_len)
        if peek:
            return {"error": peek}
        out = inc.evaluate(model, val, args, luts, device, nullcontext(), 0, 1, batch_seqs)
    finally:
        model.close()
    return {
        "val_bpb": out["val_bpb"],
        "tokens": out["tokens"],
        "bytes": out["bytes"],
        "mode": "candidate-logits",
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--incumbent")
    p.add_argument("--candidate")
    p.add_argument("--artifact", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--host", action="store_true")
    p.add_argument(
        "--nested", action="store_true", help="run the candidate's model host in its own namespaces"
    )
    a = p.parse_args()
    if a.host:
        host(a.candidate, a.artifact, json.loads(open(a.env).read()))
        return 0
    try:
        result = rescore(a)
    except Exception as e:  # any failure is a refusal to vouch for the score, said with its cause
        result = {"error": f"{type(e).__name__}: {e}"[:800]}
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
