"""Tests of PixelCNN++ and NCPN: causality, normalisation, scores, noise conditioning, errors."""
from __future__ import annotations

import itertools

import gin
import pytest
import torch

from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

D64 = torch.float64
TINY = dict(nr_filters=8, nr_resnet=1, nr_logistic_mix=2, dropout=0.0)


def tiny_pixelcnn(shape, seed=0, **kw):
    torch.manual_seed(seed)
    return PixelCNNpp(shape, **{**TINY, **kw}).double().eval()


def tiny_ncpn(shape, seed=0, sde=None, **kw):
    torch.manual_seed(seed)
    sde = VESDE() if sde is None else sde
    return NCPN(shape, sde=sde, **{**TINY, "embed_dim": 8, "attn_dim": 4, **kw}).double().eval()


def pixel_dependencies(model, shape, t=0.3, seed=0):
    """dep[i, j] = sum |d params(pixel i) / d x(pixel j)| over all output and input channels."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand((1,) + shape, generator=g, dtype=D64) - 1
    t = torch.full((1,), t, dtype=D64)
    jac = torch.autograd.functional.jacobian(lambda v: model(v, t), x, vectorize=True)  # [1,P,H,W,1,C,H,W]
    _, h, w = shape
    return jac.abs().sum(dim=(0, 1, 4, 5)).reshape(h * w, h * w)


def assert_raster_causal(dep):
    n = dep.shape[0]
    future = torch.ones(n, n, dtype=torch.bool).triu()  # j >= i: the pixel itself and later
    assert torch.all(dep[future] == 0), "params depend on the pixel itself or a later one"
    past = ~future
    # no blind spot: every earlier pixel influences every later pixel's params
    assert torch.all(dep[past] > 0), f"blind spot: {past.nonzero()[dep[past] == 0].tolist()}"


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4), (1, 5, 3)])
def test_pixelcnnpp_is_causal_in_raster_order(shape):
    assert_raster_causal(pixel_dependencies(tiny_pixelcnn(shape), shape))


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4), (1, 5, 3)])
@pytest.mark.parametrize("attention", [("up", "down"), ("down",)])
def test_ncpn_with_attention_is_causal_in_raster_order(shape, attention):
    model = tiny_ncpn(shape, attention=attention)
    assert_raster_causal(pixel_dependencies(model, shape, t=0.2))


def test_weight_norm_variant_is_causal():
    shape = (1, 4, 4)
    assert_raster_causal(pixel_dependencies(tiny_pixelcnn(shape, weight_norm=True), shape))


def test_attention_mask_is_strict():
    """The attention block alone: out at pixel i depends only on pixels j < i; pixel 0 gets zeros."""
    from hybrids.models.layers import CausalAttention

    torch.manual_seed(1)
    attn = CausalAttention(4, 1, 3).double()
    x = torch.randn(1, 1, 3, 3, dtype=D64)
    feats = torch.randn(1, 4, 3, 3, dtype=D64)
    jac = torch.autograd.functional.jacobian(lambda v: attn(feats, v), x)  # [1,4,3,3,1,1,3,3]
    dep = jac.abs().sum(dim=(0, 1, 4, 5)).reshape(9, 9)
    assert torch.all(dep[torch.ones(9, 9, dtype=torch.bool).triu()] == 0)
    assert torch.all(dep[torch.ones(9, 9, dtype=torch.bool).tril(-1)] > 0)


@pytest.mark.parametrize(
    "make,shape,k_levels",
    [
        (lambda s, k: tiny_pixelcnn(s, num_levels=k), (1, 2, 2), 3),
        (lambda s, k: tiny_pixelcnn(s, num_levels=k), (3, 1, 2), 2),
        (lambda s, k: tiny_ncpn(s, num_levels=k), (1, 2, 2), 3),
        (lambda s, k: tiny_ncpn(s, num_levels=k, sde=VPSDE()), (3, 1, 2), 2),
    ],
)
def test_discrete_joint_sums_to_one_over_all_images(make, shape, k_levels):
    """Sum of P(k) over all K^(CHW) images is 1: holds only for a correctly ordered AR model."""
    model = make(shape, k_levels)
    d = shape[0] * shape[1] * shape[2]
    images = torch.tensor(list(itertools.product(range(k_levels), repeat=d))).reshape((-1,) + shape)
    with torch.no_grad():
        log_p = model.discrete_log_prob(images)
    assert log_p.shape == (images.shape[0],)
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE()])
def test_ncpn_score_equals_finite_differences(sde):
    shape = (3, 2, 2)
    model = tiny_ncpn(shape, seed=2, sde=sde)
    g = torch.Generator().manual_seed(0)
    x = 1.3 * torch.randn((2,) + shape, generator=g, dtype=D64)
    t = torch.tensor([0.3, 0.05], dtype=D64)
    score = model.score(x, t)
    eps = 1e-6
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for idx in itertools.product(*(range(s) for s in shape)):
            e = torch.zeros_like(x)
            e[(slice(None),) + idx] = eps
            fd[(slice(None),) + idx] = (model.log_prob(x + e, t) - model.log_prob(x - e, t)) / (2 * eps)
    torch.testing.assert_close(score, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()])
def test_ncpn_defined_at_t0_and_depends_on_t(sde):
    shape = (1, 4, 4)
    model = tiny_ncpn(shape, sde=sde)
    assert model.embedding.kind == ("fourier" if isinstance(sde, VESDE) else "sinusoidal")
    x = 2 * torch.rand((2,) + shape, dtype=D64) - 1
    with torch.no_grad():
        p0 = model(x, torch.zeros(2, dtype=D64))
        p_none = model(x)
        p1 = model(x, torch.full((2,), 0.1, dtype=D64))
    assert p0.dtype == D64 and torch.isfinite(p0).all()
    torch.testing.assert_close(p0, p_none)
    assert (p0 - p1).abs().max() > 1e-6
    k = torch.randint(0, 256, (2,) + shape)
    assert torch.isfinite(model.discrete_log_prob(k)).all()


def test_pixelcnnpp_ignores_t_and_runs_in_both_dtypes():
    shape = (3, 4, 4)
    model = tiny_pixelcnn(shape)
    x = 2 * torch.rand((2,) + shape, dtype=D64) - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.zeros(2, dtype=D64)), model(x, torch.ones(2, dtype=D64)))
        lp = model.log_prob(x, torch.tensor([0.0, 0.7], dtype=D64))
    assert lp.dtype == D64 and lp.shape == (2,)
    model32 = model.float()
    with torch.no_grad():
        lp32 = model32.log_prob(x.float(), torch.zeros(2))
    assert lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double(), lp, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", [(1, 7, 7), (1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_supported_image_sizes(shape):
    model = PixelCNNpp(shape, **TINY).eval()
    k = torch.randint(0, 256, (1,) + shape)
    with torch.no_grad():
        log_p = model.discrete_log_prob(k)
    assert log_p.shape == (1,) and torch.isfinite(log_p).all()


def test_discrete_log_prob_rejects_bad_levels():
    model = tiny_pixelcnn((1, 4, 4), num_levels=17)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        model.discrete_log_prob(torch.full((1, 1, 4, 4), 17))
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        model.discrete_log_prob(torch.full((1, 1, 4, 4), -1))
    with pytest.raises(TypeError, match="integer"):
        model.discrete_log_prob(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        model.discrete_log_prob(torch.zeros(1, 1, 4, 5, dtype=torch.int64))


def test_ncpn_rejects_bad_configuration():
    with pytest.raises(ValueError, match="needs the SDE"):
        NCPN((1, 4, 4), **TINY)
    with pytest.raises(ValueError, match="sigma"):
        NCPN((1, 4, 4), sde=VPSDE(), embedding="fourier", **TINY)
    with pytest.raises(ValueError, match="attention"):
        NCPN((1, 4, 4), sde=VESDE(), attention=("middle",), **TINY)
    NCPN((1, 4, 4), embedding="sinusoidal", attention=(), **TINY)  # no SDE needed


def test_models_are_gin_configurable():
    gin.parse_config(
        """
        import hybrids.sdes
        import hybrids.models.pixelcnnpp
        NCPN.image_shape = (1, 4, 4)
        NCPN.nr_filters = 8
        NCPN.nr_resnet = 1
        NCPN.sde = @VESDE()
        PixelCNNpp.image_shape = (1, 4, 4)
        PixelCNNpp.nr_filters = 12
        """
    )
    ncpn = NCPN()
    assert isinstance(ncpn.sde, VESDE) and ncpn.embedding.kind == "fourier"
    assert PixelCNNpp().net.head.conv.in_channels == 12


@pytest.mark.parametrize("shape,k_levels", [((1, 2, 2), 3), ((3, 1, 2), 2)])
def test_ancestral_samples_follow_discrete_log_prob(shape, k_levels):
    """Pixel-by-pixel sampling with the full-image samplers reproduces the model's joint pmf."""
    from scipy import stats

    from hybrids.distributions import sample_discretized_logistic_mixture

    model = tiny_ncpn(shape, seed=4, num_levels=k_levels, sde=VPSDE())
    c, h, w = shape
    n_samples = 6_000
    g = torch.Generator().manual_seed(0)
    k = torch.zeros((n_samples,) + shape, dtype=torch.int64)
    with torch.no_grad():
        for i, j in itertools.product(range(h), range(w)):
            x = 2.0 * k.double() / (k_levels - 1) - 1.0
            draw = sample_discretized_logistic_mixture(model(x), k_levels, g, num_channels=c)
            k[:, :, i, j] = draw[:, :, i, j]
        d = c * h * w
        images = torch.tensor(list(itertools.product(range(k_levels), repeat=d))).reshape((-1,) + shape)
        probs = model.discrete_log_prob(images).exp().numpy()
    codes = torch.zeros(n_samples, dtype=torch.int64)
    for v in k.reshape(n_samples, -1).T:
        codes = codes * k_levels + v
    counts = torch.bincount(codes, minlength=images.shape[0]).numpy()
    keep = probs * n_samples > 5
    obs = list(counts[keep]) + [counts[~keep].sum()]
    exp = list(probs[keep] * n_samples) + [probs[~keep].sum() * n_samples]
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = [e * sum(obs) / sum(exp) for e in exp]
    assert stats.chisquare(obs, exp).pvalue > 1e-3
