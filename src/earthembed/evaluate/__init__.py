"""Few-shot label-efficiency evaluation of embeddings (and baselines) against store labels, and segmentation
with few labels (fine-tuned encoders at label fractions).

Attributes are imported lazily so ``earthembed.evaluate.cli`` loads without scikit-learn (fast CLI start).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Task", "load_task", "run_fewshot", "run_segment"]


def __getattr__(name: str) -> Any:
    if name == "run_fewshot":
        from earthembed.evaluate.fewshot import run_fewshot

        return run_fewshot
    if name == "run_segment":
        from earthembed.evaluate.segment import run_segment

        return run_segment
    if name in ("Task", "load_task"):
        from earthembed.evaluate import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
