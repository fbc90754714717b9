"""SS-StyleGAN networks: shapes at every resolution, shape errors, sharing, modulation, truncation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ss_stylegan.config import ConfigError, ModelConfig
from ss_stylegan.model.networks import ShapeError, SSStyleGAN
from ss_stylegan.model.networks.layers import ModulatedConv2d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
@pytest.mark.parametrize("shared_blocks", [None, 0, 1])
def test_shapes_every_resolution(resolution: int, shared_blocks: int | None) -> None:
    cfg = ModelConfig.tiny(resolution).replace(shared_blocks=shared_blocks, w_dim=24, z_dim=16)
    torch.manual_seed(0)
    model = SSStyleGAN(cfg).requires_grad_(False)
    num_ws = 2 * (resolution.bit_length() - 1) - 2
    z = torch.randn(3, 16)
    ws = model.generator.mapping(z)
    assert ws.shape == (3, num_ws, 24)
    img = model.generator.synthesis(ws)
    assert img.shape == (3, 1, resolution, resolution)
    assert torch.isfinite(img).all()
    logits = model.discriminator(img)
    assert logits.shape == (3, 1)
    mu, logvar = model.encode(img)
    assert mu.shape == logvar.shape == (3, 24)
    assert float(logvar.min()) >= cfg.logvar_min and float(logvar.max()) <= cfg.logvar_max
    assert model.generator(z).shape == (3, 1, resolution, resolution)


def test_channels_dict_and_default_presets() -> None:
    assert ModelConfig(resolution=64).channels() == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256}
    assert ModelConfig(resolution=256).channels()[256] == 64
    assert ModelConfig.tiny(32).channels() == {4: 32, 8: 32, 16: 32, 32: 16}
    assert ModelConfig.small(64).channels() == {4: 128, 8: 128, 16: 128, 32: 128, 64: 64}
    cfg = ModelConfig(resolution=128)
    assert cfg.num_blocks == 5 and cfg.resolved_shared_blocks == 4


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="shared_blocks must be between 0 and 3"):
        ModelConfig(resolution=32, shared_blocks=4).validate()
    with pytest.raises(ConfigError, match="resolution must be one of"):
        ModelConfig(resolution=48).validate()
    with pytest.raises(ConfigError, match="unknown setting"):
        ModelConfig.from_dict({"resolutoin": 64})


def test_shape_errors_are_clear() -> None:
    model = SSStyleGAN(ModelConfig.tiny(32))
    with pytest.raises(ShapeError, match=r"MappingNetwork z: expected a tensor of shape \[\*, 32\], got \[2, 7\]"):
        model.generator.mapping(torch.randn(2, 7))
    with pytest.raises(ShapeError, match=r"SynthesisNetwork ws: expected .*\[\*, 8, 32\]"):
        model.generator.synthesis(torch.randn(2, 5, 32))
    with pytest.raises(ShapeError, match=r"Discriminator input: expected .*\[\*, 1, 32, 32\], got \[2, 1, 64, 64\]"):
        model.discriminator(torch.randn(2, 1, 64, 64))
    with pytest.raises(ShapeError, match=r"Encoder input: expected .*got \[2, 3, 32, 32\]"):
        model.encode(torch.randn(2, 3, 32, 32))
    with pytest.raises(ShapeError, match="Generator.broadcast w"):
        model.generator.broadcast(torch.randn(2, 5))


def test_encoder_shares_the_discriminator_trunk_only() -> None:
    torch.manual_seed(0)
    model = SSStyleGAN(ModelConfig.tiny(32).replace(shared_blocks=2)).eval()
    d = model.discriminator
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    logit0, (mu0, _) = d(x), d.encode(x)
    with torch.no_grad():
        for p in d.encoder_only_parameters():
            p.add_(0.5)
    assert torch.equal(d(x), logit0)                       # D does not use encoder-only weights
    assert not torch.allclose(d.encode(x)[0], mu0)
    mu1 = d.encode(x)[0]
    with torch.no_grad():
        d.shared[0].conv0.weight.add_(0.5)
    assert not torch.allclose(d(x), logit0)                # the trunk feeds both heads
    assert not torch.allclose(d.encode(x)[0], mu1)
    ids = {id(p) for p in d.shared_parameters()} | {id(p) for p in d.encoder_only_parameters()}
    ids |= {id(p) for p in d.discriminator_only_parameters()}
    assert ids == {id(p) for p in d.parameters()}          # the three groups cover D exactly
    assert len(d.shared) == 2 and len(d.d_blocks) == 1 and len(d.encoder_head.blocks) == 1


def test_encoder_mean_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    model = SSStyleGAN(ModelConfig.tiny(32)).eval()
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    mu_batch, _ = model.encode(x)
    mu_single, _ = model.encode(x[3:4])
    torch.testing.assert_close(mu_batch[3:4], mu_single, rtol=1e-4, atol=1e-5)


def test_modulated_conv_equals_per_sample_weights() -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, w_dim=8, demodulate=True).requires_grad_(False)
    x, w = torch.randn(3, 6, 9, 9), torch.randn(3, 8)
    out = conv(x, w)
    styles = conv.affine(w)
    for i in range(3):
        weight = conv.weight * conv.weight_gain * styles[i][None, :, None, None]
        weight = weight / weight.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        torch.testing.assert_close(out[i : i + 1], F.conv2d(x[i : i + 1], weight, padding=1), rtol=1e-4, atol=1e-5)
    assert float(out.std()) == pytest.approx(1.0, abs=0.35)    # demodulation keeps unit scale


def test_w_avg_tracking_and_truncation() -> None:
    torch.manual_seed(0)
    g = SSStyleGAN(ModelConfig.tiny(32)).generator
    mapping = g.mapping
    assert torch.count_nonzero(mapping.w_avg) == 0
    z = torch.randn(64, 32)
    mapping(z)
    assert torch.count_nonzero(mapping.w_avg) == 0          # only updated on request (training G step)
    w = mapping(z, update_w_avg=True)[:, 0]
    torch.testing.assert_close(mapping.w_avg, w.mean(0) * (1 - mapping.w_avg_beta))
    ws0 = mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(ws0, mapping.w_avg.expand_as(ws0))
    ws_half = mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(ws_half[:, 0], mapping.w_avg + 0.5 * (w - mapping.w_avg))


def test_noise_modes_and_reconstruct() -> None:
    torch.manual_seed(0)
    model = SSStyleGAN(ModelConfig.tiny(32))
    with torch.no_grad():
        for m in model.generator.modules():
            if hasattr(m, "strength"):
                m.strength.fill_(0.5)
    ws = model.generator.mapping(torch.randn(2, 32))
    syn = model.generator.synthesis
    assert torch.equal(syn(ws, noise_mode="const"), syn(ws, noise_mode="const"))
    assert not torch.equal(syn(ws, noise_mode="random"), syn(ws, noise_mode="random"))
    with pytest.raises(ValueError, match="noise_mode"):
        syn(ws, noise_mode="loud")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert model.reconstruct(x).shape == (2, 1, 32, 32)
    assert model.encoder(x)[0].shape == (2, 32)
