"""Compact DDPM++-style score U-Net (as in ScoreFlow, Song et al. 2021: its structure, not its size).

``net(x [B, C, H, W], t [B]) -> like x``. Structure: sinusoidal embedding of t -> MLP; a 3x3
input conv; per resolution ``num_res_blocks`` residual blocks (GroupNorm, SiLU, conv, a
time-dependent scale and shift after the second GroupNorm, skip connections rescaled by 1/sqrt(2)
as in DDPM++) and
optional self-attention after the blocks of the levels in ``attn_levels`` (level 0 is full
resolution; DDPM++ on 32x32 attends at 16x16, level 1) and always once in the middle; average-pool downsampling,
nearest-neighbour upsampling with U-Net skips; GroupNorm, SiLU and a zero-initialised 3x3 output
conv. Inputs whose height or width is not a multiple of 2^(levels - 1) (e.g. 28x28 MNIST with
three levels) are zero-padded symmetrically and the output is cropped back.
"""
from __future__ import annotations

import math
from typing import Sequence

import gin
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hybrids.models.mlp import sinusoidal_embedding


def _groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups as DDPM++: min(channels // 4, 32), lowered until it divides ``channels``
    (so every group holds at least 4 channels when channels >= 4)."""
    top = max(1, min(max_groups, channels // 4))
    return next(g for g in range(top, 0, -1) if channels % g == 0)


class ResBlock(nn.Module):
    """GN-SiLU-conv, GN with a time-dependent scale and shift, SiLU-dropout-conv (zero init),
    skip; sum / sqrt(2).

    The time embedding enters AFTER the second GroupNorm as h * (1 + scale(t)) + shift(t)
    (adaptive group norm). Adding it before a GroupNorm, as DDPM++ does, lets the norm remove it
    entirely when a group holds a single channel, as happens in the tiny CPU networks.
    """

    def __init__(self, c_in: int, c_out: int, temb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(temb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.temb(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return (self.skip(x) + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with a residual connection (rescaled by 1/sqrt 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2.0)


@gin.configurable(module="hybrids.models")
class UNet(nn.Module):
    """Compact DDPM++-style U-Net.

    Args:
        in_channels: C of the images.
        base_channels: channels at full resolution.
        channel_mult: multiplier of ``base_channels`` per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_levels: resolution levels (0 = full size) whose blocks are followed by attention.
        dropout: dropout rate inside residual blocks.
        embed_dim: size of the sinusoidal time embedding (the MLP widens it to 4 x base_channels).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (),
        dropout: float = 0.1,
        embed_dim: int = 64,
    ):
        super().__init__()
        if in_channels < 1 or base_channels < 1 or num_res_blocks < 1 or not channel_mult:
            raise ValueError("UNet needs in_channels, base_channels, num_res_blocks >= 1 and a non-empty channel_mult.")
        self.in_channels, self.embed_dim = int(in_channels), int(embed_dim)
        self.levels = len(channel_mult)
        self.attn_levels = tuple(int(a) for a in attn_levels)
        if any(not 0 <= a < self.levels for a in self.attn_levels):
            raise ValueError(f"attn_levels must lie in [0, {self.levels}); got {self.attn_levels}.")
        temb_dim = 4 * base_channels
        self.temb = nn.Sequential(nn.Linear(embed_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        chans = [base_channels]
        c = base_channels
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(c, base_channels * mult, temb_dim, dropout))
                c = base_channels * mult
                chans.append(c)
            self.down.append(blocks)
            if level < self.levels - 1:
                chans.append(c)
        self.mid1 = ResBlock(c, c, temb_dim, dropout)
        self.mid_attn = AttnBlock(c)
        self.mid2 = ResBlock(c, c, temb_dim, dropout)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(c + chans.pop(), base_channels * mult, temb_dim, dropout))
                c = base_channels * mult
            self.up.append(blocks)
        self.attn = nn.ModuleDict({
            f"{d}{a}": AttnBlock(base_channels * channel_mult[a]) for a in self.attn_levels for d in ("down", "up")
        })
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _maybe_attn(self, h: Tensor, key: str) -> Tensor:
        return self.attn[key](h) if key in self.attn else h

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: ``[B, C, H, W]``; t: ``[B]``. Returns like ``x``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet(in_channels={self.in_channels}) needs x of shape [B, {self.in_channels}, H, W]; got {tuple(x.shape)}.")
        height, width = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        ph, pw = (-height) % m, (-width) % m
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        h = F.pad(x, pad) if ph or pw else x
        temb = self.temb(sinusoidal_embedding(t.to(x.dtype).reshape(-1), self.embed_dim))
        h = self.conv_in(h)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = self._maybe_attn(block(h, temb), f"down{level}")
                skips.append(h)
            if level < self.levels - 1:
                h = F.avg_pool2d(h, 2)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for i, blocks in enumerate(self.up):
            level = self.levels - 1 - i
            for block in blocks:
                h = self._maybe_attn(block(torch.cat([h, skips.pop()], 1), temb), f"up{level}")
            if level > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[..., pad[2]: pad[2] + height, pad[0]: pad[0] + width]
