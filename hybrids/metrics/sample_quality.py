"""Sample quality of any model as a runner evaluator: Frechet distance of a sampler's output.

``sample_fd_eval`` runs one of the library's sampler hooks (ancestral, hybrid, PC, walk-jump ...)
and compares its samples with a dataset split by the Frechet distance of Gaussian fits of
features (METHODS.md section 9). Features come from pytorch-fid's Inception when a local weights
file is given (reported as "FID"), otherwise from the library's domain classifier trained on the
dataset (reported as "FD-<dataset> classifier", never as FID).
"""
from __future__ import annotations

from typing import Any, Callable

import gin
import torch
from torch import Tensor, nn

from hybrids.metrics.fid import frechet_distance_to_dataset, load_inception, train_domain_classifier


@gin.configurable(module="hybrids.metrics", denylist=["device", "generator"])
def sample_fd_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    sampler: Callable[..., dict[str, Tensor]] = gin.REQUIRED,
    key: str | None = None,
    split: str = "test",
    inception_weights: str | None = None,
    classifier_steps: int = 500,
) -> dict[str, Any]:
    """Frechet distance between ``sampler``'s samples and ``data``'s dataset split.

    Args:
        model: the model, on ``device`` (EMA weights).
        data: the test ``ArrayDataset`` (its name, levels and data directory are used).
        sampler: a sampler hook with the runner signature, e.g. ``@ncml_hybrid_sampler``; its
            sample count is its own gin setting (FID needs thousands for a stable value).
        key: which of the sampler's outputs to use (default: its first).
        split: the reference split of the dataset.
        inception_weights: local path of the pytorch-fid Inception weights: report Inception FID.
        classifier_steps: training updates of the domain classifier (cached in the data cache).

    Returns:
        ``{"fd": distance, "metric": "FID" or "FD-<dataset> classifier", "num_samples": N,
        "sampler": "<hook>:<key>"}``.
    """
    if data.num_levels is None:
        raise ValueError(f"sample_fd_eval compares images; {data.name!r} has no integer levels.")
    samples = sampler(model, data, device=device, generator=generator)
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
            "sampler": f"{getattr(sampler, '__name__', type(sampler).__name__)}:{key}"}
