"""What NCML's hybrid sampler samples: on Gaussian data (exact p_t and scores) each reverse solver
('pc': the reverse SDE; 'ode', 'heun': the probability-flow ODE and Tweedie's denoising step) from
an exact draw at t0 must end at its exact output law at eps, with the solver settings hybrid
sampling uses for each SDE; the ODE solvers must be the exact flow map. Bad solver settings fail
before the (slow) ancestral draw."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.data import quantize
from hybrids.models.analytic import GaussianDataModel
from hybrids.models.pixelcnnpp import NCPN
from hybrids.objectives.ncml import default_t_max
from hybrids.samplers.autoregressive import ancestral_sample
from hybrids.samplers.hybrid import REVERSE_SOLVERS, hybrid_defaults, hybrid_sample, reverse_from
from hybrids.samplers.sde import CountedScore
from hybrids.sdes import SubVPSDE, VESDE, VPSDE
from tests.test_heun_sampler import gaussian_denoised_flow

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=F64)
VAR = torch.tensor([0.3, 0.05], dtype=F64)


SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}


def _output_law(sde, reverse: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the exact output law: p_eps for 'pc' (the mean of the last step), the law
    of Tweedie's E[x_0 | x_eps] for the ODE solvers: N(mu, m^2 v^2 / V_eps), V_eps = m^2 v + std^2."""
    c = sde.marginal_coefs(torch.tensor([eps], dtype=F64))
    var_eps = c.mean_coef**2 * VAR + c.std**2
    if reverse == "pc":
        return c.mean_coef * MEAN, var_eps
    return MEAN, c.mean_coef**2 * VAR**2 / var_eps


@pytest.mark.parametrize("reverse", REVERSE_SOLVERS)
@pytest.mark.parametrize("kind", sorted(SDES))
def test_every_reverse_solver_reproduces_the_data_law(kind, reverse):
    """From x ~ p_t0 exactly, each reverse solver of hybrid sampling must give the mean and the
    covariance of its exact output law at eps: p_eps for 'pc' (the mean of the last predictor step),
    the law of Tweedie's E[x_0 | x_eps] for 'ode' and 'heun' (18 steps), with the SDE's default eps.
    t0 = T_ncml for VE (0.5) and VP (0.1); subVP uses t0 = 0.1 instead of its T_ncml = 0.025, from
    which the process moves too little for any defect to show.
    Tolerances over 20_000 samples: 5 standard errors on the means and the covariance (off-diagonal
    SE sqrt(v_1 v_2 / n)); variances within 6% for 'pc' (its step bias), 5 SE (5%) for the ODE solvers.
    Catches (each checked by breaking the code once): the score's sign flipped (the flow expands:
    variances up to 10^4 times too large), the drift f dropped (VP/subVP means off by (1 - m(t0)) mu, 5%, 10 SE), for
    'pc' also a missing g^2 factor or a skipped final step. VE 'pc' runs with steps of 2.5e-4
    instead of 1e-3: its ancestral (reverse-diffusion) step adds an excess variance
    Delta^2 / (v + sigma_i^2) per step (Delta = sigma_i^2 - sigma_(i-1)^2, exact for Gaussian data),
    which at the default step leaves the 0.05-variance coordinate 6% too wide (measured); a quarter
    of the step cuts that 16-fold. VP/subVP 'pc' run at the default 1e-3 (their error is below 1%)."""
    sde = SDES[kind]
    model = GaussianDataModel(MEAN, VAR, sde)
    t0 = 0.1 if kind == "subvp" else default_t_max(sde)
    n = 20_000
    x_t0 = model.sample(n, t0, generator=torch.Generator().manual_seed(0))
    eps = hybrid_defaults(sde)["eps"]
    step = 2.5e-4 if kind == "ve" else 1e-3
    x = reverse_from(model.score, sde, x_t0, t0=t0, step_size=step, reverse=reverse,
                     generator=torch.Generator().manual_seed(1))
    mean, var = _output_law(sde, reverse, eps)
    cov = torch.cov(x.T)
    assert torch.all((x.mean(0) - mean).abs() < 5 * (var / n).sqrt()), (x.mean(0), mean)
    var_tol = 0.06 if reverse == "pc" else 5 * math.sqrt(2 / (n - 1))
    assert torch.allclose(cov.diagonal(), var, rtol=var_tol), (cov.diagonal(), var)
    assert abs(float(cov[0, 1])) < 5 * float((var.prod() / n).sqrt()), cov


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(sorted(SDES)), reverse=st.sampled_from(["ode", "heun"]), dim=st.integers(1, 4),
       frac=st.floats(0.05, 1.0), seed=st.integers(0, 2**31 - 1))
