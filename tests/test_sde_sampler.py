"""Predictor-corrector sampling on exact Gaussian scores (hybrids.samplers.sde).

Ground truth: data N(mu, diag(v)) in 2-D, whose marginals p_t and scores are exact
(GaussianDataModel). A chain started from exact samples of p_{t0} must end at p_{t_end}.

Tolerances, per statistic:
* Monte-Carlo: 5 standard errors, SE(mean) = sqrt(var / n), SE(var) = var sqrt(2 / (n - 1)).
* Predictor discretisation: with an exact affine score every predictor step is affine,
  x' = A x + b + c z, so the chain's mean and variance follow a deterministic recursion. We
  propagate it (A, b, c read off the library's step function on deterministic inputs) and assert
  that (i) the Monte-Carlo moments match the recursion within 5 SE (the loop and the noise are right)
  and (ii) the recursion matches p_{t_end} to 1% (the step is a consistent discretisation; at
  h = 1e-3 the first-order bias is a few 1e-3 and a sign-flipped score is off by orders of magnitude).
* Langevin corrector: the step eps = 2 a snr^2 (mean ||z|| / mean ||s||)^2 is shared by the batch
  (score_sde's rule), so for an exact Gaussian score the corrector is an unadjusted Langevin step of
  a fixed size, whose stationary variance is v / (1 - eps / (2 v)); with E ||s||^2 = sum_d 1/v_d
  and E ||z||^2 = D, eps ~ 2 a snr^2 D / sum_d (1/v_d). The allowance is that inflation minus 1, plus
  1%. The D = 128 tests pool the moments over the 64 dimensions that share a variance; a 2-D test
  guards against a per-example step ratio ||z_b|| / ||s_b||, which is heavy-tailed near the mode in
  low dimension (it inflated a 2-D variance 17-fold).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.models.analytic import GaussianDataModel
from hybrids.samplers.sde import (
    euler_maruyama_step,
    pc_sample,
    reverse_diffusion_step,
    sample_from_prior,
)
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
VAR = torch.tensor([0.5, 2.0], dtype=torch.float64)
N = 4000
H = 1e-3  # step size in t
SNR = 0.16

CASES = [
    (VESDE, 1e-5, 0.5),
    (VESDE, 1e-5, 1.0),
    (VPSDE, 1e-3, 0.1),
    (VPSDE, 1e-3, 1.0),
    (SubVPSDE, 1e-3, 0.025),
    (SubVPSDE, 1e-3, 0.6),
]


def _target(model: GaussianDataModel, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    like = torch.zeros(1, model.mean.numel(), dtype=torch.float64)
    mean, var = model.marginal_params(torch.tensor(t, dtype=torch.float64), like)
    return mean[0], var[0]


def _chain_moments(model, sde, predictor, t0, t_end, num_steps, denoise=True):
    """Exact mean/variance of the predictor-only chain started at p_{t0} (affine recursion)."""
    step = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step}[predictor]
    score = model.score_fn()
    mean, var = _target(model, t0)
    h = (t0 - t_end) / num_steps
    zero = torch.zeros(1, 2, dtype=torch.float64)
    one = torch.ones(1, 2, dtype=torch.float64)
    for i in range(num_steps):
        t = torch.full((1,), t0 - i * h, dtype=torch.float64)
        b = step(score, sde, zero, t, h, zero)[0][0]
        A = step(score, sde, one, t, h, zero)[0][0] - b
        c = step(score, sde, zero, t, h, one)[0][0] - b
        last = i == num_steps - 1
        mean = A * mean + b
        var = A**2 * var + (0.0 if (last and denoise) else c**2)
    return mean, var


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), x.var(0)


def _within(x, mean, var, extra_rel=0.0, k=5.0) -> bool:
    """Moments of samples x [N, D] agree with (mean, var) within k SE plus extra_rel * var."""
    m, v = _moments(x)
    n = x.shape[0]
    se_m = (var / n).sqrt()
    se_v = var * math.sqrt(2 / (n - 1))
    ok_m = ((m - mean).abs() <= k * se_m + extra_rel * var.sqrt()).all()
    ok_v = ((v - var).abs() <= k * se_v + extra_rel * var).all()
    return bool(ok_m and ok_v)


MU_D = MU.repeat(64)  # D = 128 for the corrector tests
VAR_D = VAR.repeat(64)
N_D = 500


def _langevin_allowance(var: torch.Tensor) -> float:
    """Relative variance bias bound of the snr-rule Langevin corrector (module docstring)."""
    a = 1.0  # langevin_alpha <= 1 for every SDE here
    num_dims = var.numel()
    inv_sum = float((1 / var).sum())
    eps_over_v = 2 * a * SNR**2 * num_dims / inv_sum / var
    ula = 1 / (1 - eps_over_v / 2)
    return float((ula - 1).max()) + 0.01


def _pooled(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Pool [N, 128] centred samples into [N * 64, 2] by the two variance groups."""
    return (x - mean).reshape(x.shape[0], -1, 2).reshape(-1, 2)


