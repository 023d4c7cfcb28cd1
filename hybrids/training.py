"""Trainer: Adam with warmup and decay, gradient clipping, EMA, atomic resumable checkpoints, DDP.

The training loop is method-agnostic: it minimises ``objective(model, batch) -> (loss, metrics)``
over mini-batches of a data tensor. What it does per update n = 1, 2, ... (``step`` counts completed
updates):

* learning rate lr_n = lr * min(1, n / warmup_steps) * lr_decay^(n - 1) (linear warmup as in
  score_sde; per-step multiplicative decay as in PixelCNN++, which uses lr_decay = 0.999995);
* global-norm clipping of the gradient to ``grad_clip`` (``None`` disables);
* Adam (weight decay 0);
* EMA of the parameters, ema <- decay * ema + (1 - decay) * theta (buffers copied); the EMA copy is
  what evaluation, sampling and ``load_ema`` use.

Data order is a pure function of (seed, step): epoch e = step // steps_per_epoch uses the
permutation ``torch.randperm(N)`` drawn from a generator seeded with ``seed`` and e, so a resumed
run sees exactly the batches the uninterrupted run would have seen. The global RNG state (used by
objectives for noise and by dropout) is saved in each checkpoint and restored on resume.

Distributed data parallel: when launched by ``torchrun`` (environment ``WORLD_SIZE`` > 1) the
process group is initialised (gloo on CPU, nccl on CUDA), each rank takes a contiguous 1/world
shard of the global batch, and a module whose ``forward(batch)`` calls ``objective(model, batch)``
is wrapped in ``DistributedDataParallel`` (objectives call ``model.log_prob``/``score``, not
``forward``, so DDP must wrap the objective call). Gradients are averaged over ranks, so the update
equals the single-process update on the global batch. Rank 0 logs and writes checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import gin
import torch
import torch.distributed as dist
from torch import Tensor, nn

from hybrids.io import append_jsonl, atomic_torch_save, truncate_jsonl

Objective = Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]
StepHook = Callable[[int, nn.Module], dict[str, float] | None]

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly) distributed run, read from torchrun's environment."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (defaults: a single process)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world}).")
        return cls(world, rank, local)


def lr_factor(update: int, warmup_steps: int, lr_decay: float) -> float:
    """Multiplier of the base learning rate at update n (1-based): min(1, n / warmup) * decay^(n-1)."""
    warm = 1.0 if warmup_steps <= 0 else min(1.0, update / warmup_steps)
    return warm * lr_decay ** (update - 1)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema_p <- decay * ema_p + (1 - decay) * p for parameters; buffers are copied.

    Args:
        ema: the averaged copy (same architecture as ``model``).
        model: the trained model.
        decay: in [0, 1]; 0 copies the model.
    """
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def latest_checkpoint(workdir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``workdir/checkpoints``, or None."""
    ckpt_dir = Path(workdir) / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (tensors and plain values only; ``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def load_ema(model: nn.Module, workdir: str | os.PathLike) -> int:
    """Load the latest checkpoint's EMA weights into ``model``.

    Returns:
        The step of that checkpoint.

    Raises:
        FileNotFoundError: if ``workdir`` holds no checkpoint.
    """
    path = latest_checkpoint(workdir)
    if path is None:
        raise FileNotFoundError(
            f"no checkpoint in {Path(workdir) / CHECKPOINT_DIR}; train first (--mode=train or --mode=all)."
        )
    state = load_checkpoint(path)
    load_weights(model, state["ema"], path)
    return int(state["step"])


def load_weights(model: nn.Module, state_dict: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict`` with an error that says what to do when the checkpoint in the
    workdir was written by a different configuration (other network sizes or model class).

    Raises:
        ValueError: the checkpoint's parameters do not fit ``model``.
    """
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise ValueError(
            f"the checkpoint {path} does not fit the configured model (it was written by a different "
            "configuration); use a new --workdir, or the gin files and bindings of that run (its "
            f"operative_config.gin). torch said: {str(err).splitlines()[0]}"
        ) from err


class _ObjectiveModule(nn.Module):
    """Holds the model so that DDP can wrap the objective call: forward(batch) = objective(model, batch)."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        return self.objective(self.model, batch)


def _metric_value(value: Any) -> float:
    return float(value.detach().float().mean().item()) if isinstance(value, Tensor) else float(value)


@gin.configurable(module="hybrids", denylist=["device"])
class Trainer:
    """Optimisation loop shared by every hybrids objective (see the module docstring).

    Args:
        num_steps: total number of updates.
        batch_size: global batch size (split evenly over DDP ranks).
        lr: base learning rate of Adam.
        betas: Adam betas.
        eps: Adam epsilon.
        warmup_steps: linear warmup length in updates (0: none).
        lr_decay: per-update multiplicative decay of the learning rate (1.0: none).
        grad_clip: maximum global gradient norm (``None``: no clipping).
        ema_decay: decay of the parameter EMA.
        seed: seeds the data order and, via ``seed_everything``, parameter initialisation.
        log_every: write averaged metrics every this many updates.
        eval_every: call the eval hook every this many updates (0: never during training).
        sample_every: call the sample hook every this many updates (0: never during training).
        checkpoint_every: write a checkpoint every this many updates (and always at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        bf16: run the objective under bfloat16 autocast (CUDA only).
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``; set by the runner, not by gin. Under DDP on
            CUDA each rank uses ``cuda:LOCAL_RANK``.
    """

    def __init__(
        self,
        num_steps: int = 1_300_000,
        batch_size: int = 128,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int = 5000,
        lr_decay: float = 1.0,
        grad_clip: float | None = 1.0,
        ema_decay: float = 0.9999,
        seed: int = 0,
        log_every: int = 100,
        eval_every: int = 0,
        sample_every: int = 0,
        checkpoint_every: int = 10_000,
        keep_checkpoints: int = 3,
        bf16: bool = False,
        device: str | torch.device = "cpu",
    ):
        for name, value in [("num_steps", num_steps), ("batch_size", batch_size),
                            ("log_every", log_every), ("checkpoint_every", checkpoint_every),
                            ("keep_checkpoints", keep_checkpoints)]:
            if int(value) < 1:
                raise ValueError(f"Trainer.{name} must be >= 1; got {value}.")
        for name, value in [("warmup_steps", warmup_steps), ("eval_every", eval_every),
                            ("sample_every", sample_every)]:
            if int(value) < 0:
                raise ValueError(f"Trainer.{name} must be >= 0 (0 disables); got {value}.")
        if not lr > 0:
            raise ValueError(f"Trainer.lr must be positive; got {lr}.")
        if not 0.0 < lr_decay <= 1.0:
            raise ValueError(f"Trainer.lr_decay must be in (0, 1]; got {lr_decay}.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"Trainer.ema_decay must be in [0, 1); got {ema_decay}.")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"Trainer.grad_clip must be positive or None (no clipping); got {grad_clip}.")
        self.num_steps = int(num_steps)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.warmup_steps = int(warmup_steps)
        self.lr_decay = float(lr_decay)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.ema_decay = float(ema_decay)
        self.seed = int(seed)
        self.log_every = int(log_every)
        self.eval_every = int(eval_every)
        self.sample_every = int(sample_every)
        self.checkpoint_every = int(checkpoint_every)
        self.keep_checkpoints = int(keep_checkpoints)
        self.dist = DistInfo.from_env()
        self.device = self._resolve_device(device)
        if bf16 and self.device.type != "cuda":
            raise ValueError("Trainer.bf16 = True needs a CUDA device (--device=cuda); on CPU leave it False.")
        self.bf16 = bool(bf16)
        if self.batch_size % self.dist.world_size:
            raise ValueError(
                f"Trainer.batch_size = {self.batch_size} is the global batch and must be divisible by "
                f"the number of DDP processes ({self.dist.world_size})."
            )

    def _resolve_device(self, device: str | torch.device) -> torch.device:
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {device} requested but CUDA is not available; use --device=cpu.")
            if self.dist.distributed:
                device = torch.device("cuda", self.dist.local_rank)
        elif device.type != "cpu":
            raise ValueError(f"unsupported device {device}; use 'cpu', 'cuda' or 'cuda:N'.")
        return device

    def seed_everything(self) -> None:
        """Seed torch's global RNG with ``seed`` (call before building the model for identical init)."""
        torch.manual_seed(self.seed)

    # ----------------------------------------------------------------------------------------
    # Data order
    def batch_indices(self, step: int, num_examples: int) -> Tensor:
        """Indices of this rank's share of the global batch for update ``step + 1`` (0-based step).

        Epoch e = step // (N // B) uses ``randperm(N)`` from a generator seeded with seed and e;
        the global batch is its slice [j B, (j + 1) B), and rank r takes the contiguous r-th
        1/world of it.
        """
        steps_per_epoch = num_examples // self.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"the training set has {num_examples} examples, fewer than Trainer.batch_size = "
                f"{self.batch_size}; lower the batch size."
            )
        epoch, j = divmod(step, steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(num_examples, generator=generator)
        batch = perm[j * self.batch_size : (j + 1) * self.batch_size]
        local = self.batch_size // self.dist.world_size
        return batch[self.dist.rank * local : (self.dist.rank + 1) * local]

    # ----------------------------------------------------------------------------------------
    def _init_process_group(self) -> None:
        if self.dist.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)

    def _barrier(self) -> None:
        if self.dist.distributed:
            dist.barrier()

    def _checkpoint_state(self, step: int, model: nn.Module, ema: nn.Module, optimizer, scheduler) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "gin_config": gin.operative_config_str(),
        }

    def _save_checkpoint(self, workdir: Path, state: dict) -> None:
        self._barrier()
        if self.dist.is_main:
            ckpt_dir = workdir / CHECKPOINT_DIR
            atomic_torch_save(state, ckpt_dir / f"ckpt_{state['step']:08d}.pt")
            found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name)))
            for _, old in found[: -self.keep_checkpoints]:
                old.unlink()
        self._barrier()

    def fit(
        self,
        model: nn.Module,
        objective: Objective,
        data: Tensor,
        workdir: str | os.PathLike,
        *,
        labels: Tensor | None = None,
        eval_hook: StepHook | None = None,
        sample_hook: StepHook | None = None,
        writer: Any = None,
    ) -> nn.Module:
        """Train ``model`` on ``data`` until ``num_steps`` updates, resuming from ``workdir``.

        Args:
            model: the model (its parameters are trained in place; moved to the device).
            objective: ``objective(model, batch) -> (loss, metrics)``.
            data: training examples ``[N, ...]`` (kept on the CPU; batches are moved).
            workdir: run directory; checkpoints go to ``workdir/checkpoints`` and the latest one
                is resumed automatically; metrics go to ``workdir/metrics.jsonl``.
            labels: optional ``[N]`` labels; batches are then ``(x, y)`` tuples.
            eval_hook: ``hook(step, ema_model) -> dict | None`` called every ``eval_every``
                updates on rank 0; returned scalars are logged.
            sample_hook: the same, every ``sample_every`` updates.
            writer: optional tensorboardX ``SummaryWriter`` (rank 0).

        Returns:
            The EMA model (on the device, eval mode).

        Raises:
            FloatingPointError: if a loss is NaN or infinite (names the step and the metrics).
        """
        workdir = Path(workdir)
        self._init_process_group()
        model = model.to(self.device)
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, betas=self.betas, eps=self.eps,
                                     weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: lr_factor(i + 1, self.warmup_steps, self.lr_decay))

        step = 0
        ckpt_path = latest_checkpoint(workdir)
        if ckpt_path is not None:
            state = load_checkpoint(ckpt_path, map_location=self.device)
            load_weights(model, state["model"], ckpt_path)
            load_weights(ema, state["ema"], ckpt_path)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
            step = int(state["step"])
        if self.dist.is_main:
            workdir.mkdir(parents=True, exist_ok=True)
            # Records logged after the resumed checkpoint belong to steps that are redone now.
            truncate_jsonl(workdir / METRICS_FILE, lambda r: r.get("step", 0) <= step)

        wrapped: nn.Module = _ObjectiveModule(model, objective)
        if self.dist.distributed:
            wrapped = nn.parallel.DistributedDataParallel(
                wrapped, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        sums: dict[str, float] = {}
        count = 0
        t_last = time.time()
        model.train()
        while step < self.num_steps:
            idx = self.batch_indices(step, data.shape[0])
            x = data[idx].to(self.device, non_blocking=True)
            batch = x if labels is None else (x, labels[idx].to(self.device, non_blocking=True))
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss, metrics = wrapped(batch)
            if loss.ndim != 0:
                raise ValueError(f"the objective must return a scalar loss; got shape {tuple(loss.shape)}.")
            if not torch.isfinite(loss):
                shown = {k: _metric_value(v) for k, v in metrics.items()}
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at update {step + 1} (after {step} completed "
                    f"updates); metrics: {shown}. Lower Trainer.lr, raise Trainer.warmup_steps, or "
                    "set Trainer.grad_clip."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            # With max_norm = inf the gradient is only measured (its scale factor is exactly 1).
            max_norm = math.inf if self.grad_clip is None else self.grad_clip
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            lr_now = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            ema_update(ema, model, self.ema_decay)
            step += 1

            # The optimised loss is logged as "loss"; an objective's own "loss" metric is the same
            # quantity and is not added twice.
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in metrics.items():
                if k != "loss":
                    sums[k] = sums.get(k, 0.0) + _metric_value(v)
            count += 1
            if self.dist.is_main and step % self.log_every == 0:
                now = time.time()
                record = {k: v / count for k, v in sums.items()}
                record.update(step=step, lr=lr_now, grad_norm=float(grad_norm),
                              steps_per_s=count / max(now - t_last, 1e-9))
                self._log(workdir, writer, step, record, prefix="train")
                sums, count, t_last = {}, 0, now
            for every, hook, name in ((self.eval_every, eval_hook, "eval"),
                                      (self.sample_every, sample_hook, "sample")):
                if hook is not None and every and step % every == 0 and self.dist.is_main:
                    out = hook(step, ema)
                    if out:
                        self._log(workdir, writer, step, dict(out, step=step), prefix=name)
            if step % self.checkpoint_every == 0 or step == self.num_steps:
                self._save_checkpoint(workdir, self._checkpoint_state(step, model, ema, optimizer, scheduler))
        if writer is not None:
            writer.flush()
        return ema.eval()

    @staticmethod
    def _log(workdir: Path, writer: Any, step: int, record: dict[str, Any], prefix: str) -> None:
        append_jsonl(workdir / METRICS_FILE, dict(record, kind=prefix))
        if writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"{prefix}/{key}", value, step)
