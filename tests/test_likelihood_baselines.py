"""The tutorial's likelihood baselines: multi-sample dequantization bounds, the train/test gap and the
lossless-codec reference rows of the tables."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hybrids.data import ArrayDataset, load_dataset
from hybrids.hooks import multisample_dequant_eval, train_test_gap_eval
from hybrids.likelihood import dequantization_log_weights, multisample_bounds
from hybrids.models.analytic import GaussianDataModel
from hybrids.sdes import VPSDE

F64 = torch.float64
K = 4
MEAN = torch.tensor([[[0.1, -0.2], [0.3, 0.0]]], dtype=F64)   # one 1x2x2 image
STD = torch.tensor([[[0.3, 0.15], [0.2, 0.25]]], dtype=F64)


def _exact_bpd(k: torch.Tensor) -> torch.Tensor:
    """-log2 P(k) / D with P(k) = prod_d [Phi(b_d) - Phi(a_d)] over the bin of x = 2 (k + u) / K - 1."""
    n = torch.distributions.Normal(MEAN, STD)
    lo, hi = 2 * k.to(F64) / K - 1, 2 * (k.to(F64) + 1) / K - 1
    return -torch.log(n.cdf(hi) - n.cdf(lo)).flatten(1).sum(1) / (k[0].numel() * math.log(2))


def _gaussian_levels(n: int, seed: int) -> torch.Tensor:
    x = MEAN + STD * torch.randn(n, *MEAN.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return torch.clamp(torch.floor((x + 1) * K / 2), 0, K - 1).long()


@settings(max_examples=20, deadline=None)
@given(total=st.integers(1, 40), batch=st.integers(1, 5), seed=st.integers(0, 1000))
def test_multisample_bounds_are_nested_log_mean_exps(total, batch, seed):
    """Each S-sample bound is log (1/S) sum of the first S weights (computed here by hand in float64).
    Catches: a missing -log S, a logsumexp over the batch axis, or taking the last S draws."""
    log_w = torch.randn(total, batch, dtype=F64, generator=torch.Generator().manual_seed(seed)) * 3
    sizes = sorted({1, total, max(1, total // 2)})
    bounds = multisample_bounds(log_w, sizes)
    for s in sizes:
        by_hand = torch.log(torch.exp(log_w[:s]).mean(0))
        torch.testing.assert_close(bounds[s], by_hand, rtol=1e-10, atol=1e-10)


def test_multisample_bounds_reject_sizes_beyond_draws():
    with pytest.raises(ValueError, match="outside 1..4"):
        multisample_bounds(torch.zeros(4, 2), [1, 8])


def test_dequantization_log_weights_match_pixel_density():
    """log w = log p_x(x) + D log(2/K) with x = 2(k + u)/K - 1 (uniform q): a wrong offset or a wrong map to
    model space changes it."""
    k = _gaussian_levels(3, 0)
    normal = torch.distributions.Normal(MEAN, STD)
    g = torch.Generator().manual_seed(1)
    log_w = dequantization_log_weights(lambda x: normal.log_prob(x).flatten(1).sum(1), k, K, n_samples=2,
                                       generator=g, dtype=F64)
    g = torch.Generator().manual_seed(1)
    for s in range(2):
        u = torch.rand(k.shape, generator=g, dtype=F64)
        x = 2 * (k + u) / K - 1
        expected = normal.log_prob(x).flatten(1).sum(1) + 4 * math.log(2 / K)
        torch.testing.assert_close(log_w[s], expected)


def _levels_dataset(k: torch.Tensor) -> ArrayDataset:
    return ArrayDataset(name="gaussian_levels", data=k, labels=None, num_levels=K)


def test_multisample_dequant_eval_converges_to_exact_discrete_nll():
    """On Gaussian data with its exact probability-flow ODE (exact divergence), the S-sample bounds decrease
    with S towards the closed-form -log2 P(k) / D and stay above it (within Monte-Carlo error); S = 128 is
    within 0.02 bits/dim of it. Catches: a dropped -log S (S = 128 would fall log2(128) / D = 1.75 bits/dim
    below the exact value), a wrong D log(2/K) offset (shifts every S by a constant), and a bound that does
    not use the S draws (no decrease)."""
    model = GaussianDataModel(MEAN, STD ** 2, VPSDE())
    k = _gaussian_levels(12, 2)
    out = multisample_dequant_eval(model, _levels_dataset(k), device=torch.device("cpu"),
                                   generator=torch.Generator().manual_seed(3), sizes=(1, 16, 128), likelihood="ode",
                                   num_examples=12, batch_size=12 * 128, divergence="exact", rtol=1e-6, atol=1e-6)
    exact = float(_exact_bpd(k).mean())
    b1, b16, b128 = (out["bpd"][s]["mean"] for s in ("1", "16", "128"))
    assert b1 > b16 > b128
    assert b128 > exact - 3 * out["bpd"]["128"]["se"] - 1e-3
    assert b128 - exact < 0.02
    assert b1 - exact > 0.05   # the one-sample bound is visibly loose here, so the test has power
    assert out["gain_bpd"]["128"] == pytest.approx(b1 - b128)


class _ExactGaussian(nn.Module):
    """A continuous density model: log p_x(x) = log N(x; MEAN, STD^2) (t ignored)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))

    def log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(MEAN, STD).log_prob(x).flatten(1).sum(1)


