"""sample_fd_eval's KID and real-data floor in the digits classifier's features."""
from __future__ import annotations

import torch

from hybrids.data import load_dataset
from hybrids.hooks import sample_fd_eval

CPU = torch.device("cpu")


def _real(model, data, *, device, generator, num_samples):
    return {"samples": data.data[:num_samples]}


def _noise(model, data, *, device, generator, num_samples):
    return {"samples": torch.randint(0, data.num_levels, (num_samples, *data.shape), generator=generator)}


def test_kid_and_floor_separate_real_digits_from_noise():
    """Real test digits score like the floor (held-out train digits of the same number): their
    KID is within 4 subset standard deviations of the floor's, while noise is far above both.
    Catches: a floor drawn from the reference itself (FD/KID 0), KID in another feature space
    than FD, the floor's sample size differing from the samples'."""
    data = load_dataset("digits", "test")
    kw = dict(device=CPU, generator=torch.Generator().manual_seed(0), classifier_steps=200,
              num_quality_samples=150, kid_subsets=50, kid_subset_size=100)
    real = sample_fd_eval(None, data, sampler=_real, **kw)
    noise = sample_fd_eval(None, data, sampler=_noise, **kw)
    assert real["kid"]["metric"] == "KID-digits classifier" and real["floor"]["split"] == "train"
    assert real["floor"]["num_samples"] == real["num_samples"] == 150
    assert real["floor"]["fd"] > 0 and real["floor"]["kid"]["kid"] < noise["kid"]["kid"] / 10
    assert abs(real["kid"]["kid"] - real["floor"]["kid"]["kid"]) < 4 * real["floor"]["kid"]["kid_subset_std"]
    assert noise["floor"] == real["floor"]  # the floor does not depend on the sampler
    assert noise["kid"]["kid"] > 10 * real["kid"]["kid_subset_std"]
