"""Reading published weight files safely, finding them in the usual caches, and matching their keys strictly.

* **No code runs while reading.** ``.safetensors`` are read as tensors; anything else goes through
  ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. A file that would need
  anything more (a class whose unpickling can run code) is refused with one line naming the file and the
  globals it asks for. The only classes allowed beyond torch's own are ``argparse.Namespace`` and
  ``pathlib`` paths, because MMEarth / ConvNeXt-V2 style checkpoints store their training arguments that
  way; rebuilding either sets attributes and cannot call anything.
* **Nothing is downloaded unless asked** (``download=True``, the CLI's ``--download``) and the environment
  allows it (``HF_HUB_OFFLINE`` unset). Otherwise a missing file is an error listing every place looked
  and how to fetch it.
* **Strict key matching.** A publisher's file is mapped onto a timm model definition: the key prefix
  (``module.``, ``backbone.``, ``encoder.``, ...) is chosen by overlap with the model's keys, the
  classifier head (timm's ``pretrained_cfg["classifier"]``) is dropped and reported, and every other
  unexpected key, missing key or shape mismatch is an error. Keys a publisher never trains (e.g. the final
  norm of an FCMAE encoder) are accepted as missing only where the publisher module says so, and reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from earthembed.outputs import sha256_file

SAFE_GLOBALS: tuple[type, ...] = (
    argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
)
STATE_KEYS = ("state_dict", "model", "model_state_dict", "teacher", "module", "net", "student")
"""Where checkpoints of common trainers keep the weights (Lightning, MAE / ConvNeXt-V2, DINO, ...), in the
order they are tried; DINO's teacher comes before its student, as DINO evaluates the teacher."""
PREFIX_WORDS = frozenset({"module", "backbone", "encoder", "model", "net", "trunk", "encoder_q", "teacher", "student"})
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.[A-Za-z0-9]+$")


_VALUE_OPS = frozenset({
    "normal_", "uniform_", "erfinv_", "clamp_", "clamp_min_", "clamp_max_", "mul_", "add_", "sub_", "div_",
    "fill_", "zero_", "copy_", "exp_", "log_", "sqrt_", "neg_", "addcmul_", "addcdiv_", "bernoulli_",
    "random_", "exponential_", "log_normal_", "cauchy_", "geometric_",
})


class _SkipValueOps(TorchFunctionMode):
    """In-place value writes on meta tensors do nothing but cost time (torch runs their decompositions):
    skipped. Ops that change shape or flags (``resize_``, ``requires_grad_``, ...) still run."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _VALUE_OPS and args and isinstance(args[0], Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def shapes_only():
    """Build modules on the meta device (shapes and dtypes, no memory), ~5x faster than plain
    ``torch.device("meta")`` because random initialisation is skipped."""
    with torch.device("meta"), _SkipValueOps():
        yield


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose unpickling would need more than tensors and plain containers."""


class WeightsNotFoundError(FileNotFoundError):
    """No weights file where one was looked for (the message lists the places and how to get it)."""


def _one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in ``path`` (a ``.safetensors`` file or a torch pickle), read without running code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None
    if path.suffix == ".npz":
        raise ValueError(f"{path}: NumPy/JAX checkpoints are not read here; load the model through timm once "
                         "and save its state_dict as .safetensors")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = _unsafe_globals(path)
        if needs:
            raise UnsafeCheckpointError(
                f"{path}: refused: unpickling it would call {', '.join(needs)}, which can run arbitrary code "
                "(only tensors and plain containers are read, torch.load(weights_only=True)); if you trust "
                "the file, convert its state_dict to .safetensors and pass that"
            ) from None
        raise UnsafeCheckpointError(f"{path}: refused: not a checkpoint torch reads safely ({_one_line(e, 160)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({_one_line(e, 160)})") from None


