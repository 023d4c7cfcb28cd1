"""Composite score matching against a Gaussian autoregressive target with known conditionals.

Target: x_d | x_<d ~ N(mu_d + a_d . x_<d, v_d), d = 1..D, i.e. x = mu + A x + sqrt(v) eps with A
strictly lower triangular. Models: linear-Gaussian conditional scores
s_d = -(x_d - m_d - b_d . x_<d) / w_d, evaluated through the library's one-backward diagonal.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from hybrids.models.heads import diagonal_conditional_scores
from hybrids.models.made import MADEConditionalScore
from hybrids.objectives.csm import CSM
from hybrids.sdes import VESDE

D = 3


class LinearGaussianARScore(nn.Module):
    """s_d = -(x_d - m_d - (B x)_d) / w_d with B strictly lower triangular (context = m + B x)."""

    def __init__(self, B: torch.Tensor, m: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.B = nn.Parameter(torch.tril(B, -1))
        self.m = nn.Parameter(m.clone())
        self.w = nn.Parameter(w.clone())

    def context(self, x, t=None):
        mean = self.m + x @ torch.tril(self.B, -1).T
        return torch.stack([mean, self.w.expand_as(mean)], dim=-1)

    def head(self, x_d, c, t=None):
        return -(x_d - c[..., 0]) / c[..., 1]

    def conditional_scores(self, x, t=None):
        c = self.context(x, t)
        return diagonal_conditional_scores(lambda v: self.head(v, c), x)


def _target(seed: int):
    g = torch.Generator().manual_seed(seed)
    A = torch.tril(torch.randn(D, D, generator=g, dtype=torch.float64), -1) * 0.8
    mu = torch.randn(D, generator=g, dtype=torch.float64) * 0.5
    v = 0.5 + torch.rand(D, generator=g, dtype=torch.float64)
    return A, mu, v


def _sample(A, mu, v, n, seed):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, D, generator=g, dtype=torch.float64)
    x = torch.zeros(n, D, dtype=torch.float64)
    for d in range(D):  # ancestral sampling in the autoregressive order
        x[:, d] = mu[d] + x @ A[d] + v[d].sqrt() * eps[:, d]
    return x


def _closed_form_csm(A, mu, v, B, m, w):
    """E sum_d [s_d^2/2 + ds_d/dx_d] in closed form; x ~ N(M, S), s_d = -(r_d . x - m_d)/w_d."""
    eye = torch.eye(D, dtype=torch.float64)
    L = torch.linalg.inv(eye - A)
    M, S = L @ mu, L @ torch.diag(v) @ L.T
    R = eye - torch.tril(B, -1)
    mean_res = R @ M - m
    var_res = torch.einsum("di,ij,dj->d", R, S, R)
    return ((var_res + mean_res**2) / w**2 / 2 - 1 / w).sum()


def _csm_per_example(model, x):
    loss, metrics = CSM(num_levels=None)(model, x)
    return metrics["per_example_loss"] * D  # per-dimension -> sum over d


def _perturbed(A, mu, v, seed, scale):
    g = torch.Generator().manual_seed(seed)
    return (
        A + scale * torch.randn(D, D, generator=g, dtype=torch.float64),
        mu + scale * torch.randn(D, generator=g, dtype=torch.float64),
        v * torch.exp(scale * torch.randn(D, generator=g, dtype=torch.float64)),
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.05, 1.0))
def test_exact_scores_minimise_csm_closed_form(seed, scale):
    A, mu, v = _target(seed)
    best = _closed_form_csm(A, mu, v, A, mu, v)
    torch.testing.assert_close(best, -(1 / (2 * v)).sum())  # = -sum_d E (s*_d)^2 / 2
    assert _closed_form_csm(A, mu, v, *_perturbed(A, mu, v, seed + 1, scale)) > best


def test_objective_matches_closed_form_and_is_minimised_by_exact_scores():
    A, mu, v = _target(0)
    x = _sample(A, mu, v, 200_000, seed=1)
    exact = LinearGaussianARScore(A, mu, v).double()
    per_ex = _csm_per_example(exact, x)
    se = per_ex.std() / len(per_ex) ** 0.5
    assert abs(per_ex.mean() - _closed_form_csm(A, mu, v, A, mu, v)) < 5 * se
    for k in range(4):
        B, m, w = _perturbed(A, mu, v, 10 + k, 0.3)
        other = _csm_per_example(LinearGaussianARScore(B, m, w).double(), x)
        diff = other - per_ex  # common samples: the difference has a small variance
        assert abs(other.mean() - _closed_form_csm(A, mu, v, B, m, w)) < 5 * other.std() / len(x) ** 0.5
        assert diff.mean() > 5 * diff.std() / len(x) ** 0.5


def test_csm_minus_fisher_is_the_same_constant_for_every_model():
    """CSM - sum_d E (s_d - s*_d)^2 / 2 = -sum_d E (s*_d)^2 / 2 whatever the model (same samples)."""
    A, mu, v = _target(3)
    x = _sample(A, mu, v, 200_000, seed=4)
    s_true = -(x - mu - x @ A.T) / v
    constant = -(1 / (2 * v)).sum()
    models = [LinearGaussianARScore(*_perturbed(A, mu, v, 20 + k, 0.4)).double() for k in range(4)]
    models.append(MADEConditionalScore(D, hidden=(16,), context_features=4, head_hidden=(8,)).double())
    gaps = []
    for model in models:
        with torch.no_grad():
            s, _ = model.conditional_scores(x)
        fisher = 0.5 * (s - s_true).pow(2).sum(1)
        gap = _csm_per_example(model, x) - fisher
        se = gap.std() / len(x) ** 0.5
        assert abs(gap.mean() - constant) < 5 * se, (gap.mean(), constant, se)
        gaps.append(float(gap.mean()))
    assert max(gaps) - min(gaps) < 0.05


def test_training_made_with_csm_recovers_conditional_scores():
    torch.manual_seed(0)
    A, mu, v = _target(5)
    x_train = _sample(A, mu, v, 4096, seed=6).float()
    model = MADEConditionalScore(D, hidden=(32, 32), context_features=8, head_hidden=(32,))
    objective = CSM(num_levels=None)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(7)
    for _ in range(400):
        idx = torch.randint(0, len(x_train), (256,), generator=g)
        loss, _ = objective(model, x_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = _sample(A, mu, v, 2000, seed=8)
    s_true = -(x - mu - x @ A.T) / v
    with torch.no_grad():
        s, _ = model.conditional_scores(x.float())
    rel = (s.double() - s_true).pow(2).mean() / s_true.pow(2).mean()
    assert rel < 0.05, float(rel)


class _Spy(nn.Module):
    """Records what the objective feeds a model; scores -x (standard normal conditionals)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.seen = []

    def conditional_scores(self, x, t=None):
        self.seen.append((x.detach(), t))
        return -x + 0 * self.p, -torch.ones_like(x)


