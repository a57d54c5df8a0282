"""Pretraining augmentations: they live in the neutral :mod:`earthembed.augment` (segmentation fine-tuning uses
them too, and evaluation code never imports ``pretrain``); this module keeps the old import path working."""

from earthembed.augment import (
    AFFINE_KEY,
    AugmentConfig,
    apply_affine,
    augment_batch,
    band_dropout,
    group_dropout,
    modality_dropout,
    random_affine,
    warp_mask,
)

__all__ = [
    "AFFINE_KEY",
    "AugmentConfig",
    "apply_affine",
    "augment_batch",
    "band_dropout",
    "group_dropout",
    "modality_dropout",
    "random_affine",
    "warp_mask",
]