def test_the_ode_solvers_are_the_exact_gaussian_flow_map(kind, reverse, dim, frac, seed):
    """For Gaussian data the probability flow from t0 to eps, then Tweedie's step, is an exact affine
    map per dimension (``gaussian_denoised_flow``): 'ode' at rtol = atol = 1e-7 must match it within
    1e-5 (1 + |x|), 'heun' with 40 steps within 2e-3 (1 + |x|) (measured worst: 5e-4), for any t0 in
    [eps + 0.05 (T_mid - eps), T_mid] (T_mid = 0.5 VE, 0.1 VP/subVP), random N(mu, diag(v)).
    Catches: the drift f dropped (off by (1 - m(t0)) |mu|, up to 5%), the probability flow's 1/2
    on g^2 s missing (the reverse SDE's drift without its noise), the final denoising step
    missing ('ode': off by std(eps)^2 |x - m mu| / V, about 1e-3 here), eps or t0 not passed on."""
    sde = SDES[kind]
    eps = hybrid_defaults(sde)["eps"]
    t0 = eps + frac * ((0.5 if kind == "ve" else 0.1) - eps)
    g = torch.Generator().manual_seed(seed)
    mean, var = 2 * torch.randn(dim, generator=g, dtype=F64), 0.05 + 0.95 * torch.rand(dim, generator=g, dtype=F64)
    model = GaussianDataModel(mean, var, sde)
    x_t0 = model.sample(64, t0, generator=g)
    x = reverse_from(model.score, sde, x_t0, t0=t0, reverse=reverse, num_steps=40, rtol=1e-7, atol=1e-7)
    exact = gaussian_denoised_flow(sde, mean, var, x_t0, t0, eps)
    tol = 1e-5 if reverse == "ode" else 2e-3
    assert torch.all((x - exact).abs() <= tol * (1 + exact.abs())), (x - exact).abs().max()


@pytest.mark.parametrize("reverse", REVERSE_SOLVERS)
def test_a_flipped_score_is_caught(reverse):
    """The moment check of ``test_every_reverse_solver_reproduces_the_data_law`` fails for each
    solver driven by the negated score (the test can fail)."""
    sde = VPSDE()
    model = GaussianDataModel(MEAN, VAR, sde)
    x_t0 = model.sample(4000, 0.1, generator=torch.Generator().manual_seed(0))
    x = reverse_from(lambda y, t: -model.score(y, t), sde, x_t0, t0=0.1, reverse=reverse,
                     generator=torch.Generator().manual_seed(1))
    _, var = _output_law(sde, reverse, hybrid_defaults(sde)["eps"])
    assert not torch.allclose(x.var(0), var, rtol=0.06)