def test_integer_data_are_dequantized_and_perturbed_with_sigma():
    spy = _Spy()
    k = torch.full((20_000, 1, 2, 2), 128)  # bin [0, 2/256) in model space
    loss, metrics = CSM(sigma=0.3, num_levels=256)(spy, k, generator=torch.Generator().manual_seed(0))
    x, t = spy.seen[0]
    assert t is None and x.shape == k.shape and x.dtype == torch.float64
    assert x.std().item() == pytest.approx(0.3, rel=0.02)
    assert x.mean().item() == pytest.approx(1 / 256, abs=0.01)
    # with s = -x, ds = -1: per-dimension loss = E x^2 / 2 - 1
    assert loss.item() == pytest.approx(float((x**2).mean() / 2 - 1), rel=1e-12)
    assert metrics["per_example_loss"].shape == (20_000,)


def test_noise_conditional_variant_samples_times_and_weights_by_sigma_squared():
    sde = VESDE(sigma_min=0.1, sigma_max=2.0)
    spy = _Spy()
    x0 = torch.zeros(5000, 2, dtype=torch.float64)
    loss, metrics = CSM(num_levels=None, noise_conditional=True, sde=sde)(
        spy, x0, generator=torch.Generator().manual_seed(1)
    )
    x, t = spy.seen[0]
    assert t.shape == (5000,) and t.min() >= 1e-5 and t.max() <= sde.T
    std = sde.marginal_coefs(t).std
    z = x / std[:, None]
    assert z.std().item() == pytest.approx(1.0, rel=0.03)
    expected = std**2 * (0.5 * x.pow(2).sum(1) - 2) / 2
    torch.testing.assert_close(metrics["per_example_loss"], expected)


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="sigma"):
        CSM(num_levels=256)
    with pytest.raises(ValueError, match="sde"):
        CSM(noise_conditional=True)
    with pytest.raises(ValueError, match="positive"):
        CSM(sigma=-1.0)
    with pytest.raises(TypeError, match="num_levels"):
        CSM(num_levels=None)(_Spy(), torch.zeros(3, 2, dtype=torch.int64))


def test_noise_conditional_made_trains_with_the_noise_conditional_objective():
    sde = VESDE(sigma_min=0.05, sigma_max=1.0)
    model = MADEConditionalScore(4, hidden=(8,), head_hidden=(4,), noise_conditional=True, sde=sde)
    loss, metrics = CSM(num_levels=17, noise_conditional=True, sde=sde)(
        model, torch.randint(0, 17, (8, 1, 2, 2)), generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert torch.isfinite(loss) and metrics["per_example_loss"].shape == (8,)
    assert all(p.grad is not None for p in model.made.time_layers.parameters())
