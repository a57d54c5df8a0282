"""Weight files in each publisher's own key layout and shapes, made offline from model definitions.

* timm / TorchGeo: ``timm.create_model(...).state_dict()`` (TorchGeo ships timm state dicts).
* MMEarth: a dense ConvNeXt V2 in MMEarth's naming (``initial_conv``, ``stem``, ``downsample_layers``,
  ``stages.i.j.{dwconv, norm, pwconv1, grn, pwconv2}``), written in MinkowskiEngine's layout as MMEarth's
  sparse FCMAE encoder saves it (``kernel [k*k, in, out]``, biases ``[1, C]``, ``.ln`` / ``.linear``
  wrappers, GRN ``[1, C]``), with decoder keys and the training ``args`` beside it; plus an independent
  functional forward of that dense network (:func:`mmearth_reference`), the ground truth for the mapping.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import shapely
import torch
import torch.nn.functional as F
from torch import Tensor

MMEARTH_ORDER = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B8", "B9", "B11", "B12"]
ATTO = ((2, 2, 6, 2), (40, 80, 160, 320))


def random_timm(name: str, in_chans: int, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model (with a 7-class head) holding random weights, in eval mode. Built on the meta device and
    filled directly: timm's own initialisation costs seconds per model on a busy 2-core machine."""
    import timm

    from earthembed.models.published.checkpoint import shapes_only

    with shapes_only():
        net = timm.create_model(name, in_chans=in_chans, num_classes=7, **kwargs)
    net.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in net.state_dict().items():
            if k.endswith("num_batches_tracked"):
                t.zero_()
            elif k.endswith("running_var"):
                t.copy_(1 + torch.rand(t.shape, generator=g))
            elif t.ndim <= 1 and k.endswith("weight"):  # norm scales around 1
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
    return net.eval()


def make_store(path: Path, product: str, chips: int = 6, size: int = 16, seed: int = 0) -> Path:
    """A small store of one modality (``s2_l1c``, ``s2_l2a``, ``rgb``, ``s1_grd_linear``...) with a class label."""
    from earthembed.data.modalities import get_modality
    from earthembed.data.store import ChipRecord, StoreWriter

    mod = get_modality(product)
    rng = np.random.default_rng(seed)
    hi = {"uint8": 255, "uint16": 5000}.get(mod.dtype, 1)
    with StoreWriter(path, [mod], size, {"label": {"kind": "class", "classes": ["a", "b"]}}, batch_size=8) as w:
        for i in range(chips):
            x = rng.uniform(1, hi, (mod.num_bands, size, size)) if hi > 1 else rng.uniform(0.01, 1, (mod.num_bands, size, size))
            w.add(ChipRecord(f"c{i:03d}", {mod.name: x.astype(mod.dtype)}, geometry=shapely.box(i, 0, i + 1, 1),
                             crs="EPSG:4326", aoi="t", split=["train", "train", "test"][i % 3],
                             labels={"label": "ab"[i % 2]}))
    return path


