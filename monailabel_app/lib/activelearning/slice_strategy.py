"""Active-learning strategies ``fps`` and ``random``: the next slice(s) to label, read from the slice map."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.service import NotReadyError, SliceLabelService


class SliceStrategy(Strategy):
    """Suggest (image id, slice index) pairs with the service's ``fps`` or ``random`` rule.

    Request fields: ``count`` (default 1) and ``client_id`` (reservations are per client).
    """

    def __init__(self, service: SliceLabelService, strategy: str, description: str) -> None:
        super().__init__(description)
        self.service = service
        self.strategy = strategy

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        count = request.get("count", 1)
        try:
            return self.service.suggest(self.strategy, count=count, client_id=str(request.get("client_id") or ""))
        except NotReadyError as err:
            raise HTTPException(status_code=409, detail=str(err)) from err
        except ValueError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
