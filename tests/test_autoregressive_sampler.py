"""Ancestral sampling of logistic-mixture AR models (hybrids.samplers.autoregressive).

* fast and naive give identical discrete samples (and continuous ones equal to rounding) for the
  same generator, on tiny PixelCNN++ and NCPN (with attention) in float64, and bitwise identical
  discrete samples in float32;
* each pixel draws only its own uniforms (the per-pixel samplers' B + B C) from one stream;
* fast evaluates PixelCNN++ / NCPN through the per-pixel cache (no full pass, every position
  once), other AncestralMixtureModels through full passes that it skips when no input changed;
* with known conditionals the sample frequencies match the model's pmf (chi-square tests).
"""
from __future__ import annotations


import pytest
import torch
from scipy import stats
from torch import nn

from hybrids.distributions import (
    discretized_logistic_mixture_log_prob,
    num_mixture_params,
    sample_discretized_logistic_mixture_pixel,
    sample_logistic_mixture_pixel,
)
from hybrids.models.base import AncestralMixtureModel
from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp
from hybrids.models.pixelcnnpp_incremental import STAGES, IncrementalPixelCNN
from hybrids.samplers.autoregressive import ancestral_sample
from hybrids.sdes import VESDE, VPSDE

K = 17


def _models():
    torch.manual_seed(0)
    small = dict(num_levels=K, nr_filters=8, nr_resnet=1, nr_logistic_mix=3, dropout=0.0)
    return [
        PixelCNNpp((1, 7, 5), **small).double().eval(),
        NCPN((3, 6, 6), sde=VESDE(), **small).double().eval(),
        NCPN((1, 5, 9), sde=VPSDE(), attention=("down",), **small).double().eval(),
        NCPN((1, 8, 8), sde=VPSDE(), attention=("up", "down"), **small).double().eval(),
    ]


MODELS = _models()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{type(m).__name__}{m.image_shape}")
@pytest.mark.parametrize("t", [None, 0.02])
def test_fast_equals_naive(model, t):
    """float64: the per-pixel cache's params equal the full pass to ~1e-15, so discrete samples
    are identical and continuous ones equal to 1e-10, and both methods leave the generator in
    the same state. Catches any cache error that changes a param by more than rounding, and
    draws that differ between the methods (order, count, or pixel)."""
    shape = (3,) + model.image_shape
    g_naive = torch.Generator().manual_seed(5)
    g_fast = torch.Generator().manual_seed(5)
    naive = ancestral_sample(model, shape, t=t, generator=g_naive, method="naive")
    fast = ancestral_sample(model, shape, t=t, generator=g_fast, method="fast")
    assert torch.equal(g_naive.get_state(), g_fast.get_state())
    if t is None:
        assert naive.dtype == torch.int64 and naive.shape == shape
        assert int(naive.min()) >= 0 and int(naive.max()) <= K - 1
        assert torch.equal(naive, fast)
    else:
        assert naive.dtype == torch.float64
        assert torch.allclose(naive, fast, rtol=0, atol=1e-10)
    again = ancestral_sample(model, shape, t=t, generator=torch.Generator().manual_seed(5), method="fast")
    assert torch.equal(again, fast)