# -- MMEarth ------------------------------------------------------------------------------------------------
def mmearth_dense_state(in_chans: int, patch: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """Random weights of an atto MMEarth ConvNeXt V2 encoder in its dense naming (no 'encoder.' prefix)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.1, mean: float = 0.0) -> Tensor:
        return mean + scale * torch.randn(*shape, generator=g)

    depths, dims = ATTO
    k = patch // 8
    s: dict[str, Tensor] = {
        "initial_conv.0.weight": r(dims[0], in_chans, 3, 3), "initial_conv.0.bias": r(dims[0]),
        "initial_conv.1.weight": r(dims[0], mean=1.0), "initial_conv.1.bias": r(dims[0]),
        "stem.0.weight": r(dims[0], 1, k, k, mean=1.0), "stem.0.bias": r(dims[0]),
        "stem.1.weight": r(dims[0], mean=1.0), "stem.1.bias": r(dims[0]),
    }
    for i in range(3):
        s[f"downsample_layers.{i}.0.weight"] = r(dims[i], mean=1.0)
        s[f"downsample_layers.{i}.0.bias"] = r(dims[i])
        s[f"downsample_layers.{i}.1.weight"] = r(dims[i + 1], dims[i], 2, 2)
        s[f"downsample_layers.{i}.1.bias"] = r(dims[i + 1])
    for i, (d, c) in enumerate(zip(depths, dims, strict=True)):
        for j in range(d):
            p = f"stages.{i}.{j}."
            s.update({p + "dwconv.weight": r(c, 1, 7, 7), p + "dwconv.bias": r(c),
                      p + "norm.weight": r(c, mean=1.0), p + "norm.bias": r(c),
                      p + "pwconv1.weight": r(4 * c, c), p + "pwconv1.bias": r(4 * c),
                      p + "grn.gamma": r(1, 1, 1, 4 * c), p + "grn.beta": r(1, 1, 1, 4 * c),
                      p + "pwconv2.weight": r(c, 4 * c), p + "pwconv2.bias": r(c)})
    return s


def to_minkowski(dense: dict[str, Tensor]) -> dict[str, Tensor]:
    """MMEarth's sparse FCMAE encoder layout of a dense state (keys prefixed ``encoder.``)."""
    out = {}
    for k, v in dense.items():
        parts = k.split(".")
        layer = ".".join(parts[:-1])
        is_ln = (parts[0] in ("initial_conv", "stem") and parts[1] in ("1",)) or \
                (parts[0] == "downsample_layers" and parts[2] == "0") or (parts[0] == "stages" and parts[3] == "norm")
        is_lin = parts[0] == "stages" and parts[3] in ("pwconv1", "pwconv2")
        if v.ndim == 4 and parts[-1] == "weight" and not k.endswith("grn.gamma"):
            o, i, kh, kw = v.shape
            if i == 1 and "downsample" not in k and parts[0] != "initial_conv":  # depthwise
                out[f"encoder.{layer}.kernel"] = v.transpose(3, 2).reshape(o, kh * kw).permute(1, 0).contiguous()
            else:
                out[f"encoder.{layer}.kernel"] = v.transpose(3, 2).reshape(o, i, kh * kw).permute(2, 1, 0).contiguous()
        elif "grn" in k:
            out[f"encoder.{k}"] = v.reshape(1, -1)
        elif is_ln:
            out[f"encoder.{layer}.ln.{parts[-1]}"] = v
        elif is_lin:
            out[f"encoder.{layer}.linear.{parts[-1]}"] = v
        elif parts[-1] == "bias":
            out[f"encoder.{k}"] = v.reshape(1, -1)  # Minkowski conv biases are [1, C]
        else:
            out[f"encoder.{k}"] = v
    return out


def save_mmearth_checkpoint(path: Path, dense: dict[str, Tensor], bands: list[str], patch: int = 8) -> Path:
    """A ``checkpoint-199.pth`` like MMEarth's: model (encoder + decoders), optimizer, epoch, scaler, args."""
    model = to_minkowski(dense)
    model.update({"proj.weight": torch.zeros(8, 320, 1, 1), "proj.bias": torch.zeros(8),
                  "mask_token": torch.zeros(1, 8, 1, 1), "decoder_dict.sentinel2.0.dwconv.weight": torch.zeros(8, 1, 7, 7),
                  "pred_dict.sentinel2.weight": torch.zeros(64 * 12, 8, 1, 1)})
    args = argparse.Namespace(model="convnextv2_atto", patch_size=patch, input_size=56, use_orig_stem=False,
                              inp_modalities={"sentinel2": list(bands)}, data_dir=Path("/data/mmearth64"))
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "epoch": 199, "scaler": {"scale": 65536.0}, "args": args}, path)
    return path


def _ln_cf(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, 1e-6).permute(0, 3, 1, 2)


def mmearth_reference(s: dict[str, Tensor], x: Tensor, patch: int = 8) -> Tensor:
    """Pooled features of MMEarth's dense ConvNeXt V2 (stem padding as in sparse pretraining), written out."""
    k = patch // 8
    x = F.conv2d(x, s["initial_conv.0.weight"], s["initial_conv.0.bias"], padding=1)
    x = F.gelu(_ln_cf(x, s["initial_conv.1.weight"], s["initial_conv.1.bias"]))
    x = F.conv2d(x, s["stem.0.weight"], s["stem.0.bias"], stride=k, groups=x.shape[1])
    x = _ln_cf(x, s["stem.1.weight"], s["stem.1.bias"])
    depths, _ = ATTO
    for i, d in enumerate(depths):
        if i:
            p = f"downsample_layers.{i - 1}."
            x = F.conv2d(_ln_cf(x, s[p + "0.weight"], s[p + "0.bias"]), s[p + "1.weight"], s[p + "1.bias"], stride=2)
        for j in range(d):
            p = f"stages.{i}.{j}."
            y = F.conv2d(x, s[p + "dwconv.weight"], s[p + "dwconv.bias"], padding=3, groups=x.shape[1])
            y = F.layer_norm(y.permute(0, 2, 3, 1), (x.shape[1],), s[p + "norm.weight"], s[p + "norm.bias"], 1e-6)
            y = F.gelu(F.linear(y, s[p + "pwconv1.weight"], s[p + "pwconv1.bias"]))
            gx = torch.norm(y, p=2, dim=(1, 2), keepdim=True)
            y = s[p + "grn.gamma"] * (y * (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6))) + s[p + "grn.beta"] + y
            y = F.linear(y, s[p + "pwconv2.weight"], s[p + "pwconv2.bias"])
            x = x + y.permute(0, 3, 1, 2)
    return x.mean((-2, -1))


class CodeOnUnpickle:
    """Unpickling this calls ``os.makedirs(marker)``: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))
