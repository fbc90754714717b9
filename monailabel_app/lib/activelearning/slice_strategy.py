"""Active-learning strategies ``fps`` and ``random``: the next slice(s) to label, read from the slice map."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.handlers import SUGGEST_FIELDS, Handlers


class SliceStrategy(Strategy):
    """Suggest (image id, slice index) pairs with the ``fps`` or ``random`` rule.

    ``POST /activelearning/<name>`` is served by :mod:`lib.routes`; this task is what MONAI Label lists in
    ``/info/`` and calls for its other callers. Both call the same handler (:meth:`lib.handlers.Handlers.suggest`).
    Request fields: ``count`` (default 1) and ``client_id`` (reservations are per client); the other keys
    MONAI Label adds to a request are not the strategy's.
    """

    def __init__(self, handlers: Handlers, strategy: str, description: str) -> None:
        super().__init__(description)
        self.handlers = handlers
        self.strategy = strategy

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        return self.handlers.suggest(self.strategy, {k: request[k] for k in SUGGEST_FIELDS if k in request})
