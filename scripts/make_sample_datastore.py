#!/usr/bin/env python
"""Write the README's sample datastore: synthetic CT-like studies, some slices holding a lesion.

    python scripts/make_sample_datastore.py --out sample_datastore [--studies 6 --slices 32 --size 64]

Writes ``<out>/study_NN.nii.gz`` with a JSON sidecar each (per-slice ``label`` / ``class``; the
server ignores them, they are the answer key) and, with ``--pictures N``, ``N`` 2-D PNG slices of
one more study in ``<out>/pictures/`` (a datastore for the 2-D mode; ``labels.json`` maps each
picture's image id to its class). MONAI Label lists only the top level of ``<out>``, so the
pictures folder does not mix into the volume datastore.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ss_stylegan.storage.atomic import atomic_write_bytes, atomic_write_text
from ss_stylegan.data.preprocess import CT_WINDOWS, apply_window
from ss_stylegan.data.synthetic import (
    CLASSES,
    make_synthetic_datastore,
    random_lesion_slices,
    read_sidecar_labels,
    synthetic_volume,
)


def write_pictures(folder: Path, count: int, size: int, random_state: int) -> list[Path]:
    """Write ``count`` lung-window PNG slices (alternating classes where possible) of one synthetic study."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(random_state)
    n_slices = max(2 * count, 8)
    lesion = random_lesion_slices(n_slices, 0.5, rng)
    data = synthetic_volume(n_slices, size, lesion, rng)
    labels = [1 if k in lesion else 0 for k in range(n_slices)]
    by_class = {c: [k for k, lab in enumerate(labels) if lab == c] for c in (0, 1)}
    order = [k for pair in zip(by_class[1], by_class[0]) for k in pair] + list(range(n_slices))
    picked = list(dict.fromkeys(order))[:count]
    center, width = CT_WINDOWS["lung"]
    paths, answer = [], {}
    for k in sorted(picked):
        grey = apply_window(data[:, :, k], center - width / 2, center + width / 2)
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="PNG")
        path = folder / f"slice_{k:02d}.png"
        atomic_write_bytes(path, buffer.getvalue())
        answer[path.stem] = CLASSES[labels[k]]
        paths.append(path)
    atomic_write_text(folder / "labels.json", json.dumps(answer, indent=1, sort_keys=True))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("sample_datastore"), help="output folder")
    parser.add_argument("--studies", type=int, default=6, help="number of volumes")
    parser.add_argument("--slices", type=int, default=32, help="slices per volume")
    parser.add_argument("--size", type=int, default=64, help="in-plane size in pixels")
    parser.add_argument("--pictures", type=int, default=4, help="2-D PNG slices in <out>/pictures (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.studies < 1 or args.slices < 1 or args.size < 8 or args.pictures < 0:
        parser.error("need --studies >= 1, --slices >= 1, --size >= 8 and --pictures >= 0")
    start = time.perf_counter()
    paths = make_synthetic_datastore(args.out, n_studies=args.studies, n_slices=args.slices, size=args.size,
                                     random_state=args.seed)
    labels = np.concatenate([read_sidecar_labels(p) for p in paths])
    print(f"wrote {len(paths)} studies ({len(labels)} slices, {int(labels.sum())} with a lesion) to {args.out}")
    if args.pictures:
        pictures = write_pictures(args.out / "pictures", args.pictures, args.size, random_state=args.seed + 1000)
        print(f"wrote {len(pictures)} 2-D PNG slices to {args.out / 'pictures'}")
    print(f"done in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
