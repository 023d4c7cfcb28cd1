"""Causal building blocks of PixelCNN++ (Salimans et al. 2017) and PixelSNAIL attention.

Conventions: feature maps are ``[B, F, H, W]``; the autoregressive order is raster (row, then
column). The "down" (vertical) stream at (r, c) may see rows < r only; the "down-right"
(horizontal) stream at (r, c) may see every pixel before (r, c) in raster order. Convolutions are
plain (no weight normalisation) unless ``weight_norm=True``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def concat_elu(x: Tensor) -> Tensor:
    """ELU of [x, -x] along channels: ``[B, F, ...] -> [B, 2F, ...]``."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x: Tensor) -> Tensor:
    """Shift a map one row down (zeros in the first row)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: Tensor) -> Tensor:
    """Shift a map one column right (zeros in the first column)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def _maybe_weight_norm(module: nn.Module, weight_norm: bool) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(module) if weight_norm else module


class DownShiftedConv2d(nn.Module):
    """Convolution whose output at row r sees input rows r - fh + 1 .. r, centred columns.

    Padded (left, right, top) = ((fw - 1) / 2, (fw - 1) / 2, fh - 1); with stride 2 the output
    is ``ceil(H / 2) x ceil(W / 2)``.
    """

    def __init__(self, c_in: int, c_out: int, filter_size: tuple[int, int] = (2, 3),
                 stride: int = 1, weight_norm: bool = False):
        super().__init__()
        fh, fw = filter_size
        self.pad = ((fw - 1) // 2, (fw - 1) // 2, fh - 1, 0)
        conv = nn.Conv2d(c_in, c_out, filter_size, stride=stride)
        self.conv = _maybe_weight_norm(conv, weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class DownRightShiftedConv2d(nn.Module):
    """Convolution whose output at (r, c) sees rows r - fh + 1 .. r and columns c - fw + 1 .. c."""

    def __init__(self, c_in: int, c_out: int, filter_size: tuple[int, int] = (2, 2),
                 stride: int = 1, weight_norm: bool = False):
        super().__init__()
        fh, fw = filter_size
        self.pad = (fw - 1, 0, fh - 1, 0)
        conv = nn.Conv2d(c_in, c_out, filter_size, stride=stride)
        self.conv = _maybe_weight_norm(conv, weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class _ShiftedDeconv2d(nn.Module):
    """Stride-2 transposed convolution (``h x w`` to ``2h x 2w``) followed by a crop that keeps a
    shifted receptive field; ``forward(x, size)`` crops further to ``size`` (odd sizes)."""

    def __init__(self, c_in: int, c_out: int, filter_size: tuple[int, int], weight_norm: bool = False):
        super().__init__()
        self.filter_size = filter_size
        self.deconv = _maybe_weight_norm(
            nn.ConvTranspose2d(c_in, c_out, filter_size, stride=2, output_padding=1), weight_norm
        )

    def _crop(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self._crop(self.deconv(x))[:, :, : size[0], : size[1]]


class DownShiftedDeconv2d(_ShiftedDeconv2d):
    """Transposed convolution cropped to keep the down-shifted receptive field (centred columns)."""

    def __init__(self, c_in: int, c_out: int, filter_size: tuple[int, int] = (2, 3),
                 weight_norm: bool = False):
        super().__init__(c_in, c_out, filter_size, weight_norm)

    def _crop(self, y: Tensor) -> Tensor:
        fh, fw = self.filter_size
        h, w = y.shape[2], y.shape[3]
        return y[:, :, : h - fh + 1, (fw - 1) // 2 : w - (fw - 1) // 2]


class DownRightShiftedDeconv2d(_ShiftedDeconv2d):
    """Transposed convolution cropped to keep the down-right receptive field."""

    def __init__(self, c_in: int, c_out: int, filter_size: tuple[int, int] = (2, 2),
                 weight_norm: bool = False):
        super().__init__(c_in, c_out, filter_size, weight_norm)

    def _crop(self, y: Tensor) -> Tensor:
        fh, fw = self.filter_size
        h, w = y.shape[2], y.shape[3]
        return y[:, :, : h - fh + 1, : w - fw + 1]


class Nin(nn.Module):
    """1x1 convolution ("network in network")."""

    def __init__(self, c_in: int, c_out: int, weight_norm: bool = False):
        super().__init__()
        self.conv = _maybe_weight_norm(nn.Conv2d(c_in, c_out, 1), weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class GatedResnet(nn.Module):
    """PixelCNN++ gated residual block with optional skip input ``a`` and global conditioning ``h``.

    c1 = conv(concat_elu(x)) [+ nin(concat_elu(a))]; c2 = conv(dropout(concat_elu(c1)))
    [+ dense(h)]; x + c2_a * sigmoid(c2_b) with (c2_a, c2_b) the halves of c2. ``conv`` is the
    causal convolution given by ``conv_cls`` (or a 1x1 convolution for ``conv_cls=Nin``).
    """

    def __init__(self, channels: int, conv_cls: type[nn.Module], *, skip_channels: int = 0,
                 cond_dim: int = 0, dropout: float = 0.0, weight_norm: bool = False):
        super().__init__()
        self.conv1 = conv_cls(2 * channels, channels, weight_norm=weight_norm)
        self.skip = Nin(2 * skip_channels, channels, weight_norm) if skip_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv_cls(2 * channels, 2 * channels, weight_norm=weight_norm)
        self.cond = nn.Linear(cond_dim, 2 * channels, bias=False) if cond_dim else None

    def forward(self, x: Tensor, a: Tensor | None = None, h: Tensor | None = None) -> Tensor:
        c1 = self.conv1(concat_elu(x))
        if self.skip is not None:
            c1 = c1 + self.skip(concat_elu(a))
        c2 = self.conv2(self.dropout(concat_elu(c1)))
        if self.cond is not None:
            c2 = c2 + self.cond(h)[:, :, None, None]
        gate_in, gate = c2.chunk(2, dim=1)
        return x + gate_in * torch.sigmoid(gate)


class CausalAttention(nn.Module):
    """PixelSNAIL-style single-head attention with a strict raster-order causal mask.

    keys, values = nin(gated_resnet_1x1([x, features, pos])); queries =
    nin(gated_resnet_1x1([features, pos])); out_i = sum_{j < i} softmax_j(q_i . k_j / sqrt(d)) v_j
    (zeros for the first pixel); features <- gated_resnet_1x1(features, a=out). ``pos`` are two
    channels holding the row and column coordinates in [-1, 1]. Feature maps at pixel i may
    depend on pixels < i only, so out_i and the result do too.
    """

    def __init__(self, channels: int, image_channels: int, attn_dim: int, *, cond_dim: int = 0,
                 dropout: float = 0.0, weight_norm: bool = False):
        super().__init__()
        kv_in = image_channels + channels + 2
        q_in = channels + 2
        res = dict(cond_dim=cond_dim, dropout=dropout, weight_norm=weight_norm)
        self.kv_res = GatedResnet(kv_in, Nin, **res)
        self.q_res = GatedResnet(q_in, Nin, **res)
        self.to_kv = Nin(kv_in, attn_dim + channels, weight_norm)
        self.to_q = Nin(q_in, attn_dim, weight_norm)
        self.out_res = GatedResnet(channels, Nin, skip_channels=channels, **res)
        self.attn_dim = attn_dim

    @staticmethod
    def positions(like: Tensor) -> Tensor:
        """Row and column coordinates, ``[B, 2, H, W]``, in the dtype of ``like``."""
        b, _, h, w = like.shape
        kw = dict(dtype=like.dtype, device=like.device)
        rows = torch.linspace(-1.0, 1.0, h, **kw).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.linspace(-1.0, 1.0, w, **kw).view(1, 1, 1, w).expand(b, 1, h, w)
        return torch.cat([rows, cols], dim=1)

    def forward(self, features: Tensor, x: Tensor, h: Tensor | None = None) -> Tensor:
        b, c, height, width = features.shape
        pos = self.positions(features)
        kv = self.to_kv(self.kv_res(torch.cat([x, features, pos], dim=1), h=h)).flatten(2)
        q = self.to_q(self.q_res(torch.cat([features, pos], dim=1), h=h)).flatten(2)
        keys, values = kv[:, : self.attn_dim], kv[:, self.attn_dim :]
        logits = torch.einsum("bdi,bdj->bij", q, keys) / math.sqrt(self.attn_dim)
        n = height * width
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(diagonal=-1)
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=-1) * mask  # the first row (no past) becomes zeros
        out = torch.einsum("bij,bcj->bci", weights, values).reshape(b, c, height, width)
        return self.out_res(features, a=out, h=h)
