"""MADE, the AR-CSM conditional-score model and the MADE maximum-likelihood baselines."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.distributions import (
    discretized_logistic_mixture_log_prob,
    logistic_mixture_log_prob,
    sample_logistic_mixture,
)
from hybrids.models.made import (
    CONDITIONALS,
    MADE,
    GaussianConditional,
    LogisticMixtureConditional,
    MADEConditionalScore,
    MADEDensity,
)
from hybrids.sdes import VESDE


def _randomize(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Replace every parameter by N(0, scale^2) draws (larger than the default init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _naive_diagonal(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ds_d/dx_d by D separate backward passes of s_d through every path (context and head)."""
    cols = []
    for d in range(x.shape[1]):
        (g,) = torch.autograd.grad(s[:, d].sum(), x, retain_graph=True)
        cols.append(g[:, d])
    return torch.stack(cols, dim=1)


@settings(max_examples=20, deadline=None)
@given(
    dim=st.integers(1, 7),
    hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    features=st.integers(1, 5),
    activation=st.sampled_from(["softplus", "elu", "silu"]),
    seed=st.integers(0, 10_000),
)
def test_one_backward_diagonal_equals_naive(dim, hidden, features, activation, seed):
    torch.manual_seed(seed)
    model = MADEConditionalScore(
        dim, hidden=hidden, context_features=features, head_hidden=(6, 5), activation=activation
    ).double()
    _randomize(model, 0.8, seed)
    x = torch.randn(4, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x.requires_grad_(True)
    s, ds = model.conditional_scores(x)
    naive = _naive_diagonal(s, x)
    torch.testing.assert_close(ds, naive, rtol=1e-10, atol=1e-12)
    # The head-only derivative (c_d held fixed) is the same number, since c_d ignores x_d.
    c = model.context(x).detach()
    x_head = x.detach().requires_grad_(True)
    (head_only,) = torch.autograd.grad(model.head(x_head, c).sum(), x_head)
    torch.testing.assert_close(ds, head_only, rtol=1e-10, atol=1e-12)


def test_diagonal_is_differentiable_for_training():
    model = MADEConditionalScore(4, hidden=(8,), context_features=3, head_hidden=(5,)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    s, ds = model.conditional_scores(x)
    assert ds.requires_grad
    (ds.sum() + s.pow(2).sum()).backward()
    head_grads = [p.grad for p in model.score_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    assert any(g.abs().sum() > 0 for g in head_grads)
    with torch.no_grad():
        s0, ds0 = model.conditional_scores(x)
    assert not s0.requires_grad and not ds0.requires_grad
    torch.testing.assert_close(ds0, ds.detach())


@settings(max_examples=15, deadline=None)
@given(dim=st.integers(2, 8), hidden=st.lists(st.integers(2, 16), min_size=1, max_size=3),
       seed=st.integers(0, 10_000))
def test_context_is_causal(dim, hidden, seed):
    torch.manual_seed(seed)
    made = MADE(dim, 3, hidden).double()
    _randomize(made, 0.7, seed)
    x = torch.randn(1, dim, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v), x)[0, :, :, 0, :]  # [D, F, D]
    dep = jac.abs().sum(1)  # [d, j]
    upper = torch.triu(torch.ones(dim, dim, dtype=torch.bool))  # j >= d
    assert torch.all(dep[upper] == 0)
    for d in range(1, dim):
        assert dep[d, :d].max() > 0, f"c_{d} ignores every x_j, j < {d}"


def test_image_inputs_are_flattened_in_raster_order():
    model = MADEConditionalScore(6, hidden=(8,), context_features=2, head_hidden=(4,)).double()
    img = torch.randn(5, 1, 2, 3, dtype=torch.float64)
    s_img, ds_img = model.conditional_scores(img)
    s_vec, ds_vec = model.conditional_scores(img.reshape(5, 6))
    assert s_img.shape == img.shape and ds_img.shape == img.shape
    torch.testing.assert_close(s_img.reshape(5, 6), s_vec)
    torch.testing.assert_close(ds_img.reshape(5, 6), ds_vec)
    with pytest.raises(ValueError, match="C\\*H\\*W"):
        model.conditional_scores(torch.randn(5, 1, 3, 3, dtype=torch.float64))


def test_score_raises_with_explanation():
    model = MADEConditionalScore(3, hidden=(4,))
    with pytest.raises(NotImplementedError, match="normalisers.*conditional_scores"):
        model.score(torch.randn(2, 3), torch.zeros(2))


def test_relu_is_rejected():
    with pytest.raises(ValueError, match="smooth"):
        MADEConditionalScore(3, activation="relu")


def test_noise_conditional_model_uses_t_and_sde_scaling():
    sde = VESDE(sigma_min=0.1, sigma_max=5.0)
    model = MADEConditionalScore(3, hidden=(8,), noise_conditional=True, sde=sde).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass t"):
        model.conditional_scores(x, None)
    t0, t1 = torch.full((4,), 0.2, dtype=torch.float64), torch.full((4,), 0.7, dtype=torch.float64)
    s0, _ = model.conditional_scores(x, t0)
    s1, _ = model.conditional_scores(x, t1)
    assert not torch.allclose(s0, s1)
    # The head output is divided by sigma(t): undo it and compare with the raw head.
    c = model.context(x, t0)
    raw = model.score_head(x, c)
    torch.testing.assert_close(s0 * sde.marginal_coefs(t0).std[:, None], raw)
    with pytest.raises(ValueError, match="sde"):
        MADEConditionalScore(3, sde=sde)


@pytest.mark.parametrize("conditional", ["gaussian", "logistic_mixture"])
def test_density_integrates_to_one_1d(conditional):
    model = MADEDensity(1, conditional, nr_mix=3, hidden=(4,)).double()
    _randomize(model, 0.5, 1)
    grid = torch.linspace(-40, 40, 200_001, dtype=torch.float64)
    with torch.no_grad():
        p = model.log_prob(grid[:, None]).exp()
    assert torch.trapezoid(p, grid).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("conditional", ["gaussian", "logistic_mixture"])
def test_density_integrates_to_one_2d(conditional):
    model = MADEDensity(2, conditional, nr_mix=2, hidden=(6,)).double()
    _randomize(model, 0.2, 2)
    grid = torch.linspace(-25, 25, 1201, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        p = model.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(xx.shape)
    mass = torch.trapezoid(torch.trapezoid(p, grid, dim=1), grid)
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("conditional", ["gaussian", "logistic_mixture"])
def test_discrete_masses_sum_to_one(conditional):
    num_levels, dim = 5, 3
    model = MADEDensity(dim, conditional, nr_mix=2, hidden=(6,), num_levels=num_levels).double()
    _randomize(model, 1.0, 3)
    k = torch.tensor(list(itertools.product(range(num_levels), repeat=dim)))
    with torch.no_grad():
        total = model.discrete_log_prob(k).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-10)
    with pytest.raises(TypeError, match="integer"):
        model.discrete_log_prob(k.double())


def test_gaussian_bin_mass_matches_cdf_difference_and_far_tails_stay_finite():
    model = MADEDensity(1, "gaussian", hidden=(2,), num_levels=256).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.made.output.bias.copy_(torch.tensor([0.1, math.log(0.05)], dtype=torch.float64))
    k = torch.arange(256)[:, None]
    lp = model.discrete_log_prob(k)
    centre = 2 * k[:, 0].double() / 255 - 1
    normal = torch.distributions.Normal(torch.tensor(0.1, dtype=torch.float64), 0.05)
    hi = torch.where(k[:, 0] == 255, torch.tensor(1.0), normal.cdf(centre + 1 / 255))
    lo = torch.where(k[:, 0] == 0, torch.tensor(0.0), normal.cdf(centre - 1 / 255))
    middle = (lp.exp() > 1e-8)
    torch.testing.assert_close(lp.exp()[middle], (hi - lo)[middle], rtol=1e-9, atol=1e-12)
    assert torch.isfinite(lp).all()  # masses ~exp(-800) at the far end are still finite logs


def test_gaussian_bin_masses_stay_finite_and_accurate_when_sigma_is_huge():
    """float32, log sigma = 12 (sigma ~ 1.6e5; the MNIST run that stopped with an infinite loss at update 839):
    Phi(a) and Phi(b) of an interior bin agree to float32 precision, and the difference of CDFs gives log 0.
    The midpoint rule keeps every mass finite, within 1e-4 (relative) of the float64 difference of CDFs, with
    finite gradients. Catches the plain difference of CDFs (-inf) and a fallback without the bin width."""
    mu = torch.full((256, 1), 3.34, requires_grad=True)
    log_sigma = torch.full((256, 1), 12.0, requires_grad=True)
    k = torch.arange(256)[:, None]
    from hybrids.models.made import _log_gaussian_bin_mass

    lp = _log_gaussian_bin_mass(mu, log_sigma, k, 256)
    assert torch.isfinite(lp).all()
    normal = torch.distributions.Normal(torch.tensor(3.34, dtype=torch.float64), math.exp(12.0))
    centre = 2 * k[:, 0].double() / 255 - 1
    hi = torch.where(k[:, 0] == 255, torch.tensor(1.0, dtype=torch.float64), normal.cdf(centre + 1 / 255))
    lo = torch.where(k[:, 0] == 0, torch.tensor(0.0, dtype=torch.float64), normal.cdf(centre - 1 / 255))
    torch.testing.assert_close(lp.double()[:, 0], torch.log(hi - lo), rtol=1e-4, atol=1e-4)
    lp.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(log_sigma.grad).all()


def test_gaussian_scale_is_clamped_so_a_collapsed_model_keeps_finite_bin_masses():
    """float32, a model that drove log sigma to -100 (sigma -> 0, the MNIST run that stopped with an infinite
    loss): every bin's log mass stays finite and the K masses still sum to 1, because log sigma is clamped at
    LOG_SIGMA_MIN (-7) in every method; the density and the draws use the clamped sigma too. Catches the
    unclamped head (log mass -inf for any bin a few thousand sigmas from the mean) and a clamp applied to
    one method only."""
    from hybrids.models.made import LOG_SIGMA_MIN

    params = torch.tensor([[[0.3, -100.0]]]).expand(256, 1, 2)
    k = torch.arange(256)[:, None]
    head = GaussianConditional()
    lp = head.discrete_log_prob(params.reshape(256, 1, 2), k, 256)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(torch.logsumexp(lp.double(), 0), torch.tensor(0.0, dtype=torch.float64), atol=1e-5, rtol=0)
    x = torch.tensor([[0.3]])
    expected = -LOG_SIGMA_MIN - 0.5 * math.log(2 * math.pi)
    assert head.log_prob(params[:1], x).item() == pytest.approx(expected, rel=1e-6)
    draw = head.sample(params[:1, 0], torch.Generator().manual_seed(0))
    z = torch.randn(1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draw, 0.3 + math.exp(LOG_SIGMA_MIN) * z)


@pytest.mark.parametrize("conditional", ["gaussian", "logistic_mixture"])
def test_ancestral_samples_follow_the_discrete_masses(conditional):
    num_levels, dim, n = 4, 2, 40_000
    model = MADEDensity(dim, conditional, nr_mix=2, hidden=(6,), num_levels=num_levels).double()
    _randomize(model, 0.6, 4)
    k = model.sample(n, torch.Generator().manual_seed(0))
    assert k.shape == (n, dim) and k.dtype == torch.int64
    cells = torch.tensor(list(itertools.product(range(num_levels), repeat=dim)))
    with torch.no_grad():
        p = model.discrete_log_prob(cells).exp()
    counts = torch.stack([(k == c).all(1).sum() for c in cells]).double()
    se = (n * p * (1 - p)).sqrt()
    assert torch.all((counts - n * p).abs() < 5 * se + 1), (counts / n, p)


def _pixelcnn_arcsm(seed: int, channels: int = 1):
    from hybrids.models.heads import PixelCNNConditionalScore
    from hybrids.models.pixelcnnpp import PixelCNNpp

    torch.manual_seed(seed)
    shape = (channels, 3, 3)
    backbone = PixelCNNpp(shape, nr_filters=8, nr_resnet=1, nr_logistic_mix=2, dropout=0.0)
    return PixelCNNConditionalScore(shape, head_hidden=(8,), backbone=backbone).double()


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), channels=st.sampled_from([1, 3]))
def test_pixelcnn_arcsm_diagonal_equals_naive_and_context_is_causal(seed, channels):
    model = _pixelcnn_arcsm(seed, channels)
    D = 9 * channels
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.rand(2, channels, 3, 3, dtype=torch.float64, generator=g) - 1).requires_grad_(True)
    s, ds = model.conditional_scores(x)
    assert s.shape == x.shape and ds.shape == x.shape
    s_seq = model.to_sequence(s)
    cols = []
    for d in range(D):  # d in AR order: pixel-major, R -> G -> B within a pixel
        (grad,) = torch.autograd.grad(s_seq[:, d].sum(), x, retain_graph=True)
        cols.append(model.to_sequence(grad)[:, d])
    torch.testing.assert_close(model.to_sequence(ds), torch.stack(cols, 1), rtol=1e-9, atol=1e-12)
    x_seq = model.to_sequence(x[:1].detach())
    jac = torch.autograd.functional.jacobian(lambda v: model.context(v), x_seq)
    dep = jac[0].abs().sum(1)[:, 0, :]  # [d, j]: |dc_d / dx_j| summed over features
    assert torch.all(dep[torch.triu(torch.ones(D, D, dtype=torch.bool))] == 0)
    assert all(dep[d, :d].max() > 0 for d in range(1, D))
    torch.testing.assert_close(model.from_sequence(model.to_sequence(x)), x)


