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


class _Net(torch.nn.Module):
    def forward(self, x):
        return x


def test_network_passes_per_sample_counts_rows_through_forward():
    """Three passes on the whole batch and one on half of it: 3.5 passes per sample; calls through
    the model's layers (not forward) and calls after the sampler returned are not counted. Catches
    counting calls instead of rows, and a hook left registered after the evaluation."""
    data = load_dataset("digits", "test")
    net = _Net()

    def sampler(model, data, *, device, generator, num_samples):
        x = torch.zeros(num_samples, 1)
        for _ in range(3):
            model(x)
        model(x[: num_samples // 2])
        model.forward.__func__  # attribute access is not a call
        return _real(model, data, device=device, generator=generator, num_samples=num_samples)

    out = sample_fd_eval(net, data, device=CPU, generator=torch.Generator().manual_seed(0), sampler=sampler,
                         classifier_steps=5, num_quality_samples=40, kid=False, floor=False)
    assert out["network_passes_per_sample"] == pytest.approx(3.5)
    assert not net._forward_hooks  # removed
    assert sample_fd_eval(None, data, device=CPU, generator=torch.Generator(), sampler=_real, classifier_steps=5,
                          num_quality_samples=10, kid=False, floor=False)["network_passes_per_sample"] == 0


class _ScoreThroughNet(torch.nn.Module):
    """A score model whose score calls its layers directly (like hybrids' ScoreModel)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Identity()

    def score(self, x, t=None):
        return -self.net(x)


class _ScoreThroughForward(_Net):
    """A density model whose score runs its own forward (like NCPN's autograd score)."""

    def score(self, x, t=None):
        return -self(x)


@pytest.mark.parametrize("cls", [_ScoreThroughNet, _ScoreThroughForward])
def test_network_passes_count_score_calls_once(cls):
    """Two score calls on the whole batch: 2 passes per sample, whether the score runs the model's
    forward (counted once, not twice) or only its layers (counted through score). Catches counting
    forward only (0 for score models) and counting nested calls twice (4). The model's own score
    method is back in place afterwards."""
    data = load_dataset("digits", "test")
    model = cls()

    def sampler(model, data, *, device, generator, num_samples):
        x = torch.zeros(num_samples, 1)
        model.score(model.score(x, None), None)
        return _real(model, data, device=device, generator=generator, num_samples=num_samples)

    out = sample_fd_eval(model, data, device=CPU, generator=torch.Generator().manual_seed(0), sampler=sampler,
                         classifier_steps=5, num_quality_samples=20, kid=False, floor=False)
    assert out["network_passes_per_sample"] == pytest.approx(2.0)
    assert "score" not in vars(model) and not model._forward_hooks and not model._forward_pre_hooks
