"""The module's Logic, without Qt: MRML scene, slice views and predictions tables (see :mod:`.logic`).

It lives in a sub-package because Slicer loads every ``.py`` file directly in a module folder as a module of
its own.
"""

from .logic import SSStyleGANLabelLogic

__all__ = ["SSStyleGANLabelLogic"]
