"""Check earthembed's table of TorchGeo weights against TorchGeo's own enums.

    python scripts/verify_torchgeo_table.py                  # an installed torchgeo
    python scripts/verify_torchgeo_table.py --source DIR     # an unpacked wheel: DIR/torchgeo/models/resnet.py ...

`pip download torchgeo==0.8.1 --no-deps -d /tmp/tg && unzip -q /tmp/tg/torchgeo-0.8.1-py3-none-any.whl -d /tmp/tg/src`
gives a source DIR without installing TorchGeo's dependencies (only torch, torchvision and timm are imported:
the weights modules are loaded on their own, not through torchgeo/__init__.py). Exit status 1 on a difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path


def _enums_from_source(root: Path) -> list[object]:
    models = root / "torchgeo" / "models"
    pkg = types.ModuleType("_tg_models")
    pkg.__path__ = [str(models)]
    sys.modules["_tg_models"] = pkg
    mods = {}
    for name in ("swin", "resnet", "vit"):  # resnet.py imports from .swin, vit.py from .resnet
        spec = importlib.util.spec_from_file_location(f"_tg_models.{name}", models / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    return [getattr(m, a) for m in (mods["resnet"], mods["vit"]) for a in dir(m) if a.endswith("_Weights")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, help="directory holding torchgeo/models/*.py (default: import torchgeo)")
    args = ap.parse_args()
    if args.source:
        enums = _enums_from_source(args.source)
    else:
        import torchgeo.models as tgm

        enums = [getattr(tgm, a) for a in dir(tgm) if a.endswith("_Weights")]
    members = {f"{e.__name__}.{k}": v.value for e in enums for k, v in e.__members__.items()}
    from earthembed.models.published.torchgeo_weights import WEIGHTS, verify_against

    problems = verify_against(members)
    for p in problems:
        print("DIFF", p)
    print(f"{len(WEIGHTS)} entries checked against {len(members)} TorchGeo weights: "
          f"{'OK' if not problems else f'{len(problems)} differences'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
