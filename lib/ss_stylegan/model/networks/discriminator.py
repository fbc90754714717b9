"""Residual StyleGAN2 discriminator whose first blocks are shared with the SS-StyleGAN encoder.

Layout for resolution R (blocks halve the resolution, R -> R/2 -> ... -> 4)::

    x -> from_rgb -> block_R ... block_{k}  (shared trunk: ``shared_blocks`` blocks)
                 |-> D blocks ... -> D epilogue (minibatch stddev, conv, fc, fc)  -> logit [N, 1]
                 |-> E blocks ... -> E epilogue (conv, fc, fc)                      -> mu, logvar [N, w_dim]

The encoder branch has the same structure as the discriminator's remaining blocks but its own
weights. It has no minibatch-stddev layer, so mu(x) of one image does not depend on the batch.
Cohen Hochberg et al. found sharing almost everything best (12 shared layers at 256x256).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ss_stylegan.config import ModelConfig
from ss_stylegan.model.networks.layers import (
    Conv2dLayer,
    FullyConnected,
    MinibatchStdDev,
    check_shape,
)


class DiscriminatorBlock(nn.Module):
    """Residual block ``[N, in, H, W] -> [N, out, H/2, W/2]``: two 3x3 convs plus a 1x1 skip, both downsampling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3)
        self.conv1 = Conv2dLayer(in_channels, out_channels, 3, down=True)
        self.skip = Conv2dLayer(in_channels, out_channels, 1, activation="linear", bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


class Epilogue(nn.Module):
    """4x4 features ``[N, C, 4, 4] -> [N, out_dim]``: (minibatch stddev,) 3x3 conv, fc, linear fc."""

    def __init__(self, in_channels: int, out_dim: int, mbstd_group_size: int = 0) -> None:
        super().__init__()
        self.mbstd = MinibatchStdDev(mbstd_group_size) if mbstd_group_size > 0 else None
        self.conv = Conv2dLayer(in_channels + (1 if self.mbstd else 0), in_channels, 3)
        self.fc = FullyConnected(in_channels * 16, in_channels, "lrelu")
        self.out = FullyConnected(in_channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.out(self.fc(self.conv(x).flatten(1)))


class EncoderHead(nn.Module):
    """The encoder's own layers: shared-trunk features -> ``(mu, logvar)``, each ``[N, w_dim]``."""

    def __init__(self, blocks: list[DiscriminatorBlock], in_channels: int, w_dim: int,
                 logvar_min: float, logvar_max: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.epilogue = Epilogue(in_channels, 2 * w_dim)
        self.w_dim, self.logvar_min, self.logvar_max = w_dim, logvar_min, logvar_max

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            features = block(features)
        out = self.epilogue(features)
        mu, logvar = out[:, : self.w_dim], out[:, self.w_dim :]
        return mu, logvar.clamp(self.logvar_min, self.logvar_max)


class Discriminator(nn.Module):
    """Discriminator ``image [N, C, R, R] -> logit [N, 1]`` with an encoder ``image -> (mu, logvar)`` over W."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels()
        res = [cfg.resolution // 2**i for i in range(cfg.num_blocks)]          # R, R/2, ..., 8
        k = cfg.resolved_shared_blocks
        self.from_rgb = Conv2dLayer(cfg.img_channels, ch[cfg.resolution], 1)
        self.shared = nn.ModuleList(DiscriminatorBlock(ch[r], ch[r // 2]) for r in res[:k])
        self.d_blocks = nn.ModuleList(DiscriminatorBlock(ch[r], ch[r // 2]) for r in res[k:])
        self.d_epilogue = Epilogue(ch[4], 1, cfg.mbstd_group_size)
        self.encoder_head = EncoderHead(
            [DiscriminatorBlock(ch[r], ch[r // 2]) for r in res[k:]], ch[4], cfg.w_dim, cfg.logvar_min, cfg.logvar_max
        )

    def _check(self, x: torch.Tensor, name: str) -> None:
        c, r = self.cfg.img_channels, self.cfg.resolution
        check_shape(x, (None, c, r, r), name)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Shared features ``[N, C, R, R] -> [N, C_k, R / 2**k, R / 2**k]``."""
        x = self.from_rgb(x)
        for block in self.shared:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real/fake logit ``[N, 1]`` for images ``[N, img_channels, R, R]`` in [-1, 1]."""
        self._check(x, "Discriminator input")
        x = self.trunk(x)
        for block in self.d_blocks:
            x = block(x)
        return self.d_epilogue(x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian over W for images ``[N, img_channels, R, R]``: ``mu, logvar`` each ``[N, w_dim]``."""
        self._check(x, "Encoder input")
        return self.encoder_head(self.trunk(x))

    # Parameter groups: which parameters each loss is allowed to move (see ss_stylegan.model.losses).
    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trunk used by both the discriminator and the encoder."""
        return list(self.from_rgb.parameters()) + list(self.shared.parameters())

    def discriminator_only_parameters(self) -> list[nn.Parameter]:
        return list(self.d_blocks.parameters()) + list(self.d_epilogue.parameters())

    def encoder_only_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder_head.parameters())
