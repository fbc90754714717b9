"""SS-StyleGAN losses as one object with named phases.

Each phase sets ``requires_grad`` so that its backward pass reaches exactly the parameters that
phase is meant to move, then accumulates gradients and returns named statistics:

========  ==============================================================  ===============================
phase     loss                                                            moves
========  ==============================================================  ===============================
Gmain     non-saturating logistic: softplus(-D(aug(G(z))))                generator (mapping + synthesis)
Erec      beta * MSE(x, synthesis(mu(x))) on real x (paper Eq. 1)          synthesis + encoder (+ shared trunk)
Dmain     softplus(D(aug(G(z)))) + softplus(-D(aug(x)))                   discriminator (+ shared trunk)
Enll      -lambda * log N(w; mu(G(w)), Sigma(G(w))) (paper Eq. 2)          encoder (+ shared trunk)
Dr1       gamma/2 * |grad_x D(aug(x))|^2 * r1_interval (lazy R1)          discriminator (+ shared trunk)
========  ==============================================================  ===============================

Design choices:

* **Enll does not reach G.** The paper trains the encoder together with the discriminator on
  generated pairs. If G also minimised the encoder's likelihood it would be rewarded for images that
  are easy to invert (exaggerated, w-revealing features) rather than realistic ones, a pressure
  outside the adversarial game; the generated pairs are therefore detached from G.
* **Erec reaches the encoder and the synthesis network, not the mapping** (mu(x) lives in W, the
  mapping is not on the path) and not the discriminator-only layers. As in the paper it moves both
  E and G: G learns to render the encoder's codes of real slices, E learns codes G can render.
* Neither encoder loss runs the minibatch-stddev layer: mu(x) of an image never depends on its batch.
* The NLL is averaged over W dimensions (not summed), so lambda does not need retuning with w_dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ss_stylegan.config import TrainConfig
from ss_stylegan.model.augment import DiffAugment
from ss_stylegan.model.networks import SSStyleGAN, check_images

PHASES = ("Gmain", "Erec", "Dmain", "Enll", "Dr1")
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class Generated:
    """A batch of generated pairs: ``ws [N, num_ws, w_dim]`` and ``images [N, C, R, R]`` (no graph)."""

    ws: torch.Tensor
    images: torch.Tensor


def gaussian_nll(w: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension negative log-likelihood of ``w`` under ``N(mu, diag(exp(logvar)))``, all ``[N, D]``."""
    w, mu, logvar = w.float(), mu.float(), logvar.float()
    return 0.5 * (logvar + (w - mu).square() * torch.exp(-logvar) + _LOG_2PI).mean()


