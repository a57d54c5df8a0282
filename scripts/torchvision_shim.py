"""Let ``import torchvision`` work with a CPU-only torch build.

The PyPI torchvision 0.28 wheel is a CUDA build: its compiled extension cannot load on CPU torch, and
torchvision's meta registrations then fail with ``operator torchvision::nms does not exist``
(pytorch/vision#9085), taking timm and lightning down with it. This module is imported from a ``.pth``
file so it covers every process (DataLoader and DDP workers too). It only installs a one-shot import
hook; the fix runs on the first ``import torchvision`` and does nothing where the extension loads.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys

_LIB = None  # keeps the torch.library.Library alive


def _patch() -> None:
    global _LIB
    import glob
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    for loc in spec.submodule_search_locations:
        for so in glob.glob(os.path.join(loc, "_C*.so")):
            try:
                torch.ops.load_library(so)
                return  # extension loads: nothing to do
            except (OSError, RuntimeError):
                pass
    try:
        torch.ops.torchvision.nms  # noqa: B018
        return
    except (AttributeError, RuntimeError):
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


class _TorchvisionShimFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[override]
        if name == "torchvision":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            with contextlib.suppress(Exception):  # never break imports because of the shim
                _patch()
        return None


if not any(type(f).__name__ == "_TorchvisionShimFinder" for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionShimFinder())
