"""Slices as a reader looks at them: windowed at native resolution, and small thumbnails, for the browser client.

The model sees slices in the canonical volume's axes (rows towards R, columns towards A). A reader expects the
radiological convention: anterior at the top and the patient's right on the viewer's left. :func:`displayed`
turns a canonical slice that way; a picture study (PNG/JPEG, one slice) is shown as the file shows it.

Reading a CT volume takes a fraction of a second, and a reader scrolls through one study: :class:`SliceViewer`
keeps the last volumes read (bounded by count and bytes) and reads a changed study again. Thumbnails come from
the slice cache the training made (the model's own input) without touching the study; a slice that is not
cached (skipped as empty, or a study added later) is made from the volume.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import re
import threading
import zipfile
from pathlib import Path

import numpy as np

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.cache import Study, cached_study_slices
from ss_stylegan.data.fingerprint import Stamp, stamp
from ss_stylegan.data.preprocess import CT_WINDOWS, apply_window, model_ready_slice, window_range
from ss_stylegan.data.readers import PICTURE_SUFFIXES, StudyReadError, Volume, looks_like_dicom_file, read_volume
from ss_stylegan.labelling.errors import NotFoundError
from ss_stylegan.labelling.label_values import SliceOutOfRangeError, UnreadableImageError
from ss_stylegan.labelling.validation import FieldError

VIEW_WINDOWS = ("auto", "lung", "abdomen", "brain", "bone")
"""Named windows a client may ask for (besides ``C:W``): ``auto`` is the study's own (the training's rule)."""
MIN_SIDE, MAX_SIDE = 16, 2048
"""Bounds of a requested image side (px). A native slice larger than :data:`MAX_SIDE` is scaled down to it."""
THUMBNAIL_SIDE = 96
MAX_CACHED_VOLUMES = 3
MAX_CACHED_BYTES = 1 << 30
_CW = re.compile(r"^(-?\d{1,5}(?:\.\d{1,3})?):(\d{1,5}(?:\.\d{1,3})?)$")


@dataclasses.dataclass(frozen=True)
class SliceView:
    """One windowed slice as PNG, with what a client needs to scroll and to say what it shows."""

    png: bytes
    slice: int
    n_slices: int
    window: tuple[float, float]    # (low, high) intensity mapped to black..white
    width: int
    height: int


def parse_window(text: str | None) -> str | tuple[float, float]:
    """A client's window: a name of :data:`VIEW_WINDOWS`, or ``"C:W"`` (centre and width, e.g. ``-600:1500``)
    as ``(low, high)``.

    Raises:
        FieldError: anything else.
    """
    value = (text or "auto").strip()
    if value in VIEW_WINDOWS:
        return value
    match = _CW.match(value)
    if match is None:
        raise FieldError("window", f"must be one of {', '.join(VIEW_WINDOWS)} or centre:width such as -600:1500, "
                                   f"got {value[:40]!r}")
    center, width = float(match.group(1)), float(match.group(2))
    if width <= 0:
        raise FieldError("window", f"width must be positive, got {value!r}")
    return center - width / 2.0, center + width / 2.0


def side(value: int | None, field: str = "size") -> int | None:
    """A requested image side, checked against :data:`MIN_SIDE`..:data:`MAX_SIDE` (None: native)."""
    if value is not None and not MIN_SIDE <= value <= MAX_SIDE:
        raise FieldError(field, f"must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {value}")
    return value


def is_picture(path: Path) -> bool:
    return path.name.lower().endswith(PICTURE_SUFFIXES)


def displayed(image: np.ndarray, picture: bool) -> np.ndarray:
    """A canonical axial slice (``[X, Y]``: rows towards R, columns towards A) in radiological display:
    anterior at the top, the patient's right on the left. A picture study is returned as it is."""
    return image if picture else np.ascontiguousarray(image.T[::-1, ::-1])


