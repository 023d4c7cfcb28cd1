"""AR score-model hooks and their algorithms: grid-normalised 2-D densities, single-step denoising, anomaly scores, samplers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybrids.data import ArrayDataset
from hybrids.hooks import (ar_langevin_sampler, denoise_eval, denoise_images, density_anomaly_eval, density_grid_eval,
                           density_grid_image, score_norm_anomaly_eval)
from hybrids.likelihood.density_grid import conditional_density_grid
from hybrids.models.heads import diagonal_conditional_scores
from hybrids.models.made import MADEConditionalScore
from tests._tiny_components import IIDLevels

CPU = torch.device("cpu")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class GaussianAR(nn.Module):
    """Exact conditional scores of x_d | x_<d ~ N(mu_d + (A x)_d, v_d) (A strictly lower)."""

    def __init__(self, A, mu, v):
        super().__init__()
        self.A, self.mu, self.v = A, mu, v
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def context(self, x, t=None):
        x = x.reshape(x.shape[0], -1)
        mean = self.mu + x @ self.A.T
        return torch.stack([mean, self.v.expand_as(mean)], dim=-1)

    def head(self, x_d, c, t=None):
        return -(x_d - c[..., 0]) / c[..., 1]

    def conditional_scores(self, x, t=None):
        c = self.context(x)
        s, ds = diagonal_conditional_scores(lambda u: self.head(u, c), x.reshape(x.shape[0], -1))
        return s.reshape(x.shape), ds.reshape(x.shape)


def _gaussian_2d():
    A = torch.tensor([[0.0, 0.0], [0.8, 0.0]], dtype=torch.float64)
    mu = torch.tensor([0.3, -0.2], dtype=torch.float64)
    v = torch.tensor([0.8, 0.3], dtype=torch.float64)
    return A, mu, v


def test_grid_density_matches_the_closed_form_joint():
    A, mu, v = _gaussian_2d()
    grid, dens = conditional_density_grid(GaussianAR(A, mu, v), lim=(-5, 5), resolution=301)
    x1, x2 = torch.meshgrid(grid, grid, indexing="ij")
    log_p = (-0.5 * (x1 - mu[0]) ** 2 / v[0] - 0.5 * torch.log(2 * math.pi * v[0])
             - 0.5 * (x2 - mu[1] - A[1, 0] * x1) ** 2 / v[1] - 0.5 * torch.log(2 * math.pi * v[1]))
    exact = log_p.exp()
    assert (dens - exact).abs().max() < 1e-3 * exact.max()
    dx = float(grid[1] - grid[0])
    assert torch.trapezoid(torch.trapezoid(dens, dx=dx, dim=1), dx=dx).item() == pytest.approx(1, abs=1e-6)


def test_density_eval_and_image_hooks():
    A, mu, v = _gaussian_2d()
    model = GaussianAR(A, mu, v)
    g = _gen(1)
    x1 = mu[0] + v[0].sqrt() * torch.randn(4000, generator=g, dtype=torch.float64)
    x2 = mu[1] + A[1, 0] * x1 + v[1].sqrt() * torch.randn(4000, generator=g, dtype=torch.float64)
    data = ArrayDataset("moons", torch.stack([x1, x2], 1).float(), None, None)
    out = density_grid_eval(model, data, device=CPU, generator=_gen(), lim=(-6, 6), resolution=600)
    entropy = 0.5 * (torch.log(2 * math.pi * math.e * v)).sum()  # E log p = -H
    assert out["fraction_outside_grid"] == 0.0
    assert out["test_log_likelihood"] == pytest.approx(-float(entropy), abs=0.05)
    img = density_grid_image(model, data, device=CPU, generator=_gen(), resolution=50)["density"]
    assert img.shape == (1, 3, 50, 50) and img.dtype == torch.int64
    assert img.min() >= 0 and img.max() == 255


def test_denoising_is_exact_tweedie_for_independent_gaussian_coordinates():
    # x ~ N(0.2, v) per coordinate, y = x + sigma z: the noisy conditionals factorise, so
    # y + sigma^2 s(y) is the posterior mean; its MSE is v sigma^2 / (v + sigma^2).
    sigma, v, n, dim = 0.6, 0.25, 20_000, 4
    x = 0.2 + math.sqrt(v) * torch.randn(n, dim, generator=_gen(2), dtype=torch.float64)
    data = ArrayDataset("moons", x.float(), None, None)
    noisy_model = GaussianAR(torch.zeros(dim, dim, dtype=torch.float64),
                             torch.full((dim,), 0.2, dtype=torch.float64),
                             torch.full((dim,), v + sigma**2, dtype=torch.float64))
    out = denoise_eval(noisy_model, data, device=CPU, generator=_gen(3), sigma=sigma,
                             num_examples=n, batch_size=5000)
    assert out["mse_noisy"] == pytest.approx(sigma**2, rel=0.03)
    assert out["mse_denoised"] == pytest.approx(v * sigma**2 / (v + sigma**2), rel=0.03)
    assert out["psnr_denoised"] > out["psnr_noisy"]


def test_anomaly_score_separates_noise_from_near_constant_images():
    # s(x) = -x / 0.01 (the model of images concentrated near 0): ||s|| grows with ||x||.
    k = torch.randint(124, 132, (64, 1, 4, 4), generator=_gen(4))
    data = ArrayDataset("digits", k, None, 256)
    model = GaussianAR(torch.zeros(16, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64),
                       torch.full((16,), 0.01, dtype=torch.float64))
    out = score_norm_anomaly_eval(model, data, device=CPU, generator=_gen(5), sigma=0.0, num_examples=64)
    assert out["auroc_uniform_noise"] > 0.99
    assert out["mean_norm_uniform_noise"] > 10 * out["mean_norm_in"]
    # inverting levels 124..131 gives 124..131 again: no separation
    assert 0.3 < out["auroc_inverted"] < 0.7
    with pytest.raises(ValueError, match="unknown OOD"):
        score_norm_anomaly_eval(model, data, device=CPU, generator=_gen(), ood=("rotated",))




def test_density_anomaly_eval_scores_by_exact_bits_per_dim():
    k = torch.randint(124, 132, (64, 1, 4, 4), generator=_gen(7))
    data = ArrayDataset("digits", k, None, 256)
    probs = torch.full((256,), 1e-4, dtype=torch.float64)
    probs[120:136] = 1.0
    probs = probs / probs.sum()
    model = IIDLevels(probs)
    out = density_anomaly_eval(model, data, device=CPU, generator=_gen(8), num_examples=64, batch_size=10)
    expected_in = float((-probs.log()[k].flatten(1).sum(1) / (16 * math.log(2))).mean())
    assert out["mean_bpd_in"] == pytest.approx(expected_in, rel=1e-12)
    assert out["auroc_uniform_noise"] > 0.99 and out["mean_bpd_uniform_noise"] > out["mean_bpd_in"] + 5
    assert 0.3 < out["auroc_inverted"] < 0.7  # 255 - (124..131) = 124..131: no separation
    with pytest.raises(TypeError, match="score_norm_anomaly_eval"):
        density_anomaly_eval(nn.Linear(1, 1), data, device=CPU, generator=_gen())


def test_sampler_and_denoise_image_hooks_return_runner_formats():
    img_data = ArrayDataset("digits", torch.randint(0, 17, (8, 1, 2, 2), generator=_gen(6)), None, 17)
    model = MADEConditionalScore(4, hidden=(8,), context_features=2, head_hidden=(4,))
    out = ar_langevin_sampler(model, img_data, device=CPU, generator=_gen(7), num_samples=3, num_steps=2)
    assert out["samples"].shape == (3, 1, 2, 2) and out["samples"].dtype == torch.int64
    assert out["samples"].min() >= 0 and out["samples"].max() < 17
    pics = denoise_images(model, img_data, device=CPU, generator=_gen(8), num_samples=4)
    assert set(pics) == {"clean", "noisy", "denoised"}
    assert all(p.shape == (4, 1, 2, 2) and p.dtype == torch.int64 for p in pics.values())
    toy = ArrayDataset("moons", torch.randn(8, 2), None, None)
    pts = ar_langevin_sampler(MADEConditionalScore(2, hidden=(8,)), toy, device=CPU, generator=_gen(9),
                        num_samples=5, num_steps=2)["samples"]
    assert pts.shape == (5, 2) and pts.dtype == torch.float32


ROWS = {
    "arcsm_made_toy.gin": ["presets/cpu_small.gin"],
    "arcsm_made_mnist.gin": ["presets/cpu_small.gin"],
    "arcsm_pixelcnnpp_mnist.gin": ["presets/cpu_small.gin"],
    "made_mle_gaussian_mnist.gin": ["presets/cpu_small.gin"],
    "made_mle_logistic_mnist.gin": ["presets/cpu_small.gin"],
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_gin_rows_build_and_take_one_objective_step(row):
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from experiments.runner import experiment, parse_gin

    parse_gin([row, *ROWS[row]])
    exp = experiment()
    toy = row == "arcsm_made_toy.gin"
    assert exp.dataset == ("checkerboard" if toy else "digits")
    batch = torch.randn(4, 2) if toy else torch.randint(0, 17, (4, 1, 8, 8), generator=_gen(10))
    assert exp.objective.num_levels == (None if toy else 17)
    loss, _ = exp.objective(exp.model, batch)
    loss.backward()
    assert torch.isfinite(loss)
