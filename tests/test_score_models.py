"""Score networks (UNet, TimeMLP), the ScoreModel wrapper and the ScoreFlow gin rows."""
from __future__ import annotations

from pathlib import Path

import gin
import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.models.mlp import TimeMLP
from hybrids.models.score_model import ScoreModel
from hybrids.models.unet import UNet
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

GIN_DIR = Path(__file__).resolve().parents[1] / "gin"


def _randomise_output(net: torch.nn.Module) -> None:
    """The output convs are zero-initialised; give them weights so the tests see a real function."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("shape,mult,attn", [((1, 8, 8), (1, 2), ()), ((1, 28, 28), (1, 2, 2), (1,)),
                                             ((3, 32, 32), (1, 2, 2), (1,))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unet_shapes_dtypes(shape, mult, attn, dtype):
    net = UNet(shape[0], 8, mult, 1, attn_levels=attn).to(dtype)
    _randomise_output(net)
    x = torch.randn((2,) + shape, dtype=dtype)
    t = torch.tensor([0.0, 0.7], dtype=dtype)  # t = 0 must be defined
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("base", [4, 8, 32])
def test_unet_depends_on_time(base):
    """The time embedding must survive the GroupNorms (it did not when added before a norm whose
    groups hold one channel each)."""
    net = UNet(1, base, (1, 2), 1).double()
    _randomise_output(net)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    a, b = net(x, torch.zeros(3, dtype=torch.float64)), net(x, torch.full((3,), 0.5, dtype=torch.float64))
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


def test_unet_odd_size_is_cropped_not_mixed():
    """Padding 28 -> 32 must not leak: each output pixel depends on the input, crop is aligned."""
    net = UNet(1, 8, (1, 2, 2), 1).double()
    _randomise_output(net)
    x = torch.randn(1, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    out = net(x, torch.zeros(1, dtype=torch.float64))
    (grad,) = torch.autograd.grad(out[0, 0, 0, 0], x)
    assert grad[0, 0, 0, 0] != 0


def test_unet_rejects_bad_input():
    with pytest.raises(ValueError, match="in_channels"):
        UNet(3, 8, (1, 2), 1)(torch.randn(2, 1, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(1, 8, (1, 2), 1, attn_levels=(2,))


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 5), dim=st.integers(1, 6), t=st.floats(0.0, 1.0))
def test_time_mlp_shapes(batch, dim, t):
    net = TimeMLP(dim, hidden=16, num_layers=2, embed_dim=8).double()
    x = torch.randn(batch, dim, dtype=torch.float64)
    out = net(x, torch.full((batch,), t, dtype=torch.float64))
    assert out.shape == x.shape and out.dtype == torch.float64 and torch.isfinite(out).all()


def test_time_mlp_depends_on_time():
    net = TimeMLP(2, hidden=16)
    x = torch.randn(3, 2)
    assert not torch.allclose(net(x, torch.zeros(3)), net(x, torch.full((3,), 0.5)))


@settings(max_examples=20, deadline=None)
@given(sde_i=st.integers(0, 2), t=st.floats(1e-5, 1.0), seed=st.integers(0, 100))
def test_noise_parametrisation_is_minus_net_over_sigma(sde_i, t, seed):
    sde = [VESDE(), VPSDE(), SubVPSDE()][sde_i]
    net = TimeMLP(3, hidden=16).double()
    model = ScoreModel(net, sde, "noise")
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    tt = torch.full((4,), t, dtype=torch.float64)
    # sigma_t written out independently of the SDE classes: VE sigma_min (sigma_max/sigma_min)^t,
    # VP sqrt(1 - e^-b), subVP 1 - e^-b, b = beta_min t + (beta_max - beta_min) t^2 / 2 (Song et al.,
    # "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021).
    b = 0.1 * t + 0.5 * t**2 * 19.9
    one_minus_alpha2 = -torch.expm1(torch.tensor(-b, dtype=torch.float64))
    sigma = [0.01 * 5000.0**t, one_minus_alpha2**0.5, one_minus_alpha2][sde_i]
    torch.testing.assert_close(model.score(x, tt), -net(x, tt) / sigma, rtol=1e-10, atol=0)
    torch.testing.assert_close(ScoreModel(net, sde, "score").score(x, tt), net(x, tt))
    torch.testing.assert_close(model.score(x, t), model.score(x, tt))  # scalar t broadcasts


def test_score_model_log_prob_names_the_tools():
    model = ScoreModel(TimeMLP(2), VPSDE())
    with pytest.raises(NotImplementedError, match="ode_log_prob.*dsm_bound"):
        model.log_prob(torch.randn(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="parametrization"):
        ScoreModel(TimeMLP(2), VPSDE(), "eps")


SCOREFLOW_ROWS = sorted(p.name for p in GIN_DIR.glob("scoreflow_*.gin"))


def test_all_rows_present():
    expected = {f"scoreflow_{s}_{r}.gin" for s in ("ve", "vp", "subvp") for r in ("original", "likelihood", "likelihood_is")}
    assert expected | {"scoreflow_vp_likelihood_is_vardeq.gin"} <= set(SCOREFLOW_ROWS)  # new rows may join


@pytest.mark.parametrize("row", SCOREFLOW_ROWS)
def test_gin_rows_parse_and_build(row):
    from experiments.runner import experiment, parse_gin

    parse_gin([row, "presets/cpu_small.gin"])
    exp = experiment()
    assert isinstance(exp.model, ScoreModel) and exp.objective.num_levels == 17
    x = torch.randn(2, 1, 8, 8)
    assert exp.model.score(x, torch.full((2,), 0.5)).shape == x.shape
    sde_name = row.split("_")[1]
    assert type(exp.objective.sde).__name__.lower().startswith(sde_name)
    assert exp.objective.importance_sampling == row.endswith(("_is.gin", "_vardeq.gin"))
    gin.clear_config()
    parse_gin([row])  # paper scale: CIFAR-10 sizes and the Trainer's paper defaults
    exp = experiment()
    assert exp.dataset == "cifar10" and exp.model.net.in_channels == 3
