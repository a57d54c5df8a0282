"""Progress of long steps, one helper for every stage: a bar on a terminal, plain lines in logs, silence on request.

On a terminal (the stream is a TTY) it is a tqdm bar with count, rate and ETA. When output goes to a file or a
CI log, a redrawn bar would write hundreds of carriage-return frames, so instead it prints one plain line each
time another ``every_pct`` percent is done (default 10, or ``EARTHEMBED_PROGRESS_PCT``) plus one at the end::

    few-shot: 30% (216/720 fits) 12.4 s elapsed, ETA 29 s

``quiet=True`` prints nothing. Usage in a stage (the CLI passes ``quiet`` from its ``--quiet`` flag)::

    from earthembed.progress import progress

    with progress(total=len(items), desc="embed store", unit="chip", quiet=quiet) as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

``progress(...)`` can also wrap an iterable: ``for x in progress(items, desc=...)``. Totals that grow while
running (``bar.total += n``) are fine. When items cost very different amounts (few-shot fits: a logistic
regression on 700 chips vs a kNN on 10), :meth:`Progress.set_total_work` plus ``update(n, work=w)`` base the
ETA on the estimated work done instead of the count (the count is still what is shown). Rejected: tqdm's own ``mininterval`` throttling for logs (it still
redraws with carriage returns, and its time-based lines say nothing about how far along a run is).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")

DEFAULT_EVERY_PCT = 10.0
ENV_EVERY_PCT = "EARTHEMBED_PROGRESS_PCT"


def _every_pct(every_pct: float | None) -> float:
    if every_pct is None:
        raw = os.environ.get(ENV_EVERY_PCT)
        try:
            every_pct = float(raw) if raw else DEFAULT_EVERY_PCT
        except ValueError:
            raise ValueError(f"{ENV_EVERY_PCT}={raw!r}: expected a percentage such as 10") from None
    if not 0 < every_pct <= 100:
        raise ValueError(f"progress: every_pct must be in (0, 100], got {every_pct}")
    return float(every_pct)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class Progress:
    """Progress of one step; see the module docstring. Use :func:`progress` to make one."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", quiet: bool = False,
                 every_pct: float | None = None, stream: IO[str] | None = None) -> None:
        self.total = total
        self.desc, self.unit, self.quiet = desc, unit, quiet
        self.n = 0
        self.stream = stream if stream is not None else sys.stderr
        self.every = _every_pct(every_pct)
        self._t0 = time.perf_counter()
        self._next_pct = self.every
        self._closed = False
        self.total_work: float | None = None
        self.work = 0.0
        self._bar: Any = None
        if not quiet and _is_tty(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    @property
    def mode(self) -> str:
        """``"bar"`` (terminal), ``"lines"`` (not a terminal) or ``"quiet"``."""
        return "quiet" if self.quiet else "bar" if self._bar is not None else "lines"

    def set_total_work(self, total_work: float) -> None:
        """Estimate the ETA from work (``update(n, work=...)``) instead of counts from now on."""
        self.total_work = float(total_work) if total_work > 0 else None
        if self._bar is not None and self.total_work:
            self._bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]"

    def eta(self) -> float | None:
        """Seconds left: from the share of work done when there is a work total, else of the count."""
        elapsed = time.perf_counter() - self._t0
        if self.total_work and self.work > 0:
            return elapsed * max(self.total_work - self.work, 0.0) / self.work
        if self.total and self.n:
            return elapsed * (self.total - self.n) / self.n
        return None

    def update(self, n: int = 1, work: float | None = None) -> None:
        """Record ``n`` more units done (``work``: their estimated cost, see :meth:`set_total_work`)."""
        self.n += n
        self.work += float(work or 0.0)
        if self._bar is not None:
            if self._bar.total != self.total:
                self._bar.total = self.total
            if self.total_work:
                eta = self.eta()
                self._bar.set_postfix_str(f"ETA {_duration(eta)}" if eta is not None else "", refresh=False)
            self._bar.update(n)
        elif not self.quiet and self.total:
            pct = 100.0 * self.n / self.total
            if pct >= self._next_pct and self.n < self.total:
                self._line(pct)
                while self._next_pct <= pct:
                    self._next_pct += self.every

    def _line(self, pct: float, final: bool = False) -> None:
        elapsed = time.perf_counter() - self._t0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        msg = f"{self.desc}: {pct:.0f}% ({count} {self.unit}) {_duration(elapsed)} elapsed"
        eta = self.eta() if not final else None
        if eta is not None:
            msg += f", ETA {_duration(eta)}"
        print(msg, file=self.stream, flush=True)

    def close(self, final: bool = True) -> None:
        """Finish: closes the bar, or prints the final line (only if the step did any work). ``final=False``
        (the step failed): no final line, so nothing follows the error message."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif final and not self.quiet and self.n:
            self._line(100.0 * self.n / self.total if self.total else 100.0, final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(final=exc_type is None)


class _Iter(Progress):
    def __init__(self, items: Iterable[T], **kwargs: Any) -> None:
        total = kwargs.pop("total", None)
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        super().__init__(total, **kwargs)
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        done = False
        try:
            for x in self._items:
                yield x
                self.update(1)
            done = True
        finally:  # after an error in the loop (or a break) this runs late, at garbage collection: stay silent
            self.close(final=done)


def progress(items: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             quiet: bool = False, every_pct: float | None = None, stream: IO[str] | None = None) -> Any:
    """A :class:`Progress` for ``total`` units (use as a context manager and call ``update``), or, given
    ``items``, an iterable over them that advances by one per item. ``stream`` defaults to stderr."""
    kw = dict(desc=desc, unit=unit, quiet=quiet, every_pct=every_pct, stream=stream)
    if items is not None:
        return _Iter(items, total=total, **kw)
    return Progress(total, **kw)
