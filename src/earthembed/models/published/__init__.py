"""Published foundation models (timm, TorchGeo, MMEarth) as earthembed encoders.

``load_encoder(SPEC, store)`` is the entry point every stage uses (``embed --encoder``, ``pretrain --init``,
segmentation's ``--init``, objectives that start from published weights): SPEC is ``timm:<model name>``,
``torchgeo:<weights name>``, ``mmearth:<checkpoint file>`` or an earthembed export. See
``docs/published_weights.md`` for how to obtain each family's weights.

Modules: :mod:`.spec` (what a SPEC names, what opening gives), :mod:`.checkpoint` (safe reading, caches,
strict key matching), :mod:`.bands` (band matching, normalisation in store units), one module per publisher
(:mod:`.timm_weights`, :mod:`.torchgeo_weights`, :mod:`.mmearth`) and :mod:`.load` (fitting to a store).
"""

from earthembed.models.published.bands import EXTRA_BANDS, PublishedWeightsWarning
from earthembed.models.published.checkpoint import (
    UnsafeCheckpointError,
    WeightsNotFoundError,
    read_checkpoint,
)
from earthembed.models.published.load import (
    PUBLISHERS,
    adapt_to_store,
    export_encoder,
    load_encoder,
    open_published,
)
from earthembed.models.published.spec import PublishedInput, PublishedModel, Spec, parse_spec

__all__ = [
    "EXTRA_BANDS",
    "PUBLISHERS",
    "PublishedInput",
    "PublishedModel",
    "PublishedWeightsWarning",
    "Spec",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "adapt_to_store",
    "export_encoder",
    "load_encoder",
    "open_published",
    "parse_spec",
    "read_checkpoint",
]
