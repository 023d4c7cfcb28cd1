"""MLE and NCML objectives ("Noise-conditional Maximum Likelihood Estimation with Score-based
Sampling", NeurIPS 2022 Workshop on Score-Based Methods, anonymous submission).

Ground truth: for Gaussian data and the exact GaussianDataModel every term of the NCML objective
is a closed form (an entropy or a Gaussian cross-entropy); the average over t ~ U(0, t_max] is a
1-D integral computed here by scipy quadrature. The objective's Monte-Carlo average over many
batches must match it within 5 standard errors (estimated from the batch losses).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

from hybrids.models.analytic import GaussianDataModel
from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp
from hybrids.objectives import MLE, NCML
from hybrids.objectives.ncml import PAPER_T_MAX, default_t_max, pixel_std_of, t_for_pixel_std
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

SDES = [VESDE, VPSDE, SubVPSDE]
MU = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
VAR = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)


def _marginal(sde, t: float) -> tuple[float, float]:
    c = sde.marginal_coefs(torch.tensor([t], dtype=torch.float64))
    return float(c.mean_coef), float(c.std)


def _gauss_ce(model_mean, model_var, second_moment_about_mean) -> float:
    """E[-log N(x; M, V)] summed over dims, given E[(x - M)^2] per dim."""
    return float(sum(0.5 * math.log(2 * math.pi * V) + s / (2 * V)
                     for V, s in zip(model_var, second_moment_about_mean)))


def _mc_mean(objective, model, data_fn, n_batches: int, seed: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    losses = torch.tensor([float(objective(model, data_fn(g), generator=g)[0]) for _ in range(n_batches)])
    return float(losses.mean()), float(losses.std() / math.sqrt(n_batches))


@pytest.mark.parametrize("sde_cls", SDES)
@pytest.mark.parametrize("p_zero", [0.0, 0.3, 1.0])
def test_ncml_continuous_matches_closed_form(sde_cls, p_zero):
    sde = sde_cls()
    model = GaussianDataModel(MU, VAR, sde)
    obj = NCML(sde, p_zero=p_zero, num_levels=None)
    D = MU.numel()

    def expected_noisy(t):  # x_t ~ p_t exactly, scored by p_t: the entropy of p_t
        m, s = _marginal(sde, t)
        V = [m**2 * v + s**2 for v in VAR.tolist()]
        return _gauss_ce(V, V, V)

    m0, s0 = _marginal(sde, 0.0)
    V0 = [m0**2 * v + s0**2 for v in VAR.tolist()]
    # Clean data have variance v; the model's p_0 has v + sigma(0)^2 (VE convention): cross-entropy.
    clean = _gauss_ce(V0, V0, VAR.tolist())
    noisy = integrate.quad(expected_noisy, 0.0, obj.t_max, limit=200)[0] / obj.t_max
    expected = (p_zero * clean + (1 - p_zero) * noisy) / (D * math.log(2))

    def data_fn(g):
        return MU + VAR.sqrt() * torch.randn(256, D, generator=g, dtype=torch.float64)

    mean, se = _mc_mean(obj, model, data_fn, 200, seed=1)
    assert abs(mean - expected) <= 5 * se + 1e-12, (mean, expected, se)


class _GaussianWithPmf(GaussianDataModel):
    """Gaussian p_t for t > 0 and a fixed per-dimension pmf softmax(w) for integer data at t = 0."""

    def __init__(self, mean, var, sde, logits):
        super().__init__(mean, var, sde)
        self.register_buffer("logits", logits)

    def discrete_log_prob(self, k):
        return torch.log_softmax(self.logits, 0)[k].sum(1)


@pytest.mark.parametrize("sde_cls", SDES)
def test_ncml_integer_data_dequantizes_and_matches_closed_form(sde_cls):
    """k uniform on {0..K-1}: x_0 = 2(k+u)/K - 1 is uniform on [-1, 1] (mean 0, var 1/3)."""
    K, D = 17, 3
    sde = sde_cls()
    logits = torch.linspace(-1.0, 1.0, K, dtype=torch.float64)
    model = _GaussianWithPmf(MU, VAR, sde, logits)
    obj = NCML(sde, p_zero=0.4, num_levels=K)

    def expected_noisy(t):
        m, s = _marginal(sde, t)
        M = [m * mu for mu in MU.tolist()]
        V = [m**2 * v + s**2 for v in VAR.tolist()]
        second = [m**2 / 3 + s**2 + Mi**2 for Mi in M]  # E[(m x0 + s z - M)^2], x0 ~ U[-1, 1]
        return _gauss_ce(M, V, second)

    clean = -float(torch.log_softmax(logits, 0).mean()) * D
    noisy = integrate.quad(expected_noisy, 0.0, obj.t_max, limit=200)[0] / obj.t_max
    expected = (0.4 * clean + 0.6 * noisy) / (D * math.log(2))

    def data_fn(g):
        return torch.randint(0, K, (256, D), generator=g)

    mean, se = _mc_mean(obj, model, data_fn, 200, seed=2)
    assert abs(mean - expected) <= 5 * se, (mean, expected, se)


def test_ncml_wrong_dequantization_would_fail():
    """Scoring [0, 1]-scaled data instead of [-1, 1] moves the expectation far outside the tolerance."""
    K, D = 17, 3
    sde = VPSDE()
    model = _GaussianWithPmf(MU, VAR, sde, torch.zeros(K, dtype=torch.float64))
    right = NCML(sde, p_zero=0.0, num_levels=K)
    wrong = NCML(sde, p_zero=0.0, num_levels=None)  # fed (k + u) / K in [0, 1]
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, K, (4096, D), generator=g)
    y = (k + torch.rand(k.shape, generator=g, dtype=torch.float64)) / K
    a = float(right(model, k, generator=torch.Generator().manual_seed(1))[0])
    b = float(wrong(model, y, generator=torch.Generator().manual_seed(1))[0])
    assert abs(a - b) > 0.05


@settings(max_examples=10, deadline=None)
@given(p_zero=st.floats(0.05, 0.95), seed=st.integers(0, 1000), sde_idx=st.integers(0, 2))
def test_sample_t_distribution(p_zero, seed, sde_idx):
    sde = SDES[sde_idx]()
    obj = NCML(sde, p_zero=p_zero)
    n = 4000
    t = obj.sample_t(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    zero = t == 0
    assert abs(float(zero.double().mean()) - p_zero) <= 5 * math.sqrt(p_zero * (1 - p_zero) / n)
    pos = t[~zero]
    assert bool((pos > 0).all() and (pos <= obj.t_max).all())
    assert stats.kstest(pos.numpy() / obj.t_max, "uniform").pvalue > 1e-4


def _tiny_pixelcnn(cls=PixelCNNpp, **kw):
    torch.manual_seed(0)
    return cls((1, 4, 4), num_levels=17, nr_filters=8, nr_resnet=1, nr_logistic_mix=2, dropout=0.0, **kw).double()


def test_mle_equals_discrete_bits_per_dim_and_ncml_p_zero_one():
    model = _tiny_pixelcnn()
    k = torch.randint(0, 17, (5, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    loss, metrics = MLE(num_levels=17)(model, (k, torch.zeros(5)))
    expected = -model.discrete_log_prob(k) / (16 * math.log(2))
    assert torch.allclose(loss, expected.mean())
    assert metrics["bpd"] == pytest.approx(float(expected.detach().mean()))
    assert metrics["nll_nats"] == pytest.approx(float(-model.discrete_log_prob(k).detach().mean()))
    ncml_loss, m = NCML(VPSDE(), p_zero=1.0, num_levels=17)(model, k)
    assert torch.allclose(ncml_loss, loss)
    assert m["frac_t0"] == 1.0 and math.isnan(m["nll_per_dim_noisy"])


def test_mle_continuous_uses_log_prob_at_zero():
    model = GaussianDataModel(MU, VAR, VPSDE())
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    loss, _ = MLE(num_levels=None)(model, [x])
    assert torch.allclose(loss, -model.log_prob(x, torch.zeros(7, dtype=torch.float64)).mean() / (3 * math.log(2)))


def test_ncml_gradients_reach_parameters_in_both_parts():
    model = _tiny_pixelcnn(NCPN, sde=VPSDE())
    k = torch.randint(0, 17, (8, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    loss, metrics = NCML(VPSDE(), p_zero=0.5, num_levels=17)(model, k, generator=torch.Generator().manual_seed(3))
    assert 0 < metrics["frac_t0"] < 1 and math.isfinite(metrics["bpd_t0"]) and math.isfinite(metrics["nll_per_dim_noisy"])
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# --- noise levels -----------------------------------------------------------------------------

@pytest.mark.parametrize("sde_cls,t_paper,std_paper", [(VESDE, 0.5, 0.707), (VPSDE, 0.1, 0.322), (SubVPSDE, 0.025, 0.0087)])
def test_paper_defaults_and_their_stds(sde_cls, t_paper, std_paper):
    """The marginal stds sigma(t_max) of the SDE formulas, in [-1, 1] units."""
    sde = sde_cls()
    assert default_t_max(sde) == t_paper == NCML(sde).t_max
    std = float(pixel_std_of(sde, t_paper, num_levels=3))  # (K - 1)/2 = 1: std in [-1, 1] units
    assert std == pytest.approx(std_paper, rel=0.01)


@pytest.mark.parametrize("sde_cls,t_expected", [(VESDE, 0.242), (VPSDE, 0.0204), (SubVPSDE, 0.0857)])
def test_t_for_ten_levels(sde_cls, t_expected):
    sde = sde_cls()
    t = t_for_pixel_std(sde, 10.0, num_levels=256)
    assert t == pytest.approx(t_expected, rel=0.005)
    assert float(pixel_std_of(sde, t, 256)) == pytest.approx(10.0, rel=1e-9)


@settings(max_examples=20, deadline=None)
@given(levels=st.floats(1.0, 60.0), sde_idx=st.integers(0, 2), num_levels=st.sampled_from([17, 256]))
def test_t_for_pixel_std_inverts_pixel_std_of(levels, sde_idx, num_levels):
    sde = SDES[sde_idx]()
    levels = min(levels, 0.45 * (num_levels - 1))  # stays below std 0.9 (VP/subVP stds are < 1)
    if isinstance(sde, VESDE):
        levels = max(levels, 0.011 * (num_levels - 1) / 2 * 2)  # above sigma_min
    t = t_for_pixel_std(sde, levels, num_levels)
    assert float(pixel_std_of(sde, t, num_levels)) == pytest.approx(levels, rel=1e-9)


def test_noise_level_errors():
    with pytest.raises(ValueError, match="positive"):
        t_for_pixel_std(VPSDE(), 0.0)
    with pytest.raises(ValueError, match="VPSDE marginal stds"):
        t_for_pixel_std(VPSDE(), 200.0)  # std > 1 is unreachable for VP
    with pytest.raises(ValueError, match="num_levels"):
        pixel_std_of(VPSDE(), 0.1, num_levels=1)

    class OtherSDE(VPSDE):
        pass

    with pytest.raises(TypeError, match="No paper T_ncml"):
        default_t_max(OtherSDE())
    assert set(PAPER_T_MAX) == {VESDE, VPSDE, SubVPSDE}


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(p_zero=1.5), ValueError, "p_zero"),
        (dict(t_max=0.0), ValueError, "t_max"),
        (dict(t_max=2.0), ValueError, "t_max"),
        (dict(num_levels=1), ValueError, "num_levels"),
    ],
)
def test_ncml_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        NCML(VPSDE(), **kwargs)
    with pytest.raises(TypeError, match="SDE"):
        NCML("vp")


def test_batch_errors():
    model = _tiny_pixelcnn()
    with pytest.raises(TypeError, match="integer levels"):
        MLE(num_levels=17)(model, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="out of range"):
        MLE(num_levels=17)(model, torch.full((2, 1, 4, 4), 17))
    with pytest.raises(TypeError, match="continuous data"):
        NCML(VPSDE(), num_levels=None)(model, torch.zeros(2, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch dimension"):
        MLE(num_levels=17)(model, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="first item"):
        MLE(num_levels=17)(model, ["not a tensor"])


# --- runner hooks and gin files (hybrids.hooks) ---------------------------------------------------

def _digits_like(n=6):
    from hybrids.data import ArrayDataset

    k = torch.randint(0, 17, (n, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    return ArrayDataset(name="digits", data=k, labels=None, num_levels=17)


def test_pi_eval_at_zero_is_the_discrete_bpd_and_reports_degradation():
    from hybrids.hooks import pi_perturbation_eval

    model = _tiny_pixelcnn().eval()
    data = _digits_like()
    out = pi_perturbation_eval(model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                       num_examples=4, batch_size=3)
    direct = float((-model.discrete_log_prob(data.data[:4]).detach() / (16 * math.log(2))).mean())
    assert out["bpd"]["0.0"] == pytest.approx(direct, rel=1e-12)
    assert out["num_examples"] == 4
    assert out["degradation"] == pytest.approx(out["bpd"]["1.0"] - out["bpd"]["0.0"])
    assert out["bpd"]["1.0"] != out["bpd"]["0.0"]  # every level moved


@pytest.mark.parametrize("sde_cls", SDES)
def test_samplers_return_levels(sde_cls):
    from hybrids.hooks import ancestral_sampler, hybrid_sampler
    from hybrids.samplers.hybrid import hybrid_defaults

    model = _tiny_pixelcnn(NCPN, sde=sde_cls()).eval()
    data = _digits_like()
    kw = dict(device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), num_samples=2)
    for out in [ancestral_sampler(model, data, **kw), hybrid_sampler(model, data, step_size=0.01, **kw)]:
        levels = out["samples"]
        assert levels.dtype == torch.int64 and levels.shape == (2, 1, 4, 4)
        assert int(levels.min()) >= 0 and int(levels.max()) <= 16
    assert hybrid_defaults(VESDE())["corrector"] == "langevin"
    assert hybrid_defaults(VPSDE())["predictor"] == "euler_maruyama"
    with pytest.raises(ValueError, match="t0"):
        hybrid_sampler(model, data, t0=0.9, **kw)


@pytest.mark.parametrize("row", ["pixelcnnpp_mle.gin", "ncml_ve.gin", "ncml_vp.gin", "ncml_subvp.gin"])
def test_gin_rows_build_with_cpu_presets(row):
    import gin

    from experiments.runner import experiment, parse_gin

    parse_gin([row, "presets/cpu_small.gin"])
    exp = experiment()
    assert exp.model.image_shape == (1, 8, 8) and exp.objective.num_levels == 17
    if row != "pixelcnnpp_mle.gin":
        assert isinstance(exp.objective, NCML) and type(exp.objective.sde) is type(exp.model.sde)
        assert exp.objective.t_max == default_t_max(exp.objective.sde)
    gin.clear_config()
