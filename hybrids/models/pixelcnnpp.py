"""PixelCNN++ and NCPN, its noise-conditional version.

PixelCNN++: Salimans, Karpathy, Chen and Kingma, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications", ICLR 2017. NCPN: the
noise-conditional PixelCNN++ of "Noise-conditional Maximum Likelihood Estimation with Score-based
Sampling" (NCML), NeurIPS 2022 Workshop on Score-Based Methods.

Both are autoregressive density models in raster order (row, then column); the channels of a
pixel are ordered R -> G -> B by the channel coupling of the logistic-mixture head
(``hybrids.distributions``), so the mixture parameters of pixel i depend on pixels before i only,
never on any channel of pixel i itself. Both implement
:class:`hybrids.models.base.AncestralMixtureModel`: ``hybrids.samplers.ancestral_sample`` draws
from them, with the per-pixel activation cache of ``hybrids.models.pixelcnnpp_incremental`` in
eval mode (``incremental_cache``).

Architecture (PixelCNN++): the input in model space [-1, 1] is padded with a channel of ones and
fed to two streams, "u" (down-shifted: rows above) and "ul" (down-right-shifted: rows above and
the pixels to the left). The up pass has 3 resolution blocks of ``nr_resnet`` gated resnets with
stride-2 causal downsampling between them; the down pass mirrors it with transposed convolutions
and consumes every up-pass output as a skip input (``nr_resnet`` + 1 resnets in its 2nd and 3rd
blocks). Head: nin(elu(ul)) -> mixture parameters. Convolutions are plain; weight normalisation
is optional (``weight_norm=True``), data-dependent initialisation is not implemented. Odd sizes
work: upsampled maps are cropped to the size of the matching up-pass map (1x4x4, 1x7x7, 8x8,
28x28 and 32x32 all run).

NCPN adds (1) a noise-level embedding h(t) -- sinusoidal features of 999 t (VP, subVP) or
Gaussian Fourier features of log sigma(t) (VE; sigma(0) = sigma_min > 0, so it is defined at
t = 0) followed by Dense-SiLU-Dense -- added through a linear map inside every gated resnet of both
streams before the gate, and (2) PixelSNAIL-style strict causal attention blocks on the ul stream
at full resolution (``hybrids.models.layers.CausalAttention``).
"""
from __future__ import annotations

import math
from typing import Sequence

import gin
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.distributions import (
    discretized_logistic_mixture_log_prob,
    logistic_mixture_log_prob,
    num_mixture_params,
)
from hybrids.data import level_values
from hybrids.models.base import AncestralMixtureModel, IncrementalCache, check_time
from hybrids.models.layers import (
    CausalAttention,
    DownRightShiftedConv2d,
    DownRightShiftedDeconv2d,
    DownShiftedConv2d,
    DownShiftedDeconv2d,
    GatedResnet,
    Nin,
    down_shift,
    right_shift,
)
from hybrids.sdes import SDE, VESDE
from hybrids.tensors import model_dtype

ATTENTION_POSITIONS = ("up", "down")
"""Where attention blocks may sit: 'up' = end of the first (full-resolution) up-pass block,
'down' = end of the last (full-resolution) down-pass block."""


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes; got {image_shape}.")
    return shape


