"""SS-StyleGAN networks: StyleGAN2 generator and a discriminator that shares its first blocks with an encoder.

:class:`SSStyleGAN` is the container that training, checkpoints and embedding pass around.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ss_stylegan.config import ModelConfig
from ss_stylegan.model.networks.discriminator import Discriminator
from ss_stylegan.model.networks.generator import (
    Generator,
    MappingNetwork,
    SynthesisNetwork,
)
from ss_stylegan.model.networks.layers import ShapeError, check_shape

__all__ = [
    "Discriminator",
    "Generator",
    "MappingNetwork",
    "SSStyleGAN",
    "ShapeError",
    "SynthesisNetwork",
]


class SSStyleGAN(nn.Module):
    """Generator, its exponential moving average, and the discriminator with its encoder head.

    Args:
        cfg: architecture settings.

    ``generator_ema`` is what inference uses (smoother than the raw generator); it never receives
    gradients. ``encode`` / ``encoder`` give the encoder's Gaussian over W.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        self.model_version: str | None = None   # set by ss_stylegan.model.checkpoint.load_model
        self.step = 0                           # training step of the loaded checkpoint

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[N, img_channels, R, R]`` in [-1, 1] -> ``(mu, logvar)``, each ``[N, w_dim]``."""
        return self.discriminator.encode(x)

    @property
    def encoder(self):  # noqa: ANN201 - a bound method: ``model.encoder(x) -> (mu, logvar)``
        """The encoder as a callable ``x -> (mu, logvar)`` (its weights live in ``discriminator``)."""
        return self.discriminator.encode

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, use_ema: bool = True) -> torch.Tensor:
        """``G(mu(x))``: images ``[N, C, R, R]`` -> reconstructions of the same shape (constant noise)."""
        mu, _ = self.encode(x)
        g = self.generator_ema if use_ema else self.generator
        return g.synthesis(g.broadcast(mu), noise_mode="const")

    def train(self, mode: bool = True) -> SSStyleGAN:
        super().train(mode)
        self.generator_ema.eval()
        return self


def check_images(x: torch.Tensor, cfg: ModelConfig, name: str = "images") -> None:
    """Raise :class:`ShapeError` unless ``x`` is ``[N, img_channels, R, R]`` for this model."""
    check_shape(x, (None, cfg.img_channels, cfg.resolution, cfg.resolution), name)
