"""The embed-time override of an encoder's test-time augmentation (``embed --tta none|d4``): the model id its
embeddings carry and its application to a loaded model. The driver (:mod:`earthembed.embed.run`) names the
embeddings and each shard worker (:mod:`earthembed.embed.engines`) applies the override to its own copy of the
model, so both take it from here rather than from each other.
"""

from __future__ import annotations

import torch

TTA_CHOICES = ("none", "d4")


def tta_model_id(model: torch.nn.Module, model_id: str, tta: str | None) -> str:
    """The id of embeddings made with an embed-time ``tta`` override: the export's id when it changes nothing,
    else ``<id>+tta=<value>`` (the same weights averaged differently embed differently)."""
    if tta is None:
        return model_id
    if tta not in TTA_CHOICES:
        raise ValueError(f"--tta {tta!r}: choose one of {', '.join(TTA_CHOICES)}")
    own = getattr(model, "tta", None)
    if not hasattr(model, "tta"):
        if tta == "d4":
            raise ValueError(f"--tta d4: {type(model).__name__} ({getattr(model, 'architecture', '?')}) has no "
                             "test-time augmentation; embed without --tta")
        return model_id
    return model_id if (own or "none") == tta else f"{model_id}+tta={tta}"


def set_tta(model: torch.nn.Module, tta: str | None) -> None:
    """Apply an embed-time ``tta`` override (checked by :func:`tta_model_id`) to ``model``."""
    if tta is not None and hasattr(model, "tta"):
        model.tta = None if tta == "none" else tta
