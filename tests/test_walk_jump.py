"""Walk-jump sampling: stationary laws on Gaussian M-densities and the exact D-dimensional reduction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.linalg import solve_discrete_lyapunov

from hybrids.samplers import walk_jump
from hybrids.samplers.walk_jump import langevin_walk, m_density_score

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
LAM = torch.tensor([1.0, 0.25], dtype=torch.float64)


def gaussian_g(sigma_eff: float):
    """Exact g = grad log p_{sigma_eff} for x ~ N(MU, diag(LAM))."""
    return lambda ybar: -(ybar - MU) / (LAM + sigma_eff**2)


def y_covariance(sigma: float, M: int) -> np.ndarray:
    """Cov(y) for y_m = x + sigma eps_m: LAM on equal dims of any two measurements, + sigma^2 I."""
    return np.kron(np.ones((M, M)), np.diag(LAM.numpy())) + sigma**2 * np.eye(M * len(LAM))


def discrete_stationary_cov(P: np.ndarray, delta: float, friction: float, method: str, u: float = 1.0) -> np.ndarray:
    """Exact stationary covariance of y for the scheme on a Gaussian with precision P.

    The chain is linear, z' = T z + G xi, so Sigma = T Sigma T^T + G G^T (discrete Lyapunov).
    Underdamped A-B-O-B-A in z = (y, v); overdamped y' = (I - delta^2 u P / 2) y + delta sqrt(u) xi.
    Returns the covariance of y, ``[n, n]``.
    """
    n = P.shape[0]
    eye = np.eye(n)
    if method == "overdamped":
        T = eye - delta**2 * u * P / 2
        return solve_discrete_lyapunov(T, delta**2 * u * eye)
    c = math.exp(-friction)
    A = np.block([[eye, delta / 2 * eye], [0 * eye, eye]])
    B = np.block([[eye, 0 * eye], [-u * delta / 2 * P, eye]])
    O = np.block([[eye, 0 * eye], [0 * eye, c * eye]])
    T = A @ B @ O @ B @ A
    G = A @ B @ np.vstack([0 * eye, math.sqrt(u * (1 - c**2)) * eye])
    return solve_discrete_lyapunov(T, G @ G.T)[:n, :n]


@pytest.mark.parametrize(
    "method,friction,step",
    [("underdamped", 1.0, 0.5), ("underdamped", 0.2, 0.25), ("underdamped", 3.0, 1.0), ("overdamped", 0.0, 0.5)],
)
def test_full_chain_stationary_mean_and_covariance(method, friction, step):
    sigma, M, D, N = 1.0, 3, 2, 4000
    g = torch.Generator().manual_seed(0)
    cov = y_covariance(sigma, M)
    exact = discrete_stationary_cov(np.linalg.inv(cov), step * sigma, friction, method)
    y0 = torch.randn(N, M, D, generator=g, dtype=torch.float64) * sigma
    score = m_density_score(gaussian_g(sigma / math.sqrt(M)), sigma)
    y = langevin_walk(score, y0, n_steps=400, step_size=step * sigma, friction=friction, method=method, generator=g)
    flat = y.reshape(N, M * D).numpy()
    se_mean = np.sqrt(np.diag(exact) / N)
    assert np.all(np.abs(flat.mean(0) - MU.repeat(M).numpy()) < 5 * se_mean)
    emp = np.cov(flat.T)
    se_cov = np.sqrt((np.outer(np.diag(exact), np.diag(exact)) + exact**2) / N)
    assert np.all(np.abs(emp - exact) < 5 * se_cov)
    bias = np.abs(exact - cov).max()
    if method == "underdamped":
        # A-B-O-B-A has no configurational bias on Gaussian targets (found with the Lyapunov solve).
        assert bias < 1e-10
    else:
        # Unadjusted overdamped Langevin: an O(delta^2) covariance bias (quarters when delta halves).
        half = np.abs(discrete_stationary_cov(np.linalg.inv(cov), step * sigma / 2, friction, method) - cov).max()
        assert bias > 0.02 and 0.15 < half / bias < 0.35


def test_reduced_chain_jumps_have_the_posterior_mean_law():
    """Jumps xhat = mu + LAM/(LAM + s2) (ybar - mu) of the reduced chain's stationary ybar."""
    sigma, M, N = 2.0, 16, 20_000
    s2 = sigma**2 / M
    g = torch.Generator().manual_seed(1)
    xhat = walk_jump(gaussian_g(math.sqrt(s2)), sigma, M, (N, 2), n_steps=200, friction=1.0, generator=g, dtype=torch.float64)
    h = sigma / 2 / math.sqrt(M)
    shrink = (LAM / (LAM + s2)).numpy()
    var_ybar = np.array([discrete_stationary_cov(np.array([[1 / (l + s2)]]), h, 1.0, "underdamped")[0, 0] for l in LAM.numpy()])
    var = shrink**2 * var_ybar
    assert np.all(np.abs(xhat.mean(0).numpy() - MU.numpy()) < 5 * np.sqrt(var / N))
    assert np.all(np.abs(xhat.var(0).numpy() - var) < 5 * var * math.sqrt(2 / N))