def test_bad_solver_settings_fail_before_sampling():
    """Unknown solver names and bad settings of the chosen solver are ValueErrors, raised before the
    ancestral draw (``hybrid_sample`` with no model at all gets that far) and before any score call."""
    sde = VPSDE()
    model = GaussianDataModel(MEAN, VAR, sde)
    x = torch.zeros(2, 2, dtype=F64)

    def no_score(x, t):
        raise AssertionError("the score was called")

    with pytest.raises(ValueError, match="eps must lie"):
        reverse_from(model.score, sde, x, t0=0.1, eps=0.2)
    with pytest.raises(ValueError, match="step_size"):
        reverse_from(model.score, sde, x, t0=0.1, step_size=0.0)
    cases = [
        (dict(reverse="euler"), r"Unknown reverse solver 'euler'; choose one of \['pc', 'ode', 'heun'\]"),
        (dict(reverse="ode", eps=0.0), r"eps must lie in \(0, t0"),
        (dict(reverse="heun", eps=0.0), r"eps must lie in \(0, t0"),
        (dict(reverse="heun", num_steps=1), "num_steps >= 2"),
        (dict(reverse="heun", num_steps=2.5), "num_steps >= 2"),
        (dict(reverse="heun", rho=0.0), "rho"),
        (dict(reverse="ode", rtol=0.0), "rtol"),
        (dict(reverse="ode", atol=float("nan")), "atol"),
        (dict(reverse="ode", rtol="1e-3"), "rtol"),
    ]
    for settings_, message in cases:
        with pytest.raises(ValueError, match=message):
            reverse_from(no_score, sde, x, t0=0.1, **settings_)
        with pytest.raises(ValueError, match=message):
            hybrid_sample(None, sde, (2, 1, 2, 2), num_levels=17, **settings_)
    # settings of the other solvers are not read
    reverse_from(model.score, sde, x, t0=0.1, reverse="pc", num_steps=1, rtol=-1.0)
    reverse_from(model.score, sde, x, t0=0.1, reverse="heun", num_steps=3, step_size=0.0, rtol=-1.0)


def _tiny_ncpn(sde):
    torch.manual_seed(0)
    return NCPN((1, 4, 4), num_levels=17, nr_filters=8, nr_resnet=1, nr_logistic_mix=2, dropout=0.0, sde=sde).eval()


@pytest.mark.parametrize("reverse", REVERSE_SOLVERS)
def test_hybrid_sample_with_each_solver_counts_its_score_evaluations(reverse):
    """``hybrid_sample`` is the ancestral draw at t0 followed by ``reverse_from`` on the same generator,
    for every solver, and ``CountedScore`` reports the evaluations: 'pc' one per step (VP: no
    corrector), 'heun' 2 N - 1, 'ode' dopri5's (at least one step of 6, plus the denoising step)."""
    sde = VPSDE()
    model = _tiny_ncpn(sde)
    settings_ = dict(reverse=reverse, step_size=0.01, num_steps=4, rtol=1e-3, atol=1e-3)
    levels = hybrid_sample(model, sde, (2, 1, 4, 4), num_levels=17, generator=torch.Generator().manual_seed(3),
                           **settings_)
    g = torch.Generator().manual_seed(3)
    t0 = default_t_max(sde)
    x_t0 = ancestral_sample(model, (2, 1, 4, 4), t=t0, generator=g)
    counted = CountedScore(lambda x, t: model.score(x, t, create_graph=False))
    x = reverse_from(counted, sde, x_t0, t0=t0, generator=g, **settings_)
    assert torch.equal(levels, quantize(x, 17)) and levels.dtype == torch.int64
    expected = {"pc": 10, "heun": 7}.get(reverse)
    assert counted.nfe == expected if expected else counted.nfe >= 7, counted.nfe


def test_the_hook_takes_the_solver_from_gin():
    """``hybrid_sampler.reverse = 'heun'`` selects Heun's solver, with ``num_steps`` from the bindings
    (or the Budget); an unknown name is a ValueError naming the choices."""
    import gin

    from hybrids.data import ArrayDataset
    from hybrids.hooks import hybrid_sampler

    sde = VPSDE()
    model = _tiny_ncpn(sde)
    data = ArrayDataset(name="digits", data=torch.zeros(4, 1, 4, 4, dtype=torch.int64), labels=None, num_levels=17)
    kw = dict(device=torch.device("cpu"), generator=torch.Generator().manual_seed(3), num_samples=2)
    gin.parse_config("import hybrids.hooks\nhybrid_sampler.reverse = 'heun'\nhybrid_sampler.num_steps = 3")
    out = hybrid_sampler(model, data, **kw)["samples"]
    direct = hybrid_sample(model, sde, (2, 1, 4, 4), num_levels=17, reverse="heun", num_steps=3,
                           generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, direct)
    gin.parse_config("hybrid_sampler.reverse = 'dpm'")
    with pytest.raises(ValueError, match="Unknown reverse solver 'dpm'"):
        hybrid_sampler(model, data, **kw)