class _PixelCNNppNet(nn.Module):
    """The PixelCNN++ U-Net: ``x [B, C, H, W]`` (and conditioning ``h [B, cond_dim]``) -> params."""

    def __init__(self, image_shape, num_params: int, nr_filters: int, nr_resnet: int,
                 dropout: float, weight_norm: bool, cond_dim: int = 0,
                 attention: Sequence[str] = (), attn_dim: int = 16):
        super().__init__()
        c, _, _ = image_shape
        nf = nr_filters
        wn = weight_norm
        res = dict(cond_dim=cond_dim, dropout=dropout, weight_norm=wn)
        self.u_init = DownShiftedConv2d(c + 1, nf, (2, 3), weight_norm=wn)
        self.ul_init_up = DownShiftedConv2d(c + 1, nf, (1, 3), weight_norm=wn)
        self.ul_init_left = DownRightShiftedConv2d(c + 1, nf, (2, 1), weight_norm=wn)
        self.up_u = nn.ModuleList()
        self.up_ul = nn.ModuleList()
        self.down_u = nn.ModuleList()
        self.down_ul = nn.ModuleList()
        for block in range(3):
            self.up_u.append(nn.ModuleList(
                [GatedResnet(nf, DownShiftedConv2d, **res) for _ in range(nr_resnet)]))
            self.up_ul.append(nn.ModuleList(
                [GatedResnet(nf, DownRightShiftedConv2d, skip_channels=nf, **res)
                 for _ in range(nr_resnet)]))
            n_down = nr_resnet + (1 if block > 0 else 0)
            self.down_u.append(nn.ModuleList(
                [GatedResnet(nf, DownShiftedConv2d, skip_channels=nf, **res)
                 for _ in range(n_down)]))
            self.down_ul.append(nn.ModuleList(
                [GatedResnet(nf, DownRightShiftedConv2d, skip_channels=2 * nf, **res)
                 for _ in range(n_down)]))
        self.downsample_u = nn.ModuleList(
            [DownShiftedConv2d(nf, nf, (2, 3), stride=2, weight_norm=wn) for _ in range(2)])
        self.downsample_ul = nn.ModuleList(
            [DownRightShiftedConv2d(nf, nf, (2, 2), stride=2, weight_norm=wn) for _ in range(2)])
        self.upsample_u = nn.ModuleList(
            [DownShiftedDeconv2d(nf, nf, (2, 3), weight_norm=wn) for _ in range(2)])
        self.upsample_ul = nn.ModuleList(
            [DownRightShiftedDeconv2d(nf, nf, (2, 2), weight_norm=wn) for _ in range(2)])
        self.attn = nn.ModuleDict(
            {pos: CausalAttention(nf, c, attn_dim, **res) for pos in attention})
        self.head = Nin(nf, num_params, wn)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        x_pad = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        u = down_shift(self.u_init(x_pad))
        ul = down_shift(self.ul_init_up(x_pad)) + right_shift(self.ul_init_left(x_pad))
        u_list, ul_list, sizes = [u], [ul], []
        for block in range(3):
            for i, (res_u, res_ul) in enumerate(zip(self.up_u[block], self.up_ul[block])):
                u = res_u(u, h=h)
                ul = res_ul(ul, a=u, h=h)
                if block == 0 and i == len(self.up_u[0]) - 1 and "up" in self.attn:
                    ul = self.attn["up"](ul, x, h=h)
                u_list.append(u)
                ul_list.append(ul)
            sizes.append(tuple(u.shape[2:]))
            if block < 2:
                u = self.downsample_u[block](u)
                ul = self.downsample_ul[block](ul)
                u_list.append(u)
                ul_list.append(ul)
        u, ul = u_list.pop(), ul_list.pop()
        for block in range(3):
            for res_u, res_ul in zip(self.down_u[block], self.down_ul[block]):
                u = res_u(u, a=u_list.pop(), h=h)
                ul = res_ul(ul, a=torch.cat([u, ul_list.pop()], dim=1), h=h)
            if block < 2:
                size = sizes[1 - block]
                u = self.upsample_u[block](u, size)
                ul = self.upsample_ul[block](ul, size)
        if "down" in self.attn:
            ul = self.attn["down"](ul, x, h=h)
        return self.head(F.elu(ul))


