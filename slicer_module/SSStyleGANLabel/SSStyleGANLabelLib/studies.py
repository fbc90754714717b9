"""Local copies of the server's studies: download each one once and reuse it afterwards.

The Slicer logic loads the file this returns (or reuses the volume node it already made for that image id);
the download folder is the only state kept on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .client import SSGLClient
from .errors import ServerError

logger = logging.getLogger(__name__)


class StudyFiles:
    """Download folder of studies, keyed by datastore image id.

    Args:
        client: the server connection.
        folder: where downloads go (created when missing).
    """

    def __init__(self, client: SSGLClient, folder: str | Path) -> None:
        self.client = client
        self.folder = Path(folder)
        self.downloads = 0  # how many files were fetched from the server (reuse does not count)

    def cached(self, image: str) -> Path | None:
        """The local file of ``image`` when it was downloaded before, else None."""
        home = self._home(image)
        if not home.is_dir():
            return None
        files = sorted(p for p in home.iterdir() if p.is_file() and not p.name.startswith(".") and p.stat().st_size)
        return files[0] if files else None

    def _home(self, image: str) -> Path:
        """``folder/<image id>``: one sub-folder per study, so the server's file name is kept as it is."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image).lstrip(".") or "_"
        return self.folder / safe

    def path(self, image: str) -> Path:
        """The local file of ``image``, downloading it from the server only the first time.

        A DICOM series (which MONAI Label's datastore does not serve) is downloaded as one archive and
        unpacked; its first file is returned, from which Slicer reads the whole series.
        """
        found = self.cached(image)
        if found is not None:
            return found
        try:
            target = self.client.download_image(image, self._home(image))
        except ServerError as err:
            if err.status != 404:
                raise
            target = self.client.download_series(image, self._home(image))
        self.downloads += 1
        logger.info("downloaded study %s to %s", image, target)
        return target
