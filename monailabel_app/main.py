"""SS-StyleGAN Label: the MONAI Label app.

Trainer ``ss_stylegan`` (unlabelled SS-StyleGAN + slice map), strategies ``fps`` and ``random`` (the next
slice to label), classifier ``classify`` (1-NN class of every slice), and the ``/slicelabels/`` and
``/slicemap/`` routes. See ``docs/ARCHITECTURE.md`` for the REST contract and
``lib/configs/settings.py`` for every ``--conf`` setting.

MONAI Label removes this folder from ``sys.path`` after loading this file, so everything the app needs
is imported here, at module level.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.config import settings as monai_settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.async_tasks.utils import processes

import lib.activelearning.slice_strategy  # noqa: F401  (import eagerly: see module docstring)
import lib.datastore  # noqa: F401
import lib.embedder  # noqa: F401
import lib.infers.classify  # noqa: F401
import lib.routes  # noqa: F401
import lib.trainers.ss_stylegan  # noqa: F401
from lib.activelearning.slice_strategy import SliceStrategy
from lib.configs.settings import AppSettings
from lib.datastore import AtomicLocalDatastore, datastore_extensions, set_aside_unreadable
from lib.infers.classify import SliceClassifier
from lib.routes import build_router, install
from lib.service import LABEL_TAG, SliceLabelService
from lib.trainers.ss_stylegan import SSStyleGANTrainer

log = logging.getLogger(__name__)


class SSStyleGANLabelApp(MONAILabelApp):
    """Few-label slice classification with SS-StyleGAN (IEEE TMI 2022, arXiv 2312.15972)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.settings = AppSettings.from_conf(conf, studies)  # ConfigError: the server refuses to start
        self.service = SliceLabelService(
            self.settings, studies, training_running=lambda: len(processes("train")) > 0
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SS-StyleGAN Label",
            description="Self-supervised StyleGAN slice embedding, farthest point suggestions, 1-NN classification",
            version="0.1.0",
            labels=list(self.settings.classes),
        )
        self.service.on_labels_changed = self.mirror_labels

    def init_datastore(self) -> Datastore:
        """The local datastore, written atomically; an unreadable state file is set aside first."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        set_aside_unreadable(self.studies)
        return AtomicLocalDatastore(
            self.studies,
            extensions=datastore_extensions(monai_settings.MONAI_LABEL_DATASTORE_FILE_EXT),
            auto_reload=monai_settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=monai_settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {"classify": SliceClassifier(self.service)}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {"ss_stylegan": SSStyleGANTrainer(self.settings, self.studies)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {
            "fps": SliceStrategy(self.service, "fps", "Farthest point sampling in the t-SNE map of W (SS-StyleGAN)"),
            "random": SliceStrategy(self.service, "random", "Random unlabelled slice (baseline)"),
        }

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        # Deliberately none: MONAI Label reruns every scoring method in a new subprocess after each
        # suggestion. Studies added later are embedded by the service's background refresh instead.
        return {}

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["ss_stylegan"] = self.service.state()
        meta["classifier"] = "classify"
        return meta

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's infer, after a datastore refresh when the image id is new (a file just copied in).

        ``POST /infer/classify`` itself is served by :mod:`lib.routes` (in the thread pool); this path is
        for other callers of the app (e.g. MONAI Label's batch infer)."""
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image) and not self.known_image(image):
            study = self.service.study(image)
            if study is not None:
                request = {**request, "image": str(study.path)}
            else:
                self.datastore().refresh()
        return super().infer(request, datastore)

    def known_image(self, image_id: str) -> bool:
        return bool(self.datastore().get_image_uri(image_id))

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """Like MONAI Label's, but a ``{"done": true}`` answer (nothing left to label) is passed through."""
        strategy = request.get("strategy") or "fps"
        task = self._strategies.get(strategy)
        if task is None:
            return super().next_sample(request)
        res = task(request, self.datastore())
        study = self.service.study(res["id"]) if res.get("id") else None
        if study is not None:
            res["path"] = str(study.path)
        return res

    def on_init_complete(self) -> None:
        super().on_init_complete()
        from monailabel.app import app as fastapi_app  # the running server's FastAPI object

        install(fastapi_app, build_router(self.service))
        self._sync_datastore_info()
        log.info("SS-StyleGAN Label ready: %s", self.service.state()["message"])

    def _sync_datastore_info(self) -> None:
        """Mirror the slice label counts into MONAI Label's image info (visible in ``GET /datastore/``)."""
        for image_id in {r["image"] for r in self.service.labels.records()}:
            self.mirror_labels(image_id)

    def mirror_labels(self, image_id: str) -> None:
        if not self.known_image(image_id):
            study = self.service.study(image_id)
            if study is None or study.path.is_dir():  # a DICOM series folder: MONAI Label lists files only
                return
            self.datastore().refresh()  # a file copied in since the last refresh
        try:
            self.datastore().update_image_info(image_id, {LABEL_TAG: self.service.labels.counts(image_id)})
        except Exception as err:  # the mirror is informative only; the label store is the record
            log.warning("could not update datastore info of %s: %s", image_id, err)