def test_pixelcnn_arcsm_score_raises_and_sampler_follows_its_order():
    from hybrids.samplers.langevin import ar_langevin_sample

    model = _pixelcnn_arcsm(0, channels=3)
    with pytest.raises(NotImplementedError, match="conditional_scores"):
        model.score(torch.zeros(1, 3, 3, 3, dtype=torch.float64))
    init = torch.rand(2, 3, 3, 3, dtype=torch.float64)
    out = ar_langevin_sample(model, init.shape, n_steps=1, step_size=1e-14, init=init)
    torch.testing.assert_close(out, init, atol=1e-6, rtol=0)  # same layout back


@pytest.mark.parametrize("conditional,cls,features", [("gaussian", GaussianConditional, 2),
                                                      ("logistic_mixture", LogisticMixtureConditional, 9)])
def test_density_head_object_is_chosen_once_from_the_conditional_argument(conditional, cls, features):
    model = MADEDensity(4, conditional, nr_mix=3, hidden=(6,))
    assert model.conditional == conditional and type(model.distribution) is cls
    assert model.distribution.num_features == features == model.made.out_features
    assert model.distribution.name == conditional and set(CONDITIONALS) == {"gaussian", "logistic_mixture"}
    with pytest.raises(ValueError, match="conditional must be"):
        MADEDensity(4, "logistic")


