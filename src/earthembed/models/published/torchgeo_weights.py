"""``torchgeo:<weights name>``: TorchGeo's pretrained ResNet / ViT weights, without installing TorchGeo.

TorchGeo (+500 MB with kornia, segmentation-models-pytorch, ...) is not a dependency. Its ResNet and ViT
weights are plain timm state dicts loaded into ``timm.create_model(meta["model"], in_chans=...)``, so all
earthembed needs is, per weights name: the timm model, the input bands, the normalisation of its
``transforms`` and the file's URL. :data:`WEIGHTS` holds them for the Sentinel-2 / Sentinel-1 weights whose
inputs are unambiguous (SSL4EO-S12 MoCo, DINO, DeCUR, SoftCon, MAE, FG-MAE; CLOSP S2; SeCo-Eco), checked
against TorchGeo 0.8.1's ``models/resnet.py`` / ``vit.py`` by ``scripts/verify_torchgeo_table.py``
(:func:`verify_against`). Not included: Landsat weights (no Landsat modality here, and their band names
``B1``..``B11`` collide with Sentinel-2's), SeCo / GASSL / Satlas (8-bit inputs made by a stretch TorchGeo
does not record), SeCo-Eco NDVI (an NDVI channel) and CLOSP S1 (undocumented input units).

The file is looked for where TorchGeo (``torch.hub.load_state_dict_from_url``) caches it:
``$TORCH_HOME/hub/checkpoints/<file name of the URL>`` (default ``~/.cache/torch/hub/checkpoints``), or given
with ``--weights``. Geometric transforms (TorchGeo resizes to 256 and crops 224) are not applied: chips are
embedded at their own size, as for every other model here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from earthembed.models.published.bands import S2_DN
from earthembed.models.published.checkpoint import (
    check_hash_in_name,
    download_url,
    downloads_allowed,
    match_state,
    not_found,
    read_checkpoint,
    sha256_file,
    torch_hub_file,
    unwrap_state_dict,
)
from earthembed.models.published.spec import PublishedInput, PublishedModel, Spec
from earthembed.models.published.timm_weights import architecture_of, reference_model

# SSL4EO-S12 band order (L1C, 13 bands) and statistics, as in TorchGeo's resnet.py (_sentinel2_toa_bands,
# _mean_s2/_std_s2, _mean_s1/_std_s1)
S2_TOA = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_L2A_12 = tuple(b for b in S2_TOA if b != "B10")
S2_RGB = ("B04", "B03", "B02")
S1 = ("VV", "VH")
SSL4EO_S2_MEAN = dict(zip(S2_TOA, (1612.9, 1397.6, 1322.3, 1373.1, 1561.0, 2108.4, 2390.7, 2318.7, 2581.0, 837.7,
                                   22.0, 2195.2, 1537.4), strict=True))
SSL4EO_S2_STD = dict(zip(S2_TOA, (791.0, 854.3, 878.7, 1144.9, 1127.5, 1164.2, 1276.0, 1249.5, 1345.9, 577.5,
                                  47.5, 1340.0, 1142.9), strict=True))
SSL4EO_S1_MEAN = {"VV": -12.59, "VH": -20.26}
SSL4EO_S1_STD = {"VV": 5.26, "VH": 5.91}
DIV_10K, S2_STATS, S1_STATS = "divide by 10000", "SSL4EO-S12 S2 mean/std", "SSL4EO-S12 S1 mean/std"
VIT_ALLOWED_MISSING = ("norm.weight", "norm.bias")  # MAE encoders ship without the final norm (TorchGeo accepts it)


@dataclasses.dataclass(frozen=True)
class TorchGeoWeights:
    """One TorchGeo weights enum member (see the module docstring)."""

    name: str
    model: str
    bands: tuple[str, ...]
    normalization: str
    method: str
    dataset: str
    publication: str
    url: str
    img_size: int | None = None

    @property
    def file_name(self) -> str:
        return torch_hub_file(self.url).name

    def input(self) -> PublishedInput:
        sar = self.bands == S1
        units, means, stds = ("dB", SSL4EO_S1_MEAN, SSL4EO_S1_STD) if sar else (S2_DN, SSL4EO_S2_MEAN, SSL4EO_S2_STD)
        if self.normalization == DIV_10K:
            mean, std = [0.0] * len(self.bands), [10000.0] * len(self.bands)
        else:
            mean, std = [means[b] for b in self.bands], [stds[b] for b in self.bands]
        return PublishedInput(
            list(self.bands), "sar" if sar else "optical", units, mean=mean, std=std,
            fill=[means[b] for b in self.bands],
            note=f"TorchGeo 0.8.1 transforms of {self.name} ({self.normalization}); missing bands read as their "
                 "SSL4EO-S12 mean",
        )


def _w(name: str, model: str, bands: tuple[str, ...], norm: str, method: str, dataset: str, pub: str, url: str,
       img_size: int | None = None) -> TorchGeoWeights:
    return TorchGeoWeights(name, model, bands, norm, method, dataset, pub, url, img_size)


_SSL4EO, _DECUR, _SOFTCON = "https://arxiv.org/abs/2211.07044", "https://arxiv.org/abs/2309.05300", "https://arxiv.org/abs/2405.20462"
_FGMAE, _CLOSP = "https://arxiv.org/abs/2310.18653", "https://arxiv.org/abs/2507.10403"
_TABLE = [
    _w("ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet18", S2_TOA, DIV_10K, "moco", "SSL4EO-S12", _SSL4EO,
       "https://hf.co/torchgeo/resnet18_sentinel2_all_moco/resolve/5b8cddc9a14f3844350b7f40b85bcd32aed75918/resnet18_sentinel2_all_moco-59bfdff9.pth"),
    _w("ResNet18_Weights.SENTINEL2_RGB_MOCO", "resnet18", S2_RGB, DIV_10K, "moco", "SSL4EO-S12", _SSL4EO,
       "https://hf.co/torchgeo/resnet18_sentinel2_rgb_moco/resolve/e1c032e7785fd0625224cdb6699aa138bb304eec/resnet18_sentinel2_rgb_moco-e3a335e3.pth"),
    _w("ResNet50_Weights.SENTINEL1_GRD_DECUR", "resnet50", S1, S1_STATS, "decur", "SSL4EO-S12", _DECUR,
       "https://huggingface.co/torchgeo/decur/resolve/9328eeb90c686a88b30f8526ed757b4bc0f12027/rn50_ssl4eo-s12_sar_decur_ep100-f0e69ba2.pth"),
    _w("ResNet50_Weights.SENTINEL1_GRD_MOCO", "resnet50", S1, S1_STATS, "moco", "SSL4EO-S12", _SSL4EO,
       "https://hf.co/torchgeo/resnet50_sentinel1_all_moco/resolve/e79862c667853c10a709bdd77ea8ffbad0e0f1cf/resnet50_sentinel1_all_moco-906e4356.pth"),
    _w("ResNet50_Weights.SENTINEL1_GRD_SOFTCON", "resnet50", S1, S1_STATS, "softcon", "SSL4EO-S12", _SOFTCON,
       "https://huggingface.co/wangyi111/softcon/resolve/62ff465b2e7467dbfc70758ec1e9d08ab87fc46b/B2_rn50_softcon.pth"),
    _w("ResNet50_Weights.SENTINEL2_ALL_CLOSP", "resnet50", S2_TOA, DIV_10K, "closp", "CrisisLandMark", _CLOSP,
       "https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/closp-rn_s2_encoder-183922a5.pth"),
    _w("ResNet50_Weights.SENTINEL2_ALL_DECUR", "resnet50", S2_TOA, DIV_10K, "decur", "SSL4EO-S12", _DECUR,
       "https://huggingface.co/torchgeo/decur/resolve/eba7ae5945d482a4319be046d34b552db5dd9950/rn50_ssl4eo-s12_ms_decur_ep100-fc6b09ff.pth"),
    _w("ResNet50_Weights.SENTINEL2_ALL_DINO", "resnet50", S2_TOA, DIV_10K, "dino", "SSL4EO-S12", _SSL4EO,
       "https://hf.co/torchgeo/resnet50_sentinel2_all_dino/resolve/d7f14bf5530d70ac69d763e58e77e44dbecfec7c/resnet50_sentinel2_all_dino-d6c330e9.pth"),
    _w("ResNet50_Weights.SENTINEL2_ALL_GEOCLOSP", "resnet50", S2_TOA, DIV_10K, "geoclosp", "CrisisLandMark", _CLOSP,
       "https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/geoclosp-rn_s2_encoder-94c37f4a.pth"),
    _w("ResNet50_Weights.SENTINEL2_ALL_MOCO", "resnet50", S2_TOA, DIV_10K, "moco", "SSL4EO-S12", _SSL4EO,
       "https://hf.co/torchgeo/resnet50_sentinel2_all_moco/resolve/da4f3c9dbe09272eb902f3b37f46635fa4726879/resnet50_sentinel2_all_moco-df8b932e.pth"),
    _w("ResNet50_Weights.SENTINEL2_ALL_SOFTCON", "resnet50", S2_TOA, S2_STATS, "softcon", "SSL4EO-S12", _SOFTCON,
       "https://huggingface.co/wangyi111/softcon/resolve/62ff465b2e7467dbfc70758ec1e9d08ab87fc46b/B13_rn50_softcon.pth"),
    _w("ResNet50_Weights.SENTINEL2_ALL_SECO_ECO", "resnet50", S2_L2A_12, DIV_10K, "seco-eco", "SSL4Eco Dataset",
       "https://arxiv.org/abs/2504.18256",
       "https://hf.co/torchgeo/seco-eco/resolve/aea279ea46572cfca5876ac1f9d8d8595fcdeb3b/resnet50_sentinel2_all_seco_eco-90ec322f.pth"),
    _w("ResNet50_Weights.SENTINEL2_RGB_MOCO", "resnet50", S2_RGB, DIV_10K, "moco", "SSL4EO-S12", _SSL4EO,
       "https://hf.co/torchgeo/resnet50_sentinel2_rgb_moco/resolve/efd9723b59a88e9dc1420dc1e96afb25b0630a3c/resnet50_sentinel2_rgb_moco-2b57ba8b.pth"),
    _w("ViTSmall16_Weights.SENTINEL2_ALL_CLOSP", "vit_small_patch16_224", S2_TOA, DIV_10K, "closp", "CrisisLandMark", _CLOSP,
       "https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/closp-vs_s2_encoder-1a3ee5a5.pth"),
    _w("ViTSmall16_Weights.SENTINEL2_ALL_DINO", "vit_small_patch16_224", S2_TOA, DIV_10K, "dino", "SSL4EO-S12", _SSL4EO,
       "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_dino/resolve/5b41dd418a79de47ac9f5be3e035405a83818a62/vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth"),
    _w("ViTSmall16_Weights.SENTINEL2_ALL_MOCO", "vit_small_patch16_224", S2_TOA, DIV_10K, "moco", "SSL4EO-S12", _SSL4EO,
       "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_moco/resolve/1cb683f6c14739634cdfaaceb076529adf898c74/vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth"),
    _w("ViTSmall16_Weights.SENTINEL2_ALL_MAE", "vit_small_patch16_224", S2_TOA, DIV_10K, "mae", "SSL4EO-S12", _SSL4EO,
       "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B13_vits16_mae_ep99_enc.pth"),
    _w("ViTSmall16_Weights.SENTINEL2_ALL_FGMAE", "vit_small_patch16_224", S2_TOA, DIV_10K, "fg-mae", "SSL4EO-S12", _FGMAE,
       "https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/B13_vits16_fgmae_ep99_enc.pth"),
    _w("ViTSmall16_Weights.SENTINEL1_GRD_MAE", "vit_small_patch16_224", S1, S1_STATS, "mae", "SSL4EO-S12", _SSL4EO,
       "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B2_vits16_mae_ep99_enc.pth"),
    _w("ViTSmall16_Weights.SENTINEL1_GRD_FGMAE", "vit_small_patch16_224", S1, S1_STATS, "fg-mae", "SSL4EO-S12", _FGMAE,
       "https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/B2_vits16_fgmae_ep99_enc.pth"),
    _w("ViTBase16_Weights.SENTINEL2_ALL_MAE", "vit_base_patch16_224", S2_TOA, DIV_10K, "mae", "SSL4EO-S12", _SSL4EO,
       "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B13_vitb16_mae_ep99_enc.pth"),
    _w("ViTBase16_Weights.SENTINEL2_ALL_FGMAE", "vit_base_patch16_224", S2_TOA, DIV_10K, "fg-mae", "SSL4EO-S12", _FGMAE,
       "https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/B13_vitb16_fgmae_ep99_enc.pth"),
    _w("ViTBase16_Weights.SENTINEL1_GRD_MAE", "vit_base_patch16_224", S1, S1_STATS, "mae", "SSL4EO-S12", _SSL4EO,
       "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B2_vitb16_mae_ep99_enc.pth"),
    _w("ViTBase16_Weights.SENTINEL1_GRD_FGMAE", "vit_base_patch16_224", S1, S1_STATS, "fg-mae", "SSL4EO-S12", _FGMAE,
       "https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/B2_vitb16_fgmae_ep99_enc.pth"),
    _w("ViTLarge16_Weights.SENTINEL2_ALL_CLOSP", "vit_large_patch16_224", S2_TOA, DIV_10K, "closp", "CrisisLandMark", _CLOSP,
       "https://huggingface.co/DarthReca/CLOSP-Visual/resolve/3bb8677c21dac56bea2dd7baa08d7871272db440/closp-vl_s2_encoder-4a4f026a.pth"),
    _w("ViTLarge16_Weights.SENTINEL2_ALL_MAE", "vit_large_patch16_224", S2_TOA, DIV_10K, "mae", "SSL4EO-S12", _SSL4EO,
       "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B13_vitl16_mae_ep99_enc.pth"),
    _w("ViTLarge16_Weights.SENTINEL2_ALL_FGMAE", "vit_large_patch16_224", S2_TOA, DIV_10K, "fg-mae", "SSL4EO-S12", _FGMAE,
       "https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/B13_vitl16_fgmae_ep99_enc.pth"),
    _w("ViTLarge16_Weights.SENTINEL1_GRD_MAE", "vit_large_patch16_224", S1, S1_STATS, "mae", "SSL4EO-S12", _SSL4EO,
       "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B2_vitl16_mae_ep99_enc.pth"),
    _w("ViTLarge16_Weights.SENTINEL1_GRD_FGMAE", "vit_large_patch16_224", S1, S1_STATS, "fg-mae", "SSL4EO-S12", _FGMAE,
       "https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/B2_vitl16_fgmae_ep99_enc.pth"),
    _w("ViTHuge14_Weights.SENTINEL2_ALL_MAE", "vit_huge_patch14_224", S2_TOA, DIV_10K, "mae", "SSL4EO-S12", _SSL4EO,
       "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B13_vith14_mae_ep199_enc.pth"),
    _w("ViTHuge14_Weights.SENTINEL2_ALL_FGMAE", "vit_huge_patch14_224", S2_TOA, DIV_10K, "fg-mae", "SSL4EO-S12", _FGMAE,
       "https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/B13_vith14_fgmae_ep399_enc.pth"),
    _w("ViTHuge14_Weights.SENTINEL1_GRD_MAE", "vit_huge_patch14_224", S1, S1_STATS, "mae", "SSL4EO-S12", _SSL4EO,
       "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B2_vith14_mae_ep199_enc.pth"),
    _w("ViTHuge14_Weights.SENTINEL1_GRD_FGMAE", "vit_huge_patch14_224", S1, S1_STATS, "fg-mae", "SSL4EO-S12", _FGMAE,
       "https://huggingface.co/wangyi111/FGMAE/resolve/24dd3077d7a99ecd454eaec7adb83d045d7fa122/B2_vith14_fgmae_ep399_enc.pth"),
    _w("ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON", "vit_small_patch14_dinov2", S2_TOA, S2_STATS, "softcon", "SSL4EO-S12",
       _SOFTCON, "https://huggingface.co/wangyi111/softcon/resolve/bae909781911f8ec034b4b959992fae17b973c0c/B13_vits14_softcon_enc.pth", 224),
    _w("ViTSmall14_DINOv2_Weights.SENTINEL1_GRD_SOFTCON", "vit_small_patch14_dinov2", S1, S1_STATS, "softcon", "SSL4EO-S12",
       _SOFTCON, "https://huggingface.co/wangyi111/softcon/resolve/bae909781911f8ec034b4b959992fae17b973c0c/B2_vits14_softcon_enc.pth", 224),
    _w("ViTBase14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON", "vit_base_patch14_dinov2", S2_TOA, S2_STATS, "softcon", "SSL4EO-S12",
       _SOFTCON, "https://huggingface.co/wangyi111/softcon/resolve/bae909781911f8ec034b4b959992fae17b973c0c/B13_vitb14_softcon_enc.pth", 224),
    _w("ViTBase14_DINOv2_Weights.SENTINEL1_GRD_SOFTCON", "vit_base_patch14_dinov2", S1, S1_STATS, "softcon", "SSL4EO-S12",
       _SOFTCON, "https://huggingface.co/wangyi111/softcon/resolve/bae909781911f8ec034b4b959992fae17b973c0c/B2_vitb14_softcon_enc.pth", 224),
]
WEIGHTS: dict[str, TorchGeoWeights] = {w.name: w for w in _TABLE}
ALIASES = {  # TorchGeo keeps the deprecated SENTINEL1_ALL_* names as aliases of SENTINEL1_GRD_*
    "ResNet50_Weights.SENTINEL1_ALL_DECUR": "ResNet50_Weights.SENTINEL1_GRD_DECUR",
    "ResNet50_Weights.SENTINEL1_ALL_MOCO": "ResNet50_Weights.SENTINEL1_GRD_MOCO",
}


def lookup(name: str) -> TorchGeoWeights:
    """The table entry of a TorchGeo weights name (``ResNet18_Weights.SENTINEL2_ALL_MOCO``)."""
    key = ALIASES.get(name, name)
    if key not in WEIGHTS:
        raise ValueError(f"torchgeo:{name}: not among the supported TorchGeo weights ({', '.join(sorted(WEIGHTS))}); "
                         "see docs/published_weights.md for why others are left out")
    return WEIGHTS[key]


def find_torchgeo_weights(entry: TorchGeoWeights, download: bool) -> Path:
    path = torch_hub_file(entry.url)
    if path.is_file():
        return path
    if download and downloads_allowed():
        return download_url(entry.url, path)
    how = (f"Download {entry.url} into {path.parent} (what TorchGeo does on first use; --download does it here) "
           "or pass --weights PATH")
    if download:
        how = "Downloads are off in this environment (HF_HUB_OFFLINE is set); " + how
    raise not_found(f"torchgeo:{entry.name}", [str(path)], how)


def open_torchgeo(spec: Spec, weights: str | Path | None = None, download: bool = False) -> PublishedModel:
    """Open ``torchgeo:<weights name>`` from :data:`WEIGHTS`."""
    entry = lookup(spec.name)
    path = Path(weights) if weights is not None else find_torchgeo_weights(entry, download)
    sha = sha256_file(path)
    if path.name == entry.file_name:
        check_hash_in_name(path, sha)
    state, under = unwrap_state_dict(read_checkpoint(path), path)
    inp = entry.input()
    kwargs = {"img_size": entry.img_size} if entry.img_size else {}
    ref = reference_model(entry.model, len(inp.bands), **kwargs)
    arch = architecture_of(ref)
    allowed = VIT_ALLOWED_MISSING if arch == "timm_vit" else ()
    mapped, report = match_state(state, ref, path, allowed_missing=allowed)
    config: dict[str, Any] = {"backbone": entry.model}
    if kwargs:
        config["timm_kwargs"] = kwargs
    prov = {
        "publisher": "torchgeo", "name": entry.name, "weights_file": str(path), "weights_sha256": sha,
        "url": entry.url, "publication": entry.publication, "dataset": entry.dataset, "method": entry.method,
        "verified_against": "torchgeo 0.8.1", "state_dict_key": under, "load_report": report,
        "geometry": "chips are used at their size (TorchGeo resizes to 256 and crops 224 px)",
    }
    return PublishedModel(spec, arch, config, inp, mapped, str(ref.pretrained_cfg.get("first_conv")), prov)


def verify_against(members: Mapping[str, Any]) -> list[str]:
    """Differences between :data:`WEIGHTS` and TorchGeo's own enums (``{"ResNet18_Weights.X": Weights}``,
    each with ``url``, ``transforms``, ``meta``); empty when the table is right.

    Bands are compared by canonical name, the normalisation by pushing the transforms' ``Normalize`` steps
    through as one affine map per band."""
    import torch

    from earthembed.models.published.bands import canonical_band

    problems = []
    for name in list(WEIGHTS) + list(ALIASES):
        w = members.get(name)
        entry = lookup(name)
        if w is None:
            problems.append(f"{name}: not in torchgeo")
            continue
        meta = w.meta
        if w.url != entry.url:
            problems.append(f"{name}: url {w.url} != {entry.url}")
        if meta["model"] != entry.model or meta["in_chans"] != len(entry.bands):
            problems.append(f"{name}: model {meta['model']}/{meta['in_chans']} != {entry.model}/{len(entry.bands)}")
        if [canonical_band(b) for b in meta.get("bands", [])] != list(entry.bands):
            problems.append(f"{name}: bands {meta.get('bands')} != {entry.bands}")
        if meta.get("img_size") != entry.img_size:
            problems.append(f"{name}: img_size {meta.get('img_size')} != {entry.img_size}")
        n = len(entry.bands)
        a, b = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        steps = list(w.transforms) if isinstance(w.transforms, torch.nn.Sequential) else [w.transforms]
        for t in steps:
            if type(t).__name__ == "Normalize":
                m = torch.as_tensor(t.mean, dtype=torch.float64).expand(n)
                s = torch.as_tensor(t.std, dtype=torch.float64).expand(n)
                a, b = a / s, (b - m) / s
        inp = entry.input()
        want_a = 1 / torch.tensor(inp.std, dtype=torch.float64)
        want_b = -torch.tensor(inp.mean, dtype=torch.float64) * want_a
        if not (torch.allclose(a, want_a, rtol=1e-9) and torch.allclose(b, want_b, rtol=1e-9, atol=1e-12)):
            problems.append(f"{name}: normalisation x*{a.tolist()}+{b.tolist()} != x*{want_a.tolist()}+{want_b.tolist()}")
    return problems