@pytest.mark.parametrize("kind", ["pixelcnnpp", "ncpn"])
@pytest.mark.parametrize("t", [None, 0.05])
def test_fast_equals_naive_in_float32(kind, t):
    """float32, 12x12, 256 levels: the cache's GEMMs and the full pass's convolutions round
    differently (~1e-6 on the params), far below what moves a draw across a bin edge except
    with tiny probability, so discrete samples are bitwise identical and continuous ones agree
    to float32 rounding. Catches float32-only errors (dtype mix-ups, a float64 buffer) and any
    cache error the float64 tests would miss on this architecture (PixelCNN++; NCPN with both
    attention blocks)."""
    torch.manual_seed(3)
    kw = dict(num_levels=256, nr_filters=16, nr_resnet=1, nr_logistic_mix=5, dropout=0.0)
    model = (PixelCNNpp((1, 12, 12), **kw) if kind == "pixelcnnpp"
             else NCPN((1, 12, 12), sde=VPSDE(), attention=("up", "down"), **kw)).eval()
    shape = (2,) + model.image_shape
    naive = ancestral_sample(model, shape, t=t, generator=torch.Generator().manual_seed(1), method="naive")
    fast = ancestral_sample(model, shape, t=t, generator=torch.Generator().manual_seed(1), method="fast")
    if t is None:
        assert torch.equal(naive, fast) and len(naive.unique()) > 10
    else:
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast, naive, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["fast", "naive"])
@pytest.mark.parametrize("t", [None, 0.1])
def test_each_pixel_draws_only_its_own_uniforms(method, t):
    """Pixel j's draw is the per-pixel sampler's on pixel j's params, from one stream in raster
    order: replaying the stream pixel by pixel gives the same sample, and the generator ends
    H W (B + B C) float64 uniforms past its start. Catches a draw of a whole image per pixel
    (O(D) per pixel, another stream), a generator state restored before each pixel, and a
    different draw order between the methods."""
    g = torch.Generator().manual_seed(0)
    c, height, width, b = 3, 2, 3, 4
    params = torch.randn(1, num_mixture_params(c, 2), height, width, generator=g, dtype=torch.float64)
    model = FixedParams(params)
    shape = (b, c, height, width)
    gen = torch.Generator().manual_seed(7)
    sample = ancestral_sample(model, shape, t=t, num_levels=K, generator=gen, method=method)
    replay = torch.Generator().manual_seed(7)
    for r in range(height):
        for col in range(width):
            pixel = params[:, :, r, col].expand(b, -1)
            if t is None:
                expected = sample_discretized_logistic_mixture_pixel(pixel, K, replay, num_channels=c)
            else:
                expected = sample_logistic_mixture_pixel(pixel, replay, num_channels=c)
            assert torch.equal(sample[:, :, r, col], expected)
    assert torch.equal(gen.get_state(), replay.get_state())
    count = torch.Generator().manual_seed(7)
    torch.rand(height * width * (b + b * c), generator=count, dtype=torch.float64)
    assert torch.equal(gen.get_state(), count.get_state())


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{type(m).__name__}{m.image_shape}")
def test_fast_uses_the_pixel_cache(model, monkeypatch):
    """PixelCNN++ / NCPN in eval mode: no full forward pass, and every position of every stage
    is computed once (ul: one position per pixel at full resolution; u: one row per image row).
    Catches a fallback to full passes or row bands, and recomputation."""
    evaluators = []
    original = IncrementalPixelCNN.reset

    def reset(self, x, t=None):
        evaluators.append(self)
        return original(self, x, t)

    def no_full_pass(*args, **kwargs):
        raise AssertionError("fast ran a full forward pass")

    monkeypatch.setattr(IncrementalPixelCNN, "reset", reset)
    monkeypatch.setattr(model, "forward", no_full_pass)
    ancestral_sample(model, (2,) + model.image_shape, t=0.02, generator=torch.Generator().manual_seed(0))
    (evaluator,) = evaluators
    areas = [h * w for h, w in evaluator.sizes]
    assert evaluator.positions_computed == {s: areas[int(s.split(".")[0][-1])] for s in STAGES}


def test_fast_in_train_mode_runs_full_passes(monkeypatch):
    """The cache needs eval mode (dropout); in train mode fast runs full passes, skipping
    those after a sampled value equal to the placeholder."""
    torch.manual_seed(0)
    model = PixelCNNpp((1, 3, 4), num_levels=3, nr_filters=4, nr_resnet=1, nr_logistic_mix=2,
                       dropout=0.0).double().train()
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    fast = ancestral_sample(model, (2, 1, 3, 4), generator=torch.Generator().manual_seed(4))
    n_fast, calls[:] = len(calls), []
    naive = ancestral_sample(model, (2, 1, 3, 4), generator=torch.Generator().manual_seed(4), method="naive")
    assert torch.equal(fast, naive)
    assert len(calls) == 12
    # One pass for the first pixel, then one after each pixel whose level is not 0 (except the last).
    changed = (naive.flatten(1) != 0).any(dim=0)[:-1]
    assert n_fast == 1 + int(changed.sum())


class FixedParams(AncestralMixtureModel):
    """Params that ignore the input: pixels are independent with a known pmf each."""

    def __init__(self, params: torch.Tensor):
        super().__init__()
        self.params = nn.Parameter(params)
        self.calls = 0

    def forward(self, x, t=None):
        self.calls += 1
        return self.params.expand(x.shape[0], -1, -1, -1)


class PreviousPixelMean(AncestralMixtureModel):
    """1 x 1 x 2 images, one logistic: pixel 0 ~ mean 0; pixel 1 has mean x_0 (fed-back centre)."""

    def __init__(self, log_scale: float):
        super().__init__()
        self.log_scale = log_scale
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t=None):
        b = x.shape[0]
        params = torch.zeros(b, num_mixture_params(1, 1), 1, 2, dtype=x.dtype)
        params[:, 1, 0, 1] = x[:, 0, 0, 0]  # mean of pixel 1 = value of pixel 0
        params[:, 2] = self.log_scale
        return params


