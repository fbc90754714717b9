#!/usr/bin/env bash
# Create .venv in the repository and install what SS-StyleGAN Label needs to run (CPU or CUDA): requirements.txt.
# With --tests, also what the tests need (requirements-test.txt: pytest, slicer-core for the Slicer module's
# MRML tests, Playwright for the browser tests) and Debian's chromium (scripts/install_browser.sh). Prints each step; pip's own lines are cut down to the packages it collects.
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
REQUIREMENTS="$ROOT/requirements.txt"
WHAT="the server"
if [ "${1:-}" = "--tests" ]; then
    REQUIREMENTS="$ROOT/requirements-test.txt"
    WHAT="the server and the tests"
fi
if [ "${1:-}" = "--tests" ]; then
    bash "$ROOT/scripts/install_browser.sh"   # Debian's chromium for the browser tests, when it is missing
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
stamp="$VENV/.ssgl-installed-$(basename "$REQUIREMENTS" .txt)"
want="$(cat "$ROOT/requirements.txt" "$REQUIREMENTS" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup_env: $VENV is up to date for $WHAT"
    exit 0
fi
started=$SECONDS
# pip's lines cut down to one per package collected; its warnings about missing local index folders dropped
quiet() {
    grep --line-buffered -E "^(Collecting|Installing collected|ERROR)" | sed -u -e 's/^Collecting /setup_env:   collecting /' \
        -e 's/ (from .*)$//' -e 's/^Installing collected packages: .*/setup_env:   installing what was collected (the longest step)/' \
        || true
}
noise() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
echo "setup_env: [1/4] installing what $VENV needs for $WHAT ($(basename "$REQUIREMENTS")); on a fresh machine" \
     "about 2 minutes and 3.3 GB, 4.3 GB with the tests' packages"
"${PIP[@]}" install --progress-bar off -r "$REQUIREMENTS" 2> >(noise) | quiet
echo "setup_env: [2/4] monailabel 0.8.5 (without its optional extras)"
"${PIP[@]}" install -q --no-deps "monailabel==0.8.5" 2> >(noise)
echo "setup_env: [3/4] this project (editable)"
"${PIP[@]}" install -q --no-deps -e "$ROOT" 2> >(noise)
echo "setup_env: [4/4] checking the installation"
SSGL_TESTS="$([ "$REQUIREMENTS" = "$ROOT/requirements-test.txt" ] && echo 1 || echo 0)" "$VENV/bin/python" - <<'PY'
import os

import monai, monailabel, numpy, openTSNE, SimpleITK, nibabel, sklearn, torch  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
if os.environ["SSGL_TESTS"] == "1":
    import pytest  # noqa: F401
    import slicer  # slicer-core: the MRML scene the Slicer module's tests use
    import playwright.sync_api  # noqa: F401  (drives Debian's chromium in tests/test_browser.py)
    assert slicer.vtkMRMLScene is not None
print(f"setup_env: torch {torch.__version__}, monai {monai.__version__}, monailabel {monailabel.__version__}, "
      f"numpy {numpy.__version__}, openTSNE {openTSNE.__version__}")
PY
echo "$want" > "$stamp"
echo "setup_env: done in $((SECONDS - started)) s; $VENV holds $(du -sh "$VENV" 2>/dev/null | cut -f1)"
