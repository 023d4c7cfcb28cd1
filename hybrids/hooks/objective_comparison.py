"""Hooks that compare training objectives on one backbone: the objective's loss and the cost of an
update at the trained weights, plain Langevin sampling of a joint score model, and the sample MMD
of 2-D toys.

* ``objective_eval``: the training loss the objective gives at the trained weights (mean and
  standard deviation over independent batches of the training batch size, i.e. the spread an
  update-by-update loss curve shows at the end of training) and the wall time of one training
  update (forward, backward, Adam step) on a copy of the model.
* ``langevin_sampler``: overdamped Langevin on all coordinates at once with the model's joint
  score, started like ``ar_langevin_sampler`` (U[-1, 1] for images, N(0, I) for toys), so that a
  joint score model and an AR-CSM are sampled with the same step size and the same number of
  updates per coordinate.
* ``sample_mmd_eval``: the unbiased squared MMD (Gaussian kernels) between a sampler's points and
  the toy's test points, with the floor of as many held-out real points
  (``hybrids.metrics.mmd``); the image counterpart is ``sample_fd_eval``.
"""
from __future__ import annotations

import copy
import inspect
import math
import statistics
import time
from typing import Any, Callable, Sequence

import gin
import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset, load_dataset
from hybrids.hooks.base import evaluator, hook_label, sampler, samples_output
from hybrids.metrics.mmd import gaussian_mmd2_unbiased
from hybrids.samplers.langevin import langevin_sample
from hybrids.tensors import model_dtype, rand, randn
from hybrids.training import Trainer

REDUCTIONS = ("sum", "mean")
"""How an objective reduces over the D data dimensions: ``'sum'`` (SM, SSM, SSM-VR, DSM) or
``'mean'`` (CSM, which reports its loss per dimension; DSM with ``reduce_mean``)."""


def trainer_batch_size() -> int:
    """``Trainer.batch_size`` as gin binds it, else the Trainer's default."""
    try:
        return int(gin.query_parameter("Trainer.batch_size"))
    except ValueError:  # not bound
        return int(inspect.signature(Trainer.__init__).parameters["batch_size"].default)


def _draw_batch(data: ArrayDataset, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``batch_size`` examples of ``data`` drawn uniformly with replacement (levels or points)."""
    idx = torch.randint(data.data.shape[0], (batch_size,), generator=generator, device=generator.device).cpu()
    return data.data[idx].to(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@evaluator
def objective_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    objective: Callable[..., tuple[Tensor, dict]] = gin.REQUIRED,
    num_batches: int = 50,
    update_batch_size: int | None = None,
    timed_updates: int = 5,
    reduction: str = "sum",
) -> dict[str, Any]:
    """The objective's loss and the cost of one update at the trained weights.

    Loss: ``num_batches`` batches of ``update_batch_size`` test examples, drawn with replacement,
    each with fresh noise (and projections) from ``generator``; l_b = objective(model, batch_b) is
    what the Trainer would log for that update at these weights. Reported: their mean, sample
    standard deviation sd = sqrt(sum_b (l_b - mean)^2 / (n - 1)) and standard error sd / sqrt(n),
    as the objective returns them, per example (summed over the D data dimensions: times D when
    ``reduction`` is ``'mean'``) and per dimension (divided by D when it is ``'sum'``), so that
    objectives that sum and that average over dimensions compare.

    Time: one warm-up update, then the median wall time of ``timed_updates`` updates (zero_grad,
    objective, backward, Adam step) on a deep copy of the model in train mode; the model itself is
    not changed.

    Args:
        objective: the row's objective, e.g. ``objective_eval.objective = %OBJECTIVE``.
        num_batches: n >= 2 batches for the loss statistics.
        update_batch_size: examples per batch (None: ``Trainer.batch_size``, the training batch).
        timed_updates: updates timed (>= 1).
        reduction: ``'sum'`` or ``'mean'`` (``REDUCTIONS``): how the objective reduces over dimensions.

    Returns:
        ``{'loss', 'loss_per_example', 'loss_per_dim'`` (each ``{'mean', 'sd', 'se'}``),
        ``'seconds_per_update', 'num_batches', 'batch_size', 'num_dims', 'timed_updates'}``.

    Raises:
        ValueError: for ``reduction`` outside ``REDUCTIONS``, ``num_batches < 2`` or
            ``timed_updates < 1``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"objective_eval.reduction must be one of {REDUCTIONS} (how the objective reduces over "
                         f"data dimensions: 'mean' for CSM); got {reduction!r}.")
    if int(num_batches) < 2 or int(timed_updates) < 1:
        raise ValueError(f"objective_eval needs num_batches >= 2 (a standard deviation) and timed_updates >= 1; "
                         f"got num_batches={num_batches}, timed_updates={timed_updates}.")
    batch_size = trainer_batch_size() if update_batch_size is None else int(update_batch_size)
    num_dims = math.prod(data.data.shape[1:])
    losses = []
    with torch.no_grad():
        for _ in range(int(num_batches)):
            loss, _ = objective(model, _draw_batch(data, batch_size, generator, device), generator=generator)
            losses.append(float(loss))
    per_dim = 1 / num_dims if reduction == "sum" else 1  # factor from the returned loss to per dimension

    def summary(values: list[float]) -> dict[str, float]:
        sd = statistics.stdev(values)
        return {"mean": statistics.fmean(values), "sd": sd, "se": sd / math.sqrt(len(values))}

    work = copy.deepcopy(model).train()
    for p in work.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(work.parameters())
    times = []
    for _ in range(int(timed_updates) + 1):
        batch = _draw_batch(data, batch_size, generator, device)
        _synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective(work, batch, generator=generator)
        loss.backward()
        optimizer.step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return {"loss": summary(losses), "loss_per_example": summary([v * per_dim * num_dims for v in losses]),
            "loss_per_dim": summary([v * per_dim for v in losses]),
            "seconds_per_update": statistics.median(times[1:]), "num_batches": int(num_batches),
            "batch_size": batch_size, "num_dims": int(num_dims), "timed_updates": int(timed_updates)}


