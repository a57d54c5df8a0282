"""Encoders, their registry, and the self-describing export format."""

from earthembed.models.export import (
    export_checkpoint,
    export_model,
    load_model,
    modality_products,
    random_init_like,
    read_model_meta,
)
from earthembed.models.multimodal_vit import MultiModalViT, default_band_groups
from earthembed.models.registry import build_model, list_models, register_model

__all__ = [
    "MultiModalViT",
    "build_model",
    "default_band_groups",
    "export_checkpoint",
    "export_model",
    "list_models",
    "load_model",
    "modality_products",
    "random_init_like",
    "read_model_meta",
    "register_model",
]
