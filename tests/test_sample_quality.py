"""sample_fd_eval: Frechet distance of a sampler hook's output in the domain classifier's features."""
from __future__ import annotations

import pytest
import torch

from hybrids.data import load_dataset
from hybrids.hooks import sample_fd_eval

CPU = torch.device("cpu")


def _real(model, data, *, device, generator, num_samples):
    return {"levels": data.data[:num_samples]}


def _noise(model, data, *, device, generator, num_samples):
    return {"levels": torch.randint(0, data.num_levels, (num_samples, *data.shape), generator=generator)}


def test_real_digits_are_closer_than_noise_and_named_as_classifier_fd():
    data = load_dataset("digits", "test")
    kw = dict(device=CPU, generator=torch.Generator().manual_seed(0), classifier_steps=200, num_quality_samples=200)
    real = sample_fd_eval(None, data, sampler=_real, **kw)
    noise = sample_fd_eval(None, data, sampler=_noise, **kw)
    assert real["metric"] == noise["metric"] == "FD-digits classifier"
    assert real["num_samples"] == 200 and real["sampler"] == "_real:levels"
    assert 0 <= real["fd"] < noise["fd"] / 10


def test_bad_key_and_continuous_data_fail_clearly():
    data = load_dataset("digits", "test")
    with pytest.raises(ValueError, match="has no 'x'"):
        sample_fd_eval(None, data, device=CPU, generator=torch.Generator(), sampler=_real, key="x",
                       classifier_steps=5)
    toy = load_dataset("moons", "test", num_examples=10)
    with pytest.raises(ValueError, match="integer levels"):
        sample_fd_eval(None, toy, device=CPU, generator=torch.Generator(), sampler=_real)
