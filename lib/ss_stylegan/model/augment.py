"""Differentiable augmentation (DiffAugment) for training a GAN on a small dataset.

Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS 2020
(arXiv:2006.10738). The same random transforms are applied to real and generated images before
the discriminator sees them, so D cannot memorise the few real slices, while G still learns the
un-augmented distribution (the transforms are differentiable, gradients flow back to G).

Grey-level images in [-1, 1]: "color" is brightness + contrast; translation and cutout fill with
-1 (black, the background of a windowed CT slice) rather than mid-grey.
"""

from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")
FILL = -1.0


class DiffAugment:
    """Apply a comma-separated policy (e.g. ``"color,translation,cutout"``) to ``[N, C, H, W]`` images.

    Args:
        policy: subset of :data:`POLICIES`, comma separated; ``""`` is the identity.
        translation_ratio: largest shift as a fraction of the image side.
        cutout_ratio: side of the cut-out square as a fraction of the image side.
    """

    def __init__(self, policy: str = "color,translation,cutout", translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5) -> None:
        self.policy = [p for p in policy.split(",") if p]
        unknown = [p for p in self.policy if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown}; choose from {list(POLICIES)}")
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio

    def __bool__(self) -> bool:
        return bool(self.policy)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for name in self.policy:
            x = getattr(self, f"_{name}")(x, generator)
        return x

    @staticmethod
    def _rand(x: torch.Tensor, generator: torch.Generator | None, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=x.device, dtype=x.dtype, generator=generator)

    def _color(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = x.shape[0]
        x = x + (self._rand(x, generator, n, 1, 1, 1) - 0.5)                    # brightness
        mean = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - mean) * (self._rand(x, generator, n, 1, 1, 1) + 0.5) + mean  # contrast

    def _translation(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, c, h, w = x.shape
        sy, sx = int(h * self.translation_ratio + 0.5), int(w * self.translation_ratio + 0.5)
        ty = (self._rand(x, generator, n) * (2 * sy + 1)).long() - sy
        tx = (self._rand(x, generator, n) * (2 * sx + 1)).long() - sx
        gy = (torch.arange(h, device=x.device)[None, :] + ty[:, None] + 1).clamp(0, h + 1)   # [N, H]
        gx = (torch.arange(w, device=x.device)[None, :] + tx[:, None] + 1).clamp(0, w + 1)   # [N, W]
        padded = torch.nn.functional.pad(x, [1, 1, 1, 1], value=FILL).permute(0, 2, 3, 1)    # [N, H+2, W+2, C]
        b = torch.arange(n, device=x.device)[:, None, None]
        return padded[b, gy[:, :, None], gx[:, None, :]].permute(0, 3, 1, 2)

    def _cutout(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        ch, cw = int(h * self.cutout_ratio + 0.5), int(w * self.cutout_ratio + 0.5)
        cy = (self._rand(x, generator, n) * (h + 1 - ch % 2)).long()
        cx = (self._rand(x, generator, n) * (w + 1 - cw % 2)).long()
        ys = torch.arange(h, device=x.device)[None, :] - (cy[:, None] - ch // 2)            # [N, H]
        xs = torch.arange(w, device=x.device)[None, :] - (cx[:, None] - cw // 2)            # [N, W]
        inside = ((ys >= 0) & (ys < ch))[:, :, None] & ((xs >= 0) & (xs < cw))[:, None, :]  # [N, H, W]
        keep = (~inside)[:, None].to(x.dtype)
        return x * keep + FILL * (1 - keep)