class _MixturePixelCNN(AncestralMixtureModel):
    """Shared density interface of PixelCNN++ and NCPN (everything but the conditioning).

    ``forward(x, t)`` (in the subclasses) gives the mixture params ``[B, P, H, W]``; this class
    turns them into ``discrete_log_prob`` and ``log_prob`` and offers the activation cache for
    ancestral sampling (``incremental_cache``).
    """

    def __init__(self, image_shape, num_levels: int, nr_logistic_mix: int):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2; got {num_levels}.")
        self.num_levels = int(num_levels)
        self.nr_logistic_mix = int(nr_logistic_mix)
        self.num_params = num_mixture_params(self.image_shape[0], self.nr_logistic_mix)

    def _check_x(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.image_shape or x.ndim != 4:
            expected = ", ".join(map(str, self.image_shape))
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape [B, {expected}] (its image_shape); "
                f"got {tuple(x.shape)}."
            )

    def _param_dtype(self) -> torch.dtype:
        return model_dtype(self)

    def incremental_cache(self) -> IncrementalCache | None:
        """A fresh cached evaluator (``IncrementalPixelCNN(self)``: per pixel, and by rows) in eval mode, else None.

        In train mode dropout is active and the cache does not apply; the sampler then runs full
        forward passes.
        """
        if self.training:
            return None
        # Imported here: pixelcnnpp_incremental imports this module.
        from hybrids.models.pixelcnnpp_incremental import IncrementalPixelCNN

        return IncrementalPixelCNN(self)

    def discrete_log_prob(self, k: Tensor) -> Tensor:
        """log P(k) of integer images at t = 0 (discretized logistic mixture), in nats.

        Args:
            k: ``int [B, C, H, W]`` levels in {0..K-1}.

        Returns:
            ``[B]`` log-probabilities.

        Raises:
            TypeError: if ``k`` is not an integer tensor.
            ValueError: if its shape or range is wrong.
        """
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise TypeError(
                f"discrete_log_prob needs integer levels in {{0..{self.num_levels - 1}}}; got "
                f"dtype {k.dtype}. For continuous data use log_prob(x, t)."
            )
        self._check_x(k)
        if k.numel() and (int(k.min()) < 0 or int(k.max()) > self.num_levels - 1):
            raise ValueError(
                f"levels must lie in [0, {self.num_levels - 1}] (num_levels={self.num_levels}); "
                f"got min {int(k.min())}, max {int(k.max())}."
            )
        dtype = self._param_dtype()
        x = level_values(k, self.num_levels, dtype=dtype)
        params = self(x, torch.zeros(k.shape[0], dtype=dtype, device=k.device))
        return discretized_logistic_mixture_log_prob(params, k, self.num_levels)

    def log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """Continuous log-density of the mixture with the network's params at (x, t), in nats.

        Args:
            x: ``[B, C, H, W]`` real values (not clamped to [-1, 1]).
            t: ``[B]`` or a scalar diffusion time.

        Returns:
            ``[B]`` log-densities.
        """
        self._check_x(x)
        t = check_time(x, t)
        return logistic_mixture_log_prob(self(x, t), x)


