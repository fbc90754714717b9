"""StyleGAN2 building blocks: equalised layers, modulated convolution, noise, to-RGB, resampling.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020 (arXiv:1912.04958).
Every weight is stored with unit variance and scaled at run time ("equalised learning rate"), so
Adam's per-parameter step sizes are comparable across layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


class ShapeError(ValueError):
    """A tensor given to a network has the wrong shape; the message says what was expected."""


def check_shape(x: torch.Tensor, expected: tuple[int | None, ...], name: str) -> None:
    """Raise :class:`ShapeError` unless ``x.shape`` matches ``expected`` (``None`` = any size)."""
    ok = x.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ShapeError(f"{name}: expected a tensor of shape {want}, got {list(x.shape)}")


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU scaled by sqrt(2) so that activations keep unit variance."""
    return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def _blur_kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device, dtype=dtype)
    k = k[:, None] * k[None, :]
    return k / k.sum()


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Double the spatial size with bilinear interpolation ([1, 3, 3, 1] filter), ``[N,C,H,W] -> [N,C,2H,2W]``."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """Halve the spatial size: [1, 3, 3, 1] low-pass filter then decimate, ``[N,C,H,W] -> [N,C,H/2,W/2]``."""
    c = x.shape[1]
    k = _blur_kernel(x.device, x.dtype).expand(c, 1, 4, 4)
    return F.conv2d(x, k, stride=2, padding=1, groups=c)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row of ``[N, D]`` to unit root-mean-square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class FullyConnected(nn.Module):
    """Equalised-learning-rate linear layer ``[N, in] -> [N, out]`` with optional leaky ReLU."""

    def __init__(
        self,
        in_features: int,              # input width
        out_features: int,             # output width
        activation: str = "linear",    # "linear" or "lrelu"
        bias_init: float = 0.0,        # initial bias value (1 for style affines: start unmodulated)
        lr_multiplier: float = 1.0,    # scales this layer's effective learning rate
    ) -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(x) if self.activation == "lrelu" else x


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate convolution (discriminator), optionally halving the resolution first."""

    def __init__(
        self,
        in_channels: int,              # input channels
        out_channels: int,             # output channels
        kernel_size: int,              # square kernel side (odd)
        activation: str = "lrelu",     # "linear" or "lrelu"
        bias: bool = True,             # add a learned per-channel bias
        down: bool = False,            # low-pass filter and decimate by 2 before the convolution
    ) -> None:
        super().__init__()
        self.activation = activation
        self.down = down
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = downsample2x(x)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return lrelu(x) if self.activation == "lrelu" else x


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per sample by a style from ``w`` (and optionally demodulated).

    ``x [N, in, H, W], w [N, w_dim] -> [N, out, H', W']`` with ``H' = 2H`` when ``up`` else ``H``.
    """

    def __init__(
        self,
        in_channels: int,              # input channels
        out_channels: int,             # output channels
        kernel_size: int,              # square kernel side (odd)
        w_dim: int,                    # width of the w vector the style is computed from
        demodulate: bool = True,       # normalise each output channel to unit expected variance
        up: bool = False,              # upsample by 2 before the convolution
    ) -> None:
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.demodulate = demodulate
        self.up = up
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Modulating the input activations and demodulating the outputs is mathematically the same as
        # scaling the weights per sample, but runs as one ordinary (fast) convolution for the batch.
        styles = self.affine(w)                                                 # [N, in]
        weight = self.weight * self.weight_gain                                 # [out, in, k, k]
        x = x * styles[:, :, None, None]
        if self.up:
            x = upsample2x(x)
        x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()   # [N, out]
            x = x * dcoefs[:, :, None, None]
        return x


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learned strength (initialised to 0)."""

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        elif noise_mode == "const":
            noise = self.noise_const.to(x.dtype)
        elif noise_mode == "none":
            return x
        else:
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        return x + noise * self.strength


class StyledConv(nn.Module):
    """Modulated 3x3 convolution + noise + bias + leaky ReLU: one synthesis layer."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, demodulate=True, up=up)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        x = self.noise(self.conv(x, w), noise_mode)
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """1x1 modulated (not demodulated) convolution to image channels: ``[N, C, H, W] -> [N, img_channels, H, W]``."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, img_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class MinibatchStdDev(nn.Module):
    """Appends the mean standard deviation over groups of samples as an extra feature map.

    Lets the discriminator see batch statistics (penalises mode collapse). ``[N, C, H, W] -> [N, C+1, H, W]``.
    """

    def __init__(self, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        y = x.reshape(g, n // g, c, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[1, 2, 3])                               # [N/g]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)                           # [N, 1, H, W]
        return torch.cat([x, y], dim=1)