def png_of(image: np.ndarray, longest: int | None = None) -> tuple[bytes, int, int]:
    """A ``uint8 [H, W]`` image as PNG, scaled (aspect kept) so that its longest side is ``longest`` (None:
    native, but at most :data:`MAX_SIDE`); returns ``(bytes, width, height)``."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    target = longest if longest is not None else min(MAX_SIDE, max(picture.size))
    if target != max(picture.size):
        scale = target / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), picture.width, picture.height


class SliceViewer:
    """Windowed slices and thumbnails of studies, with the last volumes read kept in memory.

    Args:
        max_volumes: most volumes kept.
        max_bytes: most bytes of volume data kept (the newest volume is kept whatever its size).
    """

    def __init__(self, max_volumes: int = MAX_CACHED_VOLUMES, max_bytes: int = MAX_CACHED_BYTES) -> None:
        self.max_volumes = max_volumes
        self.max_bytes = max_bytes
        self._volumes: collections.OrderedDict[Path, tuple[Stamp | None, Volume]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._reading: dict[Path, threading.Lock] = {}

    def volume(self, study: Study) -> Volume:
        """The study's volume, read again when its files changed.

        Raises:
            UnreadableImageError: the study cannot be read (the message says why).
        """
        path = Path(study.path)
        now = stamp(path)
        with self._lock:
            kept = self._volumes.get(path)
            if kept is not None and kept[0] == now:
                self._volumes.move_to_end(path)
                return kept[1]
            reading = self._reading.setdefault(path, threading.Lock())
        with reading:  # one read of a study at a time; a second request waits for it
            with self._lock:
                kept = self._volumes.get(path)
                if kept is not None and kept[0] == now:
                    return kept[1]
            try:
                volume = read_volume(path)
            except StudyReadError as err:
                raise UnreadableImageError(str(err)) from err
            with self._lock:
                self._volumes[path] = (now, volume)
                self._volumes.move_to_end(path)
                self._trim()
                self._reading.pop(path, None)
        return volume

    def _trim(self) -> None:
        total = sum(v.data.nbytes for _, v in self._volumes.values())
        while len(self._volumes) > 1 and (len(self._volumes) > self.max_volumes or total > self.max_bytes):
            _, (_, oldest) = self._volumes.popitem(last=False)
            total -= oldest.data.nbytes

    def view(self, study: Study, slice_index: int, window: str | None = None, size: int | None = None) -> SliceView:
        """One slice windowed for reading (:func:`parse_window`), at native size or with its longest side
        ``size`` px, in radiological display.

        Raises:
            FieldError: a bad window or size. SliceOutOfRangeError: no such slice. UnreadableImageError.
        """
        chosen, longest = parse_window(window), side(size)
        volume = self.volume(study)
        n = volume.n_slices
        if not 0 <= slice_index < n:
            raise SliceOutOfRangeError(f"image {study.image_id!r} has slices 0..{n - 1}, not {slice_index}")
        if isinstance(chosen, tuple):
            low, high = chosen
        elif chosen == "auto":
            low, high = window_range(volume.data, volume.is_hu, SliceConfig(window="auto"), is_8bit=volume.is_8bit)
        else:
            center, width = CT_WINDOWS[chosen]
            low, high = center - width / 2.0, center + width / 2.0
        image = displayed(apply_window(volume.data[:, :, slice_index], low, high), is_picture(study.path))
        png, width, height = png_of(image, longest)
        return SliceView(png=png, slice=slice_index, n_slices=n, window=(low, high), width=width, height=height)

    def thumbnail(self, study: Study, slice_index: int, slice_cfg: SliceConfig, cache_dir: str | Path,
                  size: int = THUMBNAIL_SIDE) -> bytes:
        """A slice as the model saw it (the training's window and resolution), in radiological display,
        scaled to ``size`` px: from the slice cache when it holds it, else made from the volume.

        Raises:
            SliceOutOfRangeError: no such slice. UnreadableImageError: the study cannot be read.
        """
        side(size)
        cached = cached_study_slices(study.path, slice_cfg, cache_dir)
        image = None
        if cached is not None:
            images, kept = cached
            row = int(np.searchsorted(kept, slice_index))
            if row < len(kept) and kept[row] == slice_index:
                image = np.asarray(images[row])
        if image is None:
            try:
                image = model_ready_slice(self.volume(study), slice_index, slice_cfg)
            except IndexError as err:
                raise SliceOutOfRangeError(f"image {study.image_id!r}: {err}") from err
        return png_of(displayed(image, is_picture(study.path)), size)[0]


def series_archive(study: Study, folder: str | Path) -> Path:
    """A DICOM series study packed as one uncompressed zip file in ``folder`` (what a viewer downloads).

    Raises:
        NotFoundError: the study is a single file.
    """
    if not study.path.is_dir():
        raise NotFoundError(f"image {study.image_id!r} is a single file, not a DICOM series: download it with "
                            "GET /datastore/image")
    target = Path(folder) / f"{study.image_id}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in study.path.iterdir()
                           if p.is_file() and not p.is_symlink() and looks_like_dicom_file(p)):
            archive.write(path, path.name)
    return target
