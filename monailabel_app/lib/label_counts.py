"""Slice label counts mirrored into MONAI Label's datastore (``GET /datastore/`` shows them per image).

The label store is the record; the mirror is for ``GET /datastore/`` readers and is rebuilt from the labels
at every start. Many label writes are batched into one rewrite of the datastore's state file, off the label
write's path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ss_stylegan.atomic import FaultEpisodes

log = logging.getLogger(__name__)
MIRROR = "mirroring slice label counts into datastore_v2.json"

# label counts are written at most this often (a burst of labels: one rewrite); a reader of the datastore's
# listing or image info flushes them first. Each rewrite of datastore_v2.json costs the server CPU at a million
# slices (bench_server: 35 % of the server's CPU with 16 annotators at 0.5 s)
MIRROR_DELAY_S = 5.0


class LabelCountMirror:
    """Copies each image's slice label counts into its datastore info, in a background thread.

    A label write only marks its image (:meth:`changed`); the thread then writes the counts of every marked
    image in one rewrite of ``datastore_v2.json``. The label store is the record; the mirror is for
    ``GET /datastore/`` readers and is rebuilt from the labels at every start.

    Args:
        datastore: callable returning the datastore.
        counts: callable giving ``{class: count}`` of an image id.
        key: the image-info key of the counts.
        listed: callable telling whether an image id can be a datastore entry (a file; DICOM series
            folders never are), so a missing entry is worth a datastore refresh.
    """

    def __init__(self, datastore: Callable[[], Any], counts: Callable[[str], dict[str, int]],
                 key: str, listed: Callable[[str], bool]) -> None:
        self.datastore = datastore
        self.counts = counts
        self.key = key
        self.listed = listed
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._busy = False
        self._urgent = False  # a reader waits (flush): write without gathering
        self._thread: threading.Thread | None = None
        self.faults = FaultEpisodes(log)

    def changed(self, image_id: str) -> None:
        with self._cond:
            self._pending.add(image_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="label-count-mirror", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every change marked so far is in the datastore info."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while (self._pending or self._busy) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    if not self._cond.wait(timeout=30.0):
                        self._thread = None
                        return
                deadline = time.monotonic() + MIRROR_DELAY_S  # let a burst of label writes gather
                while not self._urgent and time.monotonic() < deadline:
                    self._cond.wait(timeout=deadline - time.monotonic())
                batch, self._pending, self._urgent = self._pending, set(), False
                self._busy = True
            try:
                self._write(batch)
                self.faults.recovered(MIRROR)
            except OSError as err:  # a full disk: logged once, retried with the next change
                self.faults.failed(MIRROR, err)
            except Exception:  # the mirror is informative only; the label store is the record
                log.exception("could not mirror label counts of %d image(s) into the datastore", len(batch))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: set[str]) -> None:
        infos = {image_id: {self.key: self.counts(image_id)} for image_id in batch}
        datastore = self.datastore()
        missing = [i for i in datastore.set_images_info(infos) if self.listed(i)]
        if missing:  # files copied in since the last refresh
            datastore.refresh()
            datastore.set_images_info({i: infos[i] for i in missing})
