"""The declared model side contracts of hybrids.models.base.

* ``ARConditionalScoreModel``: MADE and PixelCNN++ AR-CSMs declare it; a minimal subclass
  (``context`` and ``head`` only) gets ``conditional_scores``, the default variable order and
  per-dimension Langevin sampling; ``ar_langevin_sample`` rejects anything else by type.
* ``AncestralMixtureModel``: PixelCNN++ and NCPN declare it and hand out their row cache through
  ``incremental_cache()`` in eval mode; ``ancestral_sample`` samples any subclass, uses whatever
  cache it offers, and rejects anything else by type.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from hybrids.distributions import num_mixture_params
from hybrids.models import (
    MADEConditionalScore,
    MADEDensity,
    NCPN,
    PixelCNNConditionalScore,
    PixelCNNpp,
)
from hybrids.models.base import (
    AncestralMixtureModel,
    ARConditionalScoreModel,
    IncrementalCache,
    NoiseConditionalModel,
)
from hybrids.models.pixelcnnpp_incremental import IncrementalPixelCNN
from hybrids.samplers import ancestral_sample, ar_langevin_sample
from hybrids.sdes import VPSDE

K = 5
SMALL = dict(num_levels=K, nr_filters=4, nr_resnet=1, nr_logistic_mix=2, dropout=0.0)


def _pixelcnn(seed: int = 0) -> PixelCNNpp:
    torch.manual_seed(seed)
    return PixelCNNpp((1, 3, 4), **SMALL).double().eval()


def test_concrete_models_declare_their_contracts():
    made_csm = MADEConditionalScore(4, hidden=(8,), context_features=2, head_hidden=(4,))
    torch.manual_seed(0)
    pixel_csm = PixelCNNConditionalScore((1, 2, 2), head_hidden=(4,), backbone_kwargs=SMALL)
    for model in (made_csm, pixel_csm):
        assert isinstance(model, ARConditionalScoreModel)
        assert not isinstance(model, AncestralMixtureModel)
    mixtures = [PixelCNNpp((1, 2, 2), **SMALL), NCPN((1, 2, 2), sde=VPSDE(), **SMALL)]
    for model in mixtures:
        assert isinstance(model, AncestralMixtureModel) and model.num_levels == K
        assert not isinstance(model, ARConditionalScoreModel)
    density = MADEDensity(4, hidden=(8,))
    assert isinstance(density, NoiseConditionalModel)
    assert not isinstance(density, (ARConditionalScoreModel, AncestralMixtureModel))


def test_pixelcnn_incremental_cache_in_eval_mode_only():
    model = _pixelcnn()
    cache = model.incremental_cache()
    assert type(cache) is IncrementalPixelCNN and isinstance(cache, IncrementalCache)
    assert model.incremental_cache() is not cache  # a fresh evaluator per call
    x = torch.rand(2, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cache.reset(x)
    torch.testing.assert_close(cache.params(), model(x), rtol=0, atol=1e-12)
    model.train()
    assert model.incremental_cache() is None
    assert AncestralMixtureModel().incremental_cache() is None  # the default: no cache


class LinearGaussianAR(ARConditionalScoreModel):
    """Only context and head: x_d | x_<d ~ N(m_d + (A x)_d, v_d), A strictly lower triangular."""

    def __init__(self, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(
            torch.tril(torch.randn(dim, dim, generator=g, dtype=torch.float64), -1) * 0.5)
        self.m = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))
        self.v = 0.5 + torch.rand(dim, generator=g, dtype=torch.float64)

    def context(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        mean = self.m + x @ torch.tril(self.A, -1).T
        return torch.stack([mean, self.v.expand_as(mean)], dim=-1)

    def head(self, x_d: Tensor, c: Tensor, t: Tensor | None = None) -> Tensor:
        return -(x_d - c[..., 0]) / c[..., 1]


def test_minimal_ar_subclass_gets_conditional_scores_order_and_sampling():
    model = LinearGaussianAR(6)
    x = torch.randn(3, 1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x_seq = model.to_sequence(x)
    assert x_seq.shape == (3, 6) and torch.equal(x_seq, x.reshape(3, 6))  # raster order
    assert torch.equal(model.from_sequence(x_seq, x.shape), x)
    assert torch.equal(model.from_sequence(x_seq), x_seq)
    s, ds = model.conditional_scores(x)
    exact = -(x_seq - model.m - x_seq @ torch.tril(model.A, -1).T) / model.v
    assert s.shape == x.shape and ds.shape == x.shape
    torch.testing.assert_close(s.reshape(3, 6), exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ds.reshape(3, 6), (-1 / model.v).expand(3, 6), rtol=1e-12, atol=0)
    assert ds.requires_grad  # grad mode on: the graph is kept for training
    with pytest.raises(NotImplementedError, match="normalisers.*conditional_scores"):
        model.score(x, torch.zeros(3))
    out = ar_langevin_sample(model, (4, 1, 2, 3), n_steps=2, step_size=0.01,
                             generator=torch.Generator().manual_seed(3))
    assert out.shape == (4, 1, 2, 3) and out.dtype == torch.float64


def test_unimplemented_contract_methods_name_the_class():
    class Empty(ARConditionalScoreModel):
        pass

    with pytest.raises(NotImplementedError, match="Empty must implement context"):
        Empty().conditional_scores(torch.zeros(2, 3))
    with pytest.raises(NotImplementedError, match="ARConditionalScoreModel"):
        MADEDensity(3, hidden=(4,)).conditional_scores(torch.zeros(2, 3), None)


def test_samplers_reject_models_of_the_other_contract_by_type():
    with pytest.raises(TypeError, match="needs an ARConditionalScoreModel.*got MADEDensity"):
        ar_langevin_sample(MADEDensity(4, hidden=(8,)), (2, 4), n_steps=1, step_size=0.1)
    with pytest.raises(TypeError, match="needs an ARConditionalScoreModel.*got PixelCNNpp"):
        ar_langevin_sample(_pixelcnn(), (2, 1, 3, 4), n_steps=1, step_size=0.1)
    with pytest.raises(TypeError, match="needs an AncestralMixtureModel.*got MADEConditionalScore"):
        ancestral_sample(MADEConditionalScore(4, hidden=(8,)), (2, 1, 2, 2), num_levels=K)


class CausalToy(AncestralMixtureModel):
    """Not a PixelCNN: 1 x H x W images, one logistic per pixel with mean 0.8 x (previous pixel in
    raster order) and log scale -1.5; ``num_levels`` declared."""

    num_levels = K

    def __init__(self, cache_cls=None):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.cache_cls = cache_cls
        self.caches: list = []
        self.forward_calls = 0

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        self.forward_calls += 1
        b, _, h, w = x.shape
        flat = x.reshape(b, h * w)
        previous = torch.cat([torch.zeros_like(flat[:, :1]), flat[:, :-1]], dim=1)
        params = torch.zeros(b, num_mixture_params(1, 1), h * w, dtype=x.dtype)
        params[:, 1] = 0.8 * previous
        params[:, 2] = -1.5
        return params.reshape(b, -1, h, w)

    def incremental_cache(self):
        if self.cache_cls is None:
            return None
        self.caches.append(self.cache_cls(self))
        return self.caches[-1]


class RecomputingCache:
    """The IncrementalCache interface the simple way: a full pass per params() after a change."""

    def __init__(self, model: CausalToy):
        self.model, self.calls = model, {"reset": 0, "params": 0, "set_pixel": 0}

    def reset(self, x, t=None):
        self.calls["reset"] += 1
        self.x, self.t, self.current = x.clone(), t, None

    def params(self, up_to_row=None):
        self.calls["params"] += 1
        if self.current is None:
            self.current = self.model(self.x, self.t)
        return self.current

    def set_pixel(self, row, col, value):
        self.calls["set_pixel"] += 1
        self.x[:, :, row, col] = value
        self.current = None


@pytest.mark.parametrize("t", [None, 0.1])
def test_ancestral_sample_on_a_toy_mixture_model_with_and_without_a_cache(t):
    shape = (64, 1, 2, 3)
    naive = ancestral_sample(CausalToy(), shape, t=t, generator=torch.Generator().manual_seed(4),
                             method="naive")
    no_cache = CausalToy()
    fast = ancestral_sample(no_cache, shape, t=t, generator=torch.Generator().manual_seed(4))
    cached_model = CausalToy(RecomputingCache)
    cached = ancestral_sample(cached_model, shape, t=t, generator=torch.Generator().manual_seed(4))
    assert torch.equal(naive, fast) and torch.equal(naive, cached)
    assert naive.dtype == (torch.int64 if t is None else torch.float64)
    if t is None:
        assert int(naive.min()) >= 0 and int(naive.max()) <= K - 1 and len(naive.unique()) > 1
    (cache,) = cached_model.caches
    assert cache.calls["reset"] == 1 and cache.calls["params"] == 6
    # A pixel "changes" when its value differs from the placeholder (level 0 / value 0) somewhere
    # in the batch: the cache hears of every change, full passes follow all but the last one.
    changed = (naive != 0).flatten(1).any(dim=0)
    assert cache.calls["set_pixel"] == int(changed.sum())
    assert no_cache.forward_calls == 1 + int(changed[:-1].sum())
    naive_cached = CausalToy(RecomputingCache)
    ancestral_sample(naive_cached, shape, t=t, generator=torch.Generator().manual_seed(4), method="naive")
    assert naive_cached.caches == [] and naive_cached.forward_calls == 6  # naive never asks


def test_ancestral_sample_uses_the_pixelcnn_row_cache(monkeypatch):
    model = _pixelcnn(1)
    handed_out = []
    original = PixelCNNpp.incremental_cache

    def spy(self):
        handed_out.append(original(self))
        return handed_out[-1]

    monkeypatch.setattr(PixelCNNpp, "incremental_cache", spy)
    shape = (3, 1, 3, 4)
    fast = ancestral_sample(model, shape, generator=torch.Generator().manual_seed(5))
    naive = ancestral_sample(model, shape, generator=torch.Generator().manual_seed(5), method="naive")
    assert torch.equal(fast, naive)
    (cache,) = handed_out
    assert type(cache) is IncrementalPixelCNN and cache.rows_computed["down0.ul"] > 0
