#!/usr/bin/env bash
# Create .venv in the repository and install everything SS-StyleGAN Label needs (CPU or CUDA).
# Follows the install recipe in DESIGN.md: torch pinned to 2.13.0, numpy<2, pydicom<3, the real runtime
# dependencies of monailabel listed in requirements.txt, then monailabel 0.8.5 itself with --no-deps
# (its sam2 extra would build a CUDA torch from source; monai's torchvision extra breaks CPU torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSGL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
stamp="$VENV/.ssgl-installed"
want="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup_env: $VENV is up to date"
    exit 0
fi
echo "setup_env: installing into $VENV (about a minute and 2 GB on a fresh machine)"
# pip warns about missing local index folders on some machines; keep the log readable.
"${PIP[@]}" install -q -r "$ROOT/requirements.txt" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"${PIP[@]}" install -q --no-deps "monailabel==0.8.5" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"${PIP[@]}" install -q --no-deps -e "$ROOT" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"$VENV/bin/python" - <<'PY'
import torch, monai, monailabel, openTSNE, numpy, SimpleITK, nibabel, sklearn  # noqa: F401
import slicer  # noqa: F401  (slicer-core: the MRML scene the Slicer module's tests use)
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert slicer.vtkMRMLScene is not None
print(f"setup_env: torch {torch.__version__}, monai {monai.__version__}, monailabel {monailabel.__version__}, "
      f"numpy {numpy.__version__}, openTSNE {openTSNE.__version__}")
PY
echo "$want" > "$stamp"