@gin.configurable(module="hybrids.models")
class PixelCNNpp(_MixturePixelCNN):
    """PixelCNN++ with a logistic-mixture head; not noise conditional (``t`` is ignored).

    Args:
        image_shape: (C, H, W).
        num_levels: K, levels of the discrete data.
        nr_filters: feature channels F.
        nr_resnet: gated resnets per resolution block.
        nr_logistic_mix: mixture components n.
        dropout: dropout rate inside gated resnets.
        weight_norm: weight-normalised convolutions (default: plain ones).
    """

    def __init__(self, image_shape: Sequence[int], num_levels: int = 256, nr_filters: int = 160,
                 nr_resnet: int = 5, nr_logistic_mix: int = 10, dropout: float = 0.5,
                 weight_norm: bool = False):
        super().__init__(image_shape, num_levels, nr_logistic_mix)
        self.net = _PixelCNNppNet(self.image_shape, self.num_params, nr_filters, nr_resnet,
                                  dropout, weight_norm)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Mixture params ``[B, P, H, W]`` of ``x [B, C, H, W]`` (model space); ``t`` is ignored."""
        self._check_x(x)
        return self.net(x)


class NoiseEmbedding(nn.Module):
    """h(t) = Dense(SiLU(Dense(features(t)))), ``[B] -> [B, embed_dim]``.

    features: 'sinusoidal' -- [sin(999 t w_j), cos(999 t w_j)], w_j = 10000^(-j / (E/2 - 1));
    'fourier' -- [sin(2 pi W log sigma(t)), cos(2 pi W log sigma(t))], W ~ N(0, 16^2) fixed.
    """

    def __init__(self, kind: str, embed_dim: int, sde: SDE | None):
        super().__init__()
        if embed_dim < 4 or embed_dim % 2:
            raise ValueError(f"embed_dim must be even and >= 4; got {embed_dim}.")
        self.kind = kind
        self.sde = sde
        half = embed_dim // 2
        if kind == "sinusoidal":
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
        else:
            freqs = 16.0 * torch.randn(half)
        self.register_buffer("freqs", freqs)
        self.dense = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: Tensor) -> Tensor:
        if self.kind == "sinusoidal":
            args = 999.0 * t[:, None] * self.freqs[None]
        else:
            log_sigma = torch.log(self.sde.marginal_coefs(t).std)
            args = 2.0 * math.pi * log_sigma[:, None] * self.freqs[None]
        return self.dense(torch.cat([torch.sin(args), torch.cos(args)], dim=1))


@gin.configurable(module="hybrids.models")
class NCPN(_MixturePixelCNN):
    """Noise-conditional PixelCNN++ (NCML): p_theta(x | t), a logistic-mixture AR model per t.

    Args:
        image_shape: (C, H, W).
        num_levels: K, levels of the discrete data (used at t = 0).
        nr_filters, nr_resnet, nr_logistic_mix, dropout, weight_norm: as ``PixelCNNpp``.
        sde: the SDE whose sigma(t) the Fourier embedding uses; required unless
            ``embedding='sinusoidal'``.
        embedding: 'auto' (Fourier of log sigma(t) for a VESDE, sinusoidal of 999 t otherwise),
            'sinusoidal' or 'fourier'.
        embed_dim: width of the embedding (default ``4 * nr_filters``).
        attention: attention block positions, a subset of ('up', 'down') (see
            ``ATTENTION_POSITIONS``); () disables attention.
        attn_dim: key/query width d of the attention.
    """

    def __init__(self, image_shape: Sequence[int], num_levels: int = 256, nr_filters: int = 160,
                 nr_resnet: int = 5, nr_logistic_mix: int = 10, dropout: float = 0.5,
                 weight_norm: bool = False, sde: SDE | None = None, embedding: str = "auto",
                 embed_dim: int | None = None, attention: Sequence[str] = ("up", "down"),
                 attn_dim: int = 16):
        super().__init__(image_shape, num_levels, nr_logistic_mix)
        kinds = ("auto", "sinusoidal", "fourier")
        if embedding not in kinds:
            raise ValueError(f"embedding must be one of {kinds}; got {embedding!r}.")
        if embedding != "sinusoidal" and sde is None:
            raise ValueError(
                f"embedding={embedding!r} needs the SDE (for sigma(t)); pass sde=... "
                "(gin: NCPN.sde = @VESDE()) or use embedding='sinusoidal'."
            )
        if embedding == "auto":
            embedding = "fourier" if isinstance(sde, VESDE) else "sinusoidal"
        if embedding == "fourier":
            sigma0 = sde.marginal_coefs(torch.zeros(1, dtype=torch.float64)).std
            if not bool(sigma0 > 0):
                raise ValueError(
                    f"embedding='fourier' embeds log sigma(t), undefined at t = 0 for {sde!r} "
                    "(sigma(0) = 0); use embedding='sinusoidal'."
                )
        bad = [p for p in attention if p not in ATTENTION_POSITIONS]
        if bad or len(set(attention)) != len(attention):
            raise ValueError(
                f"attention must be distinct entries of {ATTENTION_POSITIONS}; got {attention}.")
        embed_dim = 4 * nr_filters if embed_dim is None else embed_dim
        self.sde = sde
        self.embedding = NoiseEmbedding(embedding, embed_dim, sde)
        self.net = _PixelCNNppNet(self.image_shape, self.num_params, nr_filters, nr_resnet,
                                  dropout, weight_norm, cond_dim=embed_dim,
                                  attention=tuple(attention), attn_dim=attn_dim)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Mixture params ``[B, P, H, W]`` of ``x [B, C, H, W]`` at times ``t [B]`` (None: 0)."""
        self._check_x(x)
        t = check_time(x, 0.0 if t is None else t)
        return self.net(x, self.embedding(t))
