"""The one device resolver of the project: the server's ``--conf device``, the CLI's ``--device`` and the
training all turn a device name into a device here."""

from __future__ import annotations

from ss_stylegan.config import ConfigError


class DeviceError(ConfigError):
    """A device that is not a valid name, or a CUDA device on a machine without CUDA."""


def resolve_device(value: object = "auto") -> str:
    """``auto`` (or None / empty) -> ``cuda`` when a CUDA GPU is available, else ``cpu``; ``cpu``; ``cuda`` or
    ``cuda:N`` when CUDA is available.

    Raises:
        DeviceError: an unknown name, or CUDA asked for without a CUDA GPU (the message says what to use).
    """
    import torch

    text = "auto" if value is None else str(value).strip().lower() or "auto"
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {text!r} asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
        return text
    raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
