"""Published foundation models (timm, TorchGeo, MMEarth, Galileo) as earthembed encoders.

``open_source(SPEC)`` is the one parser and opener every stage uses (``embed --encoder``, ``pretrain --init``,
``segment --init/--compare``), and ``load_encoder(SPEC, store)`` = ``open_source(SPEC).fit(store)``: SPEC is
``timm:<model name>``, ``torchgeo:<weights name>``, ``mmearth:<checkpoint file>``, ``galileo:<size>`` or an
earthembed export. See ``docs/published_weights.md`` for how to obtain each family's weights.

Modules: :mod:`.spec` (what a SPEC names, what opening gives), :mod:`.checkpoint` (safe reading, caches,
strict key matching), :mod:`.bands` (band matching, normalisation in store units), one module per publisher
(:mod:`.timm_weights`, :mod:`.torchgeo_weights`, :mod:`.mmearth`, :mod:`.galileo`) and :mod:`.load` (the
one opener, fitting to a store).
"""

from earthembed.models.published.bands import EXTRA_BANDS, PublishedWeightsWarning
from earthembed.models.published.checkpoint import (
    UnsafeCheckpointError,
    WeightsNotFoundError,
    read_checkpoint,
)
from earthembed.models.published.load import (
    PUBLISHERS,
    ModelSource,
    adapt_to_store,
    export_encoder,
    load_encoder,
    open_published,
    open_source,
)
from earthembed.models.published.spec import PublishedInput, PublishedModel, Spec, parse_spec

__all__ = [
    "EXTRA_BANDS",
    "ModelSource",
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
    "open_source",
    "parse_spec",
    "read_checkpoint",
]
