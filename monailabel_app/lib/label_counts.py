"""Slice label counts mirrored into MONAI Label's datastore (``GET /datastore/`` shows them per image).

The label store is the record; the mirror is for ``GET /datastore/`` readers and is rebuilt from the labels
at every start. Many label writes are batched into one rewrite of the datastore's state file, off the label
write's path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ss_stylegan.labelling.batches import BatchWriter
from ss_stylegan.storage.faults import FaultEpisodes

log = logging.getLogger(__name__)
MIRROR = "mirroring slice label counts into datastore_v2.json"

# label counts are written at most this often (a burst of labels: one rewrite); a reader of the datastore's
# listing or image info flushes them first. Each rewrite of datastore_v2.json costs the server CPU at a million
# slices (bench_server: 35 % of the server's CPU with 16 annotators at 0.5 s)
MIRROR_DELAY_S = 5.0
MIRROR_RETRY_S = 30.0  # a rewrite refused (a full disk) is tried again after this


class LabelCountMirror(BatchWriter):
    """Copies each image's slice label counts into its datastore info, in a background thread.

    A label write only marks its image (:meth:`changed`); the thread then writes the counts of every marked
    image in one rewrite of ``datastore_v2.json``. The label store is the record; the mirror is for
    ``GET /datastore/`` readers and is rebuilt from the labels at every start. A rewrite refused by a full disk
    is logged once and tried again.

    Args:
        datastore: callable returning the datastore.
        counts: callable giving ``{class: count}`` of an image id.
        key: the image-info key of the counts.
        listed: callable telling whether an image id can be a datastore entry (a file; DICOM series
            folders never are), so a missing entry is worth a datastore refresh.
    """

    def __init__(self, datastore: Callable[[], Any], counts: Callable[[str], dict[str, int]],
                 key: str, listed: Callable[[str], bool]) -> None:
        super().__init__("label-count-mirror", MIRROR_DELAY_S, MIRROR_RETRY_S)
        self.datastore = datastore
        self.counts = counts
        self.key = key
        self.listed = listed
        self.faults = FaultEpisodes(log)

    def _write(self, batch: set[str]) -> set[str]:
        try:
            infos = {image_id: {self.key: self.counts(image_id)} for image_id in batch}
            datastore = self.datastore()
            missing = [i for i in datastore.set_images_info(infos) if self.listed(i)]
            if missing:  # files copied in since the last refresh
                datastore.refresh()
                datastore.set_images_info({i: infos[i] for i in missing})
        except OSError as err:  # a full disk: logged once, tried again
            self.faults.failed(MIRROR, err)
            return batch
        except Exception:  # the mirror is informative only; the label store is the record
            log.exception("could not mirror label counts of %d image(s) into the datastore", len(batch))
            return set()
        self.faults.recovered(MIRROR)
        return set()
