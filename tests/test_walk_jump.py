"""Walk-jump sampling: stationary laws on Gaussian M-densities and the exact D-dimensional reduction,
for every underdamped integrator ('aboba', 'cheng', 'randomized_midpoint')."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.integrate import quad_vec
from scipy.linalg import expm, solve_discrete_lyapunov

from hybrids.samplers import walk_jump
from hybrids.samplers.walk_jump import INTEGRATORS, langevin_walk, m_density_score, ou_flow

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


# ------------------------------------------------ 'cheng' and 'randomized_midpoint' on a Gaussian
# The references below are built from the SDE dy = v dt, dv = (u psi - gamma v) dt + sqrt(2 gamma u) dW
# alone (matrix exponentials and quadrature of its Brownian kernels), not from the sampler's
# closed forms, so they check those too.
SIGMA_G = np.array([[1.0, 0.3], [0.3, 0.5]])
MU_G = np.array([0.5, -0.3])


def frozen_flow(gamma: float, u: float, t: float) -> np.ndarray:
    """Flow over t with the score frozen, per coordinate: (y, v) <- F[:, :2] (y, v) + F[:, 2] psi, ``[2, 3]``."""
    return expm(np.array([[0.0, 1.0, 0.0], [0.0, -gamma, u], [0.0, 0.0, 0.0]]) * t)[:2]


def kick(gamma: float, t: float) -> np.ndarray:
    """(y, v) at time t after a unit velocity kick at 0, ``[2]``: the kernel of the Brownian integrals."""
    return expm(np.array([[0.0, 1.0], [0.0, -gamma]]) * t)[:, 1]


def recursion(P: np.ndarray, delta: float, friction: float, integrator: str, u: float, alpha: float = 0.0):
    """The centred step z' = T z + noise, z = (y - mu, v) ``[2n]``, on N(mu, P^-1): (T, Cov(noise)).

    'cheng': the exact flow over delta with psi(y) frozen. 'randomized_midpoint' (given alpha):
    y_mid = the frozen flow over a = alpha delta; (y', v') = free flow over delta
    + delta u kick(delta - a) psi(y_mid); (W_1, W_2, W_3) = Brownian integrals of one path.
    """
    n, gamma = P.shape[0], friction / delta
    eye, zero = np.eye(n), np.zeros((n, n))
    full = frozen_flow(gamma, u, delta)
    if integrator == "cheng":
        T = np.block([[eye - full[0, 2] * P, full[0, 1] * eye], [-full[1, 2] * P, full[1, 1] * eye]])
        C = 2 * gamma * u * quad_vec(lambda s: np.outer(kick(gamma, delta - s), kick(gamma, delta - s)),
                                     0, delta, epsabs=1e-14)[0]
        return T, np.kron(C, eye)
    a = alpha * delta
    mid = frozen_flow(gamma, u, a)
    kx, kv = u * delta * kick(gamma, delta - a)
    My, Mv = eye - mid[0, 2] * P, mid[0, 1] * eye  # y_mid - mu = My (y - mu) + Mv v + W_1
    T = np.block([[eye - kx * P @ My, full[0, 1] * eye - kx * P @ Mv],
                  [-kv * P @ My, full[1, 1] * eye - kv * P @ Mv]])

    def outer(s):
        k = np.concatenate([[kick(gamma, a - s)[0] if s < a else 0.0], kick(gamma, delta - s)])
        return np.outer(k, k)

    C3 = 2 * gamma * u * quad_vec(outer, 0, delta, points=[a] if 0 < a < delta else None, epsabs=1e-14)[0]
    B = np.block([[-kx * P, eye, zero], [-kv * P, zero, eye]])  # noise = B (W_1, W_2, W_3)
    return T, B @ np.kron(C3, eye) @ B.T


def integrator_stationary(P: np.ndarray, delta: float, friction: float, integrator: str, u: float = 1.0):
    """Exact stationary second moments of the centred chain: (Cov z ``[2n, 2n]``, Cov(z_{k+1}, z_k)).

    'cheng': the discrete Lyapunov equation S = T S T^T + Q. 'randomized_midpoint': alpha ~ U[0, 1]
    is independent of z, so S = E_alpha[T S T^T + Q], solved in vec form with E_alpha by 16-point
    Gauss-Legendre (the entries are smooth in alpha); the mean is exact (mu) for both.
    """
    if integrator == "cheng":
        T, Q = recursion(P, delta, friction, integrator, u)
        assert max(abs(np.linalg.eigvals(T))) < 1  # a stable setting
        S = solve_discrete_lyapunov(T, Q)
        return S, T @ S
    nodes, weights = np.polynomial.legendre.leggauss(16)
    steps = [recursion(P, delta, friction, integrator, u, (x + 1) / 2) for x in nodes]
    m = 2 * P.shape[0]
    TT = sum(w / 2 * np.kron(T, T) for (T, _), w in zip(steps, weights))
    Q = sum(w / 2 * Q for (_, Q), w in zip(steps, weights))
    S = np.linalg.solve(np.eye(m * m) - TT, Q.reshape(-1)).reshape(m, m)
    return S, sum(w / 2 * T for (T, _), w in zip(steps, weights)) @ S


@settings(max_examples=40, deadline=None)
@given(L=st.one_of(st.sampled_from([0.0, 1e-12, 1e-6, 1.0, 1 - 1e-9, 1 + 1e-9]), st.floats(0.0, 40.0)),
       ell=st.floats(0.05, 2.0), u=st.floats(0.2, 3.0))
def test_ou_flow_is_the_exact_frozen_score_flow(L, ell, u):
    """ou_flow's closed forms and Taylor series against the SDE's flow and Brownian covariance."""
    f = ou_flow(torch.tensor(L, dtype=torch.float64))
    gamma = L / ell
    ref = frozen_flow(gamma, u, ell)
    assert np.allclose([ell * f.phi1, u * ell**2 * f.phi2, f.decay, u * ell * f.phi1],
                       [ref[0, 1], ref[0, 2], ref[1, 1], ref[1, 2]], rtol=1e-12, atol=1e-14)
    C = 2 * gamma * u * quad_vec(lambda s: np.outer(kick(gamma, ell - s), kick(gamma, ell - s)), 0, ell,
                                 epsabs=1e-15, epsrel=1e-12)[0]
    x1, x2 = math.sqrt(u) * ell * float(f.noise_x1), math.sqrt(u) * ell * float(f.noise_x2)
    v = math.sqrt(u) * float(f.noise_v)
    ours = np.array([[x1**2 + x2**2, x1 * v], [x1 * v, v**2]])
    assert np.allclose(ours, C, rtol=1e-8, atol=1e-15 + 1e-10 * np.abs(C).max())


@pytest.mark.parametrize("integrator", ["cheng", "randomized_midpoint"])
@pytest.mark.parametrize("delta,friction,u", [(0.8, 1.0, 1.0), (0.6, 0.5, 1.0), (1.2, 3.0, 0.6), (0.5, 2.0, 1.7)])
def test_integrator_stationary_law_is_its_exact_gaussian_recursion(integrator, delta, friction, u):
    """Many parallel chains on N(mu, Sigma) (2-D, correlated, exact score) against the exact stationary
    law of the scheme's linear recursion: mean mu, Cov(y) and the lag-1 Cov(y_{k+1}, y_k) within 5 s.e.

    Broken on purpose once each in hybrids/samplers/walk_jump.py, this test fails (for every
    setting the break reaches): the score's sign flipped (psi -> -psi at y, or at the midpoint); a
    wrong noise scale (sqrt(2 (L - 2 tanh(L/2))) -> sqrt(L - 2 tanh(L/2)) in X,
    sqrt(1 - e^{-2L}) -> sqrt(1 - e^{-L}) in V, or V without its sqrt(u)); y- and v-noise
    uncorrelated (X from a third draw in place of xi_1, same variance); and, for the randomized
    midpoint, W_2 without (delta - a) phi1 V_1 or W_3 without e^{-L_2} V_1 (the midpoint's
    Brownian part not shared with the step's).
    """
    N, n_steps = 10_000, 120
    P = np.linalg.inv(SIGMA_G)
    S, lag = integrator_stationary(P, delta, friction, integrator, u)
    S, lag = S[:2, :2], lag[:2, :2]
    Pt, mu = torch.tensor(P), torch.tensor(MU_G)
    gen = torch.Generator().manual_seed(0)
    y0 = mu + torch.randn(N, 2, generator=gen, dtype=torch.float64) @ torch.tensor(np.linalg.cholesky(S)).T
    last = {}
    langevin_walk(lambda y: -(y - mu) @ Pt, y0, n_steps=n_steps, step_size=delta, friction=friction,
                  integrator=integrator, inverse_mass=u, generator=gen,
                  callback=lambda k, y: last.update({k: y.numpy()}) if k >= n_steps - 1 else None)
    prev, y = last[n_steps - 1], last[n_steps]
    d = np.diag(S)
    assert np.all(np.abs(y.mean(0) - MU_G) < 5 * np.sqrt(d / N))
    assert np.all(np.abs(np.cov(y.T) - S) < 5 * np.sqrt((np.outer(d, d) + S**2) / N))
    lag_emp = (y - y.mean(0)).T @ (prev - prev.mean(0)) / (N - 1)
    assert np.all(np.abs(lag_emp - lag) < 5 * np.sqrt((np.outer(d, d) + lag * lag.T) / N))


def test_integrator_step_bias_vanishes_at_its_order():
    """At fixed gamma the exact stationary Cov(y) tends to Sigma as delta -> 0: first order for
    'cheng' (the frozen score), third order for 'randomized_midpoint' (halving delta halves, resp.
    divides by 8, the largest error); A-B-O-B-A has none on Gaussians (test above)."""
    P = np.linalg.inv(SIGMA_G)
    for integrator, order in [("cheng", 1), ("randomized_midpoint", 3)]:
        err = [np.abs(integrator_stationary(P, d, 1.0 * d, integrator)[0][:2, :2] - SIGMA_G).max()
               for d in (0.1, 0.05, 0.025)]
        assert err[2] < err[1] < err[0] < 0.1
        assert all(0.8 * 2**order < a / b < 1.2 * 2**order for a, b in zip(err, err[1:]))


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


@settings(max_examples=40, deadline=None)
@given(
    M=st.integers(1, 6),
    event=st.sampled_from([(3,), (1, 2, 2)]),
    B=st.integers(1, 3),
    n_steps=st.integers(1, 12),
    friction=st.floats(0.0, 3.0),
    walk=st.sampled_from([("underdamped", i) for i in INTEGRATORS] + [("overdamped", "aboba")]),
    record_every=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 1000),
)
def test_reduced_chain_gives_identical_jumps(M, event, B, n_steps, friction, walk, record_every, seed):
    """The reduced chain fed sqrt(M) mean_m of the full chain's normals (and, for the randomized
    midpoint, the same alpha per chain from the same generator) gives the full chain's jumps."""
    sigma, (method, integrator) = 1.7, walk
    g = nonlinear_g(event, seed)
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randn((B, M) + event, generator=gen, dtype=torch.float64) for _ in range(4 * n_steps + 1)]
    init = torch.randn((B,) + event, generator=gen, dtype=torch.float64)
    kw = dict(n_steps=n_steps, friction=friction, method=method, integrator=integrator, record_every=record_every,
              init=init)
    full = walk_jump(g, sigma, M, (B,) + event, reduced=False, noise_sampler=ListNoise(draws),
                     generator=torch.Generator().manual_seed(seed), **kw)
    red = walk_jump(g, sigma, M, (B,) + event, noise_sampler=ListNoise(draws, lambda z: math.sqrt(M) * z.mean(1)),
                    generator=torch.Generator().manual_seed(seed), **kw)
    full, red = (full, red) if record_every else ([full], [red])
    assert len(full) == len(red) == (n_steps // record_every if record_every else 1)
    for a, b in zip(full, red):
        assert a.shape == (B,) + event
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("integrator", ["cheng", "randomized_midpoint"])
def test_reduced_and_full_chains_share_the_jump_law(integrator):
    """Drawn from one generator each (different normals), the reduced and the full chain's jumps on
    a Gaussian agree in mean and variance within 5 s.e. (the exact reduction holds in law)."""
    sigma, M, N = 2.0, 4, 4000
    g = gaussian_g(sigma / math.sqrt(M))
    kw = dict(n_steps=60, friction=1.0, integrator=integrator, dtype=torch.float64)
    red = walk_jump(g, sigma, M, (N, 2), generator=torch.Generator().manual_seed(0), **kw)
    full = walk_jump(g, sigma, M, (N, 2), reduced=False, generator=torch.Generator().manual_seed(1), **kw)
    var = (red.var(0) + full.var(0)) / 2
    assert torch.all((red.mean(0) - full.mean(0)).abs() < 5 * torch.sqrt(2 * var / N))
    assert torch.all((red.var(0) - full.var(0)).abs() < 5 * var * math.sqrt(4 / N))


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


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_float32_and_record_every(integrator):
    g = nonlinear_g((1, 2, 2), 3)
    g32 = lambda yb: g(yb.double()).float()  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    jumps = walk_jump(g32, 2.0, 16, (5, 1, 2, 2), n_steps=10, friction=1.0, generator=gen, record_every=4,
                      integrator=integrator)
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
    with pytest.raises(ValueError, match=r"unknown integrator 'baoab'; choose one of \('aboba', 'cheng', "):
        walk_jump(g, 1.0, 4, (2, 2), n_steps=1, integrator="baoab")
    with pytest.raises(ValueError, match=r"integrator 'cheng' is one of the underdamped walk; method='overdamped'"):
        walk_jump(g, 1.0, 4, (2, 2), n_steps=1, method="overdamped", integrator="cheng")


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


def test_walk_jump_hooks_take_the_integrator_and_refuse_unknown_names():
    from hybrids.data import ArrayDataset, quantize
    from hybrids.models.gps import GPSModel
    from hybrids.hooks import walk_jump_class_eval, walk_jump_sampler

    torch.manual_seed(0)
    model = GPSModel(TinyDenoiser(4), sigma=2.0, M=16)
    data = ArrayDataset("digits", torch.zeros(3, 1, 2, 2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), 17)
    kw = dict(device=torch.device("cpu"), num_samples=5, num_steps=6, friction=0.5)
    for integrator in ("cheng", "randomized_midpoint"):
        out = walk_jump_sampler(model, data, generator=torch.Generator().manual_seed(3), integrator=integrator, **kw)
        with torch.no_grad():
            direct = walk_jump(model.ybar_score, 2.0, 16, (5, 1, 2, 2), n_steps=6, friction=0.5, integrator=integrator,
                               generator=torch.Generator().manual_seed(3))
        assert torch.equal(quantize(direct, 17), out["samples"])
    with pytest.raises(ValueError, match=r"walk_jump_sampler\.integrator must be one of 'aboba', 'cheng', "
                                         r"'randomized_midpoint' .*got 'baoab'"):
        walk_jump_sampler(model, data, generator=torch.Generator(), integrator="baoab", **kw)
    with pytest.raises(ValueError, match=r"walk_jump_class_eval\.integrator must be one of .*got 'leapfrog'"):
        walk_jump_class_eval(model, data, device=torch.device("cpu"), generator=torch.Generator(), num_steps=2,
                             record_every=1, integrator="leapfrog")
