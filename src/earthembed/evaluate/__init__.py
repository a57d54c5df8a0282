"""Few-shot label-efficiency evaluation of embeddings (and baselines) against store labels."""

from earthembed.evaluate.fewshot import run_fewshot
from earthembed.evaluate.tasks import Task, load_task

__all__ = ["Task", "load_task", "run_fewshot"]
