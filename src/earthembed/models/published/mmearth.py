"""``mmearth:<checkpoint file>``: MMEarth MP-MAE checkpoints (Nedungadi et al. 2024) as a timm ConvNeXt V2.

The published checkpoints (``pt-<input>_<model>_<data>_<loss>_<img>-<patch>/checkpoint-199.pth`` from
https://sid.erda.dk/sharelink/g23YOnaaTp) are FCMAE training states: ``{"model", "optimizer", "epoch",
"scaler", "args"}``, where ``model`` holds the encoder under ``encoder.`` - a *sparse* (MinkowskiEngine)
ConvNeXt V2 - next to the pretraining decoders (``proj``, ``mask_token``, ``decoder_dict``, ``pred_dict``, ...),
and ``args`` is the training ``argparse.Namespace`` (model name, patch size, input bands).

Mapping onto timm's ``convnextv2_*`` (:class:`~earthembed.models.timm_cnn.TimmEncoder` with ``stem="mmearth"``):

* Minkowski layout -> dense: a convolution ``kernel`` ``[k*k, in, out]`` becomes ``weight [out, in, k, k]``,
  a depthwise ``kernel`` ``[k*k, C]`` becomes ``[C, 1, k, k]`` (in both the k*k index runs over the kernel's
  columns first, hence the final transpose - the same convention as MMEarth's own
  ``helpers.remap_checkpoint_keys`` uses for fine-tuning); biases ``[1, C]`` and GRN ``gamma``/``beta`` become
  ``[C]``; the ``.ln`` / ``.linear`` wrappers disappear. Dense checkpoints (``.weight`` keys, GRN
  ``[1, 1, 1, C]``) need only the renaming.
* Names: ``initial_conv.{0,1}`` -> ``stem.{0,1}``, ``stem.{0,1}`` -> ``stem.{3,4}`` (MMEarth's stem, see
  :func:`~earthembed.models.timm_cnn.mmearth_stem`) or ``stem_orig.{0,1}`` -> timm's patchify ``stem.{0,1}``;
  ``downsample_layers.i.j`` -> ``stages.{i+1}.downsample.j``; ``stages.i.j.{dwconv, norm, pwconv1, grn,
  pwconv2}`` -> ``stages.i.blocks.j.{conv_dw, norm, mlp.fc1, mlp.grn, mlp.fc2}``.
* The FCMAE encoder has no final norm: timm's ``head.norm`` keeps its identity initialisation (as timm does
  for its own ``.fcmae`` weights), and is reported.

Input bands: ``args.inp_modalities["sentinel2"]`` when the checkpoint carries ``args``, else MMEarth's defaults
by channel count (12: ``B1..B7, B8A, B8, B9, B11, B12`` - note B8A before B8 -; 3: ``B2, B3, B4``, the "rgb"
checkpoints, trained in BGR order). Normalisation: MMEarth standardises every dataset with its own per-band
mean/std (its pretraining data with MMEarth's statistics, GEO-Bench with each benchmark's), so the store's
own statistics are used - they must exist (``earthembed stats STORE``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor

from earthembed.models.published.checkpoint import match_state, read_checkpoint, sha256_file, shapes_only
from earthembed.models.published.spec import PublishedInput, PublishedModel, Spec
from earthembed.models.timm_cnn import mmearth_stem

MMEARTH_S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B08", "B09", "B11", "B12")
MMEARTH_S2_FULL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B08", "B09", "B10", "B11", "B12")
MMEARTH_BGR = ("B02", "B03", "B04")
MISSING_OK = ("head.norm.weight", "head.norm.bias")
_BLOCK_NAMES = {"dwconv": "conv_dw", "norm": "norm", "pwconv1": "mlp.fc1", "pwconv2": "mlp.fc2",
                "grn.gamma": "mlp.grn.weight", "grn.beta": "mlp.grn.bias"}
_STAGE = re.compile(r"stages\.(\d+)\.(\d+)\.(.+)")
_DOWN = re.compile(r"downsample_layers\.(\d+)\.(\d+)\.(.+)")
_TIMM_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\..+")


def _dense(key: str, v: Tensor) -> tuple[str, Tensor]:
    """One Minkowski / MMEarth-dense encoder key and value in dense PyTorch form (names still MMEarth's)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] in ("ln", "linear"):
        parts.pop(-2)
    if parts[-1] == "kernel":
        parts[-1] = "weight"
        ks = int(round(v.shape[0] ** 0.5))
        if v.ndim == 3:  # [k*k, in, out] -> [out, in, k, k]
            v = v.permute(2, 1, 0).reshape(v.shape[2], v.shape[1], ks, ks).transpose(3, 2)
        elif v.ndim == 2:  # depthwise [k*k, C] -> [C, 1, k, k]
            v = v.permute(1, 0).reshape(v.shape[1], 1, ks, ks).transpose(3, 2)
    elif (parts[-1] in ("gamma", "beta") and parts[-2] == "grn") or (parts[-1] == "bias" and v.ndim == 2):
        v = v.reshape(-1)
    return ".".join(parts), v.contiguous()


def _timm_name(key: str) -> str:
    """MMEarth encoder key (dense form) -> timm ConvNeXt key."""
    for old, new in (("initial_conv.0.", "stem.0."), ("initial_conv.1.", "stem.1."), ("stem.0.", "stem.3."),
                     ("stem.1.", "stem.4."), ("stem_orig.0.", "stem.0."), ("stem_orig.1.", "stem.1.")):
        if key.startswith(old):
            return new + key[len(old):]
    if m := _DOWN.fullmatch(key):
        return f"stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}.{m.group(3)}"
    if m := _STAGE.fullmatch(key):
        rest = m.group(3)
        for old, new in _BLOCK_NAMES.items():
            if rest.startswith(old + ".") or rest == old:
                rest = new + rest[len(old):]
                break
        return f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"
    if key.startswith("norm."):  # the final norm of a fine-tuned dense model
        return "head." + key
    return key


def _linear_as_conv(state: dict[str, Tensor], ref: torch.nn.Module) -> dict[str, Tensor]:
    """MMEarth's point-wise ``Linear`` weights ``[out, in]`` as timm's 1x1 convs ``[out, in, 1, 1]`` where the
    timm variant uses them (atto..nano are built with ``conv_mlp=True``); any other shape is left for the
    strict check to report."""
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    out = {}
    for k, v in state.items():
        want = shapes.get(k)
        if want is not None and v.ndim == 2 and want == (*v.shape, 1, 1):
            v = v.reshape(want)
        out[k] = v
    return out


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default) if args is not None else default


