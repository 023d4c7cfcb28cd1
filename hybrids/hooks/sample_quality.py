"""Sample quality of any model: the Frechet distance of a sampler hook's samples to a data split.

``sample_fd_eval`` runs any sampler hook (ancestral, hybrid, PC, ODE, Langevin, walk-jump, or one
built with ``hybrids.hooks.base.score_sampler_hook``), asking it for ``num_quality_samples``
samples, and compares them with the dataset split by the Frechet distance of Gaussian fits of
features. Features come from pytorch-fid's Inception when a local weights file is given (reported
as "FID"), otherwise from the library's domain classifier trained on the dataset (reported as
"FD-<dataset> classifier", never as FID).

Beside FD it reports the kernel inception distance (``hybrids.metrics.kid``: unbiased, so values at
different sample sizes are comparable; "KID-<dataset> classifier" outside Inception features) and
the floor of both: the same metrics for as many held-out real images (from the other split) as
samples, which is what a perfect sampler would score at that sample size.

It also counts what the samples cost: ``network_passes_per_sample``, the rows that went through
the model's ``forward`` or ``score`` while sampling divided by the number of samples
(``count_network_passes``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import gin
import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset, load_dataset
from hybrids.hooks.base import evaluator, hook_label
from hybrids.metrics.fid import frechet_distance_to_dataset, load_inception, train_domain_classifier
from hybrids.metrics.kid import kernel_inception_distance


@contextmanager
def count_network_passes(model: nn.Module | None) -> Iterator[list[int]]:
    """Count the rows that go through the model inside the block: ``[rows]``, read after it.

    A call of ``model.forward`` or ``model.score`` on a batch of B examples counts B, once: calls
    made inside a counted call (NCPN's autograd score runs its forward; a score model's forward is
    its score) are not counted again. A score computed by autograd through a density is one pass
    (plus its backward). Work that runs below both -- the per-pixel conditionals of a cached
    autoregressive draw, which call the layers directly -- is not counted. ``model`` None (a sampler
    that needs no model) counts nothing.
    """
    count = [0]
    if model is None:
        yield count
        return
    depth = [0]

    def rows_of(args: tuple) -> int:
        return int(args[0].shape[0]) if args and isinstance(args[0], Tensor) and args[0].ndim else 1

    def enter(args: tuple) -> None:
        if depth[0] == 0:
            count[0] += rows_of(args)
        depth[0] += 1

    def exit_() -> None:
        depth[0] -= 1

    pre = model.register_forward_pre_hook(lambda _m, args: enter(args))
    post = model.register_forward_hook(lambda _m, _args, _out: exit_(), always_call=True)
    had_score = "score" in vars(model)
    score = getattr(model, "score", None)
    if callable(score):
        def counted_score(*args, **kwargs):
            enter(args)
            try:
                return score(*args, **kwargs)
            finally:
                exit_()

        model.score = counted_score
    try:
        yield count
    finally:
        pre.remove()
        post.remove()
        if callable(score):
            if had_score:
                model.score = score
            else:
                del model.score


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
    kid: bool = True,
    floor: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
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
        kid: also report KID against the whole reference split's features.
        floor: also report FD and KID of N held-out real images (a seeded draw from the other
            split) against the reference.
        kid_subsets, kid_subset_size: KID's random subsets (Binkowski et al. use 100 of 1000).

    Returns:
        ``{"fd": distance, "metric": "FID" or "FD-<dataset> classifier", "num_samples": N,
        "sampler": "<hook key>:<output>", "network_passes_per_sample": rows through the model's
        forward or score while sampling / N (``count_network_passes``; a cached autoregressive draw
        adds its D per-pixel conditionals on top)}``, with ``kid`` (``kernel_inception_distance``'s dict and
        its ``metric`` name) and ``floor`` (``{"fd", "kid", "num_samples", "split"}``) when asked.
    """
    if data.num_levels is None:
        raise ValueError(f"sample_fd_eval compares images; {data.name!r} has no integer levels.")
    with count_network_passes(model) as rows:
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
    out: dict[str, Any] = {"fd": distance, "metric": metric, "num_samples": int(levels.shape[0]),
                           "sampler": f"{hook_label(sampler)}:{key}",
                           "network_passes_per_sample": rows[0] / int(levels.shape[0])}
    if not (kid or floor):
        return out
    kid_metric = metric.replace("FID", "KID").replace("FD-", "KID-")
    reference = load_dataset(data.name, split=split, data_dir=data.data_dir)
    ref_features = torch.as_tensor(extractor.extract(reference.data, data.num_levels), dtype=torch.float64)
    kid_gen = torch.Generator().manual_seed(0)  # KID's subsets: their own stream, FD is unaffected

    def kid_of(features: Tensor) -> dict[str, Any]:
        return {**kernel_inception_distance(features, ref_features, num_subsets=kid_subsets,
                                            subset_size=kid_subset_size, generator=kid_gen), "metric": kid_metric}

    sample_features = torch.as_tensor(extractor.extract(levels, data.num_levels), dtype=torch.float64)
    if kid:
        out["kid"] = kid_of(sample_features)
    if floor:
        other = "train" if split != "train" else "test"
        held_out = load_dataset(data.name, split=other, data_dir=data.data_dir).data
        pick = torch.randperm(held_out.shape[0], generator=torch.Generator().manual_seed(1))[: levels.shape[0]]
        ((_, floor_fd),) = frechet_distance_to_dataset(held_out[pick], data.num_levels, extractor, data.name,
                                                       split, data_dir=data.data_dir).items()
        out["floor"] = {"fd": floor_fd, "num_samples": int(pick.numel()), "split": other}
        if kid:
            real = torch.as_tensor(extractor.extract(held_out[pick], data.num_levels), dtype=torch.float64)
            out["floor"]["kid"] = kid_of(real)
    return out