def _reference_density(model: MADEDensity, x: torch.Tensor) -> torch.Tensor:
    """The continuous log-density written out per family (the former string switch)."""
    p = model.params(x)
    if model.conditional == "gaussian":
        mu, log_sigma = p.unbind(-1)
        z = (x - mu) * torch.exp(-log_sigma)
        return (-0.5 * z**2 - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)
    return logistic_mixture_log_prob(p.permute(0, 2, 1).unsqueeze(-1), x[:, None, :, None])


def _reference_discrete(model: MADEDensity, k: torch.Tensor) -> torch.Tensor:
    num_levels = model.num_levels
    x = 2.0 * k.to(torch.float32) / (num_levels - 1) - 1.0
    p = model.params(x)
    if model.conditional == "logistic_mixture":
        return discretized_logistic_mixture_log_prob(p.permute(0, 2, 1).unsqueeze(-1), k[:, None, :, None],
                                                     num_levels)
    mu, log_sigma = p.unbind(-1)
    centre = 2.0 * k.to(mu.dtype) / (num_levels - 1) - 1.0
    delta = 1.0 / (num_levels - 1)
    inf = torch.full_like(mu, math.inf)
    lo = torch.where(k == 0, -inf, (centre - delta - mu) * torch.exp(-log_sigma))
    hi = torch.where(k == num_levels - 1, inf, (centre + delta - mu) * torch.exp(-log_sigma))
    flip = (lo + hi) > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return (log_b + torch.log(-torch.expm1((log_a - log_b).clamp(max=0.0)))).sum(-1)