def _reference(state: Mapping[str, Tensor], args: Any, path: Path, in_chans: int, orig_stem: bool,
               k: int) -> tuple[str, torch.nn.Module]:
    """(timm ``convnextv2_*`` name, its definition on the meta device with MMEarth's stem) matching the
    checkpoint's depths and widths; ``args.model`` is tried first, and checked, not trusted."""
    blocks = [(int(m.group(1)), int(m.group(2))) for k_ in state if (m := _TIMM_BLOCK.fullmatch(k_))]
    depths = [1 + max((j for i, j in blocks if i == stage), default=-1) for stage in range(4)]
    if 0 in depths:
        raise ValueError(f"{path}: expected 4 ConvNeXt stages with blocks, found blocks per stage {depths}")
    dims = [int(state[f"stages.{i}.blocks.0.conv_dw.weight"].shape[0]) for i in range(4)]
    known = timm.list_models("convnextv2_*")
    names = [str(_arg(args, "model", ""))] + [n for n in known if "." not in n]
    for name in dict.fromkeys(n for n in names if n in known):
        with shapes_only():
            net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans,
                                    **({"patch_size": k} if orig_stem else {}))
        if [len(s.blocks) for s in net.stages] == depths and [int(s.blocks[0].conv_dw.out_channels) for s in net.stages] == dims:
            if not orig_stem:
                with shapes_only():
                    net.stem = mmearth_stem(in_chans, dims[0], k)
            return name, net
    raise ValueError(f"{path}: a ConvNeXt V2 with depths {depths} and widths {dims} matches no timm convnextv2_* model")


