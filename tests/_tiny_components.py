"""Test-only gin configurables: a tiny discrete model, its objective, an evaluator and samplers.

``TinyCategorical`` is an independent categorical distribution per pixel over K levels,
p(k) = prod_d softmax(logits_d)[k_d]; its maximum-likelihood solution is the empirical per-pixel
level frequency, so a trained model's NLL can be checked against closed forms. Registered under
gin module 'tests' (bind them as ``TinyCategorical``, ``TinyNLL``, ...). Import this module only
as ``tests._tiny_components`` so that gin registers each name once.
"""
from __future__ import annotations

from pathlib import Path

import math

import gin
import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset
from hybrids.models.base import NoiseConditionalModel


@gin.configurable(module="tests")
class TinyCategorical(NoiseConditionalModel):
    """Independent per-pixel categorical over K levels; ``logits``: ``[C, H, W, K]``."""

    def __init__(self, shape: tuple[int, ...] = (1, 8, 8), num_levels: int = 17):
        super().__init__()
        self.num_levels = num_levels
        self.logits = nn.Parameter(torch.zeros(*shape, num_levels))

    def discrete_log_prob(self, k: Tensor) -> Tensor:
        """log p(k) = sum_d log softmax(logits_d)[k_d]; ``k``: int ``[B, C, H, W]`` -> ``[B]``."""
        log_p = torch.log_softmax(self.logits, dim=-1)
        picked = log_p.expand(k.shape[0], *log_p.shape).gather(-1, k.unsqueeze(-1)).squeeze(-1)
        return picked.flatten(1).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws, int64 ``[n, C, H, W]``."""
        probs = torch.softmax(self.logits.detach(), dim=-1).reshape(-1, self.num_levels)
        draws = torch.multinomial(probs, n, replacement=True, generator=generator)  # [D, n]
        return draws.T.reshape(n, *self.logits.shape[:-1])


@gin.configurable(module="tests")
class TinyNLL:
    """Objective: mean negative log-likelihood in nats; metrics: ``nll`` and ``bpd``."""

    def __init__(self, num_levels: int | None = 17, scale: float = 1.0):
        self.num_levels = num_levels
        self.scale = scale

    def __call__(self, model: NoiseConditionalModel, batch) -> tuple[Tensor, dict[str, float]]:
        k = batch[0] if isinstance(batch, (tuple, list)) else batch
        nll = -model.discrete_log_prob(k)
        loss = self.scale * nll.mean()
        return loss, {"nll": nll.mean().item(), "bpd": nll.mean().item() / (k[0].numel() * math.log(2))}


@gin.configurable(module="tests")
def tiny_nll_eval(model, data, *, device, generator, num_examples: int = 128) -> dict:
    """Evaluator: test NLL (nats) and the NLL of the uniform distribution, D log K."""
    k = data.data[:num_examples].to(device)
    with torch.no_grad():
        nll = -model.discrete_log_prob(k).mean().item()
    return {"nll": nll, "uniform_nll": k[0].numel() * math.log(data.num_levels), "n": int(k.shape[0])}


@gin.configurable(module="tests")
def tiny_sampler(model, data, *, device, generator, num_samples: int = 16) -> dict:
    """Sampler: image levels ``[N, C, H, W]`` and a 2-D projection for the scatter writer."""
    k = model.sample(num_samples, generator=None)
    u = torch.rand(num_samples, 2, generator=generator, device=device)
    return {"images": k, "points": u}


@gin.configurable(module="tests")
def fake_levels(split: str = "train", data_dir=None, num_examples: int | None = None,
                size: int = 256, num_levels: int = 5) -> ArrayDataset:
    """A random integer-level dataset ``[size, 1, 4, 4]`` (no files needed)."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = num_examples or size
    data = torch.randint(0, num_levels, (n, 1, 4, 4), generator=g)
    return ArrayDataset(name="fake_levels", data=data, labels=None, num_levels=num_levels)


def ddp_train_worker(rank: int, world: int, port: int, workdir: str, data: Tensor, trainer_kw: dict) -> None:
    """One DDP rank (for torch.multiprocessing.spawn): train TinyCategorical with the gloo backend.

    Sets the torchrun environment (MASTER_ADDR/PORT, WORLD_SIZE, RANK, LOCAL_RANK) so that the
    Trainer initialises the process group itself, exactly as under ``torchrun``.
    """
    import os

    import torch.distributed as dist

    from hybrids.training import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(7)
    model = TinyCategorical(shape=tuple(data.shape[1:]), num_levels=int(data.max()) + 1)
    try:
        Trainer(**trainer_kw).fit(model, TinyNLL(model.num_levels), data, workdir)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


TINY_GIN = str(Path(__file__).resolve().parent / "gin" / "tiny.gin")
FAST_BINDINGS = ["Trainer.num_steps = 4", "Trainer.eval_every = 0", "Trainer.sample_every = 0",
                 "Trainer.log_every = 2", "Trainer.checkpoint_every = 4"]


def tiny_trainer(**kw):
    """A Trainer for the tiny categorical model: 6 updates of batch 8, a checkpoint every update."""
    from hybrids.training import Trainer

    base = dict(num_steps=6, batch_size=8, lr=0.1, warmup_steps=0, grad_clip=None, ema_decay=0.5,
                log_every=1, checkpoint_every=1, keep_checkpoints=100)
    base.update(kw)
    return Trainer(**base)


class IIDLevels(nn.Module):
    """Every pixel i.i.d. with level probabilities ``probs [K]``: an exact discrete likelihood."""

    def __init__(self, probs):
        super().__init__()
        self.log_probs = probs.log()

    def discrete_log_prob(self, k):
        return self.log_probs[k].flatten(1).sum(1)
