"""NoiseAugmentedMLE, the smoothing control of NCML's pi test."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybrids.objectives import MLE
from hybrids.objectives.augmented_mle import NoiseAugmentedMLE
from hybrids.sdes import VESDE, VPSDE


class Recorder(nn.Module):
    """discrete_log_prob = -sum of levels; keeps the last input."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def discrete_log_prob(self, k):
        self.seen = k
        return -k.flatten(1).double().sum(1) + self.w


def test_clean_examples_give_plain_mle():
    k = torch.randint(0, 17, (8, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    model = Recorder()
    loss, _ = NoiseAugmentedMLE(VPSDE(), num_levels=17, p_clean=1.0)(model, k, generator=torch.Generator())
    assert torch.equal(model.seen, k)
    assert float(loss.detach()) == pytest.approx(float(MLE(17)(model, k)[0].detach()))


def test_noise_moves_levels_as_often_as_it_crosses_a_bin():
    """A value placed uniformly in its bin plus N(0, s^2) noise (s = sigma_t in bin widths 2/K)
    leaves the bin with probability erfc(1 / (s sqrt 2)) + s sqrt(2/pi) (1 - exp(-1 / (2 s^2))),
    averaged over t ~ U(0, t_max].
    Catches: noise scaled by the variance instead of the std, noise on levels instead of model
    space, the clean/noisy mask inverted."""
    K, sde, t_max = 256, VESDE(), 0.05  # VE sigma_t = 0.01 * 5000^t in (0.01, 0.0153]: 1.3 to 2 bins of 2/K
    objective = NoiseAugmentedMLE(sde, num_levels=K, t_max=t_max, p_clean=0.0)
    ts = torch.linspace(0, t_max, 100_001, dtype=torch.float64)[1:]
    k = torch.randint(1, K - 1, (20_000, 1, 2, 2), generator=torch.Generator().manual_seed(1))
    k2, clean = objective.augment(k, torch.Generator().manual_seed(2))
    assert not bool(clean.any())
    moved = (k2 != k).double()
    # exact crossing probability of U(0,1)-placed value plus N(0, s^2), s in bin widths: E over t
    s = sde.marginal_coefs(ts).std / (2 / K)
    cross = s * math.sqrt(2 / math.pi) * (1 - torch.exp(-1 / (2 * s**2))) + torch.erfc(1 / (s * math.sqrt(2)))
    expected = float(cross.mean())
    se = float(moved.std() / math.sqrt(moved.numel()))
    assert abs(float(moved.mean()) - expected) < 5 * se, (float(moved.mean()), expected)
    assert int(k2.min()) >= 0 and int(k2.max()) <= K - 1


def test_bad_arguments():
    with pytest.raises(TypeError, match="SDE"):
        NoiseAugmentedMLE("vp")
    with pytest.raises(ValueError, match="p_clean"):
        NoiseAugmentedMLE(VPSDE(), p_clean=2.0)
    with pytest.raises(ValueError, match="t_max"):
        NoiseAugmentedMLE(VPSDE(), t_max=2.0)
