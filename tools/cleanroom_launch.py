"""Runs first inside the clean room's namespaces, then becomes the trainer. Standalone (standard library only).

usage: python -I cleanroom_launch.py [--hide DIR]... [--read-only WRITABLE_DIR]... -- COMMAND...

1. Brings up the namespace's own loopback (torch.distributed's rendezvous needs one; nothing outside is
   reachable through it).
2. With --read-only: makes every mount read-only except the given directories (the run's own) and the
   kernel's /proc, /sys, /dev, so the trainer cannot rewrite the validation data, the tokenizer, the
   project, the ledger or the Python packages; then enters a nested user namespace, which locks those
   mounts: even as (namespace) root the trainer cannot remount them writable or unmount them.
   With --hide: an empty read-only tmpfs covers each DIR first (the re-scorer's model host must not read
   the validation data it is scored on).
3. execs COMMAND.
Any failure of step 2 exits with status 97 (the caller probes this once and says what it falls back to).
"""

import ctypes
import fcntl
import os
import socket
import struct
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
KEEP_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
KERNEL_FS = ("/proc", "/sys", "/dev")

libc = ctypes.CDLL(None, use_errno=True)


def loopback_up() -> None:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, 0x8913, struct.pack("16sH22x", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))
    except OSError as e:
        print(f"cleanroom: loopback not up: {e}", file=sys.stderr)


def mount(src: str | None, dst: str, flags: int, fstype: str | None = None) -> None:
    if (
        libc.mount(
            src.encode() if src else None, dst.encode(), fstype.encode() if fstype else None, flags, None
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {dst}: {os.strerror(err)}")


def mounts() -> list[tuple[str, set[str]]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 for a space
            out.append((point, set(fields[5].split(","))))
    return out


def under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def read_only_except(writable: list[str], hide: list[str]) -> None:
    for h in hide:
        mount("tmpfs", os.path.realpath(h), MS_NOSUID | MS_NODEV | MS_NOEXEC, "tmpfs")
    writable = [os.path.realpath(w) for w in writable]
    for w in writable:
        mount(w, w, MS_BIND | MS_REC)
    for point, opts in mounts():
        if under(point, KERNEL_FS) or under(point, writable) or "ro" in opts:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for name, bit in KEEP_FLAGS.items():
            if name in opts:
                flags |= bit
        mount(None, point, flags)
    # a nested user namespace: the mounts above become locked, out of reach of the trainer's capabilities
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    for path, text in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"{uid} {uid} 1"),
        ("/proc/self/gid_map", f"{gid} {gid} 1"),
    ):
        with open(path, "w") as f:
            f.write(text)


def main(argv: list[str]) -> None:
    writable: list[str] = []
    hide: list[str] = []
    while argv and argv[0] in ("--read-only", "--hide"):
        (writable if argv[0] == "--read-only" else hide).append(argv[1])
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    loopback_up()
    if writable or hide:
        try:
            read_only_except(writable, hide)
        except OSError as e:
            print(f"cleanroom: cannot make the filesystem read-only: {e}", file=sys.stderr)
            sys.exit(97)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
