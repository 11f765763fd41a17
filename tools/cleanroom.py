"""The clean room the trainer runs in: code a model wrote, so it gets no key, no network and no view of golf.

- Environment: built from an allow-list (PATH, LANG, HOME and TMPDIR inside the run directory, the
  harness's data/run names, the tier's and candidate's knobs, safe runtime names). Nothing else of the
  user's shell reaches the trainer or its env.json.
- Process isolation, the best this machine allows, probed once per interpreter:
  `userns`  a user namespace with its own network (loopback only, for torch.distributed), PID namespace and
            /proc: golf's process, and so /proc/<golf pid>/environ, does not exist in the trainer's world.
            Works as root and as a normal user wherever unprivileged user namespaces are enabled.
  `rootns`  root without user namespaces: the same network and PID namespaces, entered as root.
  `none`    neither: golf marks its own process non-dumpable (PR_SET_DUMPABLE 0), so a process of the same
            non-root user cannot read /proc/<golf pid>/environ, and the trainer's env is still the
            allow-list; but the trainer has the network, and as root it could still read golf's environ.
            Said on stderr and recorded in the ledger by the caller (`Isolation.degraded`).
Scrubbing keys from golf's own os.environ would not help: /proc/<pid>/environ shows the environment the
process started with, whatever it unsets later.

Files: where the machine allows it (`read_only_fs`), every mount but the run's own directory (and the
kernel's /proc, /sys, /dev) is read-only for the trainer and locked by a nested user namespace
(tools/cleanroom_launch.py), so it cannot alter the validation data, the tokenizer, the project, the ledger
or the packages. Reading is not restricted: the trainer runs as the same user (mapped) and can read what
that user can (e.g. a key in ~/.bashrc). Keep keys in the environment, not in files.
"""

from __future__ import annotations

import ctypes
import functools
import os
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# names taken from the host's environment as they are (none of them loads code)
HOST_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
# names the clean room itself sets
ROOM_ENV = ("HOME", "TMPDIR", "PYTHONUSERBASE", "PYTHONUNBUFFERED")

LAUNCHER = Path(__file__).with_name("cleanroom_launch.py")  # loopback up, read-only mounts, then exec
UNSHARE_USERNS = (
    "unshare",
    "--user",
    "--map-root-user",
    "--net",
    "--pid",
    "--fork",
    "--mount-proc",
    "--kill-child",
)
UNSHARE_ROOTNS = ("unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child")


@dataclass(frozen=True)
class Isolation:
    mode: str  # userns | rootns | none
    prefix: tuple[str, ...]  # argv before the trainer's own command
    network_isolated: bool
    golf_hidden: bool  # golf's process (and its environ) is out of the trainer's reach
    note: str
    read_only_fs: bool = False  # everything but the run's own directory is read-only (and locked)

    @property
    def degraded(self) -> bool:
        return not (self.network_isolated and self.golf_hidden and self.read_only_fs)


def _works(prefix: tuple[str, ...], python: str, read_only: bool) -> bool:
    with tempfile.TemporaryDirectory(prefix="cleanroom-probe-") as tmp:
        launch = [python, "-I", str(LAUNCHER), *(["--read-only", tmp] if read_only else []), "--"]
        try:
            r = subprocess.run(
                [*prefix, *launch, python, "-I", "-c", "pass"],
                capture_output=True,
                timeout=30,
                env={"PATH": os.environ.get("PATH", os.defpath)},
            )
            return r.returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def make_non_dumpable() -> bool:
    """PR_SET_DUMPABLE 0 on this process: /proc/<pid>/environ becomes unreadable to other non-root processes."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(4, 0, 0, 0, 0) == 0
    except OSError:
        return False


@functools.cache
def probe(python: str = sys.executable) -> Isolation:
    """The strongest isolation this machine grants (asked once per interpreter and python)."""
    if os.environ.get("PGOLF_CLEANROOM") != "off":  # an escape hatch for debugging, never set by golf
        for mode, prefix in (("userns", UNSHARE_USERNS), ("rootns", UNSHARE_ROOTNS)):
            if mode == "rootns" and os.geteuid() != 0:
                continue
            if not _works(prefix, python, read_only=False):
                continue
            ro = _works(prefix, python, read_only=True)
            what = (
                "user, network and PID namespaces"
                if mode == "userns"
                else "no user namespaces here: network and PID namespaces as root"
            )
            return Isolation(
                mode,
                (*prefix, "--"),
                True,
                True,
                f"{what}: no network, golf's process not visible, "
                + (
                    "the filesystem read-only outside the run directory"
                    if ro
                    else "but the filesystem stays WRITABLE (the trainer could alter data or the project)"
                ),
                read_only_fs=ro,
            )
    dumpable_off = make_non_dumpable()
    root = os.geteuid() == 0
    return Isolation(
        "none",
        (),
        False,
        dumpable_off and not root,
        "this machine cannot isolate the trainer (no usable `unshare`): it runs with the "
        "allow-listed environment only, WITH network access"
        + (
            "; golf's process is non-dumpable, so its environ is unreadable to the trainer"
            if dumpable_off and not root
            else "; as root the trainer could still read golf's /proc/<pid>/environ"
        ),
    )


def command(iso: Isolation, python: str, argv: list[str], writable: Path) -> list[str]:
    """The full argv: the trainer's own command (argv[0] is its python) behind the namespace launcher, which
    leaves only `writable` (the run's directory) writable where the machine allows it."""
    if not iso.prefix:
        return argv
    ro = ["--read-only", str(writable)] if iso.read_only_fs else []
    return [*iso.prefix, python, "-I", str(LAUNCHER), *ro, "--", *argv]


def trainer_env(
    host: Mapping[str, str], trainer: Mapping[str, str], run_dir: Path, passthrough: Iterable[str] = ()
) -> dict[str, str]:
    """The whole environment of a trainer process: host PATH/LANG (+ the safe runtime names in
    `passthrough` the host sets), a home and temp dir of its own, then the trainer's names."""
    env = {k: host[k] for k in (*HOST_ENV, *passthrough) if k in host}
    env.setdefault("PATH", os.defpath)
    env.setdefault("LANG", "C.UTF-8")
    home, tmp = run_dir / "home", run_dir / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env["HOME"], env["TMPDIR"] = str(home), str(tmp)
    user_site = site.getusersitepackages()
    if isinstance(user_site, str) and os.path.isdir(user_site):  # packages installed with pip --user
        env["PYTHONUSERBASE"] = site.getuserbase()
    env["PYTHONUNBUFFERED"] = "1"
    env.update(trainer)
    return env