def _unsafe_globals(path: Path) -> list[str]:
    """Globals a checkpoint needs beyond the weights-only allow-list (empty if it cannot tell)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint, or unreadable: the caller reports the load error instead
        return []
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}
    return [n for n in names if n not in allowed]


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, path: str | Path) -> tuple[dict[str, Tensor], str]:
    """(the state dict inside a checkpoint, the key it was found under or ``""``)."""
    if _tensor_dict(obj):
        return dict(obj), ""
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if _tensor_dict(obj.get(key)):
                return dict(obj[key]), key
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors, ""
        raise ValueError(f"{path}: no state dict of tensors found (top-level keys: {list(obj)[:12]})")
    raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def check_hash_in_name(path: Path, sha256: str | None = None) -> None:
    """Files named ``<name>-<hex>.<ext>`` (the torch hub convention) must have a sha256 starting with <hex>."""
    m = _HASH_IN_NAME.search(path.name)
    if m and not (sha256 or sha256_file(path)).startswith(m.group(1)):
        raise ValueError(f"{path}: sha256 does not start with {m.group(1)} as its name promises; the file is "
                         "corrupt or not the published one - delete it and fetch it again")


def downloads_allowed() -> bool:
    """False when the environment forbids network access to model hubs (``HF_HUB_OFFLINE`` set)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` (used by timm and TorchGeo) caches ``url``."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def download_url(url: str, dst: Path) -> Path:
    """Fetch ``url`` into ``dst`` (the torch hub cache), checking the sha256 prefix in its name if any."""
    if not downloads_allowed():
        raise WeightsNotFoundError(f"{dst}: not cached, and the environment forbids downloads (HF_HUB_OFFLINE is set)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    m = _HASH_IN_NAME.search(dst.name)
    torch.hub.download_url_to_file(url, str(dst), hash_prefix=m.group(1) if m else None, progress=True)
    return dst


def not_found(what: str, looked: Sequence[str], how: str) -> WeightsNotFoundError:
    places = "; ".join(looked) if looked else "nowhere (no cache location is known for it)"
    return WeightsNotFoundError(f"{what}: no weights file found (looked in: {places}). {how}")


# -- key matching -------------------------------------------------------------------------------------------
def _listing(keys: Iterable[str], n: int = 6) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _candidate_prefixes(keys: Iterable[str]) -> set[str]:
    out = {""}
    for k in keys:
        parts = k.split(".")
        for i in range(1, min(len(parts), 4)):
            if parts[i - 1] not in PREFIX_WORDS:
                break
            out.add(".".join(parts[:i]) + ".")
    return out


def select_prefix(keys: Sequence[str], expected: Iterable[str]) -> str:
    """The key prefix (built from ``module.``, ``backbone.``, ``encoder.``, ...) under which most of ``keys``
    are ``expected`` keys; ties go to the shorter prefix."""
    expected = set(expected)

    def hits(p: str) -> int:
        return sum(1 for k in keys if k.startswith(p) and k[len(p):] in expected)

    return max(sorted(_candidate_prefixes(keys), key=len), key=hits)


def check_finite(state: Mapping[str, Tensor], source: str | Path) -> None:
    """Refuse weights holding NaN/Inf, naming the file they came from (not an export derived from it)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{source}: tensors {bad[:3]}{' ...' if len(bad) > 3 else ''} hold NaN/Inf values; these "
                         "are not usable weights (a diverged or corrupted file?)")


def match_state(
    state: Mapping[str, Tensor],
    reference: nn.Module,
    source: str | Path,
    allowed_missing: Iterable[str] = (),
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``state`` mapped onto ``reference``'s keys (a timm model, may live on the meta device), and a report.

    Keys outside the chosen prefix belong to other networks in the file (a MoCo key encoder, a decoder) and
    are counted; under the prefix, the classifier head (``reference.pretrained_cfg["classifier"]``) is dropped
    and listed. Any other unexpected key, any missing key not
    in ``allowed_missing`` and any shape mismatch raises ValueError naming ``source``.
    """
    ref = reference.state_dict()
    keys = list(state)
    prefix = select_prefix(keys, ref)
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    outside = [k for k in keys if not k.startswith(prefix)]
    if not any(k in ref for k in inside):
        raise ValueError(f"{source}: no key matches the {type(reference).__name__} it should hold "
                         f"(file keys: {_listing(keys)}; expected e.g. {_listing(ref)})")
    head = getattr(reference, "pretrained_cfg", {}).get("classifier") or ()
    head = (head,) if isinstance(head, str) else tuple(head)
    droppable = tuple(f"{h}." for h in head)
    dropped = sorted(k for k in inside if k not in ref and k.startswith(droppable))
    unexpected = sorted(k for k in inside if k not in ref and k not in dropped)
    allowed = set(allowed_missing) | {k for k in ref if k.endswith("num_batches_tracked")}
    missing = sorted(k for k in ref if k not in inside and k not in allowed)
    problems = []
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    shapes = [f"{k} {tuple(inside[k].shape)} vs {tuple(ref[k].shape)}" for k in sorted(inside)
              if k in ref and tuple(inside[k].shape) != tuple(ref[k].shape)]
    if shapes:
        problems.append(f"shape mismatches (file vs model) {'; '.join(shapes[:4])}" + (f" (+{len(shapes) - 4} more)" if len(shapes) > 4 else ""))
    if problems:
        where = f" under prefix {prefix!r}" if prefix else ""
        raise ValueError(f"{source}: does not match {type(reference).__name__}{where}: " + "; ".join(problems))
    mapped = {k: v for k, v in inside.items() if k in ref}
    check_finite(mapped, source)
    report = {
        "prefix": prefix,
        "loaded": len(mapped),
        "dropped": dropped,
        "outside_prefix": len(outside),
        "outside_prefix_examples": sorted(outside)[:5],
        "initialised": sorted(k for k in ref if k not in inside and not k.endswith("num_batches_tracked")),
    }
    return mapped, report
