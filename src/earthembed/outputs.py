"""Safe outputs: where earthembed may write, exclusive locks that name their holder, standard JSON.

Every command that writes (ingest, synth, stats, embed) goes through these helpers so that no flag can make it
delete or corrupt what it did not create:

* :func:`check_output_location` refuses an output that is an input, an ancestor of one, or inside one.
* :class:`OutputLock` is an exclusive, non-blocking lock (``filelock``: ``flock`` on Unix, ``LockFileEx`` on
  Windows) on ``<target>.lock``; a second writer fails at once with the holder's pid, host and command, which
  the holder writes into the lock file. The lock file is removed on release (safe with filelock >= 4: a waiter
  that locked the unlinked file sees ``st_nlink == 0`` and starts over), so no stray ``.lock`` files remain.
  Being advisory, it protects earthembed processes from each other, not from other programs.
* :func:`write_json` writes atomically and refuses NaN/Infinity, which are not JSON and which other tools
  (and ``jq``, browsers, Rust/Go parsers) reject.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from earthembed.errors import LockedError, OutputError


def _resolved(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p)))).resolve()


def is_within(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` is ``root`` or below it (both resolved, symlinks followed)."""
    p, r = _resolved(path), _resolved(root)
    return p == r or r in p.parents


def check_output_location(out: str | Path, inputs: Iterable[str | Path], what: str = "--out") -> None:
    """Refuse an output that is an input, contains one (an ancestor) or lies inside an input folder.

    Writing there could replace the very files being read, or (inside an input tree) make the next run read its
    own output as input."""
    o = _resolved(out)
    for src in inputs:
        s = _resolved(src)
        if o == s:
            raise OutputError(f"{out}: {what} is the input {src} itself; choose another {what}")
        if o in s.parents:
            raise OutputError(f"{out}: {what} contains the input {src}; choose a {what} outside the input")
        if s in o.parents:
            raise OutputError(f"{out}: {what} is inside the input {src}; choose a {what} outside the input tree")


def dumps(obj: Any, indent: int | None = 2, where: str | Path = "") -> str:
    """``json.dumps`` that refuses NaN and Infinity (not standard JSON) with an error naming ``where``."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"{where}: refusing to write non-finite numbers (NaN/Infinity) to JSON: {e}") from e


def sha256_file(path: str | Path, suffix: bytes = b"") -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks), followed by ``suffix`` when given."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(suffix)
    return h.hexdigest()


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Atomically replace ``path`` with standard JSON: readers see the old file or the new one, never half."""
    path = Path(path)
    text = dumps(obj, indent=indent, where=path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def holder_info() -> dict[str, Any]:
    """Who holds a lock: pid, host, command line and start time (written into the lock file)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python",
        "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def describe_holder(lock_file: str | Path) -> str:
    """One line about the process holding ``lock_file`` (or that it is unknown, if it has not written yet)."""
    try:
        h = json.loads(Path(lock_file).read_text())
        return f"pid {h['pid']} on {h['host']} since {h['since']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not recorded its pid: just starting, or a filesystem without flock)"


class OutputLock:
    """Exclusive lock on ``target`` (a store directory or an output file) via ``<lock_file>``.

    Non-blocking: :meth:`acquire` raises :class:`LockedError` naming the holder when another process has it.
    Also refuses a second holder inside the same process (two writers on one store would corrupt it as surely)."""

    def __init__(self, target: str | Path, lock_file: str | Path) -> None:
        from filelock import FileLock

        self.target = Path(target)
        self.lock_file = Path(lock_file)
        self._lock = FileLock(str(self.lock_file), timeout=0, thread_local=False)

    def acquire(self) -> OutputLock:
        from filelock import Timeout

        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise LockedError(
                f"{self.target}: is being written by {describe_holder(self.lock_file)}; wait for it to finish "
                f"(or stop it) - two writers would corrupt it. Lock file: {self.lock_file}"
            ) from None
        if self._native():
            try:
                with open(self.lock_file, "w") as f:  # the holder's identity, for the error message above
                    f.write(json.dumps(holder_info()))
            except OSError:
                pass  # a read-only lock file still locks; only the message loses detail
        return self

    def _native(self) -> bool:
        """An OS lock (flock): False after filelock fell back to its own marker file (a filesystem without
        flock), whose content and removal filelock manages itself."""
        from filelock import UnixFileLock

        return isinstance(self._lock, UnixFileLock)

    def release(self) -> None:
        if self._lock.is_locked:
            if self._native():
                with contextlib.suppress(OSError):
                    self.lock_file.unlink()  # while still held: see the module docstring
            self._lock.release()

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
