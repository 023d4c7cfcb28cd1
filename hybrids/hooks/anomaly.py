"""Anomaly-detection evaluators: the AUROC of a score-norm detector (autoregressive score models)
and of a likelihood detector (density models), on the same test images and OOD sets
(``hybrids.metrics.anomaly.OOD_SETS``: uniform-noise, inverted and upside-down images)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset, dequantize
from hybrids.hooks.base import evaluator
from hybrids.likelihood.units import nats_to_bpd
from hybrids.metrics.anomaly import OOD_SETS, auroc, ood_levels
from hybrids.tensors import map_in_batches, model_dtype, randn_like


@evaluator
def score_norm_anomaly_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    sigma: float = 0.0,
    ood: Sequence[str] = OOD_SETS,
    num_examples: int | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    """AUROC of the anomaly score ||s(x)||_2 of an AR score model (higher = more anomalous).

    In-distribution: the first ``num_examples`` test images; the OOD sets are built from the same
    images. All inputs are dequantized and perturbed with N(0, sigma^2) noise, sigma the training
    noise of the model. AUROC is the probability that an OOD input scores above an
    in-distribution one.

    Returns:
        ``auroc_<set>`` and ``mean_norm_<set>`` per OOD set, ``mean_norm_in``.
    """
    if data.num_levels is None:
        raise ValueError("score_norm_anomaly_eval builds its OOD sets from images (integer levels)")
    dtype = model_dtype(model)
    k = data.data[:num_examples].to(device)

    def norms(levels: Tensor) -> Tensor:
        x = dequantize(levels, data.num_levels, generator, dtype=dtype)
        if sigma > 0:
            x = x + sigma * randn_like(x, generator)
        s = map_in_batches(lambda chunk: model.conditional_scores(chunk, None)[0], x, batch_size)
        return s.flatten(1).norm(dim=1)

    s_in = norms(k)
    out: dict[str, float] = {"mean_norm_in": float(s_in.mean())}
    for name in ood:
        s_out = norms(ood_levels(name, k, data.num_levels, generator))
        out[f"auroc_{name}"] = auroc(s_in, s_out)
        out[f"mean_norm_{name}"] = float(s_out.mean())
    return out


@evaluator
def density_anomaly_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    ood: Sequence[str] = OOD_SETS,
    num_examples: int | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    """AUROC of the likelihood detector -log P_theta(k) in bits/dim (higher = more anomalous).

    The density models' counterpart of ``score_norm_anomaly_eval``, on the same in-distribution
    images and OOD sets, scored by the model's exact discrete likelihood ``discrete_log_prob``.

    Returns:
        ``auroc_<set>`` and ``mean_bpd_<set>`` per OOD set, ``mean_bpd_in``.
    """
    if data.num_levels is None:
        raise ValueError("density_anomaly_eval builds its OOD sets from images (integer levels)")
    if not hasattr(model, "discrete_log_prob"):
        raise TypeError(f"density_anomaly_eval needs a model with discrete_log_prob (a density model); "
                        f"{type(model).__name__} has none: use score_norm_anomaly_eval for score models.")
    k = data.data[:num_examples].to(device)
    dims = k[0].numel()

    def bpd(levels: Tensor) -> Tensor:
        return nats_to_bpd(-map_in_batches(model.discrete_log_prob, levels, batch_size), dims)

    b_in = bpd(k)
    out: dict[str, float] = {"mean_bpd_in": float(b_in.mean())}
    for name in ood:
        b_out = bpd(ood_levels(name, k, data.num_levels, generator))
        out[f"auroc_{name}"] = auroc(b_in, b_out)
        out[f"mean_bpd_{name}"] = float(b_out.mean())
    return out
