"""One sweep at a time per output directory: an exclusive lock on ``OUTPUT/.sweep.lock``."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from engine.errors import InputError

LOCK_NAME = ".sweep.lock"


@contextlib.contextmanager
def output_lock(output: str | Path, *, sweep: str) -> Iterator[dict]:
    """Holds ``output`` for one sweep for the duration of the block; yields the holder record
    ``{pid, host, sweep, started_at}``, which is also written into the lock file meanwhile.

    ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``output/.sweep.lock`` (``output`` is created if
    needed). If another process holds it, raises InputError naming that holder at once: it
    never waits and never touches the holder's file. The operating system releases the lock
    when its holder exits, however it exits (SIGKILL, a killed batch job), so a dead run never
    blocks the next one; its record stays in the file until the next holder overwrites it.
    The lock file itself is never deleted: a process that opened it just before the deletion
    could lock a file nobody else sees.

    The lock is advisory and only as good as the filesystem's flock: local filesystems and
    current NFS (which maps flock to NFS byte-range locks) enforce it between hosts; old NFS
    without a lock daemon, and some FUSE/parallel filesystems mounted without lock support,
    may not, so two hosts could then both "hold" it.
    """
    path = Path(output).absolute() / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: a process that is refused must not erase the holder's record.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(_in_use_message(path.parent, _read_holder(fd))) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "sweep": sweep,
                  "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        _write_holder(fd, holder)
        try:
            yield holder
        finally:
            _write_holder(fd, None)  # a free lock names no holder
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_holder(fd: int, holder: dict | None) -> None:
    os.ftruncate(fd, 0)
    if holder is not None:
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _read_holder(fd: int) -> dict | None:
    """None where the file names no holder: its holder has just taken the lock and not yet
    written itself (or the file was edited by hand)."""
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _in_use_message(output: Path, holder: dict | None) -> str:
    if holder is None:
        who = "another sweep (not yet recorded in its lock file)"
    else:
        who = (f"sweep {holder.get('sweep')} (pid {holder.get('pid')} on {holder.get('host')} "
               f"since {holder.get('started_at')})")
    return f"output {output} is in use by {who}; wait for it to finish or choose another output"
