"""Errors of the labelling service that the HTTP layer answers with a status code (see the app's
``lib/errors.py``, the one table from error types to status codes)."""

from __future__ import annotations


class NotReadyError(RuntimeError):
    """The request needs something that does not exist yet (a trained model, a label); HTTP 409."""


class EmbeddingInProgressError(NotReadyError):
    """The image is being embedded into the map right now; HTTP 409, retry in a few seconds."""


class NotFoundError(LookupError):
    """An image id, model, strategy or session that does not exist; HTTP 404."""
