"""Heads of autoregressive conditional score models (AR-CSM).

Meng, Yu, Song, Song and Ermon, "Autoregressive Score Matching", NeurIPS 2020.

An AR-CSM parametrises the univariate conditional score s_d = d/dx_d log q(x_d | x_<d) as

    s_d = h(x_d, c_d),

where c_d is a causal context computed from x_<d by a masked backbone (MADE, PixelCNN++) and h is a
small network applied *per position* to [x_d, c_d]. Because nothing mixes positions after x_d
enters h, d s_d / d x_d for all d comes from one backward pass of sum_d h(x_d, c_d) with respect
to a separate leaf copy of x (``diagonal_conditional_scores``). Smooth activations (softplus, ELU,
SiLU) keep ds_d/dx_d informative; ReLU makes it piecewise constant and is rejected.

The contract (``context``, ``head``, ``to_sequence``/``from_sequence`` and the derived
``conditional_scores``) is :class:`hybrids.models.base.ARConditionalScoreModel`. This module holds:

* :class:`ConditionalScoreHead`: the shared per-position MLP h (MADE and PixelCNN++ backbones);
* :class:`PixelCNNConditionalScore`: an AR-CSM on the PixelCNN++ backbone with a 1x1 head
  (Salimans, Karpathy, Chen and Kingma, "PixelCNN++", ICLR 2017);
* re-exported from ``hybrids.models.base``: :func:`diagonal_conditional_scores`, the
  one-backward evaluation of (s, ds/dx) used by every AR-CSM model, and
  ``AR_CSM_SCORE_MESSAGE``.
"""
from __future__ import annotations

from typing import Sequence

import gin
import torch
from torch import Tensor, nn

# AR_CSM_SCORE_MESSAGE and diagonal_conditional_scores are re-exported (their old home).
from hybrids.models.base import (  # noqa: F401
    AR_CSM_SCORE_MESSAGE,
    ARConditionalScoreModel,
    diagonal_conditional_scores,
)

SMOOTH_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


def smooth_activation(name: str) -> nn.Module:
    """A smooth activation module by name ('softplus', 'elu' or 'silu').

    Raises:
        ValueError: for an unknown name (ReLU included: its second derivative vanishes, so the
            CSM term ds_d/dx_d would be piecewise constant in x_d).
    """
    if name not in SMOOTH_ACTIVATIONS:
        raise ValueError(
            f"activation {name!r} is not supported; choose one of {sorted(SMOOTH_ACTIVATIONS)}. "
            "AR-CSM needs smooth activations (with ReLU, ds_d/dx_d is piecewise constant)."
        )
    return SMOOTH_ACTIVATIONS[name]()


class ConditionalScoreHead(nn.Module):
    """Per-position MLP h: s_d = h(x_d, c_d), weights shared over positions d.

    Args:
        context_features: F, the width of c_d.
        hidden: widths of the hidden layers of h.
        activation: 'softplus', 'elu' or 'silu'.
        extra_inputs: number of extra per-position scalars concatenated to x_d (the RGB channel
            coupling of PixelCNN-style backbones uses it; 0 for MADE).
    """

    def __init__(
        self,
        context_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "softplus",
        extra_inputs: int = 0,
    ):
        super().__init__()
        if context_features < 1:
            raise ValueError(f"context_features must be >= 1, got {context_features}")
        widths = [1 + extra_inputs + context_features, *hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), smooth_activation(activation)]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x_d: Tensor, c: Tensor, extra: Tensor | None = None) -> Tensor:
        """Evaluate h position-wise.

        Args:
            x_d: ``[B, K]`` values of the K positions being scored.
            c: ``[B, K, F]`` their causal contexts.
            extra: ``[B, K, E]`` extra per-position inputs, or None.

        Returns:
            ``[B, K]`` conditional scores s_d = h(x_d, c_d).
        """
        if c.shape[:-1] != x_d.shape:
            raise ValueError(
                f"context of shape {tuple(c.shape)} does not match x_d of shape "
                f"{tuple(x_d.shape)}; expected [B, K, F] with [B, K] = x_d.shape"
            )
        parts = [x_d.unsqueeze(-1), c] + ([] if extra is None else [extra])
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1)


