"""Active-learning strategies ``fps`` and ``random``: the next slice(s) to label, read from the slice map."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.errors import http_errors
from lib.service import SliceLabelService


class SliceStrategy(Strategy):
    """Suggest (image id, slice index) pairs with the service's ``fps`` or ``random`` rule.

    ``POST /activelearning/<name>`` itself is served by :mod:`lib.routes`; this task is what MONAI Label
    lists in ``/info/``. Request fields: ``count`` (default 1) and ``client_id`` (reservations are per client).
    """

    def __init__(self, service: SliceLabelService, strategy: str, description: str) -> None:
        super().__init__(description)
        self.service = service
        self.strategy = strategy

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        with http_errors():
            return self.service.suggest(self.strategy, count=request.get("count", 1),
                                        client_id=request.get("client_id") or "")
