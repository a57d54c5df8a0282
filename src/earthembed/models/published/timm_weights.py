"""``timm:<model name>``: timm's pretrained weights (ImageNet, FCMAE, ...) from the local caches.

Where timm itself keeps them: the Hugging Face hub cache (``timm/<name>``, ``model.safetensors`` or
``pytorch_model.bin``) and the torch hub cache (``~/.cache/torch/hub/checkpoints/<file of pretrained_cfg.url>``),
or ``--weights PATH``. The file goes through the architecture's own timm ``checkpoint_filter_fn`` (as
timm's ``load_pretrained`` does), so original-layout files (e.g. Meta's ConvNeXt V2 ``.pt``) map too.

Input: RGB (``R``, ``G``, ``B``) in the unit interval, normalised with the weights' ``pretrained_cfg`` mean/std
(ImageNet's for most). A Sentinel-2 store feeds B04/B03/B02 at ``DN / 3000`` (0.3 reflectance = 1, see
:data:`~earthembed.models.published.bands.DISPLAY_MAX_DN`); an 8-bit RGB store at ``DN / 255``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from earthembed.models.published.bands import UNIT_INTERVAL
from earthembed.models.published.checkpoint import (
    check_hash_in_name,
    download_url,
    downloads_allowed,
    match_state,
    not_found,
    read_checkpoint,
    sha256_file,
    shapes_only,
    torch_hub_file,
    unwrap_state_dict,
)
from earthembed.models.published.spec import PublishedInput, PublishedModel, Spec

HF_FILES = ("model.safetensors", "pytorch_model.bin")
FCMAE_MISSING = ("head.norm.weight", "head.norm.bias")  # FCMAE encoders have no final norm (timm loads them non-strict)


def reference_model(backbone: str, in_chans: int, **kwargs: object) -> torch.nn.Module:
    """The timm model definition (on the meta device: shapes only, no memory) published weights must fit."""
    with shapes_only():
        return timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)


def architecture_of(model: torch.nn.Module) -> str:
    """earthembed architecture holding a timm model: ``timm_vit`` for ViTs, ``timm_cnn`` for the rest."""
    return "timm_vit" if isinstance(model, VisionTransformer) else "timm_cnn"


def _hf_repo(cfg: object) -> tuple[str | None, str | None]:
    hub = getattr(cfg, "hf_hub_id", None)
    if not hub:
        return None, None
    repo, _, rev = str(hub).partition("@")
    return repo, rev or None


def find_timm_weights(name: str, cfg: object, download: bool) -> Path:
    """The cached weights file of timm model ``name`` (downloaded first only if ``download``)."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    looked: list[str] = []
    repo, rev = _hf_repo(cfg)
    files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else list(HF_FILES)
    if repo:
        for fn in files:
            hit = try_to_load_from_cache(repo, fn, revision=rev)
            if isinstance(hit, str):
                return Path(hit)
        looked.append(f"{constants.HF_HUB_CACHE}/models--{repo.replace('/', '--')}/snapshots/*/{'|'.join(files)}")
    url = getattr(cfg, "url", None)
    if url:
        p = torch_hub_file(url)
        if p.is_file():
            return p
        looked.append(str(p))
    if getattr(cfg, "file", None) and Path(cfg.file).is_file():
        return Path(cfg.file)
    if download and downloads_allowed():
        if repo:
            for fn in files:
                try:
                    return Path(hf_hub_download(repo, fn, revision=rev))
                except EntryNotFoundError:
                    continue
        if url:
            return download_url(url, torch_hub_file(url))
    how = (f"Fetch it with --download (or `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` "
           "where the network is reachable) or pass --weights PATH")
    if download and not downloads_allowed():
        how = "Downloads are off in this environment (HF_HUB_OFFLINE is set); pass --weights PATH"
    raise not_found(f"timm:{name}", looked, how)


def open_timm(spec: Spec, weights: str | Path | None = None, download: bool = False) -> PublishedModel:
    """Open ``timm:<name>`` (``resnet18``, ``convnextv2_atto.fcmae``, ``vit_small_patch16_224.augreg_in21k``, ...)."""
    name = spec.name
    arch, tag = timm.models.split_model_name_tag(name)
    if arch not in timm.list_models():
        raise ValueError(f"timm:{name}: timm has no model {arch!r} (see timm.list_models())")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None and weights is None:
        raise ValueError(f"timm:{name}: timm has no pretrained weights named {name!r} "
                         f"(available: {timm.list_pretrained(arch + '.*')[:8]}); or pass --weights PATH")
    path = Path(weights) if weights is not None else find_timm_weights(name, cfg, download)
    state, under = unwrap_state_dict(read_checkpoint(path), path)
    ref = reference_model(arch, 3)
    filt = getattr(sys.modules[type(ref).__module__], "checkpoint_filter_fn", None)
    if filt is not None:
        try:
            state = filt(state, ref)
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(f"{path}: timm could not map this {arch} checkpoint ({e})") from None
    first_conv = str(ref.pretrained_cfg.get("first_conv") or "")
    w = state.get(f"{first_conv}.weight")
    if w is not None and w.shape[1] != 3:
        raise ValueError(f"{path}: a {w.shape[1]}-channel {arch} checkpoint; timm:<name> reads RGB weights only "
                         "(for other bands, use torchgeo:/mmearth: or an earthembed export)")
    fcmae = (tag or getattr(cfg, "tag", "") or "").startswith("fcmae")
    mapped, report = match_state(state, ref, path, allowed_missing=FCMAE_MISSING if fcmae else ())
    mean = list(getattr(cfg, "mean", None) or (0.485, 0.456, 0.406))
    std = list(getattr(cfg, "std", None) or (0.229, 0.224, 0.225))
    inp = PublishedInput(
        ["R", "G", "B"], "optical", UNIT_INTERVAL, mean=mean, std=std, fill=mean,
        note=f"timm pretrained_cfg mean/std of {name} on RGB in [0, 1]; missing bands read as that mean",
    )
    config = {"backbone": arch}
    if isinstance(ref, VisionTransformer) and getattr(cfg, "input_size", None):
        config["timm_kwargs"] = {"img_size": int(cfg.input_size[-1])}
    sha = sha256_file(path)
    if weights is None:
        check_hash_in_name(path, sha)
    prov = {
        "publisher": "timm", "name": name, "weights_file": str(path), "weights_sha256": sha,
        "url": getattr(cfg, "url", None), "hf_hub_id": getattr(cfg, "hf_hub_id", None),
        "license": getattr(cfg, "license", None), "state_dict_key": under, "load_report": report,
        "geometry": f"chips are used at their size (timm pretrained at {tuple(getattr(cfg, 'input_size', ()))[-2:]})",
    }
    return PublishedModel(spec, architecture_of(ref), config, inp, mapped, first_conv, prov)
