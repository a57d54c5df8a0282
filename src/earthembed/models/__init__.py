"""Encoders (one module per backbone), their registry, and the self-describing export format."""

from earthembed.models.base import Encoder, EncoderOutput, default_band_groups, fuse_embeddings
from earthembed.models.export import (
    ModelMeta,
    export_checkpoint,
    export_model,
    load_export,
    load_model,
    modality_products,
    random_init_like,
    read_export,
    read_model_meta,
)
from earthembed.models.multimodal_vit import MultiModalViT
from earthembed.models.registry import MODELS, build_model, list_models, register_model
from earthembed.models.timm_cnn import TimmEncoder
from earthembed.models.timm_vit import TimmViTEncoder

__all__ = [
    "MODELS",
    "Encoder",
    "EncoderOutput",
    "ModelMeta",
    "MultiModalViT",
    "TimmEncoder",
    "TimmViTEncoder",
    "build_model",
    "default_band_groups",
    "export_checkpoint",
    "export_model",
    "fuse_embeddings",
    "list_models",
    "load_export",
    "load_model",
    "modality_products",
    "random_init_like",
    "read_export",
    "read_model_meta",
    "register_model",
]