class ListNoise:
    """A noise_sampler replaying pre-drawn tensors, optionally mapped (to feed the reduced chain)."""

    def __init__(self, draws, transform=lambda z: z):
        self.draws, self.transform, self.i = draws, transform, 0

    def __call__(self, like):
        z = self.transform(self.draws[self.i])
        self.i += 1
        assert z.shape == like.shape
        return z


def nonlinear_g(event, seed):
    d = math.prod(event)
    W = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda yb: (-yb.flatten(1) + 0.7 * torch.tanh(yb.flatten(1) @ W)).reshape(yb.shape)


@settings(max_examples=20, deadline=None)
@given(
    M=st.integers(1, 6),
    event=st.sampled_from([(3,), (1, 2, 2)]),
    B=st.integers(1, 3),
    n_steps=st.integers(1, 12),
    friction=st.floats(0.0, 3.0),
    method=st.sampled_from(["underdamped", "overdamped"]),
    record_every=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 1000),
)
def test_reduced_chain_gives_identical_jumps(M, event, B, n_steps, friction, method, record_every, seed):
    sigma = 1.7
    g = nonlinear_g(event, seed)
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randn((B, M) + event, generator=gen, dtype=torch.float64) for _ in range(n_steps + 1)]
    init = torch.randn((B,) + event, generator=gen, dtype=torch.float64)
    kw = dict(n_steps=n_steps, friction=friction, method=method, record_every=record_every, init=init)
    full = walk_jump(g, sigma, M, (B,) + event, reduced=False, noise_sampler=ListNoise(draws), **kw)
    red = walk_jump(g, sigma, M, (B,) + event, noise_sampler=ListNoise(draws, lambda z: math.sqrt(M) * z.mean(1)), **kw)
    full, red = (full, red) if record_every else ([full], [red])
    assert len(full) == len(red) == (n_steps // record_every if record_every else 1)
    for a, b in zip(full, red):
        assert a.shape == (B,) + event
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_universality_class_members_sample_identically():
    """With the default delta = sigma/2 the reduced chains of (1, 4) and (2, 16) coincide."""
    g = nonlinear_g((3,), 0)
    out = []
    for sigma, M in [(1.0, 4), (2.0, 16)]:
        gen = torch.Generator().manual_seed(5)
        out.append(walk_jump(g, sigma, M, (4, 3), n_steps=30, friction=0.7, generator=gen, dtype=torch.float64))
    assert torch.allclose(out[0], out[1], rtol=0, atol=1e-12)
    gen = torch.Generator().manual_seed(5)
    other = walk_jump(g, 2.0, 4, (4, 3), n_steps=30, friction=0.7, generator=gen, dtype=torch.float64)
    assert not torch.allclose(out[0], other, atol=1e-3)


def test_float32_and_record_every():
    g = nonlinear_g((1, 2, 2), 3)
    g32 = lambda yb: g(yb.double()).float()  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    jumps = walk_jump(g32, 2.0, 16, (5, 1, 2, 2), n_steps=10, friction=1.0, generator=gen, record_every=4)
    assert len(jumps) == 2 and all(j.dtype == torch.float32 and j.shape == (5, 1, 2, 2) for j in jumps)
    assert all(torch.isfinite(j).all() for j in jumps)


def test_bad_inputs_raise():
    g = gaussian_g(0.5)
    with pytest.raises(ValueError, match="method"):
        walk_jump(g, 1.0, 4, (2, 2), n_steps=1, method="midpoint")
    with pytest.raises(ValueError, match="M"):
        walk_jump(g, 1.0, 0, (2, 2), n_steps=1)
    with pytest.raises(ValueError, match="init"):
        walk_jump(g, 1.0, 4, (2, 2), n_steps=1, init=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="record_every"):
        walk_jump(g, 1.0, 4, (2, 2), n_steps=1, record_every=0)
    with pytest.raises(ValueError, match="friction"):
        walk_jump(g, 1.0, 4, (2, 2), n_steps=1, friction=-1.0)


class TinyDenoiser(torch.nn.Module):
    """Raw net(u, t) -> like u for the hook tests."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)

    def forward(self, u, t):
        return torch.tanh(self.lin(u.flatten(1))).reshape(u.shape)


def test_walk_jump_sampler_hook_levels_chains_and_class_members():
    from hybrids.data import ArrayDataset, quantize
    from hybrids.models.gps import GPSModel
    from hybrids.hooks import walk_jump_sampler

    torch.manual_seed(0)
    model = GPSModel(TinyDenoiser(4), sigma=2.0, M=16)
    data = ArrayDataset("digits", torch.zeros(3, 1, 2, 2, dtype=torch.int64), None, 17)
    kw = dict(device=torch.device("cpu"), num_samples=5, num_steps=10, friction=0.5)
    out = walk_jump_sampler(model, data, generator=torch.Generator().manual_seed(3), record_every=5, **kw)
    assert out["samples"].shape == (5, 1, 2, 2) and out["samples"].dtype == torch.int64
    assert out["chains"].shape == (10, 1, 2, 2)
    assert int(out["chains"].min()) >= 0 and int(out["chains"].max()) <= 16
    assert torch.equal(out["chains"].reshape(5, 2, 1, 2, 2)[:, -1], out["samples"])
    with torch.no_grad():
        direct = walk_jump(model.ybar_score, 2.0, 16, (5, 1, 2, 2), n_steps=10, friction=0.5,
                           generator=torch.Generator().manual_seed(3))
    assert torch.equal(quantize(direct, 17), out["samples"])
    # Another member of the class (M = 64, sigma = 4) with the default delta = sigma/2: same samples.
    other = walk_jump_sampler(model, data, generator=torch.Generator().manual_seed(3), M=64, **kw)
    assert torch.equal(other["samples"], out["samples"])


def test_conditioning_eval_hook_matches_closed_form():
    from hybrids.data import ArrayDataset
    from hybrids.models.gps import GPSModel
    from hybrids.hooks import conditioning_eval

    n = 20_000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g) * torch.tensor([2.0, 1.0])  # eigenvalues 4 and 1
    data = ArrayDataset("checkerboard", x, None, None)
    model = GPSModel(TinyDenoiser(2), sigma=1.0, M=4)  # sigma_eff = 0.5
    out = conditioning_eval(model, data, device=torch.device("cpu"), generator=g, Ms=(1, 2, 8), num_examples=n)
    assert out["M"] == [1, 2, 8] and out["num_examples"] == n
    tol = 5 * math.sqrt(2 / n)  # relative standard error of a sample variance, 5 sigma
    assert math.isclose(out["kappa_class"][0], (4 + 0.25) / (1 + 0.25), rel_tol=tol)
    assert all(math.isclose(k, 1 + 4 / 0.25, rel_tol=tol) for k in out["kappa_class"][1:])
    assert math.isclose(out["kappa_fixed_sigma"][2], 1 + 8 * 4 / 1.0, rel_tol=tol)
