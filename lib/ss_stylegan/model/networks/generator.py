"""StyleGAN2 generator: a mapping network z -> w and a synthesis network ws -> image.

They are separate modules because SS-StyleGAN's encoder predicts w directly: a real image is
reconstructed as ``synthesis(broadcast(mu(x)))`` without the mapping network.
"""

from __future__ import annotations

import torch
from torch import nn

from ss_stylegan.config import ModelConfig
from ss_stylegan.model.networks.layers import (
    FullyConnected,
    StyledConv,
    ToRGB,
    check_shape,
    normalize_2nd_moment,
    upsample2x,
)


def num_ws_for(resolution: int) -> int:
    """Number of w vectors the synthesis network consumes: one per convolution plus the last to-RGB."""
    return 2 * (resolution.bit_length() - 1) - 2


class MappingNetwork(nn.Module):
    """``z [N, z_dim] -> ws [N, num_ws, w_dim]`` (the same w broadcast to every layer).

    Tracks ``w_avg``, the running mean of w, used for the truncation trick.
    """

    def __init__(
        self,
        z_dim: int,                    # input latent size
        w_dim: int,                    # output latent size
        num_ws: int,                   # copies of w to broadcast (one per synthesis layer)
        num_layers: int = 8,           # fully connected layers
        lr_multiplier: float = 0.01,   # slower learning for the mapping (StyleGAN)
        w_avg_beta: float = 0.995,     # decay of the running mean of w
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        widths = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *[FullyConnected(a, b, "lrelu", lr_multiplier=lr_multiplier) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        """Map ``z [N, z_dim]`` to ``ws [N, num_ws, w_dim]``; ``psi < 1`` pulls w towards ``w_avg``."""
        check_shape(z, (None, self.z_dim), "MappingNetwork z")
        w = self.layers(normalize_2nd_moment(z))
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation_psi)
        return w[:, None, :].repeat(1, self.num_ws, 1)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (upsample +) two styled convs, skip to-RGB output."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int) -> None:
        super().__init__()
        self.is_first = resolution == 4
        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = StyledConv(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = StyledConv(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGB(out_channels, img_channels, w_dim)
        self.num_conv = 1 if self.is_first else 2

    def forward(
        self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ws [N, num_conv + 1, w_dim]``; returns features and the running skip image at this resolution."""
        if self.is_first:
            x = self.const[None].repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        rgb = self.torgb(x, ws[:, self.num_conv])
        img = rgb if img is None else upsample2x(img) + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    """``ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]`` (values roughly in [-1, 1])."""

    def __init__(self, w_dim: int, resolution: int, img_channels: int, channels: dict[int, int]) -> None:
        super().__init__()
        self.w_dim, self.resolution, self.img_channels = w_dim, resolution, img_channels
        self.num_ws = num_ws_for(resolution)
        self.resolutions = sorted(channels)
        self.blocks = nn.ModuleList(
            SynthesisBlock(channels[max(r // 2, 4)], channels[r], w_dim, r, img_channels) for r in self.resolutions
        )

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        check_shape(ws, (None, self.num_ws, self.w_dim), "SynthesisNetwork ws")
        x = img = None
        i = 0
        for block in self.blocks:
            # consecutive blocks share one w: a block's to-RGB uses the same w as the next block's first conv
            x, img = block(x, img, ws[:, i : i + block.num_conv + 1], noise_mode)
            i += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator ``z [N, z_dim] -> image [N, img_channels, R, R]`` = synthesis(mapping(z))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg.w_dim, cfg.resolution, cfg.img_channels, cfg.channels())
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            cfg.z_dim, cfg.w_dim, self.num_ws, cfg.mapping_layers, cfg.mapping_lr_multiplier
        )

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi, update_w_avg), noise_mode)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """Repeat one w per sample to every layer: ``[N, w_dim] -> [N, num_ws, w_dim]``."""
        check_shape(w, (None, self.cfg.w_dim), "Generator.broadcast w")
        return w[:, None, :].repeat(1, self.num_ws, 1)
