"""GPS parametrisation (the GPS paper (Saremi et al., 2023)): scores, Bayes estimator, log-density constant, universality."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import stats
from torch import nn

from hybrids.models.gps import GPSModel, multimeasurement_log_prob
from hybrids.objectives.multimeasurement import MultimeasurementDenoising


class TinyNet(nn.Module):
    """A small raw network net(u, t) -> like u (stands in for the MLP / U-Net)."""

    def __init__(self, event: tuple[int, ...], hidden: int = 16, seed: int = 0, skip: float = 0.0, scale: float = 0.5):
        super().__init__()
        self.skip = skip
        g = torch.Generator().manual_seed(seed)
        d = math.prod(event)
        self.event = event
        self.l1 = nn.Linear(d + 1, hidden)
        self.l2 = nn.Linear(hidden, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)

    def forward(self, u, t):
        h = torch.tanh(self.l1(torch.cat([u.flatten(1), t[:, None]], 1)))
        return self.skip * u + self.l2(h).reshape(u.shape)


class ExactGaussianDenoiser(nn.Module):
    """net(u, t) = E[x | ybar] for x ~ N(mu, diag(lam)), undoing the GPS input scaling."""

    def __init__(self, mu, lam, sigma_eff: float, data_var: float):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("lam", lam)
        self.s2 = sigma_eff**2
        self.scale = math.sqrt(data_var + self.s2)
        self.sigma_eff = sigma_eff

    def forward(self, u, t):
        assert torch.allclose(t, torch.full_like(t, self.sigma_eff)), "GPSModel must pass t = sigma_eff"
        ybar = u * self.scale
        return ybar - self.s2 * (ybar - self.mu) / (self.lam + self.s2)


def gaussian_setup(D: int, sigma: float, M: int, seed: int, data_var: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    lam = torch.rand(D, generator=g, dtype=torch.float64) * 2 + 0.1
    net = ExactGaussianDenoiser(mu, lam, sigma / math.sqrt(M), data_var)
    return GPSModel(net, sigma=sigma, M=M, data_var=data_var), mu, lam


def y_density(mu, lam, sigma: float, M: int):
    """The M-density of N(mu, diag(lam)) data as an explicit MD-dimensional Gaussian (built by loops)."""
    D = mu.numel()
    cov = torch.zeros(M * D, M * D, dtype=torch.float64)
    for m in range(M):
        for n in range(M):
            for d in range(D):
                cov[m * D + d, n * D + d] = lam[d] + (sigma**2 if m == n else 0.0)
    return torch.distributions.MultivariateNormal(mu.repeat(M), covariance_matrix=cov)


@settings(max_examples=15, deadline=None)
@given(
    M=st.integers(1, 5),
    event=st.sampled_from([(3,), (2, 3), (1, 2, 2)]),
    B=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_measurement_score_is_permutation_equivariant(M, event, B, seed):
    model = GPSModel(TinyNet(event, seed=seed).double(), sigma=1.3, M=M)
    g = torch.Generator().manual_seed(seed)
    y = torch.randn((B, M) + event, generator=g, dtype=torch.float64)
    perm = torch.randperm(M, generator=g)
    s = model.measurement_score(y)
    assert torch.allclose(model.measurement_score(y[:, perm]), s[:, perm], atol=1e-12)
    # The jump is permutation invariant.
    assert torch.allclose(model.xhat(y[:, perm]), model.xhat(y), atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(M=st.integers(1, 4), D=st.integers(1, 3), sigma=st.floats(0.3, 2.5), seed=st.integers(0, 1000))
def test_gaussian_scores_posterior_mean_and_log_prob_are_exact(M, D, sigma, seed):
    model, mu, lam = gaussian_setup(D, sigma, M, seed)
    dist = y_density(mu, lam, sigma, M)
    y = dist.sample((5,)).reshape(5, M, D).requires_grad_(True)
    log_p = dist.log_prob(y.reshape(5, M * D))
    (grad,) = torch.autograd.grad(log_p.sum(), y)
    assert torch.allclose(model.measurement_score(y.detach()), grad, atol=1e-10)

    # Closed-form posterior E[x | y]: precision 1/lam + M/sigma^2.
    y = y.detach()
    post = (mu / lam + y.sum(1) / sigma**2) / (1 / lam + M / sigma**2)
    assert torch.allclose(model.xhat(y), post, atol=1e-10)
    assert torch.allclose(model.denoise(y), post, atol=1e-10)

    # log p(y) from log p_{sigma/sqrt M}(ybar) and the closed-form constant.
    ybar_dist = torch.distributions.Normal(mu, (lam + sigma**2 / M).sqrt())
    ours = multimeasurement_log_prob(y, lambda yb: ybar_dist.log_prob(yb).sum(-1), sigma)
    assert torch.allclose(ours, log_p.detach(), atol=1e-9)


def test_ybar_score_matches_closed_form_and_contract_score():
    model, mu, lam = gaussian_setup(4, 2.0, 16, seed=3)
    ybar = torch.randn(7, 4, dtype=torch.float64)
    exact = -(ybar - mu) / (lam + model.sigma_eff**2)
    assert torch.allclose(model.ybar_score(ybar), exact, atol=1e-12)
    assert torch.allclose(model.score(ybar, torch.zeros(7, dtype=torch.float64)), exact, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(M=st.integers(1, 8), M_new=st.integers(1, 64), sigma=st.floats(0.2, 4.0))
def test_with_measurements_shares_parameters_and_class(M, M_new, sigma):
    model = GPSModel(TinyNet((3,)), sigma=sigma, M=M)
    other = model.with_measurements(M_new)
    assert other.M == M_new and other.net is model.net
    assert all(a is b for a, b in zip(model.parameters(), other.parameters()))
    assert math.isclose(other.sigma_eff, model.sigma_eff, rel_tol=1e-12)
    assert math.isclose(other.sigma, sigma * math.sqrt(M_new / M), rel_tol=1e-12)
    ybar = torch.randn(5, 3)
    assert torch.equal(other.ybar_score(ybar), model.ybar_score(ybar))


def test_bad_inputs_raise():
    model = GPSModel(TinyNet((3,)), sigma=1.0, M=4)
    with pytest.raises(ValueError, match="M=4"):
        model.measurement_score(torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="M"):
        GPSModel(TinyNet((3,)), sigma=1.0, M=0)
    with pytest.raises(ValueError, match="sigma"):
        GPSModel(TinyNet((3,)), sigma=-1.0, M=2)
    with pytest.raises(ValueError, match="class"):
        MultimeasurementDenoising(sigma=1.0, M=2, num_levels=None)(model, torch.randn(4, 3))
    with pytest.raises(TypeError, match="num_levels"):
        MultimeasurementDenoising(num_levels=None)(model, torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="GPSModel"):
        MultimeasurementDenoising(num_levels=None)(nn.Linear(3, 3), torch.randn(4, 3))


def test_objective_expected_loss_is_posterior_variance():
    """With the exact g the loss is the Bayes risk: mean_d lam_d s2 / (lam_d + s2)."""
    model, mu, lam = gaussian_setup(3, 1.0, 4, seed=5)
    g = torch.Generator().manual_seed(0)
    n = 20_000
    x = mu + lam.sqrt() * torch.randn(n, 3, generator=g, dtype=torch.float64)
    s2 = model.sigma_eff**2
    expected = float((lam * s2 / (lam + s2)).mean())
    for sample_measurements in (False, True):
        obj = MultimeasurementDenoising(num_levels=None, sample_measurements=sample_measurements)
        per = obj.per_example_loss(model, (x, torch.zeros(n)), generator=g)
        assert per.shape == (n,)
        se = float(per.std()) / math.sqrt(n)
        assert abs(float(per.mean()) - expected) < 5 * se


def test_objective_gradients_and_integer_data():
    net = TinyNet((1, 2, 2))
    model = GPSModel(net, sigma=2.0, M=16)
    k = torch.randint(0, 256, (8, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    loss, metrics = MultimeasurementDenoising(2.0, 16)(model, [k, torch.zeros(8)], generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert set(metrics) == {"loss", "loss_std", "sigma_eff"} and metrics["sigma_eff"] == 0.5
    # Float64 model: integer data are dequantized in the model's dtype.
    model64 = GPSModel(TinyNet((1, 2, 2)).double(), sigma=2.0, M=16)
    loss64, _ = MultimeasurementDenoising()(model64, k)
    assert loss64.dtype == torch.float64


def _losses(model, obj, seed: int, n: int = 3000):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64) * 0.7
    with torch.no_grad():
        return obj.per_example_loss(model, x, generator=g).numpy()


def test_universality_class_members_have_the_same_loss_law():
    """the GPS paper (Saremi et al., 2023) Prop. 2: members of one class incur losses with the same law (KS two-sample test)."""
    base = GPSModel(TinyNet((4,), seed=1, skip=1.0, scale=0.1).double(), sigma=1.0, M=4)  # sigma_eff = 0.5
    member = base.with_measurements(16)  # sigma = 2
    explicit = MultimeasurementDenoising(num_levels=None, sample_measurements=True)
    a = _losses(base, explicit, seed=10)
    b = _losses(member, explicit, seed=11)
    direct = _losses(member, MultimeasurementDenoising(num_levels=None), seed=12)
    assert stats.ks_2samp(a, b).pvalue > 1e-3
    assert stats.ks_2samp(a, direct).pvalue > 1e-3
    # A different class (sigma_eff = 1 with the same network) is detectably different.
    other = GPSModel(base.net, sigma=2.0, M=4)
    c = _losses(other, explicit, seed=13)
    assert stats.ks_2samp(a, c).pvalue < 1e-6