def test_multisample_dequant_eval_exact_density_matches_the_ode_path():
    """With the model's own density ('exact') the bounds sandwich the closed form like the ODE path does, at
    no solver cost. Catches an 'exact' path that evaluates at the wrong points or skips the pixel offset."""
    k = _gaussian_levels(12, 2)
    out = multisample_dequant_eval(_ExactGaussian(), _levels_dataset(k), device=torch.device("cpu"),
                                   generator=torch.Generator().manual_seed(3), sizes=(1, 128), likelihood="exact",
                                   num_examples=12, batch_size=512)
    exact = float(_exact_bpd(k).mean())
    assert out["bpd"]["1"]["mean"] - exact > 0.05
    assert -3 * out["bpd"]["128"]["se"] - 1e-3 < out["bpd"]["128"]["mean"] - exact < 0.02


def test_multisample_dequant_eval_rejects_bad_settings():
    model = GaussianDataModel(MEAN, STD ** 2, VPSDE())
    data = _levels_dataset(_gaussian_levels(2, 0))
    common = dict(device=torch.device("cpu"), generator=torch.Generator(), batch_size=2)
    with pytest.raises(ValueError, match="'exact', 'ode' or 'bound'"):
        multisample_dequant_eval(model, data, likelihood="discrete", **common)
    with pytest.raises(ValueError, match="positive sample counts"):
        multisample_dequant_eval(model, data, sizes=(0, 4), **common)


class _Memoriser(nn.Module):
    """P(k) = (count of k in the training images) / N_train, and 1e-30 elsewhere: the model of the
    memorisation bound."""

    def __init__(self, train: torch.Tensor):
        super().__init__()
        self.register_buffer("memory", train.flatten(1))
        self.dummy = nn.Parameter(torch.zeros(()))

    def discrete_log_prob(self, k: torch.Tensor) -> torch.Tensor:
        counts = (k.flatten(1)[:, None, :] == self.memory[None]).all(-1).sum(1).double()
        return torch.where(counts > 0, torch.log(counts / self.memory.shape[0]), torch.full_like(counts, -69.0))


def test_train_test_gap_of_a_memoriser_is_the_memorisation_bound_on_train():
    """A model that memorised the training split reaches log2(N_train) / D bits/dim on training images
    (digits have no duplicates among the first 50) and ~100 bits/dim worth of nothing on test images.
    Catches: evaluating the test split twice (gap 0), a gap with the wrong sign, and a wrong bound."""
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    out = train_test_gap_eval(_Memoriser(train.data), test, device=torch.device("cpu"),
                              generator=torch.Generator(), num_examples=50, batch_size=25)
    bound = math.log2(train.data.shape[0]) / train.data[0].numel()
    assert out["memorisation_bound_bpd"] == pytest.approx(bound)
    assert out["train_bpd"]["mean"] == pytest.approx(bound, rel=1e-9)
    assert out["test_bpd"]["mean"] > 1.0
    assert out["gap_bpd"] == pytest.approx(out["test_bpd"]["mean"] - out["train_bpd"]["mean"])
    assert out["num_examples"] == 50 and out["num_train_images"] == train.data.shape[0]


def test_train_test_gap_bound_runs_for_a_score_model_and_rejects_discrete():
    """The DSM-bound variant runs for a score-only model (finite, nonnegative bits/dim) and 'discrete' fails
    clearly for it."""
    train = load_dataset("digits", split="train")
    model = GaussianDataModel(torch.zeros(train.data.shape[1:], dtype=F64),
                              torch.full(train.data.shape[1:], 0.3, dtype=F64), VPSDE())
    test = load_dataset("digits", split="test")
    out = train_test_gap_eval(model, test, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                              likelihood="bound", num_examples=8, batch_size=8, n_times=16)
    assert math.isfinite(out["gap_bpd"]) and out["train_bpd"]["mean"] > 0
    with pytest.raises(NotImplementedError, match="no discrete likelihood"):
        train_test_gap_eval(model, test, device=torch.device("cpu"), generator=torch.Generator(), num_examples=4,
                            batch_size=4)


def test_codec_reference_rows_encode_the_same_test_images_the_column_used():
    """The PNG / WebP rows hold the codecs' bits/dim of the first N test images (N from the rows' results) in
    the reference column only. Catches a codec run on another number of images or put in another column."""
    from experiments.references import codec_reference_rows
    from experiments.tables import TABLES
    from hybrids.metrics.compression import png_bits_per_dim, webp_bits_per_dim

    table = TABLES["ncml_table1"]
    flat = [{"pi_perturbation_eval.num_examples": 40}, {"pi_perturbation_eval.num_examples": 40}]
    rows = codec_reference_rows(table, ["digits", "digits"], flat, None)
    images = load_dataset("digits", split="test").data[:40]
    assert [r["status"] for r in rows] == ["reference", "reference"]
    assert rows[0]["ours"]["NLL pi=0 (bpd)"] == pytest.approx(png_bits_per_dim(images))
    assert rows[1]["ours"]["NLL pi=0 (bpd)"] == pytest.approx(webp_bits_per_dim(images))
    assert all(v is None for r in rows for n, v in r["ours"].items() if n != "NLL pi=0 (bpd)")
    assert "first 40 test images" in rows[0]["row"]
    assert codec_reference_rows(table, ["digits", "mnist"], flat, None) == []
    assert codec_reference_rows(TABLES["gps"], ["digits"], flat, None) == []