def _bands(args: Any, in_chans: int, path: Path) -> tuple[list[str], str]:
    from earthembed.models.published.bands import canonical_band

    listed = (_arg(args, "inp_modalities") or {}).get("sentinel2") if args is not None else None
    if listed == "all":
        listed = list(MMEARTH_S2_FULL)
    if listed:
        bands = [canonical_band(str(b)) for b in listed]
        src = "args.inp_modalities['sentinel2'] of the checkpoint"
    elif in_chans == len(MMEARTH_S2):
        bands, src = list(MMEARTH_S2), "MMEarth's 12-band default (no args in the checkpoint)"
    elif in_chans == len(MMEARTH_BGR):
        bands, src = list(MMEARTH_BGR), "MMEarth's rgb (BGR-ordered) default (no args in the checkpoint)"
    else:
        raise ValueError(f"{path}: a {in_chans}-band MMEarth checkpoint without its training args: "
                         "the input bands are unknown")
    if len(bands) != in_chans:
        raise ValueError(f"{path}: args list {len(bands)} input bands {bands} but the stem reads {in_chans} channels")
    return bands, src


def open_mmearth(spec: Spec, weights: str | Path | None = None, download: bool = False) -> PublishedModel:
    """Open ``mmearth:<checkpoint file>`` (``--weights`` must not name another file)."""
    path = Path(spec.name)
    if weights is not None and Path(weights).resolve() != path.resolve():
        raise ValueError(f"mmearth:{path}: the checkpoint is the spec itself; --weights {weights} names another file")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: MMEarth checkpoint not found; download a pt-*/checkpoint-199.pth from "
            "https://sid.erda.dk/sharelink/g23YOnaaTp (see docs/published_weights.md) and give its path")
    raw = read_checkpoint(path)
    args = raw.get("args") if isinstance(raw, Mapping) else None
    model = raw.get("model") if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping) else raw
    if not isinstance(model, Mapping):
        raise ValueError(f"{path}: not an MMEarth checkpoint (no 'model' state dict)")
    has_encoder = any(k.startswith("encoder.") for k in model)
    enc = {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.")} if has_encoder else dict(model)
    outside = sorted({k.split(".")[0] for k in model if has_encoder and not k.startswith("encoder.")})
    dropped = sorted(k for k in enc if k.startswith("head."))  # a fine-tuned model's classifier
    state = dict(_dense(k, v) for k, v in enc.items() if not k.startswith("head."))
    state = {_timm_name(k): v for k, v in state.items()}
    if "stages.0.blocks.0.conv_dw.weight" not in state:
        raise ValueError(f"{path}: no ConvNeXt V2 encoder found (expected encoder.stages.0.0.dwconv.*; "
                         f"keys: {sorted(model)[:6]})")
    in_chans = int(state["stem.0.weight"].shape[1])
    bands, band_src = _bands(args, in_chans, path)
    orig = any(k.startswith("stem_orig.") for k in enc)
    k = int(state["stem.0.weight" if orig else "stem.3.weight"].shape[-1])
    backbone, ref = _reference(state, args, path, in_chans, orig, k)
    if orig:  # the original ConvNeXt patchify stem, with MMEarth's kernel (patch size / 8)
        config: dict[str, Any] = {"backbone": backbone, "stem_stride": 4, "timm_kwargs": {"patch_size": k}}
    else:
        config = {"backbone": backbone, "stem": "mmearth", "stem_stride": k}
    state = _linear_as_conv(state, ref)
    mapped, report = match_state(state, ref, path, allowed_missing=MISSING_OK)
    report["dropped"] = dropped + report["dropped"]
    report["outside_encoder"] = outside
    inp = PublishedInput(bands, "optical", None,
                         note="MMEarth standardises each dataset with its own per-band mean/std (pretraining data and "
                              "GEO-Bench alike), so the store's statistics are used")
    prov = {
        "publisher": "mmearth", "name": str(path), "weights_file": str(path), "weights_sha256": sha256_file(path),
        "source": "https://sid.erda.dk/sharelink/g23YOnaaTp", "publication": "https://arxiv.org/abs/2405.02771",
        "bands_from": band_src, "patch_size": _int_or_none(_arg(args, "patch_size")),
        "input_size": _int_or_none(_arg(args, "input_size")),
        "use_orig_stem": orig, "epoch": _int_or_none(raw.get("epoch") if isinstance(raw, Mapping) else None),
        "load_report": report,
        "geometry": "chips are used at their size; MMEarth pretrained on 56 or 112 px crops",
    }
    return PublishedModel(spec, "timm_cnn", config, inp, mapped, "stem.0", prov)
