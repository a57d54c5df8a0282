"""Label budgets: which training chips a few-shot estimator (or a fine-tuned segmentation model) may see.

Protocol (Jungbluth et al. 2023, torchgeo-bench partitions): the test split is fixed and never sampled
from; budgets are drawn from the *pool* = every non-test chip (``train`` + ``val`` + unassigned), since
estimators pick hyper-parameters by cross-validation inside the budget and need no separate val set. Per
seed one ordering of the pool is drawn and every budget is a prefix of it, so budgets are nested (a
smaller budget is a subset of a larger one): curves then vary less between budgets than with independent
draws. If the store has no ``test`` split, a deterministic stratified 80/20 split is made (seed 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_PER_CLASS: tuple[int, ...] = (1, 5, 10, 20, 50)
DEFAULT_TOTAL: tuple[int, ...] = (10, 50, 100, 200, 500, 1000)
ALL = "all"


def parse_budgets(spec: str | Sequence[int | str] | None) -> list[int | str] | None:
    """``"1,5,10,all"`` (or a list) -> ``[1, 5, 10, "all"]``; None stays None (use the defaults)."""
    if spec is None:
        return None
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[int | str] = []
    for s in items:
        if s == "" or s is None:
            continue
        if str(s).lower() == ALL:
            out.append(ALL)
            continue
        try:
            n = int(s)
        except (TypeError, ValueError):
            raise ValueError(f"budget {s!r} is neither a positive integer nor 'all'") from None
        if n < 1:
            raise ValueError(f"budget {n} must be >= 1")
        out.append(n)
    if not out:
        raise ValueError(f"no budget in {spec!r}")
    return out


BUDGET_MODES = ("per_class", "total")


def parse_budget_modes(
    spec: str | Sequence[int | str] | Mapping[str, str | Sequence[int | str]] | None,
) -> dict[str, list[int | str]]:
    """Budgets per budget mode; a mode left out uses :func:`default_budgets`.

    ``"1,5,10,all"`` or a list: the same budgets for every task (as :func:`parse_budgets`).
    ``"total=10,50,100,all"`` or ``"per_class=1,5,all; total=10,100,all"``: one list per mode (``;`` between
    modes), so one call can cut the multilabel / regression budgets and keep the per-class ones. A mapping
    ``{mode: budgets}`` says the same from Python.
    """
    if spec is None:
        return {}
    if isinstance(spec, str) and "=" in spec:
        items: list[tuple[str, Any]] = []
        for part in (p.strip() for p in spec.split(";")):
            if not part:
                continue
            mode, sep, rest = part.partition("=")
            if not sep:
                raise ValueError(f"budgets {spec!r}: {part!r} is not MODE=BUDGETS (modes: {', '.join(BUDGET_MODES)})")
            items.append((mode.strip(), rest))
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        budgets = parse_budgets(spec)
        return {m: list(budgets) for m in BUDGET_MODES} if budgets else {}
    out: dict[str, list[int | str]] = {}
    for mode, value in items:
        if mode not in BUDGET_MODES:
            raise ValueError(f"budgets {spec!r}: budget mode {mode!r} is not one of {', '.join(BUDGET_MODES)}")
        if mode in out:
            raise ValueError(f"budgets {spec!r}: budget mode {mode!r} given twice")
        out[mode] = parse_budgets(value) or []
    return out


def resolve_mode(kind: str, mode: str = "auto") -> str:
    """``per_class`` for classification, ``total`` otherwise (``auto``); refuse per-class for other kinds."""
    if mode not in ("auto", "per_class", "total"):
        raise ValueError(f"budget mode {mode!r} is not one of auto, per_class, total")
    if mode == "auto":
        return "per_class" if kind == "classification" else "total"
    if mode == "per_class" and kind != "classification":
        raise ValueError(f"per-class budgets need a single-label classification task, not {kind}")
    return mode


def default_budgets(mode: str) -> list[int | str]:
    return [*(DEFAULT_PER_CLASS if mode == "per_class" else DEFAULT_TOTAL), ALL]


def split_pool_test(
    split: np.ndarray, strata: np.ndarray | None = None, test_size: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """(pool positions, test positions, note). Uses the store's ``test`` split when it has one.

    Without one, a deterministic 80/20 split stratified on ``strata`` (class codes) when every stratum has
    at least two chips, otherwise random; the note says which, so it ends up next to the results.
    """
    split = np.asarray(split, dtype=str)
    is_test = split == "test"
    if is_test.any() and (~is_test).any():
        return np.flatnonzero(~is_test), np.flatnonzero(is_test), "store splits: pool = train+val(+unassigned), test = test"
    from sklearn.model_selection import train_test_split

    n = len(split)
    if n < 2:
        raise ValueError(f"need at least 2 labelled chips with features to evaluate, got {n}")
    strat = None
    if strata is not None:
        _, counts = np.unique(strata, return_counts=True)
        if counts.min() >= 2 and len(counts) > 1:
            strat = strata
    pool, test = train_test_split(np.arange(n), test_size=test_size, random_state=seed, stratify=strat)
    how = "stratified" if strat is not None else "random"
    return (
        np.sort(pool),
        np.sort(test),
        f"no evaluated chip is in a test split: made a deterministic {how} {1 - test_size:.0%}/{test_size:.0%} split (seed {seed})",
    )


def stratified_order(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An ordering of positions whose every prefix is close to proportional per stratum.

    Each stratum is shuffled; item ``r`` of a stratum of size ``n`` gets key ``(r + u) / n``; the first item
    of every stratum comes first, so any prefix at least as long as the number of strata covers them all.
    """
    keys = np.empty(len(strata), dtype=np.float64)
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        perm = rng.permutation(members)
        r = np.arange(len(perm), dtype=np.float64)
        k = (r + rng.random(len(perm))) / len(perm)
        k[0] -= 1.0
        keys[perm] = k
    return np.argsort(keys, kind="stable")


