#!/usr/bin/env bash
# Create .venv and install earthembed with exact pins (CPU torch 2.13.0; nothing CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, from the local CPU wheel, so nothing can resolve a CUDA build
"$VENV/bin/python" -m pip install -q -c constraints.txt torch==2.13.0
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev,search,ray,cloud]"
# guard: no CUDA/nvidia/triton package may be present
if "$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(nvidia-|triton)'; then
  echo "install.sh: a CUDA package was installed; check constraints.txt" >&2
  exit 1
fi
# torchvision on CPU torch: install the import shim for every process of this venv
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/torchvision_shim.py "$SITE/_earthembed_torchvision_shim.py"
echo "import _earthembed_torchvision_shim" > "$SITE/_earthembed_torchvision_shim.pth"
"$VENV/bin/python" -c "import timm, lightning, torch; print('earthembed env ok: torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