@torch.no_grad()
def _reference_sample(model: MADEDensity, n: int, generator, discrete: bool) -> torch.Tensor:
    """The former ancestral loop: one N(0, 1) draw per position (Gaussian) or one mixture draw."""
    num_levels = model.num_levels
    x = torch.zeros(n, model.dim)
    for d in range(model.dim):
        p = model.params(x)[:, d]
        if model.conditional == "gaussian":
            x_d = p[:, 0] + torch.exp(p[:, 1]) * torch.randn(n, generator=generator)
        else:
            x_d = sample_logistic_mixture(p[:, :, None, None], generator, num_channels=1).reshape(n)
        if discrete:
            k_d = torch.round((x_d + 1) * (num_levels - 1) / 2).clamp(0, num_levels - 1)
            x_d = 2 * k_d / (num_levels - 1) - 1
        x[:, d] = x_d
    return torch.round((x + 1) * (num_levels - 1) / 2).long() if discrete else x


@pytest.mark.parametrize("conditional", ["gaussian", "logistic_mixture"])
def test_density_heads_reproduce_the_written_out_families_bitwise(conditional):
    """float32, seeded: log-probs, bin log-masses and samples equal the per-family formulas
    exactly, and the draws come from the generator in the same order."""
    torch.manual_seed(0)
    model = MADEDensity(5, conditional, nr_mix=3, hidden=(12, 12), num_levels=17)
    _randomize(model, 0.3, 5)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    k = torch.randint(0, 17, (6, 5), generator=torch.Generator().manual_seed(2))
    assert torch.equal(model.log_prob(x), _reference_density(model, x))
    assert torch.equal(model.log_prob(x.reshape(6, 1, 1, 5)), _reference_density(model, x))
    assert torch.equal(model.discrete_log_prob(k), _reference_discrete(model, k))
    assert torch.equal(model.distribution.log_prob(model.params(x), x), _reference_density(model, x))
    for discrete in (True, False):
        g_model, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        samples = model.sample(7, g_model, discrete=discrete)
        assert torch.equal(samples, _reference_sample(model, 7, g_ref, discrete))
        assert torch.equal(g_model.get_state(), g_ref.get_state())


def test_gaussian_head_sample_is_mean_plus_scale_times_one_normal_draw():
    params = torch.tensor([[0.5, math.log(2.0)], [-1.0, 0.0]], dtype=torch.float64)
    draw = GaussianConditional().sample(params, torch.Generator().manual_seed(4))
    z = torch.randn(2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert draw.dtype == torch.float64
    torch.testing.assert_close(draw, params[:, 0] + params[:, 1].exp() * z, rtol=0, atol=0)
    with pytest.raises(ValueError, match="nr_mix"):
        LogisticMixtureConditional(0)