def _multilabel_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greedy cover first: take a chip with the rarest still-uncovered class until every class present in
    the pool is covered, then the rest in random order (so small budgets see each class when possible)."""
    perm = rng.permutation(len(y))
    yp = np.asarray(y[perm], dtype=bool)
    freq = yp.sum(axis=0)
    uncovered = freq > 0
    chosen: list[int] = []
    taken = np.zeros(len(perm), dtype=bool)
    while uncovered.any():
        c = np.flatnonzero(uncovered)[np.argmin(freq[uncovered])]
        j = int(np.flatnonzero(yp[:, c] & ~taken)[0])
        chosen.append(j)
        taken[j] = True
        uncovered &= ~yp[j]
    rest = np.flatnonzero(~taken)
    return perm[np.concatenate([np.asarray(chosen, dtype=np.int64), rest])]


def sample_budgets(
    y: np.ndarray,
    kind: str,
    budgets: Sequence[int | str],
    mode: str,
    seed: int,
    n_bins: int = 5,
) -> dict[str, np.ndarray]:
    """Nested budget samples from a pool with targets ``y``: ``{budget label: sorted pool positions}``.

    ``per_class``: budget ``k`` = the first ``k`` chips of each class (all of a class with fewer). ``total``:
    a prefix of one ordering, stratified by class (classification), by ``n_bins`` quantile bins of the
    target (regression) or greedily covering every class (multilabel). Budgets larger than the pool are
    clipped; budgets that end up with the same chips as a smaller one, or as ``all``, are dropped.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    numeric = sorted({int(b) for b in budgets if b != ALL})
    want_all = ALL in budgets
    out: dict[str, np.ndarray] = {}
    if mode == "per_class":
        codes = np.asarray(y)
        orders = {c: rng.permutation(np.flatnonzero(codes == c)) for c in np.unique(codes)}
        picks = {b: np.sort(np.concatenate([o[:b] for o in orders.values()])) for b in numeric}
    else:
        if kind == "classification":
            order = stratified_order(np.asarray(y), rng)
        elif kind == "multilabel":
            order = _multilabel_order(np.asarray(y), rng)
        else:
            edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
            order = stratified_order(np.searchsorted(edges, y, side="right"), rng)
        picks = {b: np.sort(order[: min(b, n)]) for b in numeric}
    sizes: set[int] = set()
    for b in numeric:
        p = picks[b]
        if len(p) in sizes or (want_all and len(p) == n):
            continue  # clipped to the same chips as a smaller budget or as "all"
        sizes.add(len(p))
        out[str(b)] = p
    if want_all:
        out[ALL] = np.arange(n)
    return out


def parse_fractions(spec: str | Sequence[float | str]) -> list[float]:
    """``"0.01,0.05,0.1,0.25,1"`` (or a list) -> sorted unique fractions in (0, 1]."""
    items = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: set[float] = set()
    for x in items:
        if x == "" or x is None:
            continue
        try:
            f = float(x)
        except (TypeError, ValueError):
            raise ValueError(f"label fraction {x!r} is not a number in (0, 1]") from None
        if not 0 < f <= 1:
            raise ValueError(f"label fraction {f} must be in (0, 1]")
        out.add(f)
    if not out:
        raise ValueError(f"no label fraction in {spec!r}")
    return sorted(out)


def fraction_label(f: float) -> str:
    """``0.05`` -> ``"0.05"``, ``1.0`` -> ``"1"`` (the ``budget`` value of a fraction in result tables)."""
    return f"{f:g}"


def composition_strata(fractions: np.ndarray, n_bins: int = 3) -> np.ndarray:
    """Stratum code per chip from its class composition [N, K] (fractions of its labelled pixels per class).

    PANGAEA's limited-label protocol (Marsocci et al. 2024): each class fraction falls into a bin (absent, or one
    of ``n_bins`` equal bins of (0, 1]) and chips with the same bins in every class form a stratum.
    """
    f = np.asarray(fractions, dtype=np.float64)
    bins = np.where(f > 0, np.ceil(np.clip(f, 0, 1) * n_bins), 0).astype(np.int64)
    return np.unique(bins, axis=0, return_inverse=True)[1].reshape(-1)


def sample_fractions(strata: np.ndarray, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Nested label fractions of a pool with stratum codes ``strata``: ``{fraction label: sorted positions}``.

    One stratified ordering per seed (:func:`stratified_order`); fraction ``f`` takes its first
    ``max(1, round(f * N))`` chips, so every fraction contains the smaller ones and covers every stratum once it
    has as many chips as there are strata. A fraction that rounds to the same chips as a smaller one is dropped
    (it would repeat that run).
    """
    n = len(strata)
    if n == 0:
        raise ValueError("no labelled training chips to sample label fractions from")
    order = stratified_order(np.asarray(strata), np.random.default_rng(seed))
    out: dict[str, np.ndarray] = {}
    sizes: set[int] = set()
    for f in sorted(fractions):
        k = n if f >= 1 else min(n, max(1, int(round(f * n))))
        if k in sizes:
            continue
        sizes.add(k)
        out[fraction_label(f)] = np.sort(order[:k])
    return out
