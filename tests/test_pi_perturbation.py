"""pi_perturbation_eval's interior-pixel test: the background confound is removed exactly."""
from __future__ import annotations

import math

import pytest
import torch

from hybrids.data import ArrayDataset
from hybrids.hooks import pi_perturbation_eval
from tests._tiny_components import IIDLevels

CPU = torch.device("cpu")
K = 8




def _expected_change(log_probs, k, only_interior):
    """E[bpd(pi = 1)] - bpd(pi = 0): every (interior) pixel moves to k +- 1 with probability 1/2
    each, reflected at the ends."""
    lp = log_probs
    up = torch.where(k + 1 > K - 1, k - 1, k + 1)
    down = torch.where(k - 1 < 0, k + 1, k - 1)
    change = -(0.5 * lp[up] + 0.5 * lp[down]) + lp[k]
    if only_interior:
        change = torch.where((k > 0) & (k < K - 1), change, torch.zeros_like(change))
    return float(change.flatten(1).sum(1).mean()) / (k[0].numel() * math.log(2))


def test_interior_degradation_leaves_the_background_out():
    """Images with 60% background (level 0) under a model that gives level 1 a tiny probability:
    the plain degradation is dominated by the background, the interior one by the interior pixels
    alone, each matching its closed form. Catches: perturbing the background in the interior test,
    or the interior test leaving everything unperturbed."""
    g = torch.Generator().manual_seed(0)
    k = torch.randint(2, K - 1, (400, 1, 5, 5), generator=g)
    k[torch.rand(k.shape, generator=g) < 0.6] = 0
    probs = torch.tensor([0.5, 1e-3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.099], dtype=torch.float64)
    model = IIDLevels(probs / probs.sum())
    out = pi_perturbation_eval(model, ArrayDataset("digits", k, None, K), device=CPU,
                               generator=torch.Generator().manual_seed(1), pis=(0.0, 1.0), num_examples=400,
                               batch_size=100)
    plain, inner = _expected_change(model.log_probs, k, False), _expected_change(model.log_probs, k, True)
    assert out["degradation"] == pytest.approx(plain, abs=5 * out["se"]["1.0"])  # the direction of each move is random
    assert out["interior"]["degradation"] == pytest.approx(inner, abs=5 * out["interior"]["se"]["1.0"])
    assert plain > 5 * inner > 0
    assert out["interior_fraction"] == pytest.approx(float((k > 0).double().mean()))
    assert out["interior"]["bpd"]["0.0"] == out["bpd"]["0.0"]
