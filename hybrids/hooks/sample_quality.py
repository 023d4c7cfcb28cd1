"""Sample quality of any model: the Frechet distance of a sampler hook's samples to a data split.

``sample_fd_eval`` runs any sampler hook (ancestral, hybrid, PC, ODE, Langevin, walk-jump, or one
built with ``hybrids.hooks.base.score_sampler_hook``), asking it for ``num_quality_samples``
samples, and compares them with the dataset split by the Frechet distance of Gaussian fits of
features. Features come from pytorch-fid's Inception when a local weights file is given (reported
as "FID"), otherwise from the library's domain classifier trained on the dataset (reported as
"FD-<dataset> classifier", never as FID).
"""
from __future__ import annotations

from typing import Any, Callable

import gin
import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset
from hybrids.hooks.base import evaluator, hook_label
from hybrids.metrics.fid import frechet_distance_to_dataset, load_inception, train_domain_classifier


@evaluator
def sample_fd_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    sampler: Callable[..., dict[str, Tensor]] = gin.REQUIRED,
    key: str | None = None,
    split: str = "test",
    num_quality_samples: int | None = None,
    inception_weights: str | None = None,
    classifier_steps: int | None = None,
) -> dict[str, Any]:
    """Frechet distance between ``sampler``'s samples and ``data``'s dataset split.

    Args:
        model: the model, on ``device`` (EMA weights).
        data: the test split (its name, levels and data directory are used).
        sampler: a sampler hook, e.g. ``@hybrid_sampler``; it is called with
            ``num_samples=num_quality_samples``.
        key: which of the sampler's outputs to use (default: its first).
        split: the reference split of the dataset.
        num_quality_samples: samples drawn (None: the budget's; FID needs thousands for a stable value).
        inception_weights: local path of the pytorch-fid Inception weights: report Inception FID.
        classifier_steps: training updates of the domain classifier (None: the budget's; cached).

    Returns:
        ``{"fd": distance, "metric": "FID" or "FD-<dataset> classifier", "num_samples": N,
        "sampler": "<hook key>:<output>"}``.
    """
    if data.num_levels is None:
        raise ValueError(f"sample_fd_eval compares images; {data.name!r} has no integer levels.")
    samples = sampler(model, data, device=device, generator=generator, num_samples=num_quality_samples)
    if key is None:
        key = next(iter(samples))
    if key not in samples:
        raise ValueError(f"sampler output has no {key!r}; it has {sorted(samples)}.")
    levels = samples[key].cpu()
    if inception_weights is not None:
        extractor = load_inception(inception_weights, device=device)
    else:
        extractor = train_domain_classifier(data.name, data.data_dir, steps=classifier_steps, device=device)
    ((metric, distance),) = frechet_distance_to_dataset(levels, data.num_levels, extractor, data.name, split,
                                                         data_dir=data.data_dir).items()
    return {"fd": distance, "metric": metric, "num_samples": int(levels.shape[0]),
            "sampler": f"{hook_label(sampler)}:{key}"}
