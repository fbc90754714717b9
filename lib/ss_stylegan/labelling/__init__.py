"""The labelling service over one studies folder: the live slice map, labels, suggestions and classification.

What a server needs on top of the method (:mod:`ss_stylegan.maps.build`, :mod:`ss_stylegan.workspace`), with no
HTTP in it, so that the MONAI Label app stays a set of adapters:

- :mod:`.studies` -- :class:`StudyIndex`, the one list of the studies in the folder (files and DICOM series
  folders); the live map, the label flags and the app's datastore mirror all ask it.
- :mod:`.placement` -- :class:`MapEmbedder`, the published encoder and projector placing new slices into a map.
- :mod:`.live_map` -- :class:`LiveSliceMap`, the published map kept in step with the folder (new studies
  embedded, deleted or changed ones dropped) by publishing new versions in a background thread.
- :mod:`.flags` -- :class:`LabelFlags`, which labels no longer fit their study.
- :mod:`.indexes` -- :class:`MapIndexes`, the per-map suggestion and 1-NN indexes.
- :mod:`.service` -- :class:`LabellingService`, the requests (suggest, label, classify, map points), answering
  typed results (:mod:`.results`) that the app shapes into JSON.
"""

from ss_stylegan.labelling.errors import (
    EmbeddingInProgressError,
    NotFoundError,
    NotReadyError,
)

__all__ = ["EmbeddingInProgressError", "NotFoundError", "NotReadyError"]