def _pixel_pmf(params: torch.Tensor, num_levels: int, pixel: tuple[int, int]) -> torch.Tensor:
    """P(k), k = 0..K-1, at one pixel, from the library's discretized log-pmf."""
    sub = params[:, :, pixel[0] : pixel[0] + 1, pixel[1] : pixel[1] + 1]
    levels = torch.arange(num_levels).view(-1, 1, 1, 1)
    return torch.exp(discretized_logistic_mixture_log_prob(sub.expand(num_levels, -1, -1, -1), levels, num_levels))


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = float(counts.sum())
    keep = probs * n >= 5  # pool rare cells so the chi-square approximation holds
    obs = torch.cat([counts[keep], counts[~keep].sum().view(1)]).double()
    exp = torch.cat([probs[keep], probs[~keep].sum().view(1)]).double() * n
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_independent_pixels_have_model_marginals(method):
    num_levels, nr_mix = 6, 2
    g = torch.Generator().manual_seed(0)
    params = torch.randn(1, num_mixture_params(1, nr_mix), 2, 2, generator=g, dtype=torch.float64)
    params[:, nr_mix : 2 * nr_mix] *= 0.6  # means inside [-1, 1]
    params[:, 2 * nr_mix :] = params[:, 2 * nr_mix :] * 0.3 - 1.0  # log scales
    model = FixedParams(params)
    n = 3000
    k = ancestral_sample(model, (n, 1, 2, 2), num_levels=num_levels, generator=g, method=method)
    for i in range(2):
        for j in range(2):
            counts = torch.bincount(k[:, 0, i, j], minlength=num_levels)
            probs = _pixel_pmf(params, num_levels, (i, j))
            assert abs(float(probs.sum()) - 1) < 1e-9
            assert _chi2_pvalue(counts, probs) > 1e-4


def test_conditionals_use_fed_back_bin_centres():
    num_levels = 5
    model = PreviousPixelMean(log_scale=-1.5)
    n = 4000
    k = ancestral_sample(model, (n, 1, 1, 2), num_levels=num_levels, generator=torch.Generator().manual_seed(2))
    centres = 2.0 * torch.arange(num_levels, dtype=torch.float64) / (num_levels - 1) - 1.0
    base = torch.zeros(1, num_mixture_params(1, 1), 1, 1, dtype=torch.float64)
    base[:, 2] = -1.5
    p0 = _pixel_pmf(base, num_levels, (0, 0))
    joint = torch.zeros(num_levels, num_levels, dtype=torch.float64)
    for a in range(num_levels):
        cond = base.clone()
        cond[:, 1] = centres[a]
        joint[a] = p0[a] * _pixel_pmf(cond, num_levels, (0, 0))
    counts = torch.bincount(k[:, 0, 0, 0] * num_levels + k[:, 0, 0, 1], minlength=num_levels**2)
    assert _chi2_pvalue(counts, joint.flatten()) > 1e-4
    # A sampler that ignored the fed-back value (pixel 1 ~ p0) would fail the same test.
    wrong = (p0[:, None] * p0[None, :]).flatten()
    assert _chi2_pvalue(counts, wrong) < 1e-6


def test_fast_reuses_params_when_inputs_do_not_change():
    """All mass on level 0 (= the placeholder's level): fast needs 1 pass, naive one per pixel."""
    params = torch.zeros(1, num_mixture_params(1, 1), 3, 4, dtype=torch.float64)
    params[:, 1] = -30.0  # mean far below the first bin: P(k = 0) = 1
    fast_model, naive_model = FixedParams(params), FixedParams(params)
    a = ancestral_sample(fast_model, (2, 1, 3, 4), num_levels=K, generator=torch.Generator().manual_seed(0))
    b = ancestral_sample(naive_model, (2, 1, 3, 4), num_levels=K, generator=torch.Generator().manual_seed(0),
                         method="naive")
    assert torch.equal(a, b) and int(a.max()) == 0
    assert fast_model.calls == 1 and naive_model.calls == 12


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(method="slow"), ValueError, "Unknown method"),
        (dict(shape=(2, 8, 8)), ValueError, "shape"),
        (dict(t=-0.1), ValueError, "t must be"),
    ],
)
def test_bad_inputs(kwargs, exc, match):
    args = dict(shape=(2,) + MODELS[0].image_shape)
    args.update(kwargs)
    shape = args.pop("shape")
    with pytest.raises(exc, match=match):
        ancestral_sample(MODELS[0], shape, **args)


def test_discrete_needs_num_levels():
    model = FixedParams(torch.zeros(1, num_mixture_params(1, 1), 2, 2))
    with pytest.raises(ValueError, match="num_levels"):
        ancestral_sample(model, (1, 1, 2, 2))
    model.num_levels = 4  # the declared attribute is the default K
    k = ancestral_sample(model, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert k.dtype == torch.int64 and int(k.max()) <= 3


def test_models_without_the_declared_contract_are_rejected():
    class Plain(nn.Module):
        def forward(self, x, t=None):
            return torch.zeros(x.shape[0], num_mixture_params(1, 1), *x.shape[2:])

    with pytest.raises(TypeError, match="needs an AncestralMixtureModel.*got Plain"):
        ancestral_sample(Plain(), (1, 1, 2, 2), num_levels=4)
