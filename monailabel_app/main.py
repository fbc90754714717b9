"""SS-StyleGAN Label: the MONAI Label app.

Trainer ``ss_stylegan`` (unlabelled SS-StyleGAN + slice map), strategies ``typiclust`` (the default), ``fps``
(the paper's), ``random``, ``probcover`` and ``fps_w`` (the next slice to label), classifier ``classify`` (the class of
every slice, by ``--conf classifier``), the ``/slicelabels/`` and ``/slicemap/`` routes, and the browser client at
``/ui/``. Every route carries MONAI Label's auth dependency (:mod:`lib.auth`), and MONAI Label's
inherited routes that take ids, tags, names or uploads are served guarded (:mod:`lib.guards`). See
``docs/ARCHITECTURE.md`` for the REST contract and ``lib/configs/settings.py`` for every ``--conf`` setting.

MONAI Label removes this folder from ``sys.path`` after loading this file, so everything the app needs
is imported here, at module level.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any, NoReturn

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from monailabel.config import settings as monai_settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from ss_stylegan.config import ConfigError
from ss_stylegan.labelling.label_values import OrphanedLabelsError
from ss_stylegan.labelling.methods import DESCRIPTIONS, STRATEGIES
from ss_stylegan.labelling.service import LABEL_TAG, LabellingService
from ss_stylegan.labelling.studies import check_studies_folder
from ss_stylegan.labelling.validation import identifier
from ss_stylegan.workspace import Workspace

import lib.activelearning.slice_strategy  # noqa: F401  (import eagerly: see module docstring)
import lib.answers  # noqa: F401
import lib.auth  # noqa: F401
import lib.datastore  # noqa: F401
import lib.errors  # noqa: F401
import lib.guards  # noqa: F401
import lib.guards_tasks  # noqa: F401
import lib.handlers  # noqa: F401
import lib.infers.classify  # noqa: F401
import lib.label_counts  # noqa: F401
import lib.routes  # noqa: F401
import lib.timing  # noqa: F401
import lib.train_control  # noqa: F401
import lib.trainers.ss_stylegan  # noqa: F401
import lib.uploads  # noqa: F401
import lib.web  # noqa: F401
from lib.activelearning.slice_strategy import SliceStrategy
from lib.answers import training_started
from lib.configs.settings import AppSettings
from lib.datastore import AtomicLocalDatastore, datastore_extensions, set_aside_unreadable
from lib.errors import hide_paths, redact, redacted, status_of, storage_answer, validation_answer
from lib.guards import build_guards
from lib.guards_tasks import build_task_guards
from lib.handlers import Handlers
from lib.infers.classify import SliceClassifier
from lib.label_counts import LabelCountMirror
from lib.routes import build_router
from lib.timing import ServerTimingMiddleware
from lib.train_control import TrainControl
from lib.trainers.ss_stylegan import SSStyleGANTrainer
from lib.web import build_web_router

log = logging.getLogger(__name__)

MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (as ``MALLOC_ARENA_MAX`` would), before the request threads
    make theirs: with one arena per thread, memory freed by a request thread (an upload's slices, a newly
    published map) was kept by that thread's arena, and a 30-minute soak grew 1.97 MB a minute over its second
    half; capped at 2 it stayed flat (benchmarks/bench_soak.py). Returns whether the cap was set (not glibc: no)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False  # the operator chose
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


limit_malloc_arenas()


def refuse_to_start(err: ConfigError) -> NoReturn:
    """A bad setting: its message alone on stderr, exit status 2, the traceback only at debug level."""
    log.debug("the server refuses to start", exc_info=err)
    sys.stderr.write(f"SS-StyleGAN Label cannot start: {err}\n")
    sys.stderr.flush()
    os._exit(2)   # from inside uvicorn's start-up: a plain exit would print its own traceback


class SSStyleGANLabelApp(MONAILabelApp):
    """Few-label slice classification with SS-StyleGAN (IEEE TMI 2022, arXiv 2312.15972)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        try:
            self._start(app_dir, studies, conf)
        except ConfigError as err:
            refuse_to_start(err)

    def _start(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.settings = AppSettings.from_conf(conf, studies)  # ConfigError: the server refuses to start
        if not studies.startswith(("http://", "https://")):
            check_studies_folder(studies, create=self.settings.create_studies)
        workspace = Workspace(self.settings.workspace)
        self.control = TrainControl(workspace, trainers=("ss_stylegan",),
                                    in_effect=lambda task, params: training_started(task, self.settings, params))
        try:
            self.service = LabellingService(self.settings.labelling(), studies, workspace,
                                            training_running=self.control.running)
        except OrphanedLabelsError as err:
            raise ConfigError(f"--conf classes {','.join(self.settings.classes)}: {err}") from err
        # label counts into MONAI Label's datastore info; a DICOM series folder is never a datastore entry
        self.mirror = LabelCountMirror(lambda: self.datastore(), self.service.labels.counts, LABEL_TAG,
                                       listed=lambda i: (s := self.service.study(i)) is not None and s.path.is_file())
        self.handlers = Handlers(self.service, self.settings, self.mirror)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SS-StyleGAN Label",
            description="Self-supervised StyleGAN slice embedding; few-label suggestions and classification in W and its map",
            version="0.1.0",
            labels=list(self.settings.classes),
        )

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
            protected_tag=LABEL_TAG,
            protected_info=LABEL_TAG,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {"classify": SliceClassifier(self.handlers)}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {"ss_stylegan": SSStyleGANTrainer(self.settings, self.studies)}

    def init_strategies(self) -> dict[str, Strategy]:
        """Every strategy by name, the server's default (``--conf pipeline`` / ``strategy``) first."""
        names = sorted(STRATEGIES, key=lambda name: name != self.settings.strategy)
        return {name: SliceStrategy(self.handlers, name, DESCRIPTIONS[name]) for name in names}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        # Deliberately none: MONAI Label reruns every scoring method in a new subprocess after each
        # suggestion. Studies added later are embedded by the service's background refresh instead.
        return {}

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["ss_stylegan"] = self.handlers.info()
        meta["classifier"] = "classify"
        return redacted(meta)

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's infer for datastore image ids only (never a path: MONAI Label would read any file
        that exists), after a datastore refresh when the id is new (a file just copied in).

        ``POST /infer/classify`` itself is served by :mod:`lib.routes` (in the thread pool); this path is
        for other callers of the app (MONAI Label's batch infer)."""
        image = identifier(request.get("image"), "image")
        study = self.service.require_study(image)
        if not self.known_image(image):
            self.datastore().refresh()
        if not self.known_image(image):  # a DICOM series folder: MONAI Label lists files only
            request = {**request, "image": str(study.path)}
        return super().infer(request, datastore)

    def known_image(self, image_id: str) -> bool:
        return bool(self.datastore().get_image_uri(image_id))

    def on_init_complete(self) -> None:
        super().on_init_complete()
        from monailabel.app import app as fastapi_app  # the running server's FastAPI object

        hide_paths(studies=self.studies, workspace=self.settings.workspace)
        self.service.labels.open_for_writing()  # the server is the one process that writes labels
        install(fastapi_app, build_router(self.handlers, self.control), build_web_router(self.handlers),
                build_guards(datastore=self.datastore, limits=lambda: self.settings.upload_limits, mirror=self.mirror),
                build_task_guards(datastore=self.datastore, control=self.control, models=lambda: sorted(self._infers),
                                  strategies=lambda: sorted(self._strategies)))
        for image_id in self.service.labels.images():  # label counts into the datastore info (GET /datastore/)
            self.mirror.changed(image_id)
        self.service.sync()  # the live map's suggestion index is built in the background from now on
        log.info("SS-StyleGAN Label ready: %s; label in a browser at /ui/ on this server", self.service.status().message)


def install(app: FastAPI, *routers: APIRouter) -> None:
    """Put the routes of ``routers`` (in order) ahead of MONAI Label's, so their paths take precedence, and
    answer a file-system error of any route (MONAI Label's own too) with the app's JSON error: 507 when the
    disk is full, else 503 (:func:`lib.errors.storage_answer`), instead of a plain-text 500. Every answer says
    how long the server spent on it (``Server-Timing``, :mod:`lib.timing`)."""
    app.add_exception_handler(OSError, _storage_fault)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.middleware_stack = None  # the running server builds its middleware again, with the handler, at once
    app.add_middleware(ServerTimingMiddleware)  # Server-Timing: app;dur=<ms> on every answer
    before = len(app.router.routes)
    for router in routers:
        app.include_router(router)
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
    app.openapi_schema = None


async def _invalid_request(request: Request, err: Exception) -> JSONResponse:
    return JSONResponse({"detail": validation_answer(err.errors())}, status_code=422)  # type: ignore[attr-defined]


async def _storage_fault(request: Request, err: Exception) -> JSONResponse:
    status = status_of(err)  # a domain error that is an OSError (ProtectedError, StorageError) keeps its row
    if status is not None:
        return JSONResponse({"detail": redact(str(err))}, status_code=status)
    status, message = storage_answer(err)  # type: ignore[arg-type]
    return JSONResponse({"detail": message}, status_code=status)