@sampler
def langevin_sampler(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int | None = None,
    num_steps: int | None = None,
    step_size: float = 1e-4,
    t: float | None = None,
) -> dict[str, Tensor]:
    """Overdamped Langevin x <- x + eps s(x, t) + sqrt(2 eps) z with the joint score
    (``hybrids.samplers.langevin.langevin_sample``), all coordinates at once.

    Images start from U[-1, 1], 2-D toys from N(0, I), as ``ar_langevin_sampler``; with the same
    ``step_size`` and ``num_steps`` each coordinate takes as many updates of the same size as the
    per-dimension sampler gives it.

    Args:
        num_samples: N (None: the budget's).
        num_steps: Langevin updates (None: the budget's).
        step_size: eps (keep it well below sigma^2 of the model's noise level).
        t: the time passed to a noise-conditional model's score (None: the model takes none).
    """
    shape = (int(num_samples), *data.shape)
    dtype = model_dtype(model)
    if data.num_levels is None:
        x = randn(shape, generator, dtype=dtype, device=device)
    else:
        x = 2 * rand(shape, generator, dtype=dtype, device=device) - 1
    t_vec = None if t is None else torch.full((shape[0],), float(t), dtype=dtype, device=device)
    x = langevin_sample(lambda v: model.score(v, t_vec), x, n_steps=num_steps, step_size=step_size,
                        generator=generator)
    return {"samples": samples_output(x, data.num_levels, "langevin_sampler")}


@evaluator
def sample_mmd_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    sampler: Callable[..., dict[str, Tensor]] = gin.REQUIRED,
    num_quality_samples: int | None = None,
    num_reference: int = 2000,
    bandwidths: Sequence[float] = (0.1, 0.3, 1.0),
    floor: bool = True,
) -> dict[str, Any]:
    """Unbiased squared MMD between ``sampler``'s points and the toy's test points (2-D toys).

    Args:
        sampler: a sampler hook returning points ``[N, d]`` under ``'samples'``.
        num_quality_samples: N points drawn (None: the budget's).
        num_reference: test points of the reference (the toy's seeded test split).
        bandwidths: Gaussian kernel bandwidths in data units (``hybrids.metrics.mmd``).
        floor: also report the MMD of the first N points of the training split (real points the
            sampler's N are compared with: what a perfect sampler would score).

    Returns:
        ``{'mmd2', 'num_samples', 'num_reference', 'bandwidths', 'sampler'}`` and ``'floor'``
        (``{'mmd2', 'num_samples', 'split'}``) when asked.

    Raises:
        ValueError: for image data (use ``sample_fd_eval``).
    """
    if data.num_levels is not None:
        raise ValueError(f"sample_mmd_eval compares points of 2-D toys; {data.name!r} holds images, for which "
                         "sample_fd_eval reports FD and KID.")
    points = sampler(model, data, device=device, generator=generator, num_samples=num_quality_samples)["samples"]
    reference = load_dataset(data.name, split="test", num_examples=int(num_reference)).data
    bandwidths = [float(h) for h in bandwidths]
    out: dict[str, Any] = {"mmd2": gaussian_mmd2_unbiased(points.cpu(), reference, bandwidths),
                           "num_samples": int(points.shape[0]), "num_reference": int(reference.shape[0]),
                           "bandwidths": bandwidths, "sampler": hook_label(sampler)}
    if floor:
        real = load_dataset(data.name, split="train", num_examples=int(points.shape[0])).data
        out["floor"] = {"mmd2": gaussian_mmd2_unbiased(real, reference, bandwidths),
                        "num_samples": int(real.shape[0]), "split": "train"}
    return out
