"""Random convolutional features (MOSAIKS, Rolf et al. 2021; TorchGeo's ``RCF``) behind the Encoder contract.

The honest "no pretraining at all" baseline: K/2 fixed random filters of ``kernel_size`` x ``kernel_size`` over
all bands of a modality; a chip's embedding is the global average of ``ReLU(y)`` and ``ReLU(-y)`` with
``y = conv(x, w) + bias`` (K features). Nothing is trained, so it needs no labels and no GPU, yet on EuroSAT
it reaches kNN accuracy 0.87 (Gaussian filters) / 0.91 (empirical filters) with 512 features (TorchGeo).

* **Filters.** ``gaussian``: i.i.d. N(0, 1) (TorchGeo). ``empirical``: K/2 random ``k x k`` patches of the
  (z-score normalised) store, ZCA-whitened as MOSAIKS and TorchGeo do (:func:`zca_whiten_patches`): each patch
  is centred and scaled to unit norm, then multiplied by ``(C + eps I)^-1`` where ``C`` is the patches'
  covariance. That is ``ZCA @ ZCA.T`` applied once to the filter, so the convolution of a raw window with it is
  the dot product of the *whitened* patch with the *whitened* window (Coates & Ng 2011) without whitening the
  image. Empirical patches come from the store's ``train`` split only (:func:`sample_patches`), so the test
  chips never shape the featurizer; :func:`rcf_from_store` builds one.
* **Activation pair.** TorchGeo 0.8.1 (whose defaults we use: 512 features, 3 x 3, bias -1) computes
  ``ReLU(w*x + b), ReLU(-(w*x + b))``, i.e. ``ReLU(w*x - 1), ReLU(1 - w*x)``; the MOSAIKS paper code thresholds
  both signs, ``ReLU(w*x - 1), ReLU(-w*x - 1)``. ``relu_pair="torchgeo"`` (default, the published EuroSAT
  numbers) or ``"mosaiks"``.
* **Reproducible.** Filters are buffers (``banks.<modality>.weight`` / ``.bias``), so the ordinary export
  (safetensors + model.json) carries them and ``embed --checkpoint`` reuses the exact featurizer on another
  store. Building from the config alone (registry) gives the seeded Gaussian filters; empirical filters exist
  only in an export's weights. Seeds are per modality (seed + modality name), so the S2 filters do not depend on
  which other modalities the featurizer covers.
* **Multimodal.** One filter bank per modality (filters cannot span modalities of different band counts),
  per-modality embeddings like every encoder, and the contract's fused embedding (normalised mean of the
  normalised per-modality vectors). For RCF that mean mixes unrelated random features of different modalities,
  so ``emb_<modality>`` columns are usually the better RCF feature sets on multimodal stores.
* **Band handling** as for the CNNs: missing bands are zero slots (the band mean after normalisation), absent
  band groups are zeroed per row. Rejected: a 1x1 "band mixing" layer first (not the published baseline).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from earthembed.models.base import Encoder, ModalityInput, check_band_groups
from earthembed.models.registry import register_model

RCF_MODES = ("gaussian", "empirical")
RELU_PAIRS = ("torchgeo", "mosaiks")
DEFAULT_FEATURES = 512
DEFAULT_KERNEL = 3
DEFAULT_BIAS = -1.0
ZCA_BIAS = 1e-3  # eps added to the covariance eigenvalues (MOSAIKS / TorchGeo)
#: filter-response values per convolution call: chips are convolved in chunks of at most this many values
#: (8 chips of 32 px at 256 filters). The response of a whole batch (60 MB at 64 chips) costs more in fresh
#: memory pages than the convolution itself; in chunks the same features came 3.6x faster on 2 CPU cores.
CHUNK_ELEMENTS = 2**21


def modality_seed(seed: int, modality: str) -> int:
    """A seed per (seed, modality name): the filters of one modality do not depend on the others."""
    return (int(seed) * 1_000_003 + zlib.crc32(modality.encode())) % (2**63 - 1)


def zca_whiten_patches(patches: np.ndarray, zca_bias: float = ZCA_BIAS, min_norm: float = 1e-8) -> np.ndarray:
    """MOSAIKS / TorchGeo filter whitening of ``patches`` [N, C, k, k] -> float32 filters of the same shape.

    Each patch is centred (over all its C*k*k values) and scaled to unit norm (norms below ``min_norm`` are
    left alone), then multiplied by ``(C + zca_bias I)^-1`` with ``C`` = the covariance of those patches. Uses
    ``eigh`` (the covariance is symmetric) where MOSAIKS' ``eig`` could return complex parts from round-off.
    """
    p = np.asarray(patches, dtype=np.float64)
    if p.ndim != 4 or not len(p):
        raise ValueError(f"patches must be a non-empty [N, C, k, k] array, got shape {p.shape}")
    flat = p.reshape(len(p), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    norms[norms < min_norm] = 1.0
    flat = flat / norms[:, None]
    cov = flat.T @ flat / len(flat)
    evals, evecs = np.linalg.eigh(cov)
    zca = evecs @ np.diag(1.0 / np.sqrt(np.clip(evals, 0.0, None) + zca_bias)) @ evecs.T
    return (flat @ zca @ zca.T).reshape(p.shape).astype(np.float32)


class _FilterBank(nn.Module):
    """The fixed filters of one modality (buffers: exported with the model, never trained)."""

    weight: Tensor
    bias: Tensor

    def __init__(self, n_filters: int, channels: int, kernel_size: int, bias: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(n_filters, channels, kernel_size, kernel_size, generator=g))
        self.register_buffer("bias", torch.full((n_filters,), float(bias)))


class RCFEncoder(Encoder):
    """Random convolutional features per modality; see the module docstring.

    Args:
        modalities: modality key -> band names (the filters' input channels, in this order).
        features: output features per modality (K; K/2 filters, two activations each); must be even.
        kernel_size: filter side length (chips must be at least this large).
        bias: added to every filter response before the ReLU pair (TorchGeo's convention: -1).
        mode: ``gaussian`` or ``empirical``: what the filters are; building from this config always gives
            the seeded Gaussian filters, empirical ones are set by :func:`rcf_from_store` (and exported).
        seed: seed of the Gaussian filters (and of the patch draw of :func:`rcf_from_store`).
        relu_pair: ``torchgeo`` or ``mosaiks`` (see the module docstring).
        band_groups: as for every encoder (default :func:`~earthembed.models.base.default_band_groups`).
    """

    architecture = "rcf"

    def __init__(
        self,
        modalities: Mapping[str, Sequence[str]],
        features: int = DEFAULT_FEATURES,
        kernel_size: int = DEFAULT_KERNEL,
        bias: float = DEFAULT_BIAS,
        mode: str = "gaussian",
        seed: int = 0,
        relu_pair: str = "torchgeo",
        band_groups: Mapping[str, Sequence[Sequence[str]]] | None = None,
    ) -> None:
        super().__init__()
        self.modalities, self.band_groups = check_band_groups(modalities, band_groups)
        if int(features) < 2 or int(features) % 2:
            raise ValueError(f"rcf: features must be an even number >= 2 (two activations per filter), got {features}")
        if int(kernel_size) < 1:
            raise ValueError(f"rcf: kernel_size must be >= 1, got {kernel_size}")
        if mode not in RCF_MODES:
            raise ValueError(f"rcf: mode must be one of {RCF_MODES}, got {mode!r}")
        if relu_pair not in RELU_PAIRS:
            raise ValueError(f"rcf: relu_pair must be one of {RELU_PAIRS}, got {relu_pair!r}")
        self.features, self.kernel_size, self.bias = int(features), int(kernel_size), float(bias)
        self.mode, self.seed, self.relu_pair = str(mode), int(seed), str(relu_pair)
        self.banks = nn.ModuleDict({
            k: _FilterBank(self.features // 2, len(b), self.kernel_size, self.bias, modality_seed(self.seed, k))
            for k, b in self.modalities.items()
        })
        self.embed_dim = self.features
        self.feature_channels = [self.features]
        self.feature_strides = [1]

    @property
    def config(self) -> dict[str, Any]:
        return {
            "modalities": {k: list(v) for k, v in self.modalities.items()},
            "features": self.features,
            "kernel_size": self.kernel_size,
            "bias": self.bias,
            "mode": self.mode,
            "seed": self.seed,
            "relu_pair": self.relu_pair,
            "band_groups": {k: [list(g) for g in gs] for k, gs in self.band_groups.items()},
        }

    def set_filters(self, modality: str, filters: np.ndarray | Tensor) -> None:
        """Replace the filters of ``modality`` ([K/2, C, k, k], e.g. from :func:`zca_whiten_patches`)."""
        bank = self.banks[modality]
        w = torch.as_tensor(np.asarray(filters), dtype=torch.float32)
        if tuple(w.shape) != tuple(bank.weight.shape):
            raise ValueError(f"rcf: filters for {modality!r} must have shape {tuple(bank.weight.shape)}, got {tuple(w.shape)}")
        bank.weight.copy_(w)

    def _input(self, k: str, inp: ModalityInput) -> Tensor:
        x = self.model_input(k, inp).float()
        if min(x.shape[-2:]) < self.kernel_size:
            raise ValueError(f"rcf: modality {k!r} chips of {tuple(x.shape[-2:])} px are smaller than the {self.kernel_size} px kernel")
        return x

    def _pair(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The two activations of a filter response ``y = w*x + b`` (see ``relu_pair``)."""
        if self.relu_pair == "torchgeo":
            return F.relu(y), F.relu(-y)
        return F.relu(y), F.relu(2 * self.bias - y)  # ReLU(w*x + b), ReLU(-w*x + b)

    @staticmethod
    def _chunk_chips(x: Tensor, bank: _FilterBank) -> int:
        """Chips per convolution so that one filter response stays within :data:`CHUNK_ELEMENTS` values."""
        k = bank.weight.shape[-1]
        per_chip = bank.weight.shape[0] * max(x.shape[-2] - k + 1, 1) * max(x.shape[-1] - k + 1, 1)
        return max(1, CHUNK_ELEMENTS // per_chip)

    def _pooled(self, x: Tensor, bank: _FilterBank) -> Tensor:
        """[B, K] pooled activation pair of a chunk of chips (valid positions only, as TorchGeo)."""
        y = F.conv2d(x, bank.weight, bank.bias)
        pos = F.relu(y).mean(dim=(-2, -1))
        if self.relu_pair == "torchgeo":  # mean ReLU(-y) = mean ReLU(y) - mean y: one pass less over y
            neg = (pos - y.mean(dim=(-2, -1))).clamp_(min=0)
        else:
            neg = self._pair(y)[1].mean(dim=(-2, -1))
        return torch.cat([pos, neg], dim=1)

    def embed_modality(self, k: str, inp: ModalityInput) -> Tensor:
        x, bank = self._input(k, inp), self.banks[k]
        return torch.cat([self._pooled(xs, bank) for xs in x.split(self._chunk_chips(x, bank))])

    def modality_features(self, k: str, inp: ModalityInput) -> list[Tensor]:
        """One map at stride 1 (``same`` zero padding, so it aligns with the pixels; the pooled embedding uses
        valid positions only, as TorchGeo)."""
        bank = self.banks[k]
        y = F.conv2d(self._input(k, inp), bank.weight, bank.bias, padding="same")
        return [torch.cat(self._pair(y), dim=1)]


register_model("rcf")(RCFEncoder)


def train_chip_positions(store: Any, modality: str) -> tuple[np.ndarray, str]:
    """(store positions the empirical patches may come from, which rule chose them).

    The ``train`` split when the store has one; otherwise every chip outside ``val``/``test``; a store with
    no split at all gives every chip (pixels only: labels never reach the featurizer). Only chips that have
    ``modality``.
    """
    idx = store.index
    split = idx["split"].fillna("").astype(str).to_numpy()
    has = idx[f"has_{modality}"].to_numpy(dtype=bool)
    for rule, keep in (("train split", split == "train"), ("chips outside val/test", ~np.isin(split, ["val", "test"]))):
        pos = np.flatnonzero(keep & has)
        if len(pos):
            return pos, rule
    return np.flatnonzero(has), "all chips (the store has no train split)"


def sample_patches(
    store: Any, modality: str, bands: Sequence[str], n: int, kernel_size: int, seed: int,
    normalizer: Any, positions: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` random ``kernel_size`` patches [n, C, k, k] of normalised ``bands`` of ``modality``: chips drawn
    with replacement from ``positions`` (default :func:`train_chip_positions`), then a uniform valid offset."""
    if positions is None:
        positions, _ = train_chip_positions(store, modality)
    if not len(positions):
        raise ValueError(f"{store.path}: no chip has modality {modality!r}; cannot draw empirical RCF patches")
    size = int(store.chip_size)
    if size < kernel_size:
        raise ValueError(f"{store.path}: chips of {size} px are smaller than the {kernel_size} px RCF kernel")
    rng = np.random.default_rng(seed)
    chips = rng.choice(positions, size=n, replace=True)
    ys = rng.integers(0, size - kernel_size + 1, n)
    xs = rng.integers(0, size - kernel_size + 1, n)
    uniq, inverse = np.unique(chips, return_inverse=True)
    x = normalizer(store.read(modality, uniq, list(bands)), modality, list(bands),
                   nodata=store.modalities[modality].nodata).numpy()
    return np.stack([x[j, :, y : y + kernel_size, c : c + kernel_size] for j, y, c in zip(inverse, ys, xs, strict=True)])


def rcf_from_store(
    store: Any,
    modalities: Mapping[str, Sequence[str]],
    mode: str = "empirical",
    features: int = DEFAULT_FEATURES,
    kernel_size: int = DEFAULT_KERNEL,
    bias: float = DEFAULT_BIAS,
    seed: int = 0,
    relu_pair: str = "torchgeo",
    normalizer: Any = None,
) -> tuple[RCFEncoder, dict[str, Any]]:
    """(RCF featurizer for ``modalities`` {key: bands} of ``store``, provenance for the export's model.json).

    ``empirical`` filters are whitened patches from the store's train split (:func:`train_chip_positions`),
    normalised with ``normalizer`` (default: the store's statistics), one draw per modality seeded by
    :func:`modality_seed`.
    """
    from earthembed.data.normalize import Normalizer

    model = RCFEncoder(modalities, features=features, kernel_size=kernel_size, bias=bias, mode=mode, seed=seed,
                       relu_pair=relu_pair)
    info: dict[str, Any] = {"mode": mode, "features": model.features, "kernel_size": model.kernel_size}
    if mode == "empirical":
        normalizer = normalizer or Normalizer.from_store(store)
        info["patches"] = {}
        for k, bands in model.modalities.items():
            pos, rule = train_chip_positions(store, k)
            patches = sample_patches(store, k, bands, model.features // 2, model.kernel_size,
                                     modality_seed(model.seed, k), normalizer, pos)
            with torch.no_grad():
                model.set_filters(k, zca_whiten_patches(patches))
            info["patches"][k] = {"n": len(patches), "from": rule, "n_chips_eligible": len(pos),
                                  "store": str(store.path), "zca_bias": ZCA_BIAS}
    return model.eval(), info


def export_rcf(
    store: Any,
    out_dir: Any,
    modalities: Sequence[str] | None = None,
    bands: Mapping[str, Sequence[str]] | None = None,
    **options: Any,
) -> Any:
    """Build an RCF featurizer from ``store`` (:func:`rcf_from_store`; ``options`` are its keyword arguments)
    and export it to ``out_dir`` like any model (store normalisation, products, provenance under ``"rcf"``);
    returns ``out_dir``. ``modalities`` / ``bands`` default to every non-categorical modality / all its bands.
    Deterministic: the same store and options give the same weights, hence the same model id."""
    from earthembed.data.normalize import Normalizer
    from earthembed.models.band_stats import featurizer_inputs
    from earthembed.models.export import export_model, modality_products

    chosen = featurizer_inputs(store, modalities, bands, "rcf")
    normalizer = Normalizer.from_store(store)
    model, info = rcf_from_store(store, chosen, normalizer=normalizer, **options)
    return export_model(model, out_dir, normalizer, extra={"rcf": info},
                        products=modality_products(store.modalities, list(chosen)))
