"""Slicer-free core of the SS-StyleGAN Label module: HTTP client, labelling session, map data.

Imports only the Python standard library and numpy (matplotlib optionally, for :func:`mapview.render_png`),
so it runs inside 3D Slicer and is tested with pytest against a real server outside it.
"""

from __future__ import annotations

from .client import SSGLClient
from .errors import (
    AuthenticationError,
    ClientConfigError,
    ProtocolError,
    ServerError,
    ServerUnreachableError,
    SessionError,
    SSGLError,
)
from .mapview import MapPoints, MapScene, render_png
from .records import (Classification, Finding, FindingRun, ModelState, Neighbour, SliceLabel, SlicePrediction,
                      Suggestion)
from .session import CurrentSlice, LabelSession, class_shortcuts
from .studies import StudyFiles

__all__ = [
    "AuthenticationError",
    "Classification",
    "ClientConfigError",
    "CurrentSlice",
    "Finding",
    "FindingRun",
    "LabelSession",
    "MapPoints",
    "MapScene",
    "ModelState",
    "Neighbour",
    "ProtocolError",
    "SSGLClient",
    "SSGLError",
    "ServerError",
    "ServerUnreachableError",
    "SessionError",
    "SliceLabel",
    "SlicePrediction",
    "StudyFiles",
    "Suggestion",
    "class_shortcuts",
    "render_png",
]
