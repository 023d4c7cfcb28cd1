"""What NCML's hybrid sampler samples: on Gaussian data (exact p_t and scores) the reverse SDE from
an exact draw at t0 must end at the data's law at eps, with the solver settings hybrid sampling
uses for each SDE."""
from __future__ import annotations

import pytest
import torch

from hybrids.models.analytic import GaussianDataModel
from hybrids.objectives.ncml import default_t_max
from hybrids.samplers.hybrid import hybrid_defaults, reverse_from
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=F64)
VAR = torch.tensor([0.3, 0.05], dtype=F64)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_reverse_sde_from_t0_reproduces_the_data_law(sde):
    """From x ~ p_t0 exactly (t0 = the paper's T_ncml), hybrid sampling's reverse part (the SDE's
    default predictor/corrector, step 1e-3, final denoising) must give the mean and variance of
    p_eps. Catches: a flipped score sign (variance explodes), a dropped or doubled drift f (the
    mean of VP/subVP is off by m(t0) - 1, about 5%), a missing g^2 factor, a skipped final step.
    Tolerances: 5 standard errors of the mean over 20_000 samples, 6% on the variance. VE runs with
    steps of 2.5e-4 instead of 1e-3: its ancestral (reverse-diffusion) step adds an excess variance
    Delta^2 / (v + sigma_i^2) per step (Delta = sigma_i^2 - sigma_(i-1)^2, exact for Gaussian data),
    which at the default step leaves the 0.05-variance coordinate 6% too wide (measured); a quarter
    of the step cuts that 16-fold. VP/subVP run at the default 1e-3 (their error is below 1%)."""
    model = GaussianDataModel(MEAN, VAR, sde)
    t0 = default_t_max(sde)
    n = 20_000
    x_t0 = model.sample(n, t0, generator=torch.Generator().manual_seed(0))
    eps = hybrid_defaults(sde)["eps"]
    step = 2.5e-4 if isinstance(sde, VESDE) else 1e-3
    x = reverse_from(model.score, sde, x_t0, t0=t0, step_size=step, generator=torch.Generator().manual_seed(1))
    c = sde.marginal_coefs(torch.tensor([eps], dtype=F64))
    mean_eps, var_eps = c.mean_coef * MEAN, c.mean_coef**2 * VAR + c.std**2
    assert torch.all((x.mean(0) - mean_eps).abs() < 5 * (var_eps / n).sqrt()), (x.mean(0), mean_eps)
    assert torch.allclose(x.var(0), var_eps, rtol=0.06), (x.var(0), var_eps)


def test_a_flipped_score_is_caught():
    """The same check fails for a sampler driven by the negated score (the test can fail)."""
    sde = VPSDE()
    model = GaussianDataModel(MEAN, VAR, sde)
    x_t0 = model.sample(4000, 0.1, generator=torch.Generator().manual_seed(0))
    x = reverse_from(lambda y, t: -model.score(y, t), sde, x_t0, t0=0.1, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(x.var(0), VAR, rtol=0.06)


def test_bad_solver_settings_fail_before_sampling():
    sde = VPSDE()
    model = GaussianDataModel(MEAN, VAR, sde)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="eps must lie"):
        reverse_from(model.score, sde, x, t0=0.1, eps=0.2)
    with pytest.raises(ValueError, match="step_size"):
        reverse_from(model.score, sde, x, t0=0.1, step_size=0.0)