@gin.configurable(module="hybrids.models")
class PixelCNNConditionalScore(ARConditionalScoreModel):
    """AR-CSM on the PixelCNN++ backbone: s_d = h(x_d, c_d) with a 1x1 (per-pixel) head.

    Variable order: pixels in raster order, channels R -> G -> B within a pixel (sequence index
    d = (row W + col) C + channel; for C = 1 plain raster order). The causal context of channel c
    of pixel i is c_d = [backbone output at pixel i (for PixelCNN++ its mixture parameters, a
    function of the pixels before i only), one-hot(c), (x_{i,j} if j < c else 0)_j]; the last
    part is the RGB coupling: the head of G also sees x_R, the head of B sees x_R and x_G (for
    C = 1 only the backbone output is used). Every part of c_d depends on variables before d, so
    the one-backward diagonal applies. The head is the per-position MLP of
    :class:`ConditionalScoreHead` (equivalent to 1x1 convolutions). ``conditional_scores`` comes
    from :class:`hybrids.models.base.ARConditionalScoreModel`; it returns sequences ``[B, D]``
    for sequence inputs and images for image inputs.

    Args:
        image_shape: (C, H, W).
        head_hidden: hidden widths of the 1x1 head.
        activation: smooth activation of the head.
        backbone_kwargs: keyword arguments of ``hybrids.models.pixelcnnpp.PixelCNNpp``
            (nr_filters, nr_resnet, nr_logistic_mix, dropout, ...).
        backbone: a ready causal network ``net(x [B, C, H, W]) -> [B, P, H, W]`` whose output at
            pixel i depends on the pixels before i only (default: PixelCNNpp).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        head_hidden: Sequence[int] = (64, 64),
        activation: str = "softplus",
        backbone_kwargs: dict | None = None,
        backbone: nn.Module | None = None,
    ):
        super().__init__()
        image_shape = tuple(int(v) for v in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        if backbone is None:
            from hybrids.models.pixelcnnpp import PixelCNNpp

            backbone = PixelCNNpp(image_shape, **(backbone_kwargs or {}))
        elif backbone_kwargs:
            raise ValueError("pass either backbone or backbone_kwargs, not both")
        self.image_shape = image_shape
        self.dim = image_shape[0] * image_shape[1] * image_shape[2]
        self.backbone = backbone
        with torch.no_grad():
            probe = self.backbone(torch.zeros(1, *image_shape))
        channels = image_shape[0]
        self.context_features = probe.shape[1] + (2 * channels if channels > 1 else 0)
        self.score_head = ConditionalScoreHead(self.context_features, head_hidden, activation)

    def to_sequence(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` (or sequences ``[B, D]``) -> sequences ``[B, D]`` in AR order.

        Raises:
            ValueError: for any other shape.
        """
        if tuple(x.shape[1:]) == (self.dim,):
            return x
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected x of shape [B, {self.dim}] or [B, {', '.join(map(str, self.image_shape))}]"
                f", got {tuple(x.shape)}"
            )
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], self.dim)

    def from_sequence(self, x_seq: Tensor, shape: Sequence[int] | None = None) -> Tensor:
        """Sequences ``[B, D]`` in AR order -> images ``[B, C, H, W]``.

        Args:
            x_seq: ``[B, D]``.
            shape: ``None`` or ``[B, C, H, W]``: images; ``[B, D]``: ``x_seq`` itself (sequences
                stay in AR order, as ``to_sequence`` takes them).

        Raises:
            ValueError: for a ``shape`` that is neither.
        """
        if shape is not None and tuple(shape[1:]) == (self.dim,):
            return x_seq
        if shape is not None and tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"shape must be [B, {self.dim}] or [B, {', '.join(map(str, self.image_shape))}]"
                f", got {tuple(shape)}"
            )
        c, h, w = self.image_shape
        return x_seq.reshape(x_seq.shape[0], h, w, c).permute(0, 3, 1, 2)

    def context(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Causal contexts ``[B, D, F]`` (AR order) of x ``[B, D]`` (AR order) or ``[B, C, H, W]``."""
        img = self.from_sequence(self.to_sequence(x))
        params = self.backbone(img).flatten(2).transpose(1, 2)  # [B, HW, P]
        channels = self.image_shape[0]
        if channels == 1:
            return params
        batch, pixels = params.shape[:2]
        per_channel = params.unsqueeze(2).expand(batch, pixels, channels, params.shape[-1])
        eye = torch.eye(channels, dtype=params.dtype, device=params.device)
        onehot = eye.expand(batch, pixels, channels, channels)
        earlier = torch.tril(torch.ones_like(eye), diagonal=-1)  # [c, j] = 1 if j < c
        values = img.flatten(2).transpose(1, 2)  # [B, HW, C]
        coupling = values.unsqueeze(2) * earlier  # [B, HW, c, j] = x_j 1[j < c]
        feats = torch.cat([per_channel, onehot, coupling], dim=-1)
        return feats.reshape(batch, pixels * channels, self.context_features)

    def head(self, x_d: Tensor, c: Tensor, t: Tensor | None = None) -> Tensor:
        """s_d = h(x_d, c_d) for x_d ``[B, K]``, c ``[B, K, F]`` -> ``[B, K]`` (t unused)."""
        return self.score_head(x_d, c)
