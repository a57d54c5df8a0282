"""How earthembed writes a local file and locks an output: the primitives the write policy
(:mod:`earthembed.outputs`) and object storage (:mod:`earthembed.storage`) both build on, so neither imports the
other's machinery.

* :func:`write_json` atomically replaces a file with standard JSON (:func:`dumps` refuses NaN/Infinity, which are
  not JSON and which other tools, ``jq``, browsers, Rust/Go parsers, reject).
* A write that fails for want of storage (disk full, quota, I/O error: :data:`STORAGE_ERRNOS`) is a
  :class:`WriteError` naming the path, the cause and what to do (:func:`write_error`, :func:`os_error_of`).
* :class:`OutputLock` is an exclusive, non-blocking lock (``filelock``: ``flock`` on Unix, ``LockFileEx`` on
  Windows) on ``<target>.lock``; a second writer fails at once with the holder's pid, host and command, which
  the holder writes into the lock file (:func:`holder_info`). The lock file is removed on release (safe with
  filelock >= 4: a waiter that locked the unlinked file sees ``st_nlink == 0`` and starts over), so no stray
  ``.lock`` files remain. Being advisory, it protects earthembed processes from each other, not from other
  programs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from earthembed.errors import LockedError

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})
"""Errors of the storage, not of the input: a write that fails with one names the path it was writing."""


class WriteError(OSError):
    """Writing ``filename`` failed (disk full, quota, I/O error); ``str()`` is one line: the path, the cause and
    what to do (:func:`write_error`). An ``OSError``, so ``errno`` still tells ENOSPC from other failures."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def os_error_of(e: BaseException) -> OSError | None:
    """The operating-system error behind ``e``: ``e`` itself, or one that a native library (zarrs, safetensors)
    reports as its own exception carrying Rust's ``(os error N)``; None for anything else (a bug must keep its
    traceback)."""
    import re

    if isinstance(e, OSError):
        return e
    m = re.search(r"(.*?)\s*\(os error (\d+)\)", str(e)) if isinstance(e, Exception) else None
    return OSError(int(m.group(2)), m.group(1).split(": ")[-1] or os.strerror(int(m.group(2)))) if m else None


def write_error(path: str | Path, e: OSError, hint: str) -> WriteError:
    """The :class:`WriteError` for ``e``, raised while writing ``path``: ``PATH: <cause> while writing it; <hint>``."""
    if isinstance(e, WriteError):
        return e
    cause = os.strerror(e.errno) if isinstance(e.errno, int) and e.errno > 0 else (e.strerror or str(e) or type(e).__name__)
    return WriteError(e.errno, f"{cause} while writing it; {hint}", str(path))



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


def raise_storage_failure(path: str | Path, e: BaseException) -> None:
    """Raise :class:`WriteError` (from ``e``) when writing ``path`` failed for want of storage (disk full, quota,
    I/O error), saying whether the existing file is kept; return for any other error (the caller re-raises it)."""
    err = os_error_of(e) if isinstance(e, Exception) else None
    if err is not None and err.errno in STORAGE_ERRNOS and not isinstance(e, WriteError):
        keep = "the existing file is kept; " if Path(path).exists() else ""
        raise write_error(path, err, f"{keep}free space and re-run the same command") from e


@contextlib.contextmanager
def removed_on_failure(tmp: Path, path: str | Path) -> Iterator[None]:
    """The block that writes ``tmp`` and renames it onto ``path``: on any failure ``tmp`` is removed and a failure
    for want of storage becomes a :class:`WriteError` naming ``path`` (:func:`raise_storage_failure`)."""
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise_storage_failure(path, e)
        raise


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Atomically replace ``path`` with standard JSON: readers see the old file or the new one, never half.

    The temporary file is ``<path>.tmp`` (the name chip stores and embed parts expect of their own files), removed
    when the write fails."""
    path = Path(path)
    text = dumps(obj, indent=indent, where=path)
    tmp = path.with_name(path.name + ".tmp")
    with removed_on_failure(tmp, path):
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