class SSStyleGANLoss:
    """The SS-StyleGAN objective, split into the phases listed in the module docstring.

    Args:
        model: the networks; phases toggle ``requires_grad`` on its parameters.
        cfg: loss weights (``enc_weight`` = lambda, ``rec_weight`` = beta, ``r1_gamma``), ``r1_interval``
            and the augmentation policy.
    """

    def __init__(self, model: SSStyleGAN, cfg: TrainConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.augment = DiffAugment(cfg.augment)
        self.r1_gamma = cfg.resolved_r1_gamma(model.cfg.resolution)
        d = model.discriminator
        g = model.generator
        self._groups: dict[str, list[torch.nn.Parameter]] = {
            "Gmain": list(g.parameters()),
            "Erec": list(g.synthesis.parameters()) + d.shared_parameters() + d.encoder_only_parameters(),
            "Dmain": d.shared_parameters() + d.discriminator_only_parameters(),
            "Enll": d.shared_parameters() + d.encoder_only_parameters(),
            "Dr1": d.shared_parameters() + d.discriminator_only_parameters(),
        }

    def trainable(self, phase: str) -> list[torch.nn.Parameter]:
        """Parameters the given phase moves."""
        if phase not in self._groups:
            raise ValueError(f"unknown loss phase {phase!r}; phases are {list(PHASES)}")
        return self._groups[phase]

    def _select(self, phase: str) -> None:
        self.model.generator.requires_grad_(False)
        self.model.discriminator.requires_grad_(False)
        for p in self.trainable(phase):
            p.requires_grad_(True)

    def _d(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.discriminator(self.augment(images) if self.augment else images)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> Generated:
        """Generated pairs for the D-side phases (no graph into G): ``z [N, z_dim]``."""
        g = self.model.generator
        with self.autocast():
            ws = g.mapping(z)
            return Generated(ws=ws, images=g.synthesis(ws))

    def accumulate_gradients(
        self,
        phase: str,
        *,
        real: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        fake: Generated | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run one phase's forward and backward pass; gradients add to ``.grad``.

        Args:
            phase: one of :data:`PHASES`.
            real: real images ``[N, C, R, R]`` in [-1, 1] (Erec, Dmain, Dr1).
            z: latents ``[N, z_dim]`` (Gmain; Dmain / Enll when ``fake`` is not given).
            fake: pre-generated pairs from :meth:`generate` (Dmain, Enll), so both phases share them.

        Returns:
            Named statistics as detached 0-dim tensors on the model's device, e.g. ``{"loss/G": 0.69}``
            (no host sync here: a GPU keeps running until the caller converts them).
        """
        self._select(phase)
        if phase in ("Erec", "Dmain", "Dr1"):
            if real is None:
                raise ValueError(f"phase {phase} needs real images")
            check_images(real, self.model.cfg, f"{phase} real images")
        if phase in ("Gmain",) or (phase in ("Dmain", "Enll") and fake is None):
            if z is None:
                raise ValueError(f"phase {phase} needs z (or pre-generated fake pairs)")
        if phase in ("Dmain", "Enll") and fake is None:
            fake = self.generate(z)
        with self.autocast(phase):
            loss, stats = getattr(self, f"_{phase.lower()}")(real=real, z=z, fake=fake)
        loss.backward()   # outside autocast: backward ops run in the dtypes their forward ops used
        return stats

    def autocast(self, phase: str = "Gmain") -> torch.autocast:
        """The autocast context of a phase's forward pass: bfloat16 when ``precision`` is ``bf16``.

        Weights, gradients and optimiser state stay float32; losses are computed in float32. The R1
        penalty (a gradient of a gradient, 1 step in ``r1_interval``) always runs in float32.
        """
        enabled = self.cfg.precision == "bf16" and phase != "Dr1"
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)

    def _gmain(self, *, z: torch.Tensor, **_: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = self.model.generator
        images = g.synthesis(g.mapping(z, update_w_avg=True))
        loss = F.softplus(-self._d(images).float()).mean()
        return loss, {"loss/G": loss.detach()}

    def _erec(self, *, real: torch.Tensor, **_: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = self.model.generator
        mu, _ = self.model.encode(real)
        mse = (g.synthesis(g.broadcast(mu)).float() - real).square().mean()
        return mse * self.cfg.rec_weight, {"loss/E_rec": mse.detach()}

    def _dmain(self, *, real: torch.Tensor, fake: Generated, **_: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_fake = self._d(fake.images).float()
        logits_real = self._d(real).float()
        loss_fake = F.softplus(logits_fake).mean()
        loss_real = F.softplus(-logits_real).mean()
        loss = loss_fake + loss_real
        return loss, {
            "loss/D": loss.detach(),
            "scores/fake": logits_fake.detach().mean(),
            "scores/real": logits_real.detach().mean(),
        }

    def _enll(self, *, fake: Generated, **_: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = fake.ws[:, 0].float()
        mu, logvar = self.model.encode(fake.images)
        nll = gaussian_nll(w, mu, logvar)
        return nll * self.cfg.enc_weight, {"loss/E_nll": nll.detach(), "E/w_mse": (mu.detach().float() - w).square().mean()}

    def _dr1(self, *, real: torch.Tensor, **_: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        real = real.detach().requires_grad_(True)
        logits = self._d(real)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=[1, 2, 3]).mean()
        return penalty * (self.r1_gamma / 2) * max(self.cfg.r1_interval, 1), {"loss/D_r1": penalty.detach()}
