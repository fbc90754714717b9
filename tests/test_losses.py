"""SS-StyleGAN losses: each phase moves exactly its parameters; NLL and augmentation behave as specified."""

from __future__ import annotations

import math

import pytest
import torch

from ss_stylegan.config import ModelConfig, TrainConfig
from ss_stylegan.model.augment import DiffAugment
from ss_stylegan.model.losses import PHASES, SSStyleGANLoss, gaussian_nll
from ss_stylegan.model.networks import ShapeError, SSStyleGAN

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup() -> tuple[SSStyleGAN, SSStyleGANLoss]:
    torch.manual_seed(0)
    model = SSStyleGAN(ModelConfig.tiny(32).replace(shared_blocks=2))
    with torch.no_grad():  # non-zero noise strengths so their gradients are visible too
        for m in model.generator.modules():
            if hasattr(m, "strength"):
                m.strength.fill_(0.1)
    return model, SSStyleGANLoss(model, TrainConfig(batch_size=4, r1_gamma=1.0))


def _groups(model: SSStyleGAN) -> dict[str, list[torch.nn.Parameter]]:
    g, d = model.generator, model.discriminator
    return {
        "mapping": list(g.mapping.parameters()),
        "synthesis": list(g.synthesis.parameters()),
        "shared": d.shared_parameters(),
        "d_only": d.discriminator_only_parameters(),
        "e_only": d.encoder_only_parameters(),
        "ema": list(model.generator_ema.parameters()),
    }


EXPECTED = {   # which parameter groups each phase must move (all others must get no gradient)
    "Gmain": {"mapping", "synthesis"},
    "Erec": {"synthesis", "shared", "e_only"},
    "Dmain": {"shared", "d_only"},
    "Enll": {"shared", "e_only"},
    "Dr1": {"shared", "d_only"},
}


@pytest.mark.parametrize("phase", PHASES)
def test_each_phase_moves_exactly_its_parameters(setup, phase: str) -> None:
    model, loss = setup
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    stats = loss.accumulate_gradients(phase, real=real, z=torch.randn(4, 32))
    assert stats and all(math.isfinite(v) for v in stats.values())
    # D is piecewise linear after minibatch-stddev, so the R1 penalty |dD/dx|^2 cannot depend on the
    # biases there; every other tensor a phase reaches gets a non-zero gradient.
    exempt = {f"discriminator.d_epilogue.{m}.bias" for m in ("conv", "fc", "out")} if phase == "Dr1" else set()
    names = {id(p): n for n, p in model.named_parameters()}
    for name, params in _groups(model).items():
        for p in params:
            if names[id(p)] in exempt:
                assert p.grad is None or not bool(p.grad.abs().sum() > 0)
            elif name in EXPECTED[phase]:
                assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"{phase} must move {names[id(p)]}"
            else:
                assert p.grad is None, f"{phase} must not touch {names[id(p)]}"


def test_erec_does_not_move_the_mapping_and_enll_not_the_generator(setup) -> None:
    model, loss = setup
    model.zero_grad(set_to_none=True)
    loss.accumulate_gradients("Erec", real=torch.rand(4, 1, 32, 32) * 2 - 1)
    assert all(p.grad is None for p in model.generator.mapping.parameters())
    model.zero_grad(set_to_none=True)
    fake = loss.generate(torch.randn(4, 32))
    assert not fake.images.requires_grad
    loss.accumulate_gradients("Enll", fake=fake)
    assert all(p.grad is None for p in model.generator.parameters())


def test_phase_input_errors(setup) -> None:
    _, loss = setup
    with pytest.raises(ValueError, match="unknown loss phase"):
        loss.accumulate_gradients("Gfoo", z=torch.randn(4, 32))
    with pytest.raises(ValueError, match="Dmain needs real images"):
        loss.accumulate_gradients("Dmain", z=torch.randn(4, 32))
    with pytest.raises(ShapeError, match="Erec real images"):
        loss.accumulate_gradients("Erec", real=torch.rand(4, 32, 32))


def test_gaussian_nll_matches_torch_normal() -> None:
    torch.manual_seed(0)
    w, mu, logvar = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 7)
    ref = -torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(w).mean()
    torch.testing.assert_close(gaussian_nll(w, mu, logvar), ref)
    # the NLL is minimised by the true mean and a variance equal to the squared error
    err = torch.tensor([[0.5]])
    best = gaussian_nll(err, torch.zeros(1, 1), torch.log(err.square()))
    assert best < gaussian_nll(err, torch.zeros(1, 1), torch.zeros(1, 1))


def test_diffaugment_policies() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    assert torch.equal(DiffAugment("")(x), x)
    g = torch.Generator().manual_seed(3)
    shifted = DiffAugment("translation")(x, g)
    assert shifted.shape == x.shape
    # translation only moves pixels (and fills the border with -1): no new values appear
    values = set(x.flatten().tolist()) | {-1.0}
    assert set(shifted.flatten().tolist()) <= values
    assert not torch.equal(shifted, x)
    cut = DiffAugment("cutout")(torch.ones(16, 1, 32, 32), torch.Generator().manual_seed(0))
    frac = (cut == -1).float().mean(dim=[1, 2, 3])
    assert float(frac.max()) <= 0.25 + 1e-6 and float(frac.mean()) > 0.1     # a 16x16 square, clipped at edges
    color = DiffAugment("color")(x, torch.Generator().manual_seed(0))
    assert (color.mean(dim=[1, 2, 3]) - x.mean(dim=[1, 2, 3])).abs().max() > 0.05
    # same generator state -> same augmentation; gradients flow through every policy
    a1 = DiffAugment()(x, torch.Generator().manual_seed(5))
    assert torch.equal(a1, DiffAugment()(x, torch.Generator().manual_seed(5)))
    xg = x.clone().requires_grad_(True)
    DiffAugment()(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown augmentation"):
        DiffAugment("color,flip")


def test_lazy_r1_is_gamma_half_squared_gradient_norm_times_interval() -> None:
    torch.manual_seed(1)
    model = SSStyleGAN(ModelConfig.tiny(32))
    gamma, interval = 0.5, 4
    loss = SSStyleGANLoss(model, TrainConfig(batch_size=4, r1_gamma=gamma, r1_interval=interval, augment=""))
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    model.zero_grad(set_to_none=True)
    stats = loss.accumulate_gradients("Dr1", real=real)
    got = {name: p.grad.clone() for name, p in model.discriminator.named_parameters() if p.grad is not None}

    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.discriminator(x).sum(), x, create_graph=True)
    penalty = g.square().sum(dim=[1, 2, 3]).mean()
    assert stats["loss/D_r1"].item() == pytest.approx(penalty.item(), rel=1e-5)
    params = [p for name, p in model.discriminator.named_parameters() if name in got]
    want = torch.autograd.grad(penalty * gamma / 2 * interval, params)
    for (name, grad), expected in zip(got.items(), want):
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-7), name