@pytest.mark.parametrize("sde_cls,t_end,t0", CASES)
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion"])
def test_predictor_matches_chain_recursion_and_target(sde_cls, t_end, t0, predictor):
    sde = sde_cls()
    model = GaussianDataModel(MU, VAR, sde)
    num_steps = round((t0 - t_end) / H)
    g = torch.Generator().manual_seed(7)
    x0 = model.sample(N, t0, generator=g)
    x = pc_sample(model.score_fn(), sde, x0, t_start=t0, t_end=t_end, num_steps=num_steps,
                  predictor=predictor, generator=g)
    assert x.dtype == torch.float64 and x.shape == (N, 2)
    c_mean, c_var = _chain_moments(model, sde, predictor, t0, t_end, num_steps)
    mean, var = _target(model, t_end)
    # (ii) the discretised chain is within 1% of the exact p_{t_end}.
    assert torch.allclose(c_mean, mean, atol=0.01 * var.sqrt().min().item())
    assert torch.allclose(c_var, var, rtol=0.01)
    # (i) Monte-Carlo moments agree with the chain, and with the target.
    assert _within(x, c_mean, c_var)
    assert _within(x, mean, var, extra_rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("sde_cls,t_end,t0", [CASES[0], CASES[2], CASES[4], (SubVPSDE, 1e-3, 0.3)])
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion"])
def test_predictor_corrector_returns_target(sde_cls, t_end, t0, predictor):
    sde = sde_cls()
    model = GaussianDataModel(MU_D, VAR_D, sde)
    g = torch.Generator().manual_seed(11)
    x0 = model.sample(N_D, t0, generator=g)
    x = pc_sample(model.score_fn(), sde, x0, t_start=t0, t_end=t_end, num_steps=round((t0 - t_end) / H),
                  predictor=predictor, corrector="langevin", snr=SNR, generator=g)
    mean, var = _target(model, t_end)
    assert torch.isfinite(x).all()
    pooled = _pooled(x, mean)
    assert _within(pooled, torch.zeros(2, dtype=x.dtype), var[:2], extra_rel=_langevin_allowance(VAR_D))


@pytest.mark.parametrize("sde_cls,t_end,t0", [CASES[0], (VPSDE, 1e-3, 0.3)])
def test_corrector_in_two_dimensions(sde_cls, t_end, t0):
    sde = sde_cls()
    model = GaussianDataModel(MU, VAR, sde)
    g = torch.Generator().manual_seed(13)
    x0 = model.sample(N, t0, generator=g)
    x = pc_sample(model.score_fn(), sde, x0, t_start=t0, t_end=t_end, num_steps=round((t0 - t_end) / H),
                  corrector="langevin", snr=SNR, generator=g)
    mean, var = _target(model, t_end)
    assert _within(x, mean, var, extra_rel=_langevin_allowance(VAR))


@pytest.mark.slow
@pytest.mark.parametrize("corrector", [None, "langevin"])
@pytest.mark.parametrize("sde_cls,t_end,t0", [CASES[0], (VPSDE, 1e-3, 0.3), (SubVPSDE, 1e-3, 0.3)])
def test_sign_flipped_score_fails(sde_cls, t_end, t0, corrector):
    """The checks above must reject a wrong score."""
    sde = sde_cls()
    model = GaussianDataModel(MU_D, VAR_D, sde)
    g = torch.Generator().manual_seed(3)
    x0 = model.sample(N_D, t0, generator=g)
    wrong = lambda x, t: -model.score(x, t)  # noqa: E731
    x = pc_sample(wrong, sde, x0, t_start=t0, t_end=t_end, num_steps=round((t0 - t_end) / H),
                  corrector=corrector, generator=g)
    mean, var = _target(model, t_end)
    pooled = _pooled(x, mean)
    assert not _within(pooled, torch.zeros(2, dtype=x.dtype), var[:2], extra_rel=_langevin_allowance(VAR_D))


def test_sample_from_prior_vp():
    sde = VPSDE()
    model = GaussianDataModel(MU, VAR, sde)
    g = torch.Generator().manual_seed(5)
    x = sample_from_prior(model.score_fn(), sde, (N, 2), eps=1e-3, num_steps=1000, generator=g,
                          dtype=torch.float64)
    mean, var = _target(model, 1e-3)
    # Prior N(0, I) differs from p_1 by alpha_1 = exp(-B(1)/2) ~ 0.0066: negligible next to 1%.
    assert _within(x, mean, var, extra_rel=0.01)


@settings(max_examples=10, deadline=None)
@given(
    sde_idx=st.integers(0, 2),
    batch=st.integers(1, 4),
    shape=st.sampled_from([(3,), (1, 2, 2), (2, 3)]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    predictor=st.sampled_from(["euler_maruyama", "reverse_diffusion"]),
    corrector=st.sampled_from([None, "langevin"]),
    seed=st.integers(0, 100),
)
def test_shapes_dtypes_and_reproducibility(sde_idx, batch, shape, dtype, predictor, corrector, seed):
    sde = [VESDE(), VPSDE(), SubVPSDE()][sde_idx]
    score = lambda x, t: -x  # noqa: E731
    x0 = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    run = lambda: pc_sample(score, sde, x0, t_start=0.3, t_end=0.01, num_steps=5, predictor=predictor,  # noqa: E731
                            corrector=corrector, generator=torch.Generator().manual_seed(seed))
    a, b = run(), run()
    assert a.shape == x0.shape and a.dtype == dtype
    assert torch.equal(a, b)


def test_denoise_returns_mean_of_last_step():
    """With denoise the final step adds no noise: one step from t equals the predictor mean."""
    sde = VPSDE()
    model = GaussianDataModel(MU, VAR, sde)
    x0 = model.sample(8, 0.2, generator=torch.Generator().manual_seed(0))
    x = pc_sample(model.score_fn(), sde, x0, t_start=0.2, t_end=0.1, num_steps=1, denoise=True)
    t = torch.full((8,), 0.2, dtype=torch.float64)
    drift = sde.drift(x0, t) - sde.diffusion(t)[:, None] ** 2 * model.score(x0, t)
    assert torch.allclose(x, x0 - 0.1 * drift)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(predictor="heun"), "Unknown predictor"),
        (dict(corrector="ald"), "Unknown corrector"),
        (dict(t_start=0.1, t_end=0.2), "t_end < t_start"),
        (dict(t_start=1.5), "t_end < t_start"),
        (dict(num_steps=0), "num_steps"),
        (dict(corrector="langevin", snr=0.0), "snr"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(t_start=0.5, t_end=0.01, num_steps=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pc_sample(lambda x, t: -x, VPSDE(), torch.zeros(2, 3), **args)


def test_x_init_must_be_float_batch():
    with pytest.raises(TypeError, match="floating-point"):
        pc_sample(lambda x, t: -x, VPSDE(), torch.zeros(3, dtype=torch.int64), t_start=0.5, t_end=0.0, num_steps=2)
